"""The command line and the README's example, run as a user would run them."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import rows_without_recorded_at, sha256
from rtopt.handlers.bandits.simulation import default_variants

from rtopt import Engine, RtoptError
from rtopt.cli import main

ROOT = Path(__file__).resolve().parent.parent


def rtopt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rtopt", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_simulate_inspect_and_verify(tmp_path: Path) -> None:
    done = rtopt("simulate", "--steps", "600", "--variants", "3", "--seed", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "event_log" / "demo.sqlite"
    assert log.exists()
    assert re.search(r"regret against the best variant for each request: [\d.]+", done.stdout)
    assert re.search(r"events/s", done.stdout)
    with Engine.open(log, read_only=True, handlers=[]) as engine:
        counts = engine.log.count_by_type()
    assert counts["Decision"] == 600 and counts["Feedback"] == 600 and counts["ArmUpdated"] == 600
    assert counts["ExperimentStats"] == 6  # one every 100 rewards
    for variant in ("v1", "v2", "v3"):
        assert variant in done.stdout

    shown = rtopt("inspect", str(log), "--last", "2", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "1807 events" in shown.stdout and "ArmUpdated" in shown.stdout

    verified = rtopt("replay", str(log), "--verify", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "all 1807 events match" in verified.stdout
    assert "600 decisions re-made identically" in verified.stdout


def test_simulate_with_the_same_seed_replaces_the_log_with_the_same_events(tmp_path: Path) -> None:
    log = tmp_path / "same.sqlite"
    assert main(["simulate", "--steps", "200", "--seed", "9", "--log", str(log)]) == 0
    first = rows_without_recorded_at(log)
    assert main(["simulate", "--steps", "200", "--seed", "9", "--log", str(log)]) == 2  # it exists
    assert rows_without_recorded_at(log) == first
    assert main(["simulate", "--steps", "200", "--seed", "9", "--log", str(log), "--force"]) == 0
    assert rows_without_recorded_at(log) == first


def test_verify_fails_with_the_first_difference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "bad.sqlite"
    assert main(["simulate", "--steps", "100", "--seed", "2", "--log", str(log)]) == 0
    with sqlite3.connect(log) as conn:
        conn.execute("DROP TRIGGER events_no_delete")
        seq = conn.execute("SELECT max(seq) FROM events WHERE type = 'ArmUpdated'").fetchone()[0]
        conn.execute("DELETE FROM events WHERE seq = ?", (seq,))
    capsys.readouterr()
    assert main(["replay", str(log), "--verify"]) == 1
    assert f"first difference at seq {seq}" in capsys.readouterr().out


def test_errors_are_reported_without_a_traceback(tmp_path: Path) -> None:
    foreign = tmp_path / "notes.sqlite"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    done = rtopt("inspect", str(foreign), cwd=tmp_path)
    assert done.returncode == 2
    assert "not an rtopt log" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [[], ["simulate"], ["tune"], ["evaluate"], ["inspect"], ["replay"], ["copy"], ["worker"], ["dashboard"]],
)
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    done = rtopt(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "usage: rtopt" in done.stdout


def test_the_readme_streams_example_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Streams: windows and features", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    # at t=590 (watermark 585 with 5 s out-of-orderness) the last closed 1-minute window is [480, 540):
    # latencies 780..830, mean 805; the last 5-minute window is [240, 540): 540..830 in steps of 10,
    # p95 = 540 + 10 * 0.95 * 29 = 815.5
    assert scope["context"] == {"window_1min_avg_latency": 805.0, "window_5min_p95_latency": pytest.approx(815.5)}
    assert scope["decision"].context == scope["context"]


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Embedding the engine", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a second run reopens the same log
        exec(compile(example, "README.md", "exec"), {})
    with Engine.open(tmp_path / "event_log" / "example.sqlite", read_only=True) as engine:
        assert engine.state("bandit", "greeting").decisions == 2
        assert engine.log.count_by_type()["Feedback"] == 4


def wait_for_events(log: Path, writer: subprocess.Popen) -> None:
    """Return once the log another process writes holds events (a condition, polled every 10 ms)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and writer.poll() is None:
        if log.exists():
            with contextlib.suppress(RtoptError), Engine.open(log, read_only=True, handlers=[]) as engine:
                if engine.position:
                    return
        time.sleep(0.01)
    raise AssertionError(f"{log} got no events")


@pytest.mark.slow
def test_follow_prints_each_event_of_a_live_log_once(tmp_path: Path) -> None:
    log = tmp_path / "live.sqlite"
    writer = subprocess.Popen(
        [sys.executable, "-m", "rtopt", "simulate", "--steps", "3000", "--log", str(log)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_events(log, writer)
        follow = rtopt("inspect", str(log), "--last", "5", "--follow", "--idle-timeout", "2", cwd=tmp_path)
    finally:
        writer.wait(timeout=60)
    assert follow.returncode == 0, follow.stderr
    seqs = [int(line.split()[0]) for line in follow.stdout.splitlines() if re.match(r"^\s+\d+ \d{4}-", line)]
    assert seqs == sorted(set(seqs))
    with Engine.open(log, read_only=True, handlers=[]) as engine:
        assert seqs[-1] == engine.position == 9031  # 3,000 x (decision, feedback, update) + 30 stats + definition


@pytest.mark.slow
def test_replay_reports_how_it_rebuilt_and_refuses_a_seq_past_the_end(tmp_path: Path) -> None:
    log = tmp_path / "r.sqlite"
    assert main(["simulate", "--steps", "300", "--seed", "1", "--log", str(log)]) == 0
    done = rtopt("replay", str(log), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rebuilt = next(line for line in done.stdout.splitlines() if line.startswith("rebuilt "))
    assert "at seq 904 from snapshots {" in rebuilt and "}: folded 0 events" in rebuilt
    assert "'bandit': 904" in rebuilt and "'experiments': 904" in rebuilt
    assert "more lines (--state prints all)" in done.stdout
    partial = rtopt("replay", str(log), "--until-seq", "500", cwd=tmp_path)
    assert "at seq 500 from the start of the log: folded" in partial.stdout
    beyond = rtopt("replay", str(log), "--until-seq", "5000", cwd=tmp_path)
    assert beyond.returncode == 2 and "holds seqs 1..904" in beyond.stderr
    bad_rate = rtopt("simulate", "--rate", "0", cwd=tmp_path)
    assert bad_rate.returncode == 2 and "not positive" in bad_rate.stderr


@pytest.mark.slow
def test_evaluate_estimates_another_policy_off_policy(tmp_path: Path) -> None:
    log = tmp_path / "e.sqlite"
    assert main(["simulate", "--steps", "1500", "--seed", "3", "--policy", "epsilon_greedy", "--log", str(log)]) == 0
    done = rtopt("evaluate", str(log), "--policy", "uniform", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "off-policy estimates of uniform" in done.stdout and "not a re-run" in done.stdout
    intervals = {
        row.split()[1]: tuple(float(x) for x in row.split()[5].split("-"))
        for row in done.stdout.splitlines()
        if row.startswith("│ ") and row.split()[1] in ("replay", "ips", "snips")
    }
    # the uniform policy's true value is the mean of the variants' reward probabilities
    truth = sum(v.reward_probability(0.7) for v in default_variants(4, 3)) / 4
    assert set(intervals) == {"replay", "ips", "snips"}
    # importance weighting is unbiased whatever the logging policy (replay assumes uniform logging)
    assert all(low <= truth <= high for name, (low, high) in intervals.items() if name != "replay"), intervals
    bad = rtopt("evaluate", str(log), "--policy", "best", cwd=tmp_path)
    assert bad.returncode == 2 and "always:ARM" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["ab_test", "canary"])
def test_simulate_runs_an_ab_test_or_a_canary_and_says_how_it_ended(policy: str, tmp_path: Path) -> None:
    log = tmp_path / f"{policy}.sqlite"
    done = rtopt(
        "simulate",
        "--policy",
        policy,
        "--variants",
        "2",
        "--steps",
        "2500",
        "--seed",
        "5",
        "--log",
        str(log),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    with Engine.open(log, read_only=True, handlers=[]) as engine:
        counts = engine.log.count_by_type()
    assert counts["Decision"] == 2500 and counts.get("ExperimentAnalysed", 0) >= 1
    ended = {"ExperimentConcluded", "ExperimentPaused", "CanaryRolledBack", "ExperimentCompleted"} & set(counts)
    assert ("the test:" in done.stdout) == bool(ended)
    assert Engine.verify(log).ok
    # a process that imports no handler still reads their events: the installed packages are found
    shown = rtopt("inspect", str(log), "--last", "6000", cwd=tmp_path)
    assert shown.returncode == 0 and "ExperimentAnalysed" in shown.stdout, shown.stderr


@pytest.fixture(scope="module")
def logs_in_place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the default logs of simulate and tune, as a user's working folder would."""
    folder = tmp_path_factory.mktemp("work")
    assert main(["simulate", "--steps", "50", "--log", str(folder / "event_log" / "demo.sqlite")]) == 0
    assert main(["tune", "--task", "code", "--budget", "2", "--log", str(folder / "event_log" / "tune.sqlite")]) == 0
    return folder


def digests(folder: Path) -> dict[str, str]:
    """The hash of each log in the folder, and the size of any write-ahead log holding something (a reader
    leaves an empty one, which changes nothing)."""
    logs = {path.name: sha256(path) for path in (folder / "event_log").glob("*.sqlite")}
    wal = {path.name: str(path.stat().st_size) for path in (folder / "event_log").glob("*-wal") if path.stat().st_size}
    return logs | wal


LOG = "event_log/demo.sqlite"
PG = "postgresql://nobody@127.0.0.1:9/none"  # never reached: the arguments are refused first


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [
        (["simulate", "--variants", "30"], "--variants", "30"),
        (["simulate", "--variants", "1"], "--variants", "1"),
        (["simulate", "--policy", "canary", "--variants", "4"], "--variants", "4"),
        (["simulate", "--policy", "greedy"], "--policy", "greedy"),
        (["simulate", "--steps", "0"], "--steps", "0"),
        (["simulate", "--seed", "-1"], "--seed", "-1"),
        (["simulate", "--rate", "inf"], "--rate", "inf"),
        (["simulate", "--feedback-delay", "nan"], "--feedback-delay", "nan"),
        (["simulate", "--workers", "2"], "--workers", "2"),
        (["tune", "--noise", "-1"], "--noise", "-1"),
        (["tune", "--budget", "0"], "--budget", "0"),
        (["tune", "--batch", "two"], "--batch", "two"),
        (["tune", "--seed", "-5"], "--seed", "-5"),
        (["tune", "--task", "poetry"], "--task", "poetry"),
        (["evaluate", LOG, "--policy", "best"], "--policy", "best"),
        (["evaluate", LOG, "--clip", "-1"], "--clip", "-1"),
        (["replay", LOG, "--until-seq", "-1"], "--until-seq", "-1"),
        (["inspect", LOG, "--last", "0"], "--last", "0"),
        (["inspect", LOG, "--follow", "--idle-timeout", "-2"], "--idle-timeout", "-2"),
        (["worker", LOG, "--snapshot-every", "0"], "--snapshot-every", "0"),
        (["worker", PG, "--partition", "2/2"], "--partition", "2/2"),
        (["worker", PG, "--batch", "0"], "--batch", "0"),
        (["worker", PG, "--name", " "], "--name", " "),
        (["dashboard", "--port", "70000"], "--port", "70000"),
        (["dashboard", "--refresh", "0"], "--refresh", "0"),
        (["dashboard", "--address", "0.0.0.0"], "--address", "0.0.0.0"),
        (["dashboard", "--token-file", "missing.txt"], "--token-file", "missing.txt"),
    ],
)
def test_a_bad_argument_is_refused_before_any_log_is_touched(
    command: list[str],
    option: str,
    value: str,
    logs_in_place: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import rtopt.apps.ui

    monkeypatch.chdir(logs_in_place)
    monkeypatch.setattr(rtopt.apps.ui, "serve", lambda *args, **kwargs: pytest.fail("the dashboard was served"))
    before = digests(logs_in_place)
    with pytest.raises(SystemExit) as exited:
        main(command)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"rtopt {command[0]}: error: argument {option}: " in error and value in error.split(option, 1)[1], error
    assert digests(logs_in_place) == before


def documented_policies() -> list[str]:
    """The policies README.md says `rtopt simulate --policy` takes: the bandit policies its decisions section
    lists, then ab_test and canary."""
    readme = (ROOT / "README.md").read_text()
    assert "`rtopt simulate` takes\n`--policy` (any bandit policy, `ab_test` or `canary`)" in readme
    bandits = readme.split("**options)` runs one of", 1)[1].split("(they read", 1)[0]
    return [*re.findall(r"`(\w+)`", bandits), "ab_test", "canary"]


def test_the_documented_policies_are_those_simulate_offers(tmp_path: Path) -> None:
    done = rtopt("simulate", "--help", cwd=tmp_path)
    offered = re.search(r"--policy \{([\w,]+)\}", done.stdout)
    assert offered is not None, done.stdout
    assert sorted(offered.group(1).split(",")) == sorted(documented_policies())


@pytest.mark.parametrize("policy", documented_policies())
def test_every_documented_policy_simulates_into_a_log_that_verifies(
    policy: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "fresh.sqlite"
    assert main(["simulate", "--policy", policy, "--steps", "200", "--log", str(log)]) == 0
    capsys.readouterr()
    assert main(["replay", str(log), "--verify"]) == 0
    with Engine.open(log, read_only=True, handlers=[]) as engine:
        counts = engine.log.count_by_type()
    assert counts["Decision"] == 200
    assert f"all {sum(counts.values())} events match" in capsys.readouterr().out


@pytest.mark.slow
def test_the_documented_canary_runs_on_a_fresh_log_and_verifies(tmp_path: Path) -> None:
    done = rtopt("simulate", "--policy", "canary", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "canary over 2 variants" in done.stdout
    log = tmp_path / "event_log" / "demo.sqlite"
    with Engine.open(log, read_only=True, handlers=[]) as engine:
        counts = engine.log.count_by_type()
        [definition] = [envelope.payload for envelope in engine.read(types=["ExperimentDefined"])]
    assert definition.policy == "canary" and definition.arms == ["v1", "v2"]
    assert counts["Decision"] == 5000 and counts["Feedback"] == 5000 and counts["CanaryAdvanced"] >= 1
    assert "the test: " in done.stdout  # how the rollout ended
    verified = rtopt("replay", str(log), "--verify", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert f"all {sum(counts.values())} events match" in verified.stdout


@pytest.mark.parametrize("target", ["event_log/tune.sqlite", LOG])
def test_copy_refuses_a_target_holding_events_and_leaves_both_logs_as_they_were(
    target: str, logs_in_place: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(logs_in_place)
    before = digests(logs_in_place)
    assert main(["copy", LOG, target]) == 2
    assert f"{target} already holds events" in capsys.readouterr().err
    assert digests(logs_in_place) == before

"""The command line and the README's example, run as a user would run them."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import rows_without_recorded_at

from rtopt import Engine
from rtopt.cli import main

ROOT = Path(__file__).resolve().parent.parent


def rtopt(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rtopt", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_simulate_inspect_and_verify(tmp_path: Path) -> None:
    done = rtopt("simulate", "--steps", "600", "--variants", "3", "--seed", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "event_log" / "demo.sqlite"
    assert log.exists()
    assert re.search(r"regret against always choosing v\d: [\d.]+", done.stdout)
    assert re.search(r"events/s", done.stdout)
    with Engine.open(log, read_only=True, handlers=[]) as engine:
        counts = engine.log.count_by_type()
    assert counts["Decision"] == 600 and counts["Feedback"] == 600 and counts["ArmUpdated"] == 600
    for variant in ("v1", "v2", "v3"):
        assert variant in done.stdout

    shown = rtopt("inspect", str(log), "--last", "2", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "1801 events" in shown.stdout and "ArmUpdated" in shown.stdout

    verified = rtopt("replay", str(log), "--verify", cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert "all 1801 events match" in verified.stdout
    assert "600 decisions re-made" in verified.stdout


def test_simulate_with_the_same_seed_replaces_the_log_with_the_same_events(tmp_path: Path) -> None:
    log = tmp_path / "same.sqlite"
    assert main(["simulate", "--steps", "200", "--seed", "9", "--log", str(log)]) == 0
    first = rows_without_recorded_at(log)
    assert main(["simulate", "--steps", "200", "--seed", "9", "--log", str(log)]) == 0
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


@pytest.mark.parametrize("command", [[], ["simulate"], ["inspect"], ["replay"]])
def test_every_command_has_help(command: list[str], tmp_path: Path) -> None:
    done = rtopt(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "usage: rtopt" in done.stdout


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (ROOT / "README.md").read_text()
    example = readme.split("## Embedding the engine", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a second run reopens the same log
        exec(compile(example, "README.md", "exec"), {})
    with Engine.open(tmp_path / "event_log" / "example.sqlite", read_only=True) as engine:
        assert engine.state("bandit", "greeting").decisions == 2
        assert engine.log.count_by_type()["Feedback"] == 4

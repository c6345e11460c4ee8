"""Workers on a shared log (an SQLite file or a PostgreSQL database), one or partitioned: writers publish
inputs only, workers derive.

The reference is one engine that derived everything itself, in-process, into an SQLite log: workers given
the same inputs must derive the same events, whatever the number of partitions and the backend, and a worker
killed with SIGKILL and restarted must end exactly where one that never crashed ends.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, derived_events
from rtopt.handlers.bandits import BanditHandler

from rtopt import Draft, Engine, InvalidArgument, InvalidLog, RtoptError, WriteConflict, default_handlers
from rtopt.cli import main
from rtopt.copying import copy_log
from rtopt.events import Feedback
from rtopt.replay import WORKED
from rtopt.rows import envelope_from_row
from rtopt.storage.factory import is_postgres_url, open_log
from rtopt.worker import Partition, Worker, partition_of

GUARD = 120.0
"""Seconds after which a wait gives up, so a broken worker fails the test instead of hanging it."""


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Return once ``condition()`` holds, polling every 5 ms; fail after GUARD seconds."""
    deadline = time.monotonic() + GUARD
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def publish_inputs(source: Path, url: str) -> int:
    """Copy the input events of ``source`` into a new log at ``url``; returns the last seq."""
    return copy_log(source, url, inputs_only=True)


def another_log(location: str, name: str, request: pytest.FixtureRequest) -> str:
    """A second new log on the backend of ``location``."""
    if is_postgres_url(location):
        return request.getfixturevalue("pg_server").create_schema(name)
    return str(Path(location).with_name(f"{name}.sqlite"))


def worker(location: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rtopt", "worker", location, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == 0, err
    return out


def test_the_streams_spread_over_the_partitions() -> None:
    # otherwise the partitioned runs below would leave workers idle and prove little
    assert sorted(partition_of(name, 4) for name, _ in EXPERIMENTS) == [0, 1, 2, 3]
    assert sorted(partition_of(name, 2) for name, _ in EXPERIMENTS) == [0, 0, 1, 1]


@pytest.mark.parametrize("workers", [1, 2, pytest.param(4, marks=pytest.mark.slow)])
def test_partitioned_workers_derive_what_one_engine_derives(reference: Path, location: str, workers: int) -> None:
    last_input = publish_inputs(reference, location)
    # the worker processes run at the same time, each appending what it derives between the others' appends
    procs = [worker(location, "--partition", f"{i}/{workers}", "--drain", "--batch", "97") for i in range(workers)]
    outputs = [finished(proc) for proc in procs]
    expected = derived_events(reference)
    assert len(expected) > 500
    assert derived_events(location) == expected
    assert all(f"inputs read up to seq {last_input}" in out for out in outputs)
    report = Engine.verify(location)
    assert report.ok, report.difference
    assert report.derived == len(expected)
    with Engine.open(location, read_only=True, handlers=[]) as engine:
        assert [row[0] for row in engine.log.rows()] == list(range(1, last_input + len(expected) + 1))
        assert [engine.log.tracked(f"worker:{i}/{workers}") for i in range(workers)] == [last_input] * workers


@pytest.mark.slow
def test_a_worker_killed_mid_stream_resumes_exactly_once(
    reference: Path, location: str, request: pytest.FixtureRequest
) -> None:
    last_input = publish_inputs(reference, location)
    calm = another_log(location, "never_crashed", request)
    publish_inputs(reference, calm)
    # three batch sizes (20, 10, then 33): where transactions end changes nothing that is derived
    finished(worker(calm, "--drain", "--batch", "20"))

    log = open_log(location, read_only=True)
    try:
        crashing = worker(location, "--batch", "10", "--snapshot-every", "200")
        wait_until(lambda: log.tracked("worker:0/1") > last_input // 3, "the worker to get a third of the way")
        crashing.send_signal(signal.SIGKILL)
        crashing.wait(GUARD)
        at_kill = log.tracked("worker:0/1")
        assert crashing.returncode == -signal.SIGKILL
        assert 0 < at_kill < last_input, "the worker was not killed mid-stream"
        derived_at_kill = len(derived_events(location))
        snapshot = log.load_snapshot("bandit@worker:0/1", BanditHandler().fingerprint(), at_kill)
        out = finished(worker(location, "--drain", "--batch", "33"))
    finally:
        log.close()
    assert snapshot is not None and snapshot[0] > 0
    # the restart took up the chains' states where the last snapshot before the crash left them
    assert f"resumed from seq {snapshot[0]}," in out
    assert f"inputs read up to seq {last_input}" in out
    with Engine.open(location, read_only=True, handlers=[]) as crashed:
        crashed_rows = [row[:5] + row[6:] for row in crashed.log.rows()]
    with Engine.open(calm, read_only=True, handlers=[]) as never_crashed:
        calm_rows = [row[:5] + row[6:] for row in never_crashed.log.rows()]
    assert 0 < derived_at_kill < len(derived_events(reference))
    assert crashed_rows == calm_rows  # same events, same ids, same seqs: nothing lost, nothing twice
    assert derived_events(location) == derived_events(reference)


def test_two_workers_under_one_name_cannot_both_advance(reference: Path, location: str) -> None:
    publish_inputs(reference, location)
    with Worker.open(location, batch=50) as first, Worker.open(location, batch=50) as second:
        assert first.step() == 50
        before = first.log.last_seq()
        with pytest.raises(WriteConflict, match="tracker 'worker:0/1' is at seq 50, not 0"):
            second.step()
        assert second.log.last_seq() == before
        assert first.step() == 50


def test_a_worker_whose_write_fails_derives_each_input_once_when_it_goes_on(
    reference: Path, location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_inputs(reference, location)
    with Worker.open(location, batch=50) as worker:
        assert worker.step() == 50
        write = worker.log.append_tracked

        def fails_once(*args: object) -> None:
            monkeypatch.setattr(worker.log, "append_tracked", write)
            raise OSError("connection lost")

        monkeypatch.setattr(worker.log, "append_tracked", fails_once)
        with pytest.raises(OSError, match="connection lost"):
            worker.step()
        worker.run(drain=True)
    assert derived_events(location) == derived_events(reference)


def test_a_worker_follows_inputs_as_they_are_published(reference: Path, location: str) -> None:
    with Engine.open(reference, read_only=True, handlers=[]) as src:
        seed = src.seed
        inputs = [envelope_from_row(row) for row in src.log.inputs()]
    Engine.open(location, seed=seed, handlers=[]).close()
    log = open_log(location, read_only=True)
    proc = worker(location, "--idle-timeout", str(GUARD))
    try:
        with Engine.open(location, handlers=[]) as writer:
            for start in range(0, len(inputs), 500):
                part = inputs[start : start + 500]
                drafts = [Draft(e.payload, e.stream, e.time, e.id, e.correlation_id) for e in part]
                last = writer.publish_many(drafts)[-1].seq
                # each burst is read and derived before the next one is published
                wait_until(lambda last=last: log.tracked("worker:0/1") == last, "the worker to catch up")
    finally:
        proc.send_signal(signal.SIGTERM)
        out = finished(proc)
        log.close()
    assert f"inputs read up to seq {last}" in out
    assert derived_events(location) == derived_events(reference)


def test_replay_from_postgresql_equals_replay_from_its_sqlite_copy(
    reference: Path, pg_url: str, tmp_path: Path
) -> None:
    copy_log(reference, pg_url)
    back = tmp_path / "back.sqlite"
    copy_log(pg_url, back)
    with Engine.open(reference, read_only=True, handlers=[]) as a, Engine.open(back, read_only=True, handlers=[]) as b:
        assert list(a.log.rows()) == list(b.log.rows())
        assert a.log.meta()["handlers"] == b.log.meta()["handlers"]
    with Engine.replay(pg_url) as from_pg, Engine.replay(back) as from_sqlite:
        assert from_pg.position == from_sqlite.position == from_pg.log.last_seq()
        for name in from_pg.handlers():
            assert from_pg.state(name) == from_sqlite.state(name)
        assert from_pg.state("bandit", "greeting").arms["v1"].pulls > 0
    assert Engine.verify(pg_url).ok


def test_a_worker_needs_a_log_that_exists_and_a_valid_partition(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rtopt", "worker", str(tmp_path / "log.sqlite")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "log.sqlite: no log there" in done.stderr
    with pytest.raises(InvalidLog, match="no log there"):
        Worker.open(str(tmp_path / "log.sqlite"))
    for bad in ("2/2", "-1/3", "a/b", "1"):
        with pytest.raises(ValueError, match=f"partition = '{bad}'"):
            Partition.parse(bad)
    assert Partition.parse("3/4") == Partition(3, 4)
    assert not (tmp_path / "log.sqlite").exists()


def test_a_worker_refuses_a_log_whose_writers_derive(reference: Path, tmp_path: Path) -> None:
    copy = tmp_path / "derived.sqlite"
    copy_log(reference, copy)
    done = subprocess.run(
        [sys.executable, "-m", "rtopt", "worker", str(copy), "--drain"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "were derived by the engines that appended their inputs" in done.stderr
    log = open_log(copy, read_only=True)
    try:
        assert WORKED not in log.meta()  # nothing was marked as derived by workers
    finally:
        log.close()
    assert Engine.verify(copy).ok


def test_a_log_workers_derive_refuses_writers_that_would_derive_too(tmp_path: Path) -> None:
    path = tmp_path / "worked.sqlite"
    with Engine.open(path, seed=3, handlers=[]) as writer:
        writer.define_experiment("greeting", arms=["a", "b"])
    finished(worker(str(path), "--drain"))
    with pytest.raises(RtoptError, match="workers derive this log's events"):
        Engine.open(path, handlers=[BanditHandler()])
    with Engine.open(path, handlers=[]) as writer:
        writer.publish(Feedback(prompt_id="greeting", variant_id="a", success=True, quality_score=1.0,
                                response_time_ms=5.0))  # fmt: skip
    finished(worker(str(path), "--drain"))
    with Engine.open(path, read_only=True, handlers=[BanditHandler()]) as reader:
        assert "greeting" in reader.state("bandit").experiments  # what the worker derived folds on reading
    assert Engine.verify(path).ok


def test_simulate_with_workers_writes_one_log_that_verifies(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--log", pg_url, "--workers", "2", "--steps", "150", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "greeting-1: 150 requests" in out and "greeting-2: 150 requests" in out
    with Engine.open(pg_url, read_only=True) as engine:
        last = engine.log.last_seq()
        assert f"2 processes wrote {last} events" in out
        assert [row[0] for row in engine.log.rows()] == list(range(1, last + 1))
        for name in ("greeting-1", "greeting-2"):
            assert sum(arm.pulls for arm in engine.state("bandit", name).arms.values()) == 150
    assert main(["inspect", pg_url, "--last", "3"]) == 0
    assert f"{last} events" in capsys.readouterr().out
    assert main(["replay", pg_url]) == 0
    handlers = ", ".join(sorted(handler.name for handler in default_handlers()))
    assert f"rebuilt {handlers} at seq {last}" in capsys.readouterr().out
    assert main(["replay", pg_url, "--verify"]) == 0
    verified = capsys.readouterr().out
    assert f"all {last} events match" in verified and "300 decisions re-made identically" in verified
    assert main(["simulate", "--log", pg_url, "--steps", "10"]) == 2  # a PostgreSQL log is never replaced
    assert "already holds events" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["simulate", "--log", str(tmp_path / "x.sqlite"), "--workers", "2"])
    assert refused.value.code == 2 and "argument --workers: 2: needs a PostgreSQL log" in capsys.readouterr().err
    assert not (tmp_path / "x.sqlite").exists()


def test_copy_command_copies_into_postgresql_and_back(reference: Path, pg_url: str, tmp_path: Path) -> None:
    back = tmp_path / "back.sqlite"
    assert main(["copy", str(reference), pg_url]) == 0
    assert main(["copy", pg_url, str(back)]) == 0
    assert main(["copy", str(reference), pg_url]) == 2  # into a log that holds events: refused
    with Engine.open(reference, read_only=True, handlers=[]) as a, Engine.open(back, read_only=True, handlers=[]) as b:
        assert list(a.log.rows()) == list(b.log.rows())


@pytest.mark.parametrize(("option", "value"), [("batch", 0), ("snapshot_every", -5), ("batch", 2.5), ("batch", True)])
def test_a_worker_refuses_bad_sizes_naming_them(location: str, option: str, value: object) -> None:
    Engine.open(location, seed=1, handlers=[]).close()
    with pytest.raises(InvalidArgument, match=f"{option} = {value!r}: must be a whole number") as info:
        Worker.open(location, [], **{option: value})
    assert info.value.argument == option and info.value.value == value
    with Engine.open(location, read_only=True, handlers=[]) as engine:
        assert "followed" not in engine.log.meta()

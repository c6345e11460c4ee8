"""durability="group": calls return once their events are folded, a committer thread writes them in groups;
the log is always a gapless prefix of what was appended, whole commits only, and the engine keeps it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from rtopt.handlers.bandits import ArmUpdated, BanditHandler

from rtopt import Engine, InvalidArgument, InvalidEvent, RtoptError, StorageUnavailable
from rtopt.events import Decision, Feedback
from rtopt.storage.group import GroupLost

ARMS = ["a", "b", "c"]
HOUR_MS = 3_600_000.0  # an interval nothing in a test waits out: groups are written when something asks


def play(engine: Engine, rounds: int, start: int = 0) -> list[str]:
    """``rounds`` of decide then feedback at event times from ``start``; the decisions' ids."""
    decisions = []
    for i in range(start, start + rounds):
        decision = engine.decide("shared", time=1_000.0 + i)
        engine.feedback(decision.id, success=i % 3 == 0, quality_score=0.5, response_time_ms=10.0, time=1_000.5 + i)
        decisions.append(decision.id)
    return decisions


def held_back(path: Path) -> Engine:
    """A group engine on a new log whose groups wait (an hour) until something asks for them, with the UCB1
    experiment "shared" defined."""
    engine = Engine.open(path, seed=1, handlers=[BanditHandler()], durability="group", commit_interval_ms=HOUR_MS)
    engine.define_experiment("shared", arms=ARMS, policy="ucb1", time=1_000.0)
    return engine


def events_of(path: Path) -> list[tuple]:
    """The log's events as replay compares them: every column but the wall-clock recording time."""
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        return [(row[0], *row[1:5], *row[6:]) for row in engine.log.rows()]


def test_group_writes_the_same_events_as_a_commit_per_call(tmp_path: Path) -> None:
    for durability in ("process", "group"):
        with Engine.open(
            tmp_path / f"{durability}.sqlite", seed=3, handlers=[BanditHandler()], durability=durability
        ) as engine:
            engine.define_experiment("shared", arms=ARMS, policy="thompson", time=1_000.0)
            play(engine, 200)
    assert events_of(tmp_path / "group.sqlite") == events_of(tmp_path / "process.sqlite")
    assert Engine.verify(tmp_path / "group.sqlite").ok


def test_a_call_returns_before_its_group_is_written_and_reads_see_it(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with held_back(path) as engine:
        play(engine, 5)
        assert engine.position == 16  # applied: the definition, then a Decision, a Feedback, an ArmUpdated each
        assert engine.log.storage.last_seq() == 0  # nothing written yet
        assert engine.state("bandit", "shared").arms["a"].pulls + engine.state("bandit", "shared").arms["b"].pulls > 0
        assert [envelope.seq for envelope in engine.read(types=[Decision])] == [2, 5, 8, 11, 14]  # a read writes first
        assert engine.log.storage.last_seq() == 16
        play(engine, 2, start=5)
        engine.flush()
        assert engine.log.storage.last_seq() == 22
        play(engine, 1, start=7)
    assert events_of(path)[-1][0] == 25  # closing writes what waits


def test_a_full_group_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(
        path, seed=1, handlers=[], durability="group", commit_interval_ms=HOUR_MS, commit_every=10
    ) as engine:
        feedback = Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5)
        engine.publish_many([feedback] * 10, time=1.0)
        with Engine.open(path, read_only=True, handlers=[]) as reader:
            reader.log.wait_for_change(60.0)  # the committer writes the ten without being asked
            assert reader.log.last_seq() == 10


def test_the_engine_keeps_the_log_and_another_writer_waits_then_gives_up(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    feedback = Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5)
    with Engine.open(path, seed=1, handlers=[], durability="group") as keeping:
        keeping.publish(feedback, time=1.0)
        with Engine.open(path, handlers=[]) as other:
            other.log.turn_wait_s = 0.2
            with pytest.raises(StorageUnavailable, match=r"turn_wait_s = 0\.2 s"):
                other.publish(feedback, time=2.0)
    with Engine.open(path, handlers=[]) as after:
        assert after.publish(feedback, time=3.0).seq == 2


def test_a_lost_group_is_raised_once_the_state_goes_back_to_the_log_and_its_feedback_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with held_back(path) as engine:
        kept = play(engine, 3)
        engine.flush()
        storage = engine.log.storage
        failing = storage.append

        def append_fails(rows: list) -> int:
            raise OSError("disk full")

        storage.append = append_fails
        lost = engine.decide("shared", time=2_000.0)
        with pytest.raises(GroupLost, match=r"1 events appended after seq 10 .* disk full"):
            engine.flush()
        storage.append = failing
        assert engine.position == 10  # the state is the log's again at the next call
        with pytest.raises(InvalidEvent, match="no such decision in the log"):
            engine.feedback(lost.id, success=True, quality_score=0.5, response_time_ms=1.0, time=2_000.5)
        assert engine.stats().rejected == {"unknown decision": 1}
        play(engine, 2, start=10)
    decisions = [row[1] for row in events_of(path) if row[2] == "Decision"]
    assert decisions[:3] == kept and lost.id not in decisions and len(decisions) == 5
    assert Engine.verify(path).ok


CHILD = """
import sys
from rtopt import Engine
from rtopt.handlers.bandits import BanditHandler

engine = Engine.open(sys.argv[1], seed=1, handlers=[BanditHandler()], durability="group", commit_interval_ms=2)
engine.define_experiment("shared", arms=["a", "b", "c"], policy="thompson", time=1000.0)
for i in range(10**6):
    decision = engine.decide("shared", time=1000.0 + i)
    learnt = engine.feedback(decision.id, success=i % 3 == 0, quality_score=0.5, response_time_ms=10.0, time=1000.5 + i)
    sys.stdout.write(f"{decision.seq} {decision.id}\\n{learnt.seq} {learnt.id}\\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_leaves_a_prefix_of_what_was_acknowledged_with_every_cause(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "log.sqlite"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    acknowledged: list[tuple[int, str]] = []
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        for _ in range(random.Random(seed).randrange(200, 1_500)):
            line = proc.stdout.readline()
            assert line, f"the child ended early (rc={proc.wait()})"
            seq, event_id = line.split()
            acknowledged.append((int(seq), event_id))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = events_of(path)
    assert [row[0] for row in rows] == list(range(1, len(rows) + 1))  # gapless
    by_seq = {row[0]: row[1] for row in rows}
    written = [(seq, event_id) for seq, event_id in acknowledged if seq in by_seq]
    assert written == [(seq, by_seq[seq]) for seq, _ in acknowledged[: len(written)]]  # a prefix, same ids
    ids = {row[1] for row in rows}
    assert all(row[5] is None or row[5] in ids for row in rows)  # every derived event's cause is there
    causes = Counter(row[5] for row in rows if row[2] == ArmUpdated.tag())
    assert causes == Counter(row[1] for row in rows if row[2] == Feedback.tag())  # each Feedback with its update
    with Engine.open(path, handlers=[BanditHandler()]) as reopened:
        assert reopened.log.integrity_check() == "ok"
        live = reopened.state("bandit")
    with Engine.replay(path, handlers=[BanditHandler()]) as replayed:
        assert replayed.state("bandit") == live
    assert Engine.verify(path).ok
    lost = {event_id for _, event_id in acknowledged} - ids
    with Engine.open(path, handlers=[BanditHandler()], durability="group") as restarted:  # no id is given twice
        assert not lost & {restarted.decide("shared", time=2e6 + i).id for i in range(len(lost) + 5)}


def test_bad_group_settings_are_refused_naming_them(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="commit_interval_ms"):
        Engine.open(tmp_path / "a.sqlite", durability="group", commit_interval_ms=0)
    with pytest.raises(InvalidArgument, match="commit_every"):
        Engine.open(tmp_path / "b.sqlite", durability="group", commit_every=0)


def test_group_on_postgresql_keeps_the_log_and_writes_the_same_events(pg_url: str, tmp_path: Path) -> None:
    with Engine.open(pg_url, seed=3, handlers=[BanditHandler()], durability="group") as engine:
        engine.define_experiment("shared", arms=ARMS, policy="thompson", time=1_000.0)
        play(engine, 50)
        with Engine.open(pg_url, handlers=[]) as other:
            other.log.turn_wait_s = 0.2
            with pytest.raises(StorageUnavailable, match=r"turn_wait_s = 0\.2 s"):
                other.publish(
                    Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5)
                )
    with Engine.open(tmp_path / "process.sqlite", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("shared", arms=ARMS, policy="thompson", time=1_000.0)
        play(engine, 50)
    assert events_of(pg_url) == events_of(tmp_path / "process.sqlite")
    assert Engine.verify(pg_url).ok


def test_a_snapshot_after_an_unnoticed_loss_is_refused_and_never_ahead_of_the_log(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with held_back(path) as engine:
        play(engine, 3)
        engine.flush()
        storage = engine.log.storage
        written = storage.append
        storage.append = _fails
        engine.decide("shared", time=2_000.0)
        with pytest.raises(GroupLost):
            engine.snapshot()
        storage.append = written
        assert engine.snapshot() == 10  # the state went back to the log's
    with Engine.open(path, handlers=[BanditHandler()]) as reopened:
        assert reopened.rebuilt.position == 10
    assert Engine.verify(path).ok


def _fails(rows: list) -> int:
    raise OSError("disk full")


def test_a_group_whose_write_failed_after_committing_is_kept_and_the_engine_goes_on(tmp_path: Path) -> None:
    """The outcome of a failed write may be a commit (a connection lost during COMMIT): the log's end is read
    again, and what it holds is the state the engine goes on from."""
    path = tmp_path / "log.sqlite"
    with held_back(path) as engine:
        storage = engine.log.storage
        written = storage.append

        def commits_then_fails(rows: list) -> int:
            written(rows)
            raise OSError("connection lost during COMMIT")

        storage.append = commits_then_fails
        play(engine, 2)
        with pytest.raises(GroupLost):
            engine.flush()
        storage.append = written
        play(engine, 2, start=2)
        engine.flush()
        assert engine.position == storage.last_seq() == 13
    assert [row[2] for row in events_of(path)].count("Decision") == 4
    assert Engine.verify(path).ok


def test_closing_after_a_lost_group_raises_once_then_the_engine_is_closed(tmp_path: Path) -> None:
    engine = held_back(tmp_path / "log.sqlite")
    engine.log.storage.append = _fails
    engine.decide("shared", time=2_000.0)
    with pytest.raises(GroupLost):
        engine.close()
    engine.close()  # again: nothing to do
    with pytest.raises(RtoptError, match="closed"):
        engine.decide("shared", time=2_001.0)


def test_the_backends_settings_are_set_through_the_engines_log(tmp_path: Path) -> None:
    with held_back(tmp_path / "log.sqlite") as engine:
        engine.log.turn_wait_s = 0.5
        assert engine.log.storage.turn_wait_s == 0.5


def test_what_waits_is_written_when_the_program_exits_without_closing(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    script = (
        "import sys\nfrom rtopt import Engine, Feedback\n"
        "engine = Engine.open(sys.argv[1], seed=1, handlers=[], durability='group', commit_interval_ms=3.6e6)\n"
        "feedback = Feedback(prompt_id='p', variant_id='v', response_time_ms=1.0, success=True, quality_score=0.5)\n"
        "engine.publish_many([feedback] * 10, time=1.0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=120)
    assert len(events_of(path)) == 10


def test_a_group_engine_inherited_by_a_forked_process_refuses_there_and_the_parent_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with held_back(path) as engine:
        play(engine, 1)
        reading, writing = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe and leaves without cleanup
            os.close(reading)
            try:
                engine.decide("shared", time=5_000.0)
                said = "no error"
            except RtoptError as error:
                said = str(error)
            engine.close()
            os.write(writing, said.encode())
            os._exit(0)
        os.close(writing)
        with os.fdopen(reading) as pipe:
            said = pipe.read()
        assert os.waitpid(child, 0)[1] == 0
        assert said.endswith("open the engine in each process after it is forked"), said
        play(engine, 1, start=1)
    assert [row[0] for row in events_of(path)] == list(range(1, 8))

"""Two engines on one log: what one of them does reaches the other (forgotten keys, event-time bounds), a
durable commit is never reported failed, and damaged meta data or snapshots do not make a log unopenable."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from test_log_integrity import FeedbackCounter

import rtopt.copying
import rtopt.replay
from rtopt import Engine, Feedback, InvalidEvent, InvalidLog, StorageUnavailable
from rtopt.copying import copy_log


def rating(user: str | None = None, prompt: str = "p") -> Feedback:
    return Feedback(
        prompt_id=prompt, variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5, user_id=user
    )


def publish_past_the_other_writer(engine: Engine, event: Feedback, time: float) -> None:
    """Publish on a log another engine wrote to: the engine folds what the other one appended and appends
    after it, at the first attempt."""
    before = engine.log.last_seq()
    assert engine.publish(event, time=time).seq == before + 1


def test_a_subject_forgotten_by_one_engine_is_not_sealed_with_its_old_key_by_another(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as first, Engine.open(path, handlers=[]) as second:
        publish_past_the_other_writer(second, rating("bob"), 1.0)
        forgotten = first.forget("bob")
        publish_past_the_other_writer(second, rating("bob"), 2.0)
    with Engine.open(path, read_only=True, handlers=[]) as reader:
        users = [envelope.payload.user_id for envelope in reader.read(types=[Feedback])]
    assert users[0] == f"forgotten:{forgotten.payload.ref}" and users[-1] == "bob"


def test_one_engine_bounds_event_time_by_what_another_appended(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    far = 5e9  # beyond the wall clock: only the stream's own latest time bounds what follows it
    with Engine.open(path, seed=1, handlers=[]) as first, Engine.open(path, handlers=[]) as second:
        first.publish(rating(prompt="s"), time=far)
        publish_past_the_other_writer(second, rating(prompt="x"), 1.0)
        second.publish(rating(prompt="s"), time=far + 3_600.0)  # an hour after its stream's latest event
        with pytest.raises(InvalidEvent) as refused:
            second.publish(rating(prompt="s"), time=far + 3 * 86_400.0)
        assert refused.value.field == "time"


def test_a_durable_commit_whose_follow_up_read_fails_is_acknowledged_and_folded_once(pg_url: str) -> None:
    with Engine.open(pg_url, seed=1, handlers=[FeedbackCounter()]) as first, Engine.open(
        pg_url, handlers=[FeedbackCounter()]
    ) as second:
        first.publish(rating(prompt="a"), time=1.0)
        rows, failed = second.log.rows, []

        def fails_once(*args: object, **kwargs: object) -> object:
            if not failed:
                failed.append(True)
                raise StorageUnavailable("the server went away")
            return rows(*args, **kwargs)

        second.log.rows = fails_once  # the read of what the first engine appended, right after the commit
        acknowledged = second.publish(rating(prompt="b"), time=2.0)
        assert failed and acknowledged.seq == 2
        second.publish(rating(prompt="b"), time=3.0)
        assert second.state("feedback_counter").feedback == 3 == len(list(second.read(types=[Feedback])))


def test_keys_are_copied_before_the_events_so_an_interrupted_copy_holds_no_unreadable_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source.sqlite"
    with Engine.open(source, seed=1, handlers=[]) as engine:
        engine.publish(rating("alice"), time=1.0)

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(rtopt.copying, "copy_keys", interrupted)
    monkeypatch.setattr(rtopt.replay, "copy_keys", interrupted)
    for target, copy in (
        (tmp_path / "copy.sqlite", lambda target: copy_log(source, target)),
        (tmp_path / "replayed.sqlite", lambda target: Engine.replay(source, into=target).close()),
    ):
        with pytest.raises(KeyboardInterrupt):
            copy(target)
        with Engine.open(target, read_only=True, handlers=[]) as opened:
            assert opened.position == 0  # nothing copied, rather than events whose users read as forgotten


def test_damaged_meta_data_and_snapshots_leave_the_log_openable(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[FeedbackCounter()]) as engine:
        engine.publish(rating(), time=1.0)
        engine.publish(rating(), time=2.0)
        for key in ("seed", "created_at", "format_version"):
            with pytest.raises(ValueError, match="kept by the log itself"):
                engine.log.set_meta(key, "x")
        engine.log.set_meta("handlers", "not json")
        engine.log.save_snapshot("feedback_counter", FeedbackCounter().fingerprint(), 2, b"\xc1garbage")
    with pytest.warns(RuntimeWarning, match="does not decode"):
        engine = Engine.open(path, handlers=[FeedbackCounter()])
    with engine:
        assert engine.state("feedback_counter").feedback == 2
    with Engine.open(path, handlers=[]) as engine:
        engine.log.set_meta("copy", "{}")
    with pytest.raises(InvalidLog, match="copy marker"):
        Engine.open(path, handlers=[])


def test_a_write_lock_held_past_the_busy_timeout_is_a_storage_error_and_nothing_is_written(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as engine:
        engine.publish(rating(), time=1.0)
        engine.log._writer.execute("PRAGMA busy_timeout = 50")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageUnavailable, match="nothing was written"):
                engine.publish(rating(), time=2.0)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert engine.publish(rating(), time=3.0).seq == 2


def test_a_turn_held_past_the_wait_is_a_storage_error_and_a_turn_given_in_time_is_taken(tmp_path: Path) -> None:
    """Another writer holds the line's lock (as one stopped inside its transaction would): a write waits
    ``turn_wait_s``, then raises with nothing written; one whose turn comes within the wait goes on, and so do
    the writes after it."""
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as engine:
        engine.publish(rating(), time=1.0)
        holder = os.open(f"{path}-lock", os.O_RDONLY)  # a descriptor of its own, as another process has
        try:
            fcntl.flock(holder, fcntl.LOCK_EX)
            engine.log.turn_wait_s = 0.2
            with pytest.raises(StorageUnavailable, match=r"turn_wait_s = 0.2 s .* nothing was written"):
                engine.publish(rating(), time=2.0)
            assert engine.log.last_seq() == 1
            engine.log.turn_wait_s = 60.0
            given = threading.Timer(0.05, fcntl.flock, (holder, fcntl.LOCK_UN))
            given.start()
            assert engine.publish(rating(), time=3.0).seq == 2  # waited for the turn, then wrote
            given.join()
            fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the writer gave the turn back after its write
            fcntl.flock(holder, fcntl.LOCK_UN)
        finally:
            os.close(holder)
        assert [engine.publish(rating(), time=4.0 + i).seq for i in range(3)] == [3, 4, 5]
    with Engine.open(path, read_only=True, handlers=[]) as reader:
        assert [row[0] for row in reader.log.rows()] == [1, 2, 3, 4, 5]

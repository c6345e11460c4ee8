"""One suite for every storage backend: each test runs on SQLite, and on PostgreSQL under the ``postgres`` marker.

What a backend must do, whatever it stores in: append and read ranges, meta data, the hash chain, snapshots,
and the tracking tier (a consumer's position recorded in the same transaction as what it wrote, refused with
``WriteConflict`` when another writer moved it first).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from rtopt import InvalidArgument, ReadOnlyLog, StorageError, WriteConflict
from rtopt.storage.factory import open_log
from rtopt.storage.interface import FORMAT_VERSION, GENESIS, HEAD, EventLog, Row, chained, head_value

SEED = 7


def row(seq: int, event_id: str, stream: str = "s", event_type: str = "Feedback", cause: str | None = None) -> Row:
    """A row as the engine stores one; its event time is its seq."""
    return (seq, event_id, event_type, stream, float(seq), 100.0 + seq, cause, None, 1, f"payload {event_id}".encode())


ROWS = [
    row(1, "a", "left"),
    row(2, "b", "right"),
    row(3, "c", "left", "Decision", cause="a"),
    row(4, "d", "left"),
    row(5, "e", "right", "Decision", cause="b"),
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The location of a new log: an SQLite file, then a PostgreSQL schema."""
    if request.param == "sqlite":
        return str(tmp_path / "log.sqlite")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def log(where: str) -> Iterator[EventLog]:
    opened = open_log(where, seed=SEED)
    yield opened
    opened.close()


@pytest.fixture
def other(log: EventLog, where: str) -> Iterator[EventLog]:
    """A second writer on the same log, as another process would open it."""
    opened = open_log(where)
    yield opened
    opened.close()


class TestRecorder:
    def test_a_new_log_is_empty_with_its_seed_format_and_head(self, log: EventLog) -> None:
        assert log.last_seq() == 0
        assert list(log.rows()) == []
        meta = log.meta()
        assert (meta["seed"], meta["format_version"], meta[HEAD]) == (str(SEED), str(FORMAT_VERSION), "0:" + "0" * 32)

    def test_appended_rows_read_back_by_range_type_stream_and_id(self, log: EventLog) -> None:
        assert log.append(ROWS[:2]) == 1
        assert log.append(ROWS[2:]) == 3
        assert log.last_seq() == 5
        assert list(log.rows()) == ROWS
        assert list(log.rows(2, 4)) == ROWS[1:4]
        assert list(log.rows(types=["Decision"])) == [ROWS[2], ROWS[4]]
        assert list(log.rows(types=[])) == []
        assert list(log.rows(stream="left", until=3)) == [ROWS[0], ROWS[2]]
        assert list(log.rows(chunk=2)) == ROWS  # paged two at a time
        assert list(log.inputs(2)) == [ROWS[1], ROWS[3]]
        assert log.get("c") == ROWS[2]
        assert log.get("missing") is None
        assert log.existing_ids(["e", "x", "a"]) == {"a", "e"}
        assert log.count_by_type() == {"Decision": 2, "Feedback": 3}
        assert log.count_by_type(until=2) == {"Feedback": 2}
        assert log.count_inputs() == 3
        assert log.count_inputs(until=4, after=1) == 2
        assert log.latest_times() == {"left": 4.0, "right": 5.0}

    def test_every_append_moves_the_head_anchor_along_the_hash_chain(self, log: EventLog) -> None:
        log.append(ROWS[:3])
        log.append(ROWS[3:])
        last = chained(ROWS, GENESIS)[-1]
        assert log.meta()[HEAD] == head_value(5, last[-1])
        assert log.audit() is None
        assert log.audit(4) is None

    def test_meta_data_is_kept_except_what_the_log_keeps_itself(self, log: EventLog) -> None:
        log.set_meta("owner", "team a")
        log.set_meta("owner", "team b")
        assert log.meta()["owner"] == "team b"
        for key in ("format_version", "seed", HEAD):
            with pytest.raises(InvalidArgument, match=f"key = '{key}': kept by the log itself") as raised:
                log.set_meta(key, "1")
            assert (raised.value.argument, raised.value.value) == ("key", key)
        assert log.meta()["seed"] == str(SEED)

    def test_the_newest_snapshot_at_or_before_a_seq_is_loaded(self, log: EventLog) -> None:
        log.save_snapshot("bandit", "f1", 2, b"at 2")
        log.save_snapshot("bandit", "f1", 4, b"at 4")
        log.save_snapshot("bandit", "f2", 3, b"other fingerprint")
        assert log.load_snapshot("bandit", "f1", None) == (4, b"at 4")
        assert log.load_snapshot("bandit", "f1", 3) == (2, b"at 2")
        assert log.load_snapshot("bandit", "f1", 1) is None
        assert log.load_snapshot("detection", "f1", None) is None

    def test_an_append_at_a_taken_seq_is_a_write_conflict(self, log: EventLog, other: EventLog) -> None:
        other.append(ROWS[:1])
        with pytest.raises(WriteConflict, match="expected to append at seq 2, got 1; another process"):
            log.append([row(1, "late")])
        assert list(log.rows()) == ROWS[:1]

    def test_an_append_of_a_taken_id_is_a_write_conflict(self, log: EventLog) -> None:
        log.append(ROWS[:2])
        with pytest.raises(WriteConflict, match="nothing was written") as refused:
            log.append([row(3, "fresh"), row(4, "a")])
        assert isinstance(refused.value, StorageError)
        assert list(log.rows()) == ROWS[:2]
        assert log.append([row(3, "fresh")]) == 3  # the refused batch left nothing behind

    def test_a_tracked_append_places_its_rows_after_the_log_and_records_the_position(self, log: EventLog) -> None:
        assert log.tracked("worker:0/1") == 0
        log.append(ROWS[:2])
        derived = [row(1, "x", cause="a"), row(2, "y", cause="b")]  # numbered from 1: the log places them
        assert log.append_tracked(derived, "worker:0/1", previous=0, position=2) == 3
        assert log.tracked("worker:0/1") == 2
        assert log.tracked("worker:1/2") == 0
        assert [(r[0], r[1]) for r in log.rows(3)] == [(3, "x"), (4, "y")]
        assert log.audit() is None  # placed rows are chained as any others
        assert log.append_tracked([], "worker:0/1", previous=2, position=4) == 5  # a position alone
        assert log.tracked("worker:0/1") == 4

    def test_a_tracked_position_is_read_by_another_connection(self, log: EventLog, where: str) -> None:
        log.append(ROWS)
        log.append_tracked([row(1, "x", cause="e")], "worker", previous=0, position=5)
        with closing(open_log(where, read_only=True)) as reopened:
            assert reopened.tracked("worker") == 5

    def test_a_duplicate_tracking_position_is_a_write_conflict_writing_nothing(
        self, log: EventLog, other: EventLog
    ) -> None:
        log.append(ROWS[:2])
        log.append_tracked([row(1, "x", cause="a")], "worker:0/1", previous=0, position=1)
        with pytest.raises(WriteConflict, match="tracker 'worker:0/1' is at seq 1, not 0"):
            other.append_tracked([row(1, "y", cause="a")], "worker:0/1", previous=0, position=1)
        assert other.get("y") is None
        assert log.tracked("worker:0/1") == 1
        assert log.last_seq() == 3

    def test_a_tracker_does_not_move_when_its_rows_are_refused(self, log: EventLog) -> None:
        log.append(ROWS[:2])
        with pytest.raises(WriteConflict):
            log.append_tracked([row(1, "x"), row(2, "a")], "worker", previous=0, position=2)  # "a" is taken
        assert log.tracked("worker") == 0
        assert log.last_seq() == 2
        assert log.append_tracked([row(1, "x")], "worker", previous=0, position=2) == 3

    def test_a_position_that_does_not_move_forward_is_refused(self, log: EventLog) -> None:
        with pytest.raises(ValueError, match="position = 3: must be after previous = 3"):
            log.append_tracked([], "worker", previous=3, position=3)
        assert log.tracked("worker") == 0

    def test_a_read_only_log_records_no_position(self, log: EventLog, where: str) -> None:
        log.append(ROWS[:1])
        with closing(open_log(where, read_only=True)) as reader:
            assert reader.tracked("worker") == 0
            with pytest.raises(ReadOnlyLog):
                reader.append_tracked([], "worker", previous=0, position=1)


def test_an_sqlite_log_gets_the_tracking_table_with_its_first_tracked_append(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"

    def tables() -> list[str]:
        with sqlite3.connect(path) as conn:
            return [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]

    with closing(open_log(path, seed=SEED)) as log:
        log.append(ROWS)
    assert tables() == ["events", "rtopt_meta", "snapshots"]  # the format of a log no worker wrote is unchanged
    with closing(open_log(path)) as log:
        log.append_tracked([], "worker", previous=0, position=5)
    assert tables() == ["events", "rtopt_meta", "rtopt_tracking", "snapshots"]

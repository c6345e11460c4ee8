"""The logs: reads, seq and id rules, tailing and read-only engines on both backends (tests taking ``location``
run on an SQLite file and on a PostgreSQL database); immutability, refusing foreign files and durability of
the SQLite file."""

from __future__ import annotations

import hashlib
import queue
import random
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from rtopt import (
    Decision,
    Draft,
    Engine,
    Event,
    ExperimentDefined,
    Feedback,
    FeedbackRejected,
    InvalidEvent,
    InvalidLog,
    ReadOnlyLog,
    RtoptError,
    WriteConflict,
)
from rtopt.storage.factory import is_postgres_url
from rtopt.storage.interface import COLUMNS, EventLog
from rtopt.storage.sqlite import SQLiteLog

INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
GUARD = 30.0
"""Seconds after which a blocked wait gives up so a broken engine fails the test instead of hanging it."""


def fb(i: int = 0, prompt: str = "p1") -> Feedback:
    return Feedback(
        prompt_id=prompt, variant_id=f"v{i % 3}", response_time_ms=float(i), success=i % 2 == 0, quality_score=0.5
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def raw_rows(path: Path) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "log.sqlite"


# --- immutability --------------------------------------------------------------------------------


def _filled(location: str | Path, n: int = 5) -> list[tuple]:
    with Engine.open(location, seed=1, handlers=[]) as engine:
        for i in range(n):
            engine.publish(fb(i))
        return list(engine.log.rows())


def run_sql(location: str | Path, sql: str) -> None:
    """Run ``sql`` on the log's database directly, as another program could."""
    if is_postgres_url(location):
        with psycopg.connect(str(location), autocommit=True) as conn:
            conn.execute(sql)
        return
    conn = sqlite3.connect(location)
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET stream = 'forged'",
        "UPDATE events SET payload = payload || payload WHERE seq = 2",
        "UPDATE events SET seq = seq + 100",
        "DELETE FROM events",
        "DELETE FROM events WHERE seq = 5",
        "INSERT INTO events SELECT * FROM events WHERE seq = 1 ON CONFLICT(seq) DO UPDATE SET stream = 'forged'",
    ],
)
def test_events_cannot_be_updated_or_deleted(location: str, sql: str) -> None:
    before = _filled(location)
    refused = (psycopg.errors.RaiseException, sqlite3.IntegrityError)
    with pytest.raises(refused, match="append-only"):
        run_sql(location, sql)
    with Engine.open(location, seed=1, handlers=[]) as engine:
        assert list(engine.log.rows()) == before
        assert [env.seq for env in engine.read()] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("verb", ["INSERT OR REPLACE", "REPLACE"])
def test_existing_rows_cannot_be_replaced(path: Path, verb: str) -> None:
    # REPLACE deletes the conflicting row without firing DELETE triggers (recursive_triggers is off by
    # default), so the append-only guarantee needs a guard on INSERT as well.
    before = _filled(path)
    forged = (1, "forged-id", "Feedback", "forged", 0.0, 0.0, None, None, 1, before[0][9])
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.DatabaseError):
            conn.execute(INSERT.replace("INSERT", verb), forged)
        conn.commit()
    finally:
        conn.close()
    assert raw_rows(path) == before


def test_plain_insert_of_a_taken_seq_or_id_fails(path: Path) -> None:
    before = _filled(path)
    conn = sqlite3.connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(INSERT, before[0])
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(INSERT, (99, *before[0][1:]))
        conn.commit()
    finally:
        conn.close()
    assert raw_rows(path) == before


# --- refusing files that are not rtopt logs ------------------------------------------------------


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO users (name) VALUES (?)", [("ada",), ("grace",)])
    conn.commit()
    conn.close()


def _foreign_meta_table(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE rtopt_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO rtopt_meta VALUES ('owner', 'someone else')")
    conn.commit()
    conn.close()


def _text(path: Path) -> None:
    path.write_text("id,name\n1,ada\n2,grace\n" * 50)


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(1234).randbytes(8192))


def _sqlite_header_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(99).randbytes(4096))


@pytest.mark.parametrize(
    "make", [_foreign_sqlite, _foreign_meta_table, _text, _random_bytes, _sqlite_header_then_garbage]
)
@pytest.mark.parametrize("read_only", [False, True])
def test_foreign_file_is_refused_and_left_alone(tmp_path: Path, make, read_only: bool) -> None:
    target = tmp_path / "not-a-log.db"
    make(target)
    digest, size = sha256(target), target.stat().st_size
    with pytest.raises(InvalidLog):
        Engine.open(target, handlers=[], read_only=read_only)
    with pytest.raises(InvalidLog):
        SQLiteLog.open(target, read_only=read_only)
    assert sha256(target) == digest
    assert target.stat().st_size == size


def test_foreign_sqlite_gets_no_rtopt_tables(tmp_path: Path) -> None:
    target = tmp_path / "app.db"
    _foreign_sqlite(target)
    with pytest.raises(InvalidLog, match="not an rtopt log"):
        Engine.open(target, handlers=[])
    conn = sqlite3.connect(target)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()
    assert tables == {"users"}


@pytest.mark.parametrize("read_only", [False, True])
def test_newer_format_is_refused_and_left_alone(path: Path, read_only: bool) -> None:
    _filled(path, 3)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE rtopt_meta SET value = '3' WHERE key = 'format_version'")
    conn.commit()
    conn.close()
    digest = sha256(path)
    with pytest.raises(InvalidLog, match="newer"):
        Engine.open(path, handlers=[], read_only=read_only)
    assert sha256(path) == digest


def test_current_format_and_empty_file_open(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with Engine.open(empty, seed=5, handlers=[]) as engine:
        assert engine.log.meta()["format_version"] == "2"
        assert engine.publish(fb()).seq == 1
    with pytest.raises(InvalidLog):
        Engine.open(tmp_path / "missing.sqlite", read_only=True, handlers=[])
    assert not (tmp_path / "missing.sqlite").exists()
    with pytest.raises(ReadOnlyLog):
        Engine.open(":memory:", read_only=True, handlers=[])


def test_seed_must_match(location: str) -> None:
    _filled(location, 1)
    with pytest.raises(RtoptError, match="seed"):
        Engine.open(location, seed=2, handlers=[])
    with Engine.open(location, handlers=[]) as engine:
        assert engine.seed == 1


# --- reading -------------------------------------------------------------------------------------

DEFINED_A = ExperimentDefined(experiment="exp-a", arms=["a", "b"], policy="thompson")
DEFINED_B = ExperimentDefined(experiment="exp-b", arms=["c"], policy="thompson")
DECIDED_A = Decision(experiment="exp-a", arm="a", policy="thompson", propensity=0.5)
DECIDED_B = Decision(experiment="exp-b", arm="c", policy="thompson", propensity=1.0)
# (event, explicit stream or None): expected seq, type and stream noted on the right
SEQUENCE: list[tuple[Event, str | None]] = [
    (DEFINED_A, None),  # 1 ExperimentDefined exp-a
    (fb(1, "p1"), None),  # 2 Feedback p1
    (fb(2, "p2"), None),  # 3 Feedback p2
    (DECIDED_A, None),  # 4 Decision exp-a
    (fb(3, "p1"), None),  # 5 Feedback p1
    (DEFINED_B, None),  # 6 ExperimentDefined exp-b
    (fb(4, "p1"), "other"),  # 7 Feedback other
    (DECIDED_B, None),  # 8 Decision exp-b
    (fb(5, "p2"), None),  # 9 Feedback p2
    (fb(6, "p1"), None),  # 10 Feedback p1
    (FeedbackRejected(reason="late"), "exp-a"),  # 11 FeedbackRejected exp-a
    (fb(7, "p1"), None),  # 12 Feedback p1
]

READS = [
    # (start, until, types, stream) -> seqs
    ((1, None, None, None), list(range(1, 13))),
    ((4, None, None, None), list(range(4, 13))),
    ((1, 4, None, None), [1, 2, 3, 4]),
    ((3, 7, None, None), [3, 4, 5, 6, 7]),
    ((5, 5, None, None), [5]),
    ((12, 12, None, None), [12]),
    ((13, None, None, None), []),
    ((8, 3, None, None), []),
    ((1, 0, None, None), []),
    ((1, None, None, "p1"), [2, 5, 10, 12]),
    ((1, None, None, "p2"), [3, 9]),
    ((1, None, None, "other"), [7]),
    ((1, None, None, "exp-a"), [1, 4, 11]),
    ((1, None, None, "exp-b"), [6, 8]),
    ((1, None, None, "nowhere"), []),
    ((1, None, ["Feedback"], None), [2, 3, 5, 7, 9, 10, 12]),
    ((1, None, ["Decision"], None), [4, 8]),
    ((1, None, ["ExperimentDefined", "Decision"], None), [1, 4, 6, 8]),
    ((1, None, ["FeedbackRejected"], None), [11]),
    ((1, None, [], None), []),
    ((1, None, ["NoSuchType"], None), []),
    ((1, None, ["Feedback"], "p1"), [2, 5, 10, 12]),
    ((3, 10, ["Feedback"], "p1"), [5, 10]),
    ((6, 12, ["Feedback"], None), [7, 9, 10, 12]),
    ((1, 8, ["Feedback", "Decision"], None), [2, 3, 4, 5, 7, 8]),
    ((1, None, ["Decision"], "exp-a"), [4]),
    ((1, None, ["Feedback"], "exp-a"), []),
    ((7, None, ["ExperimentDefined", "Decision"], "exp-b"), [8]),
    ((2, 11, None, "exp-a"), [4, 11]),
]


@pytest.fixture
def built(location: str):
    with Engine.open(location, seed=1, handlers=[]) as engine:
        for i, (event, stream) in enumerate(SEQUENCE, start=1):
            env = engine.publish(event, stream, time=1000.0 + i)
            assert env.seq == i
        yield engine


def test_hand_built_sequence_is_recorded_as_published(built: Engine) -> None:
    envelopes = list(built.read())
    assert [env.seq for env in envelopes] == list(range(1, 13))
    assert [env.payload for env in envelopes] == [event for event, _ in SEQUENCE]
    assert [env.time for env in envelopes] == [1000.0 + i for i in range(1, 13)]
    streams = ["exp-a", "p1", "p2", "exp-a", "p1", "exp-b", "other", "exp-b", "p2", "p1", "exp-a", "p1"]
    assert [env.stream for env in envelopes] == streams
    assert all(env.is_input for env in envelopes)
    assert built.log.count_by_type() == {"Decision": 2, "ExperimentDefined": 2, "Feedback": 7, "FeedbackRejected": 1}


@pytest.mark.parametrize(("query", "expected"), READS, ids=[str(q) for q, _ in READS])
def test_read_filters(built: Engine, query, expected: list[int]) -> None:
    start, until, types, stream = query
    assert [env.seq for env in built.read(types=types, start=start, until=until, stream=stream)] == expected
    for chunk in (1, 2, 3, 5, 2000):
        rows = list(built.log.rows(start, until, types, stream, chunk=chunk))
        assert [row[0] for row in rows] == expected, chunk
    if types:
        classes = [{"Feedback": Feedback, "Decision": Decision}.get(t, t) for t in types]
        assert [env.seq for env in built.read(types=classes, start=start, until=until, stream=stream)] == expected


def test_read_returns_the_recorded_envelopes(built: Engine) -> None:
    for env in built.read():
        row = built.log.get(env.id)
        assert row is not None and row[0] == env.seq
        assert list(built.read(start=env.seq, until=env.seq)) == [env]


@pytest.mark.parametrize("n", [9, 10, 11, 1, 3])
def test_chunked_rows_are_complete_ordered_and_unique(location: str, n: int) -> None:
    with Engine.open(location, seed=1, handlers=[]) as engine:
        for i in range(n):
            engine.publish(fb(i, "p1" if i % 2 else "p2"))
        log = engine.log
        assert isinstance(log, EventLog)
        everything = list(log.rows(chunk=2000))
        assert [row[0] for row in everything] == list(range(1, n + 1))
        assert list(log.rows(chunk=3)) == everything
        assert list(log.rows(chunk=1)) == everything
        assert list(log.rows(start=2, chunk=3)) == everything[1:]
        odd = [row for row in everything if row[3] == "p1"]
        assert list(log.rows(stream="p1", chunk=3)) == odd
        assert list(log.rows(stream="p1", chunk=1)) == odd
        assert list(log.rows(types=["Feedback"], stream="p2", until=n - 1, chunk=2)) == [
            row for row in everything if row[3] == "p2" and row[0] <= n - 1
        ]


def test_rows_is_lazy_and_picks_up_rows_appended_between_chunks(location: str) -> None:
    with Engine.open(location, seed=1, handlers=[]) as engine:
        for i in range(6):
            engine.publish(fb(i))
        it = engine.log.rows(chunk=3)
        first = [next(it)[0] for _ in range(3)]
        engine.publish(fb(6))
        assert first + [row[0] for row in it] == [1, 2, 3, 4, 5, 6, 7]


# --- seq and id rules ----------------------------------------------------------------------------


def test_seq_gapless_and_ids_unique_across_publish_paths(location: str) -> None:
    with Engine.open(location, seed=1, handlers=[]) as engine:
        returned = [engine.publish(fb(0))]
        returned.append(engine.publish(fb(1), id="custom-1"))
        returned += engine.publish_many([fb(2), Draft(fb(3), id="custom-2"), fb(4), fb(5), Draft(fb(6), stream="s")])
        returned += engine.publish_many([])
        returned.append(engine.publish(fb(7), time=5.0))
        assert [env.seq for env in returned] == list(range(1, 9))
        assert returned[1].id == "custom-1" and returned[3].id == "custom-2"
        assert returned[6].stream == "s"
    with Engine.open(location, seed=1, handlers=[]) as engine:
        envelopes = list(engine.read())
        assert envelopes == returned
        ids = [env.id for env in envelopes]
        assert len(set(ids)) == len(ids)
        assert engine.publish(fb(8)).seq == 9


def test_duplicate_id_is_refused_and_nothing_of_that_call_is_written(location: str) -> None:
    with Engine.open(location, seed=1, handlers=[]) as engine:
        engine.publish(fb(0), id="taken")
        engine.publish(fb(1))
        with pytest.raises(InvalidEvent) as info:
            engine.publish(fb(2), id="taken")
        assert info.value.field == "id" and info.value.value == "taken"
        assert engine.log.last_seq() == 2
        with pytest.raises(InvalidEvent) as info:
            engine.publish_many([Draft(fb(3), id="fresh"), fb(4), Draft(fb(5), id="taken")])
        assert info.value.field == "id"
        assert engine.log.get("fresh") is None
        assert engine.log.last_seq() == 2
        with pytest.raises(InvalidEvent) as info:
            engine.publish_many([Draft(fb(6), id="twin"), Draft(fb(7), id="twin")])
        assert info.value.field == "id" and info.value.value == "twin"
        assert engine.log.get("twin") is None
        assert engine.log.last_seq() == 2
        assert engine.stats().rejected == {"duplicate id": 3}
        after = engine.publish_many([fb(8), Draft(fb(9), id="fresh")])
        assert [env.seq for env in after] == [3, 4]
        assert engine.log.get("fresh")[0] == 4
    with Engine.open(location, seed=1, handlers=[]) as engine:
        envelopes = list(engine.read())
        assert [env.seq for env in envelopes] == [1, 2, 3, 4]
        assert len({env.id for env in envelopes}) == 4


class _NotifyingQueue(list):
    """Stands in for the engine's queue of waiting publishes so the test knows when they are queued."""

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__()
        self.changed = changed

    def append(self, item: object) -> None:
        super().append(item)
        with self.changed:
            self.changed.notify_all()


def test_duplicate_id_in_a_group_commit_fails_alone(location: str) -> None:
    """Publishes waiting together are committed as one group; one with a taken id fails, the others commit."""
    with Engine.open(location, seed=1, handlers=[]) as engine:
        engine.publish(fb(0), id="taken")
        changed = threading.Condition()
        results: dict[str, object] = {}

        def run(name: str, **kwargs: object) -> None:
            try:
                results[name] = engine.publish(fb(1), **kwargs)
            except Exception as exc:
                results[name] = exc

        threads = [
            threading.Thread(target=run, args=("ok-1",)),
            threading.Thread(target=run, args=("dup",), kwargs={"id": "taken"}),
            threading.Thread(target=run, args=("ok-2",), kwargs={"id": "new"}),
        ]
        with engine.writer.lock:  # hold commits back until all three are queued
            with engine.writer.queue_lock:
                engine.writer.queue = _NotifyingQueue(changed)
            for thread in threads:
                thread.start()
            with changed:
                assert changed.wait_for(lambda: len(engine.writer.queue) == 3, timeout=GUARD)
        for thread in threads:
            thread.join(GUARD)
            assert not thread.is_alive()
        dup = results["dup"]
        assert isinstance(dup, InvalidEvent) and dup.field == "id"
        ok1, ok2 = results["ok-1"], results["ok-2"]
        assert not isinstance(ok1, Exception) and not isinstance(ok2, Exception)
        assert sorted([ok1.seq, ok2.seq]) == [2, 3]
        assert ok1.recorded_at == ok2.recorded_at  # one group, one transaction
        assert ok2.id == "new"
        assert [env.seq for env in engine.read()] == [1, 2, 3]
        assert engine.log.get(ok1.id)[0] == ok1.seq
        assert engine.publish(fb(2)).seq == 4


def test_many_threads_mixing_duplicates_and_fresh_ids(location: str) -> None:
    with Engine.open(location, seed=1, handlers=[]) as engine:
        engine.publish(fb(0), id="taken")
        errors: list[BaseException] = []
        published: list[list[int]] = [[] for _ in range(4)]
        refused = [0] * 4

        def worker(k: int) -> None:
            try:
                for i in range(150):
                    if i % 3 == 0:
                        try:
                            engine.publish(fb(i), id="taken")
                        except InvalidEvent as exc:
                            assert exc.field == "id"
                            refused[k] += 1
                    else:
                        published[k].append(engine.publish(fb(i), id=f"w{k}-{i}" if i % 3 == 1 else None).seq)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(GUARD)
        assert not errors
        assert refused == [50] * 4
        total = 1 + sum(len(p) for p in published)
        assert total == 1 + 4 * 100
        rows = list(engine.log.rows())
        assert [row[0] for row in rows] == list(range(1, total + 1))
        assert len({row[1] for row in rows}) == total
        assert engine.stats().rejected == {"duplicate id": 200}


def test_second_writer_on_the_same_file_cannot_leave_a_gap(path: Path) -> None:
    with Engine.open(path, seed=1, handlers=[]) as first, Engine.open(path, seed=1, handlers=[]) as second:
        assert first.publish(fb(0)).seq == 1
        with pytest.raises(WriteConflict, match="another process"):
            second.publish(fb(1))
        # the stale writer re-read the log and continues after it
        assert second.publish(fb(2)).seq == 2
        assert [row[0] for row in first.log.rows()] == [1, 2]
        assert len({row[1] for row in first.log.rows()}) == 2


# --- tail and read-only engines ------------------------------------------------------------------


def test_read_only_engine_tails_a_writer_thread(location: str) -> None:
    bursts = [1, 5, 2, 30, 1, 7]
    total = sum(bursts)
    with Engine.open(location, seed=1, handlers=[]) as writer:
        writer.publish(fb(100))  # seq 1 exists before the reader opens
        reader = Engine.open(location, read_only=True, handlers=[])
        seen_by_reader: queue.Queue[int] = queue.Queue()
        published: list[int] = [1]
        errors: list[BaseException] = []

        def write() -> None:
            try:
                done = 1
                for burst in bursts:
                    for i in range(burst):
                        published.append(writer.publish(fb(i)).seq)
                    done += burst
                    while seen_by_reader.get(timeout=GUARD) < done:  # wait until the reader caught up
                        pass
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=write)
        seen: list[int] = []
        try:
            thread.start()
            # idle_timeout only stops a broken tail from hanging the test
            for env in reader.tail(start=1, idle_timeout=GUARD, poll_interval=0.01):
                seen.append(env.seq)
                seen_by_reader.put(env.seq)
                if env.seq == total + 1:
                    break
            thread.join(GUARD)
        finally:
            reader.close()
        assert not errors
        assert published == list(range(1, total + 2))
        assert seen == published


def test_tail_until_stop_with_filters(location: str) -> None:
    with Engine.open(location, seed=1, handlers=[]) as writer:
        for i in range(4):
            writer.publish(fb(i, "p1" if i % 2 else "p2"))  # seqs 1..4, p1 at 2 and 4
        reader = Engine.open(location, read_only=True, handlers=[])
        stop = threading.Event()
        got: queue.Queue[int] = queue.Queue()
        seen: list[int] = []
        errors: list[BaseException] = []

        def follow() -> None:
            try:
                for env in reader.tail(types=[Feedback], stream="p1", start=3, stop=stop, poll_interval=0.01):
                    seen.append(env.seq)
                    got.put(env.seq)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=follow)
        thread.start()
        try:
            assert got.get(timeout=GUARD) == 4
            expected = [4]
            for i in range(20):
                env = writer.publish(fb(i, "p1" if i % 4 == 0 else "p2"))
                if env.stream == "p1":
                    expected.append(env.seq)
            writer.publish(DEFINED_A, "p1")  # right stream, wrong type
            last = writer.publish(fb(99, "p1")).seq
            expected.append(last)
            while got.get(timeout=GUARD) != last:
                pass
        finally:
            stop.set()
            thread.join(GUARD)
            reader.close()
        assert not thread.is_alive()
        assert not errors
        assert seen == expected


def test_tail_without_start_follows_only_new_events(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with Engine.open(location, seed=1, handlers=[]) as engine:
        for i in range(3):
            engine.publish(fb(i))
        log = engine.log
        waiting = threading.Event()
        wait_for_change = log.wait_for_change

        def hooked(timeout: float) -> bool:
            waiting.set()  # the tail has read everything there was and now waits for news
            return wait_for_change(timeout)

        monkeypatch.setattr(log, "wait_for_change", hooked)
        published: list[int] = []

        def publish_when_waiting() -> None:
            if waiting.wait(GUARD):
                published.append(engine.publish(fb(3)).seq)

        thread = threading.Thread(target=publish_when_waiting)
        thread.start()
        tailing = engine.tail(idle_timeout=GUARD, poll_interval=0.01)
        try:
            assert next(tailing).seq == 4
        finally:
            tailing.close()
            thread.join(GUARD)
        assert published == [4]


def test_read_only_engine_refuses_writes(path: Path) -> None:
    _filled(path, 3)
    digest = sha256(path)
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        with pytest.raises(ReadOnlyLog):
            engine.publish(fb())
        with pytest.raises(ReadOnlyLog):
            engine.publish_many([fb(), fb()])
        with pytest.raises(ReadOnlyLog):
            engine.log.append([raw_rows(path)[0]])
        assert engine.log.read_only
        assert engine.log.last_seq() == 3
        assert [env.seq for env in engine.read()] == [1, 2, 3]
    assert sha256(path) == digest
    with Engine.open(path, seed=1, handlers=[]) as engine:
        assert engine.publish(fb()).seq == 4


def test_read_only_until_seq(location: str) -> None:
    _filled(location, 5)
    with Engine.open(location, read_only=True, handlers=[], until_seq=3) as engine:
        assert engine.position == 3
    with pytest.raises(RtoptError):
        Engine.open(location, handlers=[], until_seq=3)


# --- durability ----------------------------------------------------------------------------------


def test_power_durability_uses_full_synchronous(path: Path) -> None:
    with Engine.open(path, seed=1, handlers=[], durability="power") as engine:
        assert engine.log._writer.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert engine.log._writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert [engine.publish(fb(i)).seq for i in range(5)] == [1, 2, 3, 4, 5]
        assert [env.seq for env in engine.publish_many([fb(5), fb(6)])] == [6, 7]
    with Engine.open(path, seed=1, handlers=[]) as engine:
        assert engine.log._writer.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert [row[0] for row in engine.log.rows()] == list(range(1, 8))
        assert engine.log.integrity_check() == "ok"
    with pytest.raises(ValueError):
        Engine.open(path, handlers=[], durability="disk")


def test_the_wal_stays_bounded_under_a_steady_stream_of_commits(tmp_path: Path) -> None:
    path = tmp_path / "wal.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as engine:
        for i in range(20_000):
            engine.publish(fb(i), stream="s", time=float(i))
        wal = Path(f"{path}-wal").stat().st_size
        database = path.stat().st_size
    # SQLite checkpoints every 1,000 pages and then starts the WAL over: it never holds the whole log
    assert wal < 8 * 1024 * 1024
    assert wal < database

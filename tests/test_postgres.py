"""The PostgreSQL log: immutability in the database, refusing foreign databases, several writer processes at
once (gapless seq in commit order), engines taking turns on one experiment, and waking workers with NOTIFY."""

from __future__ import annotations

import subprocess
import sys
import threading

import psycopg
import pytest

from rtopt import Engine, Feedback, InvalidLog, RtoptError, StorageUnavailable, WriteConflict
from rtopt.errors import StorageError
from rtopt.pgserver import TemporaryServer
from rtopt.storage.interface import COLUMNS, GENESIS, HEAD, chained, head_value
from rtopt.storage.postgres import _SCHEMA, PostgresLog

GUARD = 60.0
"""Seconds after which a blocked wait gives up so a broken log fails the test instead of hanging it."""


def fb(i: int, prompt: str = "p1") -> Feedback:
    return Feedback(
        prompt_id=prompt, variant_id=f"v{i % 3}", response_time_ms=float(i), success=True, quality_score=0.5
    )


def raw(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []


def filled(url: str, n: int = 5) -> list[tuple]:
    with Engine.open(url, seed=1, handlers=[]) as engine:
        for i in range(n):
            engine.publish(fb(i))
    return raw(url, "SELECT * FROM events ORDER BY seq")


def test_the_database_refuses_to_truncate_the_events(pg_url: str) -> None:
    before = filled(pg_url)
    with pytest.raises(psycopg.errors.RaiseException, match="append-only: TRUNCATE refused"):
        raw(pg_url, "TRUNCATE events")
    assert raw(pg_url, "SELECT * FROM events ORDER BY seq") == before


def test_a_taken_seq_or_id_is_refused(pg_url: str) -> None:
    before = filled(pg_url)
    with pytest.raises(psycopg.errors.UniqueViolation):
        raw(
            pg_url,
            "INSERT INTO events SELECT seq + 100, id, type, stream, time, recorded_at, causation_id,"
            " correlation_id, schema_version, payload FROM events WHERE seq = 1",
        )
    with Engine.open(pg_url, handlers=[]) as engine:
        with pytest.raises(StorageError, match="duplicate key value violates unique constraint") as refused:
            engine.log.append([(6, *before[0][1 : len(COLUMNS)])])
        assert isinstance(refused.value.__cause__, psycopg.errors.UniqueViolation)
        with pytest.raises(WriteConflict, match="expected to append at seq 6, got 9"):
            engine.log.append([(9, "fresh", *before[0][2 : len(COLUMNS)])])
    assert raw(pg_url, "SELECT * FROM events ORDER BY seq") == before


def test_a_foreign_database_is_refused_and_left_alone(pg_url: str) -> None:
    raw(pg_url, "CREATE TABLE users (id serial PRIMARY KEY, name text)")
    raw(pg_url, "INSERT INTO users (name) VALUES ('ada'), ('grace')")
    for read_only in (False, True):
        with pytest.raises(InvalidLog, match=r"not an rtopt log \(a database with tables \['users'\]\)"):
            Engine.open(pg_url, handlers=[], read_only=read_only)
    tables = raw(pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    assert tables == [("users",)]


def test_an_empty_database_opened_read_only_is_refused_and_left_empty(pg_url: str) -> None:
    with pytest.raises(InvalidLog, match="no such log"):
        Engine.open(pg_url, handlers=[], read_only=True)
    assert raw(pg_url, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()") == []


def test_a_newer_format_is_refused(pg_url: str) -> None:
    filled(pg_url, 2)
    raw(pg_url, "UPDATE rtopt_meta SET value = '3' WHERE key = 'format_version'")
    with pytest.raises(InvalidLog, match="newer"):
        Engine.open(pg_url, handlers=[], read_only=True)


def test_a_read_only_log_refuses_writes_in_the_database_too(pg_url: str) -> None:
    before = filled(pg_url, 3)
    log = PostgresLog.open(pg_url, read_only=True)
    try:
        assert log.read_only and log.last_seq() == 3
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            log._reader.execute("DELETE FROM rtopt_meta")
    finally:
        log.close()
    assert raw(pg_url, "SELECT * FROM events ORDER BY seq") == before


def test_an_unreachable_server_is_named_without_its_password(pg_server: TemporaryServer) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{pg_server.port}/no_such_database"
    with pytest.raises(RtoptError, match="no_such_database: cannot connect") as info:
        Engine.open(url, handlers=[])
    assert "hunter2" not in str(info.value)
    assert "postgres:***@" in str(info.value)


WRITER = """
import sys
from rtopt import Engine, Feedback

url, k, total, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def event(i):
    return Feedback(prompt_id=f"w{k}", variant_id=f"{k}-{i}", response_time_ms=1.0, success=True, quality_score=1.0)


with Engine.open(url, handlers=[]) as engine:
    for start in range(0, total, batch):
        engine.publish_many([event(i) for i in range(start, min(start + batch, total))])
"""


def test_four_writer_processes_leave_a_gapless_log_a_reader_tails_in_order(pg_url: str) -> None:
    writers, per_writer = 4, 10_000
    total = writers * per_writer
    Engine.open(pg_url, seed=1, handlers=[]).close()
    reader = Engine.open(pg_url, read_only=True, handlers=[])
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, pg_url, str(k), str(per_writer), str(k * 37 + 90)])
        for k in range(writers)
    ]
    seen: list[int] = []
    try:
        # a reader paging by seq while the writers commit: it must see every seq, in order, once
        for envelope in reader.tail(start=1, idle_timeout=GUARD, poll_interval=1.0):
            seen.append(envelope.seq)
            if envelope.seq == total:
                break
    finally:
        codes = [proc.wait(GUARD) for proc in procs]
        reader.close()
    assert codes == [0] * writers
    assert seen == list(range(1, total + 1))
    rows = raw(pg_url, "SELECT seq, id, stream, payload FROM events ORDER BY seq")
    assert [row[0] for row in rows] == list(range(1, total + 1))
    assert len({row[1] for row in rows}) == total
    with Engine.open(pg_url, read_only=True, handlers=[]) as engine:
        variants = [env.payload.variant_id for env in engine.read()]
        assert engine.log.audit() is None  # each batch was chained after the place it was moved to
    assert sorted(variants) == sorted(f"{k}-{i}" for k in range(writers) for i in range(per_writer))
    for k in range(writers):  # each writer's events in the order it published them
        mine = [v for v in variants if v.startswith(f"{k}-")]
        assert mine == [f"{k}-{i}" for i in range(per_writer)]


def test_engines_on_one_log_take_turns_on_the_same_streams(pg_url: str) -> None:
    with Engine.open(pg_url, seed=5) as left, Engine.open(pg_url, seed=5) as right:
        returned = [left.define_experiment("shared", ["a", "b"], time=1.0)]
        assert right.define_experiment("shared", ["a", "b"], time=1.0) == returned[0]  # recorded once
        for t in range(2, 12):
            deciding, learning = (left, right) if t % 2 else (right, left)
            decision = deciding.decide("shared", time=float(t))
            returned.append(decision)
            # the other engine takes the feedback: it folds the decision before screening the feedback
            success = t % 3 == 0
            returned.append(
                learning.feedback(decision.id, success=success, quality_score=0.9, response_time_ms=1.0, time=t + 0.5)
            )
        # each engine got back the seqs its events stand at, in the order they were committed
        assert [left.log.get(env.id)[0] for env in returned] == [env.seq for env in returned]
        assert [env.seq for env in returned] == sorted(env.seq for env in returned)
        # both folded every decision and every feedback, whoever wrote it, the last one before its own commit
        assert sum(arm.pulls for arm in right.state("bandit", "shared").arms.values()) == 10
        assert sum(arm.pulls for arm in left.state("bandit", "shared").arms.values()) == 10
        last = left.publish(fb(0, "shared"), "shared", time=20.0).seq
        assert right.publish(fb(1, "shared"), "shared", time=21.0).seq == last + 1  # on the stream left wrote last
    with Engine.open(pg_url, read_only=True) as replayed:
        assert sum(arm.pulls for arm in replayed.state("bandit", "shared").arms.values()) == 10
        assert [env.seq for env in replayed.read()] == list(range(1, replayed.position + 1))
    assert Engine.verify(pg_url).ok


def test_a_waiting_reader_is_woken_by_another_connections_commit(pg_url: str) -> None:
    with Engine.open(pg_url, seed=1, handlers=[]) as writer, Engine.open(pg_url, read_only=True, handlers=[]) as r:
        log = r.log
        assert log.wait_for_change(0.0)  # the first call starts listening and asks for a read
        assert not log.wait_for_change(0.0)
        woken = threading.Event()
        listening = threading.Thread(target=lambda: log.wait_for_change(GUARD) and woken.set())
        listening.start()
        writer.publish(fb(1))
        listening.join(GUARD)
        assert woken.is_set()
        assert not log.wait_for_change(0.0)


# --- the hash chain ------------------------------------------------------------------------------


def edit(url: str, sql: str) -> None:
    """Run ``sql`` with the append-only trigger disabled, as the owner of the database could."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
        conn.execute(sql)
        conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")


def test_an_edited_row_breaks_the_chain(pg_url: str) -> None:
    filled(pg_url, 100)
    assert Engine.verify(pg_url, handlers=[]).ok
    edit(pg_url, "UPDATE events SET stream = 'forged' WHERE seq = 10")
    report = Engine.verify(pg_url, handlers=[])
    assert (report.difference.seq, report.difference.field) == (10, "chain")


def test_deleted_last_rows_are_found_on_open(pg_url: str) -> None:
    filled(pg_url, 10)
    edit(pg_url, "DELETE FROM events WHERE seq > 8")
    with pytest.raises(InvalidLog, match="changed outside rtopt: at seq 9, head"):
        Engine.open(pg_url, handlers=[])
    report = Engine.verify(pg_url, handlers=[])
    assert (report.difference.seq, report.difference.field) == (9, "head")


def test_a_disabled_trigger_is_found_on_open(pg_url: str) -> None:
    filled(pg_url, 10)
    raw(pg_url, "ALTER TABLE events DISABLE TRIGGER events_append_only")
    with pytest.raises(InvalidLog, match="events_append_only missing"):
        Engine.open(pg_url, handlers=[], read_only=True)


def test_a_format_1_log_migrates_when_opened_writable(pg_url: str) -> None:
    with Engine.open(":memory:", seed=4, handlers=[]) as engine:
        engine.publish_many([fb(i) for i in range(50)], time=1.0)
        rows = list(engine.log.rows())
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.transaction():
        for statement in _SCHEMA:  # the schema of format 1 had no chain column
            conn.execute(statement.replace(",\n        chain bytea)", ")"))
        conn.cursor().executemany(
            "INSERT INTO rtopt_meta VALUES (%s, %s)", [("format_version", "1"), ("seed", "4"), ("created_at", "1.0")]
        )
        conn.cursor().executemany(f"INSERT INTO events VALUES ({', '.join(['%s'] * len(COLUMNS))})", rows)
    with Engine.open(pg_url, read_only=True, handlers=[]) as engine:
        assert not engine.log.chained and list(engine.log.rows()) == rows
    assert "no hash chain" in Engine.verify(pg_url, handlers=[]).notes[0]
    with Engine.open(pg_url, handlers=[]) as engine:
        assert engine.log.meta()["format_version"] == "2"
        assert engine.publish(fb(50)).seq == 51
        everything = list(engine.log.rows())
    stored = chained(everything, GENESIS)
    assert raw(pg_url, "SELECT chain FROM events ORDER BY seq") == [(row[-1],) for row in stored]
    assert raw(pg_url, f"SELECT value FROM rtopt_meta WHERE key = '{HEAD}'") == [
        (head_value(51, stored[-1][-1]),)
    ]
    report = Engine.verify(pg_url, handlers=[])
    assert report.ok and not report.notes


def test_a_writer_stopped_inside_its_commit_is_ended_by_the_server_and_the_others_go_on(pg_url: str) -> None:
    """The server ends the session of a writer idle in its transaction for half its ``turn_wait_s``: the
    append lock it held is free again and the other writer's commit goes through, without an error."""
    with Engine.open(pg_url, seed=1, handlers=[]) as stopped, Engine.open(pg_url, handlers=[]) as other:
        stopped.publish(fb(0))
        stopped.log.turn_wait_s = 0.2  # its session ends after a second idle inside a transaction (the least)
        with stopped.log.appending():  # holds the append lock, and goes no further
            assert other.publish(fb(1)).seq == 2
        assert stopped.publish(fb(2)).seq == 3  # it connects again and goes on
        assert stopped.log.reconnects == 1


def test_a_write_that_waits_for_the_append_lock_past_its_turn_wait_writes_nothing(pg_url: str) -> None:
    with Engine.open(pg_url, seed=1, handlers=[]) as holding, Engine.open(pg_url, handlers=[]) as waiting:
        holding.publish(fb(0))
        waiting.log.turn_wait_s = 0.2
        taken = r"append lock for more than turn_wait_s = 0.2 s; nothing"
        with holding.log.appending(), pytest.raises(StorageUnavailable, match=taken):
            waiting.publish(fb(1))
        assert waiting.log.last_seq() == 1
        assert waiting.publish(fb(2)).seq == 2  # the next write takes its turn


def test_a_commit_that_broke_is_found_by_its_row_not_by_an_event_of_another_process_named_alike(pg_url: str) -> None:
    """After a COMMIT broke, the log is asked whether it committed: an event under the same id written by
    another process (which named its inputs alike) is not this commit's."""
    log = PostgresLog.open(pg_url, seed=1)
    try:
        ours = (1, "input-1", "Feedback", "p1", 1.0, 2.0, None, None, 1, b"ours")
        theirs = (1, "input-1", "Feedback", "p1", 1.0, 3.0, None, None, 1, b"theirs")
        writer, ended = log._writer, 2**31 - 1  # no server process has that pid: the broken session has ended
        assert log._committed_at(writer, [ours], None, ended) is None  # nothing under the id
        log.append([theirs])
        assert log._committed_at(writer, [ours], None, ended) is None  # another's event under the id
        assert log._committed_at(writer, [theirs], None, ended) == 1  # the very row: committed
        assert log._committed_at(writer, [(7, *theirs[1:])], None, ended) == 1  # placed after others' rows
    finally:
        log.close()

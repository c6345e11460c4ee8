"""The log file and its integrity: the hash chain and head anchor (checked at the tail on open, in full by
verify), migration of format-1 logs, copies that stop half way, read-only media, odd paths, unwritable,
damaged and foreign files, the permissions of new logs, and the cheap refusal of a second SQLite writer."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import edit_log, sha256

from rtopt import (
    Context,
    Engine,
    Envelope,
    Event,
    Feedback,
    Handler,
    InvalidLog,
    ReadOnlyLog,
    handles,
)
from rtopt.copying import copy_log
from rtopt.storage.interface import CHAIN, COLUMNS, COPY, GENESIS, HEAD, TAIL_CHECKED, link
from rtopt.storage.sqlite import _TRIGGERS

GUARD = 60.0
"""Seconds after which a blocked wait gives up so a broken log fails the test instead of hanging it."""


def fb(i: int, prompt: str = "p1") -> Feedback:
    return Feedback(
        prompt_id=prompt, variant_id=f"v{i % 3}", response_time_ms=float(i), success=i % 2 == 0, quality_score=0.5
    )


def filled(path: Path, n: int, *, batch: int = 1000) -> None:
    with Engine.open(path, seed=1, handlers=[]) as engine:
        for start in range(0, n, batch):
            engine.publish_many([fb(i) for i in range(start, min(start + batch, n))], time=float(start))


def stored(path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# --- the hash chain ------------------------------------------------------------------------------


def test_every_row_links_to_the_one_before_and_the_head_names_the_last(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 7, batch=3)
    rows = stored(path, f"SELECT {', '.join(COLUMNS)}, {CHAIN} FROM events ORDER BY seq")
    previous = GENESIS
    for *row, chain in rows:
        previous = link(previous, tuple(row))
        assert chain == previous
    assert dict(stored(path, "SELECT key, value FROM rtopt_meta"))[HEAD] == f"7:{previous.hex()}"
    assert Engine.verify(path, handlers=[]).ok


def test_a_copy_has_the_same_chain(tmp_path: Path) -> None:
    source, target = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    filled(source, 12, batch=5)
    copy_log(source, target)
    chain = f"SELECT seq, {CHAIN} FROM events ORDER BY seq"
    assert stored(target, chain) == stored(source, chain)
    assert Engine.verify(target, handlers=[]).ok


def _swap(path: Path, a: int, b: int) -> list[tuple[str, tuple]]:
    """The statements that exchange every column but seq of rows ``a`` and ``b``."""
    columns = [*COLUMNS[1:], CHAIN]
    select = f"SELECT seq, {', '.join(columns)} FROM events WHERE seq IN (?, ?)"
    rows = {r[0]: r[1:] for r in stored(path, select, (a, b))}
    insert = f"INSERT INTO events (seq, {', '.join(columns)}) VALUES ({', '.join('?' * (len(columns) + 1))})"
    return [
        ("DELETE FROM events WHERE seq IN (?, ?)", (a, b)),
        (insert, (a, *rows[b])),
        (insert, (b, *rows[a])),
    ]


def _edit_quality(path: Path, seq: int) -> tuple[str, tuple]:
    (payload,) = stored(path, "SELECT payload FROM events WHERE seq = ?", (seq,))[0]
    event = msgspec.msgpack.decode(payload)
    event["quality_score"] = 0.99
    return ("UPDATE events SET payload = ? WHERE seq = ?", (msgspec.msgpack.encode(event), seq))


def test_verify_finds_an_edited_input_that_nothing_derives_from(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 200)
    edit_log(path, *_edit_quality(path, 30))
    report = Engine.verify(path, handlers=[])
    assert not report.ok
    assert (report.difference.seq, report.difference.field) == (30, "chain")
    with Engine.open(path, read_only=True, handlers=[]) as engine:  # outside the tail: opening does not look
        assert engine.log.last_seq() == 200


def test_verify_finds_a_reordered_pair(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 200)
    for sql, params in _swap(path, 40, 41):
        edit_log(path, sql, params)
    report = Engine.verify(path, handlers=[])
    assert (report.difference.seq, report.difference.field) == (40, "chain")


def test_verify_finds_a_deleted_row(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 200)
    edit_log(path, "DELETE FROM events WHERE seq = 50")
    report = Engine.verify(path, handlers=[])
    assert report.difference == type(report.difference)(50, "seq", 51, 50)


def test_deleted_last_rows_are_found_on_open_and_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 200)
    edit_log(path, "DELETE FROM events WHERE seq > 197")
    digest = sha256(path)
    for read_only in (False, True):
        with pytest.raises(InvalidLog, match=r"changed outside rtopt: at seq 198, head .*the head anchor 200:"):
            Engine.open(path, read_only=read_only, handlers=[])
    assert sha256(path) == digest
    report = Engine.verify(path, handlers=[])
    assert (report.difference.seq, report.difference.field) == (198, "head")


def test_a_truncated_file_is_found_on_open_and_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 3000)
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size - 100)
    for read_only in (False, True):
        with pytest.raises(InvalidLog, match="truncated"):
            Engine.open(path, read_only=read_only, handlers=[])
    with pytest.raises(InvalidLog, match="truncated"):
        Engine.verify(path, handlers=[])


def test_an_edit_in_the_tail_is_found_on_open(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 200)
    edit_log(path, *_edit_quality(path, 200 - TAIL_CHECKED + 1))
    with pytest.raises(InvalidLog, match=f"at seq {200 - TAIL_CHECKED + 1}, chain"):
        Engine.open(path, handlers=[])


def test_dropped_triggers_are_found_on_open_and_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 10)
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.close()
    with pytest.raises(InvalidLog, match="events_no_delete missing"):
        Engine.open(path, handlers=[])
    report = Engine.verify(path, handlers=[])
    assert (report.difference.seq, report.difference.field) == (0, "triggers")


def test_a_row_inserted_outside_rtopt_is_found(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 10)
    row = stored(path, f"SELECT {', '.join(COLUMNS)} FROM events WHERE seq = 10")[0]
    insert = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    edit_log(path, insert, (11, "forged", *row[2:]))
    with pytest.raises(InvalidLog, match="at seq 11, chain is None"):
        Engine.open(path, handlers=[])


# --- format 1 ------------------------------------------------------------------------------------

FORMAT_1 = [
    "CREATE TABLE rtopt_meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, type TEXT NOT NULL, stream TEXT NOT NULL,"
    " time FLOAT NOT NULL, recorded_at FLOAT NOT NULL, causation_id TEXT, correlation_id TEXT,"
    " schema_version INTEGER NOT NULL, payload BLOB NOT NULL)",
    "CREATE UNIQUE INDEX events_by_id ON events (id)",
    "CREATE INDEX events_by_stream ON events (stream, seq)",
    "CREATE INDEX events_by_type ON events (type, seq)",
    "CREATE TABLE snapshots (handler TEXT, fingerprint TEXT, seq INTEGER, state BLOB, created_at FLOAT,"
    " PRIMARY KEY (handler, fingerprint, seq))",
    *_TRIGGERS.values(),
]


def format_1_log(path: Path, n: int) -> list[tuple]:
    """A log as rtopt wrote it before the hash chain, holding ``n`` feedback events; returns its rows."""
    with Engine.open(":memory:", seed=4, handlers=[]) as engine:
        engine.publish_many([fb(i) for i in range(n)], time=1.0)
        rows = list(engine.log.rows())
    conn = sqlite3.connect(path)
    for statement in FORMAT_1:
        conn.execute(statement)
    conn.executemany(
        "INSERT INTO rtopt_meta VALUES (?, ?)", [("format_version", "1"), ("seed", "4"), ("created_at", "1.0")]
    )
    conn.executemany(f"INSERT INTO events VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    conn.commit()
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return rows


def test_a_format_1_log_reads_read_only_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    rows = format_1_log(path, 30)
    digest = sha256(path)
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        assert list(engine.log.rows()) == rows
        assert not engine.log.chained
    report = Engine.verify(path, handlers=[])
    assert report.ok and report.events == 30
    assert any("format 1" in note and "no hash chain" in note for note in report.notes)
    assert sha256(path) == digest


def test_a_format_1_log_migrates_when_opened_writable(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    rows = format_1_log(path, 4500)
    with Engine.open(path, handlers=[]) as engine:
        assert engine.log.meta()["format_version"] == "2"
        assert list(engine.log.rows()) == rows
        assert engine.publish(fb(0)).seq == 4501
    assert stored(path, f"SELECT count(*) FROM events WHERE {CHAIN} IS NULL") == [(0,)]
    triggers = stored(path, "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
    assert dict(triggers) == _TRIGGERS
    report = Engine.verify(path, handlers=[])
    assert report.ok and report.events == 4501 and not report.notes


# --- copies that stop half way -------------------------------------------------------------------


class Interrupted(Exception):
    """Stands in for the process being stopped while it copies."""


def interrupt(done: int, total: int) -> None:
    if done < total:
        raise Interrupted


def test_an_interrupted_copy_is_refused_on_open(tmp_path: Path) -> None:
    source, target = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    filled(source, 6000)
    with pytest.raises(Interrupted):
        copy_log(source, target, interrupt)
    for read_only in (False, True):
        with pytest.raises(InvalidLog, match=r"an incomplete copy of .*a\.sqlite: copying stopped at seq 5000 \(of"
                           r" 6000 in the source\); delete it and copy again"):
            Engine.open(target, read_only=read_only, handlers=[])
    target.unlink()
    assert copy_log(source, target) == 6000
    with Engine.open(target, read_only=True, handlers=[]) as engine:
        assert json.loads(engine.log.meta()[COPY]) == {"of": str(source), "until": 6000, "complete": True}


def test_an_interrupted_replay_into_a_file_is_refused_on_open(tmp_path: Path) -> None:
    source, target = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    filled(source, 6000)
    with pytest.raises(Interrupted):
        Engine.replay(source, into=target, progress=interrupt)
    with pytest.raises(InvalidLog, match="incomplete copy"):
        Engine.open(target, handlers=[])
    target.unlink()
    with Engine.replay(source, into=target) as engine:
        assert engine.position == 6000


def test_a_copy_of_a_copy_names_its_own_source(tmp_path: Path) -> None:
    first, second, third = (tmp_path / f"{name}.sqlite" for name in "abc")
    filled(first, 3)
    copy_log(first, second)
    copy_log(second, third)
    with Engine.open(third, read_only=True, handlers=[]) as engine:
        assert json.loads(engine.log.meta()[COPY])["of"] == str(second)


# --- files: paths, permissions, read-only media, foreign and damaged files -----------------------


@pytest.mark.parametrize("name", ["log?mode=memory.sqlite", "log#1.sqlite", "log%3F.sqlite", "a%20b?c#d"])
def test_odd_paths_open_the_file_they_name(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "odd?dir#x%41"
    path = folder / name
    filled(path, 3)
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        assert engine.log.last_seq() == 3
    assert Engine.verify(path, handlers=[]).ok
    assert {p.name for p in folder.iterdir()} <= {name, f"{name}-wal", f"{name}-shm", f"{name}-lock"}  # no stray files
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


def test_new_logs_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    mask = os.umask(0o077)  # the permissions come from file_mode, whatever the umask
    try:
        for name, options in (("private.sqlite", {}), ("group.sqlite", {"file_mode": 0o640})):
            path = tmp_path / name
            with Engine.open(path, seed=1, handlers=[], **options) as engine:
                engine.publish(fb(0))
                modes = {
                    suffix: stat.S_IMODE(Path(f"{path}{suffix}").stat().st_mode)
                    for suffix in ("", "-wal", "-shm", "-lock")
                }
            assert modes == dict.fromkeys(("", "-wal", "-shm", "-lock"), options.get("file_mode", 0o600))
    finally:
        os.umask(mask)


def test_an_unwritable_log_asks_for_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 3)
    path.chmod(0o444)
    real_access = os.access

    def access(p: str | os.PathLike[str], mode: int) -> bool:
        # the tests run as root, whom a 0444 file does not stop: answer as the kernel would for its owner
        return mode != os.W_OK and real_access(p, mode) if Path(p) == path else real_access(p, mode)

    monkeypatch.setattr(os, "access", access)
    digest = sha256(path)
    with pytest.raises(ReadOnlyLog, match="not writable; open it with read_only=True"):
        Engine.open(path, handlers=[])
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        assert engine.log.last_seq() == 3
    assert sha256(path) == digest


READ_ONLY_MEDIA = """
import sys
from rtopt import Engine, ReadOnlyLog
path = sys.argv[1]
with Engine.open(path, read_only=True, handlers=[]) as engine:
    print(engine.log.last_seq(), [env.seq for env in engine.read()][-1])
try:
    Engine.open(path, handlers=[])
except ReadOnlyLog as exc:
    print("refused:", exc)
"""


def test_a_log_on_read_only_media_reads(tmp_path: Path) -> None:
    """A real read-only mount (a bind mount remounted read-only in a mount namespace of its own)."""
    folder = tmp_path / "media"
    path = folder / "log.sqlite"
    filled(path, 5)
    assert sorted(p.name for p in folder.iterdir()) == ["log.sqlite", "log.sqlite-lock"]  # no -wal or -shm to lean on
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && "
        f"{sys.executable} -c '{READ_ONLY_MEDIA}' {path}"
    )
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("cannot make a mount namespace here to mount a folder read-only")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=GUARD)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "5 5"
    assert lines[1].startswith("refused:") and "read_only=True" in lines[1]


def _meta_only(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE rtopt_meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.executemany("INSERT INTO rtopt_meta VALUES (?, ?)", [("format_version", "2"), ("seed", "1")])
    conn.commit()
    conn.close()


def _no_seed(path: Path) -> None:
    filled(path, 2)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM rtopt_meta WHERE key = 'seed'")
    conn.commit()
    conn.close()


def _damaged_page(path: Path) -> None:
    filled(path, 3000)
    size = path.stat().st_size
    with path.open("r+b") as file:  # garbage over the pages of the middle half of the file
        file.seek(size // 4 // 4096 * 4096)
        file.write(bytes(range(256)) * (size // 2 // 256))


@pytest.mark.parametrize(
    ("make", "found"),
    [
        (_meta_only, r"rtopt_meta but no table events, snapshots"),
        (_no_seed, r"rtopt_meta but seed None"),
    ],
)
@pytest.mark.parametrize("read_only", [False, True])
def test_an_incomplete_log_is_refused_and_left_alone(tmp_path: Path, make, found: str, read_only: bool) -> None:
    path = tmp_path / "log.sqlite"
    make(path)
    digest = sha256(path)
    with pytest.raises(InvalidLog, match=found):
        Engine.open(path, read_only=read_only, handlers=[])
    assert sha256(path) == digest
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0


def test_a_damaged_page_raises_invalid_log(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    _damaged_page(path)
    for read_only in (False, True):
        with (
            pytest.raises(InvalidLog, match="SQLite reports: database disk image is malformed"),
            Engine.open(path, read_only=read_only, handlers=[]) as engine,
        ):
            list(engine.read())


class Counted(msgspec.Struct):
    feedback: int = 0


FOLDS: list[int] = []
"""Every seq the counting handler folded, in this process (for the tests to see how often each is folded)."""


class FeedbackCounter(Handler[Counted]):
    name = "feedback_counter"
    state_type = Counted

    def initial_state(self) -> Counted:
        return Counted()

    @handles(Feedback)
    def _count(self, state: Counted, envelope: Envelope[Any], ctx: Context) -> tuple[Counted, Sequence[Event]]:
        FOLDS.append(envelope.seq)
        state.feedback += 1
        return state, []


def test_an_undecodable_payload_raises_invalid_log(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    filled(path, 100)
    edit_log(path, "UPDATE events SET payload = ? WHERE seq = 3", (b"\xc1garbage",), rechain=True)
    with pytest.raises(InvalidLog, match="seq 3: its Feedback payload cannot be decoded"):
        Engine.open(path, handlers=[FeedbackCounter()])


# --- a second SQLite writer ----------------------------------------------------------------------


def test_a_writer_folds_what_another_appended_once_and_appends_after_it_without_rebuilding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.sqlite"
    with (
        Engine.open(path, seed=1, handlers=[]) as first,
        Engine.open(path, seed=1, handlers=[FeedbackCounter()]) as second,
    ):
        rebuilt = second.rebuilt
        monkeypatch.setattr(second.writer, "rebuild", lambda: pytest.fail("a publish rebuilt the state"))
        FOLDS.clear()
        first.publish_many([fb(i) for i in range(3)])
        assert second.publish(fb(9)).seq == 4
        assert second.rebuilt is rebuilt
        assert second.state("feedback_counter").feedback == 4  # it folded the others' events, once each
        assert FOLDS == [1, 2, 3, 4]
        assert [row[0] for row in first.log.rows()] == [1, 2, 3, 4]


def test_two_writers_publishing_at_once_both_go_on_without_refusal_or_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    total = 2000
    with (
        Engine.open(path, seed=1, handlers=[]) as first,
        Engine.open(path, seed=1, handlers=[FeedbackCounter()]) as second,
    ):
        rebuilds: list[int] = []
        rebuild = second.writer.rebuild
        second.writer.rebuild = lambda: (rebuilds.append(second.position), rebuild())
        FOLDS.clear()
        done = threading.Event()
        accepted: list[int] = []

        def write_first() -> None:
            for written in range(total):
                first.publish(fb(written, "a"))
            done.set()

        thread = threading.Thread(target=write_first)
        thread.start()
        while not done.wait(0) and len(accepted) < 100 * total:
            accepted.append(second.publish(fb(0, "b")).seq)
        thread.join(GUARD)
        assert done.is_set()
        assert first.log.last_seq() == total + len(accepted)
        assert rebuilds == []
        assert sorted(FOLDS) == sorted(set(FOLDS))  # every event folded once by the second engine

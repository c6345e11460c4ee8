"""The physical limit of an rtopt SQLite log: plain ``sqlite3`` writing the very rows rtopt wrote, commit by
commit, with nothing else to do.

An rtopt commit on SQLite writes, in one ``BEGIN IMMEDIATE`` transaction, its rows with every column rtopt
fills (the envelope, the msgpack payload and the row's link in the hash chain) and moves the log's head
anchor (a meta row naming the last seq and its chain value). :func:`copy_commits` does exactly that with the
rows read back from an rtopt log (:func:`stored_commits`), into a log whose schema rtopt created: the copy is
the same log, row for row, and :func:`audit` checks it. What rtopt does besides (encoding and hashing the
rows, reading the log's last row under the write lock, folding, deciding) is what the ratio to this limit
charges it. :func:`minimal_commits` writes the same commits into the smallest table that still keeps a log
(a seq key, a unique id and the payload), the limit of any event store.
"""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import Callable, Sequence
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any, TypeVar

from rtopt.storage.interface import CHAIN, COLUMNS, HEAD, head_value
from rtopt.storage.sql import _INSERT, _SET_META
from rtopt.storage.sqlite import SQLiteLog

StoredRow = tuple[Any, ...]
"""One row as rtopt stored it: the columns of :data:`COLUMNS`, then its chain value."""
Commit = list[StoredRow]
"""The rows one transaction wrote, in seq order."""

_RECORDED_AT = COLUMNS.index("recorded_at")
MINIMAL_SCHEMA = "CREATE TABLE events (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, payload BLOB NOT NULL)"
_MINIMAL_INSERT = "INSERT INTO events (seq, id, payload) VALUES (?, ?, ?)"
_ID, _PAYLOAD = COLUMNS.index("id"), COLUMNS.index("payload")
T = TypeVar("T")


def stored_commits(path: Path) -> list[Commit]:
    """Every row of the rtopt log at ``path`` with its chain value, grouped by the commit that wrote it (the
    events of a commit share their recording time)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(f"SELECT {', '.join(COLUMNS)}, {CHAIN} FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [list(group) for _, group in groupby(rows, key=lambda row: row[_RECORDED_AT])]


def merged(commits: Sequence[Commit], size: int) -> list[Commit]:
    """``commits`` joined ``size`` at a time into one commit each."""
    return [
        [row for commit in commits[start : start + size] for row in commit] for start in range(0, len(commits), size)
    ]


def _connect(path: Path) -> sqlite3.Connection:
    """A writer's connection as rtopt makes one: WAL, ``synchronous=NORMAL``, autocommit."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _timed(conn: sqlite3.Connection, writes: Sequence[T], write: Callable[[T], object]) -> list[int]:
    """Nanoseconds of each of ``writes`` done by ``write`` in a ``BEGIN IMMEDIATE`` transaction of its own."""
    clock = time.perf_counter_ns
    execute = conn.execute
    spent = []
    gc.collect()
    for item in writes:
        t0 = clock()
        execute("BEGIN IMMEDIATE")
        write(item)
        execute("COMMIT")
        spent.append(clock() - t0)
    return spent


def copy_commits(path: Path, commits: Sequence[Commit]) -> list[int]:
    """Write ``commits`` into the rtopt log at ``path`` (its schema made by rtopt, no event yet) as rtopt's
    SQLite log does: the rows with their chain values, then the head anchor, one transaction per commit;
    the nanoseconds each took."""
    heads = [(HEAD, head_value(commit[-1][0], commit[-1][-1])) for commit in commits]
    conn = _connect(path)
    try:
        executemany, execute = conn.executemany, conn.execute

        def write(commit_and_head: tuple[Commit, tuple[str, str]]) -> None:
            executemany(_INSERT, commit_and_head[0])
            execute(_SET_META, commit_and_head[1])

        return _timed(conn, list(zip(commits, heads, strict=True)), write)
    finally:
        conn.close()


def minimal_commits(path: Path, commits: Sequence[Commit]) -> list[int]:
    """Write the seq, id and payload of ``commits`` into a new file holding one table of just those
    (:data:`MINIMAL_SCHEMA`), one transaction per commit; the nanoseconds each took."""
    rows = [[(row[0], row[_ID], row[_PAYLOAD]) for row in commit] for commit in commits]
    conn = _connect(path)
    try:
        conn.execute(MINIMAL_SCHEMA)
        return _timed(conn, rows, partial(conn.executemany, _MINIMAL_INSERT))
    finally:
        conn.close()


def audit(path: Path) -> None:
    """Raise RuntimeError unless the log at ``path`` opens and every row links to the one before it."""
    log = SQLiteLog.open(path, read_only=True)
    try:
        damage = log.audit()
    finally:
        log.close()
    if damage is not None:
        raise RuntimeError(f"the raw copy at {path} is not the log rtopt wrote: {damage}")

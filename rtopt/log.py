"""The append-only event log: a small storage interface and its SQLite implementation.

The engine talks to storage only through :class:`EventLog` (append a batch, read ranges, look up ids,
meta data, snapshots), so another backend can stand beside SQLite without touching the engine.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sqlite_utils

from rtopt.errors import InvalidLog, ReadOnlyLog, RtoptError

FORMAT_VERSION = 1
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file is cut back to after a checkpoint
META_TABLE = "rtopt_meta"
COLUMNS = (
    "seq",
    "id",
    "type",
    "stream",
    "time",
    "recorded_at",
    "causation_id",
    "correlation_id",
    "schema_version",
    "payload",
)
Row = tuple[int, str, str, str, float, float, str | None, str | None, int, bytes]
"""One event as stored: the envelope columns in :data:`COLUMNS` order, the payload msgpack-encoded."""

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM events"
_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


class EventLog(ABC):
    """Storage of an rtopt log: an ordered, gapless, append-only sequence of rows plus meta data."""

    location: str
    read_only: bool

    @abstractmethod
    def append(self, rows: Sequence[Row]) -> None:
        """Append ``rows`` (seqs continuing :meth:`last_seq` without a gap) in one durable transaction."""

    @abstractmethod
    def last_seq(self) -> int:
        """The highest committed seq (0 for an empty log)."""

    @abstractmethod
    def rows(
        self,
        start: int = 1,
        until: int | None = None,
        types: Sequence[str] | None = None,
        stream: str | None = None,
        chunk: int = 2000,
    ) -> Iterator[Row]:
        """Rows with ``start <= seq <= until`` in seq order, optionally only of ``types`` / ``stream``."""

    @abstractmethod
    def get(self, event_id: str) -> Row | None:
        """The row of the event with id ``event_id``, or None."""

    @abstractmethod
    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` already in the log."""

    @abstractmethod
    def count_by_type(self, until: int | None = None) -> dict[str, int]:
        """Number of events per type tag, among those with seq <= ``until``."""

    @abstractmethod
    def count_inputs(self, until: int | None = None) -> int:
        """Number of input events (those with no causing event) with seq <= ``until``."""

    @abstractmethod
    def meta(self) -> dict[str, str]:
        """The log's meta data (format version, seed, creation time)."""

    @abstractmethod
    def wait_for_change(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for another connection to commit; True if one did."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Record ``value`` under ``key`` in the log's meta data (the format version cannot be changed)."""

    @abstractmethod
    def save_snapshot(self, handler: str, fingerprint: str, seq: int, state: bytes) -> None:
        """Store a handler's encoded state as of ``seq``."""

    @abstractmethod
    def load_snapshot(self, handler: str, fingerprint: str, until: int | None) -> tuple[int, bytes] | None:
        """The newest snapshot of ``handler`` with ``fingerprint`` taken at a seq <= ``until``."""

    @abstractmethod
    def close(self) -> None:
        """Release the storage."""


class SQLiteLog(EventLog):
    """An rtopt log in one SQLite file (WAL mode); ``":memory:"`` keeps it in memory.

    UPDATE and DELETE on the events table are refused by triggers in the file itself.

    >>> log = SQLiteLog.open(":memory:", seed=3)
    >>> log.last_seq(), log.meta()["seed"]
    (0, '3')
    >>> log.close()
    """

    def __init__(self, location: str, writer: sqlite3.Connection | None, reader: sqlite3.Connection) -> None:
        self.location = location
        self.read_only = writer is None
        self._writer = writer
        self._reader = reader
        self._write_lock = threading.Lock()
        self._read_lock = self._write_lock if writer is reader else threading.Lock()
        self._data_version = self._pragma_data_version()

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        *,
        read_only: bool = False,
        seed: int | None = None,
        synchronous: str = "NORMAL",
    ) -> SQLiteLog:
        """Open (or create) the log at ``location``.

        A new log records ``seed`` in its meta data (a random one when None). A file that is not an rtopt
        log, or one written by a newer format, raises :class:`InvalidLog` and is left as it was.
        """
        location = str(location)
        if synchronous.upper() not in {"NORMAL", "FULL"}:
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        if location == ":memory:":
            if read_only:
                raise ReadOnlyLog("an in-memory log cannot be opened read-only: it would always be empty")
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            _create_schema(conn, seed)
            return cls(location, conn, conn)
        path = Path(location)
        exists = path.exists() and path.stat().st_size > 0
        if exists:
            _check_existing(path)
        elif read_only:
            raise InvalidLog(f"{location}: no such log")
        if read_only:
            reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            _check_format(reader, location)
            return cls(location, None, reader)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute(f"PRAGMA synchronous={synchronous.upper()}")
        writer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        if not exists or not _has_meta(writer):
            _create_schema(writer, seed)
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        return cls(location, writer, reader)

    # --- writing ---------------------------------------------------------------------------------

    def append(self, rows: Sequence[Row]) -> None:
        if self._writer is None:
            raise ReadOnlyLog(f"{self.location} is open read-only")
        if not rows:
            return
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                if rows[0][0] != last + 1:
                    raise RtoptError(
                        f"{self.location}: expected to append at seq {last + 1}, got {rows[0][0]};"
                        " another process is writing to this log"
                    )
                conn.executemany(_INSERT, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def set_meta(self, key: str, value: str) -> None:
        if self._writer is None:
            raise ReadOnlyLog(f"{self.location} is open read-only")
        if key == "format_version":
            raise ValueError("the format version of a log is set when it is created")
        with self._write_lock:
            self._writer.execute(f"INSERT OR REPLACE INTO {META_TABLE} (key, value) VALUES (?, ?)", (key, value))

    def save_snapshot(self, handler: str, fingerprint: str, seq: int, state: bytes) -> None:
        if self._writer is None:
            raise ReadOnlyLog(f"{self.location} is open read-only")
        with self._write_lock:
            self._writer.execute(
                "INSERT OR REPLACE INTO snapshots (handler, fingerprint, seq, state, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (handler, fingerprint, seq, state, time.time()),
            )

    # --- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def last_seq(self) -> int:
        return self._query("SELECT coalesce(max(seq), 0) FROM events")[0][0]

    def rows(
        self,
        start: int = 1,
        until: int | None = None,
        types: Sequence[str] | None = None,
        stream: str | None = None,
        chunk: int = 2000,
    ) -> Iterator[Row]:
        where, params = ["seq > ?"], []
        if until is not None:
            where.append("seq <= ?")
            params.append(until)
        if types is not None:
            if not types:
                return
            marks = ", ".join("?" * len(types))
            # walking the table in seq order beats the type index (and its sort) when most rows match
            common = stream is None and self._share(types, start, until) > 0.25
            where.append(f"{'+type' if common else 'type'} IN ({marks})")
            params.extend(types)
        if stream is not None:
            where.append("stream = ?")
            params.append(stream)
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT {int(chunk)}"
        after = start - 1
        while True:
            batch = self._query(sql, [after, *params])
            yield from batch
            if len(batch) < chunk:
                return
            after = batch[-1][0]

    def _share(self, types: Sequence[str], start: int, until: int | None) -> float:
        """The fraction of rows in [start, until] whose type is one of ``types`` (read from the type index)."""
        end = self.last_seq() if until is None else until
        if end < start:
            return 0.0
        marks = ", ".join("?" * len(types))
        (matching,) = self._query(
            f"SELECT count(*) FROM events WHERE type IN ({marks}) AND seq BETWEEN ? AND ?", [*types, start, end]
        )[0]
        return matching / (end - start + 1)

    def get(self, event_id: str) -> Row | None:
        found = self._query(f"{_SELECT} WHERE id = ?", (event_id,))
        return found[0] if found else None

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        wanted = list(ids)
        found: set[str] = set()
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            found.update(
                r[0] for r in self._query(f"SELECT id FROM events WHERE id IN ({', '.join('?' * len(part))})", part)
            )
        return found

    def count_by_type(self, until: int | None = None) -> dict[str, int]:
        return dict(
            self._query(
                "SELECT type, count(*) FROM events WHERE seq <= ? GROUP BY type ORDER BY type",
                (until if until is not None else 2**62,),
            )
        )

    def count_inputs(self, until: int | None = None) -> int:
        return self._query(
            "SELECT count(*) FROM events WHERE causation_id IS NULL AND seq <= ?",
            (until if until is not None else 2**62,),
        )[0][0]

    def meta(self) -> dict[str, str]:
        return dict(self._query(f"SELECT key, value FROM {META_TABLE}"))

    def load_snapshot(self, handler: str, fingerprint: str, until: int | None) -> tuple[int, bytes] | None:
        found = self._query(
            "SELECT seq, state FROM snapshots WHERE handler = ? AND fingerprint = ? AND seq <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (handler, fingerprint, until if until is not None else 2**62),
        )
        return (found[0][0], found[0][1]) if found else None

    def _pragma_data_version(self) -> int:
        return self._query("PRAGMA data_version")[0][0]

    def wait_for_change(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            version = self._pragma_data_version()
            if version != self._data_version:
                self._data_version = version
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.02, remaining))

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer ('ok' for a sound file)."""
        return self._query("PRAGMA integrity_check")[0][0]

    def close(self) -> None:
        with self._write_lock:
            if self._writer is not None:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._writer.close()
            if self._reader is not self._writer:
                self._reader.close()


def _check_existing(path: Path) -> None:
    """Raise InvalidLog unless ``path`` is an empty SQLite file or an rtopt log of a readable format."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise InvalidLog(f"{path}: cannot open: {exc}") from None
    try:
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise InvalidLog(f"{path}: not an rtopt log (not an SQLite database: {exc})") from None
        if not tables:
            return
        if META_TABLE not in tables:
            raise InvalidLog(f"{path}: not an rtopt log (an SQLite database with tables {sorted(tables)})")
        _check_format(conn, str(path))
    finally:
        conn.close()


def _check_format(conn: sqlite3.Connection, location: str) -> None:
    try:
        found = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'format_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise InvalidLog(f"{location}: not an rtopt log ({exc})") from None
    if found is None:
        raise InvalidLog(f"{location}: not an rtopt log (no format_version in {META_TABLE})")
    version = int(found[0])
    if version > FORMAT_VERSION:
        raise InvalidLog(
            f"{location}: log format version {version} is newer than this rtopt supports"
            f" ({FORMAT_VERSION}); upgrade rtopt to open it"
        )


def _has_meta(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (META_TABLE,)).fetchone() is not None


def _create_schema(conn: sqlite3.Connection, seed: int | None) -> None:
    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        db[META_TABLE].create({"key": str, "value": str}, pk="key")
        db["events"].create(
            {
                "seq": int,
                "id": str,
                "type": str,
                "stream": str,
                "time": float,
                "recorded_at": float,
                "causation_id": str,
                "correlation_id": str,
                "schema_version": int,
                "payload": bytes,
            },
            pk="seq",
            not_null={"id", "type", "stream", "time", "recorded_at", "schema_version", "payload"},
        )
        db["events"].create_index(["id"], unique=True, index_name="events_by_id")
        db["events"].create_index(["stream", "seq"], index_name="events_by_stream")
        db["events"].create_index(["type", "seq"], index_name="events_by_type")
        db["snapshots"].create(
            {"handler": str, "fingerprint": str, "seq": int, "state": bytes, "created_at": float},
            pk=("handler", "fingerprint", "seq"),
        )
        for action in ("UPDATE", "DELETE"):
            conn.execute(
                f"CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events"
                f" BEGIN SELECT RAISE(ABORT, 'rtopt log is append-only: {action} refused'); END"
            )
        # INSERT OR REPLACE deletes the row it conflicts with without firing DELETE triggers
        conn.execute(
            "CREATE TRIGGER events_no_replace BEFORE INSERT ON events"
            " WHEN NEW.seq <= (SELECT max(seq) FROM events) OR EXISTS (SELECT 1 FROM events WHERE id = NEW.id)"
            " BEGIN SELECT RAISE(ABORT, 'rtopt log is append-only: REPLACE refused'); END"
        )
        meta = {
            "format_version": str(FORMAT_VERSION),
            "seed": str(seed if seed is not None else secrets.randbits(63)),
            "created_at": repr(time.time()),
        }
        conn.executemany(f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?)", meta.items())
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

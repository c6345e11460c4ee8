"""The append-only event log: a small storage interface, what its SQL implementations share, and SQLite's.

The engine talks to storage only through :class:`EventLog` (append a batch, read ranges, look up ids,
meta data, snapshots). :class:`SQLiteLog` keeps a log in one file; ``rtopt.postgres.PostgresLog`` keeps
one in a PostgreSQL database that several processes share; :func:`open_log` picks by location.
"""

from __future__ import annotations

import os
import re
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
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

    shared = False
    """True when several processes may append at once (each batch then goes after what committed first)."""

    @abstractmethod
    def append(self, rows: Sequence[Row], guard: Collection[str] | None = None) -> int:
        """Append ``rows`` in one durable transaction; returns the seq the first row got.

        The rows are numbered to continue :meth:`last_seq` as the writer last saw it. When another process
        committed in between, a :attr:`shared` log moves the batch after those events if ``guard`` is
        given and none of them is on a stream in ``guard`` (the streams whose state the batch was derived
        from); otherwise it raises and writes nothing.
        """

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
    def inputs(self, start: int = 1, until: int | None = None, chunk: int = 2000) -> Iterator[Row]:
        """Input events (those with no causing event) with ``start <= seq <= until``, in seq order."""

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
    def latest_times(self) -> dict[str, float]:
        """Each stream's event time at its last event (by seq)."""

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


class SQLLog(EventLog):
    """What the SQL logs share: the queries of reading, and how a batch is placed after other writers'.

    Subclasses run SQL written with ``?`` placeholders through :meth:`_query` and :meth:`_execute`.
    """

    @abstractmethod
    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        """The rows ``sql`` selects."""

    @abstractmethod
    def _execute(self, sql: str, params: Sequence[object] = ()) -> None:
        """Run one writing statement in a transaction of its own."""

    def _writable(self) -> None:
        if self.read_only:
            raise ReadOnlyLog(f"{self.location} is open read-only")

    def _place(
        self,
        rows: Sequence[Row],
        last: int,
        guard: Collection[str] | None,
        clash: Callable[[int, Collection[str]], tuple[int, str] | None],
    ) -> Sequence[Row]:
        """``rows`` numbered to follow ``last``, the committed end of the log read under the write lock.

        ``clash(after, streams)`` finds an event committed after seq ``after`` on one of ``streams``.
        """
        seen = rows[0][0] - 1
        if seen == last:
            return rows
        if not self.shared or guard is None or seen > last:
            raise RtoptError(
                f"{self.location}: expected to append at seq {last + 1}, got {rows[0][0]};"
                " another process is writing to this log"
            )
        found = clash(seen, guard) if guard else None
        if found is not None:
            raise RtoptError(
                f"{self.location}: stream {found[1]!r} got seq {found[0]} from another process after seq {seen},"
                " which this batch was derived without; nothing was written"
            )
        shift = last - seen
        return [(row[0] + shift, *row[1:]) for row in rows]

    def set_meta(self, key: str, value: str) -> None:
        self._writable()
        if key == "format_version":
            raise ValueError("the format version of a log is set when it is created")
        self._execute(
            f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def save_snapshot(self, handler: str, fingerprint: str, seq: int, state: bytes) -> None:
        self._writable()
        self._execute(
            "INSERT INTO snapshots (handler, fingerprint, seq, state, created_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (handler, fingerprint, seq) DO UPDATE SET state = excluded.state,"
            " created_at = excluded.created_at",
            (handler, fingerprint, seq, state, time.time()),
        )

    def last_seq(self) -> int:
        return self._query("SELECT coalesce(max(seq), 0) FROM events")[0][0]

    def _type_column(self, types: Sequence[str], start: int, until: int | None, stream: str | None) -> str:
        """The expression the type filter compares (lets a backend steer its planner)."""
        return "type"

    def rows(
        self, start: int = 1, until: int | None = None, types: Sequence[str] | None = None, stream: str | None = None,
        chunk: int = 2000
    ) -> Iterator[Row]:
        where: list[str] = []
        params: list[object] = []
        if types is not None:
            if not types:
                return
            where.append(f"{self._type_column(types, start, until, stream)} IN ({', '.join('?' * len(types))})")
            params.extend(types)
        if stream is not None:
            where.append("stream = ?")
            params.append(stream)
        yield from self._pages(start, until, where, params, chunk)

    def inputs(self, start: int = 1, until: int | None = None, chunk: int = 2000) -> Iterator[Row]:
        yield from self._pages(start, until, ["causation_id IS NULL"], [], chunk)

    def _pages(
        self, start: int, until: int | None, where: list[str], params: list[object], chunk: int
    ) -> Iterator[Row]:
        """The rows matching ``where`` with seq in [start, until], read ``chunk`` at a time."""
        where = ["seq > ?", "seq <= ?", *where]
        sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY seq LIMIT {int(chunk)}"
        end = until if until is not None else 2**62
        after = start - 1
        while True:
            batch = self._query(sql, [after, end, *params])
            yield from batch
            if len(batch) < chunk:
                return
            after = batch[-1][0]

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

    def latest_times(self) -> dict[str, float]:
        return dict(
            self._query(
                "SELECT e.stream, e.time FROM events AS e"
                " JOIN (SELECT max(seq) AS seq FROM events GROUP BY stream) AS last ON e.seq = last.seq"
            )
        )

    def meta(self) -> dict[str, str]:
        return dict(self._query(f"SELECT key, value FROM {META_TABLE}"))

    def load_snapshot(self, handler: str, fingerprint: str, until: int | None) -> tuple[int, bytes] | None:
        found = self._query(
            "SELECT seq, state FROM snapshots WHERE handler = ? AND fingerprint = ? AND seq <= ?"
            " ORDER BY seq DESC LIMIT 1",
            (handler, fingerprint, until if until is not None else 2**62),
        )
        return (found[0][0], bytes(found[0][1])) if found else None


class SQLiteLog(SQLLog):
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

    def append(self, rows: Sequence[Row], guard: Collection[str] | None = None) -> int:
        self._writable()
        if not rows:
            return self.last_seq() + 1
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
                conn.executemany(_INSERT, self._place(rows, last, guard, lambda after, streams: None))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return rows[0][0]

    def _execute(self, sql: str, params: Sequence[object] = ()) -> None:
        with self._write_lock:
            self._writer.execute(sql, params)

    # --- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._read_lock:
            return self._reader.execute(sql, params).fetchall()

    def _type_column(self, types: Sequence[str], start: int, until: int | None, stream: str | None) -> str:
        # walking the table in seq order beats the type index (and its sort) when most rows match
        return "+type" if stream is None and self._share(types, start, until) > 0.25 else "type"

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
    check_format_version(None if found is None else found[0], location)


def check_format_version(found: str | None, location: str) -> None:
    """Raise InvalidLog unless ``found`` (the recorded format version) is one this rtopt reads."""
    if found is None:
        raise InvalidLog(f"{location}: not an rtopt log (no format_version in {META_TABLE})")
    version = int(found)
    if version > FORMAT_VERSION:
        raise InvalidLog(
            f"{location}: log format version {version} is newer than this rtopt supports"
            f" ({FORMAT_VERSION}); upgrade rtopt to open it"
        )


def initial_meta(seed: int | None) -> dict[str, str]:
    """The meta data of a new log: format version, ``seed`` (a random one when None) and creation time."""
    return {
        "format_version": str(FORMAT_VERSION),
        "seed": str(seed if seed is not None else secrets.randbits(63)),
        "created_at": repr(time.time()),
    }


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
        conn.executemany(f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?)", initial_meta(seed).items())
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def is_postgres_url(location: object) -> bool:
    """True if ``location`` names a PostgreSQL database rather than an SQLite file.

    >>> is_postgres_url("postgresql://app@db:5432/rtopt"), is_postgres_url("event_log/rtopt.sqlite")
    (True, False)
    """
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages.

    >>> shown_url("postgresql://app:secret@db/rtopt")
    'postgresql://app:***@db/rtopt'
    """
    return re.sub(r"^(\w+://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_log(
    location: str | os.PathLike[str], *, read_only: bool = False, seed: int | None = None, synchronous: str = "NORMAL"
) -> EventLog:
    """The log at ``location``: a PostgreSQL database for a ``postgresql://`` URL, else an SQLite file.

    ``synchronous`` applies to SQLite; a PostgreSQL commit is as durable as its server is configured to be.

    >>> open_log(":memory:", seed=1).meta()["seed"]
    '1'
    """
    if is_postgres_url(location):
        from rtopt.postgres import PostgresLog  # psycopg is only needed for PostgreSQL logs

        return PostgresLog.open(location, read_only=read_only, seed=seed)
    return SQLiteLog.open(location, read_only=read_only, seed=seed, synchronous=synchronous)


def refuse_non_empty(log: EventLog) -> None:
    """Close ``log`` and raise if it holds events: a copy or replay goes into a new log."""
    if log.last_seq():
        location = log.location
        log.close()
        raise RtoptError(f"{location} already holds events: write into a new log")


def copy_rows(
    source: EventLog,
    target: EventLog,
    until_seq: int | None,
    progress: Callable[[int, int], None] | None,
    inputs_only: bool = False,
) -> int:
    """Append ``source``'s events (or only its inputs, numbered anew) up to ``until_seq`` (all if None) to
    ``target``; returns how many."""
    until = source.last_seq() if until_seq is None else until_seq
    chunk: list[Row] = []
    copied = 0
    for row in source.inputs(1, until) if inputs_only else source.rows(1, until):
        copied += 1
        chunk.append((copied, *row[1:]) if inputs_only else row)
        if len(chunk) == 5000:
            target.append(chunk)
            chunk = []
            if progress is not None:
                progress(row[0], until)
    target.append(chunk)
    return copied


def copy_log(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    progress: Callable[[int, int], None] | None = None,
    *,
    inputs_only: bool = False,
) -> int:
    """Copy the log at ``source`` into a new log at ``target`` (SQLite or PostgreSQL, either way round): the
    same events with the same seqs, seed and meta data, and the keys of its sealed values; snapshots are not
    copied. Returns the events copied.

    ``inputs_only`` copies only the input events, numbered 1, 2 ... in their order, for workers to derive
    the rest anew.

    >>> import tempfile, pathlib
    >>> from rtopt import Engine, Feedback
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with Engine.open(folder / "a.sqlite", seed=1, handlers=[]) as engine:
    ...     _ = engine.publish(Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True,
    ...                                 quality_score=0.5))
    >>> copy_log(folder / "a.sqlite", folder / "b.sqlite")
    1
    """
    src = open_log(source, read_only=True)
    try:
        meta = src.meta()
        dst = open_log(target, seed=int(meta["seed"]))
        refuse_non_empty(dst)
        try:
            for key, value in meta.items():
                if key not in ("format_version", "seed", "created_at"):
                    dst.set_meta(key, value)
            copied = copy_rows(src, dst, None, progress, inputs_only)
            from rtopt.privacy import copy_keys  # the privacy module builds on this one

            copy_keys(src, dst)
            return copied
        finally:
            dst.close()
    finally:
        src.close()

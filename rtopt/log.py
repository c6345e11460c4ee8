"""The append-only event log: a small storage interface, what its SQL implementations share, and SQLite's.

The engine talks to storage only through :class:`EventLog` (append a batch, read ranges, look up ids,
meta data, snapshots). :class:`SQLiteLog` keeps a log in one file; ``rtopt.postgres.PostgresLog`` keeps
one in a PostgreSQL database that several processes share; :func:`open_log` picks by location.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import NamedTuple, TypeGuard, cast
from urllib.parse import quote

import msgspec
import sqlite_utils

from rtopt.arguments import invalid, one_of
from rtopt.errors import InvalidLog, ReadOnlyLog, RtoptError, StorageUnavailable

FORMAT_VERSION = 2
"""Version 2 added the ``chain`` column and the ``head`` anchor; a version-1 log is migrated when opened writable."""
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

CHAIN = "chain"
"""The column holding each row's link in the hash chain (see :func:`link`)."""
HEAD = "head"
"""Meta key of the head anchor, ``"<last seq>:<its chain value in hex>"``, written by every append."""
COPY = "copy"
"""Meta key of a log filled from another one: JSON with ``of`` (the source), ``until`` and ``complete``."""
LOG_KEYS = frozenset({"format_version", "seed", "created_at", HEAD, COPY})
"""Meta keys a log keeps for itself: a copy does not take them from its source."""
TAIL_CHECKED = 64
"""How many of the last rows' links opening a log checks (``Engine.verify`` checks them all)."""
GENESIS = bytes(16)
"""The chain value the first row links to."""

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM events"
_SELECT_CHAINED = f"SELECT {', '.join(COLUMNS)}, {CHAIN} FROM events"
_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}, {CHAIN}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
_SET_META = (
    f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_encode = msgspec.msgpack.Encoder().encode


def link(previous: bytes, row: Row) -> bytes:
    """The chain value of ``row``: BLAKE2b-128 over the previous row's chain value and this row's columns.

    Every column takes part (``recorded_at`` too), each in one canonical msgpack form, so that editing,
    removing or reordering a row breaks the link of that row or of the one after it.

    >>> first = link(GENESIS, (1, "id-1", "Feedback", "p1", 1.0, 2.0, None, None, 1, b"x"))
    >>> len(first), first == link(GENESIS, (1, "id-1", "Feedback", "p1", 1, 2, None, None, 1, bytearray(b"x")))
    (16, True)
    """
    if type(row[4]) is not float or type(row[5]) is not float or type(row[9]) is not bytes:
        row = (*row[:4], float(row[4]), float(row[5]), *row[6:9], bytes(row[9]))
    digest = hashlib.blake2b(previous, digest_size=16)
    digest.update(_encode(row))
    return digest.digest()


def chained(rows: Sequence[Row], previous: bytes) -> list[tuple]:
    """``rows`` each with its chain value appended, linked on from ``previous`` (the chain value before them)."""
    stored = []
    for row in rows:
        previous = link(previous, row)
        stored.append((*row, previous))
    return stored


def head_value(seq: int, chain: bytes) -> str:
    """The head anchor naming row ``seq`` with chain value ``chain``."""
    return f"{seq}:{chain.hex()}"


class OthersAppended(RtoptError):
    """Another process appended to a log that one process alone may write: nothing was written.

    >>> OthersAppended("log.sqlite", 4, 9).end
    9
    """

    def __init__(self, location: str, known: int, end: int) -> None:
        super().__init__(
            f"{location}: expected to append at seq {known + 1}, but seqs up to {end} are taken;"
            " another process is writing to this log; nothing was written"
        )
        self.end = end


class Damage(NamedTuple):
    """The first place where a log is not what rtopt wrote: ``seq``, what is wrong there (``field``), what was
    ``found`` and what was ``expected``.

    >>> print(Damage(7, "seq", 8, 7))
    at seq 7, seq is 8 where 7 was expected
    """

    seq: int
    field: str
    found: object
    expected: object

    def __str__(self) -> str:
        return f"at seq {self.seq}, {self.field} is {self.found!r} where {self.expected!r} was expected"


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
    def count_inputs(self, until: int | None = None, after: int = 0) -> int:
        """Number of input events (those with no causing event) with ``after < seq <= until``."""

    @contextmanager
    def appending(self, known: int) -> Iterator[None]:
        """Keep other writers out for the block, having checked that the log still ends at seq ``known``
        (else raise :class:`OthersAppended`, before the caller derives anything); appends inside the block
        commit when it ends. A :attr:`shared` log keeps nobody out: its appends go after what others committed.
        """
        yield

    chained = True
    """True when the rows carry a hash chain (format 2 on); format 1 logs opened read-only have none."""

    @abstractmethod
    def audit(self, start: int = 1) -> Damage | None:
        """The first damage found: from seq ``start`` on, a missing seq or a broken link of the hash chain,
        then a head anchor that does not name the last row, then missing append-only triggers (seq 0)."""

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

    @abstractmethod
    def _missing_triggers(self) -> list[str]:
        """The append-only triggers that are absent, altered or disabled."""

    @abstractmethod
    def _tables(self) -> list[str]:
        """The names of the tables in the log's database."""

    @abstractmethod
    def _event_columns(self) -> list[str]:
        """The columns of the events table, in order."""

    def set_meta(self, key: str, value: str) -> None:
        self._writable()
        if key in LOG_KEYS - {COPY}:
            raise invalid("key", key, "kept by the log itself")
        self._execute(_SET_META, (key, value))

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
        self, start: int, until: int | None, where: list[str], params: list[object], chunk: int, select: str = _SELECT
    ) -> Iterator[Row]:
        """The rows matching ``where`` with seq in [start, until], read ``chunk`` at a time."""
        where = ["seq > ?", "seq <= ?", *where]
        sql = f"{select} WHERE {' AND '.join(where)} ORDER BY seq LIMIT {int(chunk)}"
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

    def count_inputs(self, until: int | None = None, after: int = 0) -> int:
        return self._query(
            "SELECT count(*) FROM events WHERE causation_id IS NULL AND seq > ? AND seq <= ?",
            (after, until if until is not None else 2**62),
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

    # --- integrity -------------------------------------------------------------------------------

    def _head_row(self, first_row: tuple | None) -> tuple[int, bytes]:
        """The last seq and its chain value, from ``first_row`` (the last row's (seq, chain) or None)."""
        if first_row is None:
            return 0, GENESIS
        seq, chain = first_row
        if chain is None:
            raise InvalidLog(f"{self.location}: seq {seq} has no chain value: it was written outside rtopt")
        return seq, bytes(chain)

    @abstractmethod
    def _snapshot(self) -> AbstractContextManager[None]:
        """A read transaction: the reads inside it see the log as of one moment, whatever commits meanwhile."""

    def audit(self, start: int = 1) -> Damage | None:
        with self._snapshot():
            return self._audit(start)

    def _audit(self, start: int) -> Damage | None:
        previous = GENESIS
        if start > 1:
            found = self._query(f"SELECT {CHAIN} FROM events WHERE seq = ?", (start - 1,))
            if not found or found[0][0] is None:
                return Damage(start - 1, CHAIN, None, "a chain value")
            previous = bytes(found[0][0])
        expected = start
        for *row, stored in self._pages(start, None, [], [], 2000, _SELECT_CHAINED):
            if row[0] != expected:
                return Damage(expected, "seq", row[0], expected)
            previous = link(previous, cast(Row, row))
            if stored is None or bytes(stored) != previous:
                return Damage(expected, CHAIN, stored and bytes(stored).hex(), previous.hex())
            expected += 1
        head, last = self.meta().get(HEAD), head_value(expected - 1, previous)
        if head != last:
            return Damage(expected, HEAD, f"the log ends at {last}", f"the head anchor {head}")
        missing = self._missing_triggers()
        if missing:
            return Damage(0, "triggers", f"{', '.join(missing)} missing or altered", "the append-only triggers")
        return None

    def _inspect(self, check: bool) -> int:
        """Raise InvalidLog unless this is a whole rtopt log this version reads, not left half-copied (nor,
        with ``check``, with a damaged tail); returns its format version."""
        tables = self._tables()
        if META_TABLE not in tables:
            raise InvalidLog(f"{self.location}: not an rtopt log (tables {tables})")
        meta = self.meta()
        check_format_version(meta.get("format_version"), self.location)
        version = int(meta["format_version"])
        missing = sorted({"events", "snapshots"} - set(tables))
        if missing or not re.fullmatch(r"-?\d+", meta.get("seed", "")):
            found = f"no table {', '.join(missing)}" if missing else f"seed {meta.get('seed')!r}"
            raise InvalidLog(f"{self.location}: not an rtopt log ({META_TABLE} but {found})")
        expected = [*COLUMNS, CHAIN] if version >= 2 else list(COLUMNS)
        columns = self._event_columns()
        if columns != expected:
            raise InvalidLog(f"{self.location}: not an rtopt log (events has columns {columns}, expected {expected})")
        check_copy(meta, self.location, self.last_seq())
        self.chained = version >= 2
        if check and self.chained:
            damage = self.audit(max(1, self.last_seq() - TAIL_CHECKED + 1))
            if damage is not None:
                raise InvalidLog(
                    f"{self.location}: changed outside rtopt: {damage}. `rtopt replay --verify` checks the whole log"
                )
        return version


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
        self._write_lock = threading.RLock()
        self._read_lock = self._write_lock if writer is reader else threading.Lock()
        self._held: tuple[int, bytes] | None = None  # the head while appending() holds the write transaction
        self._holder: int | None = None  # the thread inside appending(), which reads what it has written
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
        file_mode: int = 0o600,
        check: bool = True,
    ) -> SQLiteLog:
        """Open (or create) the log at ``location``.

        A new log records ``seed`` in its meta data (a random one when None); its file (and the ``-wal`` and
        ``-shm`` files SQLite makes beside it) gets the permissions ``file_mode``. A file that is not a
        whole rtopt log, one written by a newer format, a copy that never finished, or (with ``check``) a
        log whose last rows were changed outside rtopt raises :class:`InvalidLog` and is left as it was; a
        log the process cannot write raises :class:`ReadOnlyLog` unless opened ``read_only``. A format-1
        log opened writable is migrated to the current format.
        """
        location = str(location)
        one_of("synchronous", synchronous.upper(), ("NORMAL", "FULL"))
        if location == ":memory:":
            if read_only:
                raise ReadOnlyLog("an in-memory log cannot be opened read-only: it would always be empty")
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            _create_schema(conn, seed)
            return cls(location, conn, conn)
        path = Path(location)
        if _is_new(path):
            if read_only:
                raise InvalidLog(f"{location}: no such log")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, file_mode))
            os.chmod(path, file_mode)  # whatever the umask; SQLite gives the -wal and -shm files the same mode
            writer = _connect_writer(path, synchronous)
            _create_schema(writer, seed)
        else:
            probe = cls(location, None, _connect_read_only(path))
            try:
                version = probe._damage_as_invalid(probe._inspect, check)
            except BaseException:
                probe.close()
                raise
            if read_only:
                return probe
            probe.close()
            if not os.access(path, os.W_OK):
                raise ReadOnlyLog(f"{location}: the file is not writable; open it with read_only=True to read it")
            writer = _connect_writer(path, synchronous)
            if version < FORMAT_VERSION:
                _migrate(writer)
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        return cls(location, writer, reader)

    def _damage_as_invalid(self, run: Callable[..., int], *args: object) -> int:
        """``run(*args)``, with SQLite's report of a damaged file raised as InvalidLog."""
        try:
            return run(*args)
        except sqlite3.DatabaseError as exc:
            raise _as_invalid(self.location, exc) from None

    def _tables(self) -> list[str]:
        return [r[0] for r in self._query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]

    def _event_columns(self) -> list[str]:
        return [r[1] for r in self._query("PRAGMA table_info(events)")]

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        if self._reader is self._writer:  # in memory: no other connection can write
            yield
            return
        self._query("BEGIN")
        try:
            yield
        finally:
            self._query("COMMIT")

    def _missing_triggers(self) -> list[str]:
        found = dict(self._query("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'"))
        return [name for name, sql in _TRIGGERS.items() if found.get(name) != sql]

    # --- writing ---------------------------------------------------------------------------------

    def append(self, rows: Sequence[Row], guard: Collection[str] | None = None) -> int:
        self._writable()
        if not rows:
            return self.last_seq() + 1
        with self._write_lock:
            if self._held is not None:  # inside appending(): its transaction commits the rows
                self._held = self._insert(rows, guard, self._held)
                return rows[0][0]
            with self._transaction() as head:
                self._insert(rows, guard, head)
        return rows[0][0]

    @contextmanager
    def appending(self, known: int) -> Iterator[None]:
        self._writable()
        with self._write_lock, self._transaction() as head:
            if head[0] != known:
                raise OthersAppended(self.location, known, head[0])
            self._held, self._holder = head, threading.get_ident()
            try:
                yield
            finally:
                self._held = self._holder = None

    @property
    def _write_connection(self) -> sqlite3.Connection:
        """The writer's connection: only a writable log writes (see ``_writable``)."""
        assert self._writer is not None, f"{self.location} is open read-only"
        return self._writer

    @contextmanager
    def _transaction(self) -> Iterator[tuple[int, bytes]]:
        """A write transaction (committed if the block ends normally), giving the last seq and its chain value."""
        conn = self._write_connection
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:  # the busy timeout passed while another connection wrote
            raise StorageUnavailable(f"{self.location}: cannot start a write ({exc}); nothing was written") from exc
        try:
            yield self._head_row(conn.execute(f"SELECT seq, {CHAIN} FROM events ORDER BY seq DESC LIMIT 1").fetchone())
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _insert(self, rows: Sequence[Row], guard: Collection[str] | None, head: tuple[int, bytes]) -> tuple[int, bytes]:
        """Insert ``rows`` after ``head`` (the last seq and its chain value) in the open transaction; returns
        the new head."""
        stored = chained(self._place(rows, head[0], guard, lambda after, streams: None), head[1])
        self._write_connection.executemany(_INSERT, stored)
        last = stored[-1][0], stored[-1][-1]
        self._write_connection.execute(_SET_META, (HEAD, head_value(*last)))
        return last

    def _execute(self, sql: str, params: Sequence[object] = ()) -> None:
        with self._write_lock:
            self._write_connection.execute(sql, params)

    # --- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        own = self._holder == threading.get_ident()
        with self._write_lock if own else self._read_lock:
            try:
                return (self._write_connection if own else self._reader).execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                if _is_damage(exc):
                    raise _as_invalid(self.location, exc) from None
                raise

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


_TRIGGERS = {
    **{
        f"events_no_{action.lower()}": f"CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events"
        f" BEGIN SELECT RAISE(ABORT, 'rtopt log is append-only: {action} refused'); END"
        for action in ("UPDATE", "DELETE")
    },
    # INSERT OR REPLACE deletes the row it conflicts with without firing DELETE triggers
    "events_no_replace": "CREATE TRIGGER events_no_replace BEFORE INSERT ON events"
    " WHEN NEW.seq <= (SELECT max(seq) FROM events) OR EXISTS (SELECT 1 FROM events WHERE id = NEW.id)"
    " BEGIN SELECT RAISE(ABORT, 'rtopt log is append-only: REPLACE refused'); END",
}
_SQLITE_HEADER = b"SQLite format 3\x00"


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """True if SQLite found the file damaged or not a database (rather than busy, locked or misused)."""
    return type(exc) is sqlite3.DatabaseError or getattr(exc, "sqlite_errorname", "") in (
        "SQLITE_CORRUPT",
        "SQLITE_NOTADB",
    )


def _as_invalid(location: str, exc: sqlite3.DatabaseError) -> InvalidLog:
    return InvalidLog(f"{location}: not a readable rtopt log (SQLite reports: {exc})")


def _is_new(path: Path) -> bool:
    """True if ``path`` holds no log yet (missing or empty); raise InvalidLog if its first bytes show a
    damaged or foreign file, which opening must leave alone."""
    wal = Path(f"{path}-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    size = path.stat().st_size if path.exists() else 0
    if size == 0:
        if wal_size:
            raise InvalidLog(f"{path}: the file is empty but {wal.name} holds {wal_size} bytes: a damaged log")
        return True
    with path.open("rb") as file:
        header = file.read(100)
    if not header.startswith(_SQLITE_HEADER):
        raise InvalidLog(f"{path}: not an rtopt log (not an SQLite database)")
    page = int.from_bytes(header[16:18], "big") if len(header) >= 18 else 0
    page = 65536 if page == 1 else page
    if page < 512 or size % page:
        raise InvalidLog(f"{path}: truncated or damaged: {size} bytes is not a whole number of {page}-byte pages")
    return False


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path``; on read-only media (where SQLite cannot make the ``-shm`` file a
    WAL file needs) the file is opened as immutable."""
    uri = f"file:{quote(str(path.absolute()))}"
    try:
        conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        if os.access(path.parent, os.W_OK):
            raise InvalidLog(f"{path}: cannot open: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise _as_invalid(str(path), exc) from None
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        raise InvalidLog(
            f"{path}: {wal.name} holds commits that cannot be read without write access to the folder;"
            " copy the log with its -wal file somewhere writable"
        )
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


def _connect_writer(path: Path, synchronous: str) -> sqlite3.Connection:
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute(f"PRAGMA synchronous={synchronous.upper()}")
    writer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    return writer


def check_copy(meta: dict[str, str], location: str, last_seq: int) -> None:
    """Raise InvalidLog if ``meta`` marks the log as a copy that never finished."""
    if COPY not in meta:
        return
    try:
        copy = json.loads(meta[COPY])
        complete = copy["complete"] is True
    except (ValueError, TypeError, KeyError):
        raise InvalidLog(f"{location}: its copy marker {meta[COPY]!r} is unreadable: the log is damaged") from None
    if not complete:
        raise InvalidLog(
            f"{location}: an incomplete copy of {copy['of']}: copying stopped at seq {last_seq} (of"
            f" {copy['until']} in the source); delete it and copy again"
        )


@contextmanager
def copying(target: EventLog, source: EventLog, until: int) -> Iterator[None]:
    """Mark ``target`` as an incomplete copy of ``source`` up to seq ``until`` until the block completes."""
    target.set_meta(COPY, json.dumps({"of": source.location, "until": until, "complete": False}))
    yield
    target.set_meta(COPY, json.dumps({"of": source.location, "until": until, "complete": True}))


def check_format_version(found: str | None, location: str) -> None:
    """Raise InvalidLog unless ``found`` (the recorded format version) is one this rtopt reads."""
    if found is None:
        raise InvalidLog(f"{location}: not an rtopt log (no format_version in {META_TABLE})")
    if not found.isdigit():
        raise InvalidLog(f"{location}: not an rtopt log (format_version {found!r})")
    version = int(found)
    if version > FORMAT_VERSION:
        raise InvalidLog(
            f"{location}: log format version {version} is newer than this rtopt supports"
            f" ({FORMAT_VERSION}); upgrade rtopt to open it"
        )


def initial_meta(seed: int | None) -> dict[str, str]:
    """The meta data of a new log: format version, ``seed`` (a random one when None), creation time and the
    head anchor of an empty log."""
    return {
        "format_version": str(FORMAT_VERSION),
        "seed": str(seed if seed is not None else secrets.randbits(63)),
        "created_at": repr(time.time()),
        HEAD: head_value(0, GENESIS),
    }


def chain_existing(rows: Iterable[Row], update: Callable[[list[tuple[bytes, int]]], object]) -> str:
    """Give every row of a format-1 log its chain value through ``update([(chain, seq), ...])`` in pages;
    returns the head anchor."""
    previous, last, page = GENESIS, 0, []
    for row in rows:
        previous, last = link(previous, row), row[0]
        page.append((previous, last))
        if len(page) == 2000:
            update(page)
            page = []
    update(page)
    return head_value(last, previous)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a format-1 log to the current format in one transaction: the chain column, filled."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(f"ALTER TABLE events ADD COLUMN {CHAIN} BLOB")
        conn.execute("DROP TRIGGER events_no_update")
        rows = conn.execute(f"{_SELECT} ORDER BY seq").fetchall()
        head = chain_existing(rows, lambda page: conn.executemany(f"UPDATE events SET {CHAIN} = ? WHERE seq = ?", page))
        conn.execute(_TRIGGERS["events_no_update"])
        conn.execute(_SET_META, (HEAD, head))
        conn.execute(f"UPDATE {META_TABLE} SET value = ? WHERE key = 'format_version'", (str(FORMAT_VERSION),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _create_schema(conn: sqlite3.Connection, seed: int | None) -> None:
    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        db.table(META_TABLE).create({"key": str, "value": str}, pk="key")
        db.table("events").create(
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
                CHAIN: bytes,
            },
            pk="seq",
            not_null={"id", "type", "stream", "time", "recorded_at", "schema_version", "payload"},
        )
        db.table("events").create_index(["id"], unique=True, index_name="events_by_id")
        db.table("events").create_index(["stream", "seq"], index_name="events_by_stream")
        db.table("events").create_index(["type", "seq"], index_name="events_by_type")
        db.table("snapshots").create(
            {"handler": str, "fingerprint": str, "seq": int, "state": bytes, "created_at": float},
            pk=("handler", "fingerprint", "seq"),
        )
        for sql in _TRIGGERS.values():
            conn.execute(sql)
        conn.executemany(f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?)", initial_meta(seed).items())
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def is_postgres_url(location: object) -> TypeGuard[str]:
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
    location: str | os.PathLike[str],
    *,
    read_only: bool = False,
    seed: int | None = None,
    synchronous: str = "NORMAL",
    file_mode: int = 0o600,
    check: bool = True,
) -> EventLog:
    """The log at ``location``: a PostgreSQL database for a ``postgresql://`` URL, else an SQLite file.

    ``synchronous`` and ``file_mode`` (the permissions of a new log's files) apply to SQLite; a PostgreSQL
    commit is as durable as its server is configured to be. ``check`` checks the last rows' hash chain and
    the append-only triggers on opening (:meth:`EventLog.audit` checks everything).

    >>> open_log(":memory:", seed=1).meta()["seed"]
    '1'
    """
    if is_postgres_url(location):
        from rtopt.postgres import PostgresLog  # psycopg is only needed for PostgreSQL logs

        return PostgresLog.open(location, read_only=read_only, seed=seed, check=check)
    return SQLiteLog.open(
        location, read_only=read_only, seed=seed, synchronous=synchronous, file_mode=file_mode, check=check
    )


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
    ``target``; returns how many. Until the last is written, ``target`` is marked as an incomplete copy,
    which opening it refuses."""
    until = source.last_seq() if until_seq is None else until_seq
    chunk: list[Row] = []
    copied = 0
    with copying(target, source, until):
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
    the rest anew. A copy that stops half way is refused when opened: delete it and copy again.

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
                if key not in LOG_KEYS:
                    dst.set_meta(key, value)
            from rtopt.privacy import copy_keys  # the privacy module builds on this one

            copy_keys(src, dst)  # before the events: a copy is complete only once its last event is written
            return copy_rows(src, dst, None, progress, inputs_only)
        finally:
            dst.close()
    finally:
        src.close()

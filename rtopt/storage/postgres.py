"""The PostgreSQL log: one database that any number of engine processes, on any hosts, append to and follow.

Order: every append holds the log's append lock, a transaction-level advisory lock
(``pg_advisory_xact_lock``, keyed by the events table), from the moment it reads the last seq and chain
value until its COMMIT, and numbers its rows after that seq. So seqs are gapless and in commit order: a
reader paging by seq never sees a gap that fills later, and never skips an event that commits late. The
lock blocks other appends only (not reads, not VACUUM). Inside :meth:`PostgresLog.appending` the engine
holds it while it folds what other processes appended, makes its decisions, screens and derives, so each
input is derived once, by the process that appends it, on the state just before it.

Round trips: a commit takes two, one to begin the transaction, take the lock and read the head (sent as one
message), one for the rows (one multi-row INSERT), the head anchor, the NOTIFY on :data:`CHANNEL` (which
:meth:`PostgresLog.wait_for_change` listens for) and the COMMIT, sent together. With the default
``durability="process"`` the writer's session runs with ``synchronous_commit = off``: the server holds the
commit and the lock is not held across a WAL flush; ``"power"`` waits for the flush before the COMMIT
returns (and holds the lock through it).

Throughput with many processes is bounded by that one lock: appends are serial, each holding it for a
round trip plus the time its process takes to catch up and derive (and, with ``"power"``, a WAL flush), so
the rate of one log is about one over that time, whatever the number of processes; the clients' CPU does
the deriving, the server's the inserts.

Workers record how far they got in the tracking table, in the same transaction as the events they derive
(:meth:`PostgresLog.append_tracked`).

A connection that breaks (the server restarted, the network dropped) is made anew, with :class:`Backoff`,
for up to ``reconnect_timeout_s`` seconds; reads run again, as does a write that broke before its rows were
sent. A write that broke once they were (they go with their COMMIT) looks its first event id up once
reconnected: found, it committed; absent (and the broken session ended), it runs again, in a new
transaction under the lock, if no other process appended since the one that broke read the head (else
WriteConflict: its rows were derived on an older state). Driver errors reach callers as
:class:`~rtopt.errors.StorageError` and its subclasses; a unique or serialization violation on the events or
tracking table (another writer took the id, the seq or the position first) as
:class:`~rtopt.errors.WriteConflict`.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar

from rtopt.arguments import one_of
from rtopt.errors import CommitUncertain, InvalidLog, RtoptError, StorageError, StorageUnavailable, WriteConflict
from rtopt.storage.interface import (
    CHAIN,
    COLUMNS,
    FORMAT_VERSION,
    GENESIS,
    HEAD,
    Row,
    chained,
    head_value,
    shown_url,
)
from rtopt.storage.sql import (
    _SELECT,
    _SET_META,
    META_TABLE,
    TRACKING_TABLE,
    SQLLog,
    chain_existing,
    check_format_version,
    initial_meta,
)

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise RtoptError("a PostgreSQL log needs psycopg: pip install 'rtopt[postgres]'") from exc

CHANNEL = "rtopt_events"
SCHEMA_LOCK = 0x7270_7409  # advisory lock held while a process creates the tables
RECONNECT_TIMEOUT_S = 30.0
TURN_WAIT_S = 30.0
"""Seconds a write waits for the append lock by default (see :attr:`PostgresLog.turn_wait_s`)."""
IDLE_IN_COMMIT_FLOOR_MS = 1000
"""The least time the server lets a writer sit idle inside its transaction, whatever ``turn_wait_s``."""
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
"""TCP keepalives (libpq's parameters) unless the URL sets its own: a server host that vanished is noticed in
about 25 s, not the operating system's two hours."""
"""Seconds a log keeps trying to reach its server again before it gives up with StorageUnavailable."""
# refusals that a server gives while it starts, stops or is full: the next attempt may get in
_PASSING_REFUSALS = ("the database system is", "too many clients", "connection slots are reserved", "terminating")
T = TypeVar("T")
APPEND_LOCK = 0x7270_740A
"""The high half of the advisory lock key an append holds; the low half is the events table's oid, so logs in
other schemas of the database do not wait for each other."""
INSERTED_ROWS = 16
"""The most rows an append sends as one INSERT with its COMMIT; more are copied (``COPY ... FORMAT BINARY``)
first, two round trips more and faster for large batches."""
_COPY = f"COPY events ({', '.join(COLUMNS)}, {CHAIN}) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["int8", "text", "text", "text", "float8", "float8", "text", "text", "int4", "bytea", "bytea"]
_APPEND_LOCK_KEY = f"({APPEND_LOCK}::bigint << 32) | 'events'::regclass::oid::bigint"
_LOCK_AND_READ_HEAD = (
    f"BEGIN; SELECT pg_advisory_xact_lock({_APPEND_LOCK_KEY});"
    f" SELECT seq, {CHAIN} FROM events ORDER BY seq DESC LIMIT 1"
)
_TRIGGERS = ["events_append_only", "events_no_truncate"]
_SCHEMA = [
    f"CREATE TABLE {META_TABLE} (key text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE events (
        seq bigint PRIMARY KEY CHECK (seq > 0),
        id text NOT NULL UNIQUE,
        type text NOT NULL,
        stream text NOT NULL,
        time double precision NOT NULL,
        recorded_at double precision NOT NULL,
        causation_id text,
        correlation_id text,
        schema_version integer NOT NULL,
        payload bytea NOT NULL,
        chain bytea)""",
    "CREATE INDEX events_by_stream ON events (stream, seq)",
    "CREATE INDEX events_by_type ON events (type, seq)",
    "CREATE INDEX events_inputs ON events (seq) WHERE causation_id IS NULL",
    """CREATE TABLE snapshots (
        handler text, fingerprint text, seq bigint, state bytea NOT NULL, created_at double precision NOT NULL,
        PRIMARY KEY (handler, fingerprint, seq))""",
    f"CREATE TABLE {TRACKING_TABLE} (name text PRIMARY KEY, position bigint NOT NULL)",
    """CREATE FUNCTION rtopt_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'rtopt log is append-only: % refused', TG_OP; END $$""",
    "CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events"
    " FOR EACH ROW EXECUTE FUNCTION rtopt_append_only()",
    "CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events"
    " FOR EACH STATEMENT EXECUTE FUNCTION rtopt_append_only()",
]


class Backoff:
    """The waits between attempts to reach a server: from ``first`` seconds, doubling up to ``cap``, each
    drawn between half and all of that from ``rng`` (so processes that lost the server together come back
    apart), and no more once ``timeout`` seconds have passed since the backoff began.

    >>> waits = []  # a clock that moves only by the waits
    >>> backoff = Backoff(1.0, random.Random(4), clock=lambda: sum(waits), sleep=waits.append)
    >>> while backoff.wait():
    ...     pass
    >>> [round(wait, 3) for wait in waits], round(sum(waits), 9)
    ([0.031, 0.055, 0.14, 0.231, 0.427, 0.117], 1.0)
    """

    def __init__(
        self,
        timeout: float,
        rng: random.Random,
        *,
        first: float = 0.05,
        cap: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.attempts = 0
        self._rng = rng
        self._first = first
        self._cap = cap
        self._clock = clock
        self._sleep = sleep
        self._deadline = clock() + timeout

    def delay(self) -> float:
        """The next wait, in seconds, before the deadline cuts it short."""
        nominal = min(self._cap, self._first * 2**self.attempts)
        return nominal * (0.5 + 0.5 * self._rng.random())

    def wait(self) -> bool:
        """Sleep until the next attempt is due; False, at once, when the time is up."""
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            return False
        self._sleep(min(self.delay(), remaining))
        self.attempts += 1
        return True


class _Lost(Exception):
    """A connection broke, or could not be made, in a way that trying again may cure.

    ``committing`` holds the server process id of a session that broke during its COMMIT.
    """

    def __init__(self, message: str, *, committing: int | None = None) -> None:
        super().__init__(message)
        self.committing = committing


def _connect(url: str, timeout: float) -> psycopg.Connection:
    """A new autocommit connection to ``url``; raises _Lost if the server may take one later.

    Unless ``url`` sets a ``connect_timeout``, an attempt gives up after ``timeout`` seconds (2 to 10), so
    that a host that does not answer at all cannot hold a call far beyond its reconnection timeout.
    """
    try:
        given = conninfo_to_dict(url)
        limits: dict[str, Any] = {  # keyword arguments of psycopg.connect
            key: value
            for key, value in {"connect_timeout": min(max(2, math.ceil(timeout)), 10), **_KEEPALIVES}.items()
            if key not in given
        }
        return psycopg.connect(url, autocommit=True, **limits)
    except psycopg.Error as exc:
        text = _said(exc)
        lasting = not isinstance(exc, psycopg.OperationalError) or (
            "FATAL:" in text and not any(refusal in text for refusal in _PASSING_REFUSALS)
        )
        if lasting:  # a wrong database, user or password: no use trying again
            raise StorageUnavailable(f"{shown_url(url)}: cannot connect: {text}") from exc
        raise _Lost(text) from exc


def _said(exc: psycopg.Error) -> str:
    """The driver's message on one line."""
    return " ".join(str(exc).split())


def _unavailable(location: str, timeout: float, lost: _Lost) -> StorageUnavailable:
    return StorageUnavailable(
        f"{location}: cannot reach the database server (gave up after reconnect_timeout_s = {timeout:g} s):"
        f" {lost}; nothing was written"
    )


def _reach(url: str, timeout: float, rng: random.Random) -> psycopg.Connection:
    """A new connection to ``url``, tried again with backoff for up to ``timeout`` seconds."""
    backoff = Backoff(timeout, rng)
    while True:
        try:
            return _connect(url, timeout)
        except _Lost as lost:
            if not backoff.wait():
                raise _unavailable(shown_url(url), timeout, lost) from lost.__cause__


def _is_broken(conn: psycopg.Connection, exc: psycopg.Error) -> bool:
    """True if ``exc`` ended the session on ``conn`` (which is then closed)."""
    state = exc.sqlstate or ""
    if not conn.closed and (state.startswith("08") or state.startswith("57P")):
        conn.close()  # the server said it ends the session (shutdown, crash, lost link)
    return conn.closed


class PostgresLog(SQLLog):
    """An rtopt log in a PostgreSQL database, shared by every process that opens the same URL.

    UPDATE, DELETE and TRUNCATE on the events table are refused by triggers in the database.

    >>> log = PostgresLog.open("postgresql://postgres@127.0.0.1:5432/rtopt", seed=3)  # doctest: +SKIP
    >>> log.append([(1, "id-1", "Feedback", "p1", 0.0, 0.0, None, None, 1, b"...")])  # doctest: +SKIP
    1
    """

    connections = ("_writer", "_reader", "_listener")

    def __init__(
        self,
        url: str,
        writer: psycopg.Connection | None,
        reader: psycopg.Connection,
        *,
        reconnect_timeout_s: float = RECONNECT_TIMEOUT_S,
        durability: str = "process",
    ) -> None:
        self.location = shown_url(url)
        self.read_only = writer is None
        self.reconnect_timeout_s = reconnect_timeout_s
        """Seconds a call keeps reconnecting after the connection broke before it raises StorageUnavailable."""
        self.reconnects = 0
        """How many times a connection was made anew after it broke."""
        self._url = url
        self._writer = writer
        self._reader = reader
        self._listener: psycopg.Connection | None = None
        self.durability = durability
        self._write_lock = threading.RLock()
        self._read_lock = threading.Lock()
        self._held: tuple[int, bytes] = (0, GENESIS)  # the head read under the append lock by appending()
        self._holder: int | None = None  # the thread inside appending(), whose statements join its transaction
        self._pending: list[Row] = []  # the rows appended inside appending(), committed when it ends
        self._rng = random.Random()  # jitter of the reconnection backoff only
        self._closed = False
        self._turn_wait_s = TURN_WAIT_S
        self._reserved = False  # the writer's session keeps the append lock (see reserve)
        self.belongs_here()

    @classmethod
    def open(
        cls,
        url: str,
        *,
        read_only: bool = False,
        seed: int | None = None,
        check: bool = True,
        reconnect_timeout_s: float = RECONNECT_TIMEOUT_S,
        durability: str = "process",
    ) -> PostgresLog:
        """Open the log in the database at ``url``, creating its tables in an empty database.

        A database holding other tables, a log of a newer format, a copy that never finished or (with
        ``check``) a log whose last rows were changed outside rtopt raises :class:`InvalidLog`; so does an
        empty database opened ``read_only``. A format-1 log opened writable is migrated to the current format.
        A server that cannot be reached within ``reconnect_timeout_s`` seconds raises
        :class:`StorageUnavailable`, then and whenever a connection breaks later.

        ``durability`` ``"process"`` commits with ``synchronous_commit = off``: a commit returns once the
        server holds it, so it survives the calling process being killed at any moment, and the append lock is
        not held across a WAL flush; a crash of the server or of its host can lose the commits of the last
        moments (up to three times ``wal_writer_delay``, 600 ms by default). ``"power"`` sets it on: the commit
        is flushed to disk before the call returns.
        """
        one_of("durability", durability, ("process", "power"))
        location = shown_url(url)
        rng = random.Random()
        if read_only:
            reader = _reach(url, reconnect_timeout_s, rng)
            reader.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            try:
                _check_existing(reader, location, create=False, seed=seed)
            except BaseException:
                reader.close()
                raise
            log = cls(url, None, reader, reconnect_timeout_s=reconnect_timeout_s)
        else:
            writer = _reach(url, reconnect_timeout_s, rng)
            try:
                _check_existing(writer, location, create=True, seed=seed)
            except BaseException:
                writer.close()
                raise
            reader = _reach(url, reconnect_timeout_s, rng)
            log = cls(url, writer, reader, reconnect_timeout_s=reconnect_timeout_s, durability=durability)
        try:
            if log._writer is not None:
                log._prepare(log._writer, "_writer")
            log._inspect(check)
        except BaseException:
            log.close()
            raise
        return log

    def _tables(self) -> list[str]:
        return [r[0] for r in self._query(_TABLES)]

    def _event_columns(self) -> list[str]:
        return [
            r[0]
            for r in self._query(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
                " AND table_name = 'events' ORDER BY ordinal_position"
            )
        ]

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        with self._reader.transaction():
            with self._read_lock:
                self._reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield

    def _missing_triggers(self) -> list[str]:
        enabled = {
            r[0]
            for r in self._query(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'events'::regclass AND NOT tgisinternal"
                " AND tgenabled <> 'D'"
            )
        }
        return [name for name in _TRIGGERS if name not in enabled]

    # --- connections -----------------------------------------------------------------------------

    def _reconnect(self, role: str) -> psycopg.Connection:
        """A new connection in ``role`` (``_writer``, ``_reader`` or ``_listener``), set up as the old one."""
        if self._closed:
            raise StorageError(f"{self.location}: the log is closed")
        conn = _connect(self._url, self.reconnect_timeout_s)
        try:
            self._prepare(conn, role)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, psycopg.Error):
                raise _Lost(_said(exc)) from exc
            raise
        old = getattr(self, role)
        if old is not None:
            old.close()
            self.reconnects += 1
        setattr(self, role, conn)
        return conn

    def _prepare(self, conn: psycopg.Connection, role: str) -> None:
        """Set up a new connection for ``role``: a reader of a read-only log reads only, the writer commits
        as :attr:`durability` says, the listener listens."""
        if role == "_reader" and self.read_only:
            conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        elif role == "_writer":
            conn.execute(f"SET synchronous_commit = {'off' if self.durability == 'process' else 'on'}")
            self._set_waits(conn)
            if self._reserved:  # a new session: take the lock again (a commit that others came before conflicts)
                self._keep_append_lock(conn)
        elif role == "_listener":
            conn.execute(f"LISTEN {CHANNEL}")

    def reserve(self) -> None:
        self._writable()
        with self._write_lock:
            self._retrying("_writer", self._keep_append_lock)
            self._reserved = True

    def _keep_append_lock(self, conn: psycopg.Connection) -> None:
        try:
            conn.execute(f"SELECT pg_advisory_lock({_APPEND_LOCK_KEY})")
        except psycopg.errors.LockNotAvailable as exc:
            raise StorageUnavailable(
                f"{self.location}: another writer held the append lock for more than turn_wait_s ="
                f" {self._turn_wait_s:g} s; the log cannot be kept for this one"
            ) from exc

    @property
    def turn_wait_s(self) -> float:
        """Seconds a write waits for the append lock (``lock_timeout``) before it raises
        :class:`StorageUnavailable`, nothing written. The server ends the session of a writer whose transaction
        sits idle for half of that, or a second if that is more (``idle_in_transaction_session_timeout``: a
        client stopped or cut off inside its commit), which frees the lock for the others before their wait
        ends."""
        return self._turn_wait_s

    @turn_wait_s.setter
    def turn_wait_s(self, seconds: float) -> None:
        self._turn_wait_s = seconds
        if self._writer is not None:
            with self._write_lock:
                self._retrying("_writer", self._set_waits)

    def _set_waits(self, conn: psycopg.Connection) -> None:
        """The writer session's bounds: how long it waits for a lock, how long the server lets it sit idle in a
        transaction, and the server's keepalives on its connection (a client host that vanished while holding
        the append lock, even one kept for group durability, is noticed in about 25 s)."""
        wait_ms = max(1, round(self._turn_wait_s * 1000))
        idle_ms = max(IDLE_IN_COMMIT_FLOOR_MS, wait_ms // 2)
        names = ("keepalives_idle", "keepalives_interval", "keepalives_count")
        keepalives = "; ".join(f"SET tcp_{name} = {_KEEPALIVES[name]}" for name in names)
        conn.execute(f"SET lock_timeout = {wait_ms}; SET idle_in_transaction_session_timeout = {idle_ms}; {keepalives}")

    def _attempt(self, role: str, action: Callable[..., T], *args: object) -> T:
        """``action(connection, *args)`` on the connection in ``role``, made anew first if it broke.

        Raises _Lost if the connection broke (or cannot be made yet), StorageError for other driver errors.
        """
        conn = getattr(self, role)
        if conn is None or conn.closed:
            conn = self._reconnect(role)
        try:
            return action(conn, *args)
        except psycopg.Error as exc:
            if _is_broken(conn, exc):
                raise _Lost(_said(exc)) from exc
            if exc.sqlstate == "55P03":  # lock_not_available: lock_timeout passed
                raise StorageUnavailable(
                    f"{self.location}: another writer held the append lock for more than turn_wait_s ="
                    f" {self._turn_wait_s:g} s; nothing was written"
                ) from exc
            if _is_conflict(exc):
                raise WriteConflict(
                    f"{self.location}: another writer came first on table {exc.diag.table_name}"
                    f" ({exc.diag.constraint_name or exc.sqlstate}): {_said(exc)}; nothing was written"
                ) from exc
            raise StorageError(f"{self.location}: {_said(exc)}") from exc

    def _backoff(self) -> Backoff:
        return Backoff(self.reconnect_timeout_s, self._rng)

    def _retrying(self, role: str, action: Callable[..., T], *args: object) -> T:
        """:meth:`_attempt`, again after every break (with backoff) until it succeeds or
        :attr:`reconnect_timeout_s` has passed; for actions that are safe to run twice."""
        backoff = None
        while True:
            try:
                return self._attempt(role, action, *args)
            except _Lost as lost:
                backoff = backoff or self._backoff()
                if not backoff.wait():
                    raise _unavailable(self.location, self.reconnect_timeout_s, lost) from lost.__cause__

    # --- writing ---------------------------------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[object] = ()) -> None:
        if self._holder == threading.get_ident():  # inside appending(): part of its transaction
            self._in_held(_run, sql, params)
            return
        # the writes that come here (meta data, snapshots, keys) are upserts: running one twice does no harm
        with self._write_lock:
            self._retrying("_writer", _run, sql.replace("?", "%s"), params)

    def append(self, rows: Sequence[Row]) -> int:
        self._writable()
        if not rows:
            return self.last_seq() + 1
        with self._write_lock:
            if self._holder == threading.get_ident():  # inside appending(): its transaction commits the rows
                self._place(rows, self._held[0] + len(self._pending))
                self._pending.extend(rows)
                return rows[0][0]
            return self._write(rows)

    def append_tracked(self, rows: Sequence[Row], tracker: str, previous: int, position: int) -> int:
        self._writable()
        with self._write_lock:
            return self._write(rows, (tracker, previous, position))

    @contextmanager
    def appending(self) -> Iterator[int]:
        self._writable()
        with self._write_lock:
            head = self._retrying("_writer", self._lock)
            self._held, self._holder, self._pending = head, threading.get_ident(), []
            try:
                yield head[0]
                rows = self._pending
            except BaseException:
                self._end_quietly()
                raise
            finally:
                self._holder, self._pending = None, []
            if rows:
                self._write(rows, held=head)
            else:
                self._end_quietly()

    def _in_held(self, action: Callable[..., T], sql: str, params: Sequence[object]) -> T:
        """``action(writer, sql, params)`` inside the transaction appending() holds, which a break ends."""
        try:
            return self._attempt("_writer", action, sql.replace("?", "%s"), params)
        except _Lost as lost:
            raise StorageUnavailable(
                f"{self.location}: the connection broke while appending ({lost}); nothing was written"
            ) from lost.__cause__

    def _end_quietly(self) -> None:
        """Roll back what the writer's connection holds open; a broken session has ended it already."""
        conn = self._writer
        if conn is None or conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
            return
        try:
            conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            _is_broken(conn, exc)

    def _lock(self, conn: psycopg.Connection) -> tuple[int, bytes]:
        """Begin a transaction on ``conn`` that holds the append lock and return the log's last seq and
        chain value as read under it; one round trip."""
        self._end_quietly()  # nothing is left open, so the BEGIN begins a transaction of its own
        try:
            cur = conn.execute(_LOCK_AND_READ_HEAD)
            cur.nextset()
            cur.nextset()
            return self._head_row(cur.fetchone())
        except BaseException:
            self._end_quietly()
            raise

    def _write(
        self, rows: Sequence[Row], tracking: tuple[str, int, int] | None = None, held: tuple[int, bytes] | None = None
    ) -> int:
        """Append ``rows`` (and move the tracker) in one transaction: the one appending() holds with
        ``held`` as the head, or a new one. Made again after a broken connection unless it may have
        committed: then the log is asked whether it did. The caller holds the write lock."""
        backoff = None
        unresolved = None  # the server process of a session that broke during its COMMIT
        while True:
            try:
                if unresolved is not None:
                    first = self._attempt("_writer", self._committed_at, rows, tracking, unresolved)
                    if first is not None:
                        return first
                    unresolved = None  # it did not commit: write again
                return self._attempt("_writer", self._transaction, rows, tracking, held)
            except _Lost as lost:
                unresolved = lost.committing or unresolved
                backoff = backoff or self._backoff()
                if backoff.wait():
                    continue
                if unresolved is None:
                    raise _unavailable(self.location, self.reconnect_timeout_s, lost) from lost.__cause__
                ids = [row[1] for row in rows]
                raise CommitUncertain(
                    f"{self.location}: the connection broke while {len(ids)} events were being committed and"
                    f" the server could not be asked within reconnect_timeout_s = {self.reconnect_timeout_s:g}"
                    f" s whether they were ({lost}); all of them or none are in the log: look up"
                    f" {ids[0] if ids else tracking!r} once the server is back",
                    event_ids=ids,
                ) from lost.__cause__

    def _transaction(
        self,
        conn: psycopg.Connection,
        rows: Sequence[Row],
        tracking: tuple[str, int, int] | None,
        held: tuple[int, bytes] | None,
    ) -> int:
        """Write ``rows`` and commit: in the transaction open on ``conn`` at head ``held``, or in a new one
        (rows numbered after another head than the new one's raise WriteConflict, unless ``tracking``: those
        move after it). The rows, the head anchor, the NOTIFY and the COMMIT go in one round trip."""
        backend = conn.info.backend_pid
        committing = False
        try:
            if held is None or conn.info.transaction_status != TransactionStatus.INTRANS:
                held = self._lock(conn)  # a connection made anew after the one appending() began on broke
            if tracking is not None:
                cur = conn.cursor()
                self._move_tracker(lambda sql, params: _first(cur, sql, params), *tracking, lock=" FOR UPDATE")
            if not rows:
                conn.execute("COMMIT")
                return held[0] + 1
            placed = self._place(rows, held[0], anywhere=tracking is not None)
            stored = chained(placed, held[1])
            head = head_value(stored[-1][0], stored[-1][-1])
            if len(stored) > INSERTED_ROWS:
                with conn.cursor().copy(_COPY) as copy:
                    copy.set_types(_COPY_TYPES)
                    for row in stored:
                        copy.write_row(row)
                stored = []
            values = [*(value for row in stored for value in row), head]
            statements = psycopg.ClientCursor(conn).mogrify(_append_statements(len(stored)), values)
            committing = True
            conn.execute(statements)  # one message, so one round trip
        except psycopg.Error as exc:
            if _is_broken(conn, exc):
                raise _Lost(_said(exc), committing=backend if committing else None) from exc
            self._end_quietly()
            raise
        except BaseException:
            self._end_quietly()
            raise
        return placed[0][0]

    def _committed_at(
        self, conn: psycopg.Connection, rows: Sequence[Row], tracking: tuple[str, int, int] | None, backend: int
    ) -> int | None:
        """The seq the first of ``rows`` got if the transaction whose COMMIT broke on server process
        ``backend`` committed (the log holds that very row), else None; raises _Lost while that process still
        runs (its outcome is open)."""
        if conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchone():
            raise _Lost(f"the session that was committing (server process {backend}) has not ended yet")
        if rows:  # the event under its id must be this one (at whatever seq a tracked append placed it): another
            # process may have named one alike
            found = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events WHERE id = %s", (rows[0][1],)).fetchone()
            return found[0] if found is not None and found[1:] == tuple(rows[0][1:]) else None
        if tracking is None:
            return None
        name, _, position = tracking
        found = conn.execute(f"SELECT position FROM {TRACKING_TABLE} WHERE name = %s", (name,)).fetchone()
        if found is None or found[0] != position:
            return None
        after = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM events").fetchone()
        assert after is not None  # an aggregate without GROUP BY returns one row
        return after[0]

    # --- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        if self._holder == threading.get_ident():  # inside appending(): read in its transaction
            return self._in_held(_fetch, sql, params)
        with self._read_lock:
            return self._retrying("_reader", _fetch, sql.replace("?", "%s"), params)

    def wait_for_change(self, timeout: float) -> bool:
        listener = self._listener
        if listener is not None and not listener.closed:
            try:
                return _notified(listener, timeout)
            except psycopg.Error as exc:
                if not _is_broken(listener, exc):
                    raise StorageError(f"{self.location}: {_said(exc)}") from exc
        # not listening yet, or no longer: commits made meanwhile reached nobody, so the caller reads again
        self._retrying("_listener", _run, "SELECT 1", ())
        return True

    def close(self) -> None:
        self._closed = True
        if self.inherited:  # its connections are the parent's
            return
        with self._write_lock, self._read_lock:
            for conn in (self._writer, self._reader, self._listener):
                if conn is not None:
                    conn.close()


def _run(conn: psycopg.Connection, sql: str, params: Sequence[object]) -> None:
    conn.execute(sql, params)


def _fetch(conn: psycopg.Connection, sql: str, params: Sequence[object]) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def _first(cur: psycopg.Cursor, sql: str, params: Sequence[object]) -> tuple | None:
    """The first row ``sql`` (written with ``?`` placeholders) gives on ``cur``, None if it gives none."""
    cur.execute(sql.replace("?", "%s"), params)
    return cur.fetchone() if cur.description else None


def _is_conflict(exc: psycopg.Error) -> bool:
    """True if ``exc`` says another transaction took first what this one wrote: a serialization failure, or
    a unique violation on the events or the tracking table."""
    return exc.sqlstate == "40001" or (exc.sqlstate == "23505" and exc.diag.table_name in ("events", TRACKING_TABLE))


def _notified(listener: psycopg.Connection, timeout: float) -> bool:
    """True if a commit was announced on ``listener`` within ``timeout`` seconds."""
    if not any(True for _ in listener.notifies(timeout=timeout, stop_after=1)):
        return False
    for _ in listener.notifies(timeout=0.0):  # one read answers every commit already announced
        pass
    return True


_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1"


def _check_existing(conn: psycopg.Connection, location: str, *, create: bool, seed: int | None) -> None:
    """Raise InvalidLog unless the database is empty (and then create the log's tables if ``create``) or
    holds an rtopt log of a readable format (migrated to the current one if ``create``)."""
    with conn.transaction():
        if create:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        tables = [r[0] for r in conn.execute(_TABLES)]
        if not tables:
            if not create:
                raise InvalidLog(f"{location}: no such log (the database holds no tables)")
            for statement in _SCHEMA:
                conn.execute(statement)
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {META_TABLE} (key, value) VALUES (%s, %s)", list(initial_meta(seed).items())
                )
            return
        if META_TABLE not in tables:
            raise InvalidLog(f"{location}: not an rtopt log (a database with tables {tables})")
        found = conn.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'format_version'").fetchone()
        check_format_version(None if found is None else found[0], location)
        assert found is not None  # check_format_version refuses a log without a format version
        if create and int(found[0]) < FORMAT_VERSION and "events" in tables:
            _migrate(conn)


def _migrate(conn: psycopg.Connection) -> None:
    """Bring a format-1 log to the current format (the chain column, filled), in the caller's transaction."""
    conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
    conn.execute(f"ALTER TABLE events ADD COLUMN {CHAIN} bytea")
    conn.execute("ALTER TABLE events DISABLE TRIGGER events_append_only")
    rows = conn.execute(f"{_SELECT} ORDER BY seq").fetchall()
    with conn.cursor() as cur:
        update = f"UPDATE events SET {CHAIN} = %s WHERE seq = %s"
        head = chain_existing(rows, lambda page: cur.executemany(update, page))
    conn.execute("ALTER TABLE events ENABLE TRIGGER events_append_only")
    set_meta = _SET_META.replace("?", "%s")
    conn.execute(set_meta, (HEAD, head))
    conn.execute(set_meta, ("format_version", str(FORMAT_VERSION)))


@lru_cache(maxsize=INSERTED_ROWS + 1)
def _append_statements(count: int) -> str:
    """The statements that commit ``count`` rows (none: copied already) in the open transaction: the insert,
    the head anchor, the NOTIFY and the COMMIT, sent together; ``%s`` stands for each row's columns, then the
    head's value."""
    row = f"({', '.join(['%s'] * (len(COLUMNS) + 1))})"
    insert = f"INSERT INTO events ({', '.join(COLUMNS)}, {CHAIN}) VALUES {', '.join([row] * count)}; " if count else ""
    return f"{insert}UPDATE {META_TABLE} SET value = %s WHERE key = '{HEAD}'; NOTIFY {CHANNEL}; COMMIT"

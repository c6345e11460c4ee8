"""The PostgreSQL log: one database that several engine processes append to and follow at once.

Every append takes ``LOCK TABLE events IN EXCLUSIVE MODE`` (which blocks other appends, not reads), reads
the last seq and numbers its batch after it, so seqs are gapless and in commit order: a reader paging by
seq never skips an event that commits late. Each commit sends a NOTIFY on :data:`CHANNEL`, which
:meth:`PostgresLog.wait_for_change` listens for. Followers record how far they got in a tracking table,
in the same transaction as the events they derive (:meth:`PostgresLog.append_tracked`).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

from rtopt.errors import InvalidLog, RtoptError
from rtopt.log import (
    _SELECT,
    _SET_META,
    CHAIN,
    COLUMNS,
    FORMAT_VERSION,
    HEAD,
    META_TABLE,
    Row,
    SQLLog,
    chain_existing,
    chained,
    check_format_version,
    head_value,
    initial_meta,
    shown_url,
)

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise RtoptError("a PostgreSQL log needs psycopg: pip install 'rtopt[postgres]'") from exc

CHANNEL = "rtopt_events"
TRACKING_TABLE = "rtopt_tracking"
SCHEMA_LOCK = 0x7270_7409  # advisory lock held while a process creates the tables
_COPY = f"COPY events ({', '.join(COLUMNS)}, {CHAIN}) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = ["int8", "text", "text", "text", "float8", "float8", "text", "text", "int4", "bytea", "bytea"]
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


def _connect(url: str) -> psycopg.Connection:
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.Error as exc:
        raise RtoptError(f"{shown_url(url)}: cannot connect: {str(exc).strip()}") from None


class PostgresLog(SQLLog):
    """An rtopt log in a PostgreSQL database, shared by every process that opens the same URL.

    UPDATE, DELETE and TRUNCATE on the events table are refused by triggers in the database.

    >>> log = PostgresLog.open("postgresql://postgres@127.0.0.1:5432/rtopt", seed=3)  # doctest: +SKIP
    >>> log.append([(1, "id-1", "Feedback", "p1", 0.0, 0.0, None, None, 1, b"...")], guard=())  # doctest: +SKIP
    1
    """

    shared = True

    def __init__(self, url: str, writer: psycopg.Connection | None, reader: psycopg.Connection) -> None:
        self.location = shown_url(url)
        self.read_only = writer is None
        self._url = url
        self._writer = writer
        self._reader = reader
        self._listener: psycopg.Connection | None = None
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    @classmethod
    def open(cls, url: str, *, read_only: bool = False, seed: int | None = None, check: bool = True) -> PostgresLog:
        """Open the log in the database at ``url``, creating its tables in an empty database.

        A database holding other tables, a log of a newer format, a copy that never finished or (with
        ``check``) a log whose last rows were changed outside rtopt raises :class:`InvalidLog`; so does an
        empty database opened ``read_only``. A format-1 log opened writable is migrated to the current format.
        """
        location = shown_url(url)
        if read_only:
            reader = _connect(url)
            reader.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            try:
                _check_existing(reader, location, create=False, seed=seed)
            except BaseException:
                reader.close()
                raise
            log = cls(url, None, reader)
        else:
            writer = _connect(url)
            try:
                _check_existing(writer, location, create=True, seed=seed)
            except BaseException:
                writer.close()
                raise
            log = cls(url, writer, _connect(url))
        try:
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

    # --- writing ---------------------------------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[object] = ()) -> None:
        with self._write_lock:
            self._writer.execute(sql.replace("?", "%s"), params)

    def append(self, rows: Sequence[Row], guard: Collection[str] | None = None) -> int:
        self._writable()
        if not rows:
            return self.last_seq() + 1
        return self._write(rows, guard)

    def append_tracked(self, rows: Sequence[Row], tracker: str, previous: int, position: int) -> int:
        """Append ``rows`` after whatever is committed and move ``tracker`` from ``previous`` to ``position``,
        in one transaction; returns the seq the first row got (the next free seq when ``rows`` is empty).

        Raises, writing nothing, when ``tracker`` is not at ``previous``: another process advanced it.
        """
        self._writable()
        return self._write(rows, (), (tracker, previous, position))

    def tracked(self, tracker: str) -> int:
        """The position ``tracker`` has reached (0 if it never recorded one)."""
        found = self._query(f"SELECT position FROM {TRACKING_TABLE} WHERE name = ?", (tracker,))
        return found[0][0] if found else 0

    def _write(
        self, rows: Sequence[Row], guard: Collection[str] | None, tracking: tuple[str, int, int] | None = None
    ) -> int:
        with self._write_lock, self._writer.transaction():
            cur = self._writer.cursor()
            if tracking is not None:
                self._move_tracker(cur, *tracking)
            cur.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            last, previous = self._head_row(
                cur.execute(f"SELECT seq, {CHAIN} FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            )
            if not rows:
                return last + 1
            placed = self._place(rows, last, guard, lambda after, streams: _clash(cur, after, streams))
            stored = chained(placed, previous)
            with cur.copy(_COPY) as copy:
                copy.set_types(_COPY_TYPES)
                for row in stored:
                    copy.write_row(row)
            cur.execute(_SET_META.replace("?", "%s"), (HEAD, head_value(stored[-1][0], stored[-1][-1])))
            cur.execute(f"NOTIFY {CHANNEL}")
        return placed[0][0]

    def _move_tracker(self, cur: psycopg.Cursor, tracker: str, previous: int, position: int) -> None:
        cur.execute(
            f"INSERT INTO {TRACKING_TABLE} (name, position) VALUES (%s, 0) ON CONFLICT (name) DO NOTHING", (tracker,)
        )
        (current,) = cur.execute(
            f"SELECT position FROM {TRACKING_TABLE} WHERE name = %s FOR UPDATE", (tracker,)
        ).fetchone()
        if current != previous:
            raise RtoptError(
                f"{self.location}: tracker {tracker!r} is at seq {current}, not {previous}: another process"
                " follows the log under the same name"
            )
        cur.execute(f"UPDATE {TRACKING_TABLE} SET position = %s WHERE name = %s", (position, tracker))

    # --- reading ---------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._read_lock:
            return self._reader.execute(sql.replace("?", "%s"), params).fetchall()

    def wait_for_change(self, timeout: float) -> bool:
        if self._listener is None:
            # commits made before LISTEN reach nobody: the caller reads again before waiting
            self._listener = _connect(self._url)
            self._listener.execute(f"LISTEN {CHANNEL}")
            return True
        if not any(True for _ in self._listener.notifies(timeout=timeout, stop_after=1)):
            return False
        for _ in self._listener.notifies(timeout=0.0):  # one read answers every commit already announced
            pass
        return True

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            for conn in (self._writer, self._reader, self._listener):
                if conn is not None:
                    conn.close()


def _clash(cur: psycopg.Cursor, after: int, streams: Collection[str]) -> tuple[int, str] | None:
    """The first event after seq ``after`` on one of ``streams``, as (seq, stream)."""
    return cur.execute(
        "SELECT seq, stream FROM events WHERE seq > %s AND stream = ANY(%s) ORDER BY seq LIMIT 1",
        (after, list(streams)),
    ).fetchone()


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

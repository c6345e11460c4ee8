"""The SQLite log: one file (WAL mode), written by one process at a time and read by any number; writers wait
for their turn in line on a lock file beside it (``<log>-lock``)."""

from __future__ import annotations

import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from rtopt.arguments import one_of
from rtopt.errors import InvalidLog, ReadOnlyLog, StorageUnavailable, WriteConflict
from rtopt.storage.interface import CHAIN, FORMAT_VERSION, HEAD, Row, chained, head_value
from rtopt.storage.sql import (
    _INSERT,
    _SELECT,
    _SET_META,
    META_TABLE,
    TRACKING_TABLE,
    SQLLog,
    chain_existing,
    initial_meta,
)

WAL_SIZE_LIMIT = 64 * 1024 * 1024  # bytes the WAL file is cut back to after a checkpoint
TURN_WAIT_S = 30.0
"""Seconds a write waits for its turn in line, as SQLite's own busy timeout waits, before it gives up."""


class SQLiteLog(SQLLog):
    """An rtopt log in one SQLite file (WAL mode); ``":memory:"`` keeps it in memory.

    UPDATE and DELETE on the events table are refused by triggers in the file itself.

    >>> log = SQLiteLog.open(":memory:", seed=3)
    >>> log.last_seq(), log.meta()["seed"]
    (0, '3')
    >>> log.append_tracked([], "worker:0/1", previous=0, position=5), log.tracked("worker:0/1")
    (1, 5)
    >>> log.close()
    """

    connections = ("_writer", "_reader", "_line")

    def __init__(
        self, location: str, writer: sqlite3.Connection | None, reader: sqlite3.Connection, line: int | None = None
    ) -> None:
        self.location = location
        self.read_only = writer is None
        self._writer = writer
        self._reader = reader
        self._line = None if line is None else _Line(line)  # the writers' line (see _turn)
        self.turn_wait_s = TURN_WAIT_S
        """Seconds a write waits for its turn behind the other processes' writes before it raises
        :class:`StorageUnavailable`, nothing written."""
        self._write_lock = threading.RLock()
        self._read_lock = self._write_lock if writer is reader else threading.Lock()
        self._held: tuple[int, bytes] | None = None  # the head while appending() holds the write transaction
        self._holder: int | None = None  # the thread inside appending(), which reads what it has written
        self._data_version = self._pragma_data_version()
        self.belongs_here()

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
        ``-shm`` files SQLite makes beside it, and the ``-lock`` file writers wait in line on) gets the
        permissions ``file_mode``. A file that is not a
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
        writer = None if read_only else _create_if_new(path, seed, synchronous, file_mode)
        if writer is None:
            if _is_new(path):
                raise InvalidLog(f"{location}: no such log")
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
        try:
            line = _open_line(path, file_mode)
        except BaseException:
            writer.close()
            raise
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        return cls(location, writer, reader, line)

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

    def append(self, rows: Sequence[Row]) -> int:
        self._writable()
        if not rows:
            return self.last_seq() + 1
        with self._write_lock:
            if self._held is not None:  # inside appending(): its transaction commits the rows
                self._held = self._insert(rows, self._held)
                return rows[0][0]
            with self._transaction() as head:
                self._insert(rows, head)
        return rows[0][0]

    def append_tracked(self, rows: Sequence[Row], tracker: str, previous: int, position: int) -> int:
        self._writable()
        with self._write_lock, self._transaction() as head:
            conn = self._write_connection
            conn.execute(_TRACKING_SCHEMA)
            self._move_tracker(lambda sql, params: conn.execute(sql, params).fetchone(), tracker, previous, position)
            if not rows:
                return head[0] + 1
            last = self._insert(rows, head, anywhere=True)
        return last[0] - len(rows) + 1

    @contextmanager
    def appending(self) -> Iterator[int]:
        self._writable()
        with self._write_lock, self._transaction() as head:
            self._held, self._holder = head, threading.get_ident()
            try:
                yield head[0]
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
        with self._turn():
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:  # the busy timeout passed while another connection wrote
                raise StorageUnavailable(f"{self.location}: cannot start a write ({exc}); nothing was written") from exc
            try:
                yield self._head_row(
                    conn.execute(f"SELECT seq, {CHAIN} FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def reserve(self) -> None:
        line = self._line
        if line is None:  # in memory: no other process can open it
            return
        if not line.take(self.turn_wait_s):
            raise StorageUnavailable(
                f"{self.location}: another process held the turn to write for more than turn_wait_s ="
                f" {self.turn_wait_s:g} s; the log cannot be kept for this one"
            )
        line.kept = True

    @contextmanager
    def _turn(self) -> Iterator[None]:
        """Wait for this process's turn to write: writers of a log file wait in line on its lock file, which the
        kernel hands to the next one the moment a transaction ends (SQLite's own busy handler, by contrast,
        polls with sleeps of up to 100 ms, which leaves the log idle while writers sleep). A writer killed
        mid-transaction leaves the line at once; behind one that is stopped, the others wait
        :attr:`turn_wait_s` seconds, then raise :class:`StorageUnavailable`."""
        line = self._line
        if line is None:
            yield
            return
        if not line.take(self.turn_wait_s):
            raise StorageUnavailable(
                f"{self.location}: another process held the turn to write for more than turn_wait_s ="
                f" {self.turn_wait_s:g} s (a writer stopped inside its transaction holds it until it goes on);"
                " nothing was written"
            )
        try:
            yield
        finally:
            line.give_back()

    def _insert(self, rows: Sequence[Row], head: tuple[int, bytes], *, anywhere: bool = False) -> tuple[int, bytes]:
        """Insert ``rows`` after ``head`` (the last seq and its chain value) in the open transaction (placed
        after it ``anywhere``, as :meth:`SQLLog._place` says); returns the new head."""
        placed = self._place(rows, head[0], anywhere=anywhere)
        stored = chained(placed, head[1])
        try:
            self._write_connection.executemany(_INSERT, stored)
        except sqlite3.IntegrityError as exc:  # the events' triggers and unique index refuse a taken seq or id
            raise WriteConflict(
                f"{self.location}: an event id or seq of the batch is in the log already ({exc}); nothing was written"
            ) from exc
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
        if self.inherited:  # its connections are the parent's
            return
        with self._write_lock:
            if self._writer is not None:
                self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._writer.close()
            if self._reader is not self._writer:
                self._reader.close()
            if self._line is not None:
                self._line.close()
                self._line = None


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
_TRACKING_SCHEMA = f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
"""The tracking table, made by a log's first tracked append (a log that no worker wrote has none)."""
_SQLITE_HEADER = b"SQLite format 3\x00"
LINE_SUFFIX = "-lock"
"""The suffix of the lock file beside a log that its writers wait in line on."""


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


def _create_if_new(path: Path, seed: int | None, synchronous: str, file_mode: int) -> sqlite3.Connection | None:
    """A writer's connection to the log created at ``path`` if it holds none yet (else None), created whole
    while other processes opening a log in the same folder wait: the first to come creates it, the others
    open what it created. In a folder this process cannot read (so cannot lock) the log is opened unlocked:
    creating its schema takes SQLite's write lock and checks again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder: int | None = os.open(path.parent, os.O_RDONLY)
    except PermissionError:
        folder = None
    try:
        if folder is not None:
            fcntl.flock(folder, fcntl.LOCK_EX)
        if not _is_new(path):
            return None
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, file_mode))
        os.chmod(path, file_mode)  # whatever the umask; SQLite gives the -wal and -shm files the same mode
        # the tables are made in a rollback journal, before WAL mode writes the file's first page: a process killed
        # before their commit leaves the file empty (a new log to whoever comes next), not a database without them
        writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        try:
            _create_schema(writer, seed)
            _write_ahead(writer, synchronous)
        except BaseException:
            writer.close()
            raise
        return writer
    finally:
        if folder is not None:
            os.close(folder)  # and with it the lock


class _Line:
    """The line a log's writers wait in for their turn: an exclusive ``flock`` on the log's lock file. A turn
    that is not free at once is waited for by a thread of the line's own, so that the wait can end at a
    deadline (a blocking ``flock`` cannot); the lock belongs to the file's descriptor, whichever thread took it.
    One thread of the process asks at a time (the log's write lock sees to it)."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor
        self._asked: queue.SimpleQueue[_Ask | None] = queue.SimpleQueue()
        self._waiter: threading.Thread | None = None
        self._waits = 0  # asks the waiting thread has not finished with (one may hold the lock to pass it on)
        self._waits_lock = threading.Lock()
        self.kept = False  # the turn is this process's until the descriptor closes (see SQLiteLog.reserve)

    def take(self, timeout: float) -> bool:
        """Take the turn, waiting at most ``timeout`` seconds; False if it did not come in time."""
        if self.kept:
            return True
        with self._waits_lock:
            if not self._waits:  # else the lock this descriptor may hold is a withdrawn ask's, about to go
                try:
                    fcntl.flock(self.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
            self._waits += 1
        if self._waiter is None:
            self._waiter = threading.Thread(target=self._wait_for_turns, name="rtopt-sqlite-line", daemon=True)
            self._waiter.start()
        ask = _Ask()
        self._asked.put(ask)
        if ask.given.wait(timeout):
            return True
        with ask.lock:
            ask.withdrawn = not ask.given.is_set()
            return not ask.withdrawn

    def give_back(self) -> None:
        if not self.kept:
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)

    def close(self) -> None:
        """Leave the line; a wait still under way closes the descriptor when its turn comes."""
        if self.kept:  # released now, though a forked process may hold the descriptor open too
            fcntl.flock(self.descriptor, fcntl.LOCK_UN)
        if self._waiter is None:
            os.close(self.descriptor)
        else:
            self._asked.put(None)

    def _wait_for_turns(self) -> None:
        while (ask := self._asked.get()) is not None:
            fcntl.flock(self.descriptor, fcntl.LOCK_EX)
            with ask.lock, self._waits_lock:
                if ask.withdrawn:  # its caller gave up: pass the turn on
                    fcntl.flock(self.descriptor, fcntl.LOCK_UN)
                else:
                    ask.given.set()
                self._waits -= 1
        os.close(self.descriptor)


class _Ask:
    """One wait for a turn: given, or withdrawn by a caller that stopped waiting."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.given = threading.Event()
        self.withdrawn = False


def _open_line(path: Path, file_mode: int) -> int:
    """A descriptor of the lock file beside the log at ``path`` that its writers wait in line on, created with
    the permissions ``file_mode`` if it is new."""
    name = f"{path}{LINE_SUFFIX}"
    try:
        try:
            line = os.open(name, os.O_CREAT | os.O_EXCL | os.O_RDONLY, file_mode)
            os.fchmod(line, file_mode)  # whatever the umask
            return line
        except FileExistsError:
            return os.open(name, os.O_RDONLY)
    except PermissionError as exc:
        raise ReadOnlyLog(f"{path}: cannot open {Path(name).name}, which writers wait in line on: {exc}") from exc


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
    _write_ahead(writer, synchronous)
    return writer


def _write_ahead(writer: sqlite3.Connection, synchronous: str) -> None:
    """Put the log in WAL mode and the writer's connection at the ``synchronous`` level asked for."""
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute(f"PRAGMA synchronous={synchronous.upper()}")
    writer.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")


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
    import sqlite_utils  # slow to import and needed only here: not on the path of opening a log

    db = sqlite_utils.Database(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if db.table(META_TABLE).exists():  # created by a process that did not wait for the folder's lock
            conn.execute("COMMIT")
            return
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

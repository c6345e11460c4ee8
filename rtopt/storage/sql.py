"""What the SQL logs share: the tables' names, the queries of reading, how a batch is placed after the
log's end, the integrity audit, tracking positions, and the meta data of a new log."""

from __future__ import annotations

import json
import re
import secrets
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import cast

from rtopt.arguments import invalid
from rtopt.errors import InvalidLog, ReadOnlyLog, WriteConflict
from rtopt.storage.interface import (
    CHAIN,
    COLUMNS,
    COPY,
    FORMAT_VERSION,
    GENESIS,
    HEAD,
    LOG_KEYS,
    TAIL_CHECKED,
    Damage,
    EventLog,
    Row,
    head_value,
    link,
)

META_TABLE = "rtopt_meta"
TRACKING_TABLE = "rtopt_tracking"
"""The table of the tracking tier: each tracker's name and the position it has processed."""
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM events"
_SELECT_CHAINED = f"SELECT {', '.join(COLUMNS)}, {CHAIN} FROM events"
_INSERT = f"INSERT INTO events ({', '.join(COLUMNS)}, {CHAIN}) VALUES ({', '.join('?' * (len(COLUMNS) + 1))})"
_SET_META = (
    f"INSERT INTO {META_TABLE} (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


class SQLLog(EventLog):
    """What the SQL logs share: the queries of reading, how a batch is placed after the log's end, and how a
    tracker moves.

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

    def _place(self, rows: Sequence[Row], last: int, *, anywhere: bool = False) -> Sequence[Row]:
        """``rows`` numbered to follow ``last``, the committed end of the log read under the write lock.

        Rows numbered after another seq raise WriteConflict, unless ``anywhere`` (a tracked append's): those
        move after what others committed.
        """
        seen = rows[0][0] - 1
        if seen == last:
            return rows
        if not anywhere:
            raise WriteConflict(
                f"{self.location}: expected to append at seq {last + 1}, got {rows[0][0]};"
                " another process is writing to this log"
            )
        shift = last - seen
        return [(row[0] + shift, *row[1:]) for row in rows]

    # --- tracking ----------------------------------------------------------------------------------

    def tracked(self, tracker: str) -> int:
        if TRACKING_TABLE not in self._tables():  # an SQLite log gets the table with its first tracked append
            return 0
        found = self._query(f"SELECT position FROM {TRACKING_TABLE} WHERE name = ?", (tracker,))
        return found[0][0] if found else 0

    def _move_tracker(
        self,
        run: Callable[[str, Sequence[object]], tuple | None],
        tracker: str,
        previous: int,
        position: int,
        lock: str = "",
    ) -> None:
        """Move ``tracker`` from ``previous`` to ``position`` in the open write transaction, where ``run(sql,
        params)`` executes a statement and returns its first row; ``lock`` ends the SELECT that reads the
        tracker (``" FOR UPDATE"`` where rows are locked). Raises WriteConflict if the tracker is elsewhere."""
        if position <= previous:
            raise invalid("position", position, f"must be after previous = {previous}")
        run(f"INSERT INTO {TRACKING_TABLE} (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING", (tracker,))
        found = run(f"SELECT position FROM {TRACKING_TABLE} WHERE name = ?{lock}", (tracker,))
        assert found is not None  # inserted just above if it was missing
        if found[0] != previous:
            raise WriteConflict(
                f"{self.location}: tracker {tracker!r} is at seq {found[0]}, not {previous}: another process"
                " follows the log under the same name"
            )
        run(f"UPDATE {TRACKING_TABLE} SET position = ? WHERE name = ?", (position, tracker))

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

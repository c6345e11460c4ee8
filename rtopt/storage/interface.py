"""The storage interface of an rtopt log: what every backend stores and the operations the kernel uses.

A log is an ordered, gapless, append-only sequence of rows (:data:`COLUMNS`), each linked to the one before
by a hash chain (:func:`link`), plus meta data and handler snapshots. Its tracking tier records, for each
consumer (a worker reading the inputs others append), the position it has processed, in the same
transaction as the events it derived from them.
"""

from __future__ import annotations

import hashlib
import os
import re
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import ClassVar, NamedTuple, NoReturn

import msgspec

from rtopt.errors import RtoptError

FORMAT_VERSION = 2
"""Version 2 added the ``chain`` column and the ``head`` anchor; a version-1 log is migrated when opened writable."""
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


def shown_url(url: str) -> str:
    """``url`` with its password hidden, for messages.

    >>> shown_url("postgresql://app:secret@db/rtopt")
    'postgresql://app:***@db/rtopt'
    """
    return re.sub(r"^(\w+://[^:/@]+):[^@]*@", r"\1:***@", url)


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
    connections: ClassVar[tuple[str, ...]] = ()
    """The attributes holding the log's connections, which belong to the process that opened it."""
    inherited = False
    """Whether this process got the log from the process that opened it by a fork (see :func:`belongs_here`)."""

    @property
    def storage(self) -> EventLog:
        """The log that stores the rows: this one, or the one a log that holds appends back writes them to."""
        return self

    def belongs_here(self) -> None:
        """Mark the log as this process's: a process forked from this one afterwards finds the log's
        connections set aside, and any use of them raises :class:`~rtopt.errors.RtoptError` saying to open the
        log after the fork (a connection used by two processes at once corrupts both sides' transactions)."""
        self.opened_in = os.getpid()
        _open_logs.add(self)

    def _set_aside_after_fork(self) -> None:
        self.inherited = True
        message = (
            f"{self.location} was opened in process {self.opened_in}, which this process ({os.getpid()}) was"
            " forked from; open the engine in each process after it is forked"
        )
        for name in self.connections:
            connection = getattr(self, name)
            if connection is not None:
                _kept_from_parent.append(connection)
                setattr(self, name, _InheritedConnection(message))

    @abstractmethod
    def append(self, rows: Sequence[Row]) -> int:
        """Append ``rows`` in one durable transaction; returns the seq the first row got.

        The rows are numbered to continue :meth:`last_seq` as the writer last saw it (inside
        :meth:`appending`, the seq it gave). When another process committed in between, it raises
        :class:`~rtopt.errors.WriteConflict` and writes nothing, as it does for an event id already in the log.
        """

    @abstractmethod
    def append_tracked(self, rows: Sequence[Row], tracker: str, previous: int, position: int) -> int:
        """Append ``rows`` after whatever is committed and move ``tracker`` from position ``previous`` to
        ``position``, in one transaction; returns the seq the first row got (the next free seq when ``rows``
        is empty). The rows may be numbered from 1: the log places them.

        This is the tracking tier: a consumer of the log (a worker deriving from the inputs others append)
        records how far it got together with what it derived, so that killed at any moment it resumes from
        a position whose results are all in the log. Raises :class:`~rtopt.errors.WriteConflict`, writing
        nothing, when ``tracker`` is not at ``previous``: another consumer under the same name moved it.
        """

    @abstractmethod
    def tracked(self, tracker: str) -> int:
        """The position ``tracker`` has reached (0 if it never recorded one)."""

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

    @abstractmethod
    def appending(self) -> AbstractContextManager[int]:
        """Keep other writers out for the block and give the log's last seq as read under that hold: the
        caller folds what others appended up to it before deriving anything; appends inside the block
        commit, in one transaction, when it ends (nothing of them if it raises).
        """

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
    def reserve(self) -> None:
        """Keep the log for this process until it is closed: other processes' writes wait for it (and give up,
        writing nothing, after their wait); raises :class:`~rtopt.errors.StorageUnavailable` if another
        process keeps writing past this one's wait."""

    @abstractmethod
    def close(self) -> None:
        """Release the storage."""


class _InheritedConnection:
    """Stands for a connection of the process this one was forked from: every use of it raises."""

    def __init__(self, message: str) -> None:
        self._message = message

    def __getattr__(self, name: str) -> NoReturn:
        raise RtoptError(self._message)


_open_logs: weakref.WeakSet[EventLog] = weakref.WeakSet()
# the parent's connections, kept from being closed or collected in a forked child: closing one there would end
# the parent's session (PostgreSQL) or release what its file handle holds (SQLite)
_kept_from_parent: list[object] = []


def _set_logs_aside_after_fork() -> None:
    for log in list(_open_logs):
        log._set_aside_after_fork()
    _open_logs.clear()


os.register_at_fork(after_in_child=_set_logs_aside_after_fork)

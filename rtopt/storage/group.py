"""Group commit: appends held in memory and written by a thread of their own, many commits to a transaction.

With ``durability="group"`` an engine's calls return once their events are ordered and folded into its state;
:class:`GroupCommitLog` writes what they appended to the log behind it in one transaction every
``interval_s`` seconds (or as soon as ``most`` rows wait). A crash loses at most what waited: the log keeps
a prefix of what was appended, whole commits only, each input with everything derived from it, never a gap.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rtopt.errors import RtoptError, StorageError
from rtopt.storage.interface import Damage, EventLog, Row

BACKLOG_GROUPS = 10
"""How many full groups may wait (the log being slow or out of reach) before an append waits for the
committer: memory stays bounded, and so does what a crash can lose."""


class GroupLost(StorageError):
    """Events appended in memory could not be written (the write failed, or a connection was lost to another
    writer): they are not in the log, nor is anything appended after them."""


class GroupCommitLog(EventLog):
    """``log`` with its appends taken into memory and written by a committer thread in groups.

    The log is kept for this process (:meth:`EventLog.reserve`): another writer waits for it. Reads of events
    write what waits first, so they see every append; :meth:`last_seq` and :meth:`existing_ids` answer from
    memory too. A group that fails to be written is lost with everything appended after it, and the next
    append (or :meth:`flush`) raises :class:`GroupLost` once.

    >>> from rtopt.storage.sqlite import SQLiteLog
    >>> log = GroupCommitLog(SQLiteLog.open(":memory:", seed=1), interval_s=60.0)
    >>> log.append([(1, "id-1", "Feedback", "p1", 0.0, 0.0, None, None, 1, b"...")])
    1
    >>> log.last_seq(), log.log.last_seq()  # held in memory: an hour's wait, unless something reads or flushes
    (1, 0)
    >>> log.flush(); log.log.last_seq()
    1
    >>> log.close()
    """

    connections = ()  # the log behind it has them

    def __init__(self, log: EventLog, *, interval_s: float = 0.005, most: int = 1000) -> None:
        log.reserve()
        self.log = log
        self.location = log.location
        self.read_only = False
        self.interval_s = interval_s
        self.most = most
        self._changed = threading.Condition()
        self._waiting: list[Row] = []  # appended, not yet taken by the committer
        self._writing: list[Row] = []  # taken by the committer, being written
        self._ids: set[str] = set()  # the ids of both
        self._head = log.last_seq()
        self._written = self._head
        self._lost: GroupLost | None = None
        self._losses = 0  # how many times appended rows were lost
        self._flush_asked = False
        self._closing = False
        self._closed = False
        self._committer = threading.Thread(target=self._commit_groups, name="rtopt-group-commit", daemon=True)
        self._committer.start()
        self.belongs_here()
        _open_groups.add(self)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _BACKEND_SETTINGS:  # a setting of the log behind it (turn_wait_s, reconnect_timeout_s)
            setattr(self.log, name, value)
        else:
            super().__setattr__(name, value)

    def _set_aside_after_fork(self) -> None:
        self.inherited = True  # the committer thread stayed in the parent: every call raises here

    @property
    def storage(self) -> EventLog:
        return self.log

    # --- appending -----------------------------------------------------------------------------------

    def append(self, rows: Sequence[Row]) -> int:
        self._check_process()
        with self._changed:
            self._changed.wait_for(lambda: len(self._waiting) < BACKLOG_GROUPS * self.most or self._lost is not None)
            self._raise_lost()
            if not rows:
                return self._head + 1
            if rows[0][0] != self._head + 1:
                raise StorageError(f"{self.location}: expected to append at seq {self._head + 1}, got {rows[0][0]}")
            self._waiting.extend(rows)
            self._ids.update(row[1] for row in rows)
            self._head = rows[-1][0]
            if len(self._waiting) == len(rows) or len(self._waiting) >= self.most:
                self._changed.notify_all()  # the first rows start the interval; a full group goes at once
        return rows[0][0]

    @contextmanager
    def appending(self) -> Iterator[int]:
        self._check_process()
        with self._changed:
            self._raise_lost()
            head = self._head
        yield head

    def flush(self) -> None:
        """Return once everything appended so far is written; raise :class:`GroupLost` if some was lost."""
        self._check_process()
        with self._changed:
            self._write_now()
            self._raise_lost()

    def _check_process(self) -> None:
        if self.inherited:
            raise RtoptError(
                f"{self.location} was opened in process {self.opened_in}, which this process was forked from; open"
                " the engine in each process after it is forked"
            )

    def _raise_lost(self) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            raise lost

    def _commit_groups(self) -> None:
        changed = self._changed
        while True:
            with changed:
                changed.wait_for(lambda: self._waiting or self._closing)
                if not self._waiting:
                    return
                changed.wait_for(
                    lambda: self._closing or self._flush_asked or len(self._waiting) >= self.most, self.interval_s
                )
                self._writing, self._waiting, self._flush_asked = self._waiting, [], False
            try:
                self.log.append(self._writing)
            except Exception as exc:
                self._lose(exc)
                continue
            with changed:
                self._written = self._writing[-1][0]
                self._ids.difference_update(row[1] for row in self._writing)
                self._writing = []
                changed.notify_all()

    def _lose(self, cause: Exception) -> None:
        try:  # where the log ends now: a commit whose outcome was open may be in it, or another writer's
            end: int | None = self.log.last_seq()
        except Exception:
            end = None  # out of reach: the next append is numbered after what this log wrote, and checked
        with self._changed:
            count = len(self._writing) + len(self._waiting)
            self._lost = GroupLost(
                f"{self.location}: {count} events appended after seq {self._written} (durability='group') could"
                f" not be written and are lost: {cause}"
            )
            self._lost.__cause__ = cause
            self._losses += 1
            self._writing, self._waiting = [], []
            self._ids.clear()
            if end is not None:
                self._written = end
            self._head = self._written
            self._changed.notify_all()

    # --- reading: from memory, or from the log once what waits is written -----------------------------

    def last_seq(self) -> int:
        self._check_process()
        with self._changed:
            return self._head

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        wanted = list(ids)
        self._check_process()
        with self._changed:
            held = {event_id for event_id in wanted if event_id in self._ids}
        return held | self.log.existing_ids(wanted)

    def _written_log(self) -> EventLog:
        """The log, once everything appended so far is in it (a loss is left for the next append to raise)."""
        self._check_process()
        with self._changed:
            self._write_now()
        return self.log

    def _write_now(self) -> None:
        """Have what waits written at once, and wait until it is (or is lost); the caller holds ``_changed``.
        Later appends (other threads publishing on) are not waited for."""
        if self._waiting:
            self._flush_asked = True
            self._changed.notify_all()
        target, losses = self._head, self._losses
        self._changed.wait_for(lambda: self._written >= target or self._losses != losses)

    def rows(
        self,
        start: int = 1,
        until: int | None = None,
        types: Sequence[str] | None = None,
        stream: str | None = None,
        chunk: int = 2000,
    ) -> Iterator[Row]:
        return self._written_log().rows(start, until, types, stream, chunk)

    def inputs(self, start: int = 1, until: int | None = None, chunk: int = 2000) -> Iterator[Row]:
        return self._written_log().inputs(start, until, chunk)

    def get(self, event_id: str) -> Row | None:
        return self._written_log().get(event_id)

    def count_by_type(self, until: int | None = None) -> dict[str, int]:
        return self._written_log().count_by_type(until)

    def count_inputs(self, until: int | None = None, after: int = 0) -> int:
        return self._written_log().count_inputs(until, after)

    def audit(self, start: int = 1) -> Damage | None:
        return self._written_log().audit(start)

    def latest_times(self) -> dict[str, float]:
        return self._written_log().latest_times()

    def tracked(self, tracker: str) -> int:
        return self._written_log().tracked(tracker)

    def append_tracked(self, rows: Sequence[Row], tracker: str, previous: int, position: int) -> int:
        return self._written_log().append_tracked(rows, tracker, previous, position)

    def save_snapshot(self, handler: str, fingerprint: str, seq: int, state: bytes) -> None:
        with self._changed:
            self._write_now()
            self._raise_lost()
            if seq > self._written:  # a state holding events the log lacks
                raise GroupLost(
                    f"{self.location}: a snapshot at seq {seq} would be ahead of the log (seq {self._written})"
                )
        self.log.save_snapshot(handler, fingerprint, seq, state)

    def load_snapshot(self, handler: str, fingerprint: str, until: int | None) -> tuple[int, bytes] | None:
        return self.log.load_snapshot(handler, fingerprint, until)

    def meta(self) -> dict[str, str]:
        return self.log.meta()

    def set_meta(self, key: str, value: str) -> None:
        self.log.set_meta(key, value)

    def wait_for_change(self, timeout: float) -> bool:
        return self.log.wait_for_change(timeout)

    def reserve(self) -> None:
        """Kept for this process since it was made."""

    def close(self) -> None:
        """Write what waits, then close the log; raises :class:`GroupLost` if some of it could not be written.
        Closing again does nothing, and so does closing in a process forked from the one that opened it."""
        if self._closed or self.inherited:
            return
        self._closed = True
        _open_groups.discard(self)
        try:
            self.flush()
        finally:
            with self._changed:
                self._closing = True
                self._changed.notify_all()
            self._committer.join()
            self.log.close()

    def __getattr__(self, name: str) -> Any:  # what a backend adds (turn_wait_s, integrity_check...)
        if name == "log":  # not set yet
            raise AttributeError(name)
        return getattr(self.log, name)


_BACKEND_SETTINGS = frozenset({"turn_wait_s", "reconnect_timeout_s"})
_open_groups: weakref.WeakSet[GroupCommitLog] = weakref.WeakSet()


@atexit.register
def _write_open_groups() -> None:
    """At the interpreter's exit, write what waits in the group logs left open (the committer thread would
    not outlive it)."""
    for log in list(_open_groups):
        if not log.inherited:
            log.close()

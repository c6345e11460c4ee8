"""Workers: processes that tail a shared log and run the handler chains on the inputs others append.

Writers publish input events only (an engine opened with ``handlers=[]``); workers derive. A worker reads
the inputs in seq order, keeps those of its partition's streams, folds each through its chains as an
engine does (one input, then everything derived from it) and appends what they derived together with its
new position in one transaction (the log's tracking tier). Killed at any point, it resumes from the
position of its last transaction: nothing is derived twice, nothing is lost. On start it rebuilds its
state from its newest snapshot (taken every so many seqs), running its chains again over the inputs from
there up to that position and throwing their output away.

Decisions and learning are per stream, so N workers, each taking the streams whose name hashes to its
partition, together derive the same events as one worker taking them all.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time as wall_clock
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec

from rtopt.arguments import invalid, whole
from rtopt.engine import default_handlers
from rtopt.errors import InvalidLog
from rtopt.handler import Chains, Handler, HandlerSlot
from rtopt.privacy import Keyring
from rtopt.replay import WORKED
from rtopt.rows import envelope_from_row, envelope_row
from rtopt.storage.factory import is_postgres_url, open_log
from rtopt.storage.interface import EventLog, Row

DEFAULT_NAME = "worker"


def partition_of(stream: str, count: int) -> int:
    """The partition (0 .. count - 1) that ``stream`` belongs to; the same in every process.

    >>> partition_of("greeting", 1), partition_of("greeting", 4) == partition_of("greeting", 4)
    (0, True)
    """
    return int.from_bytes(hashlib.blake2b(stream.encode(), digest_size=8).digest(), "big") % count


class Partition(NamedTuple):
    """Partition ``index`` of ``count``: the streams whose name hashes to ``index``.

    >>> Partition.parse("1/4")
    Partition(index=1, count=4)
    >>> Partition.parse("0/1").owns("any stream")
    True
    """

    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as a NamedTuple field may
    count: int  # type: ignore[assignment]  # the field shadows tuple.count, as a NamedTuple field may

    @classmethod
    def parse(cls, text: str) -> Partition:
        """Read ``I/N`` (0 <= I < N); raises InvalidArgument naming the text otherwise."""
        head, _, tail = text.partition("/")
        try:
            index, count = int(head), int(tail)
        except ValueError:
            index, count = -1, 0
        if not 0 <= index < count:
            raise invalid("partition", text, "must be I/N with 0 <= I < N, as in 0/4")
        return cls(index, count)

    def owns(self, stream: str) -> bool:
        """True if ``stream`` is in this partition."""
        return self.count == 1 or partition_of(stream, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


WHOLE = Partition(0, 1)
"""The partition of every stream."""


class Worker:
    """Runs handler chains over the inputs of a shared log, recording its progress under ``name`` and its
    partition, in the same transactions as the events it derives.

    >>> worker = Worker.open("postgresql://postgres@127.0.0.1/rtopt", partition="0/2")  # doctest: +SKIP
    >>> worker.run(drain=True)  # doctest: +SKIP
    >>> worker.position, worker.processed, worker.derived  # doctest: +SKIP
    (6021, 2001, 1010)
    """

    def __init__(
        self,
        log: EventLog,
        handlers: Sequence[Handler[Any]],
        *,
        name: str = DEFAULT_NAME,
        partition: Partition = WHOLE,
        batch: int = 500,
        snapshot_every: int = 20_000,
    ) -> None:
        whole("batch", batch)
        whole("snapshot_every", snapshot_every)
        self.log = log
        self._keys = Keyring(log)
        self.partition = partition
        self.tracker = f"{name}:{partition}"
        self.batch = batch
        self.snapshot_every = snapshot_every
        seed = int(log.meta()["seed"])
        self._chains = Chains()
        self._slots = [HandlerSlot(handler, seed) for handler in handlers]
        for slot in self._slots:
            self._chains.add(slot)
        if WORKED not in log.meta():
            end = log.last_seq()  # inputs and derived events counted up to one seq: writers may append meanwhile
            derived = end - log.count_inputs(end)
            if derived:
                raise InvalidLog(
                    f"{log.location}: its {derived:,} derived events were derived by the engines that appended"
                    " their inputs; workers derive for writers opened with handlers=[], on a log they derive"
                    " from its start"
                )
            log.set_meta(WORKED, "1")
        self.position = log.tracked(self.tracker)
        self._stale = False  # a failed step left the chains ahead of the position: restore before the next
        self._restore()
        self._snapshot_at = self.resumed_from
        self.processed = 0
        self.derived = 0

    def _restore(self) -> None:
        """Put the chains' states at the position: the newest snapshot, then the inputs after it folded again
        (what they derive is in the log already)."""
        for slot in self._slots:
            slot.state = slot.handler.initial_state()
        self.resumed_from = self._load_snapshots()
        for row in self.log.inputs(self.resumed_from + 1, self.position):
            if self.partition.owns(row[3]):
                self._chains.cascade([envelope_from_row(row, self._keys)], 0.0)

    def _snapshot_name(self, slot: HandlerSlot) -> str:
        return f"{slot.name}@{self.tracker}"

    def _load_snapshots(self) -> int:
        """Restore every chain's state from the newest snapshots at or before the position; returns their
        seq (0, with the states left initial, unless every chain has one at the same seq)."""
        found = [
            self.log.load_snapshot(self._snapshot_name(slot), slot.handler.fingerprint(), self.position)
            for slot in self._slots
        ]
        seqs = {snapshot[0] if snapshot else 0 for snapshot in found}
        if not self._slots or len(seqs) != 1 or seqs == {0}:
            return 0
        for slot, snapshot in zip(self._slots, found, strict=True):
            assert snapshot is not None  # every chain has one: seqs holds a single seq, not 0
            slot.state = msgspec.msgpack.decode(snapshot[1], type=slot.handler.state_type)
        return seqs.pop()

    def _save_snapshots(self) -> None:
        for slot in self._slots:
            state = msgspec.msgpack.encode(slot.state)
            self.log.save_snapshot(self._snapshot_name(slot), slot.handler.fingerprint(), self.position, state)
        self._snapshot_at = self.position

    @classmethod
    def open(
        cls,
        location: str,
        handlers: Sequence[Handler[Any]] | None = None,
        *,
        name: str = DEFAULT_NAME,
        partition: Partition | str = WHOLE,
        batch: int = 500,
        snapshot_every: int = 20_000,
    ) -> Worker:
        """Work on the log at ``location`` (a PostgreSQL URL, or an SQLite file) with ``handlers`` (default:
        every installed handler), storing the chains' states every ``snapshot_every`` seqs so that a restart
        folds only what came after."""
        if isinstance(partition, str):
            partition = Partition.parse(partition)
        if not is_postgres_url(location) and not os.path.exists(location):
            raise InvalidLog(f"{location}: no log there; a worker derives for a log that writers have created")
        log = open_log(location)
        try:
            chains = default_handlers() if handlers is None else handlers
            return cls(log, chains, name=name, partition=partition, batch=batch, snapshot_every=snapshot_every)
        except BaseException:
            log.close()
            raise

    def step(self) -> int:
        """Process up to ``batch`` inputs of this partition that follow the position; returns how many
        inputs (of any partition) it read past."""
        if self._stale:
            self._restore()  # raises StorageUnavailable, staying stale, while the server cannot be reached
            self._stale = False
        recorded_at = wall_clock.time()
        derived: list[Row] = []
        read = owned = 0
        last = self.position
        try:
            for row in self.log.inputs(self.position + 1, None, chunk=self.batch):
                read += 1
                last = row[0]
                if self.partition.owns(row[3]):
                    owned += 1
                    for envelope in self._chains.cascade([envelope_from_row(row, self._keys)], recorded_at):
                        # numbered from 1: the log places them after whatever is committed
                        derived.append((len(derived) + 1, *envelope_row(envelope, self._keys)[1:]))
                    if owned == self.batch:
                        break
            if read:
                self.log.append_tracked(derived, self.tracker, self.position, last)
        except BaseException:
            self._stale = True  # the chains folded inputs whose results were not written
            raise
        if read:
            self.position = last
            self.processed += owned
            self.derived += len(derived)
            if self.position - self._snapshot_at >= self.snapshot_every:
                self._save_snapshots()
        return read

    def run(
        self,
        *,
        drain: bool = False,
        stop: threading.Event | None = None,
        idle_timeout: float | None = None,
        poll_interval: float = 1.0,
        progress: Callable[[Worker], None] | None = None,
    ) -> None:
        """Work on the log: with ``drain`` until every input committed so far is processed, else until ``stop``
        is set or no input arrives for ``idle_timeout`` seconds."""
        idle_since = wall_clock.monotonic()
        while stop is None or not stop.is_set():
            if self.step():
                idle_since = wall_clock.monotonic()
                if progress is not None:
                    progress(self)
            elif drain or (idle_timeout is not None and wall_clock.monotonic() - idle_since >= idle_timeout):
                return
            else:
                self.log.wait_for_change(poll_interval)

    def close(self) -> None:
        """Release the log."""
        self.log.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


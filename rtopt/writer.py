"""The write path: how an event given to the engine becomes durable, folded and delivered.

1. Draft: a caller's event is checked (a registered type, within :class:`Limits`, keys fit to store, an
   event time not too far ahead) and becomes a :class:`Draft` with its stream and event time; a refusal is
   raised as InvalidEvent and counted by reason.
2. Group commit: each call queues its drafts as a ticket; whichever thread takes the write lock first
   commits every ticket waiting at that moment, in one transaction.
3. Screening: before the commit, inputs that must be refused (an id taken or reserved, a definition of a
   name taken, an answer to a command published instead of asked for, what a handler's ``screen`` refuses)
   fail their ticket alone; the others go on.
4. Fold: the accepted inputs get their seqs and ids and are folded through the handler chains, in seq
   order; the events derived are appended after them, in the same transaction, so an input and everything
   it causes become durable together.
5. Delivery: only then do subscribers see the events, in seq order (an observer's own commits wait for the
   delivery under way).

A batch (:meth:`Writer.batch`) holds the commits of one block back and writes them in one transaction when
it ends. Other processes may write the same log (SQLite or PostgreSQL alike): a commit folds what they
appended (catch-up) before it takes the log's append lock (:meth:`EventLog.appending`: SQLite's write
lock, PostgreSQL's advisory lock) when the last commit met others' events, and again under it up to the
seq read under the lock, then screens and derives its events on that state and appends them in the lock's
transaction (answers to commands are made before the lock is taken, on the state the engine holds: their
basis, see :meth:`Writer._make_answers`): none is refused because others wrote, and seqs are gapless and in
commit order. The
lock is held from that read to the commit, so commits of all processes are serial: one log's rate is about
one over the time a commit holds it (catching up, deriving, the storage's round trips), whatever the
number of processes.
A write that fails after folding leaves the handlers ahead of the log: the state is marked stale and rebuilt
from the log (:func:`rtopt.replay.rebuild`) before it is used again.
"""

from __future__ import annotations

import itertools
import math
import numbers
import secrets
import threading
import time as wall_clock
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager, nullcontext, suppress
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec

from rtopt.bus import Bus
from rtopt.commands import COMMANDS, Command, Commands
from rtopt.errors import (
    CommitUncertain,
    InvalidEvent,
    ReadOnlyLog,
    RtoptError,
    StorageError,
    StorageUnavailable,
    WriteConflict,
    short_repr,
)
from rtopt.events import (
    Envelope,
    Event,
    FeedbackRejected,
    SubjectForgotten,
    decode_payload,
    validate,
)
from rtopt.handler import Chains, Handler, HandlerSlot
from rtopt.ids import ordered_id, prefix_of
from rtopt.privacy import Keyring
from rtopt.replay import WORKED, Progress, Rebuilt, fold_history, rebuild
from rtopt.rows import envelope_from_row, envelope_row
from rtopt.storage.group import GroupCommitLog, GroupLost
from rtopt.storage.interface import EventLog, Row
from rtopt.watermark import TimeBound

REJECTED_FEEDBACK = FeedbackRejected.tag()
FORGOTTEN_SUBJECT = SubjectForgotten.tag()
Positive = Annotated[int, msgspec.Meta(ge=1)]
COMMIT_ATTEMPTS = 5
"""How many times a commit starts again after catching up with other processes failed to read the log, or
its append found that others had appended after the state it derived on (a connection made anew)."""
RECENT_INPUTS = 1024
"""How many recent inputs an engine keeps to look up without reading the log (a decision that feedback
names): its own, and from the moment it opens, the answers among the log's last events."""
RECENT_READ_BACK = 4 * RECENT_INPUTS
"""How many of the log's last events an engine reads its recent inputs from when it opens (or rebuilds)."""
INPUT_EPOCH = "input_epoch"
"""Meta key: how many times engines opened the log since one with ``durability="group"`` first did."""
STALEST_BASIS = 50
"""How many events other processes may have appended after the state an answer was made on, when its commit
takes the write lock, for the answer to be recorded as made; beyond that it is made again on the current state."""
Checked = TypeVar("Checked", bound=msgspec.Struct)


class Draft(msgspec.Struct, frozen=True):
    """An event on its way into the log, with the envelope fields its publisher chose."""

    event: Event
    stream: str | None = None
    time: float | None = None
    id: str | None = None
    correlation_id: str | None = None


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bounds on what one call may write; anything beyond them is refused (``InvalidEvent``), counted in
    ``stats().rejected`` and never folded or written.

    ``max_event_bytes`` bounds an input event's payload as stored (msgpack-encoded), ``max_key_length`` the
    characters of a stream, an id or a correlation id, and ``max_batch`` the events of one
    ``publish_many``, the suggestions of one ``suggest`` and the slots of one ``decide``.

    >>> from rtopt import Engine, Feedback
    >>> with Engine.open(":memory:", seed=7, handlers=[], limits=Limits(max_event_bytes=300)) as engine:
    ...     engine.publish(Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=False,
    ...                             quality_score=0.0, error="Traceback ... " * 100))
    Traceback (most recent call last):
    rtopt.errors.InvalidEvent: Feedback: the payload takes 1,509 bytes, over the limit of 300; its largest field is ...
    """

    max_event_bytes: Positive = 64 * 1024
    max_key_length: Positive = 200
    max_batch: Positive = 10_000


class EngineStats(msgspec.Struct, frozen=True):
    """Counters of what the engine accepted, derived and rejected since it was opened."""

    last_seq: int
    published: int
    derived: int
    rejected: dict[str, int]
    handler_failures: dict[str, int]
    observer_errors: int
    clamped_times: int = 0


class _Ticket:
    __slots__ = ("answer", "apart", "basis", "done", "drafts", "envelopes", "error", "make")

    def __init__(
        self,
        drafts: list[Draft],
        make: Callable[[], list[Draft]] | None = None,
        answer: Callable[[], list[Draft]] | None = None,
    ) -> None:
        self.drafts = drafts
        self.make = make  # makes the drafts from the state the commit derives from, under the write lock
        self.answer = answer  # makes the drafts (an answer to a command) from the state the engine holds
        self.basis = 0  # the seq of that state, once the answer is made
        self.apart = False  # whether its ids were named in this engine's own namespace
        self.envelopes: list[Envelope[Any]] = []
        self.error: BaseException | None = None
        self.done = False


class _Batch:
    """What a batch block has committed so far, waiting to be written when the block ends."""

    __slots__ = ("by_id", "derived", "envelopes", "error", "owner")

    def __init__(self) -> None:
        self.owner = threading.get_ident()
        self.envelopes: list[Envelope[Any]] = []
        self.by_id: dict[str, Envelope[Any]] = {}
        self.derived = 0
        self.error: BaseException | None = None

    def add(self, written: list[Envelope[Any]], derived: int) -> None:
        self.envelopes.extend(written)
        self.by_id.update((envelope.id, envelope) for envelope in written)
        self.derived += derived


class Writer:
    """The write path of one engine: its handlers' state and position in the log, the drafts waiting to be
    committed, batches, screening, and delivery to the ``bus``."""

    def __init__(
        self,
        log: EventLog,
        handlers: Iterable[Handler[Any]],
        keys: Keyring,
        *,
        until_seq: int | None,
        progress: Progress | None,
        limits: Limits,
        time_bound: TimeBound,
    ) -> None:
        self.log = log
        self.keys = keys
        self.limits = limits
        self.seed = int(log.meta()["seed"])
        self.bus = Bus()
        self.commands = Commands()
        self.slots: list[HandlerSlot] = []
        self.lock = threading.RLock()
        self.queue_lock = threading.Lock()
        self.queue: list[_Ticket] = []
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.time_bound = time_bound
        self.last_seq = 0
        self.closed = False
        self._chains = Chains()
        self._progress = progress
        self._until_seq = until_seq
        self._inputs = 0
        self._input_prefix = f"rtopt/input/{self.seed}/"
        self._input_namespace = self._input_prefix.encode()
        self._abandoned_batches = 0
        self._apart = False  # whether inputs are named in a namespace of this engine's own
        self._to_dispatch: deque[list[Envelope[Any]]] = deque()
        self._dispatching = False
        self._batch: _Batch | None = None
        self._stale = False  # a failed write left handler state ahead of the log: rebuild before using it
        self._last_event: tuple[str, float] | None = None  # the id and recording time of the event at last_seq
        self._others_wrote = True  # another process appended before this engine's last commit
        self._recent: dict[str, Envelope[Any]] = {}  # the last inputs this engine committed, by id
        self._catch_up_error: Exception | None = None  # why the last fold of other processes' events failed
        for handler in handlers:
            self.add(handler)
        if not log.read_only:
            self._begin_input_epoch()
        if self.slots and not log.read_only and WORKED in log.meta():
            raise RtoptError(
                f"{log.location}: workers derive this log's events (rtopt worker); open it with handlers=[] to"
                " publish inputs, or read_only=True to read its state"
            )
        self.rebuild()

    # --- handlers and their state ------------------------------------------------------------------

    def add(self, handler: Handler[Any]) -> HandlerSlot:
        """Register ``handler`` (after the ones before it), with its initial state."""
        if any(slot.name == handler.name for slot in self.slots):
            raise RtoptError(f"a handler named {handler.name!r} is already registered")
        slot = HandlerSlot(handler, self.seed)
        self.slots.append(slot)
        self.commands.add(slot)
        self._chains.add(slot)
        return slot

    def register(self, handler: Handler[Any]) -> None:
        """Add a handler that first folds the log's history, then follows live events."""
        with self.lock:
            self.refuse_in_batch("register a handler")
            self.commit_queue()
            fold_history(self.log, [self.add(handler)], self.keys, self.last_seq, self._progress)

    def state(self, handler: str, key: str | None = None) -> Any:
        """A detached copy of ``handler``'s state, or of the part of it for ``key``, with what other processes
        appended to a writable log folded in first (a closed engine's state as it was at closing)."""
        with self.lock:
            for slot in self.slots:
                if slot.name == handler:
                    self.recover()
                    if not (self.log.read_only or self.closed):
                        self._look_ahead()
                        self.recover()
                    return slot.handler.view(slot.state, key)
        raise KeyError(f"no handler named {handler!r}; registered: {[slot.name for slot in self.slots]}")

    def rebuild(self) -> None:
        """Reset handler state to the newest usable snapshots and fold the rest of the log."""
        self._recent.clear()  # a subject may have been forgotten: its values are read from the log again
        self.rebuilt: Rebuilt = rebuild(self.log, self.slots, self.keys, self._until_seq, self._progress)
        self.last_seq = self.rebuilt.position
        self._last_event = next(((row[1], row[5]) for row in self.log.rows(self.last_seq, self.last_seq)), None)
        self._inputs = self.log.count_inputs(self.last_seq)
        if not self.log.read_only:
            self.time_bound.reset(self.log.latest_times())
            self._remember_recent_answers()

    def _remember_recent_answers(self) -> None:
        """Keep the answers to commands (decisions, suggestions) among the log's last events: the inputs that
        later calls name. Rows the engine cannot read (a type of another application) are left to the log."""
        start = max(1, self.last_seq - RECENT_READ_BACK + 1)
        answers = [command.makes.tag() for command in COMMANDS]
        found = []
        for row in self.log.rows(start, self.last_seq, types=answers):
            with suppress(RtoptError):
                found.append(envelope_from_row(row, self.keys))
        self._remember(found)

    def recover(self) -> None:
        """Rebuild state from the log if a failed write left it stale; raises StorageUnavailable (staying
        stale) while the server cannot be reached."""
        if self._stale:
            self.rebuild()
            self._stale = False

    def snapshot(self) -> int:
        """Store every handler's state at the current position; returns that seq."""
        with self.lock:
            self.refuse_in_batch("take a snapshot")
            self.commit_queue()
            self.flush()  # a snapshot is never ahead of the log
            self.recover()
            for slot in self.slots:
                blob = msgspec.msgpack.encode(slot.state)
                self.log.save_snapshot(slot.name, slot.handler.fingerprint(), self.last_seq, blob)
            return self.last_seq

    # --- checking what callers give ------------------------------------------------------------------

    def draft(self, draft: Draft, stream: str | None = None, time: float | None = None) -> Draft:
        """Check a draft and fill in its stream and event time."""
        event = draft.event
        if not isinstance(event, Event):
            self.rejected["unregistered type"] += 1
            raise InvalidEvent(
                f"cannot publish a {type(event).__name__}: not a registered rtopt event type",
                field="type",
                value=type(event).__name__,
            )
        given = self.key("stream", draft.stream) or self.key("stream", stream)
        event_id = self.key("id", draft.id)
        correlation_id = self.key("correlation_id", draft.correlation_id)
        event = self.accept(event, "invalid event")
        stream = given or event.default_stream()
        if not stream:
            self.rejected["no stream"] += 1
            raise InvalidEvent(f"{type(event).__name__} needs a stream to be published to", field="stream")
        when = draft.time if draft.time is not None else time
        return Draft(event, self.key("stream", stream), self.event_time(when, stream), event_id, correlation_id)

    def accept(self, event: Checked, reason: str) -> Checked:
        """``event`` as it will be stored (see :func:`rtopt.events.validate`), within the payload limit; a
        refusal is counted under ``reason``."""
        try:
            return validate(event, self.limits.max_event_bytes)
        except InvalidEvent:
            self.rejected[reason] += 1
            raise

    def key(self, field: str, value: object, *, optional: bool = True, reason: str = "invalid envelope") -> Any:
        """``value`` as a plain str fit to be a stream, id or correlation id (None stays None where
        ``optional``); otherwise count a refusal under ``reason`` and raise InvalidEvent."""
        if value is None and optional:
            return None
        longest = self.limits.max_key_length
        if type(value) is str and 0 < len(value) <= longest and value.isascii():
            return value
        if not isinstance(value, str):
            problem = f"must be a str, not {type(value).__name__}"
        elif not value:
            problem = "must not be empty"
        elif len(value) > longest:
            problem = f"is {len(value):,} characters long, over the limit of {longest:,} (Limits.max_key_length)"
        else:
            try:
                value.encode()
                return str(value)
            except UnicodeEncodeError as exc:
                problem = f"cannot be stored: {exc}"
        self.rejected[reason] += 1
        raise InvalidEvent(f"{field} = {short_repr(value)}: {problem}", field=field, value=value)

    def count(self, field: str, value: Any) -> int:
        """``value`` as an int from 1 to ``limits.max_batch`` (a numpy integer too); otherwise count a refused
        command and raise InvalidEvent."""
        most = self.limits.max_batch
        whole = type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))
        if whole and 1 <= value <= most:
            return int(value)
        self.rejected["invalid command"] += 1
        raise InvalidEvent(
            f"{field} = {short_repr(value)}: must be a whole number from 1 to {most:,} (Limits.max_batch)",
            field=field,
            value=value,
        )

    def collection(self, field: str, value: Any, reason: str = "invalid command") -> Iterable[Any]:
        """``value`` if it holds several items (a list, a tuple ...); a str, bytes or a single object is
        refused (counted under ``reason``), rather than taken apart."""
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            self.refuse(
                InvalidEvent(
                    f"{field} = {short_repr(value)}: must be a list, not a {type(value).__name__}",
                    field=field,
                    value=value,
                ),
                reason,
            )
        return value

    def event_time(self, when: float | None, stream: str) -> float:
        """The event time to record for an input on ``stream`` given at ``when`` (now if None)."""
        if when is None:
            return wall_clock.time()
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
            self.rejected["bad time"] += 1
            raise InvalidEvent(
                f"time = {when!r}: must be a finite number of seconds since the epoch", field="time", value=when
            )
        try:
            return self.time_bound.admit(stream, float(when))
        except InvalidEvent:
            self.rejected["time too far ahead"] += 1
            raise

    def refuse(self, problem: InvalidEvent, reason: str = "invalid command") -> NoReturn:
        """Count (under ``reason``) and raise ``problem``, a call refused."""
        self.rejected[reason] += 1
        raise problem

    def refuse_in_batch(self, what: str) -> None:
        """Raise if a batch is open: ``what`` cannot be done inside one."""
        if self._batch is not None:
            raise RtoptError(f"cannot {what} inside engine.batch(): end the batch first")

    def check_writable(self) -> None:
        """Raise if nothing can be committed now: an abandoned batch, a closed engine or a read-only log."""
        batch = self._own_batch()
        if batch is not None and batch.error is not None:
            raise RtoptError(f"the batch was abandoned after an error: {batch.error}") from batch.error
        if self.closed:
            raise RtoptError(f"the engine on {self.log.location} is closed")
        if self.log.read_only:
            raise ReadOnlyLog(f"{self.log.location} is open read-only")

    # --- committing ---------------------------------------------------------------------------------

    def submit(self, drafts: list[Draft]) -> list[Envelope[Any]]:
        """Commit ``drafts`` with whatever else is waiting (group commit) and return their envelopes."""
        self.check_writable()
        if self._own_batch() is not None:
            return self.commit_now(drafts)
        ticket = _Ticket(drafts)
        with self.queue_lock:
            self.queue.append(ticket)
        with self.lock:
            if not ticket.done:
                self.commit_queue()
        if ticket.error is not None:
            raise ticket.error
        return ticket.envelopes

    def submit_many(
        self, events: Iterable[Event | Draft], stream: str | None, time: float | None
    ) -> list[Envelope[Any]]:
        """:meth:`submit` the drafts of ``events`` (``stream`` and ``time`` where an item sets none), at most
        ``limits.max_batch`` of them."""
        most = self.limits.max_batch
        items = list(itertools.islice(self.collection("events", events, "invalid batch"), most + 1))
        if len(items) > most:
            count = len(events) if isinstance(events, Sized) else len(items)
            self.refuse(
                InvalidEvent(
                    f"events: {count:,}{'' if isinstance(events, Sized) else ' or more'} in one call, over the "
                    f"limit of {most:,} (Limits.max_batch)",
                    field="events",
                    value=count,
                ),
                "invalid batch",
            )
        drafts = [self.draft(item if isinstance(item, Draft) else Draft(item), stream, time) for item in items]
        return self.submit(drafts) if drafts else []

    def commit_now(
        self,
        drafts: list[Draft],
        *,
        checked: bool = False,
        make: Callable[[], list[Draft]] | None = None,
        answer: Callable[[], list[Draft]] | None = None,
    ) -> list[Envelope[Any]]:
        """Commit ``drafts`` as a group of their own; the caller holds the write lock. ``checked`` drafts
        (answers to commands) skip the screening of inputs. ``make``, if given, makes the drafts instead, from
        the state at the position they are appended after (so that what it reads of the state is current);
        ``answer`` makes them from the state the engine holds before the commit takes the log's write lock
        (see :meth:`_make_answers`)."""
        self.check_writable()
        ticket = _Ticket(drafts, make, answer)
        self._commit([ticket], checked=checked)
        if ticket.error is not None:
            raise ticket.error
        return ticket.envelopes

    def recommit(self, envelopes: list[Envelope[Any]]) -> list[Envelope[Any]]:
        """Commit inputs recorded in another log as one group, with their ids, streams, times and correlation
        ids, unscreened: they were accepted where they were first committed."""
        drafts = [Draft(env.payload, env.stream, env.time, env.id, env.correlation_id) for env in envelopes]
        with self.lock:
            return self.commit_now(drafts, checked=True)

    def commit_queue(self) -> None:
        """Commit every ticket waiting, unless a batch holds them back; the caller holds the write lock."""
        if self._batch is not None:  # other threads' events wait until the batch is written
            return
        with self.queue_lock:
            tickets, self.queue = self.queue, []
        if tickets:
            self._commit(tickets)

    def _commit(self, tickets: list[_Ticket], *, checked: bool = False) -> None:
        """Fold, append and deliver every event of ``tickets`` and what they derive, in one transaction.

        ``checked`` tickets come from commands or a replayed log and skip the screening of inputs.
        Whatever happens, every ticket ends done, with its envelopes or with the error that stopped it.
        """
        try:
            for _ in range(COMMIT_ATTEMPTS):
                folding = False  # until then a failure leaves the handlers' state as the log's
                self.recover()
                if self._others_wrote:  # else a process alone saves the read
                    self._look_ahead()
                if self._stale:
                    continue  # nothing made: the next attempt starts from the log as it is
                self._make_answers(tickets)
                # keys of new subjects are stored (and committed) before the write transaction holds other writers out
                self.keys.prepare(draft.event for ticket in tickets for draft in ticket.drafts)
                try:
                    with self.log.appending() if self._batch is None else nullcontext() as end:
                        if end is not None:
                            self._others_wrote = end != self.last_seq
                            if self._others_wrote:
                                self._catch_up(end)
                        if self._stale:
                            continue  # nothing derived: the next attempt starts from the log as it is
                        self._settle_answers(tickets)
                        accepted, batch, inputs, recorded_at = self._number(tickets, checked)
                        if not batch:
                            return
                        folding = True
                        written = [*batch, *self._chains.cascade(batch, recorded_at)]
                        if self._batch is None:
                            self.log.append(self._stored_rows(written))
                        else:
                            self._batch.add(written, len(written) - len(batch))
                except WriteConflict as conflict:
                    # nothing written: others appended while a broken connection was made anew
                    self._abandon(conflict)
                    if self._batch is not None:
                        raise
                    self._catch_up_error = conflict
                    for ticket in tickets:
                        ticket.envelopes.clear()
                    continue
                except BaseException as exc:
                    # the handlers may have folded events that are not in the log (a lost group holds some)
                    if folding or self._batch is not None or isinstance(exc, GroupLost):
                        self._abandon(exc)
                    raise
                break
            else:
                raise StorageUnavailable(
                    f"{self.log.location}: reading what other processes appended, or writing after them, failed"
                    f" {COMMIT_ATTEMPTS} times; nothing was written"
                ) from self._catch_up_error
            self.last_seq, self._inputs = written[-1].seq, inputs
            self._last_event = written[-1].id, written[-1].recorded_at
            self.time_bound.advance((envelope.stream, envelope.time) for envelope in batch)
            if self._batch is None:
                self._remember(batch)
                self.counts["published"] += len(batch)
                self.counts["derived"] += len(written) - len(batch)
                self._count_rejected_feedback(written[len(batch) :])
            for ticket in accepted:
                ticket.done = True
        except BaseException as exc:
            for ticket in tickets:
                if not ticket.done:
                    ticket.envelopes.clear()
                    ticket.error, ticket.done = exc, True
            return
        if self._batch is None:
            self._dispatch(written)

    def _make_answers(self, tickets: list[_Ticket], *, final: bool = False) -> None:
        """Make the answers that tickets of commands wait for, on the state the engine holds now: their basis.

        This runs before the commit takes the log's write lock, so that processes make their answers at the
        same time; under the lock, :meth:`_settle_answers` records the basis of those that others' events
        came after. A refusal made then stands only if nothing was appended since (``final`` makes it stand):
        another process may have defined the target meanwhile."""
        for ticket in tickets:
            if ticket.answer is not None and not ticket.done:
                ticket.error, ticket.basis, ticket.apart = None, self.last_seq, self._apart
                try:
                    ticket.drafts = ticket.answer()
                except InvalidEvent as exc:
                    ticket.drafts, ticket.error, ticket.done = [], exc, final

    def _settle_answers(self, tickets: list[_Ticket]) -> None:
        """Under the write lock: refuse the answers that were refused on the state now; record its basis on
        each answer that events of other processes, folded since it was made, come between; make again, on
        the state now, one refused before them, one whose ids another process gave meanwhile, or one whose
        basis is older than :data:`STALEST_BASIS` allows."""
        for ticket in tickets:
            if ticket.answer is None or ticket.done:
                continue
            if ticket.basis == self.last_seq:
                ticket.done = ticket.error is not None
                continue
            # ids named in this engine's own namespace are given by no other process: no need to look them up
            ids = [] if ticket.apart else [draft.id for draft in ticket.drafts if draft.id is not None]
            stale = self.last_seq - ticket.basis > STALEST_BASIS
            if ticket.error is not None or stale or (ids and self.log.existing_ids(ids)):
                self._make_answers([ticket], final=True)
                continue
            ticket.drafts = [
                msgspec.structs.replace(draft, event=msgspec.structs.replace(draft.event, basis=ticket.basis))
                for draft in ticket.drafts
            ]

    def _number(self, tickets: list[_Ticket], checked: bool) -> tuple[list[_Ticket], list[Envelope[Any]], int, float]:
        """The tickets accepted (made and screened on the current state), their envelopes numbered from the
        current position, the input count after them and their recording time."""
        for ticket in tickets:
            if ticket.make is not None and not ticket.done:
                try:
                    ticket.drafts = ticket.make()
                except InvalidEvent as exc:
                    ticket.error, ticket.done = exc, True
        accepted = [ticket for ticket in tickets if not ticket.done] if checked else self._screen(tickets)
        recorded_at = wall_clock.time()
        seq, inputs = self.last_seq, self._inputs
        batch: list[Envelope[Any]] = []
        for ticket in accepted:
            for draft in ticket.drafts:
                seq += 1
                inputs += 1
                event = draft.event
                assert draft.stream is not None and draft.time is not None  # draft() or the command filled them
                envelope = Envelope(
                    seq,
                    draft.id or self.input_id(inputs),
                    event.tag(),
                    draft.stream,
                    draft.time,
                    recorded_at,
                    None,
                    draft.correlation_id,
                    event.schema_version,
                    event,
                )
                ticket.envelopes.append(envelope)
                batch.append(envelope)
        return accepted, batch, inputs, recorded_at

    def _count_rejected_feedback(self, envelopes: list[Envelope[Any]]) -> None:
        """Count, by reason, the feedback that handlers rejected (their derived FeedbackRejected events)."""
        for envelope in envelopes:
            if envelope.type == REJECTED_FEEDBACK and envelope.causation_id is not None:
                self.rejected[f"feedback rejected: {envelope.payload.reason}"] += 1

    def _stored_rows(self, envelopes: list[Envelope[Any]]) -> list[Row]:
        """The rows of ``envelopes``, personal values sealed (new subjects' keys are stored together first)."""
        self.keys.prepare(envelope.payload for envelope in envelopes)
        return [envelope_row(envelope, self.keys) for envelope in envelopes]

    def _dispatch(self, envelopes: list[Envelope[Any]]) -> None:
        """Deliver committed events; events committed by an observer wait for the current delivery."""
        self._to_dispatch.append(envelopes)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._to_dispatch:
                self.bus.emit(self._to_dispatch.popleft())
        finally:
            self._dispatching = False

    def flush(self) -> None:
        """Wait until what this engine committed is in the log (see :meth:`rtopt.Engine.flush`); a lost group
        is raised, and the state goes back to the log's."""
        if isinstance(self.log, GroupCommitLog):
            with self.lock:
                try:
                    self.log.flush()
                except GroupLost as lost:
                    self._abandon(lost)
                    raise

    def stats(self) -> EngineStats:
        """What this writer published, derived and rejected since it was made."""
        return EngineStats(
            last_seq=self.last_seq,
            published=self.counts["published"],
            derived=self.counts["derived"],
            rejected=dict(self.rejected),
            handler_failures={slot.name: slot.failures for slot in self.slots if slot.failures},
            observer_errors=self.bus.observer_errors,
            clamped_times=self.time_bound.clamped,
        )

    def close(self) -> None:
        """Commit what is waiting, complete every observer and release the log."""
        with self.lock:
            if self.closed:
                return
            self.refuse_in_batch("close the engine")
            if not self.log.read_only:
                self.commit_queue()
            self.bus.complete()
            try:
                self.log.close()  # a group that could not be written raises here
            finally:
                self.closed = True

    def forget(self, subject: str, time: float | None) -> Envelope[SubjectForgotten]:
        """Delete ``subject``'s key, rebuild the state without it and record a SubjectForgotten input."""
        with self.lock:
            self.refuse_in_batch("forget a subject")
            self.check_writable()
            self.commit_queue()
            ref = self.keys.forget(subject)
            self.rebuild()
            return self.commit_now([self.draft(Draft(SubjectForgotten(ref=ref)), time=time)])[0]

    # --- input ids ------------------------------------------------------------------------------------

    def input_id(self, input_number: int) -> str:
        """The id the engine gives its ``input_number``-th input."""
        return ordered_id(input_number, self._input_namespace, str(input_number))

    def next_input_ids(self, n: int) -> list[str]:
        """The ids the next ``n`` inputs will get, if nothing else is committed first."""
        return [self.input_id(self._inputs + i) for i in range(1, n + 1)]

    def _generates_later(self, event_id: str, number: int) -> bool:
        """True if ``event_id``, given to the ``number``-th input, is the id the engine generates for a later one."""
        later = prefix_of(event_id)
        return later > number and self.input_id(later) == event_id

    def _retire_input_ids(self) -> None:
        """Number later inputs in a new namespace: ids handed out for events that may not be in the log
        must not name other events."""
        self._abandoned_batches += 1
        self._rename_inputs()

    def _begin_input_epoch(self) -> None:
        """On a log that an engine with ``durability="group"`` opened, number this engine's inputs in an epoch
        of its own (recorded before any of them): ids handed out for events a crash lost are not given again."""
        recorded = self.log.meta().get(INPUT_EPOCH)
        if recorded is None and not isinstance(self.log, GroupCommitLog):
            return  # no engine that returns before writing has opened it
        epoch = 0 if recorded is None else int(recorded) + 1
        self.log.set_meta(INPUT_EPOCH, str(epoch))
        if epoch:
            self._input_prefix += f"epoch-{epoch}/"
            self._rename_inputs()

    def _name_inputs_apart(self) -> None:
        """Name later inputs in a namespace of this engine's own, apart from other processes' on the same log:
        an answer made before the commit takes the write lock then keeps its ids (see :meth:`_settle_answers`)."""
        self._input_prefix += f"{secrets.token_hex(8)}/"
        self._apart = True
        self._rename_inputs()

    def _rename_inputs(self) -> None:
        retired = f"after-abandoned-{self._abandoned_batches}/" if self._abandoned_batches else ""
        self._input_namespace = f"{self._input_prefix}{retired}".encode()

    # --- failures and other writers ---------------------------------------------------------------------

    def _look_ahead(self) -> None:
        """Fold what other processes appended to a log that one process at a time writes, before taking its
        write lock (which then holds the others out only while the few events since are folded)."""
        if self._batch is None:
            end = self.log.last_seq()
            if end != self.last_seq:
                self._catch_up(end)

    def _catch_up(self, end: int) -> None:
        """Fold what other processes appended up to seq ``end``; a failure leaves the state stale."""
        known = self.last_seq
        if end < known:  # events this engine saw are gone: start again from the log as it is
            self._stale = True
            return
        if not self._apart:
            self._name_inputs_apart()
        theirs = self._take_in_others(known, end)
        if theirs:
            self.last_seq, self._last_event = end, (theirs[-1][1], theirs[-1][5])
            self._inputs += sum(row[6] is None for row in theirs)

    def _abandon(self, error: BaseException) -> None:
        """Drop what the current batch holds (if any) and reset state to the log's: now, or at the next
        call when the server cannot be reached."""
        if self._batch is not None:
            self._batch.error = error
            self._forget(self._batch)
        if isinstance(error, CommitUncertain | GroupLost):
            self._retire_input_ids()  # handed out (by the error, or by the calls that returned), in the log or not
        self.keys.reload()
        self._stale = True
        if not isinstance(error, StorageUnavailable | CommitUncertain):
            with suppress(StorageError):
                self.recover()

    def _forget(self, batch: _Batch) -> None:
        """Drop an abandoned batch's events; its ids were handed out, so later inputs take new ones."""
        if batch.envelopes:
            self._retire_input_ids()
        batch.envelopes.clear()
        batch.by_id.clear()

    def _take_in_others(self, known: int, end: int) -> list[Row] | None:
        """Fold into the handlers and the event-time bound what other processes appended after seq ``known``
        up to ``end``, and drop the keys read so far if one of them forgot a subject; returns their rows.
        Never raises: a failed read, or a log whose event at ``known`` is not the one this engine folded
        there (by id and recording time: the log lost events it had folded, and others appended since; ids
        alone may agree, as an engine numbers its inputs by their count), leaves the state stale,
        rebuilt at the next call, and returns None."""
        for slot in self.slots:
            slot.position = known
        try:
            theirs = list(self.log.rows(max(known, 1), end))
            if known:
                if not theirs or (theirs[0][1], theirs[0][5]) != self._last_event:
                    self._stale = True
                    return None
                theirs = theirs[1:]
            self.time_bound.advance((row[3], row[4]) for row in theirs)
            if any(row[2] == FORGOTTEN_SUBJECT for row in theirs):
                self.keys.reload()  # its key is gone: this engine must not seal or open with it any more
            fold_history(self.log, self.slots, self.keys, end, None, theirs)
        except Exception as exc:
            self._catch_up_error = exc
            self._stale = True  # start again from the log, which holds ours and theirs
            return None
        return theirs

    # --- batches ----------------------------------------------------------------------------------------

    def _own_batch(self) -> _Batch | None:
        """The open batch if this thread opened it (other threads neither see nor join it)."""
        batch = self._batch
        return batch if batch is not None and batch.owner == threading.get_ident() else None

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hold every commit of the block back and write them in one transaction when it ends (see
        :meth:`rtopt.Engine.batch`)."""
        with self.lock:
            if self._batch is not None:
                self.check_writable()
                yield
                return
            self.check_writable()
            self.commit_queue()
            self.recover()
            self._look_ahead()  # the block's calls are made on the log as it is now
            self.recover()
            batch = self._batch = _Batch()
            try:
                yield
                if batch.error is not None:
                    raise RtoptError(f"the batch was abandoned after an error: {batch.error}") from batch.error
                self._batch = None
                if batch.envelopes:
                    self.log.append(self._stored_rows(batch.envelopes))
            except BaseException:
                self._batch = None
                if batch.envelopes:
                    self._forget(batch)
                    self.rebuild()
                raise
            self.counts["published"] += len(batch.envelopes) - batch.derived
            self.counts["derived"] += batch.derived
            self._count_rejected_feedback(batch.envelopes)
            if batch.envelopes:
                self._dispatch(batch.envelopes)
            self.commit_queue()

    def recorded(self, event_id: str) -> tuple[str, Any] | None:
        """The type tag and payload of the committed event ``event_id`` (in the log or the open batch)."""
        batch = self._own_batch()
        if batch is not None and event_id in batch.by_id:
            envelope = batch.by_id[event_id]
            return envelope.type, envelope.payload
        recent = self._recent.get(event_id)
        if recent is not None:
            return recent.type, recent.payload
        row = self.log.get(event_id)
        return None if row is None else (row[2], decode_payload(row[2], row[9], row[8]))

    def _remember(self, inputs: list[Envelope[Any]]) -> None:
        """Keep ``inputs``, committed, among the last :data:`RECENT_INPUTS` that :meth:`recorded` finds."""
        recent = self._recent
        recent.update((envelope.id, envelope) for envelope in inputs)
        while len(recent) > RECENT_INPUTS:
            del recent[next(iter(recent))]

    def recorded_definition(self, draft: Draft) -> Envelope[Any] | None:
        """The recorded definition of the target ``draft`` defines, if it defines one and the same way."""
        definition = self.commands.definition(draft.event)
        if definition is None or draft.stream is None:
            return None
        for row in self.log.rows(types=[draft.event.tag()], stream=draft.stream):
            recorded = envelope_from_row(row, self.keys)
            if self.commands.definition(recorded.payload) == definition:
                same = msgspec.msgpack.encode(recorded.payload) == msgspec.msgpack.encode(draft.event)
                return recorded if same else None
        return None

    def recorded_answer(self, command: Command[Any], answer_id: str) -> tuple[str, Any]:
        """``answer_id`` and the committed event it names, an event of an answer to ``command``; another id is
        counted and refused."""
        self.check_writable()
        noun = command.noun
        answer_id = self.key(f"{noun}_id", answer_id, optional=False, reason=f"unknown {noun}")
        recorded = self.recorded(answer_id)
        if recorded is None or recorded[0] != command.makes.tag():
            problem = f"{noun}_id = {answer_id!r}: no such {noun} in the log"
            self.refuse(InvalidEvent(problem, field=f"{noun}_id", value=answer_id), f"unknown {noun}")
        return answer_id, recorded[1]

    # --- screening --------------------------------------------------------------------------------------

    def _screen(self, tickets: list[_Ticket]) -> list[_Ticket]:
        """Fail the tickets holding an input the engine must refuse; return the others.

        Refused: an id already in the log or earlier in the group; where handlers answer commands, a
        definition that the command's definition would refuse and an answer of a way they run (those are
        made by the command, so that replay can re-make them); what a handler's ``screen`` refuses.
        """
        given = [draft.id for ticket in tickets for draft in ticket.drafts if draft.id is not None]
        taken = self.log.existing_ids(given) if given else set()
        if self._batch is not None:
            taken |= {event_id for event_id in given if event_id in self._batch.by_id}
        defined: set[tuple[str, str]] = set()
        accepted = []
        numbered = self._inputs  # the input number of the last draft accepted so far
        for ticket in tickets:
            if ticket.done:
                continue
            ids: set[str] = set()
            definitions: set[tuple[str, str]] = set()
            try:
                for number, draft in enumerate(ticket.drafts, start=numbered + 1):
                    self._screen_draft(draft, (taken, ids), (defined, definitions), number)
                    if draft.id is not None:
                        ids.add(draft.id)
                    definition = self.commands.definition(draft.event)
                    if definition is not None:
                        definitions.add(definition)
            except InvalidEvent as exc:
                ticket.error, ticket.done = exc, True
                continue
            taken |= ids
            defined |= definitions
            accepted.append(ticket)
            numbered += len(ticket.drafts)
        return accepted

    def _screen_draft(
        self,
        draft: Draft,
        taken: tuple[set[str], set[str]],
        defined: tuple[set[tuple[str, str]], set[tuple[str, str]]],
        number: int,
    ) -> None:
        """Refuse (and count) ``draft``, to be the ``number``-th input, if the engine must not record it."""
        event = draft.event
        if draft.id is not None and any(draft.id in ids for ids in taken):
            self.rejected["duplicate id"] += 1
            raise InvalidEvent(
                f"id = {draft.id!r}: an event with this id is already in the log", field="id", value=draft.id
            )
        if draft.id is not None and self._generates_later(draft.id, number):
            self.rejected["reserved id"] += 1
            raise InvalidEvent(
                f"id = {draft.id!r}: the engine gives this id to a later input of its own; give ids of another form"
                " (a UUID4, or a name of your own)",
                field="id",
                value=draft.id,
            )
        problem = self.commands.screen(event, defined)
        if problem is not None:
            self.refuse(problem)
        tag = event.tag()
        for slot in self.slots:
            if tag in slot.accepted:
                try:
                    slot.handler.screen(slot.state, event)
                except InvalidEvent:
                    self.rejected["invalid command"] += 1
                    raise

"""The Engine: the log, the bus and the handler chains behind one API.

Write path: callers hand events to the engine; whichever thread takes the write lock first commits every
event waiting at that moment (group commit). Before the commit, the batch is folded through the handler
chains in seq order and the events they derive are appended after it, in the same transaction, so an
input and everything it causes become durable together. Only then do subscribers see the events, in seq
order. Replay folds the same events through the same code, which is why it reproduces the same state.
"""

from __future__ import annotations

import itertools
import math
import numbers
import secrets
import threading
import time as wall_clock
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager, nullcontext, suppress
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import msgspec
import reactivex
from reactivex.abc import DisposableBase

from rtopt.arguments import invalid, one_of
from rtopt.bus import Bus
from rtopt.copying import copy_rows, copying, refuse_non_empty
from rtopt.errors import (
    CommitUncertain,
    InvalidEvent,
    InvalidLog,
    OthersAppended,
    ReadOnlyLog,
    RtoptError,
    StorageError,
    StorageUnavailable,
    UnreadableSchemaVersion,
    short_repr,
)
from rtopt.events import (
    HANDLER_ENTRY_POINTS,
    ClockTicked,
    Decision,
    Dimension,
    Envelope,
    Event,
    ExperimentDefined,
    Feedback,
    FeedbackRejected,
    Observed,
    StudyDefined,
    SubjectForgotten,
    Suggested,
    decode_payload,
    encode_payload,
    unvalidated,
    validate,
)
from rtopt.handler import Chains, Context, Decider, Handler, HandlerSlot, Request, SlotOf, Suggester
from rtopt.ids import ordered_id, prefix_of
from rtopt.privacy import Keyring, Privacy, copy_keys, is_pseudonym
from rtopt.storage.factory import open_log
from rtopt.storage.interface import COLUMNS, EventLog, Row
from rtopt.watermark import TimeBound

DEFAULT_LOG = Path("event_log") / "rtopt.sqlite"
REPLAYED_FROM = "replayed_from"  # meta key of a what-if log: the log whose inputs it replayed
FOLLOWED = "followed"  # meta key of a log whose derived events followers appended, one input at a time
REJECTED_FEEDBACK = FeedbackRejected.tag()
FORGOTTEN_SUBJECT = SubjectForgotten.tag()
HANDLERS = "handlers"  # meta key: handler name -> fingerprint of the configuration that last wrote the log
Progress = Callable[[int, int], None]
"""Called with (events done, events in all) while long work runs."""


class ConfigurationChanged(UserWarning):
    """A handler opened a log with another configuration than the one that last wrote it."""


class Draft(msgspec.Struct, frozen=True):
    """An event on its way into the log, with the envelope fields its publisher chose."""

    event: Event
    stream: str | None = None
    time: float | None = None
    id: str | None = None
    correlation_id: str | None = None


Positive = Annotated[int, msgspec.Meta(ge=1)]
Checked = TypeVar("Checked", bound=msgspec.Struct)


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Bounds on what one call may write; anything beyond them is refused (``InvalidEvent``), counted in
    ``stats().rejected`` and never folded or written.

    ``max_event_bytes`` bounds an input event's payload as stored (msgpack-encoded), ``max_key_length`` the
    characters of a stream, an id or a correlation id, and ``max_batch`` the events of one
    ``publish_many``, the suggestions of one ``suggest`` and the slots of one ``decide``.

    >>> from rtopt import Feedback
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


class Difference(msgspec.Struct, frozen=True):
    """The first place where a re-derivation disagrees with the recorded log."""

    seq: int
    field: str
    recorded: Any
    rederived: Any


class VerifyReport(msgspec.Struct, frozen=True):
    """Outcome of :meth:`Engine.verify`: how many events were checked and the first difference, if any."""

    events: int
    derived: int
    decisions: int
    difference: Difference | None
    notes: list[str] = []
    suggestions: int = 0

    @property
    def ok(self) -> bool:
        """True when everything re-derived matched the log."""
        return self.difference is None


class Rebuilt(msgspec.Struct, frozen=True):
    """How an engine's state was rebuilt when it opened: up to ``position``, starting from the
    ``snapshots`` (handler -> seq) it found, folding ``folded`` events of the log in ``seconds``."""

    position: int
    snapshots: dict[str, int]
    folded: int
    seconds: float


class _Ticket:
    __slots__ = ("done", "drafts", "envelopes", "error")

    def __init__(self, drafts: list[Draft]) -> None:
        self.drafts = drafts
        self.envelopes: list[Envelope[Any]] = []
        self.error: BaseException | None = None
        self.done = False


class _Batch:
    """What an ``Engine.batch`` block has committed so far, waiting to be written when the block ends."""

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


def default_handlers() -> list[Handler[Any]]:
    """One instance of every handler that installed packages declare under ``rtopt.handlers``."""
    found = sorted(entry_points(group=HANDLER_ENTRY_POINTS), key=lambda ep: ep.name)
    return [ep.load()() for ep in found]


def envelope_from_row(row: Row, keys: Keyring | None = None) -> Envelope[Any]:
    """Decode a stored row into its envelope, opening its sealed values with ``keys``."""
    seq, event_id, tag, stream, time, recorded_at, causation_id, correlation_id, version, payload = row
    try:
        event = decode_payload(tag, payload, version) if keys is None else keys.decode(tag, payload, version)
    except msgspec.DecodeError as exc:
        raise InvalidLog(f"seq {seq}: its {tag} payload cannot be decoded ({exc}): the log is damaged") from None
    except UnreadableSchemaVersion as exc:
        raise UnreadableSchemaVersion(f"seq {seq}: {exc}") from None
    return Envelope(
        seq,
        event_id,
        tag,
        stream,
        time,
        recorded_at,
        causation_id,
        correlation_id,
        version,
        event,
    )


def envelope_row(envelope: Envelope[Any], keys: Keyring | None = None) -> Row:
    """The stored row of an envelope, its personal values sealed with ``keys``."""
    return (
        envelope.seq,
        envelope.id,
        envelope.type,
        envelope.stream,
        envelope.time,
        envelope.recorded_at,
        envelope.causation_id,
        envelope.correlation_id,
        envelope.schema_version,
        encode_payload(envelope.payload) if keys is None else keys.encode(envelope.payload),
    )


def _tags(types: Iterable[type[Event] | str] | None) -> list[str] | None:
    if types is None:
        return None
    return [t if isinstance(t, str) else t.tag() for t in types]


class Engine:
    """An event-sourced engine over one log.

    >>> from rtopt import Engine, Feedback
    >>> with Engine.open(":memory:", seed=7) as engine:
    ...     _ = engine.define_experiment("greeting", arms=["v1", "v2"], policy="thompson")
    ...     decision = engine.decide("greeting", time=1.0)
    ...     _ = engine.feedback(decision.id, success=True, quality_score=0.9, response_time_ms=300.0, time=2.0)
    ...     engine.state("bandit", "greeting").arms[decision.arm].pulls
    1
    """

    def __init__(
        self,
        log: EventLog,
        handlers: Sequence[Handler[Any]],
        *,
        until_seq: int | None = None,
        progress: Progress | None = None,
        limits: Limits | None = None,
        time_bound: TimeBound | None = None,
        privacy: Privacy | bool = True,
    ) -> None:
        self._log = log
        self._keys = Keyring(log, Privacy.of(privacy))
        self._time_bound = TimeBound() if time_bound is None else time_bound
        self._progress = progress
        self.limits = Limits() if limits is None else limits
        self.seed = int(log.meta()["seed"])
        # on a log other processes append to, each engine names its inputs apart from theirs
        writer = f"{secrets.token_hex(8)}/" if log.shared else ""
        self._input_prefix = f"rtopt/input/{self.seed}/{writer}"
        self._input_namespace = self._input_prefix.encode()
        self._abandoned_batches = 0
        self._bus = Bus()
        self._chains = Chains()
        self._slots: list[HandlerSlot] = []
        self._deciders: list[SlotOf[Decider]] = []
        self._suggesters: list[SlotOf[Suggester]] = []
        self._write_lock = threading.RLock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Ticket] = []
        self._to_dispatch: deque[list[Envelope[Any]]] = deque()
        self._dispatching = False
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._until_seq = until_seq
        self._last_seq = 0
        self._inputs = 0
        self._closed = False
        self._batch: _Batch | None = None
        self._stale = False  # a failed write left handler state ahead of the log: rebuild before using it
        for handler in handlers:
            self._add_slot(handler)
        self._rebuild()
        self._note_handlers()

    # --- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | Path | None = None,
        *,
        seed: int | None = None,
        handlers: Sequence[Handler[Any]] | None = None,
        read_only: bool = False,
        durability: str = "process",
        until_seq: int | None = None,
        progress: Progress | None = None,
        limits: Limits | None = None,
        max_time_ahead_s: float | None = 86_400.0,
        future_time: str = "reject",
        privacy: Privacy | bool = True,
        file_mode: int = 0o600,
    ) -> Engine:
        """Open the log at ``location``: an SQLite file (default ``event_log/rtopt.sqlite``; ``":memory:"``
        works) or a PostgreSQL database given as a ``postgresql://user@host:port/db`` URL, which several
        processes may publish to at once.

        ``seed`` is recorded when the log is created (a random one if None) and must match afterwards.
        ``handlers`` defaults to every handler installed packages declare. ``durability`` is
        ``"process"`` (a committed event survives the process being killed) or ``"power"`` (it also
        survives an OS crash or power loss: fsync on every commit); a PostgreSQL commit is as durable as
        its server is configured to be. A read-only engine rebuilds state
        up to ``until_seq`` and refuses writes. ``limits`` bounds what one call may write (:class:`Limits`).

        An input's event time may run at most ``max_time_ahead_s`` seconds (None: any) ahead of the later of
        the wall clock and its stream's latest event time (the log's for a new stream; an empty log bounds
        nothing); ``future_time`` says what becomes of one beyond: ``"reject"`` (InvalidEvent, counted) or
        ``"clamp"`` (recorded at that latest event time, counted in ``stats().clamped_times``).
        ``privacy`` says which personal values are stored sealed (a :class:`~rtopt.privacy.Privacy`; True: user
        and session ids and decision units; False: none).
        A new SQLite log's files get the permissions ``file_mode`` (owner only by default: events may hold
        user ids and session data).
        """
        one_of("durability", durability, ("process", "power"))
        if limits is not None and not isinstance(limits, Limits):
            raise invalid("limits", limits, "must be an rtopt.Limits")
        limits = None if limits is None else validate(limits)
        time_bound = TimeBound(max_time_ahead_s, future_time)
        log = open_log(
            DEFAULT_LOG if location is None else location,
            read_only=read_only,
            seed=seed,
            synchronous="FULL" if durability == "power" else "NORMAL",
            file_mode=file_mode,
        )
        recorded = int(log.meta()["seed"])
        if seed is not None and seed != recorded:
            log.close()
            raise RtoptError(f"{log.location} was created with seed {recorded}; open it with seed={recorded} or None")
        if until_seq is not None and not read_only:
            log.close()
            raise RtoptError("until_seq needs read_only=True: a writable engine must hold the whole log's state")
        chains = default_handlers() if handlers is None else handlers
        try:
            return cls(
                log,
                chains,
                until_seq=until_seq,
                progress=progress,
                limits=limits,
                time_bound=time_bound,
                privacy=privacy,
            )
        except BaseException:
            log.close()
            raise

    def close(self) -> None:
        """Commit what is waiting, complete every observer and release the log."""
        with self._write_lock:
            if self._closed:
                return
            self._refuse_in_batch("close the engine")
            if not self._log.read_only:
                self._commit_queue()
            self._bus.complete()
            self._log.close()
            self._closed = True

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str:
        """Where the log lives."""
        return self._log.location

    @property
    def position(self) -> int:
        """The seq of the last event folded into this engine's state."""
        return self._last_seq

    @property
    def log(self) -> EventLog:
        """The storage behind this engine."""
        return self._log

    # --- handlers and state ----------------------------------------------------------------------

    def _add_slot(self, handler: Handler[Any]) -> HandlerSlot:
        if any(slot.name == handler.name for slot in self._slots):
            raise RtoptError(f"a handler named {handler.name!r} is already registered")
        slot = HandlerSlot(handler, self.seed)
        self._slots.append(slot)
        if isinstance(handler, Decider):
            self._deciders.append(cast(SlotOf[Decider], slot))
        if isinstance(handler, Suggester):
            self._suggesters.append(cast(SlotOf[Suggester], slot))
        self._chains.add(slot)
        return slot

    def register(self, handler: Handler[Any]) -> None:
        """Add a handler chain; it first folds the log's history, then follows live events."""
        with self._write_lock:
            self._refuse_in_batch("register a handler")
            self._commit_queue()
            slot = self._add_slot(handler)
            self._fold_history([slot], self._last_seq)

    def _note_handlers(self) -> None:
        """Warn when a handler runs with another configuration than the one that last wrote the log."""
        try:
            recorded = msgspec.json.decode(self._log.meta().get(HANDLERS, "{}"), type=dict[str, str])
        except (msgspec.DecodeError, msgspec.ValidationError):
            recorded = {}  # unreadable: every handler's configuration counts as the first one recorded
        current = {slot.name: slot.handler.fingerprint() for slot in self._slots}
        changed = sorted(
            name for name, fingerprint in current.items() if recorded.get(name, fingerprint) != fingerprint
        )
        if changed:
            warnings.warn(
                f"{self._log.location}: {changed} run with another configuration than the one that last wrote this "
                "log; their state is rebuilt with the current one and can differ from what was derived",
                ConfigurationChanged,
                stacklevel=4,
            )
        merged = {**recorded, **current}
        if not self._log.read_only and merged != recorded:
            self._log.set_meta(HANDLERS, msgspec.json.encode(merged).decode())

    def handlers(self) -> list[str]:
        """Names of the registered handlers, in the order they see events."""
        return [slot.name for slot in self._slots]

    def _slot(self, name: str) -> HandlerSlot:
        for slot in self._slots:
            if slot.name == name:
                return slot
        raise KeyError(f"no handler named {name!r}; registered: {self.handlers()}")

    def state(self, handler: str, key: str | None = None) -> Any:
        """A detached copy of ``handler``'s state, or of the part of it for ``key``."""
        with self._write_lock:
            slot = self._slot(handler)
            self._recover()
            return slot.handler.view(slot.state, key)

    def snapshot(self) -> int:
        """Store every handler's state at the current position; returns that seq."""
        with self._write_lock:
            self._refuse_in_batch("take a snapshot")
            self._commit_queue()
            self._recover()
            for slot in self._slots:
                blob = msgspec.msgpack.encode(slot.state)
                self._log.save_snapshot(slot.name, slot.handler.fingerprint(), self._last_seq, blob)
            return self._last_seq

    def _rebuild(self) -> None:
        """Reset handler state to the newest usable snapshot and fold the rest of the log."""
        last = self._log.last_seq()
        until = self._until_seq if self._until_seq is not None else last
        if not 0 <= until <= last:
            raise RtoptError(f"until_seq = {until}: the log at {self._log.location} holds seqs 1..{last}")
        snapshots = {}
        for slot in self._slots:
            slot.state = slot.handler.initial_state()
            slot.position = 0
            found = self._log.load_snapshot(slot.name, slot.handler.fingerprint(), until)
            if found is not None:
                try:
                    slot.state = msgspec.msgpack.decode(found[1], type=slot.handler.state_type)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    warnings.warn(
                        f"{self._log.location}: the {slot.name} snapshot at seq {found[0]} does not decode ({exc});"
                        " its state is folded from the start of the log",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    continue
                slot.position = found[0]
                snapshots[slot.name] = slot.position
        started = wall_clock.perf_counter()
        folded = self._fold_history(self._slots, until)
        self.rebuilt = Rebuilt(until, snapshots, folded, wall_clock.perf_counter() - started)
        self._last_seq = until
        self._inputs = self._log.count_inputs(until)
        if not self._log.read_only:
            self._time_bound.reset(self._log.latest_times())

    def _fold_history(self, slots: Sequence[HandlerSlot], until: int) -> int:
        """Fold the log up to ``until`` into ``slots``, each from its own position; returns the rows read."""
        if not slots:
            return 0
        folded = 0
        start = min(slot.position for slot in slots) + 1
        tags = sorted(set().union(*(slot.accepted for slot in slots)))
        progress = self._progress
        batch: list[Envelope[Any]] = []
        for row in self._log.rows(start=start, until=until, types=tags):
            folded += 1
            batch.append(envelope_from_row(row, self._keys))
            if len(batch) == 2000:
                self._fold_batch_into(slots, batch)
                if progress is not None:
                    progress(batch[-1].seq, until)
                batch = []
        if batch:
            self._fold_batch_into(slots, batch)
        if progress is not None:
            progress(until, until)
        for slot in slots:
            slot.position = until
        return folded

    @staticmethod
    def _fold_batch_into(slots: Sequence[HandlerSlot], batch: list[Envelope[Any]]) -> None:
        for slot in slots:
            position = slot.position
            if batch[0].seq > position:
                slot.fold_batch(batch, keep=False)
            else:
                slot.fold_batch([env for env in batch if env.seq > position], keep=False)

    # --- publishing ------------------------------------------------------------------------------

    def publish(
        self,
        event: Event,
        stream: str | None = None,
        *,
        time: float | None = None,
        id: str | None = None,
        correlation_id: str | None = None,
    ) -> Envelope[Any]:
        """Append ``event`` and return its envelope once it is committed and delivered."""
        return self._submit([self._draft(Draft(event, stream, time, id, correlation_id))])[0]

    def publish_many(
        self, events: Iterable[Event | Draft], stream: str | None = None, *, time: float | None = None
    ) -> list[Envelope[Any]]:
        """Append several events in one transaction; ``stream`` and ``time`` apply where an item sets none.

        At most ``limits.max_batch`` events a call."""
        most = self.limits.max_batch
        items = list(itertools.islice(self._collection("events", events, "invalid batch"), most + 1))
        if len(items) > most:
            count = len(events) if isinstance(events, Sized) else len(items)
            self._refuse(
                InvalidEvent(
                    f"events: {count:,}{'' if isinstance(events, Sized) else ' or more'} in one call, over the "
                    f"limit of {most:,} (Limits.max_batch)",
                    field="events",
                    value=count,
                ),
                "invalid batch",
            )
        drafts = [self._draft(item if isinstance(item, Draft) else Draft(item), stream, time) for item in items]
        return self._submit(drafts) if drafts else []

    def _draft(self, draft: Draft, stream: str | None = None, time: float | None = None) -> Draft:
        """Check a draft and fill in its stream and event time."""
        event = draft.event
        if not isinstance(event, Event):
            self._rejected["unregistered type"] += 1
            raise InvalidEvent(
                f"cannot publish a {type(event).__name__}: not a registered rtopt event type",
                field="type",
                value=type(event).__name__,
            )
        given = self._key("stream", draft.stream) or self._key("stream", stream)
        event_id = self._key("id", draft.id)
        correlation_id = self._key("correlation_id", draft.correlation_id)
        event = self._accept(event, "invalid event")
        stream = given or event.default_stream()
        if not stream:
            self._rejected["no stream"] += 1
            raise InvalidEvent(f"{type(event).__name__} needs a stream to be published to", field="stream")
        when = draft.time if draft.time is not None else time
        return Draft(event, self._key("stream", stream), self._event_time(when, stream), event_id, correlation_id)

    def _accept(self, event: Checked, reason: str) -> Checked:
        """``event`` as it will be stored (see :func:`rtopt.events.validate`), within the payload limit; a
        refusal is counted under ``reason``."""
        try:
            return validate(event, self.limits.max_event_bytes)
        except InvalidEvent:
            self._rejected[reason] += 1
            raise

    def _key(self, field: str, value: object, *, optional: bool = True, reason: str = "invalid envelope") -> Any:
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
        self._rejected[reason] += 1
        raise InvalidEvent(f"{field} = {short_repr(value)}: {problem}", field=field, value=value)

    def _count(self, field: str, value: Any) -> int:
        """``value`` as an int from 1 to ``limits.max_batch`` (a numpy integer too); otherwise count a refused
        command and raise InvalidEvent."""
        most = self.limits.max_batch
        whole = type(value) is int or (isinstance(value, numbers.Integral) and not isinstance(value, bool))
        if whole and 1 <= value <= most:
            return int(value)
        self._rejected["invalid command"] += 1
        raise InvalidEvent(
            f"{field} = {short_repr(value)}: must be a whole number from 1 to {most:,} (Limits.max_batch)",
            field=field,
            value=value,
        )

    def _collection(self, field: str, value: Any, reason: str = "invalid command") -> Iterable[Any]:
        """``value`` if it holds several items (a list, a tuple ...); a str, bytes or a single object is
        refused (counted under ``reason``), rather than taken apart."""
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            self._refuse(
                InvalidEvent(
                    f"{field} = {short_repr(value)}: must be a list, not a {type(value).__name__}",
                    field=field,
                    value=value,
                ),
                reason,
            )
        return value

    def _event_time(self, when: float | None, stream: str) -> float:
        """The event time to record for an input on ``stream`` given at ``when`` (now if None)."""
        if when is None:
            return wall_clock.time()
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
            self._rejected["bad time"] += 1
            raise InvalidEvent(
                f"time = {when!r}: must be a finite number of seconds since the epoch", field="time", value=when
            )
        try:
            return self._time_bound.admit(stream, float(when))
        except InvalidEvent:
            self._rejected["time too far ahead"] += 1
            raise

    def _refuse_in_batch(self, what: str) -> None:
        if self._batch is not None:
            raise RtoptError(f"cannot {what} inside engine.batch(): end the batch first")

    def _check_writable(self) -> None:
        batch = self._own_batch()
        if batch is not None and batch.error is not None:
            raise RtoptError(f"the batch was abandoned after an error: {batch.error}") from batch.error
        if self._closed:
            raise RtoptError(f"the engine on {self._log.location} is closed")
        if self._log.read_only:
            raise ReadOnlyLog(f"{self._log.location} is open read-only")

    def _submit(self, drafts: list[Draft]) -> list[Envelope[Any]]:
        self._check_writable()
        if self._own_batch() is not None:
            return self._commit_now(drafts)
        ticket = _Ticket(drafts)
        with self._queue_lock:
            self._queue.append(ticket)
        with self._write_lock:
            if not ticket.done:
                self._commit_queue()
        if ticket.error is not None:
            raise ticket.error
        return ticket.envelopes

    def _commit_now(self, drafts: list[Draft], *, checked: bool = False) -> list[Envelope[Any]]:
        """Commit ``drafts`` as a group of their own; the caller holds the write lock."""
        self._check_writable()
        ticket = _Ticket(drafts)
        self._commit([ticket], checked=checked)
        if ticket.error is not None:
            raise ticket.error
        return ticket.envelopes

    def _commit_queue(self) -> None:
        if self._batch is not None:  # other threads' events wait until the batch is written
            return
        with self._queue_lock:
            tickets, self._queue = self._queue, []
        if tickets:
            self._commit(tickets)

    def _commit(self, tickets: list[_Ticket], *, checked: bool = False) -> None:
        """Fold, append and deliver every event of ``tickets`` and what they derive, in one transaction.

        ``checked`` tickets come from commands or a replayed log and skip the screening of inputs.
        Whatever happens, every ticket ends done, with its envelopes or with the error that stopped it.
        """
        try:
            self._recover()
            accepted = tickets if checked else self._screen(tickets)
            recorded_at = wall_clock.time()
            seq, inputs = self._last_seq, self._inputs
            batch: list[Envelope[Any]] = []
            for ticket in accepted:
                for draft in ticket.drafts:
                    seq += 1
                    inputs += 1
                    event = draft.event
                    assert draft.stream is not None and draft.time is not None  # _draft or the command filled them
                    envelope = Envelope(
                        seq,
                        draft.id or self._input_id(inputs),
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
            if not batch:
                return
            # keys of new subjects are stored (and committed) before the write transaction holds other writers out
            self._keys.prepare(envelope.payload for envelope in batch)
            try:
                with self._log.appending(self._last_seq) if self._batch is None else nullcontext():
                    written = self._cascade(batch, recorded_at)
                    if self._batch is None:
                        guard = {envelope.stream for envelope in written} if self._slots and self._log.shared else ()
                        first = self._log.append(self._stored_rows(written), guard)
                    else:
                        self._batch.add(written, len(written) - len(batch))
                        first = written[0].seq
            except OthersAppended as refusal:  # raised before anything was folded
                self._catch_up(refusal.end)
                raise
            except BaseException as exc:
                self._abandon(exc)  # the handlers folded events that are not in the log
                raise
            if first != written[0].seq:  # durable already: from here on no caller may be told it failed
                written = self._follow_others(written, first, accepted)
            self._last_seq, self._inputs = written[-1].seq, inputs
            self._time_bound.advance((envelope.stream, envelope.time) for envelope in batch)
            if self._batch is None:
                self._counts["published"] += len(batch)
                self._counts["derived"] += len(written) - len(batch)
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

    def _count_rejected_feedback(self, envelopes: list[Envelope[Any]]) -> None:
        """Count, by reason, the feedback that handlers rejected (their derived FeedbackRejected events)."""
        for envelope in envelopes:
            if envelope.type == REJECTED_FEEDBACK and envelope.causation_id is not None:
                self._rejected[f"feedback rejected: {envelope.payload.reason}"] += 1

    def _stored_rows(self, envelopes: list[Envelope[Any]]) -> list[Row]:
        """The rows of ``envelopes``, personal values sealed (new subjects' keys are stored together first)."""
        self._keys.prepare(envelope.payload for envelope in envelopes)
        return [envelope_row(envelope, self._keys) for envelope in envelopes]

    def _catch_up(self, end: int) -> None:
        """Fold what another process appended up to seq ``end`` (so that the next call can go on)."""
        known = self._last_seq
        if end < known:  # events this engine saw are gone: start again from the log as it is
            self._stale = True
            return
        if self._take_in_others(known, end):
            try:
                self._last_seq, self._inputs = end, self._inputs + self._log.count_inputs(end, after=known)
            except Exception:
                self._stale = True

    def _abandon(self, error: BaseException) -> None:
        """Drop what the current batch holds (if any) and reset state to the log's: now, or at the next
        call when the server cannot be reached."""
        if self._batch is not None:
            self._batch.error = error
            self._forget(self._batch)
        if isinstance(error, CommitUncertain):
            self._retire_input_ids()  # the error hands them out, committed or not
        self._keys.reload()
        self._stale = True
        if not isinstance(error, StorageUnavailable | CommitUncertain):
            with suppress(StorageError):
                self._recover()

    def _recover(self) -> None:
        """Rebuild state from the log if a failed write left it stale; raises StorageUnavailable (staying
        stale) while the server cannot be reached."""
        if self._stale:
            self._rebuild()
            self._stale = False

    def _retire_input_ids(self) -> None:
        """Number later inputs in a new namespace: ids handed out for events that may not be in the log
        must not name other events."""
        self._abandoned_batches += 1
        self._input_namespace = f"{self._input_prefix}after-abandoned-{self._abandoned_batches}/".encode()

    def _forget(self, batch: _Batch) -> None:
        """Drop an abandoned batch's events; its ids were handed out, so later inputs take new ones."""
        if batch.envelopes:
            self._retire_input_ids()
        batch.envelopes.clear()
        batch.by_id.clear()

    def _own_batch(self) -> _Batch | None:
        """The open batch if this thread opened it (other threads neither see nor join it)."""
        batch = self._batch
        return batch if batch is not None and batch.owner == threading.get_ident() else None

    @contextmanager
    def batch(self) -> Iterator[Engine]:
        """Commit everything published, decided and fed back inside the block as one transaction.

        Inside the block each call sees the effect of the ones before it (feedback may follow its decision
        at once), but nothing is durable or delivered to subscribers until the block ends. If the block
        raises, or a write fails, none of it is written and the engine's state is the log's again. Other
        threads' calls wait until the block ends; a batch inside a batch joins it. A log that several
        processes append to (PostgreSQL) takes no batches.

        >>> with Engine.open(":memory:", seed=7) as engine:
        ...     _ = engine.define_experiment("greeting", arms=["v1", "v2"], policy="ucb1", time=0.0)
        ...     with engine.batch():
        ...         decisions = [engine.decide("greeting", time=1.0 + i) for i in range(4)]
        ...         for d in decisions:
        ...             _ = engine.feedback(d.id, success=True, quality_score=1.0, response_time_ms=9.0, time=5.0)
        ...     engine.stats().published
        9
        """
        with self._write_lock:
            if self._batch is not None:
                self._check_writable()
                yield self
                return
            self._check_writable()
            if self._log.shared:
                raise RtoptError(
                    f"engine.batch() needs a log that this engine alone appends to; {self._log.location} is shared"
                )
            self._commit_queue()
            batch = self._batch = _Batch()
            try:
                yield self
                if batch.error is not None:
                    raise RtoptError(f"the batch was abandoned after an error: {batch.error}") from batch.error
                self._batch = None
                if batch.envelopes:
                    self._log.append(self._stored_rows(batch.envelopes))
            except BaseException:
                self._batch = None
                if batch.envelopes:
                    self._forget(batch)
                    self._rebuild()
                raise
            self._counts["published"] += len(batch.envelopes) - batch.derived
            self._counts["derived"] += batch.derived
            self._count_rejected_feedback(batch.envelopes)
            if batch.envelopes:
                self._dispatch(batch.envelopes)
            self._commit_queue()

    def _recorded(self, event_id: str) -> tuple[str, Any] | None:
        """The type tag and payload of the committed event ``event_id`` (in the log or the open batch)."""
        batch = self._own_batch()
        if batch is not None and event_id in batch.by_id:
            envelope = batch.by_id[event_id]
            return envelope.type, envelope.payload
        row = self._log.get(event_id)
        return None if row is None else (row[2], decode_payload(row[2], row[9], row[8]))

    def _follow_others(self, written: list[Envelope[Any]], first: int, tickets: list[_Ticket]) -> list[Envelope[Any]]:
        """Other processes committed events on other streams before ``written``, which the log placed at
        ``first``: renumber ours, then fold theirs (no stream's events change order by it)."""
        shift = first - written[0].seq
        moved = {envelope.id: msgspec.structs.replace(envelope, seq=envelope.seq + shift) for envelope in written}
        for ticket in tickets:
            ticket.envelopes = [moved[envelope.id] for envelope in ticket.envelopes]
        self._take_in_others(self._last_seq, first - 1)
        return [moved[envelope.id] for envelope in written]

    def _take_in_others(self, known: int, end: int) -> bool:
        """Fold into the handlers and the event-time bound what other processes appended after seq ``known``
        up to ``end``, and drop the keys read so far if one of them forgot a subject. Never raises: a failed
        read leaves the state stale, rebuilt at the next call; returns whether it succeeded."""
        for slot in self._slots:
            slot.position = known
        try:
            theirs = [(row[2], row[3], row[4]) for row in self._log.rows(known + 1, end)]
            self._time_bound.advance((stream, time) for _, stream, time in theirs)
            if any(tag == FORGOTTEN_SUBJECT for tag, _, _ in theirs):
                self._keys.reload()  # its key is gone: this engine must not seal or open with it any more
            self._fold_history(self._slots, end)
        except Exception:
            self._stale = True  # start again from the log, which holds ours and theirs
            return False
        return True

    def _screen(self, tickets: list[_Ticket]) -> list[_Ticket]:
        """Fail the tickets holding an input the engine must refuse; return the others.

        Refused: an id already in the log or earlier in the group; where handlers run experiments, an
        experiment definition that ``define_experiment`` would refuse and a Decision of a policy they run
        (those are made by ``decide``, so that replay can re-make them).
        """
        given = [draft.id for ticket in tickets for draft in ticket.drafts if draft.id is not None]
        taken = self._log.existing_ids(given) if given else set()
        if self._batch is not None:
            taken |= {event_id for event_id in given if event_id in self._batch.by_id}
        defined: set[str] = set()
        accepted = []
        numbered = self._inputs  # the input number of the last draft accepted so far
        for ticket in tickets:
            ids: set[str] = set()
            experiments: set[str] = set()
            try:
                for number, draft in enumerate(ticket.drafts, start=numbered + 1):
                    self._screen_draft(draft, (taken, ids), (defined, experiments), number)
                    if draft.id is not None:
                        ids.add(draft.id)
                    if isinstance(draft.event, ExperimentDefined):
                        experiments.add(draft.event.experiment)
                    elif isinstance(draft.event, StudyDefined):
                        experiments.add(_study_key(draft.event.study))
            except InvalidEvent as exc:
                ticket.error, ticket.done = exc, True
                continue
            taken |= ids
            defined |= experiments
            accepted.append(ticket)
            numbered += len(ticket.drafts)
        return accepted

    def _screen_draft(
        self,
        draft: Draft,
        taken: tuple[set[str], set[str]],
        defined: tuple[set[str], set[str]],
        number: int,
    ) -> None:
        """Refuse (and count) ``draft``, to be the ``number``-th input, if the engine must not record it."""
        event = draft.event
        if draft.id is not None and any(draft.id in ids for ids in taken):
            self._rejected["duplicate id"] += 1
            raise InvalidEvent(
                f"id = {draft.id!r}: an event with this id is already in the log", field="id", value=draft.id
            )
        if draft.id is not None and self._generates_later(draft.id, number):
            self._rejected["reserved id"] += 1
            raise InvalidEvent(
                f"id = {draft.id!r}: the engine gives this id to a later input of its own; give ids of another form"
                " (a UUID4, or a name of your own)",
                field="id",
                value=draft.id,
            )
        if isinstance(event, ExperimentDefined) and self._deciders:
            self._check_definition(event, defined)
        elif isinstance(event, Decision) and self._runs_policy(event.policy):
            self._rejected["invalid command"] += 1
            raise InvalidEvent(
                f"policy = {event.policy!r}: decisions of this policy are made by engine.decide, not published",
                field="policy",
                value=event.policy,
            )
        elif isinstance(event, StudyDefined | Suggested) and self._suggesters:
            self._screen_study_event(event, defined)
        tag = event.tag()
        for slot in self._slots:
            if tag in slot.accepted:
                try:
                    slot.handler.screen(slot.state, event)
                except InvalidEvent:
                    self._rejected["invalid command"] += 1
                    raise

    def _generates_later(self, event_id: str, number: int) -> bool:
        """True if ``event_id``, given to the ``number``-th input, is the id the engine generates for a later one."""
        later = prefix_of(event_id)
        return later > number and self._input_id(later) == event_id

    def _input_id(self, input_number: int) -> str:
        return ordered_id(input_number, self._input_namespace, str(input_number))

    def _cascade(self, batch: list[Envelope[Any]], recorded_at: float) -> list[Envelope[Any]]:
        """``batch`` followed by everything the handlers derive from it."""
        return [*batch, *self._chains.cascade(batch, recorded_at)]

    def _dispatch(self, envelopes: list[Envelope[Any]]) -> None:
        """Deliver committed events; events committed by an observer wait for the current delivery."""
        self._to_dispatch.append(envelopes)
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._to_dispatch:
                self._bus.emit(self._to_dispatch.popleft())
        finally:
            self._dispatching = False

    # --- commands --------------------------------------------------------------------------------

    def _decider_for(self, experiment: str) -> SlotOf[Decider] | None:
        return next((s for s in self._deciders if s.handler.has_experiment(s.state, experiment)), None)

    def _check_definition(self, definition: ExperimentDefined, defined: tuple[set[str], set[str]]) -> None:
        """Raise InvalidEvent (and count it) for a name already taken (in the log or earlier in the group),
        an arm named twice, or a policy no registered handler runs; the handler checks the options."""
        name, arms = definition.experiment, definition.arms
        repeated = sorted({arm for arm in arms if arms.count(arm) > 1})
        problem = None
        if any(name in names for names in defined) or self._decider_for(name) is not None:
            problem = InvalidEvent(f"experiment = {name!r}: already defined", field="experiment", value=name)
        elif repeated:
            problem = InvalidEvent(f"arms = {arms!r}: {repeated} appear more than once", field="arms", value=arms)
        elif not self._runs_policy(definition.policy):
            known = sorted(p for s in self._deciders for p in s.handler.policies)
            problem = _not_run("policy", definition.policy, known)
        self._refuse(problem)

    def _refuse(self, problem: InvalidEvent | None, reason: str = "invalid command") -> None:
        """Count (under ``reason``) and raise ``problem``, a call refused, if there is one."""
        if problem is not None:
            self._rejected[reason] += 1
            raise problem

    def define_experiment(
        self, name: str, arms: Sequence[str], policy: str = "thompson", *, time: float | None = None, **options: Any
    ) -> Envelope[ExperimentDefined]:
        """Set up an experiment over ``arms`` run by ``policy`` (an event); ``options`` tune the policy."""
        arms = list(self._collection("arms", arms))
        try:
            definition = ExperimentDefined(experiment=name, arms=arms, policy=policy, options=options)
        except InvalidEvent:
            self._rejected["invalid command"] += 1
            raise
        with self._write_lock:
            self._commit_queue()
            return self._commit_now([self._draft(Draft(definition, name, time))])[0]

    def decide(
        self,
        experiment: str,
        context: dict[str, float] | None = None,
        available: Sequence[str] | None = None,
        *,
        unit: str | None = None,
        slots: int = 1,
        time: float | None = None,
    ) -> Envelope[Decision]:
        """Choose an arm of ``experiment`` for one request; the Decision is logged before it is returned.

        ``available`` restricts the choice to those arms; ``context`` is the request's feature vector;
        ``unit`` names the user or session the request is for; ``slots`` > 1 asks for a ranked slate.
        """
        slots = self._count("slots", slots)
        experiment = self._key("experiment", experiment, optional=False, reason="invalid command")
        available = None if available is None else list(self._collection("available", available))
        request = Request(context=context, available=available, unit=unit, slots=slots)
        if context is not None or available is not None or unit is not None:  # else nothing is left to check
            request = self._accept(request, "invalid command")
        when = self._event_time(time, experiment)
        with self._write_lock:
            self._commit_queue()
            self._recover()
            slot = self._decider_for(experiment)
            if slot is None:
                self._rejected["unknown experiment"] += 1
                raise InvalidEvent(
                    f"experiment = {experiment!r}: no such experiment", field="experiment", value=experiment
                )
            decision_id = self._input_id(self._inputs + 1)
            try:
                decision = slot.handler.decide(slot.state, experiment, Context(when, decision_id, self.seed), request)
            except InvalidEvent:
                self._rejected["invalid command"] += 1
                raise
            return self._commit_now([Draft(decision, experiment, when, decision_id, decision_id)], checked=True)[0]

    def feedback(
        self,
        decision_id: str,
        /,
        *,
        success: bool,
        quality_score: float,
        response_time_ms: float,
        time: float | None = None,
        **fields: Any,
    ) -> Envelope[Feedback]:
        """Record feedback on the response a decision led to (a Feedback event on the experiment's stream).

        Other :class:`~rtopt.events.Feedback` fields (cost_usd, user_satisfaction, tokens_in ...) are
        keyword arguments; those the decision sets (prompt_id, variant_id, decision_id) are not. An unknown
        decision id is rejected, counted and raised as InvalidEvent.
        """
        decision_id = self._key("decision_id", decision_id, optional=False, reason="unknown decision")
        recorded = self._recorded(decision_id)
        if recorded is None or recorded[0] != Decision.tag():
            self._rejected["unknown decision"] += 1
            raise InvalidEvent(
                f"decision_id = {decision_id!r}: no such decision in the log", field="decision_id", value=decision_id
            )
        decision = recorded[1]
        taken = sorted(fields.keys() & _SET_BY_DECISION)
        if taken:
            name, value = taken[0], fields[taken[0]]
            self._refuse(
                InvalidEvent(f"{name} = {short_repr(value)}: set by the decision", field=name, value=value),
                "invalid feedback",
            )
        try:
            with unvalidated():  # validated once, below, with the payload limit
                event = Feedback(
                    prompt_id=decision.experiment,
                    variant_id=decision.arm,
                    decision_id=decision_id,
                    success=success,
                    quality_score=quality_score,
                    response_time_ms=response_time_ms,
                    **fields,
                )
        except InvalidEvent:
            self._rejected["invalid feedback"] += 1
            raise
        event = self._accept(event, "invalid feedback")
        when = self._event_time(time, decision.experiment)
        return self._submit([Draft(event, decision.experiment, when, None, decision_id)])[0]

    def tick(self, time: float | None = None) -> Envelope[ClockTicked]:
        """Tell the handlers that event time has reached ``time`` (default: now), so that deadlines pass
        even when nothing else happens (call it on a timer in a service; replay sees the same ticks)."""
        return self.publish(ClockTicked(), time=time)

    def forget(self, subject: str, *, time: float | None = None) -> Envelope[SubjectForgotten]:
        """Make every value sealed for ``subject`` (a user id, or a session id with no user) unreadable: its
        key is deleted, with every snapshot, and the state is rebuilt, where its values read as the
        pseudonym ``forgotten:<ref>``. No event is changed; a :class:`~rtopt.events.SubjectForgotten` input
        records the reference. Raises :class:`RtoptError` for a subject with no key (never seen, or
        forgotten already)."""
        with self._write_lock:
            self._refuse_in_batch("forget a subject")
            self._check_writable()
            self._commit_queue()
            ref = self._keys.forget(subject)
            self._rebuild()
            return self._commit_now([self._draft(Draft(SubjectForgotten(ref=ref)), time=time)])[0]

    # --- studies: suggest parameters, observe the objective ---------------------------------------

    def define_study(
        self,
        name: str,
        space: dict[str, Any],
        direction: str = "maximize",
        kernel: str = "matern52",
        acquisition: str = "ei",
        n_initial: int = 10,
        seed: int | None = None,
        *,
        method: str = "gp",
        time: float | None = None,
        **options: Any,
    ) -> Envelope[StudyDefined]:
        """Set up a study of the parameters in ``space`` (an event): name -> ``(low, high)`` for a float
        range, or a :class:`~rtopt.events.Dimension` or its mapping for log-scale, integer and categorical
        parameters. ``options`` tune the ``method``."""
        if not isinstance(space, Mapping):
            self._refuse(
                InvalidEvent(
                    f"space = {short_repr(space)}: must be a mapping of parameter names", field="space", value=space
                )
            )
        try:
            dimensions = {key: Dimension.of(value) for key, value in space.items()}
            definition = StudyDefined(
                study=name,
                space=dimensions,
                direction=cast(Literal["maximize", "minimize"], direction),  # StudyDefined checks the value
                method=method,
                kernel=kernel,
                acquisition=acquisition,
                n_initial=n_initial,
                seed=seed,
                options=options,
            )
        except InvalidEvent:
            self._rejected["invalid command"] += 1
            raise
        with self._write_lock:
            self._commit_queue()
            return self._commit_now([self._draft(Draft(definition, name, time))])[0]

    def suggest(self, study: str, n: int = 1, *, time: float | None = None) -> list[Envelope[Suggested]]:
        """Suggest ``n`` parameter sets of ``study`` to evaluate (together); they are logged before they
        are returned, and replay re-makes them identically."""
        n = self._count("n", n)
        study = self._key("study", study, optional=False, reason="invalid command")
        when = self._event_time(time, study)
        with self._write_lock:
            self._commit_queue()
            self._recover()
            slot = self._suggester_for(study)
            if slot is None:
                self._rejected["unknown study"] += 1
                raise InvalidEvent(f"study = {study!r}: no such study", field="study", value=study)
            ids = [self._input_id(self._inputs + i) for i in range(1, n + 1)]
            try:
                made = slot.handler.suggest(slot.state, study, Context(when, ids[0], self.seed), n)
            except InvalidEvent:
                self._rejected["invalid command"] += 1
                raise
            drafts = [Draft(event, study, when, None, event_id) for event, event_id in zip(made, ids, strict=True)]
            return self._commit_now(drafts, checked=True)

    def tell(self, suggestion_id: str, value: float, *, time: float | None = None) -> Envelope[Observed]:
        """Record the objective ``value`` measured for a suggestion (an Observed event on its study).

        An unknown suggestion id, a second value for one suggestion and a value that is not a finite number
        are rejected, counted and raised as InvalidEvent."""
        suggestion_id = self._key("suggestion_id", suggestion_id, optional=False, reason="unknown suggestion")
        recorded = self._recorded(suggestion_id)
        if recorded is None or recorded[0] != Suggested.tag():
            self._rejected["unknown suggestion"] += 1
            raise InvalidEvent(
                f"suggestion_id = {suggestion_id!r}: no such suggestion in the log",
                field="suggestion_id",
                value=suggestion_id,
            )
        study = recorded[1].study
        try:
            event = Observed(study=study, suggestion_id=suggestion_id, value=value)
        except InvalidEvent:
            self._rejected["invalid observation"] += 1
            raise
        when = self._event_time(time, study)
        with self._write_lock:
            self._commit_queue()
            self._recover()
            slot = self._suggester_for(study)
            if slot is not None and slot.handler.observed(slot.state, suggestion_id):
                self._rejected["repeated observation"] += 1
                raise InvalidEvent(
                    f"suggestion_id = {suggestion_id!r}: already observed", field="suggestion_id", value=suggestion_id
                )
            return self._commit_now([Draft(event, study, when, None, suggestion_id)])[0]

    def _suggester_for(self, study: str) -> SlotOf[Suggester] | None:
        return next((s for s in self._suggesters if s.handler.has_study(s.state, study)), None)

    def _runs_method(self, method: str) -> bool:
        return any(method in slot.handler.methods for slot in self._suggesters)

    def _screen_study_event(self, event: StudyDefined | Suggested, defined: tuple[set[str], set[str]]) -> None:
        """Refuse (and count) a study name already taken, a method no registered handler runs, and a
        suggestion published instead of made by ``suggest``; the handler checks the rest."""
        problem = None
        if isinstance(event, Suggested):
            if self._runs_method(event.method):
                problem = InvalidEvent(
                    f"method = {event.method!r}: its suggestions are made by engine.suggest, not published",
                    field="method",
                    value=event.method,
                )
        elif any(_study_key(event.study) in names for names in defined) or self._suggester_for(event.study):
            problem = InvalidEvent(f"study = {event.study!r}: already defined", field="study", value=event.study)
        elif not self._runs_method(event.method):
            problem = _not_run("method", event.method, sorted(m for s in self._suggesters for m in s.handler.methods))
        self._refuse(problem)

    def _resuggest(self, first: Envelope[Suggested]) -> list[Suggested]:
        """Make again the batch of suggestions that ``first`` opened, on the state it was made on."""
        slot = self._suggester_for(first.payload.study)
        if slot is None:
            raise RtoptError(f"seq {first.seq}: no handler knows study {first.payload.study!r}")
        ctx = Context(first.time, first.id, self.seed)
        return slot.handler.suggest(slot.state, first.payload.study, ctx, first.payload.batch)

    # --- observing and reading -------------------------------------------------------------------

    def observe(
        self, types: Iterable[type[Event] | str] | None = None, stream: str | None = None
    ) -> reactivex.Observable[Envelope[Any]]:
        """A hot Observable of committed envelopes (optionally only ``types`` in ``stream``), in seq order."""
        return self._bus.observe(_tags(types), stream)

    def subscribe(
        self,
        callback: Callable[[Envelope[Any]], None],
        types: Iterable[type[Event] | str] | None = None,
        stream: str | None = None,
    ) -> DisposableBase:
        """Call ``callback`` with every committed envelope that matches; dispose the result to stop."""
        return self.observe(types, stream).subscribe(on_next=callback)

    def read(
        self,
        types: Iterable[type[Event] | str] | None = None,
        start: int = 1,
        until: int | None = None,
        stream: str | None = None,
    ) -> Iterator[Envelope[Any]]:
        """Recorded envelopes with ``start <= seq <= until``, in seq order."""
        for row in self._log.rows(start, until, _tags(types), stream):
            yield envelope_from_row(row, self._keys)

    def tail(
        self,
        types: Iterable[type[Event] | str] | None = None,
        start: int | None = None,
        stream: str | None = None,
        *,
        poll_interval: float = 0.05,
        idle_timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Envelope[Any]]:
        """Follow the log: yield recorded events from ``start`` (default: the end), then new ones as any
        process commits them, until ``stop`` is set or nothing arrives for ``idle_timeout`` seconds.

        The end of the log is taken when ``tail`` is called, not when iteration starts."""
        after = self._log.last_seq() if start is None else start - 1
        return self._follow(after, _tags(types), stream, poll_interval, idle_timeout, stop)

    def _follow(
        self,
        after: int,
        tags: list[str] | None,
        stream: str | None,
        poll_interval: float,
        idle_timeout: float | None,
        stop: threading.Event | None,
    ) -> Iterator[Envelope[Any]]:
        idle_since = wall_clock.monotonic()
        while stop is None or not stop.is_set():
            found = False
            for row in self._log.rows(after + 1, None, tags, stream):
                found = True
                after = row[0]
                yield envelope_from_row(row, self._keys)
            if found:
                idle_since = wall_clock.monotonic()
            elif idle_timeout is not None and wall_clock.monotonic() - idle_since >= idle_timeout:
                return
            else:
                self._log.wait_for_change(poll_interval)

    def stats(self) -> EngineStats:
        """What this engine published, derived and rejected since it was opened."""
        return EngineStats(
            last_seq=self._last_seq,
            published=self._counts["published"],
            derived=self._counts["derived"],
            rejected=dict(self._rejected),
            handler_failures={slot.name: slot.failures for slot in self._slots if slot.failures},
            observer_errors=self._bus.observer_errors,
            clamped_times=self._time_bound.clamped,
        )

    # --- replay ----------------------------------------------------------------------------------

    @classmethod
    def replay(
        cls,
        source: str | Path,
        into: str | Path | None = None,
        handlers: Sequence[Handler[Any]] | None = None,
        until_seq: int | None = None,
        *,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> Engine:
        """Rebuild state from the log at ``source``, which is never written to.

        Rebuild (``handlers`` is None): every event is folded as recorded. With ``into`` None the result
        is a read-only engine at ``until_seq``; with ``into`` the events up to ``until_seq`` are copied
        there first and the engine goes on writing into that copy.

        What-if (``handlers`` given): only the source's input events are fed, in their original groups,
        through ``handlers`` into ``into`` (default in memory), deriving everything anew.
        """
        if handlers is None and into is None:
            return cls.open(source, read_only=True, until_seq=until_seq, progress=progress)
        src = open_log(source, read_only=True)
        try:
            recorded_seed = int(src.meta()["seed"])
            if handlers is None:
                assert into is not None  # a rebuild without a copy returned above
                target_log = open_log(into, seed=recorded_seed)
                refuse_non_empty(target_log)
                try:
                    copy_keys(src, target_log)  # first: the copy is complete once its last event is written
                    copy_rows(src, target_log, until_seq, progress)
                finally:
                    target_log.close()
                return cls.open(into, progress=progress)
            target = cls.open(
                ":memory:" if into is None else into, seed=recorded_seed if seed is None else seed, handlers=handlers
            )
            refuse_non_empty(target._log)
            target._log.set_meta(REPLAYED_FROM, str(source))
            copy_keys(src, target._log)  # what is derived anew is sealed as the source sealed it
            with copying(target._log, src, src.last_seq() if until_seq is None else until_seq):
                target._refeed(src, until_seq, progress=progress)
            return target
        finally:
            src.close()

    def _refeed(
        self,
        source: EventLog,
        until_seq: int | None,
        *,
        progress: Progress | None = None,
        check_decision: Callable[[Envelope[Decision], Decision], None] | None = None,
        check_suggestion: Callable[[Envelope[Suggested], Suggested | None], None] | None = None,
    ) -> None:
        """Publish ``source``'s input events, grouped as they were committed (one by one when followers
        derived the source), deriving anew."""
        singly = FOLLOWED in source.meta()
        until = source.last_seq() if until_seq is None else until_seq
        keys = Keyring(source, Privacy(seal=False))
        group: list[Draft] = []
        remade: list[Suggested] = []

        def flush() -> None:
            if group:
                # the inputs of one log, where they were accepted, into a log that started empty
                self._commit_now(list(group), checked=True)
                group.clear()

        for row in source.rows(1, until):
            if row[6] is not None:  # a derived event closes the group of inputs it came from
                flush()
                continue
            envelope = envelope_from_row(row, keys)
            draft = Draft(envelope.payload, envelope.stream, envelope.time, envelope.id, envelope.correlation_id)
            if isinstance(envelope.payload, Decision):
                flush()
                if check_decision is not None and self._runs_policy(envelope.payload.policy):
                    check_decision(envelope, self._redecide(envelope))
            elif isinstance(envelope.payload, Suggested) and self._runs_method(envelope.payload.method):
                index = envelope.payload.index
                if index == 0:  # the suggestions of one batch were committed together
                    flush()
                    remade = self._resuggest(envelope) if check_suggestion is not None else []
                if check_suggestion is not None:
                    check_suggestion(envelope, remade[index] if index < len(remade) else None)
            group.append(draft)
            if singly:
                flush()
            if progress is not None and row[0] % 2000 == 0:
                progress(row[0], until)
        flush()
        if progress is not None:
            progress(until, until)

    def _runs_policy(self, policy: str) -> bool:
        return any(policy in slot.handler.policies for slot in self._deciders)

    def _redecide(self, recorded: Envelope[Decision]) -> Decision:
        decision = recorded.payload
        slot = self._decider_for(decision.experiment)
        if slot is None:
            raise RtoptError(f"seq {recorded.seq}: no handler knows experiment {decision.experiment!r}")
        ctx = Context(recorded.time, recorded.id, self.seed)
        request = Request(
            context=decision.context,
            available=decision.candidates or None,
            unit=decision.unit,
            slots=max(len(decision.slate), 1),
        )
        return slot.handler.decide(slot.state, decision.experiment, ctx, request)

    @classmethod
    def verify(
        cls,
        source: str | Path,
        handlers: Sequence[Handler[Any]] | None = None,
        *,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Check the hash chain of ``source`` row by row, then re-derive every derived event and re-make every
        decision and suggestion; report the first difference (a broken link as field ``chain``)."""
        src = open_log(source, read_only=True, check=False)
        mismatches: list[Difference] = []
        decisions = suggestions = unit_forgotten = 0

        def check_decision(recorded: Envelope[Decision], remade: Decision) -> None:
            nonlocal decisions, unit_forgotten
            decisions += 1
            if not mismatches and not _same_payload(remade, recorded.payload):
                if is_pseudonym(recorded.payload.unit):  # a policy that assigns by unit sees another unit now
                    unit_forgotten += 1
                    return
                mismatches.append(
                    Difference(
                        recorded.seq, "decision", msgspec.to_builtins(recorded.payload), msgspec.to_builtins(remade)
                    )
                )

        def check_suggestion(recorded: Envelope[Suggested], remade: Suggested | None) -> None:
            nonlocal suggestions
            suggestions += 1
            if not mismatches and (remade is None or not _same_payload(remade, recorded.payload)):
                mismatches.append(
                    Difference(
                        recorded.seq,
                        "suggestion",
                        msgspec.to_builtins(recorded.payload),
                        None if remade is None else msgspec.to_builtins(remade),
                    )
                )

        try:
            meta = src.meta()
            notes = []
            derived = src.last_seq() - src.count_inputs(None)
            if not src.chained:
                notes.append(
                    "this log is of format 1: its rows carry no hash chain, so changes made outside rtopt to events"
                    " nothing derives from cannot be seen; opening it writable adds the chain"
                )
            else:
                damage = src.audit()
                if damage is not None:
                    return VerifyReport(
                        events=src.last_seq(), derived=derived, decisions=0, difference=Difference(*damage)
                    )
            replayed = REPLAYED_FROM in meta
            if replayed:
                notes.append(
                    f"this log is a what-if replay of {meta[REPLAYED_FROM]}: its decisions were made on the state of "
                    "that log, so they are taken as recorded, not re-made"
                )
            target = cls.open(
                ":memory:",
                seed=int(meta["seed"]),
                handlers=default_handlers() if handlers is None else handlers,
                privacy=False,  # re-derived values are compared with what the log's values read as
            )
            with target:
                target._refeed(
                    src,
                    None,
                    progress=progress,
                    check_decision=None if replayed else check_decision,
                    check_suggestion=None if replayed else check_suggestion,
                )
                compare = _derived_difference if FOLLOWED in meta else _first_difference
                difference = mismatches[0] if mismatches else compare(src, target._log, Keyring(src))
                if unit_forgotten:
                    notes.append(
                        f"{unit_forgotten} decisions were not re-made: their unit was forgotten, and their policy "
                        "assigns by the unit, which reads as a pseudonym now"
                    )
                derived = src.last_seq() - src.count_inputs(None)
                return VerifyReport(
                    events=src.last_seq(),
                    derived=derived,
                    decisions=decisions,
                    difference=difference,
                    notes=notes,
                    suggestions=suggestions,
                )
        finally:
            src.close()


def _differs(index: int, recorded: Row, rederived: Row, keys: Keyring) -> bool:
    """True when column ``index`` of two rows differs; payloads are compared by what they read as, each
    upcast from the schema version of its row (so versions differ only through the payloads)."""
    if recorded[index] == rederived[index] or COLUMNS[index] == "schema_version":
        return False
    if COLUMNS[index] != "payload":
        return True
    return not _same_payload(
        keys.decode(recorded[2], recorded[9], recorded[8]), keys.decode(rederived[2], rederived[9], rederived[8])
    )


def _derived_difference(recorded: EventLog, rederived: EventLog, keys: Keyring) -> Difference | None:
    """Compare the derived events of two logs by id, wherever they stand, ignoring ``recorded_at``."""
    left = {row[1]: row for row in recorded.rows() if row[6] is not None}
    right = {row[1]: row for row in rederived.rows() if row[6] is not None}
    for event_id in sorted(left.keys() | right.keys()):
        a, b = left.get(event_id), right.get(event_id)
        if a is None or b is None:
            seq = (a or right[event_id])[0]
            return Difference(seq, "id", a and event_id, b and event_id)
        for index, name in enumerate(COLUMNS):
            if name not in ("seq", "recorded_at") and _differs(index, a, b, keys):
                return Difference(a[0], name, a[index], b[index])
    return None


def _same_value(a: Any, b: Any) -> bool:
    """True if two decoded values are equal, numbers by value (1 == 1.0) but a bool only to a bool."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_value(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_value, a, b))
    return a == b and (type(a) is bool) == (type(b) is bool)


def _same_payload(a: Event, b: Event) -> bool:
    """True if two events hold the same values: an int recorded where a float is now derived (a log written
    before inputs were normalised to their decoded form) is the same number."""
    return encode_payload(a) == encode_payload(b) or _same_value(msgspec.to_builtins(a), msgspec.to_builtins(b))


_SET_BY_DECISION = frozenset({"prompt_id", "variant_id", "decision_id"})
"""Feedback fields that ``Engine.feedback`` takes from the decision."""


def _not_run(field: str, value: str, known: list[str]) -> InvalidEvent:
    return InvalidEvent(
        f"{field} = {value!r}: no registered handler runs it (known: {known})", field=field, value=value
    )


def _study_key(study: str) -> str:
    """How a study's name is kept apart from experiment names among the names defined in one group."""
    return f"study/{study}"


def _first_difference(recorded: EventLog, rederived: EventLog, keys: Keyring) -> Difference | None:
    """Compare two logs row by row, ignoring ``recorded_at``."""
    left, right = recorded.rows(1, None), rederived.rows(1, None)
    for a, b in zip(left, right, strict=False):
        for index, name in enumerate(COLUMNS):
            if name != "recorded_at" and _differs(index, a, b, keys):
                if name == "payload":
                    return Difference(
                        a[0],
                        name,
                        msgspec.to_builtins(keys.decode(a[2], a[9], a[8])),
                        msgspec.to_builtins(keys.decode(b[2], b[9], b[8])),
                    )
                return Difference(min(a[0], b[0]), name, a[index], b[index])  # a missing row shows as a seq gap
    end_a, end_b = recorded.last_seq(), rederived.last_seq()
    if end_a != end_b:
        return Difference(min(end_a, end_b) + 1, "seq", f"log ends at {end_a}", f"log ends at {end_b}")
    return None

"""Handlers: pure folds over events, wrapped by the kernel into Rx operators.

A handler declares one fold per event type it takes (:func:`handles`); a fold is
``(state, envelope, ctx) -> (state, derived events)``. It may update ``state`` in place and returns the state
to keep. The same fold runs live and in replay; it sees only event time (``ctx.time``) and a random
generator seeded from the engine seed and the event id (``ctx.rng``), never the wall clock or a global
generator. :func:`rtopt.testing.check_handler` checks a handler against these rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

import msgspec
import reactivex
from reactivex import operators as ops
from reactivex.subject import Subject

from rtopt.errors import InvalidEvent, RtoptError
from rtopt.events import Envelope, Event, HandlerFailed, unvalidated, validate
from rtopt.ids import ordered_id, prefix_of

if TYPE_CHECKING:
    import numpy as np

S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])
MAX_CASCADE_DEPTH = 32
DERIVED_NAMESPACE = b"rtopt/derived/"


class Context:
    """What a fold may know besides state and event: event time and a seeded random generator.

    ``derives`` is False while state is rebuilt from a log that already holds what the fold derived: the
    fold may then skip building derived events (its outputs are thrown away), but must change its state
    exactly as it would otherwise.

    >>> ctx = Context(time=10.0, event_id="e1", seed=7)
    >>> ctx.rng.random() == Context(time=10.0, event_id="e1", seed=7).rng.random()
    True
    """

    __slots__ = ("_rng", "derives", "event_id", "seed", "time")

    def __init__(self, time: float, event_id: str, seed: int, derives: bool = True) -> None:
        self.time = time
        self.event_id = event_id
        self.seed = seed
        self.derives = derives
        self._rng: np.random.Generator | None = None

    @property
    def rng(self) -> np.random.Generator:
        """A generator seeded from (engine seed, event id): the same draws live and in replay."""
        if self._rng is None:
            from rtopt.randomness import seeded_generator

            self._rng = seeded_generator(self.seed, self.event_id)
        return self._rng


Fold = Callable[[Any, Envelope[Any], Context], tuple[Any, Sequence[Event]]]


def handles(*types: type[Event]) -> Callable[[F], F]:
    """Declare the decorated :class:`Handler` method the fold of events of ``types`` (and of their
    subclasses, for a handler whose ``accepts`` names them)."""
    if not types or not all(isinstance(t, type) and issubclass(t, Event) for t in types):
        raise TypeError(f"handles takes event types, not {types!r}")

    def declare(method: F) -> F:
        method.__rtopt_handles__ = (*getattr(method, "__rtopt_handles__", ()), *types)  # type: ignore[attr-defined]
        return method

    return declare


def declared_folds(cls: type, inherited: Mapping[type[Event], str]) -> dict[type[Event], str]:
    """The folds of ``cls``: the ``inherited`` ones, updated with the methods ``cls`` itself declares with
    :func:`handles` (event type -> method name); a type declared by two of its methods is refused."""
    folds = dict(inherited)
    declared_here: dict[type[Event], str] = {}
    for attribute, member in vars(cls).items():
        for event_type in getattr(member, "__rtopt_handles__", ()):
            if event_type in declared_here:
                both = f"{declared_here[event_type]} and {attribute}"
                raise TypeError(f"{cls.__qualname__}: {both} both fold {event_type.__name__}")
            declared_here[event_type] = folds[event_type] = attribute
    return folds


class Handler(Generic[S]):
    """Base class of handler chains: a named fold over the event types in ``accepts``.

    Subclasses set ``name`` and ``state_type`` (a msgspec-encodable type, used for snapshots), implement
    :meth:`initial_state`, and declare a fold per event type with :func:`handles`: a method
    ``(state, envelope, ctx) -> (state, derived events)`` that may update ``state`` in place and returns the
    state to keep. ``accepts`` is the declared types unless the class sets it (a handler whose types are
    known per instance annotates it in the class, sets it in ``__init__`` and declares folds for a base type
    of them). A handler that declares no fold overrides :meth:`apply` instead, which then folds every type in
    ``accepts``.

    >>> import msgspec
    >>> from rtopt.events import Feedback
    >>> class Counter(msgspec.Struct):
    ...     n: int = 0
    >>> class CountFeedback(Handler[Counter]):
    ...     name = "count"
    ...     state_type = Counter
    ...     def initial_state(self): return Counter()
    ...     @handles(Feedback)
    ...     def count(self, state, envelope, ctx):
    ...         state.n += 1
    ...         return state, []
    >>> (CountFeedback.accepts, CountFeedback().initial_state())
    ((<class 'rtopt.events.Feedback'>,), Counter(n=0))
    """

    name: ClassVar[str]
    accepts: ClassVar[tuple[type[Event], ...]]
    state_type: ClassVar[Any]
    parts: ClassVar[str | None] = None  # the field of the state that maps a key to its part, for view(state, key)
    folds: ClassVar[Mapping[type[Event], str]] = {}  # event type -> name of the method declared as its fold

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        folds = declared_folds(cls, cls.folds)
        declares = folds != cls.folds
        cls.folds = folds
        if folds and cls.apply is not Handler.apply:
            raise TypeError(f"{cls.__qualname__}: declare folds with @handles or override apply, not both")
        if declares and "accepts" not in vars(cls) and "accepts" not in vars(cls).get("__annotations__", {}):
            cls.accepts = tuple(folds)

    def initial_state(self) -> S:
        """The state before any event."""
        raise NotImplementedError

    def fold_table(self) -> dict[str, Fold]:
        """The fold of every accepted event type, by its tag: the declared method of the type or of its
        nearest base, or :meth:`apply` for a handler that declares none."""
        if not self.folds:
            return {event_type.tag(): self.apply for event_type in self.accepts}
        table: dict[str, Fold] = {}
        for event_type in self.accepts:
            method = next((self.folds[t] for t in event_type.__mro__ if t in self.folds), None)
            if method is None:
                raise TypeError(f"the {self.name} handler accepts {event_type.__name__} but declares no fold for it")
            table[event_type.tag()] = getattr(self, method)
        return table

    def apply(self, state: S, envelope: Envelope[Any], ctx: Context) -> tuple[S, Sequence[Event]]:
        """Fold one event into ``state`` (updating it in place or not); return the state to keep and the
        events it derives. By default the fold declared for the event's type."""
        for event_type in type(envelope.payload).__mro__:
            method = self.folds.get(event_type)
            if method is not None:
                fold: Fold = getattr(self, method)
                return fold(state, envelope, ctx)
        raise TypeError(f"the {self.name} handler declares no fold for {envelope.type}")

    def screen(self, state: S, event: Event) -> None:
        """Raise InvalidEvent if ``event``, published as an input, must be refused in ``state``.

        The engine asks every handler that accepts the event's type before committing it."""

    def view(self, state: S, key: str | None = None) -> Any:
        """A detached copy of the state (or the part of it for ``key``, in the mapping named by ``parts``)
        for queries."""
        if key is None:
            return msgspec.convert(msgspec.to_builtins(state), self.state_type)
        if self.parts is None:
            raise KeyError(f"the {self.name} handler's state has no parts by key")
        part = getattr(state, self.parts)[key]
        return msgspec.convert(msgspec.to_builtins(part), type(part))

    def config(self) -> dict[str, Any]:
        """The settings that change what this handler derives (they key its snapshots)."""
        return {}

    def fingerprint(self) -> str:
        """Identifies this handler's code version and configuration; snapshots only match it."""
        blob = msgspec.json.encode(
            {
                "name": self.name,
                "class": f"{type(self).__module__}.{type(self).__qualname__}",
                "version": getattr(self, "version", 1),
                "config": self.config(),
            }
        )
        return hashlib.sha256(blob).hexdigest()[:16]


class Derived(NamedTuple):
    """An event a handler derived from ``cause``; ``index`` is its position among that handler's outputs."""

    cause: Envelope[Any]
    handler: str
    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as a NamedTuple field may
    event: Event

    def event_id(self) -> str:
        """Deterministic id: the same cause, handler and position give the same id in every replay."""
        cause_id = self.cause.id
        return ordered_id(prefix_of(cause_id), DERIVED_NAMESPACE, f"{cause_id}/{self.handler}/{self.index}")

    def envelope(self, seq: int, recorded_at: float) -> Envelope[Any]:
        """The envelope the event is recorded in: on its own stream (else its cause's), at its cause's event
        time."""
        cause, event = self.cause, self.event
        return Envelope(
            seq,
            self.event_id(),
            event.tag(),
            event.default_stream() or cause.stream,
            cause.time,
            recorded_at,
            cause.id,
            cause.correlation_id or cause.id,
            event.schema_version,
            event,
        )


class HandlerSlot:
    """A registered handler with its current state, position and failure count."""

    def __init__(self, handler: Handler[Any], seed: int) -> None:
        self.handler = handler
        self.name = handler.name
        self.seed = seed
        self.folds = handler.fold_table()
        self.accepted = frozenset(self.folds)
        self.state = handler.initial_state()
        self.position = 0
        self.failures = 0

    def fold_batch(self, batch: Sequence[Envelope[Any]], keep: bool = True) -> list[Derived]:
        """Fold every accepted event of ``batch`` in order and return what the handler derived.

        A fold that raises yields a HandlerFailed event instead of its outputs, and so does an output that
        fails validation. With ``keep`` False (rebuilding state from events whose outputs are already in
        the log) outputs are neither validated nor returned; the fold itself runs the same either way.
        """
        folds, seed = self.folds, self.seed
        state = self.state
        derived: list[Derived] = []
        with unvalidated():
            for envelope in batch:
                fold = folds.get(envelope.type)
                if fold is None:
                    continue
                try:
                    state, events = fold(state, envelope, Context(envelope.time, envelope.id, seed, keep))
                except Exception as exc:
                    self.failures += 1
                    events = [self._failure(envelope, exc)]
                if events and keep:
                    derived.extend(Derived(envelope, self.name, i, event) for i, event in enumerate(events))
        self.state = state
        if keep:
            for position, item in enumerate(derived):
                try:  # stored and folded on as the log gives it back, as replay will fold it
                    derived[position] = item._replace(event=validate(item.event))
                except InvalidEvent as exc:
                    self.failures += 1
                    derived[position] = item._replace(event=self._failure(item.cause, exc))
        return derived

    def _failure(self, envelope: Envelope[Any], exc: Exception) -> HandlerFailed:
        return HandlerFailed(
            handler=self.name, event_type=envelope.type, error_type=type(exc).__name__, message=str(exc)[:2000]
        )


def fold_operator(
    slot: HandlerSlot,
) -> Callable[[reactivex.Observable[Sequence[Envelope[Any]]]], reactivex.Observable[list[Derived]]]:
    """The Rx operator that folds batches of envelopes through ``slot`` and emits what it derives."""
    return ops.map(slot.fold_batch)


class Chains:
    """Handler slots wired as Rx operators on one subject: a batch of envelopes goes in, and out comes what
    the handlers derive from it, then from that, until they derive nothing more.

    >>> from rtopt.events import Feedback
    >>> chains = Chains()
    >>> feedback = Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5)
    >>> chains.cascade([Envelope(1, "e1", "Feedback", "p", 0.0, 0.0, None, None, 1, feedback)], recorded_at=0.0)
    []
    """

    def __init__(self) -> None:
        self._routes: list[tuple[frozenset[str], Subject[Sequence[Envelope[Any]]]]] = []
        self._derived: list[Derived] = []
        self._accepted: set[str] = set()

    def add(self, slot: HandlerSlot) -> None:
        """Fold the batches that hold a type ``slot`` accepts through it too (after the slots added before it)."""
        subject: Subject[Sequence[Envelope[Any]]] = Subject()
        subject.pipe(fold_operator(slot)).subscribe(self._derived.extend)
        self._routes.append((slot.accepted, subject))
        self._accepted |= slot.accepted

    def fold(self, batch: Sequence[Envelope[Any]]) -> list[Derived]:
        """What the handlers derive directly from ``batch``, in the order of their causes. A handler sees the
        batches that hold a type it accepts, and no other."""
        types = {envelope.type for envelope in batch}
        if types.isdisjoint(self._accepted):
            return []
        for accepted, subject in self._routes:
            if not types.isdisjoint(accepted):
                subject.on_next(batch)
        derived = sorted(self._derived, key=lambda d: d.cause.seq) if len(self._derived) > 1 else self._derived[:]
        self._derived.clear()
        return derived

    def cascade(self, batch: Sequence[Envelope[Any]], recorded_at: float) -> list[Envelope[Any]]:
        """Everything derived from ``batch`` and, in turn, from those events, numbered on after ``batch``."""
        written: list[Envelope[Any]] = []
        seq = batch[-1].seq
        for _ in range(MAX_CASCADE_DEPTH):
            derived = self.fold(batch)
            if not derived:
                return written
            batch = [item.envelope(seq + i, recorded_at) for i, item in enumerate(derived, start=1)]
            seq += len(batch)
            written.extend(batch)
        raise RtoptError(f"handlers kept deriving events from each other past depth {MAX_CASCADE_DEPTH}")

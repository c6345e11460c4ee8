"""Event schemas: the immutable facts the engine records, their registry and their envelope.

Every event type is a frozen, tagged ``msgspec.Struct``. Subclassing :class:`Event` registers the type
under its tag (the class name), so handler packages add their own event types without touching the
kernel. Constraints are declared once, as ``msgspec.Meta`` annotations, and are checked both when an
event is constructed in Python and when it is decoded from the log or from JSON. An event type whose
schema changes raises its ``schema_version``; :mod:`rtopt.upcasting` turns older payloads into it.

The event types defined here are the kernel's: the engine itself produces, reads or routes each of them.
:class:`Feedback` (recorded by ``engine.feedback``), :class:`ExperimentDefined` and :class:`Decision`
(``define_experiment`` and ``decide``: the engine screens definitions and re-makes decisions on verify),
:class:`StudyDefined`, :class:`Suggested` and :class:`Observed` (``define_study``, ``suggest``, ``tell``,
likewise), :class:`ClockTicked` (``tick``), :class:`SubjectForgotten` (``forget``),
:class:`HandlerFailed` (a fold that raised) and :class:`FeedbackRejected` (counted in the engine's
statistics). Events that only a handler derives or reads live with that handler, in its ``events``
module (``ArmUpdated`` in :mod:`rtopt.handlers.bandits.events`, windows in :mod:`rtopt.streams.events`
...); they keep their tag wherever their class lives, so moving one changes no log.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar, cast

import msgspec
from msgspec import Meta

from rtopt.errors import InvalidEvent, UnknownEventType, UnreadableSchemaVersion, short_repr
from rtopt.upcasting import upcast

UnitInterval = Annotated[float, Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]
Count = Annotated[int, Meta(ge=0)]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
OptionValue = bool | int | float | str | list[str]

_REGISTRY: dict[str, type[Event]] = {}
_PAYLOAD_DECODERS: dict[str, tuple[Callable[[bytes], Event], int]] = {}
"""Per tag: the strict decoding function of its registered class and the schema version the class is at."""
_PATH_FIELD = re.compile(r"(?:at|in) `\$\.([A-Za-z_][A-Za-z0-9_]*)")
_ARGUMENT_FIELD = re.compile(r"argument '([^']+)'", re.IGNORECASE)
_UNSTORABLE = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)
"""What encoding raises for a value msgpack cannot hold (UnicodeEncodeError is a ValueError)."""


def _python_scalar(value: object) -> object:
    """A numpy scalar as the Python number it holds (np.int64 -> int, np.bool_ -> bool, np.float32 -> float)."""
    numpy = sys.modules.get("numpy")  # a numpy scalar exists only once numpy is imported
    if numpy is not None and isinstance(value, numpy.generic):
        scalar = value.item()
        if isinstance(scalar, bool | int | float | str):
            return scalar
    raise TypeError(f"Encoding objects of type {type(value).__module__}.{type(value).__qualname__} is unsupported")


_MSGPACK_ENCODER = msgspec.msgpack.Encoder(enc_hook=_python_scalar)
_construction = threading.local()


class _Unvalidated:
    """The block of :func:`unvalidated` (a class: cheaper to enter than a generator on the per-event path)."""

    __slots__ = ("previous",)

    def __enter__(self) -> None:
        self.previous = getattr(_construction, "unvalidated", False)
        _construction.unvalidated = True

    def __exit__(self, *exc: object) -> None:
        _construction.unvalidated = self.previous


def unvalidated() -> contextlib.AbstractContextManager[None]:
    """Within this block (on this thread) events are built without validation.

    Handler folds run inside it: the kernel validates what a fold derives after the fold returns, so a
    fold does exactly the same whether its outputs are kept (live) or thrown away (rebuilding state).
    """
    return _Unvalidated()


if TYPE_CHECKING:
    _StructMeta = msgspec.StructMeta
else:  # msgspec 0.19 does not export its metaclass
    _StructMeta = type(msgspec.Struct)


class _EventMeta(_StructMeta):
    """Metaclass that validates an event when Python code constructs it, and gives back the event as the log
    will store it (see :func:`validate`)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            event = super().__call__(*args, **kwargs)
        except TypeError as exc:
            match = _ARGUMENT_FIELD.search(str(exc))
            field = match.group(1) if match else None
            raise InvalidEvent(f"{cls.__name__}: {exc}", field=field) from None
        if not getattr(_construction, "unvalidated", False):
            return validate(event)
        return event


CLOCK_STREAM = "clock"


class Event(msgspec.Struct, frozen=True, tag=True, omit_defaults=True, metaclass=_EventMeta):
    """Base class of every event payload.

    ``stream_field`` names the payload field used as the envelope's stream when the publisher gives
    none; ``schema_version`` is recorded in the envelope of every event of the type; ``personal_fields``
    names the fields that may hold a user or session id, which the log stores sealed (see
    :mod:`rtopt.privacy`): sealing lengthens a value, so these fields set no maximum length.

    >>> class Greeted(Event, frozen=True):
    ...     target: Name
    ...     stream_field: ClassVar[str] = "target"
    >>> Greeted(target="api").target
    'api'
    >>> event_type("Greeted") is Greeted
    True
    """

    stream_field: ClassVar[str | None] = None
    schema_version: ClassVar[int] = 1
    personal_fields: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tag = cls.__name__
        known = _REGISTRY.get(tag)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"event tag {tag!r} is already registered by {known.__module__}.{known.__qualname__}")
        _REGISTRY[tag] = cls
        _PAYLOAD_DECODERS.pop(tag, None)

    @classmethod
    def tag(cls) -> str:
        """The tag this type is recorded under: its class name."""
        return cls.__name__

    def default_stream(self) -> str | None:
        """The stream an event goes to when its publisher names none."""
        return getattr(self, self.stream_field) if self.stream_field else None

    def personal(self) -> tuple[str, ...]:
        """The fields of this event that hold a user or session id (``personal_fields`` unless a type decides
        per event); the first one holding a value names the subject whose key seals them."""
        return self.personal_fields


S = TypeVar("S", bound=msgspec.Struct)


def _inner_types(info: msgspec.inspect.Type) -> tuple[msgspec.inspect.Type, ...]:
    """The types one level inside ``info``: union members, item, value and field types."""
    inspect = msgspec.inspect
    if isinstance(info, inspect.UnionType | inspect.TupleType):
        return tuple(info.types if isinstance(info, inspect.UnionType) else info.item_types)
    if isinstance(info, inspect.DictType):
        return (info.value_type,)
    if isinstance(info, inspect.ListType | inspect.SetType | inspect.VarTupleType):
        return (info.item_type,)
    if isinstance(info, inspect.StructType):
        return tuple(f.type for f in info.fields)
    return ()


def _takes_float(info: msgspec.inspect.Type) -> bool:
    """True if a float can sit in ``info`` or somewhere inside it."""
    return isinstance(info, msgspec.inspect.FloatType | msgspec.inspect.AnyType) or any(
        _takes_float(inner) for inner in _inner_types(info)
    )


@functools.cache
def _schema(cls: type[S]) -> tuple[msgspec.msgpack.Decoder[S], tuple[str, ...]]:
    """The strict decoder of ``cls`` and its fields whose values may contain floats: msgpack stores NaN and
    infinity, so these are checked for finiteness on top of decoding."""
    fields = cast(msgspec.inspect.StructType, msgspec.inspect.type_info(cls)).fields
    return msgspec.msgpack.Decoder(cls), tuple(f.name for f in fields if _takes_float(f.type))


def _has_non_finite(value: object) -> bool:
    try:  # the usual case, a flat list or mapping of numbers: a NaN or an infinity makes their sum one too
        if math.isfinite(sum(value.values() if type(value) is dict else value, 0.0)):  # type: ignore[call-overload]
            return False
    except (TypeError, ValueError, ArithmeticError):
        pass  # not only numbers (or a sum too large): look at each item
    pending = [value]  # a loop, not recursion: nesting as deep as msgpack takes must not overflow the stack
    while pending:
        item = pending.pop()
        if type(item) is float and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
        elif isinstance(item, msgspec.Struct):
            pending.extend(getattr(item, name) for name in item.__struct_fields__)
    return False


def _check_finite(event: msgspec.Struct, fields: tuple[str, ...]) -> None:
    for field in fields:
        value = getattr(event, field)
        if type(value) is float:
            if value - value == 0.0:  # false for NaN and the infinities
                continue
        elif value is None or not _has_non_finite(value):
            continue
        name = type(event).__name__
        raise InvalidEvent(f"{name}.{field} = {short_repr(value)}: must be a finite number", field=field, value=value)


def _field_sizes(struct: msgspec.Struct) -> Iterator[tuple[str, int | BaseException]]:
    """Each field of ``struct`` with the size of its msgpack encoding, or the error encoding it raised."""
    for field in struct.__struct_fields__:
        try:
            yield field, len(_MSGPACK_ENCODER.encode(getattr(struct, field)))
        except _UNSTORABLE as exc:
            yield field, exc


def _unstorable(struct: msgspec.Struct, error: BaseException) -> InvalidEvent:
    """The refusal of a struct that msgpack cannot encode, naming the first field that fails to encode."""
    name = type(struct).__name__
    failed = [(field, size) for field, size in _field_sizes(struct) if isinstance(size, BaseException)]
    if not failed:  # each field alone encodes: only the whole nests too deep
        return InvalidEvent(f"{name}: cannot be stored: {type(error).__name__}: {error}", field="payload")
    field, reason = failed[0]
    value = getattr(struct, field)
    return InvalidEvent(
        f"{name}.{field} = {short_repr(value)}: cannot be stored: {type(reason).__name__}: {reason}",
        field=field,
        value=value,
    )


def _oversized(struct: msgspec.Struct, size: int, max_bytes: int) -> InvalidEvent:
    sizes = [(field_size, field) for field, field_size in _field_sizes(struct) if isinstance(field_size, int)]
    largest = f"; its largest field is {max(sizes)[1]} ({max(sizes)[0]:,} bytes)" if sizes else ""
    return InvalidEvent(
        f"{type(struct).__name__}: the payload takes {size:,} bytes, over the limit of {max_bytes:,}{largest}",
        field="payload",
        value=size,
    )


def validate(event: S, max_bytes: int | None = None) -> S:
    """Return ``event`` as the log will give it back, or raise :class:`InvalidEvent` naming the field.

    The event is encoded as it is stored and decoded by the same strict decoder that reads the log, so what
    is accepted can always be read back; numbers must also be finite. The decoded copy is what to fold and
    store: an int given for a float field is a float in it, a numpy scalar its Python value, exactly as a
    replay of the log will see it. ``max_bytes`` bounds the size of the encoded payload.

    Events built by calling their class are validated already; this checks one built another way
    (``msgspec.structs.replace``, ``msgspec.convert``).

    >>> validate(Feedback(prompt_id="p", variant_id="v", response_time_ms=1, success=True, quality_score=1))
    Feedback(prompt_id='p', variant_id='v', response_time_ms=1.0, success=True, quality_score=1.0, ...)
    """
    decoder, float_fields = _schema(type(event))
    try:
        data = _MSGPACK_ENCODER.encode(event)
    except _UNSTORABLE as exc:
        raise _unstorable(event, exc) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise _oversized(event, len(data), max_bytes)
    try:
        decoded = decoder.decode(data)
    except (msgspec.ValidationError, RecursionError) as exc:
        _check_finite(event, float_fields)  # a non-finite number is named as such
        match = _PATH_FIELD.search(str(exc))
        if match is None:  # no field named: the payload as a whole
            raise InvalidEvent(f"{type(event).__name__}: {exc}", field="payload") from None
        field = match.group(1)
        value = getattr(event, field, None)
        reason = str(exc).removesuffix(f" - at `$.{field}`")
        raise InvalidEvent(
            f"{type(event).__name__}.{field} = {short_repr(value)}: {reason}", field=field, value=value
        ) from None
    _check_finite(decoded, float_fields)
    return decoded


HANDLER_ENTRY_POINTS = "rtopt.handlers"


@functools.cache
def _import_installed_handlers() -> None:
    """Import the packages that declare handlers: importing them registers their event types."""
    from importlib.metadata import entry_points

    for entry_point in entry_points(group=HANDLER_ENTRY_POINTS):
        entry_point.load()


def event_type(tag: str) -> type[Event]:
    """The registered event class for ``tag``; raises :class:`UnknownEventType` for an unknown tag.

    A tag not registered yet may belong to an installed handler package that was not imported: those are
    imported once before giving up.
    """
    if tag not in _REGISTRY:
        _import_installed_handlers()
    try:
        return _REGISTRY[tag]
    except KeyError:
        raise UnknownEventType(
            f"no event type is registered under {tag!r}: install or import the package that defines it"
        ) from None


def registered_types() -> dict[str, type[Event]]:
    """A copy of the tag -> class registry."""
    return dict(_REGISTRY)


def encode_payload(event: Event) -> bytes:
    """The msgpack bytes stored in the log for ``event``."""
    return _MSGPACK_ENCODER.encode(event)


def decode_payload(tag: str, data: bytes, version: int | None = None) -> Event:
    """Decode a payload stored under ``tag`` at schema ``version`` (the type's current one if None) as the
    current version of its type (constraints are checked by msgspec).

    An older payload is upcast first (see :mod:`rtopt.upcasting`); one that cannot be raises
    :class:`~rtopt.errors.UnreadableSchemaVersion`.
    """
    known = _PAYLOAD_DECODERS.get(tag)
    if known is None:
        cls = event_type(tag)
        known = _PAYLOAD_DECODERS[tag] = (_schema(cls)[0].decode, cls.schema_version)
    decode, current = known
    if version == current or version is None:
        return decode(data)
    payload = msgspec.msgpack.decode(data, type=dict[str, Any])
    payload.pop("type", None)
    upcast_payload = upcast(tag, payload, version, current)
    try:
        return decode(_MSGPACK_ENCODER.encode({"type": tag, **upcast_payload}))
    except msgspec.ValidationError as exc:
        raise UnreadableSchemaVersion(
            f"{tag}: the payload upcast from schema version {version} to {current} does not fit the type: {exc}"
        ) from None


def event_from_dict(data: dict[str, Any]) -> Event:
    """Build an event from a plain mapping with a ``type`` tag, as read from JSON.

    >>> event_from_dict({"type": "ExperimentDefined", "experiment": "g", "arms": ["a"], "policy": "thompson"})
    ExperimentDefined(experiment='g', arms=['a'], policy='thompson', options={})
    """
    if not isinstance(data, dict) or "type" not in data:
        raise InvalidEvent("an event needs a 'type' field naming its tag", field="type", value=None)
    cls = event_type(str(data["type"]))
    try:
        event = msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        match = _PATH_FIELD.search(str(exc)) or re.search(r"field `([^`]+)`", str(exc))
        field = match.group(1) if match else None
        raise InvalidEvent(f"{cls.__name__}: {exc}", field=field, value=data.get(field or "")) from None
    return validate(event)


E = TypeVar("E", bound=Event)


class Envelope(msgspec.Struct, Generic[E], frozen=True):
    """An event as recorded in the log: its position, identity, time and causal links.

    Attribute access falls through to the payload, so ``decision.arm`` works on a decision envelope.

    >>> env = Envelope(seq=1, id="e1", type="ExperimentDefined", stream="g", time=0.0, recorded_at=0.0,
    ...                causation_id=None, correlation_id=None, schema_version=1,
    ...                payload=ExperimentDefined(experiment="g", arms=["a", "b"], policy="thompson"))
    >>> env.seq, env.arms
    (1, ['a', 'b'])
    """

    seq: int
    id: str
    type: str
    stream: str
    time: float
    recorded_at: float
    causation_id: str | None
    correlation_id: str | None
    schema_version: int
    payload: E

    def __getattr__(self, name: str) -> Any:
        return getattr(self.payload, name)

    @property
    def is_input(self) -> bool:
        """True for events the world told us (no causing event); False for derived events."""
        return self.causation_id is None


# --- events of the kernel -------------------------------------------------------------------------


class Feedback(Event, frozen=True):
    """What a user or an evaluator reported about one LLM response.

    ``prompt_id`` is the experiment and ``variant_id`` the arm that served the response (a
    :class:`Decision`'s ``experiment`` and ``arm``); ``decision_id`` names that decision, when there was one.

    >>> Feedback(prompt_id="greeting", variant_id="v1", response_time_ms=420.0, success=True,
    ...          quality_score=0.8).quality_score
    0.8
    >>> Feedback(prompt_id="greeting", variant_id="v1", response_time_ms=420.0, success=True,
    ...          quality_score=1.7)
    Traceback (most recent call last):
    rtopt.errors.InvalidEvent: Feedback.quality_score = 1.7: Expected `float` <= 1.0
    """

    prompt_id: Name
    variant_id: Name
    response_time_ms: NonNegative
    success: bool
    quality_score: UnitInterval
    decision_id: str | None = None
    user_satisfaction: UnitInterval | None = None
    error: str | None = None
    cost_usd: NonNegative = 0.0
    tokens_in: Count = 0
    tokens_out: Count = 0
    environment: Name = "production"
    user_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, str] = {}

    stream_field: ClassVar[str] = "prompt_id"
    personal_fields: ClassVar[tuple[str, ...]] = ("user_id", "session_id")


class ExperimentDefined(Event, frozen=True):
    """An experiment over ``arms`` was set up, run by ``policy`` with its ``options``."""

    experiment: Name
    arms: Annotated[list[Name], Meta(min_length=1)]
    policy: Name
    options: dict[str, OptionValue] = {}

    stream_field: ClassVar[str] = "experiment"


class Decision(Event, frozen=True):
    """An arm chosen for one request, with what is needed to evaluate it off-policy later.

    The feedback on it names ``experiment`` as its ``prompt_id`` and ``arm`` as its ``variant_id``.

    ``propensity`` is the probability the policy had of choosing ``arm`` among ``candidates`` given
    ``context`` (the feature vector used, if any); ``explored`` says the arm was not the one with the best
    estimate at the time; ``unit`` is the user or session the decision was for, when the caller named one.
    A slate decision ranks several arms: ``slate`` in order (``arm`` is its first) with the propensity of
    each slot's choice among the arms left for it. ``basis`` is the seq of the last event of the state the
    decision was made on, when other processes appended events between it and the decision; None when
    it is the event right before the decision (see :mod:`rtopt.commands`).
    """

    experiment: Name
    arm: Name
    policy: Name
    propensity: UnitInterval
    candidates: list[Name] = []
    context: dict[str, float] | None = None
    explored: bool = False
    unit: str | None = None
    slate: list[Name] = []
    slate_propensities: list[UnitInterval] = []
    basis: Count | None = None

    stream_field: ClassVar[str] = "experiment"
    personal_fields: ClassVar[tuple[str, ...]] = ("unit",)


class ClockTicked(Event, frozen=True):
    """Event time has reached the tick's time: handlers with deadlines (an experiment's maximum duration)
    act on it even when no other event arrives.

    >>> ClockTicked().default_stream()
    'clock'
    """

    stream_field: ClassVar[str] = ""

    def default_stream(self) -> str | None:
        return CLOCK_STREAM


class FeedbackRejected(Event, frozen=True):
    """Feedback that reached a learner but was not learnt from, and why."""

    reason: Name
    decision_id: str | None = None
    handler: str = ""


PRIVACY_STREAM = "privacy"


class SubjectForgotten(Event, frozen=True):
    """The key of the subject (a user or a session) referred to as ``ref`` was deleted: the values sealed
    with it now read as ``forgotten:<ref>``. The subject itself is not recorded.

    >>> SubjectForgotten(ref="0123456789abcdef").default_stream()
    'privacy'
    """

    ref: Name

    def default_stream(self) -> str | None:
        return PRIVACY_STREAM


class HandlerFailed(Event, frozen=True):
    """A handler raised while folding an event; the bus and the other handlers went on."""

    handler: Name
    event_type: Name
    error_type: Name
    message: str


# --- studies: ask/tell optimisation of parameters ---------------------------------------------------

ParamValue = int | float | str


class Dimension(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """One parameter of a study's search space: a ``float`` range, a ``log`` (log-scale float) range, an
    ``int`` range (bounds included) or a ``categorical`` choice among ``choices``.

    >>> Dimension.of((0.0, 2.0))
    Dimension(type='float', low=0.0, high=2.0, choices=[])
    >>> Dimension.of({"type": "int", "low": 64, "high": 1024}).high
    1024.0
    """

    type: Literal["float", "log", "int", "categorical"] = "float"
    low: float | None = None
    high: float | None = None
    choices: list[ParamValue] = []

    @classmethod
    def of(cls, definition: Any) -> Dimension:
        """A dimension from a ``(low, high)`` float range, a mapping of its fields, or a Dimension."""
        if isinstance(definition, Dimension):
            return definition
        if isinstance(definition, tuple | list) and len(definition) == 2:
            definition = {"type": "float", "low": definition[0], "high": definition[1]}
        try:
            return msgspec.convert(definition, cls, strict=False)
        except Exception as exc:  # lax conversion reads any object as a mapping or a sequence, which can raise anything
            raise InvalidEvent(
                f"space: {short_repr(definition)} is neither a (low, high) range nor a dimension: {exc}",
                field="space",
                value=definition,
            ) from None


class StudyDefined(Event, frozen=True):
    """A study was set up: ``method`` looks for the parameters in ``space`` that maximise or minimise an
    objective (``direction``); ``kernel``, ``acquisition`` and ``n_initial`` (suggestions made before a
    model guides them) tune it, as do its ``options``. ``seed``, when set, replaces the engine seed for
    the study's draws."""

    study: Name
    space: Annotated[dict[str, Dimension], Meta(min_length=1)]
    direction: Literal["maximize", "minimize"] = "maximize"
    method: Name = "gp"
    kernel: Name = "matern52"
    acquisition: Name = "ei"
    n_initial: Annotated[int, Meta(ge=1)] = 10
    seed: int | None = None
    options: dict[str, OptionValue] = {}

    stream_field: ClassVar[str] = "study"


class Suggested(Event, frozen=True):
    """Parameters to evaluate next, suggested for ``study``: the ``index``-th of a batch of ``batch``
    suggestions made together. ``acquisition``, ``mean`` and ``std`` are the acquisition value and the
    model's predicted objective at ``params`` (None while no model guides the study). ``basis`` is the seq
    of the last event of the state the batch was made on, None when it is the event right before the batch
    (see :mod:`rtopt.commands`)."""

    study: Name
    params: dict[str, ParamValue]
    method: Name
    batch: Annotated[int, Meta(ge=1)] = 1
    index: Count = 0
    acquisition: float | None = None
    mean: float | None = None
    std: NonNegative | None = None
    basis: Count | None = None

    stream_field: ClassVar[str] = "study"


class Observed(Event, frozen=True):
    """The objective ``value`` measured at the parameters of the suggestion ``suggestion_id``."""

    study: Name
    suggestion_id: Name
    value: float

    stream_field: ClassVar[str] = "study"

"""Conformance checks for handlers: :func:`check_handler` folds a sequence of events through a handler and
checks the rules every fold must keep, as River's ``check_estimator`` does for estimators.

The checks, in the order they run (the first that fails raises an AssertionError naming it, the handler
and the index of the input event where the difference shows):

- ``outputs validate``: no fold raises, and every event a fold derives validates as the log stores it.
- ``same seed same outputs``: folding the events again with the same seed derives the same events (ids,
  types, streams, times, payloads) and the same state; with ``unrelated_by``, reordering the inputs of
  different keys leaves each key's outputs as they were.
- ``snapshot round trip``: the state after every input encodes, decodes as ``state_type`` to the same
  bytes, and a fold resumed from the decoded state derives what the live fold derived.
- ``derives=False equals live``: a fold with ``ctx.derives`` False (rebuilding from a log that holds its
  outputs already) changes the state exactly as the live fold does, event by event.
- ``rebuild equals live``: the log written live (inputs and derived events) is stored in an in-memory log
  and read back, payloads decoded from their msgpack bytes, as a restart reads it; folding those rows into
  a fresh state gives the live state after every input. State that hangs on what storage does not keep
  (an object's identity, a value's Python type beyond what its msgpack form holds) fails here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import msgspec

from rtopt.arguments import invalid
from rtopt.errors import InvalidEvent
from rtopt.events import Envelope, Event, HandlerFailed, validate
from rtopt.handler import MAX_CASCADE_DEPTH, Handler, HandlerSlot
from rtopt.ids import ordered_id
from rtopt.rows import envelope_from_row, envelope_row
from rtopt.storage.factory import open_log

OUTPUTS = "outputs validate"
SAME_SEED = "same seed same outputs"
ROUND_TRIP = "snapshot round trip"
DERIVES_FALSE = "derives=False equals live"
REBUILD = "rebuild equals live"
CHECKS = (OUTPUTS, SAME_SEED, ROUND_TRIP, DERIVES_FALSE, REBUILD)

_INPUT_NAMESPACE = b"rtopt/testing/input/"
_RESUME_POINTS = 3  # how many positions a fold is resumed from a decoded snapshot


def check_handler(
    handler: Handler[Any],
    events: Sequence[Event | Envelope[Any]],
    *,
    seed: int = 0,
    unrelated_by: Callable[[Event], Hashable] | None = None,
) -> None:
    """Fold ``events`` (the inputs, in order) through ``handler`` and run every check of :data:`CHECKS`.

    An :class:`~rtopt.events.Event` is recorded at event time equal to its index, with an id made from
    its index; an :class:`~rtopt.events.Envelope` (an input read from a log) keeps its id, stream and time.
    ``unrelated_by`` maps an input to a key: inputs of different keys are unrelated work, so grouping the
    inputs by key (each key's inputs kept in order) must not change what is derived from each of them.
    The same ``handler`` object folds every run, so state kept on it outside ``state`` shows as a difference.

    >>> import msgspec
    >>> from rtopt import Feedback, Handler, handles
    >>> class Count(msgspec.Struct):
    ...     n: int = 0
    >>> class CountFeedback(Handler[Count]):
    ...     name, state_type = "count", Count
    ...     def initial_state(self): return Count()
    ...     @handles(Feedback)
    ...     def _count(self, state, envelope, ctx):
    ...         if ctx.derives:  # wrong: a rebuild must count too
    ...             state.n += 1
    ...         return state, []
    >>> feedback = Feedback(prompt_id="p", variant_id="v", response_time_ms=80.0, success=True, quality_score=0.5)
    >>> check_handler(CountFeedback(), [feedback, feedback])
    Traceback (most recent call last):
    AssertionError: check 'derives=False equals live' failed for handler 'count' at event 0 (Feedback): ...
    """
    inputs = _as_inputs(events)
    name = handler.name
    live = _fold(handler, inputs, seed)
    _check_outputs(name, inputs, live)
    _check_same_seed(handler, inputs, seed, live, unrelated_by)
    _check_round_trip(handler, inputs, seed, live)
    _check_derives_false(handler, inputs, seed, live)
    _check_rebuild(handler, inputs, seed, live)


# --- folding ------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What a fold of the inputs wrote: the log (inputs and derived events, numbered), the index of the input
    each log entry descends from, and the encoded state after each input's cascade."""

    log: list[Envelope[Any]] = field(default_factory=list)
    origin: list[int] = field(default_factory=list)
    states: dict[int, bytes] = field(default_factory=dict)
    derived: dict[int, list[tuple[Any, ...]]] = field(default_factory=dict)

    def outputs(self, index: int) -> list[tuple[Any, ...]]:
        """The events derived from input ``index``, in a form that compares ids, times, streams and payloads."""
        return self.derived.get(index, [])


def _comparable(envelope: Envelope[Any]) -> tuple[Any, ...]:
    payload = msgspec.msgpack.encode(envelope.payload)
    return envelope.id, envelope.type, envelope.stream, envelope.time, envelope.causation_id, payload


def _as_inputs(events: Sequence[Event | Envelope[Any]]) -> list[Envelope[Any]]:
    inputs: list[Envelope[Any]] = []
    for index, item in enumerate(events):
        if isinstance(item, Envelope):
            if not item.is_input:
                raise invalid(f"events[{index}]", item, "a derived event; pass inputs only")
            envelope = item
        elif isinstance(item, Event):
            event_id = ordered_id(index + 1, _INPUT_NAMESPACE, str(index))
            stream = item.default_stream() or "check"
            envelope = Envelope(
                0, event_id, item.tag(), stream, float(index), float(index), None, None, item.schema_version, item
            )
        else:
            raise TypeError(f"events[{index}] = {item!r}: expected an Event or an Envelope")
        try:  # folded as the log gives it back
            envelope = msgspec.structs.replace(envelope, payload=validate(envelope.payload))
        except InvalidEvent as exc:
            raise invalid(f"events[{index}]", item, str(exc)) from None
        inputs.append(envelope)
    return inputs


def _fold(
    handler: Handler[Any],
    inputs: Sequence[Envelope[Any]],
    seed: int,
    *,
    start: int = 0,
    state: Any = None,
    seq: int = 0,
    order: Sequence[int] | None = None,
) -> _Run:
    """Fold ``inputs`` (from index ``start``, or in ``order``) live, each with everything derived from it,
    from ``state`` (the initial state if None) after ``seq`` log entries."""
    slot = HandlerSlot(handler, seed)
    if state is not None:
        slot.state = state
    run = _Run()
    for index in range(start, len(inputs)) if order is None else order:
        batch = [msgspec.structs.replace(inputs[index], seq=seq + 1)]
        for _ in range(MAX_CASCADE_DEPTH):  # as deep as the engine lets events derive from each other
            run.log.extend(batch)
            run.origin.extend([index] * len(batch))
            seq += len(batch)
            derived = slot.fold_batch(batch)
            batch = [item.envelope(seq + i, item.cause.time) for i, item in enumerate(derived, start=1)]
            if not batch:
                break
            run.derived.setdefault(index, []).extend(_comparable(envelope) for envelope in batch)
        if batch:
            _fail(OUTPUTS, handler.name, index, inputs, f"derived events kept deriving past depth {MAX_CASCADE_DEPTH}")
        run.states[index] = _encode(handler.name, slot.state, index, inputs)
    return run


def _encode(name: str, state: Any, index: int, inputs: Sequence[Envelope[Any]]) -> bytes:
    try:
        return msgspec.msgpack.encode(state)
    except (TypeError, msgspec.EncodeError) as exc:
        _fail(ROUND_TRIP, name, index, inputs, f"the state does not encode: {exc}")


def _fail(check: str, name: str, index: int, inputs: Sequence[Envelope[Any]], detail: str) -> NoReturn:
    raise AssertionError(
        f"check {check!r} failed for handler {name!r} at event {index} ({inputs[index].type}): {detail}"
    )


def _first_difference(
    name: str, check: str, inputs: Sequence[Envelope[Any]], live: _Run, other: _Run, indices: Sequence[int]
) -> None:
    """Fail ``check`` at the first input of ``indices`` whose outputs or state differ between the runs."""
    for index in indices:
        expected, got = live.outputs(index), other.outputs(index)
        if expected != got:
            _fail(check, name, index, inputs, f"derived {_describe(got)}, live derived {_describe(expected)}")
        if other.states[index] != live.states[index]:
            _fail(check, name, index, inputs, "the state after it differs from the live state")


def _describe(outputs: list[tuple[Any, ...]]) -> str:
    return "[" + ", ".join(f"{kind} {msgspec.msgpack.decode(payload)}" for _, kind, *_, payload in outputs) + "]"


# --- the checks ---------------------------------------------------------------------------------------


def _check_outputs(name: str, inputs: Sequence[Envelope[Any]], live: _Run) -> None:
    for envelope, index in zip(live.log, live.origin, strict=True):
        failed = envelope.payload
        if isinstance(failed, HandlerFailed) and failed.handler == name:
            _fail(OUTPUTS, name, index, inputs, f"{failed.error_type}: {failed.message} (folding {failed.event_type})")


def _check_same_seed(
    handler: Handler[Any],
    inputs: Sequence[Envelope[Any]],
    seed: int,
    live: _Run,
    unrelated_by: Callable[[Event], Hashable] | None,
) -> None:
    name = handler.name
    _first_difference(name, SAME_SEED, inputs, live, _fold(handler, inputs, seed), range(len(inputs)))
    if unrelated_by is None:
        return
    keys = [unrelated_by(envelope.payload) for envelope in inputs]
    first_seen = {key: position for position, key in reversed(list(enumerate(keys)))}
    order = sorted(range(len(inputs)), key=lambda index: first_seen[keys[index]])
    grouped = _fold(handler, inputs, seed, order=order)
    for index in range(len(inputs)):
        expected, got = live.outputs(index), grouped.outputs(index)
        if expected != got:
            detail = f"with the inputs grouped by key, derived {_describe(got)}; in order, {_describe(expected)}"
            _fail(SAME_SEED, name, index, inputs, detail)


def _check_round_trip(handler: Handler[Any], inputs: Sequence[Envelope[Any]], seed: int, live: _Run) -> None:
    name, decoded = handler.name, {}
    for index, blob in live.states.items():
        try:
            decoded[index] = msgspec.msgpack.decode(blob, type=handler.state_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            _fail(ROUND_TRIP, name, index, inputs, f"the state does not decode as {handler.state_type!r}: {exc}")
        if msgspec.msgpack.encode(decoded[index]) != blob:
            _fail(ROUND_TRIP, name, index, inputs, "the decoded state encodes to other bytes than the state")
    last = len(inputs) - 1
    for resumed_after in sorted({last * k // (_RESUME_POINTS + 1) for k in range(1, _RESUME_POINTS + 1)}):
        if resumed_after >= last:
            continue
        seq = live.origin.index(resumed_after + 1)
        resumed = _fold(handler, inputs, seed, start=resumed_after + 1, state=decoded[resumed_after], seq=seq)
        for index in range(resumed_after + 1, len(inputs)):
            expected, got = live.outputs(index), resumed.outputs(index)
            if expected != got or resumed.states[index] != live.states[index]:
                what = f"derived {_describe(got)}, live derived {_describe(expected)}" if expected != got else "state"
                detail = f"resumed from the snapshot after event {resumed_after}, the fold differs from live: {what}"
                _fail(ROUND_TRIP, name, index, inputs, detail)


def _check_derives_false(handler: Handler[Any], inputs: Sequence[Envelope[Any]], seed: int, live: _Run) -> None:
    replaying, rebuilding = HandlerSlot(handler, seed), HandlerSlot(handler, seed)
    for envelope, index in zip(live.log, live.origin, strict=True):
        rebuilding.state = copy.deepcopy(replaying.state)
        replaying.fold_batch([envelope])
        rebuilding.fold_batch([envelope], keep=False)
        name = handler.name
        if _encode(name, rebuilding.state, index, inputs) != _encode(name, replaying.state, index, inputs):
            what = "input" if envelope.is_input else f"derived {envelope.type} (seq {envelope.seq})"
            _fail(DERIVES_FALSE, name, index, inputs, f"folding its {what} with derives=False leaves another state")


def _stored(log: Sequence[Envelope[Any]]) -> list[Envelope[Any]]:
    """``log`` as a log gives it back: appended to an in-memory log and read again from its rows."""
    store = open_log(":memory:")
    try:
        store.append([envelope_row(envelope) for envelope in log])
        return [envelope_from_row(row) for row in store.rows()]
    finally:
        store.close()


def _check_rebuild(handler: Handler[Any], inputs: Sequence[Envelope[Any]], seed: int, live: _Run) -> None:
    slot = HandlerSlot(handler, seed)
    stored = _stored(live.log)
    position = 0
    for index in range(len(inputs)):
        end = position
        while end < len(live.log) and live.origin[end] == index:
            end += 1
        slot.fold_batch(stored[position:end], keep=False)
        position = end
        if _encode(handler.name, slot.state, index, inputs) != live.states[index]:
            _fail(REBUILD, handler.name, index, inputs, "the state rebuilt from the log differs from the live state")

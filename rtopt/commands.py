"""Commands: requests that handlers answer with events the engine records (decisions, suggestions).

A command has a name (``decide``, ``suggest``), a target a definition event sets up (an experiment, a
study) and ways of answering (policies, methods). A handler that answers commands is an :class:`Answerer`:
it declares the ways it runs, says which targets it knows, and answers a request from its state without
changing it, returning the events to record. The engine routes each request to the handler that knows its
target and records the answer before returning it, every event with the next input id and its own id as
correlation id; the folds then learn from the recorded events as from any other. Since an answer depends
only on the state, the event time and the id it is recorded under, replay re-makes it from the request the
recorded answer tells (:meth:`Command.request_of`), and verify compares the two.

An answer is made on the state the engine holds when it is asked, before the commit takes the log's write
lock, so that processes sharing a log make theirs at the same time. When other processes' events are
appended between that state and the answer, each event of the answer records the seq of the state's last
event as its ``basis`` (None: the event right before the answer), and verify re-makes it on the state at
that seq.

Adding a command: a :class:`Command` subclass in :data:`COMMANDS`, a thin engine method that checks its
arguments and asks, and handlers that answer it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast, runtime_checkable

import msgspec

from rtopt.errors import InvalidEvent, RtoptError
from rtopt.events import Decision, Envelope, Event, ExperimentDefined, StudyDefined, Suggested
from rtopt.handler import Context, HandlerSlot

Q = TypeVar("Q")


class Request(msgspec.Struct, frozen=True):
    """What a caller asks of ``decide`` for one request: its feature vector (``context``), the arms it can
    take (``available``, None for every active arm), the unit it is for (a user or session id, which
    fixed-allocation experiments hash to keep each unit on one arm) and how many arms it shows at once
    (``slots``: a ranked slate, each slot chosen with the policy's own exploration)."""

    context: dict[str, float] | None = None
    available: list[str] | None = None
    unit: str | None = None
    slots: int = 1


class SuggestRequest(msgspec.Struct, frozen=True):
    """What a caller asks of ``suggest``: ``n`` parameter sets to evaluate together."""

    n: int = 1


class Command(Generic[Q]):
    """A kind of command: the engine method that asks it (``name``), the event type that defines its targets
    (``defines``) and the one each event of an answer is (``makes``), the fields both name the target and
    the way of answering by (``target``, ``way``), and what one event of an answer is called (``noun``).

    A recorded answer tells the request it answered, which replay asks again:

    >>> recorded = Decision(experiment="g", arm="a", policy="ucb1", propensity=0.5, candidates=["a", "b"], unit="u")
    >>> DECIDE.request_of(recorded)
    Request(context=None, available=['a', 'b'], unit='u', slots=1)
    """

    name: ClassVar[str]
    target: ClassVar[str]
    way: ClassVar[str]
    noun: ClassVar[str]
    defines: ClassVar[type[Event]]
    makes: ClassVar[type[Event]]

    def request_of(self, first: Any) -> Q:
        """The request that the recorded answer opened by the event ``first`` answered."""
        raise NotImplementedError

    def size(self, request: Q) -> int:
        """How many events the answer to ``request`` holds."""
        return 1

    def position(self, made: Any) -> int:
        """The place of the event ``made`` in its answer."""
        return 0

    def basis(self, made: Any) -> int | None:
        """The seq of the last event of the state the answer holding ``made`` was made on, if it is older than
        the event before the answer."""
        return cast(int | None, made.basis)

    def unit(self, made: Any) -> str | None:
        """The unit (user or session) the answer was made for, if a way of answering may depend on it."""
        return None

    def definition_problem(self, definition: Any) -> InvalidEvent | None:
        """What makes ``definition`` unfit beyond its name and way, which the engine checks itself."""
        return None


class Decide(Command[Request]):
    """``Engine.decide``: choose an arm (or a slate) of an experiment for one request."""

    name = "decide"
    target = "experiment"
    way = "policy"
    noun = "decision"
    defines = ExperimentDefined
    makes = Decision

    def request_of(self, first: Decision) -> Request:
        return Request(
            context=first.context, available=first.candidates or None, unit=first.unit, slots=max(len(first.slate), 1)
        )

    def unit(self, made: Decision) -> str | None:
        return made.unit

    def definition_problem(self, definition: ExperimentDefined) -> InvalidEvent | None:
        arms = definition.arms
        repeated = sorted({arm for arm in arms if arms.count(arm) > 1})
        if repeated:
            return InvalidEvent(f"arms = {arms!r}: {repeated} appear more than once", field="arms", value=arms)
        return None


class Suggest(Command[SuggestRequest]):
    """``Engine.suggest``: parameter sets of a study to evaluate together."""

    name = "suggest"
    target = "study"
    way = "method"
    noun = "suggestion"
    defines = StudyDefined
    makes = Suggested

    def request_of(self, first: Suggested) -> SuggestRequest:
        return SuggestRequest(n=first.batch)

    def size(self, request: SuggestRequest) -> int:
        return request.n

    def position(self, made: Suggested) -> int:
        return made.index


DECIDE = Decide()
SUGGEST = Suggest()
COMMANDS: tuple[Command[Any], ...] = (DECIDE, SUGGEST)


@runtime_checkable
class Answerer(Protocol):
    """A handler that also answers commands, for the targets defined with one of its ways.

    >>> class Fixed:
    ...     answers = {"suggest": ("fixed",)}
    ...     def knows(self, state, command, target): return True
    ...     def answer(self, state, command, target, ctx, request): return []
    ...     def settled(self, state, command, answer_id): return False
    >>> isinstance(Fixed(), Answerer)
    True
    """

    answers: ClassVar[Mapping[str, Collection[str]]]
    """The ways (policies, methods) this handler runs, by command name."""

    def knows(self, state: Any, command: str, target: str) -> bool:
        """True if ``target`` was defined for one of this handler's ways of answering ``command``."""

    def answer(self, state: Any, command: str, target: str, ctx: Context, request: Any) -> Sequence[Event]:
        """Answer ``request`` for ``target``, reading but not changing ``state``; the i-th event returned is
        recorded with the i-th input id from ``ctx.event_id`` on. Raises InvalidEvent for a request the
        target cannot answer now."""

    def settled(self, state: Any, command: str, answer_id: str) -> bool:
        """True if the answer event ``answer_id`` has its outcome already, so that the engine refuses
        another (``tell``)."""


def command_of(event: Event) -> Command[Any] | None:
    """The command whose answers are events of the type of ``event``, if any."""
    return next((command for command in COMMANDS if isinstance(event, command.makes)), None)


def _not_run(field: str, value: str, known: list[str]) -> InvalidEvent:
    return InvalidEvent(
        f"{field} = {value!r}: no registered handler runs it (known: {known})", field=field, value=value
    )


class Commands:
    """The registered handlers that answer commands: routes a request to the one that knows its target,
    screens the events that define targets or record answers, and re-makes recorded answers."""

    def __init__(self) -> None:
        self._answerers: list[tuple[HandlerSlot, Answerer]] = []

    def add(self, slot: HandlerSlot) -> None:
        """Route commands to ``slot`` too, if its handler answers any."""
        if isinstance(slot.handler, Answerer):
            self._answerers.append((slot, cast(Answerer, slot.handler)))

    def route(self, command: Command[Any], target: str) -> HandlerSlot | None:
        """The slot of the handler that answers ``command`` for ``target``."""
        name = command.name
        for slot, handler in self._answerers:
            if name in handler.answers and handler.knows(slot.state, name, target):
                return slot
        return None

    def ask(self, slot: HandlerSlot, command: Command[Q], target: str, ctx: Context, request: Q) -> list[Event]:
        """The answer of ``slot``'s handler to ``request``."""
        return list(cast(Answerer, slot.handler).answer(slot.state, command.name, target, ctx, request))

    def settled(self, command: Command[Any], target: str, answer_id: str) -> bool:
        """True if the answer event ``answer_id`` for ``target`` has its outcome already."""
        slot = self.route(command, target)
        return slot is not None and cast(Answerer, slot.handler).settled(slot.state, command.name, answer_id)

    def ways(self, command: Command[Any]) -> list[str] | None:
        """The ways of answering ``command`` that registered handlers run (None if none answers it)."""
        found = [handler.answers[command.name] for _, handler in self._answerers if command.name in handler.answers]
        return [way for ways in found for way in ways] if found else None

    def runs(self, command: Command[Any], way: str) -> bool:
        """True if a registered handler answers ``command`` in ``way``."""
        return way in (self.ways(command) or ())

    def remake(self, first: Envelope[Any], command: Command[Any], seed: int) -> list[Event]:
        """Answer again the request of the recorded answer that ``first`` opened, on the current state."""
        target = getattr(first.payload, command.target)
        slot = self.route(command, target)
        if slot is None:
            raise RtoptError(f"seq {first.seq}: no handler knows {command.target} {target!r}")
        return self.ask(slot, command, target, Context(first.time, first.id, seed), command.request_of(first.payload))

    @staticmethod
    def definition(event: Event) -> tuple[str, str] | None:
        """(command name, target) that ``event`` defines, if it is a definition."""
        for command in COMMANDS:
            if isinstance(event, command.defines):
                return command.name, getattr(event, command.target)
        return None

    def screen(self, event: Event, defined: Sequence[set[tuple[str, str]]]) -> InvalidEvent | None:
        """Why ``event``, published as an input, must be refused, if it must: a definition of a target that
        is defined already (or in one of the ``defined`` sets), or whose way no handler runs; an answer
        that a command makes, published instead."""
        for command in COMMANDS:
            if isinstance(event, command.makes):
                way = getattr(event, command.way)
                if self.runs(command, way):
                    made_by = f"its {command.noun}s are made by engine.{command.name}, not published"
                    return InvalidEvent(
                        f"{command.way} = {way!r}: {made_by}",
                        field=command.way,
                        value=way,
                    )
            elif isinstance(event, command.defines):
                known = self.ways(command)
                if known is None:  # no handler answers the command: nothing to check the definition against
                    return None
                target, way = getattr(event, command.target), getattr(event, command.way)
                if any((command.name, target) in names for names in defined) or self.route(command, target):
                    return InvalidEvent(
                        f"{command.target} = {target!r}: already defined", field=command.target, value=target
                    )
                problem = command.definition_problem(event)
                if problem is None and way not in known:
                    problem = _not_run(command.way, way, sorted(known))
                return problem
        return None

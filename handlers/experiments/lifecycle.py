"""The lifecycle of an experiment and the checks that refuse illegal transitions.

::

    draft --Started--> running --Paused--> paused --Resumed--> running
    running | paused --Completed--> completed --Archived--> archived

Decisions on a *draft* or *archived* experiment raise InvalidEvent; a *paused* experiment serves its
control and a *completed* one its winner (the control if none), with propensity 1, outside the test.
"""

from __future__ import annotations

from rtopt.handlers.experiments.events import (
    CANARY_EVENTS,
    DERIVED_ONLY,
    LIFECYCLE_EVENTS,
    CanaryAdvanced,
    CanaryRolledBack,
    ExperimentArchived,
    ExperimentCompleted,
    ExperimentPaused,
    ExperimentResumed,
    ExperimentStarted,
)
from rtopt.handlers.experiments.options import CANARY
from rtopt.handlers.experiments.state import ARCHIVED, COMPLETED, DRAFT, PAUSED, RUNNING, Experiment, ExperimentsState

from rtopt import Event, InvalidEvent


def a(word: str) -> str:
    """``word`` with its indefinite article: "a paused", "an archived"."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


TRANSITIONS: dict[type[Event], tuple[frozenset[str], str, str]] = {
    ExperimentStarted: (frozenset({DRAFT}), RUNNING, "started"),
    ExperimentPaused: (frozenset({RUNNING}), PAUSED, "paused"),
    ExperimentResumed: (frozenset({PAUSED}), RUNNING, "resumed"),
    ExperimentCompleted: (frozenset({RUNNING, PAUSED}), COMPLETED, "completed"),
    ExperimentArchived: (frozenset({COMPLETED}), ARCHIVED, "archived"),
}


def legal(exp: Experiment, event: Event) -> bool:
    """Whether ``event`` (a lifecycle or canary event) changes ``exp`` from where it stands.

    A derived event records a change its fold has already made, so folding it finds nothing to change."""
    if isinstance(event, CanaryAdvanced):
        return (
            exp.policy == CANARY
            and exp.status == RUNNING
            and event.arm == exp.challenger
            and event.step == exp.step + 1
            and event.step <= len(exp.steps)
            and event.share == exp.steps[event.step - 1]
        )
    if isinstance(event, CanaryRolledBack):
        return (
            exp.policy == CANARY and exp.status in (RUNNING, PAUSED) and event.arm == exp.challenger and exp.share > 0.0
        )
    allowed, _, _ = TRANSITIONS[type(event)]
    return exp.status in allowed


def screen_event(state: ExperimentsState, event: Event) -> None:
    """Raise InvalidEvent unless ``event``, published as an input, is a legal step of its experiment."""
    name = type(event).__name__
    if isinstance(event, DERIVED_ONLY):
        raise InvalidEvent(
            f"{name} is derived by the experiments handler from feedback; it cannot be published",
            field="type",
            value=name,
        )
    exp = state.experiments.get(event.experiment)
    if exp is None:
        raise InvalidEvent(
            f"experiment = {event.experiment!r}: no such A/B test or canary", field="experiment", value=event.experiment
        )
    if isinstance(event, LIFECYCLE_EVENTS):
        allowed, _, verb = TRANSITIONS[type(event)]
        if exp.status not in allowed:
            raise InvalidEvent(
                f"experiment = {event.experiment!r}: {a(exp.status)} experiment cannot be {verb} "
                f"(only {a(' or '.join(sorted(allowed)))} one can)",
                field="experiment",
                value=event.experiment,
            )
        winner = getattr(event, "winner", None)
        if winner is not None and winner not in exp.arms:
            raise InvalidEvent(
                f"winner = {winner!r}: not an arm of {event.experiment!r} ({exp.arms})", field="winner", value=winner
            )
        return
    if isinstance(event, CANARY_EVENTS):
        _screen_canary(exp, event)


def _screen_canary(exp: Experiment, event: CanaryAdvanced | CanaryRolledBack) -> None:
    name = event.experiment
    if exp.policy != CANARY:
        raise InvalidEvent(
            f"experiment = {name!r}: not a canary (policy {exp.policy!r})", field="experiment", value=name
        )
    if event.arm != exp.challenger:
        raise InvalidEvent(
            f"arm = {event.arm!r}: the challenger of {name!r} is {exp.challenger!r}", field="arm", value=event.arm
        )
    if isinstance(event, CanaryRolledBack):
        if exp.status not in (RUNNING, PAUSED) or exp.share == 0.0:
            raise InvalidEvent(
                f"experiment = {name!r}: {a(exp.status)} canary at share {exp.share:g} cannot be rolled back",
                field="experiment",
                value=name,
            )
        return
    if exp.status != RUNNING:
        raise InvalidEvent(
            f"experiment = {name!r}: {a(exp.status)} canary cannot be advanced", field="experiment", value=name
        )
    if event.step != exp.step + 1 or event.step > len(exp.steps) or event.share != exp.steps[event.step - 1]:
        expected = (
            f"step {exp.step + 1} at share {exp.steps[exp.step]:g}" if exp.step < len(exp.steps) else "no further step"
        )
        raise InvalidEvent(
            f"step = {event.step}, share = {event.share:g}: the next step of {name!r} is {expected}",
            field="step",
            value=event.step,
        )

"""Events of bandit experiments: what a policy learnt, arms changing at run time, and the statistics of an
experiment."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from rtopt import Event
from rtopt.events import Count, Name


class ArmUpdated(Event, frozen=True):
    """A policy learnt ``reward`` for ``arm``; ``posterior`` holds the arm's parameters afterwards and
    ``parts`` what the reward was computed from."""

    experiment: Name
    arm: Name
    reward: float
    pulls: Count
    posterior: dict[str, float]
    decision_id: str | None = None
    parts: dict[str, float] = msgspec.field(default_factory=dict)

    stream_field: ClassVar[str] = "experiment"


class ArmChanged(Event, frozen=True):
    """An arm of an experiment changed at run time (the events below say how)."""

    experiment: Name
    arm: Name
    stream_field: ClassVar[str] = "experiment"


class ArmAdded(ArmChanged, frozen=True):
    """A new arm joins a running experiment."""


class ArmPaused(ArmChanged, frozen=True):
    """An arm stops being chosen until it is resumed; feedback on its past decisions is still learnt."""


class ArmResumed(ArmChanged, frozen=True):
    """A paused arm can be chosen again."""


class ArmRetired(ArmChanged, frozen=True):
    """An arm leaves the experiment for good."""


class ArmSummary(msgspec.Struct, frozen=True):
    """One arm in an experiment's statistics: decisions, rewards learnt, mean reward with a 95 % credible
    interval, and the probability that it is the best arm (None before its first reward)."""

    status: str
    pulls: Count
    rewards: Count
    mean: float | None
    low: float | None
    high: float | None
    p_best: Annotated[float, Meta(ge=0.0, le=1.0)]


class ExperimentStats(Event, frozen=True):
    """Where an experiment stands: per-arm statistics and the share of decisions that explored."""

    experiment: Name
    decisions: Count
    rewards: Count
    exploration_rate: Annotated[float, Meta(ge=0.0, le=1.0)]
    arms: dict[str, ArmSummary]
    stream_field: ClassVar[str] = "experiment"


class PolicyStateImported(Event, frozen=True):
    """Arms' statistics brought into an experiment from JSON (a warm start, or a policy moved between logs).

    ``arms`` is the JSON of ``{arm: ArmState}`` as :func:`rtopt.handlers.bandits.export_policy_state` writes it.
    """

    experiment: Name
    arms: str
    stream_field: ClassVar[str] = "experiment"


class EvidenceDiscounted(Event, frozen=True):
    """What an experiment's arms have learnt is scaled by ``factor`` (0 forgets it all), so the policy explores
    again: the response to a drift or a degradation (``reason``). An experiment with a sliding window forgets
    all its rewards whatever the factor (its window could not take out rewards already shrunk)."""

    experiment: Name
    factor: Annotated[float, Meta(ge=0.0, lt=1.0)]
    reason: str = ""
    stream_field: ClassVar[str] = "experiment"

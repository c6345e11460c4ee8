"""The options of a bandit experiment, checked against the policy that runs it."""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
from msgspec import Meta
from rtopt.handlers.bandits.rewards import REWARD_OPTIONS, RewardOptions
from rtopt.handlers.options import typed_options

from rtopt import ExperimentDefined, InvalidEvent

Positive = Annotated[float, Meta(gt=0.0)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]

CONTEXTUAL = ("linucb", "lin_thompson")
POLICY_OPTIONS: dict[str, frozenset[str]] = {
    "epsilon_greedy": frozenset({"epsilon", "epsilon_decay"}),
    "ucb1": frozenset({"exploration"}),
    "thompson": frozenset({"prior_alpha", "prior_beta", "propensity_draws"}),
    "thompson_gaussian": frozenset({"prior_mean", "prior_kappa", "prior_shape", "prior_scale", "propensity_draws"}),
    "softmax": frozenset({"temperature"}),
    "linucb": frozenset({"features", "alpha", "ridge"}),
    "lin_thompson": frozenset({"features", "scale", "ridge", "propensity_draws"}),
}
COMMON_OPTIONS = REWARD_OPTIONS | {"min_samples", "stats_every"}
NON_STATIONARY_OPTIONS = frozenset({"decay", "window", "idle_half_life_s"})


class BanditOptions(RewardOptions, frozen=True, forbid_unknown_fields=True):
    """Every option a bandit experiment can set; each policy reads those that concern it. The reward
    options are those of :class:`~rtopt.handlers.bandits.rewards.RewardOptions`.

    Non-stationary arms (non-contextual policies): ``decay`` discounts past rewards by that factor at each
    new one; ``window`` keeps only the last rewards of the experiment; ``idle_half_life_s`` halves the
    weight of an arm's evidence for every that many seconds of event time without a reward.

    ``min_samples`` decisions go to every arm before the policy's own rule applies (None: 1 for
    epsilon-greedy, UCB1 and softmax, 0 for the Bayesian policies). ``stats_every`` emits an
    ExperimentStats event after every that many learnt rewards (0: never).

    >>> BanditOptions().epsilon, BanditOptions().exploration
    (0.1, 1.4142135623730951)
    """

    min_samples: Annotated[int, Meta(ge=0)] | None = None
    stats_every: Annotated[int, Meta(ge=0)] = 100
    decay: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    window: Annotated[int, Meta(ge=1)] | None = None
    idle_half_life_s: Positive | None = None
    epsilon: Unit = 0.1
    epsilon_decay: NonNegative = 0.0
    exploration: NonNegative = math.sqrt(2.0)
    prior_alpha: Positive = 1.0
    prior_beta: Positive = 1.0
    prior_mean: float = 0.5
    prior_kappa: Positive = 1.0
    prior_shape: Positive = 1.0
    prior_scale: Positive = 0.05
    temperature: Positive = 0.1
    features: list[str] = msgspec.field(default_factory=list)
    alpha: NonNegative = 1.0
    scale: Positive = 0.25
    ridge: Positive = 1.0
    propensity_draws: Annotated[int, Meta(ge=1, le=100_000)] = 256

    def first_samples(self, policy: str) -> int:
        """Decisions every arm gets before the policy's rule applies."""
        if self.min_samples is not None:
            return self.min_samples
        return 1 if policy in ("epsilon_greedy", "ucb1", "softmax") else 0


def parse_options(definition: ExperimentDefined) -> BanditOptions:
    """The typed options of ``definition``; InvalidEvent names an unknown, misplaced or invalid option."""
    policy = definition.policy
    allowed = POLICY_OPTIONS[policy] | COMMON_OPTIONS | (NON_STATIONARY_OPTIONS if policy not in CONTEXTUAL else set())
    options = typed_options(definition, BanditOptions, allowed)
    if policy in CONTEXTUAL and not options.features:
        raise InvalidEvent(
            f"options.features: policy {policy!r} needs the names of the context features it reads",
            field="options.features",
            value=None,
        )
    if options.window is not None and options.decay < 1.0:
        raise InvalidEvent(
            f"options.decay = {options.decay!r}: choose decay or window; together the window would take out "
            "rewards the decay had already shrunk",
            field="options.decay",
            value=options.decay,
        )
    options.check()
    return options

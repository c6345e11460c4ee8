"""The options of a bandit experiment; each policy takes those it names (its ``option_names``) and the
common ones."""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
from msgspec import Meta
from rtopt.handlers.bandits.rewards import REWARD_OPTIONS, RewardOptions

Positive = Annotated[float, Meta(gt=0.0)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]

COMMON_OPTIONS = REWARD_OPTIONS | {"min_samples", "stats_every"}
NON_STATIONARY_OPTIONS = frozenset({"decay", "window", "idle_half_life_s"})


class BanditOptions(RewardOptions, frozen=True, forbid_unknown_fields=True):
    """Every option a bandit experiment can set; each policy reads those that concern it. The reward
    options are those of :class:`~rtopt.handlers.bandits.rewards.RewardOptions`.

    Non-stationary arms (non-contextual policies): ``decay`` discounts past rewards by that factor at each
    new one; ``window`` keeps only the last rewards of the experiment; ``idle_half_life_s`` halves the
    weight of an arm's evidence for every that many seconds of event time without a reward.

    ``min_samples`` decisions go to every arm before the policy's own rule applies (None: the policy's
    ``warm_up``, 1 for epsilon-greedy, UCB1 and softmax, 0 for the Bayesian policies). ``stats_every`` emits an
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

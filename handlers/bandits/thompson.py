"""Thompson sampling with Beta-Bernoulli arms.

Reference: W. R. Thompson (1933), "On the likelihood that one unknown probability exceeds another in view
of the evidence of two samples"; O. Chapelle and L. Li (2011), "An empirical evaluation of Thompson
sampling".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from rtopt import Feedback

Positive = Annotated[float, Meta(gt=0.0)]


class ThompsonOptions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Options of a ``policy="thompson"`` experiment.

    A response counts as a success (reward 1) when the feedback says ``success`` and its quality score is
    at least ``quality_threshold``. ``propensity_draws`` posterior draws estimate each decision's
    propensity (its standard error is at most 0.5 / sqrt(draws)).

    >>> ThompsonOptions().quality_threshold
    0.7
    """

    quality_threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.7
    prior_alpha: Positive = 1.0
    prior_beta: Positive = 1.0
    propensity_draws: Annotated[int, Meta(ge=1, le=100_000)] = 256


class BetaArm(msgspec.Struct):
    """An arm's Beta posterior over its success probability, with its decision and reward counts.

    >>> arm = BetaArm(alpha=1.0, beta=1.0)
    >>> arm.learn(1.0); arm.learn(0.0); arm.learn(1.0)
    >>> arm.alpha, arm.beta, arm.mean
    (3.0, 2.0, 0.6)
    """

    alpha: float
    beta: float
    pulls: int = 0
    rewards: int = 0
    reward_sum: float = 0.0

    @property
    def mean(self) -> float:
        """Posterior mean of the success probability."""
        return self.alpha / (self.alpha + self.beta)

    def learn(self, reward: float) -> None:
        """Fold one reward in [0, 1] into the posterior."""
        self.alpha += reward
        self.beta += 1.0 - reward
        self.rewards += 1
        self.reward_sum += reward

    def posterior(self) -> dict[str, float]:
        """The posterior's parameters, as recorded in ArmUpdated."""
        return {"alpha": self.alpha, "beta": self.beta, "mean": self.mean}


def reward(feedback: Feedback, options: ThompsonOptions) -> float:
    """1.0 for a successful response of sufficient quality, else 0.0."""
    return 1.0 if feedback.success and feedback.quality_score >= options.quality_threshold else 0.0


def choose(arms: Sequence[BetaArm], rng: np.random.Generator, draws: int) -> tuple[int, float]:
    """Index of the arm with the largest posterior draw, and the probability of choosing it.

    The first row of draws makes the choice; all ``draws`` rows estimate its propensity.

    >>> arms = [BetaArm(alpha=1.0, beta=50.0), BetaArm(alpha=50.0, beta=1.0)]
    >>> choose(arms, np.random.default_rng(0), draws=200)
    (1, 1.0)
    """
    alpha = np.fromiter((arm.alpha for arm in arms), float, len(arms))
    beta = np.fromiter((arm.beta for arm in arms), float, len(arms))
    samples = rng.beta(alpha, beta, size=(draws, len(arms)))
    winners = samples.argmax(axis=1)
    chosen = int(winners[0])
    return chosen, float(np.count_nonzero(winners == chosen)) / draws

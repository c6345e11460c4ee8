"""Thompson sampling with a Beta-Bernoulli posterior: the arm whose posterior draw is highest, rewards in
[0, 1] counting as fractional successes.

Reference: O. Chapelle and L. Li (2011), "An empirical evaluation of Thompson sampling".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.policies.base import (
    ArmState,
    Choice,
    Evidence,
    Policy,
    Turn,
    beta_draws,
    choice_by_draws,
    register,
)


@register
class Thompson(Policy):
    """Chooses by the first of ``propensity_draws`` draws from the arms' posteriors; the share of draws the
    chosen arm wins estimates its propensity. Subclasses change the posterior (:meth:`mean_draws`).

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> arms = [ArmState(n=50.0, total=5.0), ArmState(n=50.0, total=45.0)]
    >>> Thompson().choose(arms, Turn(BanditOptions(), Context(0.0, "e1", 0), decisions=100))
    Choice(index=1, propensity=1.0, explored=False)
    """

    name = "thompson"
    option_names = frozenset({"prior_alpha", "prior_beta", "propensity_draws"})

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        evidence = Evidence.of(arms, turn.options, turn.ctx.time)
        draws = self.mean_draws(evidence, turn.options, turn.ctx.rng, turn.options.propensity_draws)
        return choice_by_draws(draws, evidence.greedy)

    def mean_draws(self, evidence: Evidence, options: BanditOptions, rng: np.random.Generator, size: int) -> np.ndarray:
        n, total, _ = evidence.arrays()
        return beta_draws(n, total, options, rng, size)

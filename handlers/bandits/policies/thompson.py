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
    beta_posteriors,
    choice_by_draw,
    register,
)
from rtopt.handlers.bandits.policies.propensity import Posteriors


@register
class Thompson(Policy):
    """Chooses the arm whose draw from its posterior is highest; the propensity is the probability of
    that, computed from the posteriors (:mod:`~rtopt.handlers.bandits.policies.propensity`). Subclasses
    change the posterior: its draws (:meth:`mean_draws`) and its distribution (:meth:`posteriors`).

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> arms = [ArmState(n=50.0, total=5.0), ArmState(n=50.0, total=45.0)]
    >>> choice = Thompson().choose(arms, Turn(BanditOptions(), Context(0.0, "e1", 0), decisions=100))
    >>> choice.index, round(choice.propensity, 9), choice.explored
    (1, 1.0, False)
    >>> even = Thompson().choose([ArmState(), ArmState()], Turn(BanditOptions(), Context(0.0, "e1", 0)))
    >>> round(even.propensity, 9)
    0.5
    """

    name = "thompson"
    option_names = frozenset({"prior_alpha", "prior_beta"})

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        evidence = Evidence.of(arms, turn.options, turn.ctx.time)
        draw = self.mean_draws(evidence, turn.options, turn.ctx.rng, 1)[0]
        return choice_by_draw(draw, self.posteriors(evidence, turn.options), evidence.greedy)

    def mean_draws(self, evidence: Evidence, options: BanditOptions, rng: np.random.Generator, size: int) -> np.ndarray:
        n, total, _ = evidence.arrays()
        return beta_draws(n, total, options, rng, size)

    def posteriors(self, evidence: Evidence, options: BanditOptions) -> Posteriors:
        """The distribution of each arm's draw given its ``evidence``."""
        n, total, _ = evidence.arrays()
        return beta_posteriors(n, total, options)

"""Linear Thompson sampling: the arm whose draw from the posterior of its linear model scores highest in
the request's context.

Reference: S. Agrawal and N. Goyal (2013), "Thompson sampling for contextual bandits with linear payoffs".
"""

from __future__ import annotations

import numpy as np
from rtopt.handlers.bandits.policies.base import Choice, Turn, best_indices, choice_by_draws, register
from rtopt.handlers.bandits.policies.linear import LinearModels, LinearPolicy


@register
class LinThompson(LinearPolicy):
    """Chooses by the first of ``propensity_draws`` draws of each arm's weights, spread by ``scale``; the
    share of draws the chosen arm wins estimates its propensity.

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> options = BanditOptions(features=["bias"], propensity_draws=1_000)
    >>> arms = [ArmState(), ArmState()]
    >>> choice = LinThompson().choose(arms, Turn(options, Context(0.0, "e1", 0), vector=np.ones(1)))
    >>> round(choice.propensity, 1)
    0.5
    """

    name = "lin_thompson"
    option_names = frozenset({"features", "scale", "ridge", "propensity_draws"})

    def select_linear(self, models: LinearModels, vector: np.ndarray, turn: Turn) -> Choice:
        draws, rng = turn.options.propensity_draws, turn.ctx.rng
        scores = np.empty((draws, len(models.thetas)))
        for i, (theta, a_inv) in enumerate(zip(models.thetas, models.inverses, strict=True)):
            # every arm draws its own noise: shared draws would correlate the arms' samples
            spread = turn.options.scale * np.linalg.cholesky(a_inv + 1e-12 * np.eye(len(vector)))
            samples = theta + rng.standard_normal((draws, len(vector))) @ spread.T
            scores[:, i] = samples @ vector
        return choice_by_draws(scores, best_indices(models.estimates))

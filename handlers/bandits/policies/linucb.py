"""LinUCB: the arm with the highest upper confidence bound on its linear estimate in the request's context.

Reference: L. Li, W. Chu, J. Langford and R. E. Schapire (2010), "A contextual-bandit approach to
personalized news article recommendation".
"""

from __future__ import annotations

import math

import numpy as np
from rtopt.handlers.bandits.policies.base import Choice, Turn, best_indices, register, tie_break
from rtopt.handlers.bandits.policies.linear import LinearModels, LinearPolicy


@register
class LinUCB(LinearPolicy):
    """Scores each arm ``estimate + alpha * sqrt(x' A^-1 x)`` for the context vector ``x``.

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> options = BanditOptions(features=["bias"])
    >>> LinUCB().choose([ArmState(), ArmState()], Turn(options, Context(0.0, "e1", 0), vector=np.ones(1)))
    Choice(index=1, propensity=0.5, explored=False)
    """

    name = "linucb"
    option_names = frozenset({"features", "alpha", "ridge"})

    def select_linear(self, models: LinearModels, vector: np.ndarray, turn: Turn) -> Choice:
        widths = np.array([math.sqrt(max(float(vector @ a_inv @ vector), 0.0)) for a_inv in models.inverses])
        best = best_indices(models.estimates + turn.options.alpha * widths)
        chosen = tie_break(turn.ctx, best)
        return Choice(chosen, 1.0 / len(best), chosen not in best_indices(models.estimates))

"""Linear Thompson sampling: the arm whose draw from the posterior of its linear model scores highest in
the request's context.

Reference: S. Agrawal and N. Goyal (2013), "Thompson sampling for contextual bandits with linear payoffs".
"""

from __future__ import annotations

import numpy as np
from rtopt.handlers.bandits.policies.base import Choice, Turn, best_indices, choice_by_draw, register, tie_break
from rtopt.handlers.bandits.policies.linear import LinearModels, LinearPolicy
from rtopt.handlers.bandits.policies.propensity import NormalPosteriors


@register
class LinThompson(LinearPolicy):
    """Draws each arm's weights from Normal(theta, scale^2 A^-1) and chooses the arm whose draw scores
    highest for the context vector x: the score of an arm is Normal(theta . x, scale^2 x' A^-1 x), the
    arms independent, which gives the propensity. A zero context vector scores every arm 0: the choice is
    then a tie among them all.

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> options = BanditOptions(features=["bias"])
    >>> arms = [ArmState(), ArmState()]
    >>> choice = LinThompson().choose(arms, Turn(options, Context(0.0, "e1", 0), vector=np.ones(1)))
    >>> round(choice.propensity, 9)
    0.5
    """

    name = "lin_thompson"
    option_names = frozenset({"features", "scale", "ridge"})

    def select_linear(self, models: LinearModels, vector: np.ndarray, turn: Turn) -> Choice:
        spread = np.array([vector @ a_inv @ vector for a_inv in models.inverses])
        widths = turn.options.scale * np.sqrt(np.maximum(spread, 0.0))
        greedy = best_indices(models.estimates)
        if not (widths > 0.0).all():
            return Choice(tie_break(turn.ctx, greedy), 1.0 / len(greedy), False)
        draw = models.estimates + widths * turn.ctx.rng.standard_normal(len(widths))
        return choice_by_draw(draw, NormalPosteriors(models.estimates, widths), greedy)

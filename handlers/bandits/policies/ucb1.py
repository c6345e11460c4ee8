"""UCB1: the arm with the highest upper confidence bound on its mean reward; with ``decay``, ``window``
or ``idle_half_life_s`` it is the discounted or sliding-window UCB of non-stationary bandits.

References: P. Auer, N. Cesa-Bianchi and P. Fischer (2002), "Finite-time analysis of the multiarmed bandit
problem"; A. Garivier and E. Moulines (2011), "On upper-confidence bound policies for switching bandit
problems".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rtopt.handlers.bandits.policies.base import (
    ArmState,
    Choice,
    Evidence,
    Policy,
    Turn,
    best_indices,
    register,
    tie_break,
)


@register
class UCB1(Policy):
    """Scores each arm ``mean + exploration * sqrt(log(total n) / n)``; ties are broken at random.

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> arms = [ArmState(pulls=10, n=10.0, total=2.0), ArmState(pulls=10, n=10.0, total=8.0)]
    >>> UCB1().choose(arms, Turn(BanditOptions(), Context(time=0.0, event_id="e1", seed=0), decisions=20))
    Choice(index=1, propensity=1.0, explored=False)
    """

    name = "ucb1"
    option_names = frozenset({"exploration"})
    warm_up = 1

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        evidence = Evidence.of(arms, turn.options, turn.ctx.time)
        log_total = math.log(max(math.fsum(evidence.n), 1.0))
        bonus = turn.options.exploration
        scores = [
            m + bonus * math.sqrt(log_total / c) if c > 0 else math.inf
            for c, m in zip(evidence.n, evidence.means, strict=True)
        ]
        best = best_indices(scores)
        chosen = tie_break(turn.ctx, best)
        return Choice(chosen, 1.0 / len(best), chosen not in evidence.greedy)

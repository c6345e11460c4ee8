"""Softmax (Boltzmann) exploration: each arm with probability proportional to exp(mean / temperature),
after every arm has evidence."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

from rtopt.handlers.bandits.policies.base import ArmState, Choice, Evidence, Policy, Turn, register, tie_break


@register
class Softmax(Policy):
    """Arms without evidence first (at random), then a draw by the Boltzmann weights of the means.

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> arms = [ArmState(pulls=5, n=5.0, total=1.0), ArmState(pulls=5, n=5.0, total=4.0)]
    >>> choice = Softmax().choose(arms, Turn(BanditOptions(temperature=0.2), Context(0.0, "e1", 0), decisions=10))
    >>> choice.index, round(choice.propensity, 4)
    (1, 0.9526)
    """

    name = "softmax"
    option_names = frozenset({"temperature"})
    warm_up = 1

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        evidence = Evidence.of(arms, turn.options, turn.ctx.time)
        untried = [i for i, c in enumerate(evidence.n) if c <= 0]
        if untried:
            chosen = tie_break(turn.ctx, untried)
            return Choice(chosen, 1.0 / len(untried), False)
        means = evidence.means
        top = max(means)
        weights = [math.exp((m - top) / turn.options.temperature) for m in means]
        cumulative = list(itertools.accumulate(weights))
        chosen = min(bisect.bisect_right(cumulative, turn.ctx.rng.random() * cumulative[-1]), len(arms) - 1)
        return Choice(chosen, weights[chosen] / cumulative[-1], chosen not in evidence.greedy)

"""Epsilon-greedy: the arm with the best mean reward, or with probability epsilon (which may decay with
the decisions made) any arm at random.

Reference: P. Auer, N. Cesa-Bianchi and P. Fischer (2002), "Finite-time analysis of the multiarmed bandit
problem".
"""

from __future__ import annotations

from collections.abc import Sequence

from rtopt.handlers.bandits.policies.base import ArmState, Choice, Evidence, Policy, Turn, register, tie_break


@register
class EpsilonGreedy(Policy):
    """Explores with probability ``epsilon / (1 + epsilon_decay * decisions)``, else exploits.

    >>> from rtopt import Context
    >>> from rtopt.handlers.bandits import ArmState, BanditOptions
    >>> arms = [ArmState(pulls=5, n=5.0, total=1.0), ArmState(pulls=5, n=5.0, total=4.0)]
    >>> EpsilonGreedy().choose(arms, Turn(BanditOptions(epsilon=0.2), Context(0.0, "e1", 0), decisions=10))
    Choice(index=0, propensity=0.1, explored=True)
    """

    name = "epsilon_greedy"
    option_names = frozenset({"epsilon", "epsilon_decay"})
    warm_up = 1

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        greedy = Evidence.of(arms, turn.options, turn.ctx.time).greedy
        k, rng, options = len(arms), turn.ctx.rng, turn.options
        epsilon = options.epsilon / (1.0 + options.epsilon_decay * turn.decisions)
        chosen = int(rng.integers(k)) if rng.random() < epsilon else tie_break(turn.ctx, greedy)
        in_greedy = chosen in greedy
        propensity = epsilon / k + (1.0 - epsilon) * (1.0 / len(greedy) if in_greedy else 0.0)
        return Choice(chosen, propensity, not in_greedy)

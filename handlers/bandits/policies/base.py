"""What every bandit policy shares: the statistics of an arm, the choice a policy reports, the ``Policy``
base class, and the registry that names every policy.

Every arm keeps additive sufficient statistics (weighted count, sum and sum of squares of its rewards, and
for the linear policies the inverse design matrix and the response vector), so discounting, sliding
windows and idle decay apply the same way to every non-contextual policy. A choice reports its
propensity (the probability the policy had of making it) and whether it explored (chose an arm other
than the one with the best estimate), which off-policy evaluation and the exploration rate need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple, TypeVar

import msgspec
import numpy as np
from rtopt.handlers.bandits.options import COMMON_OPTIONS, NON_STATIONARY_OPTIONS, BanditOptions
from rtopt.handlers.bandits.policies.propensity import BetaPosteriors, Posteriors, win_probability
from rtopt.handlers.options import typed_options

from rtopt import ExperimentDefined, InvalidEvent
from rtopt.handler import Context

ACTIVE, PAUSED, RETIRED = "active", "paused", "retired"
MIN_PROPENSITY = 1e-12
"""The least propensity a choice records: a probability computed below it is within its error of 0, yet
the choice was made, and off-policy evaluation needs a positive one."""


class ArmState(msgspec.Struct):
    """One arm: its status, decision count and reward statistics (weighted by decay and window).

    >>> arm = ArmState()
    >>> arm.add(1.0); arm.add(0.0); arm.add(1.0)
    >>> arm.n, arm.total, round(arm.mean, 3)
    (3.0, 2.0, 0.667)
    """

    status: str = ACTIVE
    pulls: int = 0
    n: float = 0.0
    total: float = 0.0
    squares: float = 0.0
    rewards: int = 0
    reward_sum: float = 0.0
    last_reward_time: float | None = None
    a_inv: list[float] | None = None
    b: list[float] | None = None

    @property
    def mean(self) -> float:
        """Mean reward of the evidence kept (NaN before any)."""
        return self.total / self.n if self.n > 0 else math.nan

    def add(self, reward: float, weight: float = 1.0) -> None:
        """Add (or with a negative weight, remove) one reward."""
        self.n += weight
        self.total += weight * reward
        self.squares += weight * reward * reward
        if self.n < 1e-12:  # removing the last reward: clear rounding residue
            self.n = self.total = self.squares = 0.0

    def scale(self, factor: float) -> None:
        """Discount the evidence by ``factor``."""
        self.n *= factor
        self.total *= factor
        self.squares *= factor


class Choice(msgspec.Struct, frozen=True):
    """The index of the chosen candidate, the probability of that choice, and whether it explored."""

    index: int
    propensity: float
    explored: bool


class Evidence(msgspec.Struct, frozen=True):
    """What the candidates' rewards say: per arm the (n, total, squares) kept, shrunk for the time since
    its last reward when idle decay is on, the mean rewards (+inf for an arm without evidence, so it is
    tried first) and the indices of the arms with the best mean (``greedy``)."""

    n: list[float]
    total: list[float]
    squares: list[float]
    means: list[float]
    greedy: list[int]

    @classmethod
    def of(cls, arms: Sequence[ArmState], options: BanditOptions, now: float) -> Evidence:
        """The evidence of ``arms`` at event time ``now``.

        >>> Evidence.of([ArmState(n=2.0, total=1.0), ArmState()], BanditOptions(), now=0.0).means
        [0.5, inf]
        """
        n = [arm.n for arm in arms]
        total = [arm.total for arm in arms]
        squares = [arm.squares for arm in arms]
        if options.idle_half_life_s is not None:
            half_life = options.idle_half_life_s
            factors = [
                1.0 if arm.last_reward_time is None else 0.5 ** (max(now - arm.last_reward_time, 0.0) / half_life)
                for arm in arms
            ]
            n = [x * f for x, f in zip(n, factors, strict=True)]
            total = [x * f for x, f in zip(total, factors, strict=True)]
            squares = [x * f for x, f in zip(squares, factors, strict=True)]
        means = [t / c if c > 0 else math.inf for c, t in zip(n, total, strict=True)]
        return cls(n, total, squares, means, best_indices(means))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n, total, squares) as arrays."""
        return np.array(self.n, dtype=float), np.array(self.total, dtype=float), np.array(self.squares, dtype=float)


def tie_break(ctx: Context, indices: Sequence[int]) -> int:
    """One of ``indices`` at random: ties are broken by the seeded generator, never by order."""
    return int(indices[0]) if len(indices) == 1 else int(indices[int(ctx.rng.integers(len(indices)))])


def best_indices(scores: Sequence[float] | np.ndarray) -> list[int]:
    """The indices of the highest score (all of them when tied)."""
    top = max(scores)
    return [i for i, score in enumerate(scores) if score == top]


def choice_by_draw(draw: np.ndarray, posteriors: Posteriors, greedy: Sequence[int]) -> Choice:
    """The choice of the arm whose ``draw`` (one per arm, from ``posteriors``) is highest, with the
    probability of that choice (:func:`~rtopt.handlers.bandits.policies.propensity.win_probability`),
    never below MIN_PROPENSITY."""
    chosen = int(draw.argmax())
    propensity = max(win_probability(posteriors, chosen).value, MIN_PROPENSITY)
    return Choice(chosen, propensity, chosen not in greedy)


def beta_posteriors(n: np.ndarray, total: np.ndarray, options: BanditOptions) -> BetaPosteriors:
    """Each arm's Beta posterior of its mean (rewards in [0, 1] as fractional successes)."""
    return BetaPosteriors(options.prior_alpha + np.maximum(total, 0.0), options.prior_beta + np.maximum(n - total, 0.0))


def beta_draws(
    n: np.ndarray, total: np.ndarray, options: BanditOptions, rng: np.random.Generator, draws: int
) -> np.ndarray:
    """Draws of each arm's mean from its Beta posterior (:func:`beta_posteriors`), one row per draw."""
    posteriors = beta_posteriors(n, total, options)
    return rng.beta(posteriors.alpha, posteriors.beta, size=(draws, len(n)))


class Turn(NamedTuple):
    """One decision as a policy sees it: the experiment's ``options``, the event's ``ctx`` (its time, for
    idle decay, and the seeded generator, drawn from only when the policy needs chance), the number of
    ``decisions`` the experiment made before this one, and the ``vector`` of context features a contextual
    policy reads (None for the others)."""

    options: BanditOptions
    ctx: Context
    decisions: int = 0
    vector: np.ndarray | None = None


class Policy:
    """A bandit policy: how it chooses among the candidate arms of a request (with the propensity of its
    choice), what it learns from a reward, and the options it takes.

    A subclass sets ``name``, the names of the :class:`~rtopt.handlers.bandits.options.BanditOptions` it
    reads (``option_names``), whether it reads a context vector (``contextual``) and how many decisions
    every arm gets before its rule applies (``warm_up``, which the ``min_samples`` option overrides); it
    implements :meth:`select`, and :func:`register` makes it a policy experiments can name. It keeps no
    state of its own: everything it learns is in the arms' statistics, which replay rebuilds. It draws
    chance from ``turn.ctx.rng`` only, so the same seed makes the same choices.

    >>> class FirstArm(Policy):
    ...     name = "first_arm"
    ...     def select(self, arms, turn):
    ...         return Choice(0, 1.0, False)
    >>> FirstArm().choose([ArmState(pulls=1), ArmState(pulls=1)], Turn(BanditOptions(), Context(0.0, "e", 0)))
    Choice(index=0, propensity=1.0, explored=False)
    """

    name: ClassVar[str]
    option_names: ClassVar[frozenset[str]] = frozenset()
    contextual: ClassVar[bool] = False
    warm_up: ClassVar[int] = 0

    def choose(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        """Choose one of ``arms`` (the candidates of one decision): uniformly among the arms still short of
        their first decisions, else by the policy's rule (:meth:`select`)."""
        first = self.warm_up if turn.options.min_samples is None else turn.options.min_samples
        short = [i for i, arm in enumerate(arms) if arm.pulls < first]
        if short:
            return Choice(tie_break(turn.ctx, short), 1.0 / len(short), False)
        return self.select(arms, turn)

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        """The policy's rule: choose one of ``arms``."""
        raise NotImplementedError

    def learn(self, arm: ArmState, reward: float, options: BanditOptions, vector: np.ndarray | None) -> None:
        """Learn one ``reward`` of ``arm`` (``vector``: the context features of its decision)."""
        arm.add(reward)

    def discount(self, arm: ArmState, factor: float, options: BanditOptions) -> None:
        """Scale what ``arm`` has learnt by ``factor``."""
        arm.scale(factor)

    def mean_draws(self, evidence: Evidence, options: BanditOptions, rng: np.random.Generator, size: int) -> np.ndarray:
        """``size`` rows of draws of each arm's mean reward given its ``evidence``: by default from a Beta
        posterior of the rewards (in [0, 1]) with a flat prior."""
        n, total, _ = evidence.arrays()
        return beta_draws(n, total, BanditOptions(), rng, size)

    def posterior_draws(
        self, arms: Sequence[ArmState], options: BanditOptions, rng: np.random.Generator, draws: int, now: float
    ) -> np.ndarray:
        """Draws of each arm's mean reward at event time ``now`` (the experiment's statistics)."""
        return self.mean_draws(Evidence.of(arms, options, now), options, rng, draws)

    def check(self, options: BanditOptions) -> None:
        """Raise InvalidEvent if ``options`` do not suit this policy (beyond each option's own range)."""


PolicyType = TypeVar("PolicyType", bound=type[Policy])

POLICIES: dict[str, Policy] = {}
"""Every policy an experiment can name, by name, in the order they were registered."""


def register(cls: PolicyType) -> PolicyType:
    """Register the policy class ``cls`` under its ``name`` (a class decorator).

    >>> list(POLICIES)
    ['epsilon_greedy', 'lin_thompson', 'linucb', 'softmax', 'thompson', 'thompson_gaussian', 'ucb1']
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"policy class {cls.__qualname__}: needs a name")
    if name in POLICIES:
        raise ValueError(f"policy {name!r}: already registered ({type(POLICIES[name]).__qualname__})")
    unknown = sorted(cls.option_names - set(BanditOptions.__struct_fields__))
    if unknown:
        raise ValueError(f"policy {name!r}: option_names {unknown} are not options of BanditOptions")
    POLICIES[name] = cls()
    return cls


def parse_options(definition: ExperimentDefined) -> BanditOptions:
    """The typed options of ``definition``, checked against its policy; InvalidEvent names an unknown,
    misplaced or invalid option."""
    rule = POLICIES[definition.policy]
    allowed = rule.option_names | COMMON_OPTIONS | (frozenset() if rule.contextual else NON_STATIONARY_OPTIONS)
    options = typed_options(definition, BanditOptions, allowed)
    rule.check(options)
    if options.window is not None and options.decay < 1.0:
        raise InvalidEvent(
            f"options.decay = {options.decay!r}: choose decay or window; together the window would take out "
            "rewards the decay had already shrunk",
            field="options.decay",
            value=options.decay,
        )
    options.check()
    return options

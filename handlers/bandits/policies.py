"""The bandit family: how each policy chooses among arms, from sufficient statistics of their rewards.

Every arm keeps additive sufficient statistics (weighted count, sum and sum of squares of its rewards, and
for the linear policies the inverse design matrix and the response vector), so discounting, sliding
windows and idle decay apply the same way to every non-contextual policy. A choice reports its
propensity (the probability the policy had of making it) and whether it explored (chose an arm other
than the one with the best estimate), which off-policy evaluation and the exploration rate need.

References: P. Auer, N. Cesa-Bianchi and P. Fischer (2002), "Finite-time analysis of the multiarmed bandit
problem" (UCB1, epsilon-greedy); A. Garivier and E. Moulines (2011), "On upper-confidence bound policies
for switching bandit problems" (discounted and sliding-window UCB); O. Chapelle and L. Li (2011), "An
empirical evaluation of Thompson sampling"; L. Li, W. Chu, J. Langford and R. E. Schapire (2010), "A
contextual-bandit approach to personalized news article recommendation" (LinUCB); S. Agrawal and N. Goyal
(2013), "Thompson sampling for contextual bandits with linear payoffs".
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

import msgspec
import numpy as np
from rtopt.handlers.bandits.options import BanditOptions

from rtopt.handler import Context

ACTIVE, PAUSED, RETIRED = "active", "paused", "retired"


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


def evidence_lists(arms: Sequence[ArmState], options: BanditOptions, now: float) -> tuple[list[float], ...]:
    """(n, total, squares) of each arm, shrunk for the time since its last reward when idle decay is on."""
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
    return n, total, squares


def evidence(arms: Sequence[ArmState], options: BanditOptions, now: float) -> tuple[np.ndarray, ...]:
    """:func:`evidence_lists` as arrays."""
    return tuple(np.array(values, dtype=float) for values in evidence_lists(arms, options, now))


def _pick(ctx: Context, indices: Sequence[int]) -> int:
    """One of ``indices`` at random: ties are broken by the seeded generator, never by order."""
    return int(indices[0]) if len(indices) == 1 else int(indices[int(ctx.rng.integers(len(indices)))])


def _best(scores: Sequence[float]) -> list[int]:
    top = max(scores)
    return [i for i, score in enumerate(scores) if score == top]


def _means(n: Sequence[float], total: Sequence[float]) -> list[float]:
    """Mean rewards, +inf for arms without evidence (they are tried first)."""
    return [t / c if c > 0 else math.inf for c, t in zip(n, total, strict=True)]


def _by_draws(draws: np.ndarray, greedy: Sequence[int]) -> Choice:
    """A choice by the first row of posterior draws; the rows together estimate its propensity."""
    winners = draws.argmax(axis=1)
    chosen = int(winners[0])
    propensity = float(np.count_nonzero(winners == chosen)) / len(draws)
    return Choice(chosen, propensity, chosen not in greedy)


def beta_draws(
    n: np.ndarray, total: np.ndarray, options: BanditOptions, rng: np.random.Generator, draws: int
) -> np.ndarray:
    """Draws of each arm's mean from its Beta posterior (rewards in [0, 1] as fractional successes)."""
    alpha = options.prior_alpha + np.maximum(total, 0.0)
    beta = options.prior_beta + np.maximum(n - total, 0.0)
    return rng.beta(alpha, beta, size=(draws, len(n)))


def gaussian_draws(
    n: np.ndarray, total: np.ndarray, squares: np.ndarray, options: BanditOptions, rng: np.random.Generator, draws: int
) -> np.ndarray:
    """Draws of each arm's mean from its Normal-Inverse-Gamma posterior: the uncertainty of the mean,
    which shrinks as evidence grows (not the spread of the rewards, which does not)."""
    m0, k0, a0, b0 = options.prior_mean, options.prior_kappa, options.prior_shape, options.prior_scale
    safe_n = np.where(n > 0, n, 1.0)
    mean = np.where(n > 0, total / safe_n, m0)
    within = np.where(n > 0, np.maximum(squares - total * total / safe_n, 0.0), 0.0)
    kappa = k0 + n
    centre = (k0 * m0 + total) / kappa
    shape = a0 + n / 2.0
    scale = b0 + 0.5 * within + k0 * n * (mean - m0) ** 2 / (2.0 * kappa)
    variance = scale / rng.gamma(shape, 1.0, size=(draws, len(n)))
    return centre + rng.standard_normal((draws, len(n))) * np.sqrt(variance / kappa)


def choose(
    policy: str,
    arms: Sequence[ArmState],
    options: BanditOptions,
    ctx: Context,
    *,
    decisions: int,
    context: np.ndarray | None = None,
) -> Choice:
    """Let ``policy`` choose one of ``arms`` (the candidates of one decision).

    ``ctx`` gives the event time (idle decay) and the seeded generator, drawn from only when the policy
    needs chance; ``decisions`` is the number of decisions the experiment made before this one (epsilon
    decay); ``context`` is the feature vector of the linear policies.

    >>> arms = [ArmState(n=10.0, total=2.0), ArmState(n=10.0, total=8.0)]
    >>> choose("ucb1", arms, BanditOptions(), Context(time=0.0, event_id="e1", seed=0), decisions=20)
    Choice(index=1, propensity=1.0, explored=False)
    """
    n, total, squares = evidence_lists(arms, options, ctx.time)
    means = _means(n, total)
    greedy = _best(means)
    k = len(arms)
    if policy == "epsilon_greedy":
        rng = ctx.rng
        epsilon = options.epsilon / (1.0 + options.epsilon_decay * decisions)
        chosen = int(rng.integers(k)) if rng.random() < epsilon else _pick(ctx, greedy)
        in_greedy = chosen in greedy
        propensity = epsilon / k + (1.0 - epsilon) * (1.0 / len(greedy) if in_greedy else 0.0)
        return Choice(chosen, propensity, not in_greedy)
    if policy == "ucb1":
        log_total = math.log(max(math.fsum(n), 1.0))
        bonus = options.exploration
        scores = [m + bonus * math.sqrt(log_total / c) if c > 0 else math.inf for c, m in zip(n, means, strict=True)]
        best = _best(scores)
        chosen = _pick(ctx, best)
        return Choice(chosen, 1.0 / len(best), chosen not in greedy)
    if policy == "softmax":
        untried = [i for i, c in enumerate(n) if c <= 0]
        if untried:
            chosen = _pick(ctx, untried)
            return Choice(chosen, 1.0 / len(untried), False)
        top = max(means)
        weights = [math.exp((m - top) / options.temperature) for m in means]
        cumulative = list(itertools.accumulate(weights))
        chosen = min(bisect.bisect_right(cumulative, ctx.rng.random() * cumulative[-1]), k - 1)
        return Choice(chosen, weights[chosen] / cumulative[-1], chosen not in greedy)
    if policy == "thompson":
        return _by_draws(beta_draws(np.array(n), np.array(total), options, ctx.rng, options.propensity_draws), greedy)
    if policy == "thompson_gaussian":
        evidence_arrays = (np.array(values) for values in (n, total, squares))
        draws = gaussian_draws(*evidence_arrays, options, ctx.rng, options.propensity_draws)
        return _by_draws(draws, greedy)
    if context is None:
        raise ValueError(f"policy {policy!r} needs a context vector")
    thetas, inverses = zip(*(linear_model(arm, len(context), options) for arm in arms), strict=True)
    estimates = np.array([theta @ context for theta in thetas])
    linear_greedy = _best(estimates)
    if policy == "linucb":
        widths = np.array([math.sqrt(max(float(context @ a_inv @ context), 0.0)) for a_inv in inverses])
        best = _best(estimates + options.alpha * widths)
        chosen = _pick(ctx, best)
        return Choice(chosen, 1.0 / len(best), chosen not in linear_greedy)
    if policy == "lin_thompson":
        draws, rng = options.propensity_draws, ctx.rng
        scores = np.empty((draws, k))
        for i, (theta, a_inv) in enumerate(zip(thetas, inverses, strict=True)):
            # every arm draws its own noise: shared draws would correlate the arms' samples
            spread = options.scale * np.linalg.cholesky(a_inv + 1e-12 * np.eye(len(context)))
            samples = theta + rng.standard_normal((draws, len(context))) @ spread.T
            scores[:, i] = samples @ context
        return _by_draws(scores, linear_greedy)
    raise ValueError(f"unknown policy {policy!r}")


def linear_model(arm: ArmState, dimension: int, options: BanditOptions) -> tuple[np.ndarray, np.ndarray]:
    """The ridge estimate of an arm's weights and the inverse of its design matrix."""
    if arm.a_inv is None or arm.b is None:
        return np.zeros(dimension), np.eye(dimension) / options.ridge
    a_inv = np.asarray(arm.a_inv).reshape(dimension, dimension)
    return a_inv @ np.asarray(arm.b), a_inv


def learn_linear(arm: ArmState, context: np.ndarray, reward: float, options: BanditOptions) -> None:
    """Add one (context, reward) to an arm's linear model: a Sherman-Morrison rank-1 update of the inverse."""
    _, a_inv = linear_model(arm, len(context), options)
    b = np.zeros(len(context)) if arm.b is None else np.asarray(arm.b)
    projected = a_inv @ context
    a_inv = a_inv - np.outer(projected, projected) / (1.0 + context @ projected)
    arm.a_inv = a_inv.ravel().tolist()
    arm.b = (b + reward * context).tolist()


def posterior_draws(
    policy: str, arms: Sequence[ArmState], options: BanditOptions, rng: np.random.Generator, draws: int, now: float
) -> np.ndarray:
    """Draws of each arm's mean reward: the policy's own posterior for the Thompson policies, a Beta
    posterior of the rewards (in [0, 1]) for the others."""
    n, total, squares = evidence(arms, options, now)
    if policy == "thompson_gaussian":
        return gaussian_draws(n, total, squares, options, rng, draws)
    if policy == "thompson":
        return beta_draws(n, total, options, rng, draws)
    return beta_draws(n, total, BanditOptions(), rng, draws)

"""The probability that one arm's posterior draw is the highest: the propensity of a Thompson choice.

Thompson sampling chooses the arm whose draw from its posterior is highest. With the arms' posteriors
independent, the probability of choosing arm ``a`` is the one-dimensional integral

    P(a) = integral of f_a(x) * prod over b != a of F_b(x) dx

(f: density, F: distribution function), which :func:`win_probability` computes by adaptive
Gauss-Kronrod quadrature (7 and 15 points) over the range where arm ``a``'s posterior has mass:

- the range is cut to ``[L, U]``: ``U`` the (1 - TAIL) quantile of arm ``a``, ``L`` the highest of its TAIL
  quantile and a lower bound of every other arm's (below it some arm's draw is almost surely higher); the
  mass cut off is added back as TAIL times the product at the cut, which errs by at most TAIL per cut;
- an arm whose upper bound (at or above its 1 - TAIL quantile) lies below ``L`` cannot win against a draw
  of ``a`` there and is left out of the product, as is any arm at the nodes above its upper bound (its F
  is at least 1 - TAIL there);
- the range is first split at a's centre +- 2, 10, 100 ... of its widths and around the centre of every
  other arm narrower than ``a`` (whose distribution function is a steep step there), then the pieces whose
  error estimates exceed their share of the tolerance are halved (up to MAX_HALVINGS times) until the sum
  of the estimates is within RELATIVE_TOLERANCE of the result (or ABSOLUTE_TOLERANCE near 0).

Each piece's error estimate is QUADPACK's, from the difference of the Kronrod and Gauss results: a
heuristic, not a proof. The error reported is SAFETY times the sum of the estimates, plus TAIL for every
cut and every arm left out; in the tests, against high-precision integrals (``scipy.integrate.quad``) of
random Beta, Student and normal posteriors of 2 to 10 arms, the actual error stayed below it. With
these settings it is at most about 1e-3 of the result and mostly far smaller. The computation is a fixed
sequence of numpy operations: the same posteriors give the same float.

A Beta posterior with a parameter below 1 has an unbounded density; for such a chosen arm the integral
is taken over its quantiles instead (``u = F_a(x)``, integrand ``prod F_b(Q_a(u))``), which is bounded.

>>> two = BetaPosteriors(np.array([2.0, 1.0]), np.array([1.0, 1.0]))
>>> value, error = win_probability(two, 0)
>>> round(value, 9), abs(value - 2 / 3) <= error < 1e-6
(0.666666667, True)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy  # its submodules load on first use

TAIL = 1e-12
"""Probability left in each tail cut off the range of integration, and the most a left-out arm changes."""
RELATIVE_TOLERANCE = 1e-4
"""The quadrature's target for the sum of its pieces' error estimates, relative to the result."""
ABSOLUTE_TOLERANCE = 1e-13
"""The quadrature's target for the sum of its pieces' error estimates when the result is near 0."""
SAFETY = 10.0
"""The factor by which the reported error exceeds the quadrature's own error estimate (a heuristic)."""
MAX_HALVINGS = 40
"""How many times a piece of the range may be halved."""
_STEPS = np.array([-1e6, -1e4, -100.0, -10.0, -2.0, 2.0, 10.0, 100.0, 1e4, 1e6])
"""Initial split points of the chosen arm's range, in its widths either side of its centre."""

_NARROW_STEPS = np.array([-3.0, 0.0, 3.0])
"""Initial split points around the centre of each other arm narrower than the chosen one, in its widths."""
_TINY = np.finfo(float).tiny

# Gauss-Kronrod 7-15 on [-1, 1] (QUADPACK's qk15): the Kronrod nodes (the Gauss nodes are the odd ones)
_KRONROD_NODES = np.array(
    [
        0.991455371120812639206854697526329,
        0.949107912342758524526189684047851,
        0.864864423359769072789712788640926,
        0.741531185599394439863864773280788,
        0.586087235467691130294144845693013,
        0.405845151377397166906606412076961,
        0.207784955007898467600689403773245,
        0.000000000000000000000000000000000,
    ]
)
_KRONROD_WEIGHTS = np.array(
    [
        0.022935322010529224963732008058970,
        0.063092092629978553290700663189204,
        0.104790010322250183839876322541518,
        0.140653259715525918745189590510238,
        0.169004726639267902826583426598550,
        0.190350578064785409913256402421014,
        0.204432940075298892414161999234649,
        0.209482141084727828012999174891714,
    ]
)
_GAUSS_WEIGHTS = np.array(
    [
        0.129484966168869693270611432679082,
        0.279705391489276667901467771423780,
        0.381830050505118944950369775488975,
        0.417959183673469387755102040816327,
    ]
)
_NODES = np.concatenate([-_KRONROD_NODES[:-1], _KRONROD_NODES[::-1]])  # the 15 nodes, ascending
_K15 = np.concatenate([_KRONROD_WEIGHTS[:-1], _KRONROD_WEIGHTS[::-1]])
_G7 = np.zeros(15)
_G7[1::2] = np.concatenate([_GAUSS_WEIGHTS[:-1], _GAUSS_WEIGHTS[::-1]])


class Posteriors:
    """Independent posteriors of the arms' scores (one per arm, vectorised over arms): what
    :func:`win_probability` integrates. ``centre`` and ``width`` locate each one (its features lie within
    a few widths of its centre)."""

    centre: np.ndarray
    width: np.ndarray

    def __len__(self) -> int:
        return len(self.centre)

    def cdf(self, x: np.ndarray, arms: np.ndarray) -> np.ndarray:
        """F_b(x) of arm b = ``arms[i]`` at x = ``x[i]`` for every i."""
        raise NotImplementedError

    def pdf(self, x: np.ndarray, arm: int) -> np.ndarray:
        """The density of ``arm`` at every x."""
        raise NotImplementedError

    def quantile(self, q: np.ndarray, arms: np.ndarray) -> np.ndarray:
        """The ``q[i]`` quantile of arm ``arms[i]``."""
        raise NotImplementedError

    def bounds(self, arms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of ``arms``, a value below its TAIL quantile and one above its 1 - TAIL quantile."""
        return self.quantile(np.full(len(arms), TAIL), arms), self.quantile(np.full(len(arms), 1.0 - TAIL), arms)

    def singular(self, arm: int) -> bool:
        """True if the density of ``arm`` is unbounded (then the integral is taken over its quantiles)."""
        return False


class BetaPosteriors(Posteriors):
    """Beta(``alpha``, ``beta``) posteriors.

    >>> BetaPosteriors(np.array([2.0]), np.array([2.0])).cdf(np.array([0.5]), np.array([0]))
    array([0.5])
    """

    def __init__(self, alpha: np.ndarray, beta: np.ndarray) -> None:
        self.alpha, self.beta = alpha, beta
        total = alpha + beta
        self.centre = alpha / total
        self.width = np.sqrt(alpha * beta / (total * total * (total + 1.0)))
        self._log_norm = scipy.special.betaln(alpha, beta)

    def cdf(self, x: np.ndarray, arms: np.ndarray) -> np.ndarray:
        return scipy.special.betainc(self.alpha[arms], self.beta[arms], np.clip(x, 0.0, 1.0))

    def pdf(self, x: np.ndarray, arm: int) -> np.ndarray:
        a, b = self.alpha[arm], self.beta[arm]
        return np.exp((a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - self._log_norm[arm])

    def quantile(self, q: np.ndarray, arms: np.ndarray) -> np.ndarray:
        return scipy.special.betaincinv(self.alpha[arms], self.beta[arms], q)

    def bounds(self, arms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Quick bounds: a Beta(a, b) variable is sub-Gaussian with variance proxy 1 / (4 (a + b + 1))
        (Marchal and Arbel (2017), "On the sub-Gaussianity of the Beta and Dirichlet distributions")."""
        reach = np.sqrt(-math.log(TAIL) / (2.0 * (self.alpha[arms] + self.beta[arms] + 1.0)))
        return self.centre[arms] - reach, self.centre[arms] + reach

    def singular(self, arm: int) -> bool:
        return bool(self.alpha[arm] < 1.0 or self.beta[arm] < 1.0)


class StudentPosteriors(Posteriors):
    """Student's t posteriors with ``df`` degrees of freedom, location ``centre`` and scale ``width``.

    >>> StudentPosteriors(np.array([3.0]), np.array([1.0]), np.array([2.0])).cdf(np.array([1.0]), np.array([0]))
    array([0.5])
    """

    def __init__(self, df: np.ndarray, centre: np.ndarray, width: np.ndarray) -> None:
        self.df, self.centre, self.width = df, centre, width
        half = (df + 1.0) / 2.0
        self._log_norm = (
            scipy.special.gammaln(half) - scipy.special.gammaln(df / 2.0) - 0.5 * np.log(df * math.pi) - np.log(width)
        )

    def cdf(self, x: np.ndarray, arms: np.ndarray) -> np.ndarray:
        return scipy.special.stdtr(self.df[arms], (x - self.centre[arms]) / self.width[arms])

    def pdf(self, x: np.ndarray, arm: int) -> np.ndarray:
        df, z = self.df[arm], (x - self.centre[arm]) / self.width[arm]
        return np.exp(self._log_norm[arm] - (df + 1.0) / 2.0 * np.log1p(z * z / df))

    def quantile(self, q: np.ndarray, arms: np.ndarray) -> np.ndarray:
        return self.centre[arms] + self.width[arms] * scipy.special.stdtrit(self.df[arms], q)


class NormalPosteriors(Posteriors):
    """Normal posteriors with mean ``centre`` and standard deviation ``width`` (positive).

    >>> NormalPosteriors(np.array([0.0]), np.array([1.0])).quantile(np.array([0.5]), np.array([0]))
    array([0.])
    """

    def __init__(self, centre: np.ndarray, width: np.ndarray) -> None:
        self.centre, self.width = centre, width

    def cdf(self, x: np.ndarray, arms: np.ndarray) -> np.ndarray:
        return scipy.special.ndtr((x - self.centre[arms]) / self.width[arms])

    def pdf(self, x: np.ndarray, arm: int) -> np.ndarray:
        z = (x - self.centre[arm]) / self.width[arm]
        return np.exp(-0.5 * z * z) / (self.width[arm] * math.sqrt(2.0 * math.pi))

    def quantile(self, q: np.ndarray, arms: np.ndarray) -> np.ndarray:
        return self.centre[arms] + self.width[arms] * scipy.special.ndtri(q)


class WinProbability(NamedTuple):
    """The probability that an arm's draw is the highest, and a bound of its absolute error."""

    value: float
    error: float


def win_probability(posteriors: Posteriors, arm: int) -> WinProbability:
    """The probability that ``arm``'s draw is the highest of all arms' independent draws from
    ``posteriors`` (see the module's docstring for the method and its error).

    >>> three = NormalPosteriors(np.zeros(3), np.ones(3))
    >>> [round(win_probability(three, i).value, 9) for i in range(3)]
    [0.333333333, 0.333333333, 0.333333333]
    """
    count = len(posteriors)
    if count == 1:
        return WinProbability(1.0, 0.0)
    others = np.delete(np.arange(count), arm)
    low, high = (float(q) for q in posteriors.quantile(np.array([TAIL, 1.0 - TAIL]), np.array([arm, arm])))
    others_low, others_high = posteriors.bounds(others)
    start = max(low, float(others_low.max()))
    cut = 2 * TAIL + TAIL * (start > low)
    if start >= high:  # some arm's draw is almost surely above any of this arm's
        return WinProbability(0.0, cut + TAIL * len(others))
    rivals, rivals_high = others[others_high > start], others_high[others_high > start]
    left_out = TAIL * (len(others) - len(rivals))
    if not len(rivals):
        return WinProbability(1.0, cut + left_out)
    if posteriors.singular(arm):
        value, error = _over_quantiles(posteriors, arm, rivals, rivals_high)
    else:
        value, error = _over_range(posteriors, arm, rivals, rivals_high, start, high)
        # the tails cut off: above, every F is about 1; below, about their value at the cut
        below = TAIL * float(_product(posteriors, np.array([start]), rivals, rivals_high)[0]) if start == low else 0.0
        value += TAIL + below
    error *= SAFETY
    # each rival's F taken as 1 above its bound errs by at most TAIL
    return WinProbability(min(max(value, 0.0), 1.0), error + cut + left_out + TAIL * len(rivals))


def _over_range(
    posteriors: Posteriors, arm: int, rivals: np.ndarray, rivals_high: np.ndarray, start: float, end: float
) -> tuple[float, float]:
    """The integral of f_arm * prod F_rivals over [start, end]."""
    centres, widths = posteriors.centre, posteriors.width
    narrow = rivals[widths[rivals] < widths[arm] / 4.0]  # their steps are sharper than the arm's density
    inner = np.concatenate(
        [centres[arm] + widths[arm] * _STEPS, (centres[narrow, None] + widths[narrow, None] * _NARROW_STEPS).ravel()]
    )
    points = np.concatenate([[start], np.unique(inner[(inner > start) & (inner < end)]), [end]])

    def integrand(x: np.ndarray) -> np.ndarray:
        return posteriors.pdf(x, arm) * _product(posteriors, x, rivals, rivals_high)

    return _adaptive(integrand, points[:-1], points[1:])


def _over_quantiles(
    posteriors: Posteriors, arm: int, rivals: np.ndarray, rivals_high: np.ndarray
) -> tuple[float, float]:
    """The integral of prod F_rivals(Q_arm(u)) over u in (0, 1)."""

    def integrand(u: np.ndarray) -> np.ndarray:
        return _product(posteriors, posteriors.quantile(u, np.full(len(u), arm)), rivals, rivals_high)

    edges = np.linspace(0.0, 1.0, 9)
    return _adaptive(integrand, edges[:-1], edges[1:])


def _product(posteriors: Posteriors, x: np.ndarray, rivals: np.ndarray, rivals_high: np.ndarray) -> np.ndarray:
    """prod F_b(x) over the ``rivals`` b at every x, taking F_b as 1 above ``rivals_high[b]``."""
    needed = x[:, None] < rivals_high
    rows, columns = np.nonzero(needed)
    factors = np.ones(needed.shape)
    factors[rows, columns] = posteriors.cdf(x[rows], rivals[columns])
    return factors.prod(axis=1)


def _adaptive(integrand, lows: np.ndarray, highs: np.ndarray) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Gauss-Kronrod 7-15 over the pieces [lows[i], highs[i]]; while the sum of the pieces' error estimates
    exceeds the tolerance, the pieces whose estimate exceeds an equal share of it are halved. Returns the
    sum and the sum of the error estimates (QUADPACK's: (200 |Kronrod - Gauss| / spread)^1.5 times the
    spread of the integrand on the piece, at most |Kronrod - Gauss|)."""
    total = error = 0.0
    for halving in range(MAX_HALVINGS + 1):
        half = (highs - lows) / 2.0
        middle = (highs + lows) / 2.0
        values = integrand((middle[:, None] + half[:, None] * _NODES).ravel()).reshape(len(lows), 15)
        kronrod = values @ _K15
        spread = np.abs(values - (kronrod / 2.0)[:, None]) @ _K15 * half
        difference = np.abs(kronrod - values @ _G7) * half
        kronrod *= half
        errors = np.minimum(spread * np.minimum(1.0, 200.0 * difference / np.maximum(spread, _TINY)) ** 1.5, difference)
        budget = max(RELATIVE_TOLERANCE * abs(total + float(kronrod.sum())), ABSOLUTE_TOLERANCE) - error
        if halving == MAX_HALVINGS or float(errors.sum()) <= budget:
            return total + float(kronrod.sum()), error + float(errors.sum())
        done = errors <= budget / len(errors)
        total += float(kronrod[done].sum())
        error += float(errors[done].sum())
        lows, highs, middle = lows[~done], highs[~done], middle[~done]
        lows, highs = np.concatenate([lows, middle]), np.concatenate([middle, highs])
    raise AssertionError("unreachable")

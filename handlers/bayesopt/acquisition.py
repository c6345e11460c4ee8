"""Acquisition functions and their maximisation over the unit cube.

Values are in standardised target units and larger is better (a study that minimises negates its
objective first). Expected improvement is optimised through its logarithm, computed so that it stays
finite and informative far from the incumbent, where EI itself underflows to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy  # its submodules load on first use
from rtopt.handlers.bayesopt.gp import GaussianProcess

from rtopt.arguments import one_of

ACQUISITIONS = ("ei", "ucb", "pi")
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
SQRT_HALF_PI = math.sqrt(math.pi / 2.0)
MIN_STD = 1e-9
TAIL = 1e3  # below -TAIL, log h(z) comes from its asymptotic series


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """E[max(f - best - xi, 0)] for f ~ N(mean, std^2).

    >>> round(float(expected_improvement(np.array([0.0]), np.array([1.0]), 0.0)[0]), 6)  # 1/sqrt(2 pi)
    0.398942
    """
    return np.exp(log_expected_improvement(mean, std, best, xi))


def log_h(z: np.ndarray) -> np.ndarray:
    """log(z * Phi(z) + phi(z)), accurate for very negative ``z`` too."""
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    near = z > -1.0
    zn = z[near]
    out[near] = np.log(zn * scipy.special.ndtr(zn) + np.exp(-0.5 * zn**2 - LOG_SQRT_2PI))
    tail = z < -TAIL
    middle = ~near & ~tail
    zm = z[middle]
    # h(z) = phi(z) * (1 - |z| * Mills ratio(|z|)), the ratio through the scaled complementary error function
    out[middle] = -0.5 * zm**2 - LOG_SQRT_2PI + np.log1p(zm * SQRT_HALF_PI * scipy.special.erfcx(-zm / math.sqrt(2.0)))
    zt = z[tail]  # there 1 - |z| * ratio cancels to nothing: h(z) = phi(z) / z^2 * (1 - 3 / z^2 + ...)
    out[tail] = -0.5 * zt**2 - LOG_SQRT_2PI - 2.0 * np.log(-zt) + np.log1p(-3.0 / zt**2)
    return out


def log_expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """log EI, finite wherever ``std`` > 0."""
    std = np.maximum(std, MIN_STD)
    return np.log(std) + log_h((mean - best - xi) / std)


def probability_of_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """P(f > best + xi) for f ~ N(mean, std^2).

    >>> float(probability_of_improvement(np.array([1.0]), np.array([2.0]), 1.0)[0])
    0.5
    """
    return scipy.special.ndtr((mean - best - xi) / np.maximum(std, MIN_STD))


def upper_confidence_bound(mean: np.ndarray, std: np.ndarray, beta: float) -> np.ndarray:
    """mean + beta * std.

    >>> float(upper_confidence_bound(np.array([1.0]), np.array([0.5]), 2.0)[0])
    2.0
    """
    return mean + beta * std


class Acquisition:
    """What ``maximize`` optimises: log EI, log PI or UCB at a point, with its gradient.

    >>> Acquisition("ucb", best=0.0, beta=2.0).values(np.array([1.0]), np.array([0.5])).tolist()
    [2.0]
    """

    def __init__(self, name: str, best: float, *, xi: float = 0.0, beta: float = 2.0) -> None:
        one_of("name", name, ACQUISITIONS)
        self.name, self.best, self.xi, self.beta = name, best, xi, beta

    def values(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """The optimised quantity (log EI, log PI or UCB) for arrays of posterior means and deviations."""
        if self.name == "ei":
            return log_expected_improvement(mean, std, self.best, self.xi)
        if self.name == "pi":
            return scipy.special.log_ndtr((mean - self.best - self.xi) / np.maximum(std, MIN_STD))
        return upper_confidence_bound(mean, std, self.beta)

    def value_and_gradient(
        self, mean: float, std: float, d_mean: np.ndarray, d_std: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """The optimised quantity at one point and its gradient, from the posterior's gradients there."""
        if self.name == "ucb":
            return mean + self.beta * std, d_mean + self.beta * d_std
        std = max(std, MIN_STD)
        z = (mean - self.best - self.xi) / std
        d_z = (d_mean - z * d_std) / std
        if self.name == "pi":
            log_pi = float(scipy.special.log_ndtr(z))
            return log_pi, math.exp(-0.5 * z * z - LOG_SQRT_2PI - log_pi) * d_z
        log_hz = float(log_h(np.array([z]))[0])
        return math.log(std) + log_hz, d_std / std + math.exp(float(scipy.special.log_ndtr(z)) - log_hz) * d_z

    def report(self, mean: float, std: float, target_scale: float) -> float:
        """The acquisition value to record, in the objective's units where it has them: EI and UCB scaled
        back by ``target_scale``, PI as a probability."""
        if self.name == "ei":
            return float(expected_improvement(np.array([mean]), np.array([std]), self.best, self.xi)[0]) * target_scale
        if self.name == "pi":
            return float(probability_of_improvement(np.array([mean]), np.array([std]), self.best, self.xi)[0])
        return (mean + self.beta * std) * target_scale


def maximize(
    gp: GaussianProcess,
    acquisition: Acquisition,
    rng: np.random.Generator,
    *,
    incumbents: np.ndarray,
    raw_samples: int = 1000,
    starts: int = 4,
    snap: Callable[[np.ndarray], np.ndarray] | None = None,
    neighbours: Callable[[np.ndarray], list[np.ndarray]] | None = None,
) -> np.ndarray:
    """The unit-cube point where ``acquisition`` is largest: L-BFGS-B from the best of ``raw_samples``
    uniform points and from points near each of ``incumbents`` (rows); ``snap`` maps a point to the one
    actually evaluated (integers, choices) and ``neighbours`` adds, for each point found, others to
    compare with it (other categorical choices) before the final comparison."""
    dims = gp.x.shape[1]
    candidates = rng.random((raw_samples, dims))
    near = np.clip(incumbents + rng.normal(0.0, 0.02, size=incumbents.shape), 0.0, 1.0)
    mean, variance = gp.predict(candidates)
    scores = acquisition.values(mean, np.sqrt(variance))
    chosen = candidates[np.argsort(-scores)[:starts]]

    def negative(point: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = acquisition.value_and_gradient(*gp.predict_with_gradient(point))
        return -value, -gradient

    finals = [candidates[int(np.argmax(scores))]]
    for start in np.vstack([chosen, near]):
        result = scipy.optimize.minimize(
            negative, start, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * dims, options={"maxiter": 100}
        )
        finals.append(np.clip(result.x, 0.0, 1.0))
    if snap is not None:
        finals = [snap(p) for p in finals]
    if neighbours is not None:
        finals += [other for p in finals for other in neighbours(p)]
    finals_array = np.array(finals)
    mean, variance = gp.predict(finals_array)
    return finals_array[int(np.argmax(acquisition.values(mean, np.sqrt(variance))))]

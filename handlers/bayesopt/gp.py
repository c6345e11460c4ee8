"""Gaussian-process regression: the posterior, the log marginal likelihood and its maximisation.

Inputs live in the unit cube and targets are standardised by the caller (:func:`standardise`). The
covariance is factorised once by Cholesky (with jitter added until it succeeds) and every solve goes
through that factor.
Hyperparameters are the kernel's (logarithms) followed by the log noise variance.
"""

from __future__ import annotations

import contextlib
import functools
import math

import numpy as np
import scipy  # its submodules load on first use
from rtopt.handlers.bayesopt.kernels import Kernel
from threadpoolctl import ThreadpoolController

LOG_NOISE_BOUNDS = (math.log(1e-6), math.log(1.0))
OUTLIER_FENCE = 10.0  # interquartile ranges beyond the quartiles where a target's outliers are moved
SAFE_EXPONENT = 400  # targets are scaled below 2**400 first: their squares and sums cannot overflow
JITTERS = (0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@functools.cache
def _blas() -> ThreadpoolController:
    import scipy.linalg  # noqa: F401 -- the controller sees only the BLAS libraries loaded before it

    return ThreadpoolController()


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """A context in which BLAS uses one thread: on matrices of a few hundred rows, threads only wait on
    each other (and on other processes), which makes a suggestion several times slower."""
    return _blas().limit(limits=1, user_api="blas")


def standardise(y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Targets for a GP from finite values ``y``, and their ``offset`` and ``scale``: ``(y' - offset) / scale``,
    where ``y'`` is ``y`` with the values more than ``OUTLIER_FENCE`` interquartile ranges beyond the
    quartiles moved to that fence, and ``offset`` and ``scale`` the mean and standard deviation of ``y'``
    (a scale of 0 counts as 1). One wild value thus neither flattens the others nor, up to the largest
    finite float, overflows: the quartiles are values of ``y`` and the sums run on ``y'`` divided by a
    power of two.

    >>> targets, offset, scale = standardise(np.array([0.5, 0.6, 0.7, 0.8, 1e308]))
    >>> [round(float(t), 2) for t in targets], round(offset, 2), round(scale, 2)
    ([-0.67, -0.55, -0.44, -0.32, 1.99], 1.08, 0.87)
    """
    low, high = (float(q) for q in np.percentile(y, [25.0, 75.0], method="inverted_cdf"))
    reach = OUTLIER_FENCE * (high - low)  # Python floats: an overflow is inf, and clips nothing
    fenced = np.clip(y, low - reach, high + reach) if reach > 0.0 else y
    shift = max(math.frexp(float(np.max(np.abs(fenced))))[1] - SAFE_EXPONENT, 0)
    scaled = np.ldexp(fenced, -shift)
    offset, spread = float(scaled.mean()), float(scaled.std())
    scale = math.ldexp(spread, shift) or 1.0
    return (scaled - offset) / (spread or 1.0), math.ldexp(offset, shift), scale


def cholesky(matrix: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor of ``matrix``, adding the least jitter (relative to its mean diagonal)
    that makes it positive definite.

    >>> factor = cholesky(np.ones((2, 2)))  # singular: needs jitter
    >>> bool(np.allclose(factor @ factor.T, np.ones((2, 2)), atol=1e-8))
    True
    """
    scale = float(np.mean(np.diag(matrix)))
    for jitter in JITTERS:
        try:
            return scipy.linalg.cholesky(matrix + jitter * scale * np.eye(len(matrix)), lower=True, check_finite=False)
        except scipy.linalg.LinAlgError:
            continue
    raise scipy.linalg.LinAlgError("covariance matrix is not positive definite even with jitter")


class GaussianProcess:
    """The posterior of a zero-mean GP with ``kernel`` and hyperparameters ``theta`` given targets ``y``
    observed at the rows of ``x``; the last ``believed`` rows hold the model's own predictions, taken as
    exact (see :meth:`believe`).

    >>> from rtopt.handlers.bayesopt.kernels import RBF
    >>> gp = GaussianProcess(RBF(1), np.array([0.0, 0.0, math.log(1e-6)]), np.array([[0.5]]), np.array([1.0]))
    >>> mean, var = gp.predict(np.array([[0.5]]))
    >>> round(float(mean[0]), 4), round(float(var[0]), 4)
    (1.0, 0.0)
    """

    def __init__(self, kernel: Kernel, theta: np.ndarray, x: np.ndarray, y: np.ndarray, believed: int = 0) -> None:
        self.kernel, self.theta, self.x, self.y = kernel, np.asarray(theta, dtype=float), x, y
        self.kernel_theta = self.theta[:-1]
        self.noise = math.exp(self.theta[-1])
        self.believed = believed
        noise = np.full(len(x), self.noise)
        noise[len(x) - believed :] = 0.0
        covariance = kernel.matrix(self.kernel_theta, x, x) + np.diag(noise)
        self.factor = cholesky(covariance)
        self.alpha = scipy.linalg.cho_solve((self.factor, True), y, check_finite=False)

    def believe(self, points: np.ndarray) -> GaussianProcess:
        """This GP with its posterior mean at the rows of ``points`` added as exact observations (the
        Kriging believer): the variance there drops to zero, so points chosen next keep away from them."""
        mean = self.predict(points)[0]
        x, y = np.vstack([self.x, points]), np.concatenate([self.y, mean])
        return GaussianProcess(self.kernel, self.theta, x, y, self.believed + len(points))

    def predict(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and variance (of the latent function, without noise) at each row of ``points``."""
        cross = self.kernel.matrix(self.kernel_theta, points, self.x)
        mean = cross @ self.alpha
        v = scipy.linalg.solve_triangular(self.factor, cross.T, lower=True, check_finite=False)
        variance = self.kernel.diagonal(self.kernel_theta, points) - np.einsum("ij,ij->j", v, v)
        return mean, np.maximum(variance, 0.0)

    def predict_with_gradient(self, point: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at ``point`` and their gradients by ``point``."""
        k, dk = self.kernel.cross(self.kernel_theta, point, self.x)
        mean = float(k @ self.alpha)
        v = scipy.linalg.solve_triangular(self.factor, np.column_stack([k, dk]), lower=True, check_finite=False)
        prior = self.kernel.diagonal(self.kernel_theta, point[None, :])[0]
        variance = max(float(prior - v[:, 0] @ v[:, 0]), 1e-18)
        std = math.sqrt(variance)
        d_variance = self.kernel.diagonal_gradient(self.kernel_theta, point) - 2.0 * v[:, 0] @ v[:, 1:]
        return mean, std, dk.T @ self.alpha, d_variance / (2.0 * std)

    def log_marginal_likelihood(self) -> float:
        """log p(y | x, theta)."""
        return float(-0.5 * self.y @ self.alpha - np.log(np.diag(self.factor)).sum() - len(self.y) * HALF_LOG_2PI)


def negative_log_likelihood(
    theta: np.ndarray, kernel: Kernel, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray]:
    """-log p(y | x, theta) and its gradient by ``theta``."""
    k, grads = kernel.with_gradients(theta[:-1], x)
    noise = math.exp(theta[-1])
    try:
        factor = cholesky(k + noise * np.eye(len(x)))
    except scipy.linalg.LinAlgError:
        return 1e25, np.zeros_like(theta)
    alpha = scipy.linalg.cho_solve((factor, True), y, check_finite=False)
    inverse = scipy.linalg.cho_solve((factor, True), np.eye(len(x)), check_finite=False)
    w = inverse - np.outer(alpha, alpha)
    value = 0.5 * y @ alpha + np.log(np.diag(factor)).sum() + len(y) * HALF_LOG_2PI
    gradient = np.empty_like(theta)
    gradient[:-1] = 0.5 * np.einsum("ij,kij->k", w, grads)
    gradient[-1] = 0.5 * noise * np.trace(w)
    return float(value), gradient


def hyperparameter_bounds(kernel: Kernel, noise: float | None = None) -> list[tuple[float, float]]:
    """Bounds of (kernel hyperparameters, log noise); a given ``noise`` variance is held fixed."""
    fixed = None if noise is None else (math.log(noise), math.log(noise))
    return [*kernel.bounds(), fixed or LOG_NOISE_BOUNDS]


def fit_hyperparameters(
    kernel: Kernel,
    x: np.ndarray,
    y: np.ndarray,
    rng: np.random.Generator,
    *,
    start: np.ndarray | None = None,
    restarts: int = 3,
    noise: float | None = None,
    noise_prior: float = 0.1,
) -> tuple[np.ndarray, float]:
    """Hyperparameters maximising the log marginal likelihood plus log priors (the kernel's, and an
    exponential one of mean ``noise_prior`` on the noise variance: without them a few observations are
    often explained by a model that is nothing but noise, or by one without any), by L-BFGS-B from
    ``start`` (or the kernel's initial values) and from ``restarts`` points drawn uniformly within bounds;
    returns them and the log marginal likelihood they reach."""

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, gradient = negative_log_likelihood(theta, kernel, x, y)
        prior, prior_gradient = kernel.negative_log_prior(theta[:-1])
        noise_penalty = math.exp(theta[-1]) / noise_prior
        return value + prior + noise_penalty, np.append(gradient[:-1] + prior_gradient, gradient[-1] + noise_penalty)

    bounds = hyperparameter_bounds(kernel, noise)
    low, high = np.array(bounds).T
    first = np.concatenate([kernel.initial(), [math.log(1e-3)]]) if start is None else np.asarray(start)
    starts = [np.clip(first, low, high), *rng.uniform(low, high, size=(restarts, len(bounds)))]
    best_theta, best_value = starts[0], math.inf
    for theta in starts:
        result = scipy.optimize.minimize(
            objective,
            theta,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 200},
        )
        if result.fun < best_value:
            best_theta, best_value = result.x, float(result.fun)
    best_theta = np.clip(best_theta, low, high)
    return best_theta, -negative_log_likelihood(best_theta, kernel, x, y)[0]

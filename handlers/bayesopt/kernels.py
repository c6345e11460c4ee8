"""Covariance functions of the Gaussian process, with their gradients.

Hyperparameters are held as a vector of logarithms (positive by construction, and on the scale the
optimiser moves best): the signal variance first, then the kernel's own. The stationary kernels (RBF,
Matérn 3/2 and 5/2) have one length scale per input dimension (ARD); the polynomial kernel
``s * (c + a.b) ** degree`` has an offset ``c``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

LOG_SIGNAL_BOUNDS = (math.log(0.05), math.log(20.0))
LOG_LENGTH_BOUNDS = (math.log(5e-3), math.log(20.0))
LOG_OFFSET_BOUNDS = (math.log(1e-3), math.log(10.0))
LENGTH_PRIOR_MEDIAN = 0.3  # log-normal prior on length scales in the unit cube: median, and sd of the log
LENGTH_PRIOR_SPREAD = 1.0
Profile = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _rbf(r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.exp(-0.5 * r2)
    return f, -0.5 * f


def _matern32(r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sr = math.sqrt(3.0) * np.sqrt(r2)
    e = np.exp(-sr)
    return (1.0 + sr) * e, -1.5 * e


def _matern52(r2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sr = math.sqrt(5.0) * np.sqrt(r2)
    e = np.exp(-sr)
    return (1.0 + sr + 5.0 / 3.0 * r2) * e, -5.0 / 6.0 * (1.0 + sr) * e


class Kernel:
    """A covariance function over points of ``dims`` coordinates; see the subclasses.

    >>> kernel = Matern52(dims=2)
    >>> kernel.matrix(kernel.initial(), np.zeros((1, 2)), np.zeros((1, 2)))  # a point with itself: the variance
    array([[1.]])
    """

    name: str
    n_params: int

    def __init__(self, dims: int) -> None:
        self.dims = dims

    def initial(self) -> np.ndarray:
        """Hyperparameters (logarithms) to start from."""
        raise NotImplementedError

    def bounds(self) -> list[tuple[float, float]]:
        """Bounds of each hyperparameter (logarithms)."""
        raise NotImplementedError

    def matrix(self, theta: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The covariances between the rows of ``a`` and those of ``b``."""
        raise NotImplementedError

    def negative_log_prior(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """-log p(theta) up to a constant, and its gradient: none unless a kernel says otherwise."""
        return 0.0, np.zeros_like(theta)

    def with_gradients(self, theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The covariance matrix of the rows of ``x`` and its derivative by each hyperparameter (first axis)."""
        raise NotImplementedError

    def cross(self, theta: np.ndarray, point: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Covariances of ``point`` with the rows of ``x`` and their gradient by ``point`` (rows, dims)."""
        raise NotImplementedError

    def diagonal(self, theta: np.ndarray, a: np.ndarray) -> np.ndarray:
        """The prior variance at each row of ``a``."""
        raise NotImplementedError

    def diagonal_gradient(self, theta: np.ndarray, point: np.ndarray) -> np.ndarray:
        """The gradient of the prior variance at ``point`` by ``point``."""
        raise NotImplementedError


class Stationary(Kernel):
    """``s * profile(r2)`` with ``r2`` the squared distance scaled by a length scale per dimension.

    >>> k = Matern52(2)
    >>> theta = np.log([2.0, 0.5, 0.5])
    >>> float(k.matrix(theta, np.zeros((1, 2)), np.zeros((1, 2)))[0, 0])
    2.0
    """

    profile: Profile

    def __init__(self, dims: int) -> None:
        super().__init__(dims)
        self.n_params = dims + 1

    def initial(self) -> np.ndarray:
        return np.concatenate([[0.0], np.full(self.dims, math.log(0.3))])

    def bounds(self) -> list[tuple[float, float]]:
        return [LOG_SIGNAL_BOUNDS] + [LOG_LENGTH_BOUNDS] * self.dims

    def negative_log_prior(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """A log-normal prior on each length scale: with few observations the likelihood alone often
        prefers length scales so short that the model explains nothing."""
        offset = (theta[1:] - math.log(LENGTH_PRIOR_MEDIAN)) / LENGTH_PRIOR_SPREAD
        gradient = np.zeros_like(theta)
        gradient[1:] = offset / LENGTH_PRIOR_SPREAD
        return float(0.5 * offset @ offset), gradient

    def matrix(self, theta: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        scale = np.exp(-theta[1:])
        a, b = a * scale, b * scale
        r2 = np.maximum(
            np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * a @ b.T, 0.0
        )
        return math.exp(theta[0]) * type(self).profile(r2)[0]

    def with_gradients(self, theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scaled = x * np.exp(-theta[1:])
        parts = (scaled[:, None, :] - scaled[None, :, :]) ** 2  # (n, n, dims)
        f, df = type(self).profile(parts.sum(axis=2))
        s = math.exp(theta[0])
        k = s * f
        grads = np.empty((self.n_params, len(x), len(x)))
        grads[0] = k
        grads[1:] = np.moveaxis(-2.0 * s * df[:, :, None] * parts, 2, 0)
        return k, grads

    def cross(self, theta: np.ndarray, point: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        inverse_sq = np.exp(-2.0 * theta[1:])
        delta = point[None, :] - x
        f, df = type(self).profile((delta**2 * inverse_sq).sum(axis=1))
        s = math.exp(theta[0])
        return s * f, (2.0 * s * df)[:, None] * delta * inverse_sq

    def diagonal(self, theta: np.ndarray, a: np.ndarray) -> np.ndarray:
        return np.full(len(a), math.exp(theta[0]))

    def diagonal_gradient(self, theta: np.ndarray, point: np.ndarray) -> np.ndarray:
        return np.zeros_like(point)


class RBF(Stationary):
    """Squared exponential: ``s * exp(-r2 / 2)``.

    >>> round(float(RBF(1).matrix(np.zeros(2), np.zeros((1, 1)), np.ones((1, 1)))[0, 0]), 6)
    0.606531
    """

    name = "rbf"
    profile = staticmethod(_rbf)


class Matern32(Stationary):
    """Matérn 3/2: ``s * (1 + sqrt(3) r) * exp(-sqrt(3) r)``.

    >>> round(float(Matern32(1).matrix(np.zeros(2), np.zeros((1, 1)), np.ones((1, 1)))[0, 0]), 6)
    0.483358
    """

    name = "matern32"
    profile = staticmethod(_matern32)


class Matern52(Stationary):
    """Matérn 5/2: ``s * (1 + sqrt(5) r + 5 r^2 / 3) * exp(-sqrt(5) r)``.

    >>> round(float(Matern52(1).matrix(np.zeros(2), np.zeros((1, 1)), np.ones((1, 1)))[0, 0]), 6)
    0.523994
    """

    name = "matern52"
    profile = staticmethod(_matern52)


class Polynomial(Kernel):
    """``s * (c + a.b) ** degree`` on points centred on the unit cube's middle.

    >>> k = Polynomial(1, degree=2)
    >>> float(k.matrix(np.log([1.0, 1.0]), np.array([[1.5]]), np.array([[2.5]]))[0, 0])
    9.0
    """

    name = "polynomial"
    n_params = 2

    def __init__(self, dims: int, degree: int = 2) -> None:
        super().__init__(dims)
        self.degree = degree

    def initial(self) -> np.ndarray:
        return np.zeros(2)

    def bounds(self) -> list[tuple[float, float]]:
        return [LOG_SIGNAL_BOUNDS, LOG_OFFSET_BOUNDS]

    def matrix(self, theta: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return math.exp(theta[0]) * (math.exp(theta[1]) + (a - 0.5) @ (b - 0.5).T) ** self.degree

    def with_gradients(self, theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, c, p = math.exp(theta[0]), math.exp(theta[1]), self.degree
        base = c + (x - 0.5) @ (x - 0.5).T
        k = s * base**p
        return k, np.stack([k, s * p * base ** (p - 1) * c])

    def cross(self, theta: np.ndarray, point: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s, c, p = math.exp(theta[0]), math.exp(theta[1]), self.degree
        base = c + (x - 0.5) @ (point - 0.5)
        return s * base**p, (s * p * base ** (p - 1))[:, None] * (x - 0.5)

    def diagonal(self, theta: np.ndarray, a: np.ndarray) -> np.ndarray:
        centred = a - 0.5
        return math.exp(theta[0]) * (math.exp(theta[1]) + np.einsum("ij,ij->i", centred, centred)) ** self.degree

    def diagonal_gradient(self, theta: np.ndarray, point: np.ndarray) -> np.ndarray:
        s, c, p = math.exp(theta[0]), math.exp(theta[1]), self.degree
        centred = point - 0.5
        return s * p * (c + centred @ centred) ** (p - 1) * 2.0 * centred


STATIONARY: dict[str, type[Stationary]] = {"rbf": RBF, "matern32": Matern32, "matern52": Matern52}
KERNEL_NAMES = (*STATIONARY, "polynomial")


def make_kernel(name: str, dims: int, degree: int = 2) -> Kernel:
    """The kernel called ``name`` (one of KERNEL_NAMES) over ``dims`` coordinates; ``degree`` is the
    polynomial kernel's."""
    return Polynomial(dims, degree) if name == "polynomial" else STATIONARY[name](dims)

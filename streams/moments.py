"""Running moments of a stream of numbers: count, mean and the sum of squared deviations from the mean.

One value at a time by Welford's update, which stays accurate where the sum of squares would cancel; two
summaries merge exactly (Chan, Golub and LeVeque's pairwise formula), so panes, batches and shards combine.

References: B. P. Welford (1962), "Note on a method for calculating corrected sums of squares and products";
T. F. Chan, G. H. Golub and R. J. LeVeque (1979), "Updating formulae and a pairwise algorithm for computing
sample variances".
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec
import numpy as np


class RunningMoments(msgspec.Struct, array_like=True):
    """The count ``n``, the ``mean`` and the sum of squared deviations ``m2`` of the values seen so far
    (encoded as ``[n, mean, m2]``).

    >>> moments = RunningMoments()
    >>> for x in (2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0):
    ...     moments.update(x)
    >>> moments.n, moments.mean, moments.variance(ddof=0), moments.std(ddof=0), moments.variance()
    (8, 5.0, 4.0, 2.0, 4.571428571428571)
    >>> first, rest = RunningMoments.of([1.0, 2.0]), RunningMoments.of([3.0, 4.0, 5.0])
    >>> first.merge(rest)
    >>> first.n, first.mean, first.variance()
    (5, 3.0, 2.5)
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> RunningMoments:
        """The moments of a batch of values, in two passes over it."""
        array = np.asarray(values, dtype=float).ravel()
        if array.size == 0:
            return cls()
        mean = float(array.mean())
        return cls(n=int(array.size), mean=mean, m2=float(np.square(array - mean).sum()))

    def update(self, x: float) -> None:
        """Take in one more value."""
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, other: RunningMoments) -> None:
        """Take in every value ``other`` has seen (``other`` stays as it was)."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.mean += delta * other.n / n
        self.n = n

    def variance(self, ddof: int = 1) -> float:
        """``m2 / (n - ddof)``: the sample variance by default, the population variance with ``ddof=0``;
        0.0 while ``n <= ddof``."""
        return self.m2 / (self.n - ddof) if self.n > ddof else 0.0

    def std(self, ddof: int = 1) -> float:
        """The square root of :meth:`variance` with the same ``ddof``."""
        return math.sqrt(self.variance(ddof))

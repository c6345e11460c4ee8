"""Online anomaly detectors: rolling z-score, IQR fences, MAD (robust z) and Mahalanobis distance.

Each has ``score(x)`` (how unusual ``x`` is against the current baseline, without learning it) and
``update(x) -> bool`` (True when ``x`` is an anomaly; only normal values join the baseline, so an outlier
does not widen the band that should catch the next one). A run of ``min_samples`` anomalies in a row is a
level shift rather than outliers: the baseline is then rebuilt from that run.

Sensitivity: the default thresholds are the usual conservative ones (3 standard deviations, Tukey's 1.5
IQR, a robust z of 3.5, the 99.9 % chi-square quantile); the design's sensitive profile is a z-score
threshold of 2.0 with IQR fences at 1.5.

References: J. W. Tukey (1977), "Exploratory Data Analysis" (fences); B. Iglewicz and D. C. Hoaglin
(1993), "How to Detect and Handle Outliers" (the modified z-score).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import msgspec
import numpy as np
import scipy  # its submodules load on first use
from msgspec import Meta
from rtopt.handlers.checked import Checked, at_most

from rtopt import InvalidArgument

if TYPE_CHECKING:
    from river.stats import RollingQuantile

Positive = Annotated[float, Meta(gt=0.0)]
WindowSize = Annotated[int, Meta(ge=3)]
RELATIVE_NOISE = 1e-9
MAD_TO_SIGMA = 0.6744897501960817  # the standard normal's third quartile: MAD = 0.6745 sigma


class Rolling(Checked):
    """The last ``window`` normal values (oldest first), the run of consecutive anomalies, and counters shared
    by the univariate detectors."""

    window: WindowSize = 100
    threshold: Positive = 3.0
    min_samples: Annotated[int, Meta(ge=2)] = 20
    values: list[float] = msgspec.field(default_factory=list)
    run: list[float] = msgspec.field(default_factory=list)
    n: int = 0
    anomalies: int = 0
    last_score: float = 0.0

    def check_fields(self) -> None:
        at_most(self, "min_samples", self.min_samples, "window", self.window)

    def score(self, x: float) -> float:
        """How far ``x`` lies from the baseline, in the detector's units (0 before ``min_samples``)."""
        raise NotImplementedError

    def baseline(self) -> dict[str, float]:
        """The statistics ``x`` is compared with, and the number of values behind them."""
        if not self.values:
            return {"count": 0.0}
        return {**self._baseline(), "count": float(len(self.values))}

    def _baseline(self) -> dict[str, float]:
        raise NotImplementedError

    def update(self, x: float) -> bool:
        """Score ``x`` against the baseline; True (and ``x`` left out of the baseline) when it is an anomaly."""
        self.n += 1
        values = self.values
        score = self.last_score = self.score(x) if len(values) >= self.min_samples else 0.0
        if score > self.threshold:
            self.anomalies += 1
            self.run.append(x)
            if len(self.run) >= self.min_samples:
                self._rebaseline()
            return True
        if self.run:
            self.run = []
        values.append(x)
        if len(values) > self.window:
            self._forget(values.pop(0))
        self._learn(x)
        return False

    def _learn(self, x: float) -> None:
        """Hook: ``x`` joined the window."""

    def _forget(self, x: float) -> None:
        """Hook: ``x`` left the window."""

    def _rebaseline(self) -> None:
        run = self.run
        self.values, self.run = [], []
        self._reset()
        for x in run[-self.window :]:
            self.values.append(x)
            self._learn(x)

    def _reset(self) -> None:
        """Hook: the window was emptied."""


def _ratio(distance: float, spread: float, level: float) -> float:
    """``distance / spread``, with the spread no less than a billionth of the ``level`` it is measured at (so
    rounding around a constant baseline is not an anomaly); infinite for a positive distance over no spread."""
    spread = max(spread, RELATIVE_NOISE * abs(level))
    if spread > 0.0:
        return distance / spread
    return math.inf if distance > 0.0 else 0.0


class ZScore(Rolling, tag="zscore"):
    """Rolling z-score: ``|x - mean| / std`` over the last ``window`` normal values.

    >>> detector = ZScore(window=50, threshold=3.0, min_samples=5)
    >>> [detector.update(x) for x in [10.0, 11.0, 9.0, 10.5, 9.5, 10.0, 30.0, 10.2]]
    [False, False, False, False, False, False, True, False]
    >>> round(detector.score(12.0), 3)
    3.033
    """

    total: float = 0.0
    squares: float = 0.0

    def score(self, x: float) -> float:
        n = len(self.values)
        mean = self.total / n
        var = max(self.squares / n - mean * mean, 0.0) * n / (n - 1)
        return _ratio(abs(x - mean), math.sqrt(var), mean)

    def _baseline(self) -> dict[str, float]:
        n = len(self.values)
        mean = self.total / n
        std = math.sqrt(max(self.squares / n - mean * mean, 0.0) * n / (n - 1)) if n > 1 else 0.0
        return {"mean": mean, "std": std}

    def _learn(self, x: float) -> None:
        self.total += x
        self.squares += x * x

    def _forget(self, x: float) -> None:
        self.total -= x
        self.squares -= x * x

    def _reset(self) -> None:
        self.total = self.squares = 0.0


class IQRFences(Rolling, tag="iqr", dict=True):
    """Tukey's fences: an anomaly lies more than ``threshold`` interquartile ranges below the first quartile or
    above the third; the score is that distance in IQRs (0 inside the quartiles). The quartiles are River's
    rolling quantiles (Rust; numpy's linear interpolation), rebuilt from ``values`` after decoding.

    >>> detector = IQRFences(window=50, threshold=1.5, min_samples=5)
    >>> [detector.update(x) for x in [1.0, 2.0, 3.0, 4.0, 5.0, 11.0, 3.0]]
    [False, False, False, False, False, True, False]
    >>> detector.baseline()
    {'q1': 2.25, 'q3': 3.75, 'iqr': 1.5, 'count': 6.0}
    """

    threshold: Positive = 1.5

    def score(self, x: float) -> float:
        try:
            low, high = self._rolling
        except AttributeError:
            low, high = self._quartiles()
        q1, q3 = low.get(), high.get()
        if q1 <= x <= q3:
            return 0.0
        return _ratio(q1 - x if x < q1 else x - q3, q3 - q1, q3)

    def _baseline(self) -> dict[str, float]:
        low, high = self._quartiles()
        q1, q3 = low.get(), high.get()
        return {"q1": q1, "q3": q3, "iqr": q3 - q1}

    def _quartiles(self) -> tuple[RollingQuantile, RollingQuantile]:
        try:
            return self._rolling
        except AttributeError:
            from river.stats import RollingQuantile  # loads part of River and narwhals: not before it is needed

            quartiles = self._rolling = (RollingQuantile(0.25, self.window), RollingQuantile(0.75, self.window))
            for x in self.values:
                quartiles[0].update(x)
                quartiles[1].update(x)
            return quartiles

    def _learn(self, x: float) -> None:
        try:
            low, high = self._rolling
        except AttributeError:
            self._quartiles()  # built from the values, this one included
            return
        low.update(x)
        high.update(x)

    def _reset(self) -> None:
        self.__dict__.pop("_rolling", None)


class MAD(Rolling, tag="mad"):
    """Robust z-score: ``0.6745 * |x - median| / MAD`` over the last ``window`` normal values (the MAD is the
    median absolute deviation from the median; 0.6745 makes it a standard deviation for normal data).

    >>> detector = MAD(window=50, min_samples=5)
    >>> [detector.update(x) for x in [10.0, 12.0, 11.0, 9.0, 13.0, 40.0]]
    [False, False, False, False, False, True]
    >>> detector.baseline()
    {'median': 11.0, 'mad': 1.0, 'count': 5.0}
    """

    threshold: Positive = 3.5
    ordered: list[float] = msgspec.field(default_factory=list)

    def score(self, x: float) -> float:
        median, mad = self._median_mad()
        return _ratio(MAD_TO_SIGMA * abs(x - median), mad, median)

    def _baseline(self) -> dict[str, float]:
        median, mad = self._median_mad()
        return {"median": median, "mad": mad}

    def _learn(self, x: float) -> None:
        bisect.insort(self.ordered, x)

    def _forget(self, x: float) -> None:
        del self.ordered[bisect.bisect_left(self.ordered, x)]

    def _reset(self) -> None:
        self.ordered = []

    def _median_mad(self) -> tuple[float, float]:
        """The median and the MAD, without sorting the deviations: below the middle of the sorted window they
        rise going down, from it they rise going up, so their k-th smallest is that of two sorted runs."""
        ordered = self.ordered
        n = len(ordered)
        middle = n // 2
        median = ordered[middle] if n % 2 else (ordered[middle - 1] + ordered[middle]) / 2

        def below(i: int) -> float:
            return median - ordered[middle - 1 - i]

        def above(j: int) -> float:
            return ordered[middle + j] - median

        def smallest(k: int) -> float:
            """The k-th smallest deviation (from 0): i from below and k + 1 - i from above."""
            lo, hi = max(0, k + 1 - (n - middle)), min(k + 1, middle)
            while lo < hi:
                i = (lo + hi) // 2
                if above(k - i) > below(i):
                    lo = i + 1
                else:
                    hi = i
            j = k + 1 - lo
            return max(below(lo - 1) if lo else -math.inf, above(j - 1) if j else -math.inf)

        mad = smallest(middle) if n % 2 else (smallest(middle - 1) + smallest(middle)) / 2
        return median, mad


class Mahalanobis(Checked):
    """Mahalanobis distance of a vector of metrics from their running mean, under their running covariance
    shrunk towards its diagonal by ``shrinkage`` (so a few samples or collinear metrics still give a stable
    inverse). ``x`` is an anomaly when its squared distance passes the ``1 - alpha`` chi-square quantile.

    >>> detector = Mahalanobis(dimensions=2, min_samples=4)
    >>> points = [[0.0, 0.0], [1.0, 1.0], [2.0, 2.1], [3.0, 2.9], [4.0, 4.0], [2.0, 2.0]]
    >>> [detector.update(p) for p in points]
    [False, False, False, False, False, False]
    >>> detector.update([3.0, -3.0]), detector.update([5.0, 5.0])
    (True, False)
    """

    dimensions: Annotated[int, Meta(ge=1)]
    alpha: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.001
    shrinkage: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.1
    min_samples: Annotated[int, Meta(ge=2)] = 20
    count: int = 0
    mean: list[float] = msgspec.field(default_factory=list)
    m2: list[list[float]] = msgspec.field(default_factory=list)
    run: list[list[float]] = msgspec.field(default_factory=list)
    n: int = 0
    anomalies: int = 0
    last_score: float = 0.0

    @property
    def threshold(self) -> float:
        """The squared distance beyond which a vector is an anomaly."""
        return float(scipy.stats.chi2.ppf(1.0 - self.alpha, self.dimensions))

    def score(self, x: Sequence[float]) -> float:
        """The squared Mahalanobis distance of ``x`` from the running mean (0 before ``min_samples``)."""
        if self.count < self.min_samples:
            return 0.0
        vector = self._vector(x)
        cov = np.asarray(self.m2) / (self.count - 1)
        cov = (1.0 - self.shrinkage) * cov + self.shrinkage * np.diag(np.diag(cov))
        cov += np.eye(self.dimensions) * 1e-12 * max(float(np.trace(cov)), 1.0)
        d = vector - np.asarray(self.mean)
        return float(d @ np.linalg.solve(cov, d))

    def baseline(self) -> dict[str, float]:
        """The running mean per dimension and the number of vectors behind it."""
        return {**{f"mean_{i}": m for i, m in enumerate(self.mean)}, "count": float(self.count)}

    def update(self, x: Sequence[float]) -> bool:
        """Score ``x``; True (and ``x`` left out of the mean and covariance) when it is an anomaly."""
        self.n += 1
        score = self.last_score = self.score(x)
        if score > self.threshold:
            self.anomalies += 1
            self.run.append(list(x))
            if len(self.run) >= self.min_samples:
                run, self.run, self.count, self.mean, self.m2 = self.run, [], 0, [], []
                for vector in run:
                    self._learn(self._vector(vector))
            return True
        self.run.clear()
        self._learn(self._vector(x))
        return False

    def _vector(self, x: Sequence[float]) -> np.ndarray:
        vector = np.asarray(x, dtype=float)
        if vector.shape != (self.dimensions,) or not np.isfinite(vector).all():
            raise InvalidArgument(
                f"x = {list(x)!r}: expected {self.dimensions} finite values", argument="x", value=list(x)
            )
        return vector

    def _learn(self, vector: np.ndarray) -> None:
        """Welford's update of the mean and the sum of outer products of deviations."""
        self.count += 1
        mean = np.asarray(self.mean) if self.mean else np.zeros(self.dimensions)
        m2 = np.asarray(self.m2) if self.m2 else np.zeros((self.dimensions, self.dimensions))
        delta = vector - mean
        mean = mean + delta / self.count
        m2 = m2 + np.outer(delta, vector - mean)
        self.mean, self.m2 = mean.tolist(), m2.tolist()

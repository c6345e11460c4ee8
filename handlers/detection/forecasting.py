"""Online forecasts of a series of window values: moving average, simple and Holt's exponential smoothing,
linear-trend regression, and an ensemble weighting them by their recent error; each with a prediction
interval.

Each forecaster is ``update(x)`` then ``forecast(h) -> Prediction`` (the value ``h`` steps ahead and its
interval at ``level``). Before taking in a value, each scores its one-step forecast of it, so its mean
absolute error (MAE) and mean absolute percentage error (MAPE) are known as it goes.

Intervals: the moving average and the regression use their residual spread with the t quantile; the
exponential smoothers use the standard deviation of their one-step errors, widened with the horizon as in
R. J. Hyndman and G. Athanasopoulos, "Forecasting: principles and practice" (3rd ed.), table 9.8 (simple:
``sqrt(1 + (h - 1) alpha^2)``; Holt: ``sqrt(1 + sum_{j<h} alpha^2 (1 + j beta)^2)``).
"""

from __future__ import annotations

import functools
import math
from typing import Annotated

import msgspec
import numpy as np
import scipy  # its submodules load on first use
from msgspec import Meta
from rtopt.handlers.checked import Checked

Smoothing = Annotated[float, Meta(gt=0.0, le=1.0)]
Level = Annotated[float, Meta(gt=0.0, lt=1.0)]


class Prediction(msgspec.Struct, frozen=True):
    """A forecast ``point`` with its prediction interval ``[low, high]``."""

    point: float
    low: float
    high: float


class Errors(msgspec.Struct):
    """Running one-step forecast errors: their count, absolute and squared sums, and the percentage errors
    of the values that were not zero."""

    n: int = 0
    absolute: float = 0.0
    squared: float = 0.0
    percentages: int = 0
    percentage: float = 0.0

    def add(self, forecast: float, actual: float) -> None:
        error = actual - forecast
        self.n += 1
        self.absolute += abs(error)
        self.squared += error * error
        if actual != 0.0:
            self.percentages += 1
            self.percentage += abs(error / actual)

    @property
    def mae(self) -> float:
        """Mean absolute error (0 before the first)."""
        return self.absolute / self.n if self.n else 0.0

    @property
    def mape(self) -> float:
        """Mean absolute percentage error, as a fraction (0 before the first non-zero value)."""
        return self.percentage / self.percentages if self.percentages else 0.0

    @property
    def rmse(self) -> float:
        """Root mean squared error (0 before the first)."""
        return math.sqrt(self.squared / self.n) if self.n else 0.0


class Forecaster(Checked):
    """What every forecaster shares: its interval ``level``, the values seen and its one-step errors.

    >>> forecaster = ExponentialSmoothing()
    >>> for x in (1.0, 2.0, 3.0, 4.0):
    ...     forecaster.update(x)
    >>> forecaster.n, forecaster.ready()
    (4, True)
    """

    level: Level = 0.95
    n: int = 0
    errors: Errors = msgspec.field(default_factory=Errors)

    def update(self, x: float) -> None:
        """Score the one-step forecast of ``x``, then take ``x`` in."""
        if self.ready():
            self.errors.add(self.point(1), x)
        self.n += 1
        self._learn(x)

    def ready(self) -> bool:
        """True once it can forecast."""
        return self.n >= 2

    def forecast(self, h: int = 1) -> Prediction:
        """The value ``h`` steps ahead, with its prediction interval."""
        point, half_width = self.point(h), self.half_width(h)
        return Prediction(point, point - half_width, point + half_width)

    def point(self, h: int = 1) -> float:
        """The point forecast ``h`` steps ahead."""
        raise NotImplementedError

    def half_width(self, h: int = 1) -> float:
        """Half the width of the prediction interval ``h`` steps ahead."""
        raise NotImplementedError

    def _learn(self, x: float) -> None:
        raise NotImplementedError


@functools.cache
def _z(level: float) -> float:
    return float(scipy.stats.norm.ppf(0.5 + level / 2))


@functools.cache
def _t(level: float, dof: int) -> float:
    return float(scipy.stats.t.ppf(0.5 + level / 2, dof))


class Windowed(Forecaster):
    """A forecaster over the last ``window`` values."""

    window: Annotated[int, Meta(ge=3)] = 10
    values: list[float] = msgspec.field(default_factory=list)

    def _learn(self, x: float) -> None:
        self.values.append(x)
        del self.values[: -self.window]


class MovingAverage(Windowed, tag="moving_average"):
    """The mean of the last ``window`` values, for every horizon; the interval is that of a new value from
    the same distribution (t quantile, ``s * sqrt(1 + 1/k)``).

    >>> model = MovingAverage(window=3)
    >>> for x in [10.0, 12.0, 11.0, 13.0]:
    ...     model.update(x)
    >>> model.forecast(2).point
    12.0
    """

    window: Annotated[int, Meta(ge=2)] = 5

    def point(self, h: int = 1) -> float:
        return sum(self.values) / len(self.values)

    def half_width(self, h: int = 1) -> float:
        k = len(self.values)
        return _t(self.level, k - 1) * float(np.std(self.values, ddof=1)) * math.sqrt(1 + 1 / k)


class ExponentialSmoothing(Forecaster, tag="exponential_smoothing"):
    """Simple exponential smoothing: ``l = alpha x + (1 - alpha) l``, a flat forecast at the level.

    >>> model = ExponentialSmoothing(alpha=0.5)
    >>> for x in [10.0, 14.0]:
    ...     model.update(x)
    >>> model.forecast(3).point
    12.0
    """

    alpha: Smoothing = 0.3
    smoothed: float = 0.0

    def _learn(self, x: float) -> None:
        self.smoothed = x if self.n == 1 else self.alpha * x + (1 - self.alpha) * self.smoothed

    def point(self, h: int = 1) -> float:
        return self.smoothed

    def half_width(self, h: int = 1) -> float:
        return _z(self.level) * self.errors.rmse * math.sqrt(1 + (h - 1) * self.alpha**2)


class Holt(Forecaster, tag="holt"):
    """Holt's linear trend: a smoothed level and slope (``alpha``, ``beta``), forecast ``l + h b``.

    >>> model = Holt(alpha=0.5, beta=0.5)
    >>> for x in [1.0, 2.0, 3.0, 4.0]:
    ...     model.update(x)
    >>> model.forecast(2).point
    6.0
    """

    alpha: Smoothing = 0.5
    beta: Smoothing = 0.3
    smoothed: float = 0.0
    slope: float = 0.0

    def _learn(self, x: float) -> None:
        if self.n == 1:
            self.smoothed = x
            return
        if self.n == 2:
            self.slope = x - self.smoothed
            self.smoothed = x
            return
        previous = self.smoothed
        self.smoothed = self.alpha * x + (1 - self.alpha) * (previous + self.slope)
        self.slope = self.beta * (self.smoothed - previous) + (1 - self.beta) * self.slope

    def point(self, h: int = 1) -> float:
        return self.smoothed + h * self.slope

    def half_width(self, h: int = 1) -> float:
        widening = math.sqrt(1 + sum((self.alpha * (1 + j * self.beta)) ** 2 for j in range(1, h)))
        return _z(self.level) * self.errors.rmse * widening


class LinearTrend(Windowed, tag="linear_trend"):
    """A least-squares line through the last ``window`` values, extended ``h`` steps, with the regression's
    prediction interval.

    >>> model = LinearTrend(window=4)
    >>> for x in [1.0, 3.0, 5.0, 7.0]:
    ...     model.update(x)
    >>> round(model.forecast(1).point, 9)
    9.0
    """

    def ready(self) -> bool:
        return self.n >= 3

    def _fit(self) -> tuple[float, float]:
        return tuple(np.polyfit(np.arange(len(self.values)), self.values, 1))

    def point(self, h: int = 1) -> float:
        slope, intercept = self._fit()
        return float(intercept + slope * (len(self.values) - 1 + h))

    def half_width(self, h: int = 1) -> float:
        k = len(self.values)
        x = np.arange(k)
        slope, intercept = self._fit()
        residuals = np.asarray(self.values) - (intercept + slope * x)
        s = math.sqrt(float(residuals @ residuals) / (k - 2))
        at = k - 1 + h
        spread = s * math.sqrt(1 + 1 / k + (at - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
        return _t(self.level, k - 2) * spread


class Ensemble(Forecaster, tag="ensemble"):
    """The four forecasters above, weighted by the inverse of their recent mean absolute error (an
    exponentially weighted average with ``memory``; equal weights until each has an error). The interval
    is the weighted mean of theirs.

    >>> model = Ensemble()
    >>> for x in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]:
    ...     model.update(x)
    >>> max(model.weights(), key=model.weights().get)
    'holt'
    >>> round(model.forecast(1).point, 1)
    9.0
    """

    memory: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.8
    members: list[MovingAverage | ExponentialSmoothing | Holt | LinearTrend] = msgspec.field(
        default_factory=lambda: [MovingAverage(), ExponentialSmoothing(), Holt(), LinearTrend()]
    )
    recent: list[float] = msgspec.field(default_factory=list)

    def ready(self) -> bool:
        return any(member.ready() for member in self.members)

    def _learn(self, x: float) -> None:
        if not self.recent:
            self.recent = [-1.0] * len(self.members)
        for i, member in enumerate(self.members):
            if member.ready():
                error = abs(member.forecast(1).point - x)
                self.recent[i] = (
                    error if self.recent[i] < 0 else self.memory * self.recent[i] + (1 - self.memory) * error
                )
            member.update(x)

    def weights(self) -> dict[str, float]:
        """The weight of each ready member, by its tag."""
        ready = [(i, m) for i, m in enumerate(self.members) if m.ready()]
        if any(self.recent[i] < 0 for i, _ in ready) or not ready:
            return {type(m).__struct_config__.tag: 1.0 / len(ready) for _, m in ready}
        inverse = {type(m).__struct_config__.tag: 1.0 / max(self.recent[i], 1e-12) for i, m in ready}
        total = sum(inverse.values())
        return {tag: value / total for tag, value in inverse.items()}

    def point(self, h: int = 1) -> float:
        weights = self.weights()
        return sum(weights[type(m).__struct_config__.tag] * m.point(h) for m in self.members if m.ready())

    def half_width(self, h: int = 1) -> float:
        weights = self.weights()
        return sum(weights[type(m).__struct_config__.tag] * m.half_width(h) for m in self.members if m.ready())

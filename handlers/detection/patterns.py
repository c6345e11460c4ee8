"""Performance patterns in a short series of window values: degradation, improvement, oscillation, plateau,
anomaly, each with the test behind it.

- Trend (degradation or improvement, by the metric's good direction): least-squares slope, its two-sided
  p-value (``scipy.stats.linregress``); the magnitude is the fitted change over the series.
- Oscillation: autocorrelation of the detrended series. A period ``k`` shows as a positive autocorrelation at
  lag ``k`` after a negative one at a shorter lag (``k = 2``: a negative one at lag 1 alone); under white noise
  ``sqrt(n) r_k`` is about N(0, 1), and the p-value is Bonferroni-corrected over the lags tried.
- Plateau (only after a change): an equivalence test (two one-sided t-tests) that the fitted change over the
  series lies within ``plateau_tolerance`` of the mean, with a coefficient of variation under the same.
- Anomaly: the last value against the prediction interval of the line fitted to the others.

A pattern is kept when its confidence (one minus its p-value) reaches ``confidence`` and the series holds at
least ``min_windows`` values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated

import msgspec
import numpy as np
import scipy  # its submodules load on first use
from msgspec import Meta
from rtopt.handlers.checked import Checked
from rtopt.handlers.detection.events import Correlation, Recommendation

DEGRADATION, IMPROVEMENT, OSCILLATION, PLATEAU, ANOMALY = (
    "degradation",
    "improvement",
    "oscillation",
    "plateau",
    "anomaly",
)
KINDS = (DEGRADATION, IMPROVEMENT, OSCILLATION, PLATEAU, ANOMALY)
RELATIVE_NOISE = 1e-9  # variation below this fraction of a series' level is rounding, not signal


class PatternOptions(Checked, frozen=True):
    """How patterns are searched: the confidence a pattern needs, the fewest windows it may span, the smallest
    change a trend must make over the series (relative to the mean: a significant but slight slope is not a
    degradation worth acting on), the tolerance of a plateau (relative to the mean) and the p-value below
    which the last value is an anomaly.

    >>> PatternOptions().confidence, PatternOptions().min_windows
    (0.95, 8)
    """

    confidence: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.95
    min_windows: Annotated[int, Meta(ge=4)] = 8
    min_change: Annotated[float, Meta(ge=0.0)] = 0.1
    plateau_tolerance: Annotated[float, Meta(gt=0.0)] = 0.05
    anomaly_p: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.001


class Found(msgspec.Struct, frozen=True):
    """A pattern found in a series: its kind, confidence, p-value, magnitude (metric units) and test details."""

    kind: str
    confidence: float
    significance: float
    magnitude: float
    details: dict[str, float]

    @classmethod
    def of(cls, kind: str, p_value: float, magnitude: float, **details: float) -> Found:
        """A pattern of ``kind`` whose test gave ``p_value`` (plain floats, as events hold)."""
        p = float(p_value)
        return cls(kind, 1.0 - p, p, float(magnitude), {name: float(v) for name, v in details.items()})


def trend(values: Sequence[float], lower_is_better: bool, options: PatternOptions) -> Found | None:
    """A degradation or improvement: a least-squares slope different from zero.

    >>> trend([1.0, 0.9, 0.85, 0.7, 0.65, 0.5, 0.45, 0.3], lower_is_better=False, options=PatternOptions()).kind
    'degradation'
    """
    n = len(values)
    if n < options.min_windows or np.ptp(values) == 0.0:
        return None
    fit = scipy.stats.linregress(np.arange(n), values)
    change = fit.slope * (n - 1)
    if not 1.0 - fit.pvalue >= options.confidence or abs(change) < options.min_change * abs(float(np.mean(values))):
        return None
    worse = fit.slope > 0 if lower_is_better else fit.slope < 0
    kind = DEGRADATION if worse else IMPROVEMENT
    return Found.of(kind, fit.pvalue, change, slope=fit.slope, r_squared=fit.rvalue**2, stderr=fit.stderr)


def _detrended(values: Sequence[float]) -> np.ndarray:
    x = np.arange(len(values))
    fit = scipy.stats.linregress(x, values)
    return np.asarray(values) - (fit.intercept + fit.slope * x)


def oscillation(values: Sequence[float], options: PatternOptions) -> Found | None:
    """A repeating rise and fall: a significant autocorrelation of the detrended series at its period.

    >>> oscillation([1.0, 0.0] * 6, PatternOptions()).details["period"]
    2.0
    """
    n = len(values)
    if n < options.min_windows:
        return None
    residuals = _detrended(values)
    centred = residuals - residuals.mean()
    denominator = float(centred @ centred)
    if denominator <= (RELATIVE_NOISE * float(np.mean(np.abs(values)))) ** 2 * n:
        return None  # a straight line, up to rounding
    lags = range(1, max(n // 3, 2) + 1)
    acf = [float(centred[:-k] @ centred[k:]) / denominator for k in lags]
    best_p, period = 1.0, 0
    for k, r in zip(lags, acf, strict=True):
        if k == 1:
            p = scipy.stats.norm.cdf(r * math.sqrt(n))  # alternation: negative at lag 1
        elif min(acf[: k - 1]) < 0.0:
            p = scipy.stats.norm.sf(r * math.sqrt(n))  # a period k: positive at k after a negative lag before it
        else:
            continue
        if p < best_p:
            best_p, period = p, (2 if k == 1 else k)
    p_value = min(1.0, best_p * len(lags))
    if period == 0 or not 1.0 - p_value >= options.confidence:
        return None
    amplitude = float(np.std(residuals) * math.sqrt(2.0))
    return Found.of(OSCILLATION, p_value, amplitude, period=period, amplitude=amplitude)


def plateau(values: Sequence[float], options: PatternOptions) -> Found | None:
    """Levelled off: the change over the series is shown to be within the tolerance, with low variation.

    >>> plateau([0.80, 0.81, 0.80, 0.79, 0.80, 0.81, 0.80, 0.80, 0.79, 0.80], PatternOptions()).kind
    'plateau'
    """
    n = len(values)
    mean = float(np.mean(values))
    if n < options.min_windows or mean == 0.0:
        return None
    margin = options.plateau_tolerance * abs(mean)
    spread = float(np.std(values, ddof=1))
    if spread > margin:
        return None
    if spread == 0.0:
        return Found.of(PLATEAU, 0.0, 0.0, slope=0.0, cv=0.0)
    fit = scipy.stats.linregress(np.arange(n), values)
    bound = margin / (n - 1)  # the slope that would move the level by the whole margin over the series
    if fit.stderr == 0.0:
        p_value = 0.0 if abs(fit.slope) < bound else 1.0
    else:
        dof = n - 2
        p_value = max(
            scipy.stats.t.sf((fit.slope + bound) / fit.stderr, dof),
            scipy.stats.t.cdf((fit.slope - bound) / fit.stderr, dof),
        )
    if not 1.0 - p_value >= options.confidence:
        return None
    return Found.of(PLATEAU, p_value, spread, slope=fit.slope, cv=spread / abs(mean))


def anomaly(values: Sequence[float], options: PatternOptions) -> Found | None:
    """The last value outside the prediction interval of the line through the ones before it.

    >>> anomaly([0.8, 0.81, 0.79, 0.8, 0.82, 0.8, 0.79, 0.81, 0.2], PatternOptions()).kind
    'anomaly'
    """
    n = len(values) - 1
    if n < options.min_windows - 1 or n < 4:
        return None
    x = np.arange(n)
    history = np.asarray(values[:-1])
    fit = scipy.stats.linregress(x, history)
    residuals = history - (fit.intercept + fit.slope * x)
    s = math.sqrt(float(residuals @ residuals) / (n - 2))
    predicted = fit.intercept + fit.slope * n
    deviation = values[-1] - predicted
    if s == 0.0:
        if deviation == 0.0:
            return None
        p_value = 0.0
    else:
        se = s * math.sqrt(1.0 + 1.0 / n + (n - x.mean()) ** 2 / float(((x - x.mean()) ** 2).sum()))
        p_value = float(2.0 * scipy.stats.t.sf(abs(deviation) / se, n - 2))
    if p_value >= options.anomaly_p:
        return None
    return Found.of(ANOMALY, p_value, deviation, predicted=predicted, value=values[-1])


def find_patterns(
    values: Sequence[float], lower_is_better: bool, options: PatternOptions, after_change: bool = False
) -> list[Found]:
    """Every pattern in ``values`` (oldest first): a trend or a plateau (the latter only ``after_change``),
    an oscillation, an anomaly of the last value."""
    found = [anomaly(values, options), oscillation(values, options)]
    level = trend(values, lower_is_better, options)
    if level is None and after_change:
        level = plateau(values, options)
    return [f for f in (level, *found) if f is not None]


def correlations(series: Mapping[str, Sequence[float]], metric: str) -> dict[str, Correlation]:
    """Pearson and Spearman correlations of ``metric`` with each other metric of ``series`` (same windows);
    a constant series correlates with nothing and is left out."""
    own = np.asarray(series[metric])
    out = {}
    for other, values in series.items():
        other_values = np.asarray(values)
        if other == metric or len(other_values) != len(own) or len(own) < 3:
            continue
        if np.ptp(own) == 0.0 or np.ptp(other_values) == 0.0:
            continue
        pearson = scipy.stats.pearsonr(own, other_values)
        spearman = scipy.stats.spearmanr(own, other_values)
        if not (math.isfinite(spearman.statistic) and math.isfinite(spearman.pvalue)):
            continue
        out[other] = Correlation(
            pearson=float(pearson.statistic),
            pearson_p=min(1.0, float(pearson.pvalue)),
            spearman=float(spearman.statistic),
            spearman_p=min(1.0, float(spearman.pvalue)),
        )
    return out


def priority(relative: float) -> str:
    """How urgent a change of ``relative`` size (a fraction of the metric's level) is."""
    size = abs(relative)
    return "critical" if size >= 0.3 else "high" if size >= 0.15 else "medium" if size >= 0.05 else "low"


class Advice(msgspec.Struct, frozen=True):
    """The recommendation for one kind of pattern: its action, a fixed priority (None: by the size of the
    change), a description to fill in, the share of the change a fix is expected to win back and the steps."""

    action: str
    priority: str | None
    description: str
    recovers: float
    steps: list[str]


ADVICE = {
    DEGRADATION: Advice(
        "strategy_change",
        None,
        "{metric} has moved the wrong way by {magnitude:.4g} over the windows",
        1.0,
        [
            "raise exploration so the policy re-learns the arms",
            "compare the affected variant with the others",
            "roll back the latest change to the prompt or model if it coincides",
        ],
    ),
    IMPROVEMENT: Advice(
        "capture_configuration",
        "low",
        "{metric} improved by {magnitude:.4g}: keep what caused it",
        0.0,
        ["record the configuration behind the improvement", "promote it if it holds"],
    ),
    OSCILLATION: Advice(
        "parameter_adjustment",
        "medium",
        "{metric} oscillates with a period of {period:.0f} windows",
        0.5,
        ["smooth the policy's updates (a lower decay or a longer window)", "look for a periodic load"],
    ),
    PLATEAU: Advice(
        "ab_test_start",
        "low",
        "{metric} has levelled off at {level:.4g}",
        0.0,
        ["test new variants against the current best", "retire arms that no longer win"],
    ),
    ANOMALY: Advice(
        "investigate",
        None,
        "{metric} = {value:.4g} where {predicted:.4g} was expected",
        1.0,
        ["check the requests of that window for errors or unusual input"],
    ),
}


def recommendations(found: Found, metric: str, level: float) -> list[Recommendation]:
    """What to do about ``found`` in ``metric`` (whose recent level is ``level``).

    >>> [r.priority for r in recommendations(Found.of(DEGRADATION, 0.01, -0.2), "quality", 0.8)]
    ['high']
    """
    advice = ADVICE[found.kind]
    relative = abs(found.magnitude / level) if level else 0.0
    description = advice.description.format(metric=metric, magnitude=found.magnitude, level=level, **found.details)
    return [
        Recommendation(
            action=advice.action,
            priority=advice.priority or priority(relative),
            description=description,
            expected_improvement=advice.recovers * relative,
            steps=list(advice.steps),
        )
    ]

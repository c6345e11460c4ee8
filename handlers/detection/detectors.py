"""What the detection handler finds in a window, one concept each: drift, anomalies of one metric and of a
key's metrics together, patterns, threshold breaches and forecasts.

Each detector takes a window's observations and returns its findings; it changes its own detectors' state
and nothing else (no alerts, no actions, no events): :mod:`~rtopt.handlers.detection.response` turns
findings into events.
"""

from __future__ import annotations

import msgspec
from rtopt.handlers.detection import patterns
from rtopt.handlers.detection.anomaly import MAD, IQRFences, Mahalanobis, ZScore
from rtopt.handlers.detection.drift import ADWIN, CUSUM, PageHinkley
from rtopt.handlers.detection.events import Correlation, Forecast
from rtopt.handlers.detection.forecasting import Ensemble
from rtopt.handlers.detection.options import DetectionOptions
from rtopt.handlers.detection.state import DetectionState, JointState, MetricState
from rtopt.handlers.detection.thresholds import Limit, breaches
from rtopt.streams.events import WindowClosed

ANOMALY_DETECTORS = {"zscore": ZScore, "iqr": IQRFences, "mad": MAD}
CALIBRATED_CONFIDENCE = 0.9999  # Page-Hinkley and CUSUM: one false alarm per ~10,000 stationary windows
MAX_SCORE = 1e300  # the score of a value off a baseline without spread (infinite) as events record it


class Drift(msgspec.Struct, frozen=True):
    """A change in the level of ``metric`` found by ``detector`` at the metric's ``seen``-th window: its
    ``direction``, the event time it began (``change_point``), the test's evidence (``statistics``) and the
    confidence a response to it carries."""

    metric: str
    seen: int
    detector: str
    direction: str
    change_point: float
    statistics: dict[str, float]
    confidence: float


class Anomaly(msgspec.Struct, frozen=True):
    """A window whose ``value`` of ``metric`` (of several metrics joined by ``+``) is unusual: its ``score``
    against ``threshold`` and the ``baseline`` it was compared with, at the ``seen``-th window."""

    metric: str
    seen: int
    detector: str
    value: float
    score: float
    threshold: float
    baseline: dict[str, float]


class Pattern(msgspec.Struct, frozen=True):
    """A pattern (``found``) in the recent windows of ``metric`` at its ``seen``-th window: the first of them
    starts at ``start``, the last three average ``level``, and ``series`` holds every metric of the key over
    the same windows."""

    metric: str
    seen: int
    found: patterns.Found
    start: float
    level: float
    series: dict[str, list[float]]

    def correlations(self) -> dict[str, Correlation]:
        """The correlations of the metric with each other metric of ``series``."""
        return patterns.correlations(self.series, self.metric)


class Breach(msgspec.Struct, frozen=True):
    """A window ``value`` on the wrong side of ``limit``, at the key's ``seen``-th window."""

    limit: Limit
    value: float
    seen: int


class DriftDetection:
    """ADWIN, CUSUM and Page-Hinkley (those ``options.drift`` names) over the values of one metric; Page-Hinkley
    reads them in standard deviations of the first ``warmup`` windows.

    >>> drift = DriftDetection(DetectionOptions(drift=["cusum"], warmup=5))
    >>> watched, found = MetricState(**drift.detectors()), []
    >>> for i, value in enumerate([1.0, 1.1, 0.9, 1.0, 1.05, 0.95] * 3 + [3.0] * 5):
    ...     watched.record(value, start=60.0 * i, end=60.0 * (i + 1), keep=20, warmup=5)
    ...     found += drift.observe(watched, "quality", value)
    >>> [(d.detector, d.direction, d.change_point, d.seen) for d in found]
    [('cusum', 'up', 1080.0, 19)]
    """

    def __init__(self, options: DetectionOptions) -> None:
        self.options = options

    def detectors(self) -> dict[str, ADWIN | PageHinkley | CUSUM | None]:
        """Fresh detectors for a new metric, by the name of their field in :class:`MetricState`."""
        options = self.options
        return {
            "adwin": ADWIN(delta=options.adwin_delta, clock=1, replayable=True) if "adwin" in options.drift else None,
            "page_hinkley": PageHinkley(threshold=options.page_hinkley_threshold, min_instances=options.warmup)
            if "page_hinkley" in options.drift
            else None,
            "cusum": CUSUM(threshold=options.cusum_threshold, warmup=options.warmup)
            if "cusum" in options.drift
            else None,
        }

    def observe(self, watched: MetricState, metric: str, value: float) -> list[Drift]:
        """The changes ``value``, the metric's newest window, completes (ADWIN's, CUSUM's, Page-Hinkley's)."""
        options = self.options
        scale = watched.scale()
        fired: list[tuple[str, ADWIN | PageHinkley | CUSUM, str, float]] = []
        if watched.adwin is not None and watched.adwin.update(value):
            evidence = watched.adwin.evidence
            direction = "up" if evidence["mean_after"] > evidence["mean_before"] else "down"
            fired.append(("adwin", watched.adwin, direction, 1.0 - options.adwin_delta))
        if watched.cusum is not None and watched.cusum.update(value):
            fired.append(("cusum", watched.cusum, watched.cusum.direction, CALIBRATED_CONFIDENCE))
        if (
            watched.page_hinkley is not None
            and scale is not None
            and watched.spread.n >= options.warmup
            and watched.page_hinkley.update(value / scale)
        ):
            fired.append(("page_hinkley", watched.page_hinkley, watched.page_hinkley.direction, CALIBRATED_CONFIDENCE))
        if fired:
            watched.changed = True
        return [
            Drift(
                metric, watched.windows, name, direction, _change_time(watched, detector), detector.evidence, confidence
            )
            for name, detector, direction, confidence in fired
        ]


def _change_time(watched: MetricState, detector: ADWIN | PageHinkley | CUSUM) -> float:
    """The start of the first window after the change ``detector`` found (the oldest kept, if older)."""
    since = detector.n - (detector.change_point or 0)  # windows from the change to now
    starts = watched.starts
    return starts[-since] if 0 < since <= len(starts) else starts[0]


class AnomalyDetection:
    """The ``options.anomaly`` detector (z-score, IQR fences or MAD) over the values of one metric."""

    def __init__(self, options: DetectionOptions) -> None:
        self.options = options

    def detector(self) -> ZScore | IQRFences | MAD | None:
        """A fresh detector for a new metric (None when anomalies are not looked for)."""
        options = self.options
        if options.anomaly == "none":
            return None
        return ANOMALY_DETECTORS[options.anomaly](window=options.anomaly_window, min_samples=options.warmup)

    def observe(self, watched: MetricState, metric: str, value: float) -> Anomaly | None:
        """``value``, the metric's newest window, if it is an anomaly."""
        detector = watched.anomaly
        if detector is None or not detector.update(value):
            return None
        score = min(detector.last_score, MAX_SCORE)
        baseline = detector.baseline()
        return Anomaly(metric, watched.windows, self.options.anomaly, value, score, detector.threshold, baseline)


class JointAnomalyDetection:
    """The Mahalanobis distance of a key's watched metrics taken together (fixed by its first window with two
    or more of them)."""

    def __init__(self, options: DetectionOptions) -> None:
        self.options = options

    def observe(self, state: DetectionState, window: WindowClosed) -> tuple[JointState, Anomaly] | None:
        """The window's vector of metrics if it is an anomaly, with the joint state it was found in."""
        options = self.options
        where = f"{window.pipeline}/{window.key}"
        joint = state.joint.get(where)
        if joint is None:
            names = sorted(m for m in window.values if options.watches_metric(m))
            if len(names) < 2:
                return None
            detector = Mahalanobis(dimensions=len(names), min_samples=max(options.warmup, len(names) + 2))
            joint = state.joint[where] = JointState(metrics=names, detector=detector)
        if any(m not in window.values for m in joint.metrics):
            return None
        joint.windows += 1
        vector = [window.values[m] for m in joint.metrics]
        detector = joint.detector
        baseline = {f"mean {name}": mean for name, mean in zip(joint.metrics, detector.mean, strict=False)}
        baseline["count"] = float(detector.count)
        if not detector.update(vector):
            return None
        score = detector.last_score
        metric = "+".join(joint.metrics)
        return joint, Anomaly(metric, joint.windows, "mahalanobis", score, score, detector.threshold, baseline)


class PatternDetection:
    """Patterns (:mod:`~rtopt.handlers.detection.patterns`) in the recent windows of one metric."""

    def __init__(self, options: DetectionOptions) -> None:
        self.options = options

    def observe(self, metrics: dict[str, MetricState], metric: str, window: WindowClosed) -> list[Pattern] | None:
        """The patterns in ``metric``'s recent windows, None when ``window`` did not carry it. A trend marks the
        metric as changed (a plateau is looked for after a change)."""
        watched = metrics[metric]
        if watched.ends[-1] != window.end:
            return None
        lower_is_better = self.options.improves_downwards(metric)
        found = patterns.find_patterns(watched.values, lower_is_better, self.options.patterns, watched.changed)
        if not found:
            return []
        if any(f.kind in (patterns.DEGRADATION, patterns.IMPROVEMENT) for f in found):
            watched.changed = True
        span = len(watched.values)
        series = {name: m.values[-span:] for name, m in metrics.items() if len(m.values) >= span}
        level = sum(watched.values[-3:]) / len(watched.values[-3:])
        return [Pattern(metric, watched.windows, f, watched.starts[0], level, series) for f in found]


class ThresholdDetection:
    """The limits of the ``options.profile`` threshold profile a window breaks."""

    def __init__(self, options: DetectionOptions) -> None:
        self.options = options

    def observe(self, state: DetectionState, window: WindowClosed) -> list[Breach]:
        """The limits ``window`` breaks, with the values that break them."""
        profile = self.options.profile
        if profile == "none":
            return []
        where = f"{window.pipeline}/{window.key}"
        seen = state.windows[where] = state.windows.get(where, 0) + 1
        return [Breach(limit, value, seen) for limit, value in breaches(window.values, profile)]


class Forecasting:
    """Forecasts of the ``options.forecast`` values of a key for the next ``forecast_horizon`` windows (a
    forecast needs no response: the finding is the event)."""

    def __init__(self, options: DetectionOptions) -> None:
        self.options = options

    def observe(self, state: DetectionState, window: WindowClosed) -> list[Forecast]:
        """Each forecast value of ``window`` taken in, and the forecasts of those ready."""
        horizon = self.options.forecast_horizon
        step = window.end - window.start
        out = []
        for metric in self.options.forecast:
            value = float(window.count) if metric == "count" else window.values.get(metric)
            if value is None:
                continue
            model = state.forecasts.setdefault(f"{window.pipeline}/{window.key}/{metric}", Ensemble())
            model.update(value)
            if not model.ready():
                continue
            ahead = [model.forecast(h) for h in range(1, horizon + 1)]
            out.append(
                Forecast(
                    pipeline=window.pipeline,
                    key=window.key,
                    metric=metric,
                    start=window.end,
                    step=step,
                    points=[p.point for p in ahead],
                    lows=[p.low for p in ahead],
                    highs=[p.high for p in ahead],
                    level=model.level,
                    weights=model.weights(),
                    mae=model.errors.mae,
                    mape=model.errors.mape,
                    scored=model.errors.n,
                )
            )
        return out

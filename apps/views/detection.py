"""Views of what the detectors found and what was done about it: drift, anomalies, patterns and threshold
breaches, the responses to them, and forecasts against the values the windows then held."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from typing import Any, ClassVar

import pandas as pd
from rtopt.apps.views.view import DEFAULT_BUCKET_S, MAX_POINTS, View
from rtopt.handlers.bandits import EvidenceDiscounted
from rtopt.handlers.detection import (
    AnomalyDetected,
    ConfigurationCaptured,
    DriftDetected,
    Forecast,
    OptimizationAction,
    PatternDetected,
    ThresholdBreached,
)
from rtopt.streams import WindowClosed, WindowUpdated

from rtopt import Envelope, handles

AlertEvent = DriftDetected | AnomalyDetected | PatternDetected | ThresholdBreached
Alerts = dict[tuple[str, str, str, str, int], tuple[int, float, AlertEvent]]  # alert -> (seq, time, its last report)


def _finding(event: AlertEvent) -> tuple[str, float | None, float | None, str | None, float | None, str]:
    """The detector, change point, score, pattern kind, confidence and a one-line account of a detection."""
    match event:
        case DriftDetected():
            evidence = ", ".join(f"{name} {value:.4g}" for name, value in sorted(event.statistics.items()))
            detectors = "+".join(event.detectors) or event.detector
            return detectors, event.change_point, None, None, None, f"level went {event.direction}: {evidence}"
        case AnomalyDetected():
            what = f"value {event.value:.4g}, score {event.score:.4g} (threshold {event.threshold:.4g})"
            return event.detector, None, event.score, None, None, what
        case PatternDetected():
            what = f"{event.kind}: magnitude {event.magnitude:+.4g} over {event.windows} windows"
            return "pattern", None, None, event.kind, event.confidence, what
        case ThresholdBreached():
            side = "below the minimum" if event.bound == "min" else "above the maximum"
            what = f"{event.value:.4g} {side} {event.limit:.4g}"
            return f"{event.profile} profile", None, event.value, None, None, what
    raise TypeError(f"not a detection: {type(event).__name__}")


class Detections(View[Alerts]):
    """The alerts of the detectors (drift, anomalies, patterns, thresholds), newest first, one row per alert:
    an alert that goes on shows its latest revision. ``recommendations_frame`` lists what the latest revision
    of each pattern recommends.

    >>> detections = Detections()
    >>> drift = DriftDetected(pipeline="quality", key="g/b", metric="quality_score.mean", start=0.0, end=60.0,
    ...                       detector="cusum", change_point=60.0, direction="down")
    >>> alerts = detections.fold({}, [Envelope(3, "id", "DriftDetected", "g/b", 60.0, 0.0, None, None, 1, drift)])
    >>> detections.frame(alerts)[["seq", "detector", "key", "change_point", "what"]].values.tolist()
    [[3, 'cusum', 'g/b', 60.0, 'level went down: ']]
    """

    title = "Detections: drift, anomalies, patterns, thresholds"
    COLUMNS: ClassVar[list[str]] = [
        "seq",
        "time",
        "type",
        "detector",
        "pipeline",
        "key",
        "metric",
        "change_point",
        "score",
        "pattern",
        "confidence",
        "revision",
        "what",
    ]
    RECOMMENDATION_COLUMNS: ClassVar[list[str]] = [
        "seq",
        "time",
        "key",
        "metric",
        "pattern",
        "priority",
        "action",
        "description",
        "expected_improvement",
    ]

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S, limit: int = 200) -> None:
        super().__init__(bucket_s)
        self.limit = limit

    def initial_state(self) -> Alerts:
        return {}

    @handles(DriftDetected, AnomalyDetected, PatternDetected, ThresholdBreached)
    def detected(self, alerts: Alerts, envelope: Envelope[Any]) -> Alerts:
        event: AlertEvent = envelope.payload
        identity = (envelope.type, event.pipeline, event.key, event.metric, event.alert)
        alerts.pop(identity, None)  # re-inserted: the dict stays in the order of each alert's last report
        alerts[identity] = (envelope.seq, envelope.time, event)
        if len(alerts) > self.limit:
            del alerts[next(iter(alerts))]
        return alerts

    def frame(self, alerts: Alerts) -> pd.DataFrame:
        """One row per alert, newest report first: where it was found, the detector, the change point (drift),
        score (anomaly; the value of a breach), pattern kind and confidence (pattern), its revision and a
        one-line account."""
        rows = []
        for seq, time, event in reversed(alerts.values()):
            detector, change_point, score, pattern, confidence, what = _finding(event)
            rows.append(
                [
                    seq,
                    time,
                    type(event).__name__,
                    detector,
                    event.pipeline,
                    event.key,
                    event.metric,
                    change_point,
                    score,
                    pattern,
                    confidence,
                    event.revision,
                    what,
                ]
            )
        return pd.DataFrame(rows, columns=self.COLUMNS)

    def recommendations_frame(self, alerts: Alerts) -> pd.DataFrame:
        """One row per recommendation of the latest revision of each pattern alert, newest first: its
        ``priority``, ``action``, ``description`` and ``expected_improvement``."""
        rows = [
            [
                seq,
                time,
                event.key,
                event.metric,
                event.kind,
                advice.priority,
                advice.action,
                advice.description,
                advice.expected_improvement,
            ]
            for seq, time, event in reversed(alerts.values())
            if isinstance(event, PatternDetected)
            for advice in event.recommendations
        ]
        return pd.DataFrame(rows, columns=self.RECOMMENDATION_COLUMNS)

    def frames(self, alerts: Alerts) -> dict[str, pd.DataFrame]:
        return {"Detections": self.frame(alerts), "Recommendations": self.recommendations_frame(alerts)}


class Responses(View[deque[list[Any]]]):
    """What was done about the detections, newest first: optimisation actions (with their target, metric,
    expected impact and confidence), discounted evidence and captured configurations.

    >>> responses = Responses()
    >>> cut = EvidenceDiscounted(experiment="g", factor=0.25, reason="drift of g/b")
    >>> entries = responses.fold(responses.initial_state(), [
    ...     Envelope(5, "id", "EvidenceDiscounted", "g", 60.0, 0.0, None, None, 1, cut)])
    >>> responses.frame(entries)[["seq", "action", "target", "what"]].values.tolist()
    [[5, 'scale evidence by 0.25', 'g', 'drift of g/b']]
    """

    title = "Actions taken"
    COLUMNS: ClassVar[list[str]] = [
        "seq",
        "time",
        "type",
        "action",
        "target",
        "metric",
        "expected_impact",
        "confidence",
        "what",
    ]

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S, limit: int = 200) -> None:
        super().__init__(bucket_s)
        self.limit = limit

    def initial_state(self) -> deque[list[Any]]:
        return deque(maxlen=self.limit)

    @handles(OptimizationAction)
    def action(self, entries: deque[list[Any]], envelope: Envelope[Any]) -> deque[list[Any]]:
        event: OptimizationAction = envelope.payload
        settings = ", ".join(f"{name}={value:.4g}" for name, value in sorted(event.parameters.items()))
        what = f"{event.reason} ({settings})" if settings else event.reason
        impact = (event.expected_impact, event.confidence)
        return _entered(entries, envelope, event.action, event.target, event.metric, *impact, what)

    @handles(EvidenceDiscounted)
    def discounted(self, entries: deque[list[Any]], envelope: Envelope[Any]) -> deque[list[Any]]:
        event: EvidenceDiscounted = envelope.payload
        action = f"scale evidence by {event.factor:g}"
        return _entered(entries, envelope, action, event.experiment, "", None, None, event.reason)

    @handles(ConfigurationCaptured)
    def captured(self, entries: deque[list[Any]], envelope: Envelope[Any]) -> deque[list[Any]]:
        event: ConfigurationCaptured = envelope.payload
        values = ", ".join(f"{name} {value:.4g}" for name, value in sorted(event.values.items()))
        return _entered(entries, envelope, "capture configuration", event.key, event.metric, None, None, values)

    def frame(self, entries: deque[list[Any]]) -> pd.DataFrame:
        """The responses, newest first: ``action``, ``target``, ``metric``, ``expected_impact`` (relative),
        ``confidence`` and ``what`` (the reason and the parameters, or the values captured)."""
        return pd.DataFrame(list(reversed(entries)), columns=self.COLUMNS)


def _entered(entries: deque[list[Any]], envelope: Envelope[Any], *cells: Any) -> deque[list[Any]]:
    """``entries`` with the row of ``envelope`` and ``cells`` appended."""
    entries.append([envelope.seq, envelope.time, envelope.type, *cells])
    return entries


class ForecastSeries:
    """Per series, the windows' values, each window's one-step-ahead forecast and the latest forecast."""

    def __init__(self) -> None:
        self.windows: dict[tuple[str, str], dict[float, WindowClosed]] = defaultdict(dict)
        self.one_step: dict[tuple[str, str, str], dict[float, tuple[float, float, float]]] = defaultdict(dict)
        self.latest: dict[tuple[str, str, str], Forecast] = {}


class Forecasts(View[ForecastSeries]):
    """Forecasts of window values (the request volume, by default) against what the windows then held: per
    series (pipeline, key, metric), the one-step-ahead forecast of each window with its prediction interval,
    the latest forecast's further steps, and the window's actual value. Shown once a Forecast exists.

    >>> forecasts = Forecasts()
    >>> window = WindowClosed(pipeline="volume", key="g", start=0.0, end=60.0, count=90, values={})
    >>> ahead = Forecast(pipeline="volume", key="g", metric="count", start=60.0, step=60.0, points=[100.0],
    ...                  lows=[80.0], highs=[120.0], level=0.95, weights={}, mae=5.0, mape=0.05, scored=3)
    >>> series = forecasts.fold(forecasts.initial_state(), [
    ...     Envelope(1, "id", "WindowClosed", "g", 60.0, 0.0, None, None, 1, window),
    ...     Envelope(2, "id", "Forecast", "g", 60.0, 0.0, None, None, 1, ahead),
    ... ])
    >>> forecasts.frame(series)[["time", "forecast", "low", "high", "actual"]].values.tolist()
    [[0.0, nan, nan, nan, 90.0], [60.0, 100.0, 80.0, 120.0, nan]]
    """

    title = "Forecasts against actual values"
    COLUMNS: ClassVar[list[str]] = ["pipeline", "key", "metric", "time", "forecast", "low", "high", "actual"]

    def initial_state(self) -> ForecastSeries:
        return ForecastSeries()

    @classmethod
    def shown_by(cls) -> frozenset[str] | None:
        return frozenset({Forecast.tag()})

    @handles(Forecast)
    def forecast(self, state: ForecastSeries, envelope: Envelope[Any]) -> ForecastSeries:
        event: Forecast = envelope.payload
        series = (event.pipeline, event.key, event.metric)
        state.latest[series] = event
        if event.points:
            state.one_step[series][event.start] = (event.points[0], event.lows[0], event.highs[0])
        return state

    @handles(WindowClosed, WindowUpdated)
    def window(self, state: ForecastSeries, envelope: Envelope[Any]) -> ForecastSeries:
        event: WindowClosed = envelope.payload
        state.windows[event.pipeline, event.key][event.start] = event  # a revision replaces the window
        return state

    def frame(self, state: ForecastSeries, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per (series, window start): ``forecast`` with ``low`` and ``high`` (NaN before the first
        forecast) and ``actual`` (NaN for windows not closed yet), the last ``max_points`` windows of each series
        that has forecasts."""
        rows = []
        for series in sorted(state.latest):
            pipeline, key, metric = series
            predicted = dict(state.one_step[series])
            latest = state.latest[series]
            for h, point in enumerate(zip(latest.points, latest.lows, latest.highs, strict=True)):
                predicted[latest.start + h * latest.step] = point
            windows = state.windows.get((pipeline, key), {})
            actual = {
                start: float(window.count) if metric == "count" else window.values.get(metric, math.nan)
                for start, window in windows.items()
            }
            for time in sorted(predicted.keys() | actual.keys())[-max_points:]:
                point, low, high = predicted.get(time, (math.nan, math.nan, math.nan))
                rows.append([pipeline, key, metric, time, point, low, high, actual.get(time, math.nan)])
        return pd.DataFrame(rows, columns=self.COLUMNS)

    def errors_frame(self, state: ForecastSeries) -> pd.DataFrame:
        """One row per series: the latest forecast's ``mae``, ``mape`` and how many forecasts they score, and
        the ensemble's weights."""
        rows = [
            {
                "pipeline": event.pipeline,
                "key": event.key,
                "metric": event.metric,
                "mae": event.mae,
                "mape": event.mape,
                "scored": event.scored,
                "weights": ", ".join(f"{name} {weight:.2f}" for name, weight in sorted(event.weights.items())),
            }
            for _, event in sorted(state.latest.items())
        ]
        return pd.DataFrame(rows, columns=["pipeline", "key", "metric", "mae", "mape", "scored", "weights"])

    def frames(self, state: ForecastSeries) -> dict[str, pd.DataFrame]:
        return {"Forecasts": self.frame(state), "ForecastErrors": self.errors_frame(state)}

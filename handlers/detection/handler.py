"""The detection handler: watches window results for drift, anomalies, patterns and threshold breaches, and
responds with events.

Its inputs are the WindowClosed results of window pipelines (a WindowUpdated revision replaces the value a
pattern sees; the online detectors have already taken the first result in and do not take it twice). Every
detection is an event derived from the window that revealed it, so replaying the log derives them again.
The handler composes the detectors (:mod:`~rtopt.handlers.detection.detectors`: what a window shows) and the
response (:mod:`~rtopt.handlers.detection.response`: the events it calls for).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from rtopt.handlers.detection.detectors import (
    AnomalyDetection,
    DriftDetection,
    Forecasting,
    JointAnomalyDetection,
    PatternDetection,
    ThresholdDetection,
)
from rtopt.handlers.detection.options import DetectionOptions
from rtopt.handlers.detection.response import Response
from rtopt.handlers.detection.state import DetectionState, MetricState
from rtopt.streams.events import WindowClosed, WindowUpdated

from rtopt import Context, Envelope, Event, Handler, handles


class DetectionHandler(Handler[DetectionState]):
    """Watches window results and derives DriftDetected, AnomalyDetected, PatternDetected, ThresholdBreached
    and Forecast events, and the responses: OptimizationAction, EvidenceDiscounted (read by the bandit
    handler) and ConfigurationCaptured. Settings: :class:`~rtopt.handlers.detection.options.DetectionOptions`.

    >>> from rtopt import Engine, Feedback
    >>> from rtopt.streams import Aggregates, Tumbling, WindowHandler, WindowPipeline
    >>> pipeline = WindowPipeline("quality", Tumbling(60.0), Aggregates({"quality_score": ("mean",)}))
    >>> with Engine.open(":memory:", seed=1, handlers=[WindowHandler(pipeline), DetectionHandler()]) as engine:
    ...     for minute in range(40):
    ...         quality = 0.9 if minute < 30 else 0.3
    ...         for second in (0, 20, 40):
    ...             _ = engine.publish(Feedback(prompt_id="g", variant_id="v", response_time_ms=100.0, success=True,
    ...                                         quality_score=quality + second / 1000), time=minute * 60.0 + second)
    ...     sorted({e.type for e in engine.read(types=["DriftDetected", "PatternDetected", "ThresholdBreached"])})
    ['DriftDetected', 'PatternDetected', 'ThresholdBreached']
    """

    name = "detection"
    state_type = DetectionState
    version = 3

    def __init__(self, options: DetectionOptions | None = None) -> None:
        self.options = options = options if options is not None else DetectionOptions()
        self.drift = DriftDetection(options)
        self.anomaly = AnomalyDetection(options)
        self.joint = JointAnomalyDetection(options)
        self.patterns = PatternDetection(options)
        self.thresholds = ThresholdDetection(options)
        self.forecasting = Forecasting(options)
        self.response = Response(options)

    def config(self) -> dict[str, Any]:
        return msgspec.to_builtins(self.options)

    def initial_state(self) -> DetectionState:
        return DetectionState()

    @handles(WindowClosed)
    def _closed(
        self, state: DetectionState, envelope: Envelope[WindowClosed], ctx: Context
    ) -> tuple[DetectionState, Sequence[Event]]:
        """A window's results: what they show and the events that calls for."""
        window = envelope.payload
        metrics = self._metrics(state, window)
        if metrics is None:
            return state, ()
        events = self._detect_and_respond(state, metrics, window, ctx.time)
        return state, events if ctx.derives else ()

    @handles(WindowUpdated)
    def _revised(
        self, state: DetectionState, envelope: Envelope[WindowUpdated], ctx: Context
    ) -> tuple[DetectionState, Sequence[Event]]:
        """A late revision of a window: the values patterns see change; the detectors keep the first."""
        window = envelope.payload
        metrics = self._metrics(state, window)
        if metrics is None:
            return state, ()
        state.revisions += 1
        for metric, value in window.values.items():
            if metric in metrics:
                metrics[metric].revise(window.start, value)
        return state, ()

    def _metrics(self, state: DetectionState, window: WindowClosed) -> dict[str, MetricState] | None:
        """The metrics watched for the window's key (None if its pipeline is not watched); a key
        ``experiment/variant`` adds the variant to those seen of the experiment."""
        if not self.options.watches(window.pipeline):
            return None
        metrics = state.pipelines.setdefault(window.pipeline, {}).setdefault(window.key, {})
        if "/" in window.key:
            experiment, variant = window.key.split("/", 1)
            variants = state.variants.setdefault(experiment, [])
            if variant not in variants:
                variants.append(variant)
        return metrics

    def _detect_and_respond(
        self, state: DetectionState, metrics: dict[str, MetricState], window: WindowClosed, now: float
    ) -> list[Event]:
        """What ``window`` shows, each metric on its own, then together, then thresholds and forecasts, and the
        events each finding calls for, in that order."""
        options, response = self.options, self.response
        events: list[Event] = []
        for metric, value in window.values.items():
            if not options.watches_metric(metric):
                continue
            watched = metrics.get(metric)
            if watched is None:
                watched = metrics[metric] = MetricState(**self.drift.detectors(), anomaly=self.anomaly.detector())
            watched.record(value, window.start, window.end, options.pattern_windows, options.warmup)
            for drift in self.drift.observe(watched, metric, value):
                events += response.drift(state, watched.drift, window, drift, now)
            anomaly = self.anomaly.observe(watched, metric, value)
            if anomaly is not None:
                events += response.anomaly(watched.anomalies, window, anomaly)
        found_together = self.joint.observe(state, window) if options.joint_anomalies else None
        if found_together is not None:
            joint, anomaly = found_together
            events += response.anomaly(joint.alert, window, anomaly)
        for metric, watched in metrics.items():
            found = self.patterns.observe(metrics, metric, window)
            if found is not None:
                events += response.patterns(state, watched, window, found, now)
        events += response.breaches(state, window, self.thresholds.observe(state, window), now)
        events += self.forecasting.observe(state, window)
        return events

"""The detection handler: watches window results for drift, anomalies, patterns and threshold breaches, and
responds with events.

Its inputs are the WindowClosed results of window pipelines (a WindowUpdated revision replaces the value a
pattern sees; the online detectors have already taken the first result in and do not take it twice). Every
detection is an event derived from the window that revealed it, so replaying the log derives them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
from rtopt.handlers.bandits.events import EvidenceDiscounted
from rtopt.handlers.detection import patterns
from rtopt.handlers.detection.anomaly import MAD, IQRFences, Mahalanobis, ZScore
from rtopt.handlers.detection.drift import ADWIN, CUSUM, PageHinkley
from rtopt.handlers.detection.events import (
    AnomalyDetected,
    ConfigurationCaptured,
    DriftDetected,
    Forecast,
    OptimizationAction,
    PatternDetected,
    ThresholdBreached,
)
from rtopt.handlers.detection.forecasting import Ensemble
from rtopt.handlers.detection.options import DetectionOptions
from rtopt.handlers.detection.thresholds import breaches, relative_gap
from rtopt.streams.events import WindowClosed, WindowUpdated
from rtopt.streams.moments import RunningMoments

from rtopt import Context, Envelope, Event, ExperimentDefined, Handler, StudyDefined

ANOMALY_DETECTORS = {"zscore": ZScore, "iqr": IQRFences, "mad": MAD}
CALIBRATED_CONFIDENCE = 0.9999  # Page-Hinkley and CUSUM: one false alarm per ~10,000 stationary windows
MAX_SCORE = 1e300  # the score of a value off a baseline without spread (infinite) as events record it


NEW, UPDATE, QUIET = "new", "update", "quiet"
GROWTH = 1.25  # an open alert is reported again when what it measures has grown by a quarter


class Alert(msgspec.Struct):
    """The alerts of one kind on one metric: the current alert's number and revision, the window it was last
    seen at, the detectors that reported it and the size last reported."""

    number: int = 0
    revision: int = 0
    last_window: int = -1
    detectors: list[str] = msgspec.field(default_factory=list)
    magnitude: float = 0.0

    def report(self, window: int, within: int, magnitude: float | None = None) -> str:
        """Count a detection at ``window`` of size ``magnitude``: a ``new`` alert, an ``update`` of the open
        one (seen within ``within`` windows) or ``quiet`` (the open one, not grown by a quarter: not reported
        again, but kept open)."""
        is_open = self.last_window >= 0 and window - self.last_window <= within
        self.last_window = window
        if not is_open:
            self.number += 1
            self.revision, self.detectors = 0, []
        elif magnitude is not None and abs(magnitude) < GROWTH * abs(self.magnitude):
            return QUIET
        else:
            self.revision += 1
        if magnitude is not None:
            self.magnitude = magnitude
        return UPDATE if is_open else NEW


class MetricState(msgspec.Struct):
    """One metric of one key: its detectors, the spread Page-Hinkley is scaled by, its recent windows and its
    alerts (drift, anomaly, and the open patterns by kind)."""

    adwin: ADWIN | None = None
    page_hinkley: PageHinkley | None = None
    cusum: CUSUM | None = None
    anomaly: ZScore | IQRFences | MAD | None = None
    windows: int = 0
    spread: RunningMoments = msgspec.field(default_factory=RunningMoments)
    values: list[float] = msgspec.field(default_factory=list)
    starts: list[float] = msgspec.field(default_factory=list)
    ends: list[float] = msgspec.field(default_factory=list)
    changed: bool = False
    pattern_alerts: int = 0
    drift: Alert = msgspec.field(default_factory=Alert)
    anomalies: Alert = msgspec.field(default_factory=Alert)
    patterns: dict[str, Alert] = msgspec.field(default_factory=dict)

    def scale(self) -> float | None:
        """The standard deviation of the first windows (None while fewer than two, or no spread)."""
        if self.spread.n < 2 or self.spread.m2 <= 0.0:
            return None
        return self.spread.variance() ** 0.5


class JointState(msgspec.Struct):
    """The metrics of one key taken together: their names (fixed by the first window with two or more), the
    Mahalanobis detector over them and its alerts."""

    metrics: list[str]
    detector: Mahalanobis
    alert: Alert = msgspec.field(default_factory=Alert)
    windows: int = 0


class DetectionState(msgspec.Struct):
    """Everything the detection handler knows: per pipeline, per key, per metric; when each action on each
    target last fired; and counters of what it left out."""

    pipelines: dict[str, dict[str, dict[str, MetricState]]] = msgspec.field(default_factory=dict)
    windows: dict[str, int] = msgspec.field(default_factory=dict)
    breaches: dict[str, Alert] = msgspec.field(default_factory=dict)
    forecasts: dict[str, Ensemble] = msgspec.field(default_factory=dict)
    joint: dict[str, JointState] = msgspec.field(default_factory=dict)
    variants: dict[str, list[str]] = msgspec.field(default_factory=dict)
    ab_tests: dict[str, int] = msgspec.field(default_factory=dict)
    studies: dict[str, int] = msgspec.field(default_factory=dict)
    last_action: dict[str, float] = msgspec.field(default_factory=dict)
    suppressed_actions: int = 0
    revisions: int = 0


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
    accepts = (WindowClosed, WindowUpdated)
    state_type = DetectionState
    version = 3

    def __init__(self, options: DetectionOptions | None = None) -> None:
        self.options = options if options is not None else DetectionOptions()

    def config(self) -> dict[str, Any]:
        return msgspec.to_builtins(self.options)

    def initial_state(self) -> DetectionState:
        return DetectionState()

    def apply(
        self, state: DetectionState, envelope: Envelope[Any], ctx: Context
    ) -> tuple[DetectionState, Sequence[Event]]:
        window = envelope.payload
        options = self.options
        if not options.watches(window.pipeline):
            return state, ()
        metrics = state.pipelines.setdefault(window.pipeline, {}).setdefault(window.key, {})
        if "/" in window.key:
            experiment, variant = window.key.split("/", 1)
            variants = state.variants.setdefault(experiment, [])
            if variant not in variants:
                variants.append(variant)
        if isinstance(window, WindowUpdated):
            state.revisions += 1
            _revise(metrics, window)
            return state, ()
        out: list[Event] = []
        for metric, value in window.values.items():
            if options.metrics and metric not in options.metrics:
                continue
            watched = metrics.get(metric)
            if watched is None:
                watched = metrics[metric] = self._new_metric()
            self._observe(state, watched, window, metric, value, ctx, out)
        if options.joint_anomalies:
            self._joint_anomaly(state, window, out)
        for metric in metrics:
            self._find_patterns(state, metrics, metric, window, ctx, out)
        self._check_thresholds(state, window, ctx, out)
        self._forecast(state, window, out)
        return state, out if ctx.derives else ()

    # --- drift and anomalies -----------------------------------------------------------------------

    def _new_metric(self) -> MetricState:
        options = self.options
        return MetricState(
            adwin=ADWIN(delta=options.adwin_delta, clock=1, replayable=True) if "adwin" in options.drift else None,
            page_hinkley=PageHinkley(threshold=options.page_hinkley_threshold, min_instances=options.warmup)
            if "page_hinkley" in options.drift
            else None,
            cusum=CUSUM(threshold=options.cusum_threshold, warmup=options.warmup) if "cusum" in options.drift else None,
            anomaly=ANOMALY_DETECTORS[options.anomaly](window=options.anomaly_window, min_samples=options.warmup)
            if options.anomaly != "none"
            else None,
        )

    def _observe(
        self,
        state: DetectionState,
        watched: MetricState,
        window: WindowClosed,
        metric: str,
        value: float,
        ctx: Context,
        out: list[Event],
    ) -> None:
        options = self.options
        watched.windows += 1
        keep = options.pattern_windows
        for series, item in ((watched.values, value), (watched.starts, window.start), (watched.ends, window.end)):
            series.append(item)
            del series[:-keep]
        if watched.spread.n < options.warmup:
            watched.spread.update(value)
        scale = watched.scale()
        fired = []
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
        for name, detector, direction, confidence in fired:
            self._drift(state, watched, window, metric, name, detector, direction, confidence, ctx, out)
        if watched.anomaly is not None and watched.anomaly.update(value):
            score = min(watched.anomaly.last_score, MAX_SCORE)
            if watched.anomalies.report(watched.windows, options.alert_windows, score) == QUIET:
                return
            out.append(
                AnomalyDetected(
                    **_where(window, metric, watched.anomalies),
                    detector=options.anomaly,
                    value=value,
                    score=score,
                    threshold=watched.anomaly.threshold,
                    baseline=watched.anomaly.baseline(),
                )
            )

    def _joint_anomaly(self, state: DetectionState, window: WindowClosed, out: list[Event]) -> None:
        options = self.options
        where = f"{window.pipeline}/{window.key}"
        joint = state.joint.get(where)
        if joint is None:
            names = sorted(m for m in window.values if not options.metrics or m in options.metrics)
            if len(names) < 2:
                return
            detector = Mahalanobis(dimensions=len(names), min_samples=max(options.warmup, len(names) + 2))
            joint = state.joint[where] = JointState(metrics=names, detector=detector)
        if any(m not in window.values for m in joint.metrics):
            return
        joint.windows += 1
        vector = [window.values[m] for m in joint.metrics]
        detector = joint.detector
        baseline = {f"mean {name}": mean for name, mean in zip(joint.metrics, detector.mean, strict=False)}
        baseline["count"] = float(detector.count)
        if not detector.update(vector):
            return
        if joint.alert.report(joint.windows, options.alert_windows, detector.last_score) == QUIET:
            return
        out.append(
            AnomalyDetected(
                **_where(window, "+".join(joint.metrics), joint.alert),
                detector="mahalanobis",
                value=detector.last_score,
                score=detector.last_score,
                threshold=detector.threshold,
                baseline=baseline,
            )
        )

    def _drift(
        self,
        state: DetectionState,
        watched: MetricState,
        window: WindowClosed,
        metric: str,
        name: str,
        detector: ADWIN | PageHinkley | CUSUM,
        direction: str,
        confidence: float,
        ctx: Context,
        out: list[Event],
    ) -> None:
        alert = watched.drift
        fresh = alert.report(watched.windows, self.options.alert_windows) == NEW
        alert.detectors.append(name)
        watched.changed = True
        since = detector.n - (detector.change_point or 0)  # windows from the change to now
        starts = watched.starts
        change_time = starts[-since] if 0 < since <= len(starts) else starts[0]
        out.append(
            DriftDetected(
                **_where(window, metric, alert, start=change_time),
                detector=name,
                change_point=change_time,
                direction=direction,
                statistics=detector.evidence,
                detectors=list(alert.detectors),
            )
        )
        worse = (direction == "up") == self.options.improves_downwards(metric)
        if fresh and worse:
            reason = f"DriftDetected: {metric} of {window.key} went {direction} ({name})"
            self._discount(state, window.key, metric, reason, 0.0, confidence, ctx.time, out)

    # --- patterns ----------------------------------------------------------------------------------

    def _find_patterns(
        self,
        state: DetectionState,
        metrics: dict[str, MetricState],
        metric: str,
        window: WindowClosed,
        ctx: Context,
        out: list[Event],
    ) -> None:
        options = self.options
        watched = metrics[metric]
        if watched.ends[-1] != window.end:
            return
        lower_is_better = options.improves_downwards(metric)
        found = patterns.find_patterns(watched.values, lower_is_better, options.patterns, watched.changed)
        kinds = {f.kind for f in found}
        for kind in [k for k in watched.patterns if k not in kinds]:
            del watched.patterns[kind]
        for pattern in found:
            alert = watched.patterns.get(pattern.kind)
            if alert is None:  # a pattern's alert stays open while the pattern holds
                watched.pattern_alerts += 1
                alert = watched.patterns[pattern.kind] = Alert(number=watched.pattern_alerts - 1)
                watched.changed = watched.changed or pattern.kind in (patterns.DEGRADATION, patterns.IMPROVEMENT)
            if alert.report(watched.windows, 1, pattern.magnitude) == QUIET:
                continue
            level = sum(watched.values[-3:]) / len(watched.values[-3:])
            out.append(self._pattern_event(metrics, metric, window, pattern, alert, level))
            if alert.revision == 0:
                self._respond_to_pattern(state, window, metric, pattern, level, ctx, out)

    def _pattern_event(
        self,
        metrics: dict[str, MetricState],
        metric: str,
        window: WindowClosed,
        pattern: patterns.Found,
        alert: Alert,
        level: float,
    ) -> PatternDetected:
        watched = metrics[metric]
        span = len(watched.values)
        series = {name: m.values[-span:] for name, m in metrics.items() if len(m.values) >= span}
        affected = [metric] + [name for name, c in patterns.correlations(series, metric).items() if c.pearson_p < 0.05]
        return PatternDetected(
            **_where(window, metric, alert, start=watched.starts[0]),
            kind=pattern.kind,
            confidence=pattern.confidence,
            significance=pattern.significance,
            magnitude=pattern.magnitude,
            windows=span,
            metrics=affected,
            details=pattern.details,
            correlations=patterns.correlations(series, metric),
            recommendations=patterns.recommendations(pattern, metric, level),
        )

    def _respond_to_pattern(
        self,
        state: DetectionState,
        window: WindowClosed,
        metric: str,
        pattern: patterns.Found,
        level: float,
        ctx: Context,
        out: list[Event],
    ) -> None:
        if pattern.kind == patterns.DEGRADATION:
            reason = f"PatternDetected: degradation of {metric} in {window.key} by {pattern.magnitude:.4g}"
            relative = abs(pattern.magnitude / level) if level else 0.0
            self._discount(state, window.key, metric, reason, relative, pattern.confidence, ctx.time, out)
        elif pattern.kind == patterns.IMPROVEMENT and self.options.capture_improvements:
            out.append(
                ConfigurationCaptured(
                    pipeline=window.pipeline,
                    key=window.key,
                    metric=metric,
                    start=window.start,
                    end=window.end,
                    values=dict(window.values),
                )
            )

    # --- forecasts ---------------------------------------------------------------------------------

    def _forecast(self, state: DetectionState, window: WindowClosed, out: list[Event]) -> None:
        horizon = self.options.forecast_horizon
        step = window.end - window.start
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

    # --- thresholds and actions --------------------------------------------------------------------

    def _check_thresholds(self, state: DetectionState, window: WindowClosed, ctx: Context, out: list[Event]) -> None:
        options = self.options
        if options.profile == "none":
            return
        where = f"{window.pipeline}/{window.key}"
        seen = state.windows[where] = state.windows.get(where, 0) + 1
        for limit, value in breaches(window.values, options.profile):
            alert = state.breaches.setdefault(f"{where}/{limit.metric}", Alert())
            seen_as = alert.report(seen, options.alert_windows, relative_gap(limit, value))
            if seen_as == QUIET:
                continue
            out.append(
                ThresholdBreached(
                    **_where(window, limit.metric, alert),
                    profile=options.profile,
                    value=value,
                    limit=limit.limit,
                    bound=limit.bound,
                )
            )
            if seen_as == NEW and options.act_on_breaches:
                reason = f"ThresholdBreached: {limit.metric} = {value:.4g} against {limit.bound} {limit.limit:.4g}"
                acted = self._act(
                    state,
                    OptimizationAction(
                        action=limit.action,
                        target=window.key,
                        reason=reason,
                        metric=limit.metric,
                        expected_impact=relative_gap(limit, value),
                        confidence=0.5,
                        parameters={"limit": limit.limit, "value": value},
                    ),
                    ctx.time,
                    out,
                )
                if acted and limit.action == "ab_test_start" and options.ab_test_on_breach:
                    self._start_ab_test(state, window.key, out)
                if acted and limit.action == "strategy_change" and options.study_on_breach:
                    self._start_study(state, window.key, out)

    def _start_ab_test(self, state: DetectionState, key: str, out: list[Event]) -> None:
        """Define and start an A/B test over every variant of the key's experiment seen so far (run by the
        experiments handler; the application sends it traffic through ``decide``)."""
        experiment = key.split("/", 1)[0]
        arms = state.variants.get(experiment, [])
        if len(arms) < 2:
            return
        state.ab_tests[experiment] = number = state.ab_tests.get(experiment, 0) + 1
        out.append(
            ExperimentDefined(
                experiment=f"{experiment}-ab-{number}", arms=list(arms), policy="ab_test", options={"start": True}
            )
        )

    def _start_study(self, state: DetectionState, key: str, out: list[Event]) -> None:
        """Define a study of the ``study_on_breach`` parameters for the key's experiment (run by the bayesopt
        handler; the application asks it for parameters with ``suggest`` and reports them with ``tell``)."""
        experiment = key.split("/", 1)[0]
        state.studies[experiment] = number = state.studies.get(experiment, 0) + 1
        out.append(StudyDefined(study=f"{experiment}-study-{number}", space=dict(self.options.study_on_breach)))

    def _discount(
        self,
        state: DetectionState,
        key: str,
        metric: str,
        reason: str,
        impact: float,
        confidence: float,
        now: float,
        out: list[Event],
    ) -> None:
        """Ask the key's experiment to re-learn: an OptimizationAction and the EvidenceDiscounted it calls for."""
        if not self.options.discount_on_drift:
            return
        experiment = key.split("/", 1)[0]
        factor = self.options.discount_factor
        action = OptimizationAction(
            action="strategy_change",
            target=experiment,
            reason=reason,
            metric=metric,
            expected_impact=impact,
            confidence=confidence,
            parameters={"discount_factor": factor},
        )
        if self._act(state, action, now, out):
            out.append(EvidenceDiscounted(experiment=experiment, factor=factor, reason=reason))

    def _act(self, state: DetectionState, action: OptimizationAction, now: float, out: list[Event]) -> bool:
        """Emit ``action`` unless the same action on the same target fired less than ``cooldown_s`` ago."""
        slot = f"{action.action}/{action.target}"
        last = state.last_action.get(slot)
        if last is not None and now - last < self.options.cooldown_s:
            state.suppressed_actions += 1
            return False
        state.last_action[slot] = now
        out.append(action)
        return True


def _revise(metrics: dict[str, MetricState], window: WindowUpdated) -> None:
    """A late revision of a window: the value the patterns see changes; the detectors keep the first."""
    for metric, value in window.values.items():
        watched = metrics.get(metric)
        if watched is not None and window.start in watched.starts:
            watched.values[watched.starts.index(window.start)] = value


def _where(window: WindowClosed, metric: str, alert: Alert, start: float | None = None) -> dict[str, Any]:
    """The fields every detection shares: where it was found, over which span, and which alert it is."""
    return {
        "pipeline": window.pipeline,
        "key": window.key,
        "metric": metric,
        "start": window.start if start is None else start,
        "end": window.end,
        "alert": alert.number,
        "revision": alert.revision,
    }

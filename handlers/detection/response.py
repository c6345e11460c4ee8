"""The detection handler's response to what its detectors find: each finding becomes a detection event when
its alert is new or has grown, and calls for the actions the options switch on (an OptimizationAction held
back by a cool-down, the EvidenceDiscounted it calls for, a ConfigurationCaptured, an A/B test or a study).
"""

from __future__ import annotations

from typing import Any

from rtopt.handlers.bandits.events import EvidenceDiscounted
from rtopt.handlers.detection import patterns
from rtopt.handlers.detection.detectors import Anomaly, Breach, Drift, Pattern
from rtopt.handlers.detection.events import (
    AnomalyDetected,
    ConfigurationCaptured,
    DriftDetected,
    OptimizationAction,
    PatternDetected,
    ThresholdBreached,
)
from rtopt.handlers.detection.options import DetectionOptions
from rtopt.handlers.detection.state import NEW, QUIET, Alert, DetectionState, MetricState
from rtopt.handlers.detection.thresholds import relative_gap
from rtopt.streams.events import WindowClosed

from rtopt import Event, ExperimentDefined, StudyDefined


class Response:
    """Turns findings into events, keeping the alerts they belong to and when each action last fired.

    >>> window = WindowClosed(pipeline="p", key="g/v", start=0.0, end=60.0, count=3, values={"ms.mean": 900.0})
    >>> response, alert = Response(DetectionOptions()), Alert()
    >>> first = Anomaly("ms.mean", 1, "zscore", 900.0, 12.0, 3.0, {})
    >>> [type(e).__name__ for e in response.anomaly(alert, window, first)]
    ['AnomalyDetected']
    >>> response.anomaly(alert, window, Anomaly("ms.mean", 2, "zscore", 950.0, 13.0, 3.0, {}))  # not grown by a quarter
    []
    """

    def __init__(self, options: DetectionOptions) -> None:
        self.options = options

    def drift(self, state: DetectionState, alert: Alert, window: WindowClosed, drift: Drift, now: float) -> list[Event]:
        """A DriftDetected; for a new alert of a change for the worse, the discount of the experiment."""
        fresh = alert.report(drift.seen, self.options.alert_windows) == NEW
        alert.detectors.append(drift.detector)
        events: list[Event] = [
            DriftDetected(
                **_where(window, drift.metric, alert, start=drift.change_point),
                detector=drift.detector,
                change_point=drift.change_point,
                direction=drift.direction,
                statistics=drift.statistics,
                detectors=list(alert.detectors),
            )
        ]
        worse = (drift.direction == "up") == self.options.improves_downwards(drift.metric)
        if fresh and worse:
            reason = f"DriftDetected: {drift.metric} of {window.key} went {drift.direction} ({drift.detector})"
            events += self._discount(state, window.key, drift.metric, reason, 0.0, drift.confidence, now)
        return events

    def anomaly(self, alert: Alert, window: WindowClosed, anomaly: Anomaly) -> list[Event]:
        """An AnomalyDetected, unless it is the open alert not grown by a quarter."""
        if alert.report(anomaly.seen, self.options.alert_windows, anomaly.score) == QUIET:
            return []
        return [
            AnomalyDetected(
                **_where(window, anomaly.metric, alert),
                detector=anomaly.detector,
                value=anomaly.value,
                score=anomaly.score,
                threshold=anomaly.threshold,
                baseline=anomaly.baseline,
            )
        ]

    def patterns(
        self, state: DetectionState, watched: MetricState, window: WindowClosed, found: list[Pattern], now: float
    ) -> list[Event]:
        """A PatternDetected for each pattern ``found`` in a metric that is new or has grown, and the response
        to a new one; the alerts of patterns no longer found close."""
        kinds = {pattern.found.kind for pattern in found}
        for kind in [k for k in watched.patterns if k not in kinds]:
            del watched.patterns[kind]
        events: list[Event] = []
        for pattern in found:
            alert = watched.patterns.get(pattern.found.kind)
            if alert is None:  # a pattern's alert stays open while the pattern holds
                watched.pattern_alerts += 1
                alert = watched.patterns[pattern.found.kind] = Alert(number=watched.pattern_alerts - 1)
            if alert.report(pattern.seen, 1, pattern.found.magnitude) == QUIET:
                continue
            events.append(_pattern_event(window, pattern, alert))
            if alert.revision == 0:
                events += self._respond_to_pattern(state, window, pattern, now)
        return events

    def breaches(self, state: DetectionState, window: WindowClosed, found: list[Breach], now: float) -> list[Event]:
        """A ThresholdBreached for each breach that is new or has grown; for a new one, the action its limit
        calls for, and the A/B test or study that action may start."""
        options = self.options
        where = f"{window.pipeline}/{window.key}"
        events: list[Event] = []
        for breach in found:
            limit, value = breach.limit, breach.value
            alert = state.breaches.setdefault(f"{where}/{limit.metric}", Alert())
            seen_as = alert.report(breach.seen, options.alert_windows, relative_gap(limit, value))
            if seen_as == QUIET:
                continue
            events.append(
                ThresholdBreached(
                    **_where(window, limit.metric, alert),
                    profile=options.profile,
                    value=value,
                    limit=limit.limit,
                    bound=limit.bound,
                )
            )
            if seen_as != NEW or not options.act_on_breaches:
                continue
            reason = f"ThresholdBreached: {limit.metric} = {value:.4g} against {limit.bound} {limit.limit:.4g}"
            action = OptimizationAction(
                action=limit.action,
                target=window.key,
                reason=reason,
                metric=limit.metric,
                expected_impact=relative_gap(limit, value),
                confidence=0.5,
                parameters={"limit": limit.limit, "value": value},
            )
            acted = self._act(state, action, now)
            events += acted
            if acted and limit.action == "ab_test_start" and options.ab_test_on_breach:
                events += self._start_ab_test(state, window.key)
            if acted and limit.action == "strategy_change" and options.study_on_breach:
                events += self._start_study(state, window.key)
        return events

    def _respond_to_pattern(
        self, state: DetectionState, window: WindowClosed, pattern: Pattern, now: float
    ) -> list[Event]:
        found, metric = pattern.found, pattern.metric
        if found.kind == patterns.DEGRADATION:
            reason = f"PatternDetected: degradation of {metric} in {window.key} by {found.magnitude:.4g}"
            relative = abs(found.magnitude / pattern.level) if pattern.level else 0.0
            return self._discount(state, window.key, metric, reason, relative, found.confidence, now)
        if found.kind == patterns.IMPROVEMENT and self.options.capture_improvements:
            captured = ConfigurationCaptured(
                pipeline=window.pipeline,
                key=window.key,
                metric=metric,
                start=window.start,
                end=window.end,
                values=dict(window.values),
            )
            return [captured]
        return []

    def _start_ab_test(self, state: DetectionState, key: str) -> list[Event]:
        """Define and start an A/B test over every variant of the key's experiment seen so far (run by the
        experiments handler; the application sends it traffic through ``decide``)."""
        experiment = key.split("/", 1)[0]
        arms = state.variants.get(experiment, [])
        if len(arms) < 2:
            return []
        state.ab_tests[experiment] = number = state.ab_tests.get(experiment, 0) + 1
        name = f"{experiment}-ab-{number}"
        return [ExperimentDefined(experiment=name, arms=list(arms), policy="ab_test", options={"start": True})]

    def _start_study(self, state: DetectionState, key: str) -> list[Event]:
        """Define a study of the ``study_on_breach`` parameters for the key's experiment (run by the bayesopt
        handler; the application asks it for parameters with ``suggest`` and reports them with ``tell``)."""
        experiment = key.split("/", 1)[0]
        state.studies[experiment] = number = state.studies.get(experiment, 0) + 1
        return [StudyDefined(study=f"{experiment}-study-{number}", space=dict(self.options.study_on_breach))]

    def _discount(
        self, state: DetectionState, key: str, metric: str, reason: str, impact: float, confidence: float, now: float
    ) -> list[Event]:
        """Ask the key's experiment to re-learn: an OptimizationAction and the EvidenceDiscounted it calls for."""
        if not self.options.discount_on_drift:
            return []
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
        acted = self._act(state, action, now)
        if not acted:
            return []
        return [*acted, EvidenceDiscounted(experiment=experiment, factor=factor, reason=reason)]

    def _act(self, state: DetectionState, action: OptimizationAction, now: float) -> list[Event]:
        """``action``, unless the same action on the same target fired less than ``cooldown_s`` ago."""
        slot = f"{action.action}/{action.target}"
        last = state.last_action.get(slot)
        if last is not None and now - last < self.options.cooldown_s:
            state.suppressed_actions += 1
            return []
        state.last_action[slot] = now
        return [action]


def _pattern_event(window: WindowClosed, pattern: Pattern, alert: Alert) -> PatternDetected:
    found, metric = pattern.found, pattern.metric
    correlations = pattern.correlations()
    affected = [metric] + [name for name, c in correlations.items() if c.pearson_p < 0.05]
    return PatternDetected(
        **_where(window, metric, alert, start=pattern.start),
        kind=found.kind,
        confidence=found.confidence,
        significance=found.significance,
        magnitude=found.magnitude,
        windows=len(pattern.series[metric]),
        metrics=affected,
        details=found.details,
        correlations=correlations,
        recommendations=patterns.recommendations(found, metric, pattern.level),
    )


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

"""The dashboard's data layer: live aggregates of a log, fed incrementally, and the sources that feed them.

A :class:`LogModel` holds views; each view declares the event types it reads and folds the envelopes of
those types into a small aggregate that the plots read (bucketed by event time, so a log of any length
keeps a bounded amount per bucket). A source feeds the model what is new since its last call: a
:class:`LogTail` reads the log from the next seq (another process may be writing it), an
:class:`EngineFeed` receives the committed events of an engine running in the same process. Nothing is
ever read twice.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np
import pandas as pd
from rtopt.handlers.bandits import EvidenceDiscounted, ExperimentStats
from rtopt.handlers.bayesopt import StudyCompleted
from rtopt.handlers.detection import (
    AnomalyDetected,
    ConfigurationCaptured,
    DriftDetected,
    FeedbackFlagged,
    Forecast,
    OptimizationAction,
    PatternDetected,
    RateLimitExceeded,
    ThresholdBreached,
)
from rtopt.handlers.experiments import (
    CanaryAdvanced,
    CanaryRolledBack,
    ExperimentAnalysed,
    ExperimentArchived,
    ExperimentCompleted,
    ExperimentConcluded,
    ExperimentPaused,
    ExperimentResumed,
    ExperimentStarted,
    SampleRatioMismatch,
    WinnerPromoted,
)
from rtopt.streams import WindowClosed, WindowUpdated

from rtopt import (
    Decision,
    Engine,
    Envelope,
    Event,
    Feedback,
    FeedbackRejected,
    HandlerFailed,
    InvalidLog,
    Observed,
    StudyDefined,
    Suggested,
)

DEFAULT_BUCKET_S = 60.0
MAX_POINTS = 400
READ_CHUNK = 50_000


def merge_factor(buckets: int, max_points: int) -> int:
    """How many adjacent buckets to merge into one point so that ``buckets`` give at most ``max_points``.

    >>> merge_factor(100, 400), merge_factor(1000, 400), merge_factor(1200, 400)
    (1, 3, 3)
    """
    return max(1, math.ceil(buckets / max_points))


class View:
    """A live aggregate of the events of ``types`` (every type when None); ``add`` folds one envelope.

    >>> sorted(FeedbackMetrics.tags()), EventRate.tags()
    (['Feedback'], None)
    """

    types: ClassVar[tuple[type[Event], ...] | None] = ()
    title: ClassVar[str] = ""

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        self.bucket_s = bucket_s

    @classmethod
    def tags(cls) -> frozenset[str] | None:
        """The type tags this view reads (None: all)."""
        return None if cls.types is None else frozenset(t.tag() for t in cls.types)

    @classmethod
    def shown_by(cls) -> frozenset[str] | None:
        """The type tags whose events make the view worth showing (None: any event); its own types unless it
        reads others only to put them beside these."""
        return cls.tags()

    def bucket(self, time: float) -> int:
        """The index of the event-time bucket ``time`` falls in."""
        return math.floor(time / self.bucket_s)

    def add(self, envelope: Envelope[Any]) -> None:
        """Fold one envelope of the view's types."""
        raise NotImplementedError

    def frame(self) -> pd.DataFrame:
        """The view's aggregate as a table."""
        raise NotImplementedError

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every table the view gives, by name."""
        return {type(self).__name__: self.frame()}


class EventRate(View):
    """Events per second of event time, in buckets of ``bucket_s`` seconds.

    >>> rate = EventRate(bucket_s=10.0)
    >>> for t in (0.0, 1.0, 12.0):
    ...     rate.add(Envelope(1, "id", "Feedback", "p", t, 0.0, None, None, 1, None))
    >>> rate.frame()[["time", "events", "rate"]].values.tolist()
    [[0.0, 2.0, 0.2], [10.0, 1.0, 0.1]]
    """

    types = None
    title = "Event rate"

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        super().__init__(bucket_s)
        self.counts: Counter[int] = Counter()

    def add(self, envelope: Envelope[Any]) -> None:
        self.counts[self.bucket(envelope.time)] += 1

    def frame(self, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """Columns ``time`` (bucket start), ``events`` and ``rate`` (per second), over at most ``max_points``
        points; empty buckets between the first and the last count as zero."""
        if not self.counts:
            return pd.DataFrame({"time": [], "events": [], "rate": []})
        first, last = min(self.counts), max(self.counts)
        factor = merge_factor(last - first + 1, max_points)
        merged: Counter[int] = Counter()
        for index, count in self.counts.items():
            merged[index // factor * factor] += count
        starts = np.arange(first // factor * factor, last + 1, factor)
        events = np.array([merged[s] for s in starts], dtype=float)
        return pd.DataFrame(
            {"time": starts * self.bucket_s, "events": events, "rate": events / (factor * self.bucket_s)}
        )


class _FeedbackBucket:
    __slots__ = ("cost", "errors", "latencies", "n", "quality")

    def __init__(self) -> None:
        self.n = 0
        self.errors = 0
        self.quality = 0.0
        self.cost = 0.0
        self.latencies: list[float] = []

    def merge(self, other: _FeedbackBucket) -> None:
        self.n += other.n
        self.errors += other.errors
        self.quality += other.quality
        self.cost += other.cost
        self.latencies.extend(other.latencies)


class FeedbackMetrics(View):
    """Feedback per variant over event-time windows: count, mean quality, latency p50 and p95, error rate
    (the share without success) and mean cost. A window's row is computed again only when it changed.

    >>> metrics = FeedbackMetrics(bucket_s=60.0)
    >>> for t, ok, ms in ((5.0, True, 100.0), (30.0, False, 300.0), (70.0, True, 200.0)):
    ...     fb = Feedback(prompt_id="p", variant_id="v1", response_time_ms=ms, success=ok, quality_score=0.5)
    ...     metrics.add(Envelope(1, "id", "Feedback", "p", t, 0.0, None, None, 1, fb))
    >>> metrics.frame()[["time", "variant", "count", "error_rate", "latency_p50"]].values.tolist()
    [[0.0, 'v1', 2, 0.5, 200.0], [60.0, 'v1', 1, 0.0, 200.0]]
    """

    types = (Feedback,)
    title = "Feedback metrics per variant"
    METRICS: ClassVar[tuple[str, ...]] = ("quality", "latency_p50", "latency_p95", "error_rate", "cost")

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        super().__init__(bucket_s)
        self.buckets: dict[str, dict[int, _FeedbackBucket]] = defaultdict(dict)
        self.first: int | None = None
        self.last: int | None = None
        self._changed: set[tuple[str, int]] = set()
        self._rows: dict[tuple[str, int], dict[str, Any]] = {}
        self._factor = 0

    def add(self, envelope: Envelope[Any]) -> None:
        feedback: Feedback = envelope.payload
        by_time = self.buckets[feedback.variant_id]
        index = self.bucket(envelope.time)
        bucket = by_time.get(index)
        if bucket is None:
            bucket = by_time[index] = _FeedbackBucket()
            self.first = index if self.first is None else min(self.first, index)
            self.last = index if self.last is None else max(self.last, index)
        bucket.n += 1
        bucket.errors += not feedback.success
        bucket.quality += feedback.quality_score
        bucket.cost += feedback.cost_usd
        bucket.latencies.append(feedback.response_time_ms)
        self._changed.add((feedback.variant_id, index))

    def frame(self, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per (window, variant) with ``count`` and the metrics, over at most ``max_points`` windows."""
        columns = ["time", "variant", "count", *self.METRICS]
        if self.first is None or self.last is None:
            return pd.DataFrame([], columns=columns)
        factor = merge_factor(self.last - self.first + 1, max_points)
        if factor != self._factor:
            self._factor, self._rows = factor, {}
            self._changed = {(variant, index) for variant, by_time in self.buckets.items() for index in by_time}
        for variant, start in {(variant, index // factor * factor) for variant, index in self._changed}:
            merged = _FeedbackBucket()
            for i in range(start, start + factor):
                if i in self.buckets[variant]:
                    merged.merge(self.buckets[variant][i])
            p50, p95 = np.percentile(merged.latencies, [50, 95])
            self._rows[variant, start] = {
                "time": start * self.bucket_s,
                "variant": variant,
                "count": merged.n,
                "quality": merged.quality / merged.n,
                "latency_p50": float(p50),
                "latency_p95": float(p95),
                "error_rate": merged.errors / merged.n,
                "cost": merged.cost / merged.n,
            }
        self._changed = set()
        return pd.DataFrame([self._rows[key] for key in sorted(self._rows)], columns=columns)


class Allocation(View):
    """The share of each arm among an experiment's decisions, per event-time window.

    >>> allocation = Allocation(bucket_s=60.0)
    >>> for arm in ("v1", "v1", "v1", "v2"):
    ...     d = Decision(experiment="greeting", arm=arm, policy="thompson", propensity=0.5)
    ...     allocation.add(Envelope(1, "id", "Decision", "greeting", 10.0, 0.0, None, None, 1, d))
    >>> allocation.frame()[["experiment", "arm", "decisions", "share"]].values.tolist()
    [['greeting', 'v1', 3, 0.75], ['greeting', 'v2', 1, 0.25]]
    """

    types = (Decision,)
    title = "Allocation of decisions"

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        super().__init__(bucket_s)
        self.counts: dict[str, dict[int, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))

    def add(self, envelope: Envelope[Any]) -> None:
        decision: Decision = envelope.payload
        self.counts[decision.experiment][self.bucket(envelope.time)][decision.arm] += 1

    def frame(self, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per (experiment, window, arm): ``decisions`` and ``share`` of the window's decisions."""
        rows = []
        for experiment in sorted(self.counts):
            by_time = self.counts[experiment]
            first = min(by_time)
            factor = merge_factor(max(by_time) - first + 1, max_points)
            merged: dict[int, Counter[str]] = defaultdict(Counter)
            for index, arms in by_time.items():
                merged[index // factor * factor].update(arms)
            for start in sorted(merged):
                arms = merged[start]
                total = sum(arms.values())
                rows.extend(
                    {
                        "experiment": experiment,
                        "time": start * self.bucket_s,
                        "arm": arm,
                        "decisions": count,
                        "share": count / total,
                    }
                    for arm, count in sorted(arms.items())
                )
        return pd.DataFrame(rows, columns=["experiment", "time", "arm", "decisions", "share"])


class ArmPosteriors(View):
    """The latest statistics of each bandit experiment: per arm, pulls, the mean reward with its 95 %
    credible interval and the probability of being best (from ``ExperimentStats`` events).

    >>> from rtopt.handlers.bandits import ArmSummary
    >>> posteriors = ArmPosteriors()
    >>> arm = ArmSummary("active", pulls=9, rewards=9, mean=0.6, low=0.3, high=0.85, p_best=0.7)
    >>> stats = ExperimentStats("greeting", decisions=9, rewards=9, exploration_rate=0.1, arms={"v1": arm})
    >>> posteriors.add(Envelope(1, "id", "ExperimentStats", "greeting", 0.0, 0.0, None, None, 1, stats))
    >>> posteriors.frame()[["arm", "mean", "low", "high"]].values.tolist()
    [['v1', 0.6, 0.3, 0.85]]
    """

    types = (ExperimentStats,)
    title = "Arms: posterior means and 95 % intervals"

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        super().__init__(bucket_s)
        self.latest: dict[str, tuple[float, ExperimentStats]] = {}

    def add(self, envelope: Envelope[Any]) -> None:
        stats: ExperimentStats = envelope.payload
        self.latest[stats.experiment] = (envelope.time, stats)

    def frame(self) -> pd.DataFrame:
        """One row per (experiment, arm) with ``status``, ``pulls``, ``mean``, ``low``, ``high``, ``p_best``."""
        rows = [
            {"experiment": name, "arm": arm, **msgspec.structs.asdict(summary)}
            for name, (_, stats) in sorted(self.latest.items())
            for arm, summary in stats.arms.items()
        ]
        columns = ["experiment", "arm", "status", "pulls", "rewards", "mean", "low", "high", "p_best"]
        return pd.DataFrame(rows, columns=columns)


_STATUS_BY_EVENT = {
    ExperimentStarted: "running",
    ExperimentPaused: "paused",
    ExperimentResumed: "running",
    ExperimentCompleted: "completed",
    ExperimentArchived: "archived",
}


class ExperimentTests(View):
    """A/B tests and canaries: each analysis's p-values per variant against the control, and each
    experiment's status with the reason of its last change (a guardrail pause names its guardrail).

    >>> tests = ExperimentTests()
    >>> paused = ExperimentPaused(experiment="greeting", reason="guardrail cost", guardrail="cost")
    >>> tests.add(Envelope(7, "id", "ExperimentPaused", "greeting", 0.0, 0.0, None, None, 1, paused))
    >>> tests.status_frame().values.tolist()
    [['greeting', 'paused', 'ExperimentPaused: guardrail cost', 7]]
    """

    types = (*_STATUS_BY_EVENT, ExperimentAnalysed, ExperimentConcluded, CanaryAdvanced, CanaryRolledBack)
    title = "Experiments: p-values and guardrails"

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        super().__init__(bucket_s)
        self.analyses: list[dict[str, Any]] = []
        self.status: dict[str, dict[str, Any]] = {}

    def add(self, envelope: Envelope[Any]) -> None:
        event = envelope.payload
        if isinstance(event, ExperimentAnalysed):
            for variant, comparison in event.comparisons.items():
                self.analyses.append(
                    {
                        "experiment": event.experiment,
                        "analysis": event.analysis,
                        "feedback": event.feedback,
                        "variant": variant,
                        "p_welch": comparison.welch.p_value if comparison.welch else None,
                        "p_conversion": comparison.conversion.p_value if comparison.conversion else None,
                        "p_holm": comparison.p_holm,
                        "msprt_p": comparison.msprt_p,
                    }
                )
            return
        row = self.status.setdefault(event.experiment, {"experiment": event.experiment, "status": "", "reason": ""})
        if type(event) in _STATUS_BY_EVENT:
            row["status"] = _STATUS_BY_EVENT[type(event)]
        row["reason"] = f"{type(event).__name__}: {event.reason}"
        row["seq"] = envelope.seq

    def frame(self) -> pd.DataFrame:
        """One row per (analysis, variant): the Welch, conversion, Holm-adjusted and mSPRT p-values."""
        columns = ["experiment", "analysis", "feedback", "variant", "p_welch", "p_conversion", "p_holm", "msprt_p"]
        return pd.DataFrame(self.analyses, columns=columns)

    def status_frame(self) -> pd.DataFrame:
        """One row per experiment: its status and the last lifecycle or canary event with its reason."""
        return pd.DataFrame(list(self.status.values()), columns=["experiment", "status", "reason", "seq"])

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"ExperimentTests": self.frame(), "ExperimentStatus": self.status_frame()}


def describe(event: Event) -> str:
    """A one-line account of an event for the feed: its reason or message when it has one, else its fields.

    >>> describe(HandlerFailed(handler="bandit", event_type="Feedback", error_type="KeyError", message="'v9'"))
    "bandit failed on Feedback: KeyError: 'v9'"
    """
    if isinstance(event, HandlerFailed):
        return f"{event.handler} failed on {event.event_type}: {event.error_type}: {event.message}"
    if isinstance(event, FeedbackFlagged):
        reliability = "" if event.reliability is None else f" (user reliability {event.reliability:.2f})"
        who = event.user or "no user"
        return f"feedback {event.feedback_id} of {who} flagged: {', '.join(event.reasons)}{reliability}"
    if isinstance(event, RateLimitExceeded):
        return f"{event.scope} {event.who}: {event.count} feedback within {event.window_s:g} s (limit {event.limit})"
    reason = getattr(event, "reason", None)
    if reason:
        return str(reason)
    return msgspec.json.encode(event).decode()


class AlertFeed(View):
    """The newest ``limit`` events that call for attention (failures, rejected or flagged feedback, rate limits,
    pauses, sample-ratio mismatches, rollbacks, conclusions), newest first.

    >>> feed = AlertFeed(limit=1)
    >>> for seq, reason in ((1, "unknown decision"), (2, "expired")):
    ...     rejected = FeedbackRejected(reason=reason)
    ...     feed.add(Envelope(seq, "id", "FeedbackRejected", "greeting", 0.0, 0.0, None, None, 1, rejected))
    >>> feed.frame()[["seq", "what"]].values.tolist()
    [[2, 'expired']]
    """

    types = (
        HandlerFailed,
        FeedbackRejected,
        FeedbackFlagged,
        RateLimitExceeded,
        ExperimentPaused,
        SampleRatioMismatch,
        CanaryRolledBack,
        ExperimentConcluded,
        WinnerPromoted,
    )
    title = "Alerts and actions"

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S, limit: int = 200) -> None:
        super().__init__(bucket_s)
        self.entries: deque[dict[str, Any]] = deque(maxlen=limit)

    def add(self, envelope: Envelope[Any]) -> None:
        self.entries.append(
            {
                "seq": envelope.seq,
                "time": envelope.time,
                "type": envelope.type,
                "key": envelope.stream,
                "what": describe(envelope.payload),
            }
        )

    def frame(self) -> pd.DataFrame:
        """The entries, newest first: ``seq``, ``time``, ``type``, ``key`` (the stream) and ``what``."""
        return pd.DataFrame(list(reversed(self.entries)), columns=["seq", "time", "type", "key", "what"])


AlertEvent = DriftDetected | AnomalyDetected | PatternDetected | ThresholdBreached


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


class Detections(View):
    """The alerts of the detectors (drift, anomalies, patterns, thresholds), newest first, one row per alert:
    an alert that goes on shows its latest revision. ``recommendations_frame`` lists what the latest revision
    of each pattern recommends.

    >>> detections = Detections()
    >>> drift = DriftDetected(pipeline="quality", key="g/b", metric="quality_score.mean", start=0.0, end=60.0,
    ...                       detector="cusum", change_point=60.0, direction="down")
    >>> detections.add(Envelope(3, "id", "DriftDetected", "g/b", 60.0, 0.0, None, None, 1, drift))
    >>> detections.frame()[["seq", "detector", "key", "change_point", "what"]].values.tolist()
    [[3, 'cusum', 'g/b', 60.0, 'level went down: ']]
    """

    types = (DriftDetected, AnomalyDetected, PatternDetected, ThresholdBreached)
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
        self.alerts: dict[tuple[str, str, str, str, int], tuple[int, float, AlertEvent]] = {}

    def add(self, envelope: Envelope[Any]) -> None:
        event: AlertEvent = envelope.payload
        identity = (envelope.type, event.pipeline, event.key, event.metric, event.alert)
        self.alerts.pop(identity, None)  # re-inserted: the dict stays in the order of each alert's last report
        self.alerts[identity] = (envelope.seq, envelope.time, event)
        if len(self.alerts) > self.limit:
            del self.alerts[next(iter(self.alerts))]

    def frame(self) -> pd.DataFrame:
        """One row per alert, newest report first: where it was found, the detector, the change point (drift),
        score (anomaly; the value of a breach), pattern kind and confidence (pattern), its revision and a
        one-line account."""
        rows = []
        for seq, time, event in reversed(self.alerts.values()):
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

    def recommendations_frame(self) -> pd.DataFrame:
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
            for seq, time, event in reversed(self.alerts.values())
            if isinstance(event, PatternDetected)
            for advice in event.recommendations
        ]
        return pd.DataFrame(rows, columns=self.RECOMMENDATION_COLUMNS)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"Detections": self.frame(), "Recommendations": self.recommendations_frame()}


class Responses(View):
    """What was done about the detections, newest first: optimisation actions (with their target, metric,
    expected impact and confidence), discounted evidence and captured configurations.

    >>> responses = Responses()
    >>> cut = EvidenceDiscounted(experiment="g", factor=0.25, reason="drift of g/b")
    >>> responses.add(Envelope(5, "id", "EvidenceDiscounted", "g", 60.0, 0.0, None, None, 1, cut))
    >>> responses.frame()[["seq", "action", "target", "what"]].values.tolist()
    [[5, 'scale evidence by 0.25', 'g', 'drift of g/b']]
    """

    types = (OptimizationAction, EvidenceDiscounted, ConfigurationCaptured)
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
        self.entries: deque[list[Any]] = deque(maxlen=limit)

    def add(self, envelope: Envelope[Any]) -> None:
        event = envelope.payload
        row: list[Any] = [envelope.seq, envelope.time, envelope.type]
        match event:
            case OptimizationAction():
                settings = ", ".join(f"{name}={value:.4g}" for name, value in sorted(event.parameters.items()))
                what = f"{event.reason} ({settings})" if settings else event.reason
                row += [event.action, event.target, event.metric, event.expected_impact, event.confidence, what]
            case EvidenceDiscounted():
                row += [f"scale evidence by {event.factor:g}", event.experiment, "", None, None, event.reason]
            case ConfigurationCaptured():
                values = ", ".join(f"{name} {value:.4g}" for name, value in sorted(event.values.items()))
                row += ["capture configuration", event.key, event.metric, None, None, values]
        self.entries.append(row)

    def frame(self) -> pd.DataFrame:
        """The responses, newest first: ``action``, ``target``, ``metric``, ``expected_impact`` (relative),
        ``confidence`` and ``what`` (the reason and the parameters, or the values captured)."""
        return pd.DataFrame(list(reversed(self.entries)), columns=self.COLUMNS)


class Forecasts(View):
    """Forecasts of window values (the request volume, by default) against what the windows then held: per
    series (pipeline, key, metric), the one-step-ahead forecast of each window with its prediction interval,
    the latest forecast's further steps, and the window's actual value. Shown once a Forecast exists.

    >>> forecasts = Forecasts()
    >>> window = WindowClosed(pipeline="volume", key="g", start=0.0, end=60.0, count=90, values={})
    >>> ahead = Forecast(pipeline="volume", key="g", metric="count", start=60.0, step=60.0, points=[100.0],
    ...                  lows=[80.0], highs=[120.0], level=0.95, weights={}, mae=5.0, mape=0.05, scored=3)
    >>> forecasts.add(Envelope(1, "id", "WindowClosed", "g", 60.0, 0.0, None, None, 1, window))
    >>> forecasts.add(Envelope(2, "id", "Forecast", "g", 60.0, 0.0, None, None, 1, ahead))
    >>> forecasts.frame()[["time", "forecast", "low", "high", "actual"]].values.tolist()
    [[0.0, nan, nan, nan, 90.0], [60.0, 100.0, 80.0, 120.0, nan]]
    """

    types = (Forecast, WindowClosed, WindowUpdated)
    title = "Forecasts against actual values"
    COLUMNS: ClassVar[list[str]] = ["pipeline", "key", "metric", "time", "forecast", "low", "high", "actual"]

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S) -> None:
        super().__init__(bucket_s)
        self.windows: dict[tuple[str, str], dict[float, WindowClosed]] = defaultdict(dict)
        self.one_step: dict[tuple[str, str, str], dict[float, tuple[float, float, float]]] = defaultdict(dict)
        self.latest: dict[tuple[str, str, str], Forecast] = {}

    @classmethod
    def shown_by(cls) -> frozenset[str] | None:
        return frozenset({Forecast.tag()})

    def add(self, envelope: Envelope[Any]) -> None:
        event = envelope.payload
        if isinstance(event, Forecast):
            series = (event.pipeline, event.key, event.metric)
            self.latest[series] = event
            if event.points:
                self.one_step[series][event.start] = (event.points[0], event.lows[0], event.highs[0])
            return
        self.windows[event.pipeline, event.key][event.start] = event  # a revision replaces the window

    def frame(self, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per (series, window start): ``forecast`` with ``low`` and ``high`` (NaN before the first
        forecast) and ``actual`` (NaN for windows not closed yet), the last ``max_points`` windows of each series
        that has forecasts."""
        rows = []
        for series in sorted(self.latest):
            pipeline, key, metric = series
            predicted = dict(self.one_step[series])
            latest = self.latest[series]
            for h, point in enumerate(zip(latest.points, latest.lows, latest.highs, strict=True)):
                predicted[latest.start + h * latest.step] = point
            windows = self.windows.get((pipeline, key), {})
            actual = {
                start: float(window.count) if metric == "count" else window.values.get(metric, math.nan)
                for start, window in windows.items()
            }
            for time in sorted(predicted.keys() | actual.keys())[-max_points:]:
                point, low, high = predicted.get(time, (math.nan, math.nan, math.nan))
                rows.append([pipeline, key, metric, time, point, low, high, actual.get(time, math.nan)])
        return pd.DataFrame(rows, columns=self.COLUMNS)

    def errors_frame(self) -> pd.DataFrame:
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
            for _, event in sorted(self.latest.items())
        ]
        return pd.DataFrame(rows, columns=["pipeline", "key", "metric", "mae", "mape", "scored", "weights"])

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"Forecasts": self.frame(), "ForecastErrors": self.errors_frame()}


def _parameters(params: dict[str, Any]) -> str:
    """Parameters as ``name=value`` pairs in name order.

    >>> _parameters({"top_p": 0.9, "model": "small", "temperature": 0.41234})
    'model=small, temperature=0.4123, top_p=0.9'
    """
    return ", ".join(
        f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in sorted(params.items())
    )


class Studies(View):
    """Bayesian optimisation studies: per study, each observed value and the best so far (the largest, or the
    smallest for a study that minimises), the suggestions with what the model predicted for them and what
    was then observed, and each study's status.

    >>> from rtopt import Dimension
    >>> studies = Studies()
    >>> defined = StudyDefined(study="s", space={"x": Dimension.of((0.0, 1.0))}, direction="minimize")
    >>> suggested = Suggested(study="s", params={"x": 0.5}, method="gp", acquisition=0.2, mean=1.0, std=0.5)
    >>> observed = Observed(study="s", suggestion_id="s-1", value=0.8)
    >>> for seq, event in enumerate((defined, suggested, observed), start=1):
    ...     studies.add(Envelope(seq, f"s-{seq - 1}", type(event).__name__, "s", 0.0, 0.0, None, None, 1, event))
    >>> studies.frame()[["study", "iteration", "value", "best"]].values.tolist()
    [['s', 1, 0.8, 0.8]]
    >>> studies.suggestions_frame()[["params", "mean", "value"]].values.tolist()
    [['x=0.5', 1.0, 0.8]]
    """

    types = (StudyDefined, Suggested, Observed, StudyCompleted)
    title = "Bayesian studies: best value over iterations"
    SUGGESTION_COLUMNS: ClassVar[list[str]] = [
        "seq",
        "time",
        "study",
        "params",
        "acquisition",
        "mean",
        "std",
        "value",
    ]
    STATUS_COLUMNS: ClassVar[list[str]] = [
        "study",
        "direction",
        "method",
        "evaluations",
        "best",
        "best_params",
        "status",
    ]

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S, limit: int = 1000) -> None:
        super().__init__(bucket_s)
        self.definitions: dict[str, StudyDefined] = {}
        self.suggestions: dict[str, list[Any]] = {}
        self.recent: deque[str] = deque(maxlen=limit)
        self.values: dict[str, list[float]] = defaultdict(list)
        self.best: dict[str, list[float]] = defaultdict(list)
        self.best_params: dict[str, str] = {}
        self.completed: dict[str, StudyCompleted] = {}

    def _better(self, study: str, value: float, best: float) -> bool:
        definition = self.definitions.get(study)
        return value < best if definition is not None and definition.direction == "minimize" else value > best

    def add(self, envelope: Envelope[Any]) -> None:
        event = envelope.payload
        match event:
            case StudyDefined():
                self.definitions[event.study] = event
            case Suggested():
                row = [envelope.seq, envelope.time, event.study, _parameters(event.params)]
                self.suggestions[envelope.id] = [*row, event.acquisition, event.mean, event.std, None]
                if len(self.recent) == self.recent.maxlen:
                    self.suggestions.pop(self.recent[0], None)
                self.recent.append(envelope.id)
            case Observed():
                suggestion = self.suggestions.get(event.suggestion_id)
                if suggestion is not None:
                    suggestion[-1] = event.value
                best = self.best[event.study]
                if not best or self._better(event.study, event.value, best[-1]):
                    best.append(event.value)
                    self.best_params[event.study] = "" if suggestion is None else suggestion[3]
                else:
                    best.append(best[-1])
                self.values[event.study].append(event.value)
            case StudyCompleted():
                self.completed[event.study] = event

    def frame(self, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per observation of each study (at most ``max_points``, evenly spaced and the last
        included): its ``iteration`` (from 1), the observed ``value`` and the ``best`` so far."""
        rows = []
        for study in sorted(self.values):
            values, best = self.values[study], self.best[study]
            step = merge_factor(len(values), max_points)
            kept = sorted({*range(len(values) - 1, -1, -step)})
            rows.extend([study, i + 1, values[i], best[i]] for i in kept)
        return pd.DataFrame(rows, columns=["study", "iteration", "value", "best"])

    def suggestions_frame(self) -> pd.DataFrame:
        """The latest suggestions, newest first: the ``params``, the ``acquisition`` value, the model's
        predicted ``mean`` and ``std`` (NaN while no model guides the study) and the observed ``value`` (NaN
        until it is told)."""
        rows = [self.suggestions[key] for key in reversed(self.recent) if key in self.suggestions]
        return pd.DataFrame(rows, columns=self.SUGGESTION_COLUMNS)

    def status_frame(self) -> pd.DataFrame:
        """One row per study: its direction and method, how many values were observed, the best of them
        with its parameters, and ``running`` or why it ended."""
        rows = []
        for study in sorted(self.definitions.keys() | self.values.keys()):
            definition = self.definitions.get(study)
            best = self.best.get(study)
            completed = self.completed.get(study)
            rows.append(
                [
                    study,
                    "" if definition is None else definition.direction,
                    "" if definition is None else f"{definition.method} {definition.kernel} {definition.acquisition}",
                    len(self.values.get(study, ())),
                    best[-1] if best else None,
                    self.best_params.get(study, ""),
                    "running" if completed is None else f"completed: {completed.reason}",
                ]
            )
        return pd.DataFrame(rows, columns=self.STATUS_COLUMNS)

    def frames(self) -> dict[str, pd.DataFrame]:
        return {"Studies": self.frame(), "Suggestions": self.suggestions_frame(), "StudyStatus": self.status_frame()}


def default_views(bucket_s: float = DEFAULT_BUCKET_S) -> list[View]:
    """One of each view the dashboard shows."""
    return [
        cls(bucket_s)
        for cls in (
            EventRate,
            FeedbackMetrics,
            Allocation,
            ArmPosteriors,
            ExperimentTests,
            Studies,
            Detections,
            Responses,
            Forecasts,
            AlertFeed,
        )
    ]


class LogModel:
    """Counts by type and the views of a log, folded one envelope at a time in seq order.

    >>> model = LogModel()
    >>> fb = Feedback(prompt_id="p", variant_id="v1", response_time_ms=90.0, success=True, quality_score=0.7)
    >>> model.add([Envelope(1, "id", "Feedback", "p", 0.0, 0.0, None, None, 1, fb)])
    1
    >>> model.events_seen, [type(view).__name__ for view in model.shown()]
    (1, ['EventRate', 'FeedbackMetrics'])
    """

    def __init__(self, views: Sequence[View] | None = None) -> None:
        self.views = list(default_views() if views is None else views)
        self.counts: Counter[str] = Counter()
        self.last_seq = 0
        self.first_time: float | None = None
        self.last_time: float | None = None
        self._every = [view for view in self.views if view.tags() is None]
        self._by_tag: dict[str, list[View]] = defaultdict(list)
        for view in self.views:
            for tag in view.tags() or ():
                self._by_tag[tag].append(view)

    @property
    def events_seen(self) -> int:
        """How many events have been folded."""
        return sum(self.counts.values())

    def add(self, envelopes: Iterable[Envelope[Any]]) -> int:
        """Fold ``envelopes`` (in seq order, each seq once) into the counts and the views reading their type;
        returns how many there were."""
        every, by_tag = self._every, self._by_tag
        folded = 0
        for envelope in envelopes:
            folded += 1
            self.counts[envelope.type] += 1
            for view in every:
                view.add(envelope)
            for view in by_tag.get(envelope.type, ()):
                view.add(envelope)
            self.last_seq = envelope.seq
            if self.first_time is None:
                self.first_time = envelope.time
            self.last_time = envelope.time
        return folded

    def shown(self) -> list[View]:
        """The views that have events of their types to show."""
        return [view for view in self.views if self.holds_events_for(view)]

    def holds_events_for(self, view: View) -> bool:
        """Whether events that make ``view`` worth showing (of any type, if it reads all) have been folded."""
        tags = view.shown_by()
        return self.events_seen > 0 if tags is None else any(self.counts[tag] for tag in tags)

    def view(self, cls: type[View]) -> View:
        """The model's view of class ``cls``."""
        return next(view for view in self.views if isinstance(view, cls))

    def counts_frame(self) -> pd.DataFrame:
        """Events per type, most frequent first."""
        return pd.DataFrame(self.counts.most_common(), columns=["type", "events"])

    def frames(self) -> dict[str, pd.DataFrame]:
        """Every table the dashboard draws, by name: the counts and each view's."""
        tables = {"counts": self.counts_frame()}
        for view in self.views:
            tables.update(view.frames())
        return tables

    def emptied(self) -> LogModel:
        """A model with views of the same kinds, and nothing folded yet."""
        return LogModel([type(view)(view.bucket_s) for view in self.views])


class LogTail:
    """Feeds a model the events of a log from the seq after the last one it read; the log may be
    written by another process meanwhile, and may not exist yet (it is opened, read-only, once it does).
    Open on a path or on an engine.

    >>> engine = Engine.open(":memory:", seed=1, handlers=[])
    >>> tail = LogTail(engine)
    >>> _ = engine.publish(Feedback(prompt_id="p", variant_id="v1", response_time_ms=1.0, success=True,
    ...                             quality_score=0.5), time=0.0)
    >>> tail.poll(), tail.poll(), tail.model.events_seen
    (1, 0, 1)
    """

    def __init__(self, source: Engine | str | Path, model: LogModel | None = None) -> None:
        self.path = None if isinstance(source, Engine) else Path(source)
        self._engine = source if isinstance(source, Engine) else None
        self._opened: tuple[int, int] | None = None
        self.model = LogModel() if model is None else model
        self.lock = threading.Lock()

    def _file(self) -> tuple[int, int] | None:
        """The identity of the file at ``path`` (None if there is none)."""
        try:
            found = os.stat(self.path) if self.path is not None else None
        except FileNotFoundError:
            return None
        return None if found is None else (found.st_dev, found.st_ino)

    @property
    def location(self) -> str:
        """Where the log lives."""
        return str(self.path) if self._engine is None else self._engine.location

    @property
    def engine(self) -> Engine | None:
        """The engine reading the log (None while a log given by path does not exist yet)."""
        if self._engine is None and self.path is not None and self.path.exists():
            try:
                identity = self._file()
                self._engine = Engine.open(self.path, read_only=True, handlers=[])
                self._opened = identity
            except InvalidLog:  # still being created by its writer
                return None
        return self._engine

    def poll(self, limit: int = READ_CHUNK) -> int:
        """Fold up to ``limit`` events committed since the last call; returns how many. A log file replaced
        by another (``rtopt simulate`` writes a new one on each run) is read from its start into a new model.
        """
        with self.lock:
            if self._opened is not None and self._file() != self._opened:
                if self._engine is not None:
                    self._engine.close()
                self._engine = self._opened = None
                self.model = self.model.emptied()
            engine = self.engine
            if engine is None:
                return 0
            start = self.model.last_seq + 1
            return self.model.add(engine.read(start=start, until=start + limit - 1))

    def close(self) -> None:
        """Release the log if this tail opened it."""
        if self.path is not None and self._engine is not None:
            self._engine.close()


class EngineFeed(LogTail):
    """Feeds a model what an engine in this process commits, as it commits it (a subscription), after
    reading the events it held before.

    >>> engine = Engine.open(":memory:", seed=1, handlers=[])
    >>> feed = EngineFeed(engine)
    >>> _ = engine.publish(Feedback(prompt_id="p", variant_id="v1", response_time_ms=1.0, success=True,
    ...                             quality_score=0.5), time=0.0)
    >>> feed.poll(), feed.model.events_seen
    (1, 1)
    >>> feed.close()
    """

    def __init__(self, engine: Engine, model: LogModel | None = None) -> None:
        super().__init__(engine, model)
        self.pending: deque[Envelope[Any]] = deque()
        self.subscription = engine.subscribe(self.pending.append)
        self.history_end = engine.position

    def poll(self, limit: int = READ_CHUNK) -> int:
        """Fold up to ``limit`` events: the engine's history first, then what it committed since."""
        if self.model.last_seq < self.history_end:
            return super().poll(min(limit, self.history_end - self.model.last_seq))
        with self.lock:
            batch = []
            while self.pending and len(batch) < limit:
                envelope = self.pending.popleft()
                if envelope.seq > self.model.last_seq:
                    batch.append(envelope)
            return self.model.add(batch)

    def close(self) -> None:
        """Stop receiving the engine's events."""
        self.subscription.dispose()

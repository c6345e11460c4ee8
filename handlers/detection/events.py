"""Events of detection and response: what was detected, with the evidence, and what was done about it.

Each names the window pipeline and key it was found in (``pipeline``, ``key``) and the event-time span of
the windows behind it, so it can be acted on and audited; replaying the log derives each one again.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from rtopt.events import Count, Event, Name, UnitInterval

Priority = Annotated[str, Meta(pattern="^(low|medium|high|critical)$")]


class Detection(Event, frozen=True):
    """Something found in the windows of ``key`` of the pipeline ``pipeline``.

    ``alert`` numbers the alerts of one key and metric; a detection that goes on firing for the same cause
    is the same alert again with a higher ``revision`` (0 for its first report), not a new alert.
    """

    pipeline: Name
    key: str
    metric: Name
    start: float
    end: float
    alert: Count = 0
    revision: Count = 0
    stream_field: ClassVar[str] = "key"


class DriftDetected(Detection, frozen=True):
    """A change in the level of ``metric`` found by ``detector`` (``adwin``, ``page_hinkley`` or ``cusum``).

    ``change_point`` is the estimated event time of the change (the start of the first window after it),
    ``direction`` ``up`` or ``down``; ``statistics`` holds the test's evidence (means either side for ADWIN,
    the statistic and threshold for Page-Hinkley and CUSUM); ``detectors`` lists every detector that
    has reported this alert so far.
    """

    detector: Name = "adwin"
    change_point: float = 0.0
    direction: str = ""
    statistics: dict[str, float] = msgspec.field(default_factory=dict)
    detectors: list[str] = msgspec.field(default_factory=list)


class AnomalyDetected(Detection, frozen=True):
    """A window whose value of ``metric`` is unusual against the detector's baseline: ``value``, its ``score``
    in the detector's units (``threshold`` is where anomalies start) and the ``baseline`` it was compared
    with. For ``mahalanobis`` the metric names several metrics joined by ``+`` and the value is the squared
    distance of their vector from its running mean."""

    detector: Name = "zscore"
    value: float = 0.0
    score: float = 0.0
    threshold: float = 0.0
    baseline: dict[str, float] = msgspec.field(default_factory=dict)


class Recommendation(msgspec.Struct, frozen=True):
    """What to do about a pattern: an action kind, how urgent, what it is, the improvement expected and the
    steps."""

    action: Name
    priority: Priority
    description: str
    expected_improvement: float
    steps: list[str] = msgspec.field(default_factory=list)


class Correlation(msgspec.Struct, frozen=True):
    """Correlation of the pattern's metric with another metric over the same windows."""

    pearson: float
    pearson_p: UnitInterval
    spearman: float
    spearman_p: UnitInterval


class PatternDetected(Detection, frozen=True):
    """A performance pattern over consecutive windows: ``kind`` is ``degradation``, ``improvement``,
    ``oscillation``, ``plateau`` or ``anomaly``.

    ``confidence`` is one minus the p-value of the pattern's test (``significance``); ``magnitude`` is in the
    metric's units (the change over the windows for a trend, the amplitude of an oscillation, the deviation
    of an anomaly, the spread of a plateau); ``metrics`` lists the affected metrics; ``correlations`` holds
    the Pearson and Spearman correlations of ``metric`` with each other metric over the same windows.
    """

    kind: Name = "degradation"
    confidence: UnitInterval = 0.0
    significance: UnitInterval = 1.0
    magnitude: float = 0.0
    windows: Count = 0
    metrics: list[str] = msgspec.field(default_factory=list)
    details: dict[str, float] = msgspec.field(default_factory=dict)
    correlations: dict[str, Correlation] = msgspec.field(default_factory=dict)
    recommendations: list[Recommendation] = msgspec.field(default_factory=list)


class ThresholdBreached(Detection, frozen=True):
    """A window's ``value`` of ``metric`` is on the wrong side of the ``limit`` of the threshold profile
    ``profile`` (``bound`` is ``min`` or ``max``)."""

    profile: Name = "basic"
    value: float = 0.0
    limit: float = 0.0
    bound: str = "min"


class OptimizationAction(Event, frozen=True):
    """A response to a detection: ``action`` is ``parameter_adjustment``, ``strategy_change``,
    ``ab_test_start``, ``ab_test_stop`` or ``cache_update``, aimed at ``target`` (an experiment or a key),
    because of ``reason`` (the detection's event type and what it found), with the ``expected_impact`` on
    ``metric`` (relative) and the ``confidence`` in it; ``parameters`` say what to change."""

    action: Name
    target: Name
    reason: str
    metric: Name
    expected_impact: float
    confidence: UnitInterval
    parameters: dict[str, float] = msgspec.field(default_factory=dict)
    stream_field: ClassVar[str] = "target"


class ConfigurationCaptured(Event, frozen=True):
    """The configuration (``key`` of ``pipeline``: a prompt, a variant) behind an improvement, with the
    window values it reached, kept so that it can be restored or promoted."""

    pipeline: Name
    key: str
    metric: Name
    start: float
    end: float
    values: dict[str, float]
    stream_field: ClassVar[str] = "key"


class Forecast(Event, frozen=True):
    """Forecasts of ``metric`` (``count``: the number of events, the request volume) of ``key`` for the next
    windows, each ``step`` seconds long from ``start``: ``points`` with their prediction interval ``lows`` to
    ``highs`` at ``level``, from an ensemble weighted by recent error (``weights`` by method). ``mae`` and
    ``mape`` are the errors of the one-step forecasts so far (``scored`` of them)."""

    pipeline: Name
    key: str
    metric: Name
    start: float
    step: float
    points: list[float]
    lows: list[float]
    highs: list[float]
    level: UnitInterval
    weights: dict[str, float]
    mae: float
    mape: float
    scored: Count
    stream_field: ClassVar[str] = "key"

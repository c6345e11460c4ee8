"""The state of the detection handler: per pipeline, key and metric, the detectors, the recent windows and the
alerts; msgspec structs, rebuilt by replay and stored in snapshots."""

from __future__ import annotations

import msgspec
from rtopt.handlers.detection.anomaly import MAD, IQRFences, Mahalanobis, ZScore
from rtopt.handlers.detection.drift import ADWIN, CUSUM, PageHinkley
from rtopt.handlers.detection.forecasting import Ensemble
from rtopt.streams.moments import RunningMoments

NEW, UPDATE, QUIET = "new", "update", "quiet"
GROWTH = 1.25  # an open alert is reported again when what it measures has grown by a quarter


class Alert(msgspec.Struct):
    """The alerts of one kind on one metric: the current alert's number and revision, the window it was last
    seen at, the detectors that reported it and the size last reported.

    >>> alert = Alert()
    >>> alert.report(1, within=10, magnitude=2.0), alert.report(2, within=10, magnitude=2.1)
    ('new', 'quiet')
    >>> alert.report(3, within=10, magnitude=3.0), alert.report(20, within=10, magnitude=1.0), alert.number
    ('update', 'new', 2)
    """

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
    """One metric of one key: its detectors, the moments of its first windows (Page-Hinkley's scale), its
    recent windows (values, starts and ends), whether it has changed, and its alerts (drift, anomaly, and
    the open patterns by kind)."""

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

    def record(self, value: float, start: float, end: float, keep: int, warmup: int) -> None:
        """One more window: its value joins the last ``keep`` and, among the first ``warmup``, the spread."""
        self.windows += 1
        for series, item in ((self.values, value), (self.starts, start), (self.ends, end)):
            series.append(item)
            del series[:-keep]
        if self.spread.n < warmup:
            self.spread.update(value)

    def revise(self, start: float, value: float) -> None:
        """A late revision of the window from ``start``, if still recent: the value patterns see changes."""
        if start in self.starts:
            self.values[self.starts.index(start)] = value

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

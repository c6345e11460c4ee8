"""Online drift detectors: ADWIN, Page-Hinkley and two-sided CUSUM, each ``update(x) -> bool``.

They are msgspec Structs, so a handler keeps them in its state and snapshots encode them. After a
detection each starts afresh from the next value (it re-baselines on the new level), as River's do.

Default thresholds are calibrated to about one false alarm per 10,000 stationary N(0, 1) values
(textbook defaults raise 8 to 12): Page-Hinkley and CUSUM work in the units of the stream, so for a
stream of standard deviation ``s`` scale ``threshold`` and ``delta`` (Page-Hinkley) by ``s``, or feed
standardised values. ADWIN's bound adapts to the stream's variance.

References: A. Bifet and R. Gavaldà (2007), "Learning from time-changing data with adaptive windowing";
E. S. Page (1954), "Continuous inspection schemes"; D. Siegmund (1985), "Sequential Analysis" (the
CUSUM run-length approximation).
"""

from __future__ import annotations

import itertools
import math
from functools import reduce
from operator import add
from typing import Annotated, Any

import msgspec
from msgspec import Meta

# The Rust core behind river.drift.ADWIN: River names it only in this private module, and its public ADWIN
# class adds a layer of Python calls to every update (the time this wrapper saves).
from river._river_rust.drift import AdaptiveWindowing
from rtopt.handlers.checked import Checked

Positive = Annotated[float, Meta(gt=0.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]

PAGE_HINKLEY_THRESHOLD = 115.0
"""Page-Hinkley threshold for about one false alarm per 10,000 N(0, 1) values (River's default, 50, raises ~6)."""
CUSUM_THRESHOLD = 8.0
"""CUSUM decision interval, in standard deviations, with a drift allowance of 0.5: one false alarm per ~9,600
N(0, 1) values by Siegmund's approximation (measured ~1.0 per 10,000 with the reference estimated as it
goes); the textbook 5 gives one per ~470."""


class ADWIN(Checked, dict=True):
    """Adaptive windowing (ADWIN2) over River's Rust core: a change is detected when two sub-windows of the
    values since the last change have means further apart than the bound given by ``delta``. The same
    detections as River's ``ADWIN`` with the same parameters; ``n`` counts the values added.

    ``replayable`` keeps the values seen since the last detection in the struct, so a copy decoded from
    msgpack (a snapshot) rebuilds River's window exactly and detects where this one would; without it the
    window lives only in memory (a decoded copy starts a new window, and counts ``n`` from its last detection).

    >>> import random
    >>> rng = random.Random(1)
    >>> adwin = ADWIN(delta=0.002)
    >>> stream = [rng.gauss(0, 1) for _ in range(1000)] + [rng.gauss(3, 1) for _ in range(1000)]
    >>> [i for i, x in enumerate(stream) if adwin.update(x)]
    [1023]
    >>> adwin.change_point, adwin.n
    (984, 2000)
    """

    delta: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.002
    clock: Annotated[int, Meta(ge=1)] = 32
    max_buckets: Annotated[int, Meta(ge=1)] = 5
    min_window_length: Annotated[int, Meta(ge=1)] = 5
    grace_period: Annotated[int, Meta(ge=1)] = 10
    replayable: bool = False
    seen: list[float] = msgspec.field(default_factory=list)
    reset_at: int = 0
    detections: int = 0
    change_point: int | None = None
    evidence: dict[str, float] = msgspec.field(default_factory=dict)

    @property
    def n(self) -> int:
        """The values added: those up to the last detection and those in the window since (River's window
        drops values only when it detects, and then it starts afresh)."""
        return self.reset_at + int(self._window().get_width())

    def _window(self) -> AdaptiveWindowing:
        try:
            return self._adwin
        except AttributeError:
            return self._rebuild()

    def _rebuild(self) -> AdaptiveWindowing:
        """River's window of the values since the last detection, from ``seen`` (after decoding), and the
        countdown to its next test for a change (it tests every ``clock``-th value it is given)."""
        window = self.__dict__["_adwin"] = AdaptiveWindowing(
            delta=self.delta,
            clock=self.clock,
            max_buckets=self.max_buckets,
            min_window_length=self.min_window_length,
            grace_period=self.grace_period,
        )
        for x in self.seen:
            window.update(x)
        given, clock = len(self.seen), self.clock
        self.__dict__["_untested"] = itertools.cycle([(given + i) % clock for i in range(1, clock + 1)])
        return window

    def update(self, x: float) -> bool:
        """Add ``x``; True when it completes the evidence of a change."""
        try:
            window = self._adwin
        except AttributeError:
            window = self._rebuild()
        if self.replayable:
            seen = self.seen
            seen.append(x)
            if not window.update(x):
                return False
            # River's running total adds the values one by one from 0.0, as this does
            self._restart(window, len(seen), reduce(add, seen, 0.0))
            return True
        if next(self._untested):
            return window.update(x)  # not a value River's window tests a change at
        # until it detects, River's window holds every value since the last detection: their count and sum
        width, total = window.get_width(), window.get_total()
        if not window.update(x):
            return False
        self._restart(window, int(width) + 1, total + x)
        return True

    def _restart(self, window: AdaptiveWindowing, count: int, total: float) -> None:
        """Record the change found among the ``count`` values since the last detection (summing to
        ``total``) and start a new window, as River's ADWIN does on its next update."""
        after = int(window.get_width())
        mean_after = window.get_total() / after
        dropped = count - after
        self.evidence = {
            "mean_before": (total - mean_after * after) / dropped,
            "mean_after": mean_after,
            "width_before": float(dropped),
            "width_after": float(after),
            "delta": self.delta,
        }
        self.detections += 1
        self.reset_at += count
        self.change_point = self.reset_at - after
        self.seen = []
        self._rebuild()


class PageHinkley(Checked):
    """Two-sided Page-Hinkley test of a change in the mean: cumulative deviations from the running mean,
    faded by ``alpha`` and shrunk by the tolerance ``delta``, compared with ``threshold``.

    The same statistic as River's ``PageHinkley`` (same parameters, same detections) with a threshold
    calibrated to ~1 false alarm per 10,000 N(0, 1) values by default.

    >>> import random
    >>> rng = random.Random(2)
    >>> ph = PageHinkley()
    >>> stream = [rng.gauss(0, 1) for _ in range(2000)] + [rng.gauss(1, 1) for _ in range(2000)]
    >>> [i for i, x in enumerate(stream) if ph.update(x)]
    [2090]
    >>> ph.direction
    'up'
    """

    min_instances: Annotated[int, Meta(ge=1)] = 30
    delta: NonNegative = 0.005
    threshold: Positive = PAGE_HINKLEY_THRESHOLD
    alpha: Annotated[float, Meta(gt=0.0, le=1.0)] = 1 - 0.0001
    n: int = 0
    detections: int = 0
    mean: float = 0.0
    count: int = 0
    up: float = 0.0
    down: float = 0.0
    up_min: float = math.inf
    down_max: float = -math.inf
    up_min_at: int = 0
    down_max_at: int = 0
    direction: str = ""
    change_point: int | None = None
    evidence: dict[str, float] = msgspec.field(default_factory=dict)

    def update(self, x: float) -> bool:
        """Add ``x``; True when the cumulative deviation passes the threshold."""
        self.n += 1
        count = self.count + 1
        self.count = count
        mean = self.mean + (x - self.mean) / count
        self.mean = mean
        deviation = x - mean
        alpha = self.alpha
        up = alpha * self.up + deviation - self.delta
        down = alpha * self.down + deviation + self.delta
        self.up, self.down = up, down
        if up < self.up_min:
            self.up_min, self.up_min_at = up, self.n
        if down > self.down_max:
            self.down_max, self.down_max_at = down, self.n
        if count < self.min_instances:
            return False
        rise, fall = up - self.up_min, self.down_max - down
        if rise <= self.threshold and fall <= self.threshold:
            return False
        self.direction = "up" if rise > self.threshold else "down"
        self.change_point = self.up_min_at if rise > self.threshold else self.down_max_at
        self.evidence = {
            "statistic": rise if rise > self.threshold else fall,
            "threshold": self.threshold,
            "mean": mean,
            "count": float(count),
        }
        self.detections += 1
        self._restart()
        return True

    def _restart(self) -> None:
        self.count, self.mean, self.up, self.down = 0, 0.0, 0.0, 0.0
        self.up_min, self.down_max = math.inf, -math.inf


class CUSUM(Checked):
    """Two-sided tabular CUSUM of a change in the mean from ``target``, in standard deviations ``sigma``:
    ``S+ = max(0, S+ + z - drift)`` and ``S- = max(0, S- - z - drift)`` with ``z = (x - target) / sigma``;
    a change when either passes ``threshold``.

    When ``target`` or ``sigma`` is None they are estimated from the first ``warmup`` values and refined
    with every later value (a self-starting CUSUM: the estimate keeps improving, which holds the false-alarm
    rate to the calibrated one). After a detection the reference is estimated afresh from the next values
    (the old level is obsolete after a confirmed shift), so one change raises one alarm.

    >>> cusum = CUSUM(target=0.0, sigma=1.0)
    >>> [i for i, x in enumerate([0.0] * 20 + [2.0] * 200) if cusum.update(x)]
    [25]
    >>> cusum.direction, cusum.change_point, cusum.evidence["statistic"]
    ('up', 20, 9.0)
    """

    drift: NonNegative = 0.5
    threshold: Positive = CUSUM_THRESHOLD
    target: float | None = None
    sigma: Annotated[float, Meta(gt=0.0)] | None = None
    warmup: Annotated[int, Meta(ge=2)] = 50
    n: int = 0
    detections: int = 0
    learning: bool = True
    refine: bool = True
    count: int = 0
    level: float = 0.0
    scale: float = 1.0
    m2: float = 0.0
    dof: int = 0
    high: float = 0.0
    low: float = 0.0
    high_from: int = 0
    low_from: int = 0
    direction: str = ""
    change_point: int | None = None
    evidence: dict[str, float] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n:  # decoded mid-stream (a snapshot): the reference is the one encoded
            return
        if self.target is not None:
            self.level = self.target
        if self.sigma is not None:
            self.scale = self.sigma
        self.learning = self.target is None or self.sigma is None
        self.refine = self.learning

    def update(self, x: float) -> bool:
        """Add ``x``; True when a cumulative sum passes the threshold."""
        self.n += 1
        if self.learning:
            self._learn(x)
            return False
        z = (x - self.level) / self.scale
        if self.refine:
            self._learn(x)
        high = self.high + z - self.drift
        low = self.low - z - self.drift
        if high <= 0.0:
            high, self.high_from = 0.0, self.n
        if low <= 0.0:
            low, self.low_from = 0.0, self.n
        self.high, self.low = high, low
        if high <= self.threshold and low <= self.threshold:
            return False
        self.direction = "up" if high > self.threshold else "down"
        self.change_point = self.high_from if high > self.threshold else self.low_from
        self.evidence = {
            "statistic": high if high > self.threshold else low,
            "threshold": self.threshold,
            "target": self.level,
            "sigma": self.scale,
        }
        self.detections += 1
        self._restart()
        return True

    def _learn(self, x: float) -> None:
        """One more value of the reference: Welford's mean of the level since the last detection and a
        standard deviation pooled over every level seen (a shift moves the mean, rarely the spread).

        Not a :class:`~rtopt.streams.moments.RunningMoments`: ``m2`` sums the squared deviations of every level
        from its own mean in one running sum across restarts, which the moments of one sample do not hold (and
        pooling per-level moments would round differently, moving the alarms)."""
        self.count += 1
        delta = x - self.level
        self.level += delta / self.count
        if self.count > 1:
            self.m2 += delta * (x - self.level)
            self.dof += 1
            if self.sigma is None:
                self.scale = math.sqrt(self.m2 / self.dof) or 1.0
        self.learning = self.count < self.warmup

    def _restart(self) -> None:
        self.high = self.low = 0.0
        self.high_from = self.low_from = self.n
        self.count, self.level, self.learning, self.refine = 0, 0.0, True, True


DriftDetector = ADWIN | PageHinkley | CUSUM
DETECTORS: dict[str, type[Any]] = {"adwin": ADWIN, "page_hinkley": PageHinkley, "cusum": CUSUM}

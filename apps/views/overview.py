"""Views of the whole log: the event rate, feedback metrics per variant, and the feed of what calls for
attention."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Any, ClassVar

import msgspec
import numpy as np
import pandas as pd
from rtopt.apps.views.view import DEFAULT_BUCKET_S, MAX_POINTS, View, merge_factor
from rtopt.handlers.detection import FeedbackFlagged, RateLimitExceeded
from rtopt.handlers.experiments import (
    CanaryRolledBack,
    ExperimentConcluded,
    ExperimentPaused,
    SampleRatioMismatch,
    WinnerPromoted,
)

from rtopt import Envelope, Event, Feedback, FeedbackRejected, HandlerFailed, handles


class EventRate(View[Counter[int]]):
    """Events per second of event time, in buckets of ``bucket_s`` seconds.

    >>> rate = EventRate(bucket_s=10.0)
    >>> events = [Envelope(1, "id", "Feedback", "p", t, 0.0, None, None, 1, None) for t in (0.0, 1.0, 12.0)]
    >>> rate.frame(rate.fold(rate.initial_state(), events))[["time", "events", "rate"]].values.tolist()
    [[0.0, 2.0, 0.2], [10.0, 1.0, 0.1]]
    """

    title = "Event rate"

    def initial_state(self) -> Counter[int]:
        return Counter()

    @handles(Event)
    def count(self, counts: Counter[int], envelope: Envelope[Any]) -> Counter[int]:
        counts[self.bucket(envelope.time)] += 1
        return counts

    def frame(self, counts: Counter[int], max_points: int = MAX_POINTS) -> pd.DataFrame:
        """Columns ``time`` (bucket start), ``events`` and ``rate`` (per second), over at most ``max_points``
        points; empty buckets between the first and the last count as zero."""
        if not counts:
            return pd.DataFrame({"time": [], "events": [], "rate": []})
        first, last = min(counts), max(counts)
        factor = merge_factor(last - first + 1, max_points)
        merged: Counter[int] = Counter()
        for index, count in counts.items():
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


class FeedbackWindows:
    """Feedback per variant and event-time bucket, with the rows of the windows already computed."""

    def __init__(self) -> None:
        self.buckets: dict[str, dict[int, _FeedbackBucket]] = defaultdict(dict)
        self.first: int | None = None
        self.last: int | None = None
        self.changed: set[tuple[str, int]] = set()
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.factor = 0


class FeedbackMetrics(View[FeedbackWindows]):
    """Feedback per variant over event-time windows: count, mean quality, latency p50 and p95, error rate
    (the share without success) and mean cost. A window's row is computed again only when it changed.

    >>> metrics = FeedbackMetrics(bucket_s=60.0)
    >>> feedback = [
    ...     Feedback(prompt_id="p", variant_id="v1", response_time_ms=ms, success=ok, quality_score=0.5)
    ...     for ok, ms in ((True, 100.0), (False, 300.0), (True, 200.0))
    ... ]
    >>> windows = metrics.fold(metrics.initial_state(), [
    ...     Envelope(1, "id", "Feedback", "p", t, 0.0, None, None, 1, fb) for t, fb in zip((5.0, 30.0, 70.0), feedback)
    ... ])
    >>> metrics.frame(windows)[["time", "variant", "count", "error_rate", "latency_p50"]].values.tolist()
    [[0.0, 'v1', 2, 0.5, 200.0], [60.0, 'v1', 1, 0.0, 200.0]]
    """

    title = "Feedback metrics per variant"
    METRICS: ClassVar[tuple[str, ...]] = ("quality", "latency_p50", "latency_p95", "error_rate", "cost")

    def initial_state(self) -> FeedbackWindows:
        return FeedbackWindows()

    @handles(Feedback)
    def feedback(self, windows: FeedbackWindows, envelope: Envelope[Any]) -> FeedbackWindows:
        feedback: Feedback = envelope.payload
        by_time = windows.buckets[feedback.variant_id]
        index = self.bucket(envelope.time)
        bucket = by_time.get(index)
        if bucket is None:
            bucket = by_time[index] = _FeedbackBucket()
            windows.first = index if windows.first is None else min(windows.first, index)
            windows.last = index if windows.last is None else max(windows.last, index)
        bucket.n += 1
        bucket.errors += not feedback.success
        bucket.quality += feedback.quality_score
        bucket.cost += feedback.cost_usd
        bucket.latencies.append(feedback.response_time_ms)
        windows.changed.add((feedback.variant_id, index))
        return windows

    def frame(self, windows: FeedbackWindows, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per (window, variant) with ``count`` and the metrics, over at most ``max_points`` windows."""
        columns = ["time", "variant", "count", *self.METRICS]
        if windows.first is None or windows.last is None:
            return pd.DataFrame([], columns=columns)
        factor = merge_factor(windows.last - windows.first + 1, max_points)
        if factor != windows.factor:
            windows.factor, windows.rows = factor, {}
            windows.changed = {(variant, index) for variant, by_time in windows.buckets.items() for index in by_time}
        for variant, start in {(variant, index // factor * factor) for variant, index in windows.changed}:
            merged = _FeedbackBucket()
            for i in range(start, start + factor):
                if i in windows.buckets[variant]:
                    merged.merge(windows.buckets[variant][i])
            p50, p95 = np.percentile(merged.latencies, [50, 95])
            windows.rows[variant, start] = {
                "time": start * self.bucket_s,
                "variant": variant,
                "count": merged.n,
                "quality": merged.quality / merged.n,
                "latency_p50": float(p50),
                "latency_p95": float(p95),
                "error_rate": merged.errors / merged.n,
                "cost": merged.cost / merged.n,
            }
        windows.changed = set()
        return pd.DataFrame([windows.rows[key] for key in sorted(windows.rows)], columns=columns)


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


class AlertFeed(View[deque[dict[str, Any]]]):
    """The newest ``limit`` events that call for attention (failures, rejected or flagged feedback, rate limits,
    pauses, sample-ratio mismatches, rollbacks, conclusions), newest first.

    >>> feed = AlertFeed(limit=1)
    >>> rejected = [
    ...     Envelope(seq, "id", "FeedbackRejected", "g", 0.0, 0.0, None, None, 1, FeedbackRejected(reason=reason))
    ...     for seq, reason in ((1, "unknown decision"), (2, "expired"))
    ... ]
    >>> feed.frame(feed.fold(feed.initial_state(), rejected))[["seq", "what"]].values.tolist()
    [[2, 'expired']]
    """

    title = "Alerts and actions"

    def __init__(self, bucket_s: float = DEFAULT_BUCKET_S, limit: int = 200) -> None:
        super().__init__(bucket_s)
        self.limit = limit

    def initial_state(self) -> deque[dict[str, Any]]:
        return deque(maxlen=self.limit)

    @handles(
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
    def alert(self, entries: deque[dict[str, Any]], envelope: Envelope[Any]) -> deque[dict[str, Any]]:
        entries.append(
            {
                "seq": envelope.seq,
                "time": envelope.time,
                "type": envelope.type,
                "key": envelope.stream,
                "what": describe(envelope.payload),
            }
        )
        return entries

    def frame(self, entries: deque[dict[str, Any]]) -> pd.DataFrame:
        """The entries, newest first: ``seq``, ``time``, ``type``, ``key`` (the stream) and ``what``."""
        return pd.DataFrame(list(reversed(entries)), columns=["seq", "time", "type", "key", "what"])

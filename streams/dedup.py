"""Deduplication by event id, or by a caller-given key, within a horizon of event time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from rtopt import Envelope


class SeenKeys(msgspec.Struct):
    """Keys seen in the last ``horizon`` seconds of event time, oldest first from ``start``."""

    times: dict[str, float] = {}
    order: list[tuple[float, str]] = []
    start: int = 0
    duplicates: int = 0


class Deduplicator:
    """Lets the first envelope of each id (or ``key``) through and counts the repeats within ``horizon``.

    >>> from rtopt.events import Envelope, ExperimentDefined
    >>> dedup = Deduplicator(horizon=60.0)
    >>> payload = ExperimentDefined(experiment="g", arms=["a"], policy="thompson")
    >>> def at(event_id, t):
    ...     return Envelope(seq=0, id=event_id, type="ExperimentDefined", stream="g", time=t, recorded_at=0.0,
    ...                     causation_id=None, correlation_id=None, schema_version=1, payload=payload)
    >>> [dedup.first(at("a", 0.0)), dedup.first(at("a", 30.0)), dedup.first(at("a", 100.0))]
    [True, False, True]
    >>> dedup.state.duplicates
    1
    """

    def __init__(self, horizon: float, key: Callable[[Envelope[Any]], str] | None = None) -> None:
        if horizon <= 0:
            raise ValueError(f"horizon must be positive, not {horizon!r}")
        self.horizon = horizon
        self.key = key
        self.state = SeenKeys()

    def first(self, envelope: Envelope[Any]) -> bool:
        """True the first time a key is seen within the horizon; False (and counted) for a repeat."""
        state, now = self.state, envelope.time
        self._expire(now)
        key = envelope.id if self.key is None else self.key(envelope)
        if key in state.times:
            state.duplicates += 1
            return False
        state.times[key] = now
        state.order.append((now, key))
        return True

    def _expire(self, now: float) -> None:
        state, cutoff = self.state, now - self.horizon
        order, start = state.order, state.start
        while start < len(order) and order[start][0] <= cutoff:
            seen_at, key = order[start]
            if state.times.get(key) == seen_at:
                del state.times[key]
            start += 1
        if start > 1024 and 2 * start > len(order):
            del order[:start]
            start = 0
        state.start = start

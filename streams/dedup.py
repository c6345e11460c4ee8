"""Deduplication by event id, or by a caller-given key, within a horizon of event time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from rtopt.streams.horizon import Horizon

from rtopt import Envelope
from rtopt.arguments import positive


class SeenKeys(msgspec.Struct):
    """Keys seen in the last ``horizon`` seconds of event time, and the repeats counted."""

    times: dict[str, float] = {}
    order: Horizon = msgspec.field(default_factory=Horizon)
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
        positive("horizon", horizon)
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
        state.order.add(now, key)
        return True

    def _expire(self, now: float) -> None:
        times = self.state.times
        for seen_at, key in self.state.order.expire(now - self.horizon):
            if times.get(key) == seen_at:
                del times[key]

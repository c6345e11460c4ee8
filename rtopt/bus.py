"""The in-process event bus: committed envelopes fanned out to Rx observers in seq order."""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from typing import Any

import reactivex
from reactivex.abc import ObserverBase, SchedulerBase
from reactivex.disposable import Disposable

from rtopt.events import Envelope

logger = logging.getLogger(__name__)


class _Tap:
    __slots__ = ("failures", "observer", "stream", "types")

    def __init__(self, observer: ObserverBase[Envelope[Any]], types: frozenset[str] | None, stream: str | None):
        self.observer = observer
        self.types = types
        self.stream = stream
        self.failures = 0


class Bus:
    """Hot observables over the committed events; a failing observer is counted, never fatal.

    >>> from rtopt.events import Envelope, ExperimentDefined
    >>> bus, seen = Bus(), []
    >>> sub = bus.observe(types=None, stream="g").subscribe(lambda env: seen.append(env.seq))
    >>> payload = ExperimentDefined(experiment="g", arms=["a"], policy="thompson")
    >>> bus.emit([Envelope(seq=1, id="x", type="ExperimentDefined", stream="g", time=0.0, recorded_at=0.0,
    ...                    causation_id=None, correlation_id=None, schema_version=1, payload=payload)])
    >>> seen
    [1]
    """

    def __init__(self) -> None:
        self._taps: tuple[_Tap, ...] = ()
        self._lock = threading.Lock()
        self.observer_errors = 0

    def observe(self, types: Collection[str] | None, stream: str | None) -> reactivex.Observable[Envelope[Any]]:
        """Events committed from now on, optionally only those of ``types`` (tags) in ``stream``."""
        wanted = frozenset(types) if types is not None else None

        def subscribe(observer: ObserverBase[Envelope[Any]], scheduler: SchedulerBase | None = None) -> Disposable:
            tap = _Tap(observer, wanted, stream)
            with self._lock:
                self._taps = (*self._taps, tap)

            def dispose() -> None:
                with self._lock:
                    self._taps = tuple(t for t in self._taps if t is not tap)

            return Disposable(dispose)

        return reactivex.create(subscribe)

    def emit(self, envelopes: Sequence[Envelope[Any]]) -> None:
        """Deliver ``envelopes`` (in seq order) to every matching observer."""
        for tap in self._taps:
            types, stream, on_next = tap.types, tap.stream, tap.observer.on_next
            for envelope in envelopes:
                if (types is None or envelope.type in types) and (stream is None or envelope.stream == stream):
                    try:
                        on_next(envelope)
                    except Exception:
                        self.observer_errors += 1
                        tap.failures += 1
                        if tap.failures == 1:
                            logger.exception("an event observer raised; it keeps receiving events")

    def complete(self) -> None:
        """Tell every observer the stream has ended."""
        with self._lock:
            taps, self._taps = self._taps, ()
        for tap in taps:
            tap.observer.on_completed()

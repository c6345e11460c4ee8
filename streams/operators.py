"""Rx operators over observables of envelopes, for live engines (``engine.observe()``) and replayed logs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reactivex
from reactivex import Observable
from reactivex.abc import ObserverBase, SchedulerBase
from rtopt.streams.dedup import Deduplicator
from rtopt.streams.windows import WindowPipeline

from rtopt import Envelope, Event


def windowed(pipeline: WindowPipeline) -> Callable[[Observable[Envelope[Any]]], Observable[Event]]:
    """Window results of ``pipeline`` over a stream of envelopes; the rest is flushed on completion.

    >>> import reactivex
    >>> from rtopt import Engine, Feedback
    >>> from rtopt.streams import Aggregates, Counting, WindowPipeline
    >>> with Engine.open(":memory:", seed=1, handlers=[]) as engine:
    ...     for ms in (100.0, 200.0, 300.0):
    ...         _ = engine.publish(Feedback(prompt_id="g", variant_id="v1", response_time_ms=ms, success=True,
    ...                                     quality_score=0.9), time=ms)
    ...     pipeline = WindowPipeline("pairs", Counting(2), Aggregates({"response_time_ms": ("mean",)}))
    ...     results = []
    ...     _ = reactivex.from_iterable(engine.read()).pipe(windowed(pipeline)).subscribe(results.append)
    >>> [(w.count, w.values["response_time_ms.mean"]) for w in results]
    [(2, 150.0), (1, 300.0)]
    """
    tags = frozenset(t.tag() for t in pipeline.types)

    def operator(source: Observable[Envelope[Any]]) -> Observable[Event]:
        def subscribe(observer: ObserverBase[Event], scheduler: SchedulerBase | None = None) -> Any:
            state = pipeline.initial_state()

            def on_next(envelope: Envelope[Any]) -> None:
                if envelope.type in tags:
                    for result in pipeline.step(state, envelope):
                        observer.on_next(result)

            def on_completed() -> None:
                for result in pipeline.flush(state):
                    observer.on_next(result)
                observer.on_completed()

            return source.subscribe(on_next, observer.on_error, on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return operator


def deduplicated(
    horizon: float, key: Callable[[Envelope[Any]], str] | None = None
) -> Callable[[Observable[Envelope[Any]]], Observable[Envelope[Any]]]:
    """Drop envelopes whose id (or ``key``) was seen within ``horizon`` seconds of event time before."""

    def operator(source: Observable[Envelope[Any]]) -> Observable[Envelope[Any]]:
        def subscribe(observer: ObserverBase[Envelope[Any]], scheduler: SchedulerBase | None = None) -> Any:
            seen = Deduplicator(horizon, key)

            def on_next(envelope: Envelope[Any]) -> None:
                if seen.first(envelope):
                    observer.on_next(envelope)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return reactivex.create(subscribe)

    return operator

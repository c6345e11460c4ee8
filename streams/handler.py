"""Window pipelines registered with an engine: their results become events in the log."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtopt.streams.windows import PipelineState, WindowPipeline

from rtopt import Context, Envelope, Event, Handler, handles


class WindowHandler(Handler[PipelineState]):
    """Runs a :class:`~rtopt.streams.windows.WindowPipeline` inside an engine, under the pipeline's name.

    Each window result is appended as a WindowClosed / WindowUpdated event caused by the event that moved
    the watermark past it; replaying the log re-derives the same windows.

    >>> from rtopt import Engine, Feedback
    >>> from rtopt.streams import Aggregates, Tumbling, WindowPipeline
    >>> pipeline = WindowPipeline("latency_1min", Tumbling(60.0), Aggregates({"response_time_ms": ("p50",)}))
    >>> with Engine.open(":memory:", seed=1, handlers=[WindowHandler(pipeline)]) as engine:
    ...     for t, ms in ((5.0, 100.0), (30.0, 300.0), (61.0, 80.0)):
    ...         _ = engine.publish(Feedback(prompt_id="g", variant_id="v1", response_time_ms=ms, success=True,
    ...                                     quality_score=0.9), time=t)
    ...     [(w.payload.end, w.payload.values) for w in engine.read(types=["WindowClosed"])]
    [(60.0, {'response_time_ms.p50': 200.0})]
    """

    state_type = PipelineState
    version = 2  # 2: a window field's moments encoded under ``moments``
    accepts: tuple[type[Event], ...]  # the pipeline's types

    def __init__(self, pipeline: WindowPipeline) -> None:
        self.pipeline = pipeline
        self.name = pipeline.name
        self.accepts = pipeline.types

    def config(self) -> dict[str, Any]:
        return self.pipeline.config()

    def initial_state(self) -> PipelineState:
        return self.pipeline.initial_state()

    @handles(Event)
    def _step(
        self, state: PipelineState, envelope: Envelope[Any], ctx: Context
    ) -> tuple[PipelineState, Sequence[Event]]:
        return state, self.pipeline.step(state, envelope)

"""An HTTP service that chooses which prompt variant to serve and learns from feedback, through rtopt.

Every worker process opens the same log, so run it with as many workers as the host has cores:

    RTOPT_LOG=event_log/service.sqlite uvicorn service:app --app-dir examples --workers 4

``POST /decide`` takes {"experiment", "context"?, "unit"?} and answers {"decision_id", "arm", "propensity"};
``POST /feedback`` takes {"decision_id", "success", "quality_score", "response_time_ms"} and answers {"seq"}.
Input the engine refuses is answered with status 422 naming the field. Each answer names the process that
gave it in its ``X-Worker-Pid`` header.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rtopt import Engine, InvalidEvent

LOG = os.environ.get("RTOPT_LOG", "event_log/service.sqlite")


class DecideRequest(BaseModel):
    experiment: str
    context: dict[str, float] | None = None
    unit: str | None = None


class FeedbackRequest(BaseModel):
    decision_id: str
    success: bool
    quality_score: float
    response_time_ms: float


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    with Engine.open(LOG) as engine:  # each worker process opens the same log, and closes it at shutdown
        # the same definition in every worker: the first records it, the others get the recorded one back
        engine.define_experiment("greeting", arms=["v1", "v2", "v3"], policy="thompson")
        app.state.engine = engine
        yield


app = FastAPI(lifespan=lifespan)


# plain functions, not coroutines: the engine's calls return once committed, so FastAPI runs them in its
# thread pool, where they do not hold up the event loop
@app.post("/decide")
def decide(request: DecideRequest) -> dict[str, str | float]:
    decision = app.state.engine.decide(request.experiment, request.context, unit=request.unit)
    return {"decision_id": decision.id, "arm": decision.arm, "propensity": decision.propensity}


@app.post("/feedback")
def feedback(request: FeedbackRequest) -> dict[str, int]:
    recorded = app.state.engine.feedback(
        request.decision_id,
        success=request.success,
        quality_score=request.quality_score,
        response_time_ms=request.response_time_ms,
    )
    return {"seq": recorded.seq}


@app.exception_handler(InvalidEvent)
async def refused(request: Request, error: InvalidEvent) -> JSONResponse:
    return JSONResponse({"field": error.field, "detail": str(error)}, status_code=422)


@app.middleware("http")
async def name_the_process(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    response = await call_next(request)
    response.headers["X-Worker-Pid"] = str(os.getpid())
    return response

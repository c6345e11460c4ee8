"""Events that stream pipelines derive: window results and their late revisions."""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from rtopt.events import Count, Event, Name


class WindowClosed(Event, frozen=True):
    """The result of one window of one key, emitted when the watermark passed the window's end.

    ``values`` maps ``"<field>.<aggregate>"`` (e.g. ``"response_time_ms.p95"``) to its value over the
    window ``[start, end)`` of event time; ``count`` is the number of events in it.
    """

    pipeline: Name
    key: str
    start: float
    end: float
    count: Annotated[int, Meta(ge=1)]
    values: dict[str, float]


class WindowUpdated(WindowClosed, frozen=True):
    """A closed window's result revised by events that arrived late, within the allowed lateness.

    ``revision`` counts the updates of this window (1 for the first); ``late`` is how many late events
    the window has taken in so far.
    """

    revision: Annotated[int, Meta(ge=1)]
    late: Count

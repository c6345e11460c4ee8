"""Keyed windows over event time, with watermarks and a declared policy for late events.

A :class:`WindowPipeline` is a fold ``(state, envelope) -> window results``: the same code runs inside an
engine (:class:`rtopt.streams.handler.WindowHandler`), as an Rx operator (:func:`rtopt.streams.operators.windowed`)
and over a replayed log. It reads event time only, never the wall clock.

Watermark: the largest event time seen minus ``out_of_orderness``. A time window ``[start, end)`` closes,
emitting :class:`~rtopt.streams.events.WindowClosed`, when the watermark reaches ``end``; a session closes when
the watermark reaches its last event time plus the gap. An event whose window has already closed is
late: with ``late="drop"`` it is dropped and counted; with ``late="update"`` the window is reopened and
re-emitted as :class:`~rtopt.streams.events.WindowUpdated`, for up to ``allowed_lateness`` seconds of watermark
after the window's end (later than that it is dropped and counted). At the end of a finite stream,
:meth:`WindowPipeline.flush` closes every window still open.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import msgspec
from rtopt.streams.aggregates import Aggregates, Summary
from rtopt.streams.events import WindowClosed, WindowUpdated

from rtopt import Envelope, Event, Feedback
from rtopt.arguments import invalid, non_negative, one_of


class Tumbling(msgspec.Struct, frozen=True):
    """Back-to-back windows of ``size`` seconds: ``[k * size, (k + 1) * size)``."""

    size: float


class Sliding(msgspec.Struct, frozen=True):
    """Windows of ``size`` seconds ending every ``step`` seconds (``size`` a multiple of ``step``).

    They are assembled from panes of ``step`` seconds, so each event is aggregated once.
    """

    size: float
    step: float


class Session(msgspec.Struct, frozen=True):
    """Per-key bursts of activity: a session ends after ``gap`` seconds without an event."""

    gap: float


class Counting(msgspec.Struct, frozen=True):
    """Windows of ``size`` consecutive events of a key, in the order they arrive."""

    size: int


Window = Tumbling | Sliding | Session | Counting
KeySource = str | tuple[str, ...] | Callable[[Envelope[Any]], str]


class SessionState(msgspec.Struct):
    start: float
    last: float
    summary: Summary
    revision: int = 0
    late: int = 0


class ClosedWindow(msgspec.Struct, array_like=True):
    """A time window already emitted, kept for late updates: its end (in panes) and its revisions."""

    end: int
    revision: int = 0
    late: int = 0


class KeyState(msgspec.Struct):
    """One key's open panes and windows."""

    panes: dict[int, Summary] = {}
    open_ends: list[int] = []
    closed: list[ClosedWindow] = []
    sessions: list[SessionState] = []
    closed_sessions: list[SessionState] = []
    counted: Summary | None = None
    first_time: float = 0.0
    counted_last: float = 0.0


class PipelineState(msgspec.Struct):
    """The whole state of a window pipeline; encodable for snapshots.

    ``dropped`` counts late events left out of at least one of their windows; ``updated`` counts the
    WindowUpdated results emitted.
    """

    max_time: float = -math.inf
    keys: dict[str, KeyState] = {}
    due: list[tuple[float, str]] = []
    dropped: int = 0
    updated: int = 0

    def watermark(self, out_of_orderness: float) -> float:
        return self.max_time - out_of_orderness


class WindowPipeline:
    """Keyed windows of one kind over events of ``types``, with ``aggregates`` per window.

    ``key`` is ``"stream"`` (the envelope's stream), a payload field name, a tuple of field names (joined
    with ``/``) or a function of the envelope.

    >>> from rtopt import Feedback
    >>> from rtopt.events import Envelope
    >>> pipeline = WindowPipeline("latency", Tumbling(60.0), Aggregates({"response_time_ms": ("mean",)}))
    >>> state = pipeline.initial_state()
    >>> def feedback(t, ms):
    ...     payload = Feedback(prompt_id="g", variant_id="v", response_time_ms=ms, success=True, quality_score=1.0)
    ...     return Envelope(seq=0, id=str(t), type="Feedback", stream="g", time=t, recorded_at=0.0,
    ...                     causation_id=None, correlation_id=None, schema_version=1, payload=payload)
    >>> pipeline.step(state, feedback(10.0, 100.0)), pipeline.step(state, feedback(50.0, 300.0))
    ([], [])
    >>> [(w.start, w.end, w.values) for w in pipeline.step(state, feedback(61.0, 50.0))]
    [(0.0, 60.0, {'response_time_ms.mean': 200.0})]
    """

    def __init__(
        self,
        name: str,
        window: Window,
        aggregates: Aggregates,
        *,
        key: KeySource = "stream",
        types: Sequence[type[Event]] = (Feedback,),
        out_of_orderness: float = 0.0,
        late: Literal["drop", "update"] = "drop",
        allowed_lateness: float = 0.0,
    ) -> None:
        if isinstance(window, Sliding) and not _is_multiple(window.size, window.step):
            raise invalid("window.size", window.size, f"must be a multiple of the window's step ({window.step})")
        if isinstance(window, Tumbling | Sliding) and window.size <= 0:
            raise invalid("window.size", window.size, "must be positive")
        if isinstance(window, Session) and window.gap <= 0:
            raise invalid("window.gap", window.gap, "must be positive")
        if isinstance(window, Counting) and window.size < 1:
            raise invalid("window.size", window.size, "a count window needs at least one event")
        one_of("late", late, ("drop", "update"))
        non_negative("out_of_orderness", out_of_orderness)
        non_negative("allowed_lateness", allowed_lateness)
        self.name = name
        self.window = window
        self.aggregates = aggregates
        self.types = tuple(types)
        self.out_of_orderness = out_of_orderness
        self.late = late
        self.allowed_lateness = allowed_lateness if late == "update" else 0.0
        self._key = _key_function(key)
        self._key_description = key if not callable(key) else f"{key.__module__}.{key.__qualname__}"
        self._counting = isinstance(window, Counting)
        self._add = self._add_to_session if isinstance(window, Session) else self._add_to_panes
        if isinstance(window, Tumbling | Sliding):
            self._pane = window.size if isinstance(window, Tumbling) else window.step
            self._panes_per_window = round(window.size / self._pane)

    def config(self) -> dict[str, Any]:
        """Everything that changes what the pipeline emits."""
        return {
            "name": self.name,
            "window": {"kind": type(self.window).__name__, **msgspec.to_builtins(self.window)},
            "aggregates": self.aggregates.config(),
            "key": str(self._key_description),
            "types": [t.tag() for t in self.types],
            "out_of_orderness": self.out_of_orderness,
            "late": self.late,
            "allowed_lateness": self.allowed_lateness,
        }

    def initial_state(self) -> PipelineState:
        return PipelineState()

    # --- the fold --------------------------------------------------------------------------------

    def step(self, state: PipelineState, envelope: Envelope[Any]) -> list[Event]:
        """Fold one event; returns the windows it closed or revised."""
        key = self._key(envelope)
        keyed = state.keys.get(key)
        if keyed is None:
            keyed = state.keys[key] = KeyState()
        if self._counting:
            return self._count(keyed, key, envelope)
        out: list[Event] = []
        self._add(state, keyed, key, envelope, out)
        if envelope.time > state.max_time:
            state.max_time = envelope.time
            due = state.due
            if due and due[0][0] <= envelope.time - self.out_of_orderness:
                self._close_due(state, out)
        return out

    def flush(self, state: PipelineState) -> list[Event]:
        """Close every window still open (the end of a finite stream), in order of end time and key."""
        out: list[Event] = []
        self._close_due(state, out, until=math.inf)
        for key in sorted(state.keys):
            keyed = state.keys[key]
            if keyed.counted is not None:
                out.append(self._result(key, keyed.first_time, keyed.counted_last, keyed.counted))
                keyed.counted = None
        return out

    # --- time windows ----------------------------------------------------------------------------

    def _add_to_panes(
        self, state: PipelineState, keyed: KeyState, key: str, envelope: Envelope[Any], out: list[Event]
    ) -> None:
        pane_seconds = self._pane
        pane = math.floor(envelope.time / pane_seconds)
        watermark = state.max_time - self.out_of_orderness
        if (pane + 1) * pane_seconds <= watermark:  # the pane's first window has closed: the event is late
            self._add_late(state, keyed, key, pane, envelope, watermark, out)
            return
        summary = keyed.panes.get(pane)
        if summary is None:
            summary = keyed.panes[pane] = self.aggregates.empty()
            self._schedule(state, keyed, key, range(pane + 1, pane + self._panes_per_window + 1))
        self.aggregates.add(summary, envelope.payload)

    def _schedule(self, state: PipelineState, keyed: KeyState, key: str, ends: Iterable[int]) -> None:
        """Make sure the windows ending at ``ends`` (in panes) will close."""
        for end in ends:
            index = bisect.bisect_left(keyed.open_ends, end)
            if index == len(keyed.open_ends) or keyed.open_ends[index] != end:
                keyed.open_ends.insert(index, end)
                heapq.heappush(state.due, (end * self._pane, key))

    def _add_late(
        self,
        state: PipelineState,
        keyed: KeyState,
        key: str,
        pane: int,
        envelope: Envelope[Any],
        watermark: float,
        out: list[Event],
    ) -> None:
        """An event some of whose windows have closed: drop it from those, or revise them."""
        pane_seconds, width = self._pane, self._panes_per_window
        ends = range(pane + 1, pane + width + 1)
        closed = [end for end in ends if end * pane_seconds <= watermark]
        revisable = [
            end for end in closed if self.late == "update" and end * pane_seconds + self.allowed_lateness > watermark
        ]
        if len(revisable) < len(closed):
            state.dropped += 1
            if len(closed) == width and not revisable:
                return
        summary = keyed.panes.get(pane)
        if summary is None:
            summary = keyed.panes[pane] = self.aggregates.empty()
        self.aggregates.add(summary, envelope.payload)
        self._schedule(state, keyed, key, ends[len(closed) :])
        if not revisable:
            return
        records = {record.end: record for record in keyed.closed}
        for end in revisable:
            record = records.get(end)
            if record is None:  # a window that never had data, opened by a late event: it closes revised
                record = ClosedWindow(end=end)
                keyed.closed.append(record)
            record.revision += 1
            record.late += 1
            state.updated += 1
            out.append(self._updated(key, end, keyed, record))

    def _window_summary(self, keyed: KeyState, end: int) -> Summary:
        panes = [keyed.panes[p] for p in range(end - self._panes_per_window, end) if p in keyed.panes]
        return panes[0] if len(panes) == 1 else self.aggregates.combine(panes)

    def _close_time_windows(
        self, state: PipelineState, keyed: KeyState, key: str, until: float, out: list[Event]
    ) -> None:
        pane_seconds, width = self._pane, self._panes_per_window
        while keyed.open_ends and keyed.open_ends[0] * pane_seconds <= until:
            end = keyed.open_ends.pop(0)
            summary = self._window_summary(keyed, end)
            out.append(self._result(key, (end - width) * pane_seconds, end * pane_seconds, summary))
            if self.late == "update":
                keyed.closed.append(ClosedWindow(end=end))
        if keyed.closed:
            watermark = state.watermark(self.out_of_orderness)
            keyed.closed = [r for r in keyed.closed if r.end * pane_seconds + self.allowed_lateness > watermark]
        first_end = min([keyed.open_ends[0] if keyed.open_ends else math.inf, *(r.end for r in keyed.closed)])
        for pane in [p for p in keyed.panes if p < first_end - width]:
            del keyed.panes[pane]

    def _updated(self, key: str, end: int, keyed: KeyState, record: ClosedWindow) -> Event:
        pane_seconds = self._pane
        start, stop = (end - self._panes_per_window) * pane_seconds, end * pane_seconds
        return self._result(key, start, stop, self._window_summary(keyed, end), record.revision, record.late)

    # --- sessions --------------------------------------------------------------------------------

    def _add_to_session(
        self, state: PipelineState, keyed: KeyState, key: str, envelope: Envelope[Any], out: list[Event]
    ) -> None:
        gap, t = self.window.gap, envelope.time
        watermark = state.watermark(self.out_of_orderness)
        if t + gap <= watermark:  # its session would already have closed
            for session in keyed.closed_sessions:
                if (
                    session.start - gap <= t < session.last + gap
                    and session.last + gap + self.allowed_lateness > watermark
                ):
                    self.aggregates.add(session.summary, envelope.payload)
                    session.start, session.last = min(session.start, t), max(session.last, t)
                    session.revision += 1
                    session.late += 1
                    state.updated += 1
                    out.append(self._session_event(key, session))
                    return
            state.dropped += 1
            return
        merged = SessionState(start=t, last=t, summary=self.aggregates.empty())
        self.aggregates.add(merged.summary, envelope.payload)
        kept = []
        for session in keyed.sessions:
            if session.start - gap <= t < session.last + gap:
                self.aggregates.merge(merged.summary, session.summary)
                merged.start, merged.last = min(merged.start, session.start), max(merged.last, session.last)
            else:
                kept.append(session)
        bisect.insort(kept, merged, key=lambda s: s.start)
        keyed.sessions = kept
        heapq.heappush(state.due, (merged.last + gap, key))

    def _close_sessions(self, state: PipelineState, keyed: KeyState, key: str, until: float, out: list[Event]) -> None:
        gap = self.window.gap
        still_open = []
        for session in keyed.sessions:
            if session.last + gap <= until:
                out.append(self._session_event(key, session))
                if self.late == "update":
                    keyed.closed_sessions.append(session)
            else:
                still_open.append(session)
        keyed.sessions = still_open
        watermark = state.watermark(self.out_of_orderness)
        keyed.closed_sessions = [s for s in keyed.closed_sessions if s.last + gap + self.allowed_lateness > watermark]

    def _session_event(self, key: str, session: SessionState) -> Event:
        end = session.last + self.window.gap
        return self._result(key, session.start, end, session.summary, session.revision, session.late)

    # --- closing ---------------------------------------------------------------------------------

    def _close_due(self, state: PipelineState, out: list[Event], until: float | None = None) -> None:
        limit = state.watermark(self.out_of_orderness) if until is None else until
        due = state.due
        while due and due[0][0] <= limit:
            _, key = heapq.heappop(due)
            keyed = state.keys[key]
            if isinstance(self.window, Session):
                self._close_sessions(state, keyed, key, limit, out)
            else:
                self._close_time_windows(state, keyed, key, limit, out)

    # --- count windows ---------------------------------------------------------------------------

    def _count(self, keyed: KeyState, key: str, envelope: Envelope[Any]) -> list[Event]:
        if keyed.counted is None:
            keyed.counted = self.aggregates.empty()
            keyed.first_time = envelope.time
        self.aggregates.add(keyed.counted, envelope.payload)
        keyed.counted_last = envelope.time
        if keyed.counted.count < self.window.size:
            return []
        summary, keyed.counted = keyed.counted, None
        return [self._result(key, keyed.first_time, envelope.time, summary)]

    def _result(self, key: str, start: float, end: float, summary: Summary, revision: int = 0, late: int = 0) -> Event:
        """WindowClosed for a first result, WindowUpdated for a revision."""
        values = self.aggregates.results(summary, end - start)
        if revision == 0:
            return WindowClosed(pipeline=self.name, key=key, start=start, end=end, count=summary.count, values=values)
        return WindowUpdated(
            pipeline=self.name,
            key=key,
            start=start,
            end=end,
            count=summary.count,
            values=values,
            revision=revision,
            late=late,
        )


def _is_multiple(size: float, step: float) -> bool:
    if step <= 0:
        return False
    ratio = size / step
    return abs(ratio - round(ratio)) < 1e-9 and round(ratio) >= 1


def _key_function(key: KeySource) -> Callable[[Envelope[Any]], str]:
    if callable(key):
        return key
    if key == "stream":
        return lambda envelope: envelope.stream
    if isinstance(key, str):
        return lambda envelope: str(getattr(envelope.payload, key))
    fields = tuple(key)
    return lambda envelope: "/".join(str(getattr(envelope.payload, f)) for f in fields)

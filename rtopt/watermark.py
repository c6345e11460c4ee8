"""Event-time sanity: how far ahead of what a log has seen an input's event time may be."""

from __future__ import annotations

import math
import time as wall_clock
from collections.abc import Callable, Iterable

from rtopt.arguments import invalid, one_of
from rtopt.errors import InvalidEvent

FUTURE_TIME_RULES = ("reject", "clamp")


class TimeBound:
    """The latest event time of each stream (and of the whole log), and what becomes of an input whose event
    time runs more than ``max_ahead_s`` seconds ahead of its reference: the later of the wall clock and
    its stream's latest event time (the log's latest for a stream with no events yet). An empty log has no
    reference, so it bounds nothing; ``max_ahead_s=None`` bounds nothing either.

    ``future_time="reject"`` refuses such an input (InvalidEvent on ``time``); ``"clamp"`` records it at
    its stream's latest event time (the log's for a new stream), so a wrong clock cannot move the stream's
    time forward, and counts it in ``clamped``. Only inputs are bounded, when they are published: replay
    folds the time recorded.

    >>> bound = TimeBound(max_ahead_s=60.0, clock=lambda: 0.0)
    >>> bound.admit("greeting", 1.7e12)  # an empty log: nothing to compare with
    1700000000000.0
    >>> bound.advance([("greeting", 100.0)])
    >>> bound.admit("greeting", 150.0), bound.admit("other", 160.0)
    (150.0, 160.0)
    >>> bound.admit("greeting", 100_000.0)
    Traceback (most recent call last):
    ...
    rtopt.errors.InvalidEvent: time = 100000.0: more than 60 s ahead of ... of stream 'greeting' (100.0); ...
    >>> clamping = TimeBound(max_ahead_s=60.0, future_time="clamp", clock=lambda: 0.0)
    >>> clamping.advance([("greeting", 100.0)])
    >>> clamping.admit("greeting", 100_000.0), clamping.clamped
    (100.0, 1)
    """

    def __init__(
        self,
        max_ahead_s: float | None = 86_400.0,
        future_time: str = "reject",
        *,
        clock: Callable[[], float] = wall_clock.time,
    ) -> None:
        if max_ahead_s is not None and not (isinstance(max_ahead_s, int | float) and 0 < max_ahead_s < math.inf):
            raise invalid("max_time_ahead_s", max_ahead_s, "must be a positive, finite number of seconds or None")
        one_of("future_time", future_time, FUTURE_TIME_RULES)
        self.max_ahead_s = max_ahead_s
        self.future_time = future_time
        self.clamped = 0
        self._clock = clock
        self._streams: dict[str, float] = {}
        self._log: float | None = None

    def reset(self, latest: dict[str, float]) -> None:
        """Start again from each stream's latest event time in a log (nothing for an empty log)."""
        self._streams = dict(latest)
        self._log = max(latest.values(), default=None)

    def advance(self, committed: Iterable[tuple[str, float]]) -> None:
        """Take (stream, event time) pairs just committed into account."""
        streams = self._streams
        for stream, time in committed:
            if time > streams.get(stream, -math.inf):
                streams[stream] = time
                if self._log is None or time > self._log:
                    self._log = time

    def admit(self, stream: str, time: float) -> float:
        """The event time to record for an input on ``stream`` given at ``time``; raises InvalidEvent when it
        runs too far ahead and the rule is to reject."""
        latest = self._streams.get(stream, self._log)
        if self.max_ahead_s is None or latest is None or time <= max(latest, self._clock()) + self.max_ahead_s:
            return time
        if self.future_time == "clamp":
            self.clamped += 1
            return latest
        whose = f"stream {stream!r}" if stream in self._streams else "the log"
        raise InvalidEvent(
            f"time = {time!r}: more than {self.max_ahead_s:g} s ahead of both the wall clock and the latest event "
            f"time of {whose} ({latest!r}); milliseconds given as seconds?",
            field="time",
            value=time,
        )

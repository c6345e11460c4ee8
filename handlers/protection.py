"""Feedback protection: rate limits per user and per source, abuse signals and a reliability score per user.

A :class:`FeedbackGuard` judges each Feedback from what it has seen before (event time only): a user or a
source past its limit within the sliding window, a burst, the same payload again and again, only extreme
ratings, an implausibly fast response. The :class:`ProtectionHandler` records each verdict as an event
(``FeedbackFlagged``, ``RateLimitExceeded``) and leaves the feedback in the log; a learner given the same
guard (``BanditHandler(guard=...)``) folds the same feedback through it and does not learn from what it
flags, so the marks and what was learnt agree, live and in replay.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta
from rtopt.handlers.checked import Checked

from rtopt import Context, Envelope, Event, Feedback, Handler, handles
from rtopt.events import Count, Name, UnitInterval

Seconds = Annotated[float, Meta(gt=0.0)]
AtLeastTwo = Annotated[int, Meta(ge=2)]

RATE_USER, RATE_SOURCE, BURST, REPEATED, EXTREME, TIMING, UNRELIABLE = (
    "user_rate_limit",
    "source_rate_limit",
    "burst",
    "identical_payloads",
    "extreme_ratings_only",
    "implausible_timing",
    "unreliable_user",
)


class FeedbackFlagged(Event, frozen=True):
    """Feedback ``feedback_id`` looks abusive for ``reasons``; it stays in the log, and learners with the guard
    do not learn from it. ``reliability`` is its user's score after it (None without a user)."""

    feedback_id: str
    user: str | None
    source: Name
    reasons: list[str]
    reliability: UnitInterval | None = None
    stream_field: ClassVar[str] = "source"
    personal_fields: ClassVar[tuple[str, ...]] = ("user",)


class RateLimitExceeded(Event, frozen=True):
    """``who`` (a user or a source, by ``scope``) sent more than ``limit`` feedback within ``window_s`` seconds:
    recorded once each time the limit is first passed, on the source's stream, or for a user on the stream of
    the feedback that passed the limit (a user's id is personal: the log stores it sealed, never as a stream).

    >>> RateLimitExceeded(scope="user", who="u1", limit=2, window_s=60.0, count=3).personal()
    ('who',)
    >>> RateLimitExceeded(scope="source", who="web", limit=2, window_s=60.0, count=3).default_stream()
    'web'
    """

    scope: Name
    who: Annotated[str, Meta(min_length=1)]  # unbounded: sealed, a user's id grows
    limit: Count
    window_s: float
    count: Count
    personal_fields: ClassVar[tuple[str, ...]] = ("who",)

    def default_stream(self) -> str | None:
        return self.who if self.scope == "source" else None

    def personal(self) -> tuple[str, ...]:
        return self.personal_fields if self.scope == "user" else ()


class Sender(msgspec.Struct):
    """What the guard remembers of one user or source: the times of its feedback within the window (and, for a
    user, their payloads), its last ratings, and its clean and flagged counts."""

    times: list[float] = msgspec.field(default_factory=list)
    payloads: list[str] = msgspec.field(default_factory=list)
    ratings: list[float] = msgspec.field(default_factory=list)
    clean: int = 0
    flagged: int = 0
    limited: bool = False

    @property
    def reliability(self) -> float:
        """The share of clean feedback, with one clean and one flagged in advance (Laplace)."""
        return (self.clean + 1) / (self.clean + self.flagged + 2)

    def forget_before(self, cutoff: float) -> None:
        drop = bisect.bisect_left(self.times, cutoff)
        if drop:
            del self.times[:drop]
            if self.payloads:
                del self.payloads[:drop]


class FeedbackGuard(Checked):
    """Judges feedback. Limits: ``user_limit`` per user and ``source_limit`` per source within ``window_s``
    seconds. Signals: ``burst_count`` from one user within ``burst_s``; the same payload (variant, success,
    quality, satisfaction, error) from one user ``repeat_limit`` times within the window; a user's last
    ``extreme_run`` quality ratings all 0 or 1; a response time under ``min_response_ms``; a user whose
    reliability fell under ``min_reliability`` after at least ``extreme_run`` feedback. The user is
    ``user_id`` (else ``session_id``); the source is ``metadata["source"]`` (else the environment).

    >>> from rtopt import Feedback
    >>> guard = FeedbackGuard(burst_count=3, burst_s=1.0)
    >>> fb = Feedback(prompt_id="g", variant_id="v", response_time_ms=300.0, success=True, quality_score=0.8,
    ...               user_id="u1")
    >>> [guard.check(fb, t) for t in (0.0, 0.2, 0.4, 5.0)]
    [[], [], ['burst'], []]
    """

    window_s: Seconds = 60.0
    user_limit: AtLeastTwo = 30
    source_limit: AtLeastTwo = 1_000
    burst_s: Seconds = 1.0
    burst_count: AtLeastTwo = 5
    repeat_limit: AtLeastTwo = 5
    extreme_run: AtLeastTwo = 10
    min_response_ms: Annotated[float, Meta(ge=0.0)] = 1.0
    min_reliability: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.2
    users: dict[str, Sender] = msgspec.field(default_factory=dict)
    sources: dict[str, Sender] = msgspec.field(default_factory=dict)
    limits_passed: list[tuple[str, str, int]] = msgspec.field(default_factory=list)

    def copy(self) -> FeedbackGuard:
        """An independent copy: the same settings and what this guard has seen so far."""
        return msgspec.convert(msgspec.to_builtins(self), FeedbackGuard)

    def check(self, feedback: Feedback, time: float) -> list[str]:
        """The reasons to flag ``feedback`` arriving at ``time`` (empty: it is clean); remembers it either way.
        Limits first passed by it are left in ``limits_passed`` (scope, who, count) until the next check."""
        self.limits_passed = []
        reasons = []
        if feedback.response_time_ms < self.min_response_ms:
            reasons.append(TIMING)
        source_name = feedback.metadata.get("source", feedback.environment)
        source = self.sources.setdefault(source_name, Sender())
        if self._over_limit(source, time, self.source_limit, "source", source_name):
            reasons.append(RATE_SOURCE)
        user_name = feedback.user_id or feedback.session_id
        if user_name:
            user = self.users.setdefault(user_name, Sender())
            reasons += self._judge_user(user, user_name, feedback, time)
            if reasons:
                user.flagged += 1
            else:
                user.clean += 1
        return reasons

    def reliability(self, user: str | None) -> float | None:
        """The reliability score of ``user`` (None for an unknown user)."""
        sender = self.users.get(user) if user else None
        return None if sender is None else sender.reliability

    def _over_limit(self, sender: Sender, time: float, limit: int, scope: str, who: str) -> bool:
        sender.forget_before(time - self.window_s)
        sender.times.append(time)
        over = len(sender.times) > limit
        if over and not sender.limited:
            self.limits_passed.append((scope, who, len(sender.times)))
        sender.limited = over
        return over

    def _judge_user(self, user: Sender, name: str, feedback: Feedback, time: float) -> list[str]:
        reasons = []
        if self._over_limit(user, time, self.user_limit, "user", name):
            reasons.append(RATE_USER)
        recent = len(user.times) - bisect.bisect_left(user.times, time - self.burst_s)
        if recent >= self.burst_count:
            reasons.append(BURST)
        payload = msgspec.json.encode(
            [feedback.variant_id, feedback.success, feedback.quality_score, feedback.user_satisfaction, feedback.error]
        ).decode()
        user.payloads.append(payload)
        if user.payloads.count(payload) >= self.repeat_limit:
            reasons.append(REPEATED)
        user.ratings.append(feedback.quality_score)
        del user.ratings[: -self.extreme_run]
        if len(user.ratings) == self.extreme_run and all(r in (0.0, 1.0) for r in user.ratings):
            reasons.append(EXTREME)
        if user.clean + user.flagged >= self.extreme_run and user.reliability < self.min_reliability:
            reasons.append(UNRELIABLE)
        return reasons


class ProtectionHandler(Handler[FeedbackGuard]):
    """Runs a :class:`FeedbackGuard` over every Feedback and records its verdicts: ``FeedbackFlagged`` for
    flagged feedback, ``RateLimitExceeded`` when a user or a source first passes its limit.

    >>> from rtopt import Engine, Feedback
    >>> with Engine.open(":memory:", seed=1, handlers=[ProtectionHandler(FeedbackGuard(user_limit=2))]) as engine:
    ...     for t in (0.0, 10.0, 20.0):
    ...         _ = engine.publish(Feedback(prompt_id="g", variant_id="v", response_time_ms=200.0, success=True,
    ...                                     quality_score=0.7 + t / 100, user_id="u1"), time=t)
    ...     [(e.type, getattr(e.payload, "reasons", None)) for e in engine.read(start=4)]
    [('FeedbackFlagged', ['user_rate_limit']), ('RateLimitExceeded', None)]
    """

    name = "protection"
    state_type = FeedbackGuard
    version = 2  # a user's RateLimitExceeded goes on its feedback's stream, not on one named after the user

    def __init__(self, guard: FeedbackGuard | None = None) -> None:
        self.guard = guard if guard is not None else FeedbackGuard()

    def config(self) -> dict[str, Any]:
        return msgspec.to_builtins(self.guard)

    def initial_state(self) -> FeedbackGuard:
        return self.guard.copy()

    @handles(Feedback)
    def _judge(
        self, state: FeedbackGuard, envelope: Envelope[Feedback], ctx: Context
    ) -> tuple[FeedbackGuard, Sequence[Event]]:
        feedback = envelope.payload
        reasons = state.check(feedback, envelope.time)
        if not ctx.derives:
            return state, ()
        out: list[Event] = []
        if reasons:
            user = feedback.user_id or feedback.session_id
            out.append(
                FeedbackFlagged(
                    feedback_id=envelope.id,
                    user=user,
                    source=feedback.metadata.get("source", feedback.environment),
                    reasons=reasons,
                    reliability=state.reliability(user),
                )
            )
        limits = {"user": state.user_limit, "source": state.source_limit}
        out += [
            RateLimitExceeded(scope=scope, who=who, limit=limits[scope], window_s=state.window_s, count=count)
            for scope, who, count in state.limits_passed
        ]
        return state, out

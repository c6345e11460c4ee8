"""Decisions awaiting feedback: matched by decision id within a horizon of event time, once each, among a
bounded number of recent decisions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec
from rtopt.handlers.protection import FeedbackGuard
from rtopt.streams.horizon import Horizon

from rtopt import Event, Feedback, FeedbackRejected
from rtopt.arguments import positive, whole

DEFAULT_MAX_PENDING = 100_000


class AwaitingFeedback(msgspec.Struct, array_like=True):
    """What a ledger keeps of a decision until its feedback: its experiment, arm and event time."""

    experiment: str
    arm: str
    time: float


P = TypeVar("P", bound=AwaitingFeedback)

DUPLICATE = "duplicate feedback"
UNKNOWN = "unknown or expired decision"
MISMATCH = "feedback does not match its decision"
FLAGGED = "flagged by the feedback guard"


class DecisionLedger(msgspec.Struct, Generic[P]):
    """The decisions a handler made that still wait for feedback (``pending``), the ones answered
    (``settled``, with the answer's time, to recognise a second answer) and the rejections by reason.

    Decisions alone move the ledger's time: opening one forgets those more than the horizon older than it,
    then, beyond ``max_pending`` decisions remembered (waiting or answered), the oldest in decision order
    (``evicted`` counts those forgotten while still waiting). Feedback never forgets anyone else's
    decision: feedback more than the horizon after its own decision is rejected, whatever its time.

    >>> ledger = DecisionLedger[AwaitingFeedback]()
    >>> ledger.open("d1", AwaitingFeedback("greeting", "arm-a", time=0.0), horizon_s=60.0, max_pending=2)
    >>> ledger.claim("d1", now=5.0, horizon_s=60.0, matches=lambda d: d.arm == "arm-a").arm
    'arm-a'
    >>> ledger.settle("d1", now=5.0)
    >>> ledger.claim("d1", now=6.0, horizon_s=60.0, matches=lambda d: True), ledger.rejected
    (None, {'duplicate feedback': 1})
    >>> for i in range(2, 5):
    ...     ledger.open(f"d{i}", AwaitingFeedback("greeting", "arm-a", time=i), horizon_s=60.0, max_pending=2)
    >>> sorted(ledger.pending), ledger.evicted
    (['d3', 'd4'], 1)
    """

    pending: dict[str, P] = {}
    settled: dict[str, float] = {}
    horizon: Horizon = msgspec.field(default_factory=Horizon)
    rejected: dict[str, int] = {}
    last_rejection: str = ""
    evicted: int = 0

    def open(self, decision_id: str, entry: P, horizon_s: float, max_pending: int) -> None:
        """Record a decision, made at ``entry.time``, that waits for feedback; forget the decisions past
        the horizon, then the oldest beyond ``max_pending``."""
        expired = self.horizon.expire(entry.time - horizon_s)
        if expired:
            self._forget(expired)
        self.pending[decision_id] = entry
        self.horizon.add(entry.time, decision_id)
        if len(self.horizon) > max_pending:
            self.evicted += self._forget(self.horizon.trim(max_pending))

    def _forget(self, decisions: list[tuple[float, str]]) -> int:
        """Forget ``decisions``; returns how many of them were still waiting for feedback."""
        waiting = 0
        for _, decision_id in decisions:
            waiting += self.pending.pop(decision_id, None) is not None
            self.settled.pop(decision_id, None)
        return waiting

    def claim(self, decision_id: str, now: float, horizon_s: float, matches: Callable[[P], bool]) -> P | None:
        """The pending decision that feedback at ``now`` answers, or None when the feedback must be
        rejected (the reason is counted and kept in ``last_rejection``)."""
        entry = self.pending.get(decision_id)
        if entry is None:
            return self.reject(DUPLICATE if decision_id in self.settled else UNKNOWN)
        if now - entry.time > horizon_s:
            return self.reject(UNKNOWN)
        if not matches(entry):
            return self.reject(MISMATCH)
        return entry

    def settle(self, decision_id: str, now: float) -> None:
        """The decision is fully answered: a later feedback on it is a duplicate."""
        del self.pending[decision_id]
        self.settled[decision_id] = now

    def reject(self, reason: str) -> None:
        """Count a rejection of feedback for ``reason``."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.last_rejection = reason
        return None


class MatchesFeedback:
    """For handlers whose decisions wait for feedback: the horizon within which feedback is matched, how many
    recent decisions are remembered for it (``max_pending``), and an optional
    :class:`~rtopt.handlers.protection.FeedbackGuard` whose flagged feedback is rejected (``FLAGGED``).

    >>> MatchesFeedback(feedback_horizon_s=60.0, max_pending=1_000).config()
    {'feedback_horizon_s': 60.0, 'max_pending': 1000}
    """

    def __init__(
        self,
        feedback_horizon_s: float = 86_400.0,
        guard: FeedbackGuard | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        positive("feedback_horizon_s", feedback_horizon_s)
        whole("max_pending", max_pending)
        self.feedback_horizon_s = feedback_horizon_s
        self.guard = guard
        self.max_pending = max_pending

    def config(self) -> dict[str, Any]:
        """The horizon, the bound and the guard change what is learnt, so they key the handler's snapshots."""
        config: dict[str, Any] = {"feedback_horizon_s": self.feedback_horizon_s, "max_pending": self.max_pending}
        if self.guard is not None:
            config["guard"] = msgspec.to_builtins(self.guard)
        return config

    def await_feedback(self, ledger: DecisionLedger[P], decision_id: str, entry: P) -> None:
        """Remember a decision in ``ledger`` until its feedback, within this handler's horizon and bound."""
        ledger.open(decision_id, entry, self.feedback_horizon_s, self.max_pending)

    def fresh_guard(self) -> FeedbackGuard | None:
        """A copy of the guard that has seen nothing yet, for a new state (None without a guard)."""
        return None if self.guard is None else self.guard.copy()

    def triage(self, state: Any, feedback: Feedback, time: float) -> Sequence[Event] | None:
        """None if ``feedback`` is an observation for this handler (``state`` has ``experiments``, ``ledger``
        and ``guard``); else what to derive instead: nothing for another handler's feedback, a
        FeedbackRejected for feedback the guard flags. The guard sees every feedback either way."""
        flagged = state.guard is not None and bool(state.guard.check(feedback, time))
        decision_id, ledger = feedback.decision_id, state.ledger
        if decision_id is None or (feedback.prompt_id not in state.experiments and decision_id not in ledger.pending):
            return ()
        if flagged:
            ledger.reject(FLAGGED)
            return (FeedbackRejected(reason=FLAGGED, decision_id=decision_id, handler=self.name),)
        return None

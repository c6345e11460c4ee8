"""Decisions awaiting feedback: matched by decision id within a horizon of event time, once each."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from handlers.protection import FeedbackGuard
from rtopt import Event, Feedback, FeedbackRejected
from streams.horizon import Horizon

P = TypeVar("P")

DUPLICATE = "duplicate feedback"
UNKNOWN = "unknown or expired decision"
MISMATCH = "feedback does not match its decision"
FLAGGED = "flagged by the feedback guard"


class DecisionLedger(msgspec.Struct, Generic[P]):
    """The decisions a handler made that still wait for feedback (``pending``), the ones answered
    (``settled``, with the answer's time, to recognise a second answer) and the rejections by reason.
    Both forget a decision once it is older than the horizon.

    >>> ledger = DecisionLedger[str]()
    >>> ledger.open("d1", time=0.0, entry="arm-a", horizon_s=60.0)
    >>> ledger.claim("d1", now=5.0, horizon_s=60.0, matches=lambda arm: arm == "arm-a")
    'arm-a'
    >>> ledger.settle("d1", now=5.0)
    >>> ledger.claim("d1", now=6.0, horizon_s=60.0, matches=lambda arm: True), ledger.rejected
    (None, {'duplicate feedback': 1})
    """

    pending: dict[str, P] = {}
    settled: dict[str, float] = {}
    horizon: Horizon = msgspec.field(default_factory=Horizon)
    rejected: dict[str, int] = {}
    last_rejection: str = ""

    def open(self, decision_id: str, time: float, entry: P, horizon_s: float) -> None:
        """Record a decision made at ``time`` that waits for feedback (and forget those past the horizon)."""
        self._expire(time - horizon_s)
        self.pending[decision_id] = entry
        self.horizon.add(time, decision_id)

    def _expire(self, cutoff: float) -> None:
        for _, expired in self.horizon.expire(cutoff):
            self.pending.pop(expired, None)
            self.settled.pop(expired, None)

    def claim(self, decision_id: str, now: float, horizon_s: float, matches: Callable[[P], bool]) -> P | None:
        """The pending decision that feedback at ``now`` answers, or None when the feedback must be
        rejected (the reason is counted and kept in ``last_rejection``)."""
        self._expire(now - horizon_s)
        entry = self.pending.get(decision_id)
        if entry is None:
            return self.reject(DUPLICATE if decision_id in self.settled else UNKNOWN)
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
    """For handlers whose decisions wait for feedback: the horizon within which feedback is matched, and an
    optional :class:`~handlers.protection.FeedbackGuard` whose flagged feedback is rejected (``FLAGGED``).

    >>> MatchesFeedback(feedback_horizon_s=60.0).config()
    {'feedback_horizon_s': 60.0}
    """

    def __init__(self, feedback_horizon_s: float = 86_400.0, guard: FeedbackGuard | None = None) -> None:
        if not feedback_horizon_s > 0:
            raise ValueError(f"feedback_horizon_s must be positive, not {feedback_horizon_s!r}")
        self.feedback_horizon_s = feedback_horizon_s
        self.guard = guard

    def config(self) -> dict[str, Any]:
        """The horizon and the guard change what is learnt, so they key the handler's snapshots."""
        config: dict[str, Any] = {"feedback_horizon_s": self.feedback_horizon_s}
        if self.guard is not None:
            config["guard"] = msgspec.to_builtins(self.guard)
        return config

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

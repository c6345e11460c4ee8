"""Learning lag on a log several processes wrote: for each Feedback and each other process, the time from the
Feedback's commit to that process's first decision made on a state holding what the Feedback derived.

A decision is made on the state up to its basis (the seq its Decision records, or the seq right before it
when it records none); the Feedback's derived events commit with it, so a state holds them once it reaches
the last event of the Feedback's commit. Times are the commits' ``recorded_at`` (one host, one clock): a
decision made before its commit counts until that commit, so the figure is an upper bound.

>>> rows = [  # seq, id, type, causation, recorded_at, basis
...     (1, "d1", "Decision", None, 10.0, None), (2, "f1", "Feedback", None, 10.25, None),
...     (3, "u1", "ArmUpdated", "f1", 10.25, None), (4, "d2", "Decision", None, 10.5, 1),
...     (5, "d3", "Decision", None, 10.75, None)]
>>> lags_from(rows, makers={"d1": 0, "d2": 1, "d3": 1}, learners={"f1": 0})
[0.5]
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping

from rtopt.events import Decision, Feedback
from rtopt.privacy import Keyring
from rtopt.storage.interface import EventLog

LagRow = tuple[int, str, str, str | None, float, int | None]
"""seq, id, type tag, causation id, recorded_at, and a Decision's basis."""

DECISION, FEEDBACK = Decision.tag(), Feedback.tag()


def lags_from(rows: Iterable[LagRow], makers: Mapping[str, int], learners: Mapping[str, int]) -> list[float]:
    """The learning lags, in seconds, of ``rows`` (in seq order): ``makers`` maps decision ids to the process
    that made them, ``learners`` feedback ids to the process that committed them."""
    decided: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))  # state seqs, times
    committed: dict[str, tuple[int, float]] = {}  # feedback id -> (seq of the last event it caused, time)
    for seq, event_id, tag, cause, recorded_at, basis in rows:
        if tag == DECISION and event_id in makers:
            states, times = decided[makers[event_id]]
            states.append(seq - 1 if basis is None else basis)
            times.append(recorded_at)
        elif tag == FEEDBACK and event_id in learners:
            committed[event_id] = (seq, recorded_at)
        elif cause in committed:
            committed[cause] = (seq, committed[cause][1])
    lags = []
    for feedback_id, (learnt, at) in committed.items():
        for process, (states, times) in decided.items():
            if process == learners[feedback_id]:
                continue
            first = bisect.bisect_left(states, learnt)  # a process's states only move forward
            if first < len(states):
                lags.append(times[first] - at)
    return lags


def learning_lags(log: EventLog, makers: Mapping[str, int], learners: Mapping[str, int]) -> list[float]:
    """:func:`lags_from` over every event of ``log``."""
    keys = Keyring(log)

    def rows() -> Iterable[LagRow]:
        for row in log.rows():
            basis = keys.decode(row[2], row[9], row[8]).basis if row[2] == DECISION else None
            yield row[0], row[1], row[2], row[6], row[5], basis

    return lags_from(rows(), makers, learners)

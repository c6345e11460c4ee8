"""Views of the decisions: how bandits and experiments allocate them, the arms' posteriors, and the
A/B tests' and canaries' analyses and status."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import msgspec
import pandas as pd
from rtopt.apps.views.view import MAX_POINTS, View, merge_factor
from rtopt.handlers.bandits import ExperimentStats
from rtopt.handlers.experiments import (
    CanaryAdvanced,
    CanaryRolledBack,
    ExperimentAnalysed,
    ExperimentArchived,
    ExperimentCompleted,
    ExperimentConcluded,
    ExperimentPaused,
    ExperimentResumed,
    ExperimentStarted,
)

from rtopt import Decision, Envelope, handles

DecisionCounts = dict[str, dict[int, Counter[str]]]  # experiment -> bucket -> arm -> decisions
LatestStats = dict[str, tuple[float, ExperimentStats]]  # experiment -> (event time, its latest statistics)


class Allocation(View[DecisionCounts]):
    """The share of each arm among an experiment's decisions, per event-time window.

    >>> allocation = Allocation(bucket_s=60.0)
    >>> decisions = [
    ...     Envelope(1, "id", "Decision", "greeting", 10.0, 0.0, None, None, 1,
    ...              Decision(experiment="greeting", arm=arm, policy="thompson", propensity=0.5))
    ...     for arm in ("v1", "v1", "v1", "v2")
    ... ]
    >>> frame = allocation.frame(allocation.fold(allocation.initial_state(), decisions))
    >>> frame[["experiment", "arm", "decisions", "share"]].values.tolist()
    [['greeting', 'v1', 3, 0.75], ['greeting', 'v2', 1, 0.25]]
    """

    title = "Allocation of decisions"

    def initial_state(self) -> DecisionCounts:
        return defaultdict(lambda: defaultdict(Counter))

    @handles(Decision)
    def decision(self, counts: DecisionCounts, envelope: Envelope[Any]) -> DecisionCounts:
        decision: Decision = envelope.payload
        counts[decision.experiment][self.bucket(envelope.time)][decision.arm] += 1
        return counts

    def frame(self, counts: DecisionCounts, max_points: int = MAX_POINTS) -> pd.DataFrame:
        """One row per (experiment, window, arm): ``decisions`` and ``share`` of the window's decisions."""
        rows = []
        for experiment in sorted(counts):
            by_time = counts[experiment]
            first = min(by_time)
            factor = merge_factor(max(by_time) - first + 1, max_points)
            merged: dict[int, Counter[str]] = defaultdict(Counter)
            for index, arms in by_time.items():
                merged[index // factor * factor].update(arms)
            for start in sorted(merged):
                arms = merged[start]
                total = sum(arms.values())
                rows.extend(
                    {
                        "experiment": experiment,
                        "time": start * self.bucket_s,
                        "arm": arm,
                        "decisions": count,
                        "share": count / total,
                    }
                    for arm, count in sorted(arms.items())
                )
        return pd.DataFrame(rows, columns=["experiment", "time", "arm", "decisions", "share"])


class ArmPosteriors(View[LatestStats]):
    """The latest statistics of each bandit experiment: per arm, pulls, the mean reward with its 95 %
    credible interval and the probability of being best (from ``ExperimentStats`` events).

    >>> from rtopt.handlers.bandits import ArmSummary
    >>> posteriors = ArmPosteriors()
    >>> arm = ArmSummary("active", pulls=9, rewards=9, mean=0.6, low=0.3, high=0.85, p_best=0.7)
    >>> stats = ExperimentStats("greeting", decisions=9, rewards=9, exploration_rate=0.1, arms={"v1": arm})
    >>> latest = posteriors.fold({}, [Envelope(1, "id", "ExperimentStats", "greeting", 0.0, 0.0, None, None, 1, stats)])
    >>> posteriors.frame(latest)[["arm", "mean", "low", "high"]].values.tolist()
    [['v1', 0.6, 0.3, 0.85]]
    """

    title = "Arms: posterior means and 95 % intervals"

    def initial_state(self) -> LatestStats:
        return {}

    @handles(ExperimentStats)
    def statistics(self, latest: LatestStats, envelope: Envelope[Any]) -> LatestStats:
        stats: ExperimentStats = envelope.payload
        latest[stats.experiment] = (envelope.time, stats)
        return latest

    def frame(self, latest: LatestStats) -> pd.DataFrame:
        """One row per (experiment, arm) with ``status``, ``pulls``, ``mean``, ``low``, ``high``, ``p_best``."""
        rows = [
            {"experiment": name, "arm": arm, **msgspec.structs.asdict(summary)}
            for name, (_, stats) in sorted(latest.items())
            for arm, summary in stats.arms.items()
        ]
        columns = ["experiment", "arm", "status", "pulls", "rewards", "mean", "low", "high", "p_best"]
        return pd.DataFrame(rows, columns=columns)


_STATUS_BY_EVENT = {
    ExperimentStarted: "running",
    ExperimentPaused: "paused",
    ExperimentResumed: "running",
    ExperimentCompleted: "completed",
    ExperimentArchived: "archived",
}


class ExperimentRecord:
    """Each analysis's comparisons, and each experiment's status with its last change."""

    def __init__(self) -> None:
        self.analyses: list[dict[str, Any]] = []
        self.status: dict[str, dict[str, Any]] = {}

    def change(self, envelope: Envelope[Any]) -> dict[str, Any]:
        """The status row of the envelope's experiment, with the envelope as its last change."""
        event = envelope.payload
        row = self.status.setdefault(event.experiment, {"experiment": event.experiment, "status": "", "reason": ""})
        row["reason"] = f"{type(event).__name__}: {event.reason}"
        row["seq"] = envelope.seq
        return row


class ExperimentTests(View[ExperimentRecord]):
    """A/B tests and canaries: each analysis's p-values per variant against the control, and each
    experiment's status with the reason of its last change (a guardrail pause names its guardrail).

    >>> tests = ExperimentTests()
    >>> paused = ExperimentPaused(experiment="greeting", reason="guardrail cost", guardrail="cost")
    >>> record = tests.fold(tests.initial_state(), [
    ...     Envelope(7, "id", "ExperimentPaused", "greeting", 0.0, 0.0, None, None, 1, paused)])
    >>> tests.status_frame(record).values.tolist()
    [['greeting', 'paused', 'ExperimentPaused: guardrail cost', 7]]
    """

    title = "Experiments: p-values and guardrails"

    def initial_state(self) -> ExperimentRecord:
        return ExperimentRecord()

    @handles(ExperimentAnalysed)
    def analysed(self, record: ExperimentRecord, envelope: Envelope[Any]) -> ExperimentRecord:
        event: ExperimentAnalysed = envelope.payload
        for variant, comparison in event.comparisons.items():
            record.analyses.append(
                {
                    "experiment": event.experiment,
                    "analysis": event.analysis,
                    "feedback": event.feedback,
                    "variant": variant,
                    "p_welch": comparison.welch.p_value if comparison.welch else None,
                    "p_conversion": comparison.conversion.p_value if comparison.conversion else None,
                    "p_holm": comparison.p_holm,
                    "msprt_p": comparison.msprt_p,
                }
            )
        return record

    @handles(*_STATUS_BY_EVENT)
    def status_changed(self, record: ExperimentRecord, envelope: Envelope[Any]) -> ExperimentRecord:
        record.change(envelope)["status"] = _STATUS_BY_EVENT[type(envelope.payload)]
        return record

    @handles(ExperimentConcluded, CanaryAdvanced, CanaryRolledBack)
    def progressed(self, record: ExperimentRecord, envelope: Envelope[Any]) -> ExperimentRecord:
        record.change(envelope)
        return record

    def frame(self, record: ExperimentRecord) -> pd.DataFrame:
        """One row per (analysis, variant): the Welch, conversion, Holm-adjusted and mSPRT p-values."""
        columns = ["experiment", "analysis", "feedback", "variant", "p_welch", "p_conversion", "p_holm", "msprt_p"]
        return pd.DataFrame(record.analyses, columns=columns)

    def status_frame(self, record: ExperimentRecord) -> pd.DataFrame:
        """One row per experiment: its status and the last lifecycle or canary event with its reason."""
        return pd.DataFrame(list(record.status.values()), columns=["experiment", "status", "reason", "seq"])

    def frames(self, record: ExperimentRecord) -> dict[str, pd.DataFrame]:
        return {"ExperimentTests": self.frame(record), "ExperimentStatus": self.status_frame(record)}

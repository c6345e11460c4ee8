"""Looking back and asking what if: the handlers' state at a past seq (by replay), and what other policies
would have earned on a recorded log (off-policy estimates). Both only read the log."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from rtopt.handlers.bandits import BanditState, statistics
from rtopt.handlers.bandits.ope import always, evaluate, rounds_from_log, uniform
from rtopt.handlers.experiments import ExperimentsState

from rtopt import Engine

ARM_COLUMNS = ["experiment", "arm", "status", "pulls", "rewards", "mean", "low", "high", "p_best"]
EXPERIMENT_COLUMNS = ["experiment", "policy", "status", "arm", "decisions", "feedback", "winner", "outcome"]
ESTIMATE_COLUMNS = ["policy", "value", "low", "high", "effective_sample_size"]


class PastState:
    """The handlers' state at ``seq`` of a log: bandit arms with their statistics and A/B experiments.

    ``time`` is the event time of that seq (None for seq 0).

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "log.sqlite"
    >>> with Engine.open(path, seed=1) as engine:
    ...     _ = engine.define_experiment("g", arms=["a", "b"], time=0.0)
    ...     _ = [engine.decide("g", time=float(t)) for t in range(1, 4)]
    >>> past = state_at(path, 3)
    >>> past.seq, past.time, int(past.arms["pulls"].sum())
    (3, 2.0, 2)
    """

    def __init__(self, seq: int, time: float | None, arms: pd.DataFrame, experiments: pd.DataFrame) -> None:
        self.seq = seq
        self.time = time
        self.arms = arms
        self.experiments = experiments


def state_at(location: str | Path, seq: int) -> PastState:
    """Rebuild the log at ``location`` as of ``seq`` (a read-only replay) and tabulate its handlers' state."""
    with Engine.replay(location, until_seq=seq) as engine:
        time = next(engine.read(start=seq, until=seq)).time if seq else None
        handlers = engine.handlers()
        bandit: BanditState = engine.state("bandit") if "bandit" in handlers else BanditState()
        tests: ExperimentsState = engine.state("experiments") if "experiments" in handlers else ExperimentsState()
    arms = [
        {"experiment": name, "arm": arm, **_summary_fields(summary)}
        for name, experiment in sorted(bandit.experiments.items())
        for arm, summary in statistics(name, experiment, np.random.default_rng(seq), time or 0.0).arms.items()
    ]
    experiments = [
        {
            "experiment": name,
            "policy": experiment.policy,
            "status": experiment.status,
            "arm": arm,
            "decisions": stats.decisions,
            "feedback": stats.feedback,
            "winner": experiment.winner,
            "outcome": experiment.outcome,
        }
        for name, experiment in sorted(tests.experiments.items())
        for arm, stats in experiment.stats.items()
    ]
    return PastState(
        seq, time, pd.DataFrame(arms, columns=ARM_COLUMNS), pd.DataFrame(experiments, columns=EXPERIMENT_COLUMNS)
    )


def _summary_fields(summary: object) -> dict[str, object]:
    return {column: getattr(summary, column) for column in ARM_COLUMNS[2:]}


def policy_estimates(engine: Engine, experiment: str) -> pd.DataFrame:
    """What the logged policy earned per decision, and what uniform choice and each arm alone would have
    earned on the same decisions (self-normalised IPS with 95 % intervals), one row per policy.

    >>> from rtopt.handlers.bandits import BanditHandler
    >>> with Engine.open(":memory:", seed=1, handlers=[BanditHandler()]) as engine:
    ...     _ = engine.define_experiment("g", arms=["a", "b"], policy="epsilon_greedy", epsilon=1.0, time=0.0)
    ...     for i in range(200):
    ...         d = engine.decide("g", time=float(i))
    ...         _ = engine.feedback(d.id, success=d.arm == "a", quality_score=0.9, response_time_ms=1.0, time=i + 0.5)
    ...     estimates = policy_estimates(engine, "g").set_index("policy")
    >>> float(estimates.loc["always:a", "value"]), float(estimates.loc["always:b", "value"]), estimates.index[0]
    (1.0, 0.0, 'logged')
    """
    rounds = rounds_from_log(engine, experiment).rounds
    columns = ESTIMATE_COLUMNS
    if not rounds:
        return pd.DataFrame([], columns=columns)
    rewards = np.array([r.reward for r in rounds])
    spread = 1.96 * rewards.std(ddof=1) / math.sqrt(len(rewards)) if len(rewards) > 1 else 0.0
    rows = [["logged", rewards.mean(), rewards.mean() - spread, rewards.mean() + spread, float(len(rewards))]]
    arms = sorted({arm for r in rounds for arm in r.candidates})
    targets = {"uniform": uniform, **{f"always:{arm}": always(arm, uniform) for arm in arms}}
    for name, policy in targets.items():
        estimate = evaluate(rounds, policy)["snips"]
        rows.append([name, estimate.value, estimate.low, estimate.high, estimate.effective_sample_size])
    return pd.DataFrame(rows, columns=columns)

"""Per-decision state is bounded by count as well as by time: the ledgers of the bandit and experiments
handlers and a study's suggestions waiting for a value keep the most recent ones, evict the oldest by a
rule that replay reproduces, and memory stays flat under sustained load."""

from __future__ import annotations

import gc
from pathlib import Path

import msgspec
import pytest
from rtopt.handlers.bandits import ArmUpdated, BanditHandler
from rtopt.handlers.bayesopt import BayesOptHandler
from rtopt.handlers.experiments import ExperimentHandler

from rtopt import Engine, FeedbackRejected, InvalidEvent

NOW = 1.7e9
CAP = 50


def _handlers(max_pending: int = CAP) -> list:
    return [BanditHandler(max_pending=max_pending), ExperimentHandler(max_pending=max_pending)]


def _define(engine: Engine) -> None:
    engine.define_experiment("bandit", arms=["a", "b"], policy="thompson", time=NOW)
    engine.define_experiment("test", arms=["a", "b"], policy="ab_test", start=True, time=NOW)


def _answer(engine: Engine, decision_id: str, time: float) -> None:
    engine.feedback(decision_id, success=True, quality_score=0.9, response_time_ms=80.0, time=time)


@pytest.mark.parametrize(("handler", "experiment"), [("bandit", "bandit"), ("experiments", "test")])
def test_the_ledger_keeps_the_most_recent_decisions(handler: str, experiment: str) -> None:
    with Engine.open(":memory:", seed=1, handlers=_handlers()) as engine:
        _define(engine)
        decisions = [engine.decide(experiment, time=NOW + i).id for i in range(4 * CAP)]
        ledger = engine.state(handler).ledger
        assert list(ledger.pending) == decisions[-CAP:]  # in decision order
        assert ledger.evicted == 3 * CAP
        _answer(engine, decisions[0], NOW + 300.0)  # evicted: rejected as unknown
        _answer(engine, decisions[-1], NOW + 300.0)
        for _ in range(CAP):  # answered decisions are forgotten by the same rule
            engine.decide(experiment, time=NOW + 400.0)
        ledger = engine.state(handler).ledger
        assert len(ledger.pending) + len(ledger.settled) == len(ledger.horizon) == CAP
        assert (ledger.evicted, ledger.settled) == (4 * CAP - 1, {})
        rejected = [(env.payload.decision_id, env.payload.reason) for env in engine.read(types=[FeedbackRejected])]
        assert rejected == [(decisions[0], "unknown or expired decision")]
        assert engine.stats().rejected == {"feedback rejected: unknown or expired decision": 1}


def test_the_ledger_and_its_snapshot_stay_at_the_cap(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=2, handlers=_handlers()) as engine:
        _define(engine)
        sizes = []
        for round_ in range(3):
            for i in range(20 * CAP):
                decision = engine.decide("bandit", time=NOW + round_ * 10_000 + i)
                if i % 2:  # half the decisions never get feedback
                    _answer(engine, decision.id, NOW + round_ * 10_000 + i + 0.5)
            sizes.append(len(msgspec.msgpack.encode(engine.state("bandit"))))
            assert len(engine.state("bandit").ledger.horizon) == CAP
        assert sizes[2] <= sizes[0] * 1.05


def test_replay_reproduces_eviction_clamping_and_rejection(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=3, handlers=_handlers(), future_time="clamp") as engine:
        _define(engine)
        for i in range(6 * CAP):
            experiment = ("bandit", "test")[i % 2]
            decision = engine.decide(experiment, time=NOW + i)
            if i % 3 == 0:  # answered late, after many later decisions: some were evicted meanwhile
                _answer(engine, decision.id, NOW + i + 1.0)
            elif i % 3 == 1:  # a clock in milliseconds, clamped
                _answer(engine, decision.id, (NOW + i) * 1000)
        engine.snapshot()
        late = [engine.decide("bandit", time=NOW + 1000.0 + i).id for i in range(2 * CAP)]
        for decision_id in late[::7]:
            _answer(engine, decision_id, NOW + 2000.0)
        assert engine.stats().clamped_times == 2 * CAP
        assert engine.state("bandit").ledger.evicted > 0 and engine.state("experiments").ledger.evicted > 0
        live = [msgspec.msgpack.encode(engine.state(name)) for name in ("bandit", "experiments")]
    assert Engine.verify(path, handlers=_handlers()).ok
    with Engine.open(path, read_only=True, handlers=_handlers()) as reopened:  # from the snapshot
        assert reopened.rebuilt.snapshots
        assert [msgspec.msgpack.encode(reopened.state(name)) for name in ("bandit", "experiments")] == live


def test_a_study_keeps_its_most_recent_suggestions_waiting() -> None:
    with Engine.open(":memory:", seed=4, handlers=[BayesOptHandler()]) as engine:
        engine.define_study("s", space={"x": (0.0, 1.0)}, n_initial=2, max_pending=3, time=0.0)
        suggestions = [engine.suggest("s", time=float(i))[0].id for i in range(5)]
        study = engine.state("bayesopt", "s")
        assert (list(study.pending), study.evicted) == (suggestions[2:], 2)
        with pytest.raises(InvalidEvent):
            engine.tell(suggestions[0], 0.5, time=6.0)
        engine.tell(suggestions[-1], 0.5, time=6.0)
        assert engine.state("bayesopt", "s").values == [0.5]


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_memory_stays_flat_under_sustained_load(tmp_path: Path) -> None:
    """16,000 decisions with lagging feedback, half never answered, with a subscriber: once the ledgers are
    full (6,000 decisions in), the resident memory grows by less than 10 %."""
    delivered = []
    with Engine.open(tmp_path / "load.sqlite", seed=5, handlers=_handlers(max_pending=1_000)) as engine:
        _define(engine)
        subscription = engine.subscribe(lambda envelope: delivered.append(envelope.seq), types=[ArmUpdated])
        waiting: list[str] = []
        baseline, peak = 0, 0
        for step in range(16_000):
            experiment = ("bandit", "test")[step % 2]
            decision = engine.decide(experiment, time=NOW + step)
            if step % 4 < 2:
                waiting.append(decision.id)
            if len(waiting) > 100:  # feedback lags a hundred decisions
                _answer(engine, waiting.pop(0), NOW + step)
            delivered.clear()
            if step == 6_000:
                assert engine.state("bandit").ledger.evicted > 0  # the ledger is full from here on
                gc.collect()
                baseline = _rss_kib()
            elif step > 6_000 and step % 1_000 == 0:
                peak = max(peak, _rss_kib())
        subscription.dispose()
    assert peak <= 1.10 * baseline, f"RSS grew from {baseline} KiB to {peak} KiB over {step} steps"

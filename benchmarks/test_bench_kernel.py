"""pytest-benchmark benchmarks of the kernel's hot paths.

The default test run executes each once, as a test (``addopts`` disables benchmarking); measure them
with ``pytest benchmarks/ --benchmark-enable``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.throughput import ARMS_3, BATCH, EXPERIMENT, SEED, START, Outcomes, link, make_workload
from rtopt import Engine

ROUNDS = 20
REPLAY_PAIRS = 6_667  # 1 definition + 6,667 x (decision, feedback, ArmUpdated) + 66 ExperimentStats = 20,068 events
REPLAY_EVENTS = 1 + 3 * REPLAY_PAIRS + REPLAY_PAIRS // 100


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A fresh file log with the default handlers (the bandit chain) and a 3-arm experiment."""
    with Engine.open(tmp_path / "bench.sqlite", seed=SEED) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(ARMS_3), time=START)
        yield engine


@pytest.fixture(scope="module")
def log_20k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log of about 20k events: decisions, their feedback and the ArmUpdated each feedback derives."""
    path = tmp_path_factory.mktemp("replay") / "20k.sqlite"
    work = make_workload(REPLAY_PAIRS, ARMS_3, SEED, stream=20)
    with Engine.open(path, seed=SEED) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(ARMS_3), time=START)
        for start in range(0, REPLAY_PAIRS, BATCH):
            made = engine.publish_many(work.decisions[start : start + BATCH], time=START + 1 + start * 1e-3)
            engine.publish_many(link(work.feedback[start : start + BATCH], made), time=START + 2 + start * 1e-3)
        assert engine.position == REPLAY_EVENTS
    return path


def test_publish_many_1000_feedback(benchmark, engine: Engine) -> None:
    """One publish_many call of 1,000 Feedback events on pending decisions (each derives an ArmUpdated)."""
    work = make_workload((ROUNDS + 1) * BATCH, ARMS_3, SEED, stream=10)
    starts = iter(range(0, len(work.feedback), BATCH))

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        start = next(starts)
        made = engine.publish_many(work.decisions[start : start + BATCH], time=START + 1 + start)
        return (link(work.feedback[start : start + BATCH], made),), {"time": START + 2 + start}

    envelopes = benchmark.pedantic(engine.publish_many, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert len(envelopes) == BATCH
    stats = engine.stats()
    assert not stats.rejected and engine.log.count_by_type()["ArmUpdated"] == (stats.published - 1) // 2


def test_publish_one_feedback(benchmark, engine: Engine) -> None:
    """One publish() call of one Feedback event on a pending decision."""
    work = make_workload(20 * BATCH, ARMS_3, SEED, stream=12)
    linked = []
    for start in range(0, len(work.decisions), BATCH):
        made = engine.publish_many(work.decisions[start : start + BATCH], time=START + 1)
        linked.extend(link(work.feedback[start : start + BATCH], made))
    feedback = iter(linked)

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        return (next(feedback),), {"time": START + 2}

    envelope = benchmark.pedantic(engine.publish, setup=setup, rounds=len(linked) - 1, iterations=1)
    assert envelope.type == "Feedback"
    stats = engine.stats()
    assert not stats.rejected and engine.log.count_by_type()["ArmUpdated"] == stats.published - len(work.decisions) - 1


def test_decide_then_feedback(benchmark, engine: Engine) -> None:
    """A decide() call on a 3-arm Thompson experiment followed by the feedback on its decision."""
    outcomes = Outcomes.draw(50_000, SEED, stream=11)
    counter = itertools.count()

    def decide_then_feedback() -> None:
        i = next(counter)
        when = START + 1 + i * 1e-2
        decision = engine.decide(EXPERIMENT, time=when)
        engine.feedback(decision.id, time=when + 5e-3, **outcomes.fields(i % 50_000, 0.8))

    benchmark(decide_then_feedback)
    stats = engine.stats()
    assert not stats.rejected and stats.derived >= 1


def test_replay_20k_events(benchmark, log_20k: Path) -> None:
    """Engine.replay (rebuild: read-only open folding the whole log; the log holds no snapshot)."""

    def replay() -> int:
        engine = Engine.replay(log_20k)
        try:
            return engine.position
        finally:
            engine.close()

    assert benchmark.pedantic(replay, rounds=5, iterations=1, warmup_rounds=1) == REPLAY_EVENTS

"""The bandit policy registry: every registered policy keeps the shared contract, and a policy defined
outside the package runs end to end once registered."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from rtopt.handlers.bandits import POLICIES, ArmState, Choice, Policy, Turn, register
from rtopt.handlers.bandits.policies.base import tie_break

from rtopt import Context, Decision, Engine, InvalidEvent
from rtopt.cli import main

ARMS = ["a", "b", "c", "d"]
TRUE_MEANS = {"a": 0.2, "b": 0.5, "c": 0.6, "d": 0.35}
FEATURES = ["bias", "x"]
ROUNDS = 120
PROBES = 400


class LeastPulled(Policy):
    """The candidate with the fewest decisions so far, ties broken at random: a policy this test adds."""

    name = "least_pulled"

    def select(self, arms: Sequence[ArmState], turn: Turn) -> Choice:
        fewest = min(arm.pulls for arm in arms)
        tied = [i for i, arm in enumerate(arms) if arm.pulls == fewest]
        return Choice(tie_break(turn.ctx, tied), 1.0 / len(tied), False)


@pytest.fixture
def least_pulled() -> Iterator[Policy]:
    register(LeastPulled)
    yield POLICIES[LeastPulled.name]
    del POLICIES[LeastPulled.name]


def serve(engine: Engine, policy: str, seed: int) -> list[Decision]:
    """``ROUNDS`` requests, most restricted to some of the arms, every third asking for a slate of two,
    each answered by feedback drawn from ``TRUE_MEANS``; the decisions made."""
    options = {"features": FEATURES} if POLICIES[policy].contextual else {}
    engine.define_experiment("g", arms=ARMS, policy=policy, stats_every=40, time=0.0, **options)
    world = np.random.default_rng(seed)
    decisions = []
    for t in range(ROUNDS):
        available = ARMS if t % 4 == 0 else sorted(world.choice(ARMS, size=3, replace=False).tolist())
        context = {"bias": 1.0, "x": float(world.normal())}
        decision = engine.decide("g", context=context, available=available, slots=2 if t % 3 == 0 else 1, time=float(t))
        success = bool(world.random() < TRUE_MEANS[decision.payload.arm])
        quality = 0.9 if success else 0.1
        engine.feedback(decision.id, success=success, quality_score=quality, response_time_ms=50.0, time=t + 0.5)
        decisions.append(decision.payload)
    return decisions


def probe(engine: Engine, policy: str, seed: int) -> list[Choice]:
    """``PROBES`` choices among all arms from what the experiment has learnt, each with its own event id."""
    exp = engine.state("bandit", "g")
    arms = [exp.arms[arm] for arm in ARMS]
    vector = np.array([1.0, 0.5]) if POLICIES[policy].contextual else None
    rule = POLICIES[policy]
    return [
        rule.choose(arms, Turn(exp.options, Context(float(ROUNDS), f"probe-{i}", seed), exp.decisions, vector))
        for i in range(PROBES)
    ]


def check_contract(policy: str, tmp_path: Path) -> None:
    """The contract every registered policy keeps (see the tests below)."""
    log = tmp_path / f"{policy}.sqlite"
    with Engine.open(log, seed=5) as engine:
        decisions = serve(engine, policy, seed=5)
        choices = probe(engine, policy, seed=5)
    for decision in decisions:
        shown = decision.slate or [decision.arm]
        assert set(shown) <= set(decision.candidates) and len(set(shown)) == len(shown), decision
        for propensity in decision.slate_propensities or [decision.propensity]:
            assert 0.0 < propensity <= 1.0, decision
    # the propensity a choice reports is the probability the policy had of making it
    indices = np.array([choice.index for choice in choices])
    propensities = np.array([choice.propensity for choice in choices])
    assert ((propensities > 0.0) & (propensities <= 1.0)).all()
    chosen = sorted(set(indices.tolist()))
    assert set(chosen) <= set(range(len(ARMS)))
    reported = {i: float(propensities[indices == i].mean()) for i in chosen}
    assert sum(reported.values()) == pytest.approx(1.0, abs=0.06), reported
    for i, p in reported.items():
        share = float(np.mean(indices == i))
        assert abs(share - p) <= 4.0 * np.sqrt(p * (1.0 - p) / PROBES) + 0.02, (i, share, p)
    # the same seed makes the same decisions, live and in replay
    with Engine.open(":memory:", seed=5) as again:
        assert serve(again, policy, seed=5) == decisions
        assert probe(again, policy, seed=5) == choices
    report = Engine.verify(log)
    assert report.ok, report.difference
    assert report.decisions == ROUNDS


@pytest.mark.parametrize("policy", list(POLICIES))
def test_every_registered_policy_keeps_the_contract(policy: str, tmp_path: Path) -> None:
    """Only available arms, distinct arms in a slate, propensities in (0, 1] that are the probabilities of
    the choices (so they sum to 1 over the candidates), the same decisions under the same seed."""
    check_contract(policy, tmp_path)


def test_a_policy_defined_outside_the_package_runs_end_to_end_once_registered(
    least_pulled: Policy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "least.sqlite"
    with Engine.open(log, seed=3) as engine:
        with pytest.raises(InvalidEvent) as refused:
            engine.define_experiment("wrong", arms=ARMS, policy="least_pulled", epsilon=0.2, time=0.0)
        assert refused.value.field == "options.epsilon"
        engine.define_experiment("g", arms=["a", "b", "c"], policy="least_pulled", time=0.0)
        for t in range(9):
            decision = engine.decide("g", time=1.0 + t)
            engine.feedback(decision.id, success=True, quality_score=0.9, response_time_ms=10.0, time=1.5 + t)
        exp = engine.state("bandit", "g")
        assert [(arm.pulls, arm.rewards) for arm in exp.arms.values()] == [(3, 3)] * 3
    assert main(["replay", str(log), "--verify"]) == 0
    assert "events match" in capsys.readouterr().out
    check_contract("least_pulled", tmp_path)


def test_the_registry_refuses_a_second_policy_of_one_name_and_unknown_options() -> None:
    class Again(LeastPulled):
        name = "ucb1"

    class Unknown(LeastPulled):
        name = "unknown_options"
        option_names = frozenset({"epsilon", "gamma"})

    class Nameless(Policy):
        pass

    with pytest.raises(ValueError, match="'ucb1': already registered"):
        register(Again)
    with pytest.raises(ValueError, match=r"\['gamma'\] are not options"):
        register(Unknown)
    with pytest.raises(ValueError, match="needs a name"):
        register(Nameless)
    assert type(POLICIES["ucb1"]).__name__ == "UCB1" and "unknown_options" not in POLICIES

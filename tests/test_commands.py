"""The command protocol: a handler of one's own answers ``decide`` beside the installed ones, its answers are
recorded, screened and re-made by verify like theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from rtopt.handlers.bandits import BanditHandler

from rtopt import Answerer, Context, Decision, Engine, ExperimentDefined, Handler, InvalidEvent, Request


class Arms(msgspec.Struct):
    by_experiment: dict[str, list[str]] = {}


class FirstArm(Handler[Arms]):
    """Answers ``decide`` with the first available arm of each experiment defined with policy ``first``."""

    name = "first"
    accepts = (ExperimentDefined,)
    state_type = Arms
    answers: ClassVar[dict[str, tuple[str, ...]]] = {"decide": ("first",)}

    def initial_state(self) -> Arms:
        return Arms()

    def apply(self, state: Arms, envelope: Any, ctx: Context) -> tuple[Arms, list[Any]]:
        if envelope.payload.policy == "first":
            state.by_experiment[envelope.payload.experiment] = list(envelope.payload.arms)
        return state, []

    def knows(self, state: Arms, command: str, target: str) -> bool:
        return target in state.by_experiment

    def settled(self, state: Arms, command: str, answer_id: str) -> bool:
        return False

    def pick(self, arms: list[str]) -> str:
        return arms[0]

    def answer(self, state: Arms, command: str, target: str, ctx: Context, request: Request) -> list[Decision]:
        arms = [arm for arm in state.by_experiment[target] if request.available is None or arm in request.available]
        return [Decision(experiment=target, arm=self.pick(arms), policy="first", propensity=1.0, candidates=arms)]


class LastArm(FirstArm):
    def pick(self, arms: list[str]) -> str:
        return arms[-1]


def test_decide_routes_each_experiment_to_the_handler_that_knows_it(tmp_path: Path) -> None:
    assert isinstance(FirstArm(), Answerer) and isinstance(BanditHandler(), Answerer)
    with Engine.open(tmp_path / "log.sqlite", seed=3, handlers=[BanditHandler(), FirstArm()]) as engine:
        engine.define_experiment("fixed", arms=["b", "a"], policy="first", time=0.0)
        engine.define_experiment("learnt", arms=["b", "a"], policy="ucb1", time=0.0)
        fixed = engine.decide("fixed", time=1.0)
        only_a = engine.decide("fixed", available=["a"], time=2.0)
        learnt = engine.decide("learnt", time=3.0)
        assert (fixed.payload.arm, only_a.payload.arm) == ("b", "a")
        assert (fixed.payload.policy, learnt.payload.policy) == ("first", "ucb1")
        assert fixed.correlation_id == fixed.id and fixed.stream == "fixed"
        assert engine.state("bandit", "learnt").decisions == 1  # the bandit folds only its own experiment
        assert "fixed" not in engine.state("bandit").experiments


def test_answers_of_a_policy_a_handler_runs_are_made_not_published() -> None:
    with Engine.open(":memory:", seed=3, handlers=[FirstArm()]) as engine:
        engine.define_experiment("fixed", arms=["b", "a"], policy="first", time=0.0)
        published = Decision(experiment="fixed", arm="a", policy="first", propensity=1.0)
        refusals = (
            lambda: engine.publish(published, time=1.0),
            lambda: engine.define_experiment("other", arms=["a"], policy="nobody runs it", time=1.0),
            lambda: engine.define_experiment("fixed", arms=["a"], policy="first", time=1.0),
            lambda: engine.decide("unknown", time=1.0),
        )
        fields = []
        for refused in refusals:
            with pytest.raises(InvalidEvent) as error:
                refused()
            fields.append(error.value.field)
        assert fields == ["policy", "policy", "experiment", "experiment"]
        assert engine.stats().rejected == {"invalid command": 3, "unknown experiment": 1}


def test_verify_re_makes_the_answers_of_a_handler_of_ones_own(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=3, handlers=[FirstArm()]) as engine:
        engine.define_experiment("fixed", arms=["b", "a"], policy="first", time=0.0)
        for second in range(1, 4):
            engine.decide("fixed", time=float(second))
    same = Engine.verify(path, handlers=[FirstArm()])
    assert same.ok and same.decisions == 3
    other = Engine.verify(path, handlers=[LastArm()])
    assert not other.ok and other.difference.field == "decision" and other.difference.seq == 2
    assert (other.difference.recorded["arm"], other.difference.rederived["arm"]) == ("b", "a")

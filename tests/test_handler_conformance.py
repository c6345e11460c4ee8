"""Every handler of rtopt.handlers and rtopt.streams passes check_handler on a realistic sequence of inputs,
and check_handler catches handlers that break the rules, naming the check that fails."""

from __future__ import annotations

import time as wall_clock
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
import numpy as np
import pytest
from rtopt.handlers.bandits.events import ArmAdded, ArmPaused, ArmResumed, ArmRetired, EvidenceDiscounted
from rtopt.handlers.bandits.handler import BanditHandler
from rtopt.handlers.bandits.policies import POLICIES
from rtopt.handlers.bayesopt.handler import BayesOptHandler
from rtopt.handlers.detection.handler import DetectionHandler
from rtopt.handlers.experiments.events import CanaryAdvanced, ExperimentPaused, ExperimentResumed, ExperimentStarted
from rtopt.handlers.experiments.handler import ExperimentHandler
from rtopt.handlers.learners.events import ChallengerStarted, Example, ExampleBatch, LearnerDefined, ModelRolledBack
from rtopt.handlers.learners.handler import LearnerHandler
from rtopt.handlers.protection import FeedbackGuard, ProtectionHandler
from rtopt.streams import Aggregates, Tumbling, WindowHandler, WindowPipeline
from rtopt.streams.events import WindowClosed, WindowUpdated
from rtopt.streams.feature_store import FeatureStoreHandler

from rtopt import ClockTicked, Context, Engine, Envelope, Event, Feedback, Handler, handles
from rtopt.testing import DERIVES_FALSE, OUTPUTS, REBUILD, ROUND_TRIP, SAME_SEED, check_handler


def inputs(engine: Engine) -> list[Envelope[Any]]:
    """The inputs of an engine's log, as a session wrote them."""
    return [envelope for envelope in engine.read() if envelope.is_input]


def feedback(rng: np.random.Generator, **fields: Any) -> dict[str, Any]:
    return {
        "success": bool(rng.random() < 0.6),
        "quality_score": float(rng.random()),
        "response_time_ms": float(50 + 200 * rng.random()),
        **fields,
    }


def experiment_of(event: Event) -> str:
    """The experiment an input belongs to (a clock tick to none)."""
    return getattr(event, "experiment", None) or getattr(event, "prompt_id", "clock")


# --- every handler passes ------------------------------------------------------------------------


def bandit_session(policy: str) -> list[Envelope[Any]]:
    """Two experiments of ``policy``: decisions and their feedback, arms joining, pausing, resuming and
    retiring, evidence discounted, statistics derived every few rewards."""
    rng = np.random.default_rng(5)
    options: dict[str, Any] = {"stats_every": 7}
    if POLICIES[policy].contextual:
        options["features"] = ["x"]
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        for name in ("g1", "g2"):
            engine.define_experiment(name, arms=["a", "b", "c"], policy=policy, time=0.0, **options)
        t = 0.0
        for step in range(24):
            for name in ("g1", "g2"):
                t += 1.0
                context = {"x": float(rng.random())} if POLICIES[policy].contextual else None
                decision = engine.decide(name, context=context, time=t)
                engine.feedback(decision.id, time=t + 0.5, **feedback(rng))
            change = {6: ArmAdded, 10: ArmPaused, 14: ArmResumed, 18: ArmRetired}.get(step)
            if change is not None:
                engine.publish(change(experiment="g1", arm="d" if change is ArmAdded else "a"), time=t)
            if step == 12:
                engine.publish(EvidenceDiscounted(experiment="g2", factor=0.5), time=t)
        return inputs(engine)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_bandit_handler_conforms_with_every_policy(policy: str) -> None:
    check_handler(BanditHandler(), bandit_session(policy), seed=3, unrelated_by=experiment_of)


def test_the_experiment_handler_conforms_on_an_ab_test_and_a_canary() -> None:
    rng = np.random.default_rng(8)
    with Engine.open(":memory:", seed=4, handlers=[ExperimentHandler()]) as engine:
        engine.define_experiment("ab", arms=["control", "v2"], policy="ab_test", weights="0.5,0.5", time=0.0,
                                 analyse_every=20, max_duration_s=500.0)  # fmt: skip
        engine.publish(ExperimentStarted(experiment="ab", reason="go"), time=0.0)
        engine.define_experiment("roll", arms=["stable", "candidate"], policy="canary", step_min_feedback=10,
                                 guardrail_min_samples=10, start=True, time=0.0)  # fmt: skip
        for t in range(1, 120):
            for name in ("ab", "roll"):
                decision = engine.decide(name, unit=f"user-{t % 37}", time=float(t))
                engine.feedback(decision.id, time=t + 0.5, **feedback(rng))
            if t == 60:
                engine.publish(ExperimentPaused(experiment="ab", reason="look"), time=float(t))
            if t == 70:
                engine.publish(ExperimentResumed(experiment="ab"), time=float(t))
        state = engine.state("experiments", "roll")
        if state.status == "running" and state.step < len(state.steps):
            step = CanaryAdvanced(
                experiment="roll", arm="candidate", step=state.step + 1, share=state.steps[state.step],
                previous_share=state.share,
            )  # fmt: skip
            engine.publish(step, time=130.0)
        engine.publish(ClockTicked(), time=1000.0)
        session = inputs(engine)
    check_handler(ExperimentHandler(), session, seed=4, unrelated_by=experiment_of)


def test_the_bayesopt_handler_conforms_on_a_study() -> None:
    with Engine.open(":memory:", seed=2, handlers=[BayesOptHandler()]) as engine:
        engine.define_study("s", space={"x": (0.0, 1.0), "y": (-1.0, 1.0)}, n_initial=3, time=0.0)
        engine.define_study("r", space={"x": (0.0, 1.0)}, method="random", time=0.0)
        for step in range(8):
            for name in ("s", "r"):
                for suggestion in engine.suggest(name, n=2 if step == 4 else 1, time=float(step)):
                    x = suggestion.params["x"]
                    engine.tell(suggestion.id, -((x - 0.3) ** 2), time=step + 0.5)
        session = inputs(engine)
    check_handler(BayesOptHandler(), session, seed=2, unrelated_by=lambda event: event.study)


def test_the_learner_handler_conforms_with_a_challenger_and_a_rollback() -> None:
    rng = np.random.default_rng(1)
    definition = LearnerDefined(model="m", learner="sgd", options={"learning_rate": 0.1}, checkpoint_every=10)
    events: list[Event] = [definition]
    for i in range(60):
        x = float(rng.normal())
        if i % 5 == 4:
            events.append(ExampleBatch(model="m", features=[{"x": x}, {"x": -x}], labels=[2 * x, -2 * x]))
        else:
            events.append(Example(model="m", features={"x": x}, label=2 * x + float(rng.normal(0, 0.1))))
        if i == 20:
            events.append(ChallengerStarted(model="m", learner="sgd", options={"learning_rate": 0.3}, min_samples=10))
        if i == 45:
            events.append(ModelRolledBack(model="m", version=2, reason="regression"))
    check_handler(LearnerHandler(), events, seed=1)


def guarded_feedback() -> list[Event]:
    """Feedback from a few users: bursts, repeats, extreme ratings, implausible timing."""
    rng = np.random.default_rng(6)
    events: list[Event] = []
    for i in range(80):
        user = f"u{i % 3}"
        score = 1.0 if user == "u2" else float(rng.random())
        ms = 0.5 if i % 17 == 0 else float(100 + rng.random())
        events.append(Feedback(prompt_id="g", variant_id="v", response_time_ms=ms, success=True,
                               quality_score=score, user_id=user, metadata={"source": f"s{i % 2}"}))  # fmt: skip
    return events


def test_the_protection_handler_conforms() -> None:
    check_handler(ProtectionHandler(FeedbackGuard(user_limit=10, burst_count=3, extreme_run=4)), guarded_feedback())


def test_the_bandit_handler_with_a_guard_conforms() -> None:
    session = bandit_session("thompson")
    check_handler(BanditHandler(guard=FeedbackGuard(user_limit=5, window_s=5.0)), session, seed=3)


def test_the_window_handler_conforms_with_late_updates() -> None:
    pipeline = WindowPipeline("latency", Tumbling(10.0), Aggregates({"response_time_ms": ("mean", "p50", "count")}),
                              key="prompt_id", out_of_orderness=2.0, late="update", allowed_lateness=20.0)  # fmt: skip
    rng = np.random.default_rng(2)
    with Engine.open(":memory:", seed=1, handlers=[WindowHandler(pipeline)]) as engine:
        for i in range(120):
            late = 15.0 if i % 11 == 10 else 0.0  # some events arrive after their window closed
            latency = float(rng.integers(50, 500))
            engine.publish(Feedback(prompt_id=f"g{i % 2}", variant_id="v", response_time_ms=latency, success=True,
                                    quality_score=float(rng.random())), time=i - late)  # fmt: skip
        session = inputs(engine)
        assert engine.read(types=["WindowUpdated"])  # the session does exercise late updates
    check_handler(WindowHandler(pipeline), session)


def window_results() -> list[Event]:
    rng = np.random.default_rng(3)
    events: list[Event] = []
    for i in range(40):
        key = f"api{i % 3}"
        values = {"response_time_ms.mean": float(rng.integers(50, 500)), "quality_score.mean": float(rng.random())}
        window = {"pipeline": "latency_1min", "key": key, "start": 60.0 * i, "end": 60.0 * (i + 1), "count": 3}
        events.append(WindowClosed(**window, values=values))
        if i % 7 == 6:
            events.append(WindowUpdated(**window, values=values, revision=1, late=1))
    return events


def test_the_feature_store_handler_conforms() -> None:
    handler = FeatureStoreHandler({"latency": ("latency_1min", "response_time_ms.mean"),
                                   "quality": ("latency_1min", "quality_score.mean")})  # fmt: skip
    check_handler(handler, window_results())


def test_the_detection_handler_conforms() -> None:
    events: list[Event] = []
    for minute in range(60):
        mean = 0.9 if minute < 40 else 0.3
        values = {"quality_score.mean": mean + minute % 3 / 100, "response_time_ms.p95": 300.0 + minute}
        events.append(WindowClosed(pipeline="quality", key="g", start=60.0 * minute, end=60.0 * (minute + 1),
                                   count=3, values=values))  # fmt: skip
    check_handler(DetectionHandler(), events, seed=1)


def test_the_readme_handler_example_runs_and_passes_check_handler() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("## Writing a handler", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert (scope["state"].count, scope["state"].total_ms, scope["slow"]) == (5, 795.0, [400.0])


# --- check_handler catches what breaks the rules -------------------------------------------------


class Seen(msgspec.Struct):
    n: int = 0
    recent: Any = ()


class Counted(Event, frozen=True):
    n: Annotated[int, msgspec.Meta(ge=0)]
    at: float = 0.0


class Broken(Handler[Seen]):
    """Counts feedback and derives a Counted for each: correct, until a subclass breaks one rule."""

    name = "broken"
    state_type = Seen

    def initial_state(self) -> Seen:
        return Seen()

    @handles(Feedback)
    def _count(self, state: Seen, envelope: Envelope[Feedback], ctx: Context) -> tuple[Seen, Sequence[Event]]:
        state.n += 1
        return state, [Counted(n=state.n, at=envelope.time)]


class ReadsTheWallClock(Broken):
    @handles(Feedback)
    def _count(self, state: Seen, envelope: Envelope[Feedback], ctx: Context) -> tuple[Seen, Sequence[Event]]:
        state.n += 1
        return state, [Counted(n=state.n, at=wall_clock.time())]


class CountsOnlyLive(Broken):
    @handles(Feedback)
    def _count(self, state: Seen, envelope: Envelope[Feedback], ctx: Context) -> tuple[Seen, Sequence[Event]]:
        if not ctx.derives:
            return state, ()  # wrong: a rebuild skips the count
        state.n += 1
        return state, [Counted(n=state.n)]


class KeepsATuple(Broken):
    @handles(Feedback)
    def _count(self, state: Seen, envelope: Envelope[Feedback], ctx: Context) -> tuple[Seen, Sequence[Event]]:
        state.n += 1
        state.recent = state.recent[-2:] + (envelope.time,)  # noqa: RUF005  # list + tuple fails after a snapshot
        return state, [Counted(n=state.n, at=sum(state.recent))]


class DerivesInvalid(Broken):
    @handles(Feedback)
    def _count(self, state: Seen, envelope: Envelope[Feedback], ctx: Context) -> tuple[Seen, Sequence[Event]]:
        state.n += 1
        return state, [Counted(n=-state.n) if state.n == 3 else Counted(n=state.n)]


class KeepsAnIdentity(Broken):
    @handles(Feedback)
    def _count(self, state: Seen, envelope: Envelope[Feedback], ctx: Context) -> tuple[Seen, Sequence[Event]]:
        state.n += 1
        state.recent = id(envelope.payload)  # wrong: the log keeps the feedback, not the object that held it
        return state, [Counted(n=state.n, at=envelope.time)]


def some_feedback(n: int = 8) -> list[Event]:
    return [
        Feedback(prompt_id="g", variant_id="v", response_time_ms=100.0, success=True, quality_score=0.5)
        for _ in range(n)
    ]


def test_a_correct_handler_passes() -> None:
    check_handler(Broken(), some_feedback())


@pytest.mark.parametrize(
    ("handler", "check", "index"),
    [
        (ReadsTheWallClock, SAME_SEED, 0),
        (CountsOnlyLive, DERIVES_FALSE, 0),
        (KeepsATuple, ROUND_TRIP, 2),
        (DerivesInvalid, OUTPUTS, 2),
        (KeepsAnIdentity, REBUILD, 0),
    ],
)
def test_check_handler_names_the_check_a_broken_handler_fails(
    handler: Callable[[], Handler[Any]], check: str, index: int
) -> None:
    with pytest.raises(AssertionError) as failed:
        check_handler(handler(), some_feedback())
    assert str(failed.value).startswith(f"check {check!r} failed for handler 'broken' at event {index} (Feedback)")


def test_check_handler_catches_outputs_that_depend_on_unrelated_inputs() -> None:
    """Broken's count runs over every prompt, so a prompt's outputs depend on the other prompt's feedback."""
    interleaved = [
        Feedback(prompt_id=f"p{i % 2}", variant_id="v", response_time_ms=100.0, success=True, quality_score=0.5)
        for i in range(6)
    ]
    check_handler(Broken(), interleaved)
    with pytest.raises(AssertionError, match=r"^check 'same seed same outputs' failed .* at event 1 .*grouped by key"):
        check_handler(Broken(), interleaved, unrelated_by=lambda event: event.prompt_id)


# --- the protocol ---------------------------------------------------------------------------------


class CountsByApply(Handler[Seen]):
    """A handler that declares no fold and overrides apply for every type in accepts."""

    name = "broken"
    accepts = (Feedback,)
    state_type = Seen

    def initial_state(self) -> Seen:
        return Seen()

    def apply(self, state: Seen, envelope: Envelope[Any], ctx: Context) -> tuple[Seen, Sequence[Event]]:
        state.n += 1
        return state, [Counted(n=state.n, at=envelope.time)]


def test_a_handler_that_only_overrides_apply_folds_as_one_with_declared_folds() -> None:
    check_handler(CountsByApply(), some_feedback())
    with (
        Engine.open(":memory:", seed=1, handlers=[CountsByApply()]) as by_apply,
        Engine.open(":memory:", seed=1, handlers=[Broken()]) as declared,
    ):
        for engine in (by_apply, declared):
            for event in some_feedback(3):
                engine.publish(event, time=1.0)
        assert [e.payload for e in by_apply.read()] == [e.payload for e in declared.read()]
        assert by_apply.state("broken").n == declared.state("broken").n == 3


def test_declared_folds_give_accepts_and_apply() -> None:
    assert Broken.accepts == (Feedback,)
    assert set(BanditHandler.accepts) >= {Feedback, ArmAdded, ArmRetired, EvidenceDiscounted}
    envelope = Envelope(1, "e1", "Feedback", "g", 2.0, 2.0, None, None, 1, some_feedback(1)[0])
    state, out = Broken().apply(Seen(), envelope, Context(2.0, "e1", 0))
    assert (state.n, out) == (1, [Counted(n=1, at=2.0)])


def test_a_fold_declared_twice_or_beside_apply_is_refused() -> None:
    with pytest.raises(TypeError, match="_a and _b both fold Feedback"):

        class Twice(Broken):
            @handles(Feedback)
            def _a(self, state: Seen, envelope: Envelope[Any], ctx: Context) -> tuple[Seen, Sequence[Event]]:
                return state, ()

            @handles(Feedback)
            def _b(self, state: Seen, envelope: Envelope[Any], ctx: Context) -> tuple[Seen, Sequence[Event]]:
                return state, ()

    with pytest.raises(TypeError, match="declare folds with @handles or override apply, not both"):

        class Both(Broken):
            def apply(self, state: Seen, envelope: Envelope[Any], ctx: Context) -> tuple[Seen, Sequence[Event]]:
                return state, ()

"""The Engine: bus order, handler chains, causation, failures, commands' errors."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from rtopt.handlers.bandits import ArmUpdated, BanditHandler

from rtopt import (
    Context,
    Decision,
    Engine,
    Envelope,
    Event,
    ExperimentDefined,
    Feedback,
    Handler,
    HandlerFailed,
    InvalidEvent,
    RtoptError,
    handles,
)


class Pinged(Event, frozen=True):
    target: str
    n: int = 0
    stream_field: ClassVar[str] = "target"


class Ponged(Event, frozen=True):
    n: int


class Count(msgspec.Struct):
    pings: int = 0


class PingPong(Handler[Count]):
    """Answers every ping with a pong, and fails on ping number 13."""

    name = "pingpong"
    state_type = Count

    def initial_state(self) -> Count:
        return Count()

    @handles(Pinged)
    def _ping(self, state: Count, envelope: Envelope[Any], ctx: Context) -> tuple[Count, Sequence[Event]]:
        state.pings += 1
        if envelope.payload.n == 13:
            raise ValueError("unlucky ping")
        return state, [Ponged(n=envelope.payload.n)]


class PongCounter(Handler[Count]):
    """Folds the pongs another handler derived."""

    name = "pongs"
    state_type = Count

    def initial_state(self) -> Count:
        return Count()

    @handles(Ponged)
    def _pong(self, state: Count, envelope: Envelope[Any], ctx: Context) -> tuple[Count, Sequence[Event]]:
        state.pings += 1
        return state, []


def test_derived_events_follow_their_cause_with_deterministic_ids() -> None:
    with Engine.open(":memory:", seed=1, handlers=[PingPong(), PongCounter()]) as engine:
        written = engine.publish_many([Pinged(target="a", n=i) for i in range(3)], time=5.0)
        assert [e.seq for e in written] == [1, 2, 3]
        events = list(engine.read())
        assert [e.type for e in events] == ["Pinged"] * 3 + ["Ponged"] * 3
        for cause, pong in zip(events[:3], events[3:], strict=True):
            assert pong.causation_id == cause.id
            assert pong.correlation_id == cause.id
            assert pong.time == cause.time == 5.0
            assert pong.stream == "a"
            assert uuid.UUID(pong.id).version == 8
            assert pong.id[:13] == cause.id[:13]  # the id index grows at its right edge
        again = Engine.open(":memory:", seed=1, handlers=[PingPong(), PongCounter()])
        again.publish_many([Pinged(target="a", n=i) for i in range(3)], time=5.0)
        assert [e.id for e in again.read()] == [e.id for e in events]
        assert len({e.id for e in events}) == 6
        assert engine.state("pongs").pings == 3


def test_subscribers_see_committed_events_in_seq_order_and_filters_apply() -> None:
    with Engine.open(":memory:", seed=1, handlers=[PingPong()]) as engine:
        everything, pongs, stream_b = [], [], []
        engine.subscribe(lambda env: everything.append(env.seq))
        engine.subscribe(lambda env: pongs.append(env.payload.n), types=[Ponged])
        engine.observe(stream="b").subscribe(lambda env: stream_b.append(env.seq))
        engine.publish(Pinged(target="a", n=1))
        engine.publish_many([Pinged(target="b", n=2), Pinged(target="a", n=3)])
        assert everything == list(range(1, 7))
        assert pongs == [1, 2, 3]
        assert stream_b == [3, 5]
        assert engine.log.last_seq() == 6


def test_a_failing_handler_becomes_an_event_and_the_rest_goes_on() -> None:
    with Engine.open(":memory:", seed=1, handlers=[PingPong(), PongCounter()]) as engine:
        engine.publish_many([Pinged(target="a", n=n) for n in (12, 13, 14)])
        failures = [env for env in engine.read(types=[HandlerFailed])]
        assert len(failures) == 1
        failed = failures[0].payload
        assert (failed.handler, failed.error_type, failed.message) == ("pingpong", "ValueError", "unlucky ping")
        assert engine.state("pingpong").pings == 3
        assert engine.state("pongs").pings == 2
        assert engine.stats().handler_failures == {"pingpong": 1}


def test_a_raising_subscriber_is_counted_and_does_not_stop_others() -> None:
    def broken(env: Envelope[Any]) -> None:
        raise RuntimeError("subscriber bug")

    with Engine.open(":memory:", seed=1, handlers=[]) as engine:
        seen: list[int] = []
        engine.subscribe(broken)
        engine.subscribe(lambda env: seen.append(env.seq))
        engine.publish_many([Pinged(target="a", n=i) for i in range(4)])
        assert seen == [1, 2, 3, 4]
        assert engine.stats().observer_errors == 4


def test_a_subscriber_that_publishes_keeps_everyone_in_seq_order() -> None:
    with Engine.open(":memory:", seed=1, handlers=[]) as engine:
        order: list[int] = []

        def echo(env: Envelope[Any]) -> None:
            if env.payload.n < 3:
                engine.publish(Pinged(target="a", n=env.payload.n + 1))

        engine.subscribe(echo, types=[Pinged])
        engine.subscribe(lambda env: order.append(env.seq))
        engine.publish(Pinged(target="a", n=0))
        assert order == [1, 2, 3, 4]


def test_register_folds_history_first(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[]) as engine:
        engine.publish_many([Pinged(target="a", n=i) for i in range(5)])
        engine.register(PongCounter())
        engine.register(PingPong())
        assert engine.state("pingpong").pings == 5
        engine.publish(Pinged(target="a", n=6))
        assert engine.state("pingpong").pings == 6
        assert engine.state("pongs").pings == 1
        with pytest.raises(RtoptError, match="already registered"):
            engine.register(PingPong())


def test_handler_randomness_depends_on_seed_and_event_only() -> None:
    a = Context(time=1.0, event_id="x", seed=3).rng.random(4)
    assert list(a) == list(Context(time=99.0, event_id="x", seed=3).rng.random(4))
    assert list(a) != list(Context(time=1.0, event_id="y", seed=3).rng.random(4))
    assert list(a) != list(Context(time=1.0, event_id="x", seed=4).rng.random(4))


def test_handler_generators_spawn_the_same_children_every_time() -> None:
    def children(rng) -> list[float]:
        return [child.random() for child in rng.spawn(2)] + [child.random() for child in rng.spawn(1)]

    first = children(Context(time=1.0, event_id="x", seed=3).rng)
    assert first == children(Context(time=1.0, event_id="x", seed=3).rng)
    assert len(set(first)) == 3  # each spawn gives new children, as SeedSequence.spawn does
    assert first != children(Context(time=1.0, event_id="y", seed=3).rng)


def test_commands_reject_bad_arguments_with_the_field_named() -> None:
    with Engine.open(":memory:", seed=2, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"])
        cases = [
            (lambda: engine.define_experiment("g", arms=["a"]), "experiment"),
            (lambda: engine.define_experiment("h", arms=["a", "a"]), "arms"),
            (lambda: engine.define_experiment("h", arms=[]), "arms"),
            (lambda: engine.define_experiment("h", arms=["a"], policy="nope"), "policy"),
            (lambda: engine.define_experiment("h", arms=["a"], quality_threshold=1.5), "options.quality_threshold"),
            (lambda: engine.define_experiment("h", arms=["a"], colour="red"), "options.colour"),
            (lambda: engine.decide("missing"), "experiment"),
            (lambda: engine.decide("g", available=["c"]), "available"),
            (lambda: engine.decide("g", time=float("nan")), "time"),
            (
                lambda: engine.feedback("no-such-id", success=True, quality_score=0.5, response_time_ms=1.0),
                "decision_id",
            ),
        ]
        before = engine.log.last_seq()
        for call, field in cases:
            with pytest.raises(InvalidEvent) as caught:
                call()
            assert caught.value.field == field, (field, str(caught.value))
        decision = engine.decide("g")
        with pytest.raises(InvalidEvent) as caught:
            engine.feedback(decision.id, success=True, quality_score=1.7, response_time_ms=1.0)
        assert caught.value.field == "quality_score"
        assert engine.log.last_seq() == before + 1
        rejected = engine.stats().rejected
        assert rejected["unknown decision"] == 1
        assert rejected["invalid feedback"] == 1
        assert rejected["unknown experiment"] == 1


def test_decide_records_what_off_policy_evaluation_needs() -> None:
    with Engine.open(":memory:", seed=2, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b", "c"])
        decision = engine.decide("g", context={"hour_sin": 0.5}, available=["a", "c"], time=10.0)
        assert decision.arm in {"a", "c"}
        assert decision.candidates == ["a", "c"]
        assert decision.context == {"hour_sin": 0.5}
        assert 0.0 < decision.propensity <= 1.0
        assert decision.policy == "thompson"
        stored = next(engine.read(types=[Decision]))
        assert stored.id == decision.id and stored.payload == decision.payload


def test_reopening_needs_the_recorded_seed(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    Engine.open(path, seed=5, handlers=[]).close()
    with pytest.raises(RtoptError, match="seed 5"):
        Engine.open(path, seed=6, handlers=[])
    with Engine.open(path, handlers=[]) as engine:
        assert engine.seed == 5


def test_feedback_is_learnt_once_and_the_rest_is_rejected_visibly() -> None:
    with Engine.open(":memory:", seed=9, handlers=[BanditHandler(feedback_horizon_s=60.0)]) as engine:
        engine.define_experiment("g", arms=["a", "b"], time=0.0)
        first = engine.decide("g", time=1.0)
        late = engine.decide("g", time=2.0)
        engine.feedback(first.id, success=True, quality_score=0.9, response_time_ms=5.0, time=3.0)
        engine.feedback(first.id, success=True, quality_score=0.9, response_time_ms=5.0, time=4.0)
        engine.feedback(late.id, success=True, quality_score=0.9, response_time_ms=5.0, time=500.0)
        mismatched = engine.decide("g", time=501.0)
        other_arm = "a" if mismatched.arm == "b" else "b"
        engine.publish(
            Feedback(
                prompt_id="g",
                variant_id=other_arm,
                decision_id=mismatched.id,
                success=True,
                quality_score=1.0,
                response_time_ms=1.0,
            ),
            time=502.0,
        )
        reasons = [env.payload.reason for env in engine.read(types=["FeedbackRejected"])]
        assert reasons == ["duplicate feedback", "unknown or expired decision", "feedback does not match its decision"]
        assert [env.payload.decision_id for env in engine.read(types=[ArmUpdated])] == [first.id]
        state = engine.state("bandit", "g")
        assert sum(arm.rewards for arm in state.arms.values()) == 1
        assert engine.state("bandit").ledger.rejected == {
            "duplicate feedback": 1,
            "unknown or expired decision": 1,
            "feedback does not match its decision": 1,
        }


class Broken(Event, frozen=True):
    ratio: float


class EmitsInvalid(Handler[Count]):
    """Derives an invalid event on every third ping, after counting it."""

    name = "emits_invalid"
    state_type = Count

    def initial_state(self) -> Count:
        return Count()

    @handles(Pinged)
    def _ping(self, state: Count, envelope: Envelope[Any], ctx: Context) -> tuple[Count, Sequence[Event]]:
        bad = Broken(ratio=float("nan") if envelope.payload.n % 3 == 0 else 0.5)
        state.pings += 1
        return state, [bad]


def test_an_invalid_derived_event_fails_the_same_way_live_and_in_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[EmitsInvalid()]) as engine:
        engine.publish_many([Pinged(target="a", n=n) for n in range(7)])
        live = engine.state("emits_invalid").pings
        failures = [env.payload for env in engine.read(types=[HandlerFailed])]
    assert live == 7
    assert [f.error_type for f in failures] == ["InvalidEvent"] * 3
    assert "ratio" in failures[0].message
    with Engine.open(path, read_only=True, handlers=[EmitsInvalid()]) as rebuilt:
        assert rebuilt.state("emits_invalid").pings == live
    assert Engine.verify(path, handlers=[EmitsInvalid()]).ok


def test_a_storage_failure_fails_every_waiting_caller_and_loses_nothing_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[PingPong()]) as engine:
        engine.publish(Pinged(target="a", n=1))
        log = engine.log

        def broken_append(rows: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(log, "append", broken_append)
        with pytest.raises(OSError, match="disk full"):
            engine.publish_many([Pinged(target="a", n=2), Pinged(target="a", n=3)], time=1.0)
        monkeypatch.undo()
        # the handler's state was rebuilt from the log: the failed pings are not in it
        assert engine.state("pingpong").pings == 1
        assert engine.publish(Pinged(target="a", n=4)).seq == 3
        assert [env.payload.n for env in engine.read(types=[Pinged])] == [1, 4]


def test_publish_refuses_what_the_commands_would_refuse() -> None:
    with Engine.open(":memory:", seed=4, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"])
        before = engine.log.last_seq()
        bad = [
            (ExperimentDefined(experiment="h", arms=["a", "a"], policy="thompson"), "arms"),
            (ExperimentDefined(experiment="g", arms=["a"], policy="thompson"), "experiment"),
            (ExperimentDefined(experiment="h", arms=["a"], policy="ucb9"), "policy"),
            (Decision(experiment="g", arm="a", policy="thompson", propensity=1.0), "policy"),
        ]
        for event, field in bad:
            with pytest.raises(InvalidEvent) as caught:
                engine.publish(event)
            assert caught.value.field == field
        with pytest.raises(InvalidEvent, match="already defined"):
            engine.publish_many([ExperimentDefined(experiment="h", arms=["a"], policy="thompson")] * 2)
        assert engine.log.last_seq() == before
        # a decision made elsewhere, by a policy this engine does not run, is a fact it records
        engine.publish(Decision(experiment="g", arm="b", policy="human", propensity=1.0))
        assert engine.stats().rejected["invalid command"] == 5


def test_a_closed_engine_says_so() -> None:
    engine = Engine.open(":memory:", seed=1, handlers=[])
    engine.close()
    engine.close()
    with pytest.raises(RtoptError, match="closed"):
        engine.publish(Pinged(target="a"))


# --- batches ---------------------------------------------------------------------------------------


def _bandit_rounds(engine: Engine, rounds: range) -> None:
    """Decide, then answer every decision: success for arm "a" only."""
    for i in rounds:
        decision = engine.decide("g", time=10.0 + i)
        ok = decision.arm == "a"
        engine.feedback(decision.id, success=ok, quality_score=float(ok), response_time_ms=5.0, time=10.5 + i)


def _rows_without_recorded_at(engine: Engine) -> list[tuple]:
    return [row[:5] + row[6:] for row in engine.log.rows(1, None)]


def test_a_batch_writes_the_same_events_as_single_calls_but_in_one_go() -> None:
    one_by_one = Engine.open(":memory:", seed=3, handlers=[BanditHandler()])
    batched = Engine.open(":memory:", seed=3, handlers=[BanditHandler()])
    with one_by_one, batched:
        for engine in (one_by_one, batched):
            engine.define_experiment("g", arms=["a", "b", "c"], policy="ucb1", time=0.0)
        _bandit_rounds(one_by_one, range(60))
        seen: list[int] = []
        batched.subscribe(lambda env: seen.append(env.seq))
        with batched.batch():
            _bandit_rounds(batched, range(30))
            # inside: the state has learnt, but nothing is in the log or delivered yet
            assert batched.state("bandit", "g").rewards == 30
            assert batched.log.last_seq() == 1 and seen == []
        assert seen == list(range(2, batched.log.last_seq() + 1))
        with batched.batch(), batched.batch():  # a nested batch joins the outer one
            _bandit_rounds(batched, range(30, 60))
        assert _rows_without_recorded_at(batched) == _rows_without_recorded_at(one_by_one)
        assert batched.stats().published == one_by_one.stats().published == 121
        assert batched.stats().derived == one_by_one.stats().derived


def test_a_batch_that_raises_writes_nothing_and_state_returns_to_the_log() -> None:
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"], policy="thompson", time=0.0)
        _bandit_rounds(engine, range(5))
        before = engine.log.last_seq()
        with pytest.raises(KeyError, match="stop"), engine.batch():
            _bandit_rounds(engine, range(5, 25))
            raise KeyError("stop")
        assert engine.log.last_seq() == engine.position == before
        assert engine.state("bandit", "g").rewards == 5
        with pytest.raises(RtoptError, match=r"inside engine\.batch"), engine.batch():
            engine.snapshot()
        _bandit_rounds(engine, range(5, 6))
        assert engine.state("bandit", "g").rewards == 6


def test_inside_a_batch_bad_input_is_refused_alone_and_a_write_failure_drops_the_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"], policy="thompson", time=0.0)
        with engine.batch():
            decision = engine.decide("g", time=1.0)
            with pytest.raises(InvalidEvent) as caught:
                engine.feedback("no-such-decision", success=True, quality_score=1.0, response_time_ms=1.0)
            assert caught.value.field == "decision_id"
            engine.feedback(decision.id, success=True, quality_score=1.0, response_time_ms=1.0, time=2.0)
            with pytest.raises(InvalidEvent) as caught:  # its id is already taken, inside the batch
                repeat = Feedback(
                    prompt_id="g", variant_id="a", success=True, quality_score=1.0, response_time_ms=1.0
                )
                engine.publish(repeat, id=decision.id)
            assert caught.value.field == "id"
        assert engine.stats().rejected == {"unknown decision": 1, "duplicate id": 1}
        assert engine.state("bandit", "g").rewards == 1
        last = engine.log.last_seq()

        def broken_append(rows: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(engine.log, "append", broken_append)
        with pytest.raises(OSError, match="disk full"), engine.batch():
            _bandit_rounds(engine, range(3, 10))
        monkeypatch.undo()
        assert engine.log.last_seq() == last and engine.state("bandit", "g").rewards == 1


def test_a_batch_is_invisible_to_other_threads_and_an_abandoned_batch_ids_are_not_reused() -> None:
    import threading

    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"], policy="thompson", time=0.0)
        refused: list[BaseException] = []
        with pytest.raises(KeyError), engine.batch():
            decision = engine.decide("g", time=1.0)

            def answer_from_another_thread() -> None:
                try:
                    engine.feedback(decision.id, success=True, quality_score=1.0, response_time_ms=1.0, time=2.0)
                except InvalidEvent as exc:
                    refused.append(exc)

            other = threading.Thread(target=answer_from_another_thread)
            other.start()
            other.join()
            raise KeyError("the block fails: the decision is never written")
        assert [exc.field for exc in refused] == ["decision_id"]
        again = engine.decide("g", time=3.0)
        assert again.id != decision.id and engine.log.get(decision.id) is None


def test_an_engine_without_handlers_records_a_study_definition() -> None:
    from rtopt import StudyDefined

    with Engine.open(":memory:", seed=3, handlers=[]) as engine:
        envelope = engine.publish(StudyDefined(study="s", space={"x": {"low": 0.0, "high": 1.0}}))
        assert envelope.seq == 1 and engine.stats().rejected == {}


def test_feedback_finds_a_recent_decision_in_memory_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2"], policy="ucb1", time=1.0)
        decisions = [engine.decide("greeting", time=2.0 + i).id for i in range(3)]
    with Engine.open(path, handlers=[BanditHandler()]) as engine:

        def no_lookup(event_id: str) -> None:
            raise AssertionError(f"read {event_id} from the log")

        engine.log.get = no_lookup  # type: ignore[method-assign]
        for i, decision in enumerate(decisions):
            engine.feedback(decision, success=True, quality_score=0.5, response_time_ms=1.0, time=10.0 + i)
        assert engine.state("bandit", "greeting").rewards == 3

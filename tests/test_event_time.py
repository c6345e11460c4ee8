"""Event-time sanity: inputs far ahead of a log's time are rejected or clamped before anything is folded,
and feedback with a wrong clock never expires other decisions."""

from __future__ import annotations

import time as wall_clock
from pathlib import Path

import pytest
from rtopt.handlers.bandits import ArmUpdated, BanditHandler
from rtopt.handlers.experiments import ExperimentHandler

from rtopt import Engine, Feedback, FeedbackRejected, InvalidEvent

DAY = 86_400.0
NOW = 1.7e9  # event times of these tests: a fixed moment in the past


def _answer(engine: Engine, decision_id: str, time: float) -> None:
    engine.feedback(decision_id, success=True, quality_score=0.9, response_time_ms=80.0, time=time)


def _rating(prompt: str) -> Feedback:
    return Feedback(prompt_id=prompt, variant_id="a", response_time_ms=1.0, success=True, quality_score=0.5)


def _decisions(engine: Engine, experiment: str, count: int, start: float = NOW) -> list[str]:
    return [engine.decide(experiment, time=start + i).id for i in range(count)]


def test_feedback_in_milliseconds_is_rejected_before_it_expires_anything() -> None:
    """A Feedback whose time is milliseconds given as seconds is refused, counted and folded nowhere: the
    valid feedback after it is learnt from, all of it."""
    with Engine.open(":memory:", seed=1, handlers=[BanditHandler(), ExperimentHandler()]) as engine:
        engine.define_experiment("bandit", arms=["a", "b"], time=NOW)
        engine.define_experiment("test", arms=["a", "b"], policy="ab_test", start=True, time=NOW)
        bandit, test = _decisions(engine, "bandit", 10), _decisions(engine, "test", 10)
        with pytest.raises(InvalidEvent, match="milliseconds") as raised:
            _answer(engine, bandit[0], (NOW + 20.0) * 1000)
        assert (raised.value.field, raised.value.value) == ("time", (NOW + 20.0) * 1000)
        for decision_id in bandit + test:
            _answer(engine, decision_id, NOW + 30.0)
        assert engine.stats().rejected == {"time too far ahead": 1}
        assert len(list(engine.read(types=[ArmUpdated]))) == 10
        assert not list(engine.read(types=[FeedbackRejected]))
        assert sum(arm.feedback for arm in engine.state("experiments", "test").stats.values()) == 10


@pytest.mark.parametrize("handler", [BanditHandler, ExperimentHandler])
def test_feedback_with_a_wrong_clock_expires_no_other_decision(handler: type) -> None:
    """Feedback an hour late for a one-minute horizon, within the kernel's bound, reaches the ledger: it
    is rejected for its own decision, the other decisions still wait for theirs, and the rejection
    shows in the engine's stats."""
    with Engine.open(":memory:", seed=2, handlers=[handler(feedback_horizon_s=60.0)]) as engine:
        options = {"policy": "thompson"} if handler is BanditHandler else {"policy": "ab_test", "start": True}
        engine.define_experiment("g", arms=["a", "b"], time=NOW, **options)
        decisions = _decisions(engine, "g", 5)
        _answer(engine, decisions[0], NOW + 3600.0)
        for decision_id in decisions[1:]:
            _answer(engine, decision_id, NOW + 30.0)
        rejected = [(env.payload.decision_id, env.payload.reason) for env in engine.read(types=[FeedbackRejected])]
        assert rejected == [(decisions[0], "unknown or expired decision")]
        assert engine.stats().rejected == {"feedback rejected: unknown or expired decision": 1}
        ledger = engine.state(handler.name).ledger
        assert (len(ledger.pending), len(ledger.settled)) == (1, 4)


def test_clamped_times_are_recorded_at_the_stream_time_and_replayed(tmp_path: Path) -> None:
    path = tmp_path / "clamped.sqlite"
    with Engine.open(path, seed=3, handlers=[BanditHandler()], future_time="clamp") as engine:
        engine.define_experiment("g", arms=["a", "b"], time=NOW)
        decisions = _decisions(engine, "g", 4)
        _answer(engine, decisions[0], (NOW + 10.0) * 1000)
        for decision_id in decisions[1:]:
            _answer(engine, decision_id, NOW + 10.0)
        times = [env.time for env in engine.read(types=[Feedback])]
        assert times == [NOW + 3.0, NOW + 10.0, NOW + 10.0, NOW + 10.0]  # the first at the stream's latest time
        assert (engine.stats().clamped_times, engine.stats().rejected) == (1, {})
        assert len(list(engine.read(types=[ArmUpdated]))) == 4
    assert Engine.verify(path, handlers=[BanditHandler()]).ok


def test_the_bound_follows_the_log_time_across_reopening(location: str) -> None:
    """An empty log bounds nothing; afterwards an input may run a day ahead of its stream's latest event
    time (the log's for a new stream), or of the wall clock when that is later, also after reopening."""
    ahead = wall_clock.time() + 30 * DAY  # beyond the wall clock: only the log's time admits what follows
    with Engine.open(location, seed=4, handlers=[]) as engine:
        engine.publish(_rating("p"), time=ahead)
    with Engine.open(location, handlers=[]) as engine:
        for stream, time in (("p", ahead + 0.9 * DAY), ("new", ahead + 1.8 * DAY)):
            engine.publish(_rating(stream), time=time)
        with pytest.raises(InvalidEvent, match="stream 'p'"):
            engine.publish(_rating("p"), time=ahead + 1.95 * DAY)
        with pytest.raises(InvalidEvent, match="the log"):
            engine.publish(_rating("other"), time=ahead + 3 * DAY)
        assert engine.stats().rejected == {"time too far ahead": 2}


def test_a_stream_idle_for_days_takes_the_wall_clock_time() -> None:
    with Engine.open(":memory:", seed=5, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"], time=wall_clock.time() - 5 * DAY)
        decision = engine.decide("g", time=wall_clock.time())
        _answer(engine, decision.id, wall_clock.time())
        assert engine.stats().rejected == {}


def test_events_other_processes_commit_move_the_bound(pg_url: str) -> None:
    ahead = wall_clock.time() + 30 * DAY
    first = Engine.open(pg_url, seed=6, handlers=[])
    second = Engine.open(pg_url, seed=6, handlers=[])
    try:
        first.publish(_rating("p"), time=ahead)
        second.publish(_rating("q"), time=ahead)
        first.publish(_rating("p"), time=ahead + 0.9 * DAY)
        # the second engine learns the log's time from the events it follows when it commits
        second.publish(_rating("q"), time=ahead)
        second.publish(_rating("new"), time=ahead + 1.8 * DAY)
        assert second.stats().rejected == {}
    finally:
        first.close()
        second.close()


def test_engine_options_are_checked() -> None:
    with pytest.raises(ValueError, match="future_time"):
        Engine.open(":memory:", future_time="ignore")
    with pytest.raises(ValueError, match="max_time_ahead_s"):
        Engine.open(":memory:", max_time_ahead_s=-1.0)

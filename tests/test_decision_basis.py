"""A decision is made on the state its engine holds before the commit takes the log's write lock; when other
processes append in between, it records that state's seq as its basis, and verify re-makes it there.

Two engines on one SQLite file stand for two processes: the second one commits at the moment the first has
made its decision and not yet taken the write lock (a deterministic interleaving of what processes do at
once)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine, InvalidEvent, RtoptError
from rtopt.writer import STALEST_BASIS

GREEDY = {"policy": "epsilon_greedy", "epsilon": 0.0}


def learn(engine: Engine, arm: str, success: bool, times: int = 1) -> None:
    """Feedback on ``times`` decisions of "exp" restricted to ``arm``."""
    for _ in range(times):
        decision = engine.decide("exp", available=[arm])
        engine.feedback(decision.id, success=success, quality_score=float(success), response_time_ms=5.0)


def learn_a_half(engine: Engine) -> None:
    """One success and one failure of arm "a"."""
    learn(engine, "a", True)
    learn(engine, "a", False)


def between_making_and_locking(engine: Engine, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[], None]) -> None:
    """Run ``meanwhile`` once, right after ``engine`` makes its next answer and before it takes the write lock."""
    writer = engine._writer
    make = writer._make_answers
    calls = []

    def made_then_others_write(tickets: list, *, final: bool = False) -> None:
        make(tickets, final=final)
        if not calls:
            calls.append(True)
            meanwhile()

    monkeypatch.setattr(writer, "_make_answers", made_then_others_write)


@pytest.fixture
def two_engines(tmp_path: Path):
    path = tmp_path / "shared.sqlite"
    with Engine.open(path, seed=11, handlers=[BanditHandler()]) as first:
        first.define_experiment("exp", arms=["a", "b"], **GREEDY)
        with Engine.open(path, handlers=[BanditHandler()]) as second:
            yield path, first, second


def test_a_decision_records_the_state_it_was_made_on_and_verify_re_makes_it_there(
    two_engines: tuple[Path, Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, first, second = two_engines
    learn_a_half(first)
    learn(first, "b", False)  # greedy on this state: "a", at 1/2 against 0/1
    basis = first.position
    between_making_and_locking(first, monkeypatch, lambda: learn(second, "b", True, times=3))  # "b" leads: 3/4

    made_early = first.decide("exp")
    made_now = first.decide("exp")

    assert (made_early.payload.arm, made_early.payload.basis) == ("a", basis)
    assert made_early.seq == basis + 3 * 3 + 1  # after the other engine's three Decision, Feedback, ArmUpdated
    assert (made_now.payload.arm, made_now.payload.basis) == ("b", None)
    report = Engine.verify(path)
    assert report.ok, report
    assert report.decisions == 8


def test_a_decision_whose_id_another_process_gave_meanwhile_is_made_again(
    two_engines: tuple[Path, Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, first, second = two_engines  # neither has seen the other write yet: both name inputs alike
    theirs = []
    between_making_and_locking(first, monkeypatch, lambda: theirs.append(second.decide("exp")))

    ours = first.decide("exp")

    assert ours.id != theirs[0].id
    assert ours.payload.basis is None  # made again on the state with the other decision in it
    assert ours.seq == theirs[0].seq + 1
    assert Engine.verify(path).ok


def test_a_decision_on_a_state_far_behind_the_log_is_made_again(
    two_engines: tuple[Path, Engine, Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, first, second = two_engines
    learn_a_half(first)
    rounds = STALEST_BASIS // 3 + 1  # each round appends three events
    between_making_and_locking(first, monkeypatch, lambda: learn(second, "b", True, times=rounds))

    decision = first.decide("exp")

    assert decision.payload.basis is None
    assert decision.payload.arm == "b"  # made on the state that holds the other engine's learning
    assert Engine.verify(path).ok


def test_a_log_one_engine_writes_records_no_basis(tmp_path: Path) -> None:
    with Engine.open(tmp_path / "alone.sqlite", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("exp", arms=["a", "b"])
        decisions = [engine.decide("exp") for _ in range(20)]
    assert all(decision.payload.basis is None for decision in decisions)


def test_state_read_between_commits_holds_what_another_process_learnt(two_engines: tuple[Path, Engine, Engine]) -> None:
    _, first, second = two_engines
    learn(second, "b", True, times=2)

    arms = first.state("bandit", "exp").arms  # first has committed nothing since the other engine learnt

    assert (arms["b"].pulls, arms["b"].n, arms["b"].total) == (2, 2.0, 2.0)
    assert first.position == second.position


def test_a_batch_starts_from_what_another_process_appended_before_it(two_engines: tuple[Path, Engine, Engine]) -> None:
    path, first, second = two_engines
    learn(first, "a", True)
    learn(second, "b", True)  # first has not looked since

    with first.batch():
        decision = first.decide("exp")
        first.feedback(decision.id, success=False, quality_score=0.0, response_time_ms=5.0)

    assert decision.payload.basis is None and first.position == second.position + 3
    assert Engine.verify(path).ok


def test_feedback_on_a_closed_engine_says_it_is_closed(tmp_path: Path) -> None:
    engine = Engine.open(tmp_path / "log.sqlite", seed=1, handlers=[BanditHandler()])
    engine.define_experiment("exp", arms=["a", "b"])
    decision = engine.decide("exp")
    engine.close()
    with pytest.raises(RtoptError, match="is closed"):
        engine.feedback(decision.id, success=True, quality_score=1.0, response_time_ms=5.0)


def test_deciding_on_an_experiment_another_process_just_defined_succeeds(
    two_engines: tuple[Path, Engine, Engine],
) -> None:
    path, first, second = two_engines
    first.decide("exp")  # first commits alone: it does not look for others' events before its next answer
    second.define_experiment("new", arms=["x", "y"])

    decision = first.decide("new")
    with pytest.raises(InvalidEvent, match="no such experiment"):
        first.decide("never defined")

    assert decision.payload.experiment == "new"
    assert first.stats().rejected == {"unknown experiment": 1}
    assert Engine.verify(path).ok


def test_an_engine_whose_folded_events_the_log_lost_starts_again_from_the_log(tmp_path: Path) -> None:
    """Commits this engine folded are lost (a server's crash with asynchronous commit; here an older copy of
    the file restored under it) and another process appends past them: the engine sees that the event at its
    position is not the one it folded, and rebuilds from the log rather than deciding on events it lost."""
    path, older = tmp_path / "log.sqlite", tmp_path / "older.sqlite"
    with Engine.open(path, seed=5, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("exp", arms=["a", "b"], **GREEDY)
        learn(engine, "a", False)
        learn(engine, "b", False)
        with sqlite3.connect(path) as live, sqlite3.connect(older) as copy:
            live.backup(copy)
        learn(engine, "a", True, times=2)  # lost below: on the state with them, greedy would choose "a"
        with sqlite3.connect(older) as copy, sqlite3.connect(path) as live:
            copy.backup(live)
        with Engine.open(path, handlers=[BanditHandler()]) as other:
            learn(other, "b", True, times=3)  # more events than were lost

        decision = engine.decide("exp")

        arms = engine.state("bandit", "exp").arms
        assert decision.payload.arm == "b"  # 3/4 against 0/1
        assert (arms["a"].pulls, arms["b"].pulls) == (1, 5)
    assert Engine.verify(path).ok

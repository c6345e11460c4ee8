"""Several processes on one log: they create it together, decide and learn on one experiment (on SQLite and on
PostgreSQL), and no call fails because another process wrote."""

from __future__ import annotations

import json
import os
import random
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest
from processes_support import ARMS, SPAWN, SUCCESS, WAIT_S, failing_the_others, learnt_exactly_once, play_round
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine, InvalidEvent, ReadOnlyLog, RtoptError, StorageUnavailable, WriteConflict
from rtopt.events import Decision, Feedback


def open_when_all_are_ready(paths: list[str], ready: Barrier) -> list[str]:
    """Open each new log of ``paths`` at the moment the other processes open it too; returns each one's seed."""
    seeds = []
    with failing_the_others(ready):
        for path in paths:
            ready.wait(WAIT_S)
            with Engine.open(path, handlers=[]) as engine:
                seeds.append(engine.log.meta()["seed"])
    return seeds


def decide_and_learn(path: str, policy: str, rounds: int, worker: int, ready: Barrier) -> None:
    """``rounds`` of decide then feedback on the experiment "shared", started with the other processes."""
    outcomes = random.Random(worker)
    with failing_the_others(ready), Engine.open(path, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("shared", arms=ARMS, policy=policy)
        ready.wait(WAIT_S)
        for _ in range(rounds):
            play_round(engine, outcomes)


def run_together(target: object, argument_lists: list[tuple[object, ...]]) -> None:
    """Run ``target`` in one spawned process per argument list, all waiting on one barrier (their last
    argument), and fail if any raised or did not end within the bound."""
    ready = SPAWN.Barrier(len(argument_lists))
    processes = [SPAWN.Process(target=target, args=(*arguments, ready)) for arguments in argument_lists]
    for process in processes:
        process.start()
    for process in processes:
        process.join(WAIT_S)
    for process in processes:
        if process.is_alive():
            process.kill()
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_processes_creating_one_new_log_at_once_get_one_log_and_no_error(tmp_path: Path) -> None:
    paths = [str(tmp_path / f"log{i}.sqlite") for i in range(20)]
    with SPAWN.Pool(2) as pool:
        ready = SPAWN.Manager().Barrier(2)
        both = [pool.apply_async(open_when_all_are_ready, (paths, ready)) for _ in range(2)]
        first, second = (result.get(WAIT_S) for result in both)
    assert first == second  # each log has the one seed written when it was created
    for path in paths:
        with Engine.open(path, read_only=True, handlers=[]) as engine:
            assert engine.position == 0 and engine.log.audit() is None


def check_every_feedback_learnt_once(path: str, rounds: int) -> None:
    """Every Feedback has exactly one ArmUpdated, ``rounds`` decisions pulled the arms, and verify passes."""
    decisions, feedback = learnt_exactly_once(path)
    assert len(decisions) == len(feedback) == rounds


def run_rounds(location: str, policy: str, processes: int, rounds: int) -> None:
    run_together(decide_and_learn, [(location, policy, rounds, worker) for worker in range(processes)])
    check_every_feedback_learnt_once(location, processes * rounds)


@pytest.mark.parametrize("policy", ["thompson", "ucb1"])
def test_four_processes_decide_and_learn_on_one_experiment(location: str, policy: str) -> None:
    run_rounds(location, policy, processes=4, rounds=300)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["thompson", "ucb1"])
def test_four_processes_decide_and_learn_two_thousand_rounds_each(location: str, policy: str) -> None:
    run_rounds(location, policy, processes=4, rounds=2_000)


def pseudo_regret(path: str) -> float:
    """What the log's decisions gave up: for each, the best arm's success rate less the chosen arm's."""
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        chosen = [SUCCESS[envelope.payload.arm] for envelope in engine.read(types=[Decision])]
    return sum(max(SUCCESS.values()) - rate for rate in chosen)


@pytest.mark.slow
@pytest.mark.statistical
def test_four_processes_learn_about_as_well_as_one_making_as_many_decisions(tmp_path: Path) -> None:
    """Thompson sampling over 6 seeds, 800 rounds in all: one process alone, or four of 200 rounds each
    deciding on states that may lack the others' latest feedback. The four's mean regret is not above 1.15
    times the one's by more than two standard errors of the difference."""
    alone, together = [], []
    seeds = 6
    for seed in range(seeds):
        paths = [str(tmp_path / f"{name}{seed}.sqlite") for name in ("alone", "together")]
        for path in paths:
            Engine.open(path, seed=seed, handlers=[]).close()
        decide_and_learn(paths[0], "thompson", 800, 10 * seed, SPAWN.Barrier(1))
        run_together(decide_and_learn, [(paths[1], "thompson", 200, 10 * seed + i) for i in range(4)])
        alone.append(pseudo_regret(paths[0]))
        together.append(pseudo_regret(paths[1]))
    bound = 1.15 * np.mean(alone)
    error = np.sqrt(np.var(together, ddof=1) / seeds + 1.15**2 * np.var(alone, ddof=1) / seeds)
    assert np.mean(together) - bound <= 2 * error, (alone, together)


def test_two_engines_in_one_process_take_turns_on_one_experiment(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with (
        Engine.open(path, seed=1, handlers=[BanditHandler()]) as first,
        Engine.open(path, handlers=[BanditHandler()]) as second,
    ):
        defined = first.define_experiment("shared", arms=ARMS, policy="ucb1")
        assert second.define_experiment("shared", arms=ARMS, policy="ucb1") == defined  # the same: recorded once
        with pytest.raises(InvalidEvent, match="already defined"):
            second.define_experiment("shared", arms=ARMS, policy="thompson")
        for i in range(30):
            deciding, learning = (first, second) if i % 2 else (second, first)
            decision = deciding.decide("shared")
            # the other engine takes feedback on it: it folds the decision before screening the feedback
            learning.feedback(decision.id, success=i % 3 == 0, quality_score=0.5, response_time_ms=10.0)
    check_every_feedback_learnt_once(str(path), 30)


def test_defining_again_what_another_engine_defined_returns_it_caught_up(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with (
        Engine.open(path, seed=1, handlers=[BanditHandler()]) as first,
        Engine.open(path, handlers=[BanditHandler()]) as second,
    ):
        defined = first.define_experiment("e", arms=ARMS, policy="epsilon_greedy", epsilon=1)
        with pytest.raises(InvalidEvent, match="already defined"):  # 1.0 is not the 1 recorded
            second.define_experiment("e", arms=ARMS, policy="epsilon_greedy", epsilon=1.0)
        rejected = second.stats().rejected
        assert second.define_experiment("e", arms=ARMS, policy="epsilon_greedy", epsilon=1) == defined
        assert second.stats().rejected == rejected  # returning the recorded definition refuses nothing
        assert second.position >= defined.seq
        assert set(second.state("bandit", "e").arms) == set(ARMS)
    with Engine.open(path, read_only=True, handlers=[BanditHandler()]) as reader, pytest.raises(ReadOnlyLog):
        reader.define_experiment("e", arms=ARMS, policy="epsilon_greedy", epsilon=1)
    closed = Engine.open(path, handlers=[BanditHandler()])
    closed.close()
    with pytest.raises(RtoptError, match="is closed"):
        closed.define_experiment("e", arms=ARMS, policy="epsilon_greedy", epsilon=1)


def test_logs_open_in_a_folder_that_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rtopt.storage.sqlite as sqlite_storage

    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as engine:
        engine.publish(feedback())
    opened = sqlite_storage.os.open

    def unreadable_folder(file: str | Path, flags: int, *args: int) -> int:
        if Path(file) == tmp_path:
            raise PermissionError(f"{file}: permission denied")
        return opened(file, flags, *args)

    monkeypatch.setattr(sqlite_storage.os, "open", unreadable_folder)
    with Engine.open(path, handlers=[]) as engine:
        assert engine.position == 1
    with Engine.open(tmp_path / "new.sqlite", seed=2, handlers=[]) as engine:
        assert engine.position == 0


def test_catching_up_with_another_engine_does_not_report_open_progress(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    calls: list[tuple[int, int]] = []
    with (
        Engine.open(path, seed=1, handlers=[BanditHandler()]) as first,
        Engine.open(path, handlers=[BanditHandler()], progress=lambda done, end: calls.append((done, end))) as second,
    ):
        opened = len(calls)
        first.define_experiment("e", arms=ARMS)
        second.decide("e")
        assert second.position == 2 and len(calls) == opened


def feedback() -> Feedback:
    return Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=1.0)


def test_a_commit_refused_before_folding_keeps_the_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[BanditHandler()]) as engine:
        engine.publish(feedback())
        engine.log._writer.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageUnavailable):
            engine.publish(feedback())
        other.execute("ROLLBACK")
        other.close()
        rebuilds: list[int] = []
        monkeypatch.setattr(engine._writer, "rebuild", lambda: rebuilds.append(1))
        assert engine.publish(feedback()).seq == 2 and rebuilds == []


def test_an_append_that_finds_others_came_first_is_made_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log that found, once a broken connection was made anew, that another process appended meanwhile
    raises WriteConflict, nothing written: the engine starts the commit again from the log, and the call
    succeeds."""
    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("shared", arms=ARMS, policy="ucb1")
        decision = engine.decide("shared")
        append = engine.log.append
        conflicts = []

        def others_came_first(rows: list) -> int:
            if not conflicts:
                conflicts.append(rows)
                raise WriteConflict("another process appended first; nothing was written")
            return append(rows)

        monkeypatch.setattr(engine.log, "append", others_came_first)
        learnt = engine.feedback(decision.id, success=True, quality_score=1.0, response_time_ms=5.0)

    assert [row[2] for row in conflicts[0]] == ["Feedback", "ArmUpdated"]
    assert learnt.seq == decision.seq + 1
    check_every_feedback_learnt_once(str(path), 1)


def test_catching_up_that_keeps_failing_names_its_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import rtopt.writer

    path = tmp_path / "log.sqlite"
    with Engine.open(path, seed=1, handlers=[]) as first, Engine.open(path, handlers=[BanditHandler()]) as second:
        first.publish(feedback())
        cause = sqlite3.OperationalError("disk I/O error")

        def failing_fold(*args: object) -> None:
            raise cause

        monkeypatch.setattr(rtopt.writer, "fold_history", failing_fold)
        monkeypatch.setattr(second._writer, "rebuild", lambda: None)  # stays behind: every attempt catches up
        with pytest.raises(StorageUnavailable, match="failed 5 times") as raised:
            second.publish(feedback())
        assert raised.value.__cause__ is cause


def test_an_engine_opened_before_a_fork_refuses_in_the_child_and_goes_on_in_the_parent(location: str) -> None:
    """The child's calls on the inherited engine raise, saying to open it after the fork, without touching the
    parent's connections; an engine the child opens itself works, and so does the parent's afterwards."""
    with Engine.open(location, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("shared", arms=ARMS, policy="ucb1")
        engine.decide("shared")  # seq 2
        reading, writing = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe and leaves without cleanup
            os.close(reading)
            os.write(writing, json.dumps(_inherited_engine_report(engine, location)).encode())
            os._exit(0)
        os.close(writing)
        with os.fdopen(reading) as pipe:
            report = json.load(pipe)
        assert os.waitpid(child, 0)[1] == 0
        for call in ("decide", "read"):
            error, message = report[call]
            assert error == "RtoptError" and f"was opened in process {os.getpid()}, which this process" in message
            assert message.endswith("open the engine in each process after it is forked"), message
        assert report["close"] == "quiet" and report["own decision"] == 3
        decision = engine.decide("shared")
        assert decision.seq == 4  # after the child's
        engine.feedback(decision.id, success=True, quality_score=0.5, response_time_ms=10.0)
    learnt_exactly_once(location)


def _inherited_engine_report(engine: Engine, location: str) -> dict[str, object]:
    report: dict[str, object] = {}
    for call, attempt in (("decide", lambda: engine.decide("shared")), ("read", lambda: list(engine.read()))):
        try:
            attempt()
            report[call] = [None, "no error"]
        except Exception as error:  # the report names whatever was raised
            report[call] = [type(error).__name__, str(error)]
    engine.close()
    report["close"] = "quiet"
    with Engine.open(location, handlers=[BanditHandler()]) as own:
        report["own decision"] = own.decide("shared").seq
    return report

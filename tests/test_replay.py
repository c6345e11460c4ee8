"""Replay: rebuild, what-if, verify and snapshots reproduce the live run exactly."""

from __future__ import annotations

import gc
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import edit_log, rows_without_recorded_at, sha256, simulate_into
from rtopt.handlers.bandits import ArmUpdated, BanditHandler
from test_log_integrity import Counted, FeedbackCounter

from rtopt import (
    ConfigurationChanged,
    Context,
    Decision,
    Engine,
    Envelope,
    Event,
    Feedback,
    RtoptError,
    default_handlers,
)


def derived_rows(engine: Engine) -> list[tuple]:
    return [
        (env.id, env.type, env.stream, env.causation_id, msgspec.msgpack.encode(env.payload))
        for env in engine.read()
        if not env.is_input
    ]


def state_bytes(engine: Engine) -> bytes:
    return msgspec.msgpack.encode(engine.state("bandit"))


@pytest.mark.slow
def test_what_if_with_the_same_handlers_rederives_identical_events_and_state(simulated_log: Path) -> None:
    with Engine.open(simulated_log, read_only=True) as live:
        recorded, live_state = derived_rows(live), state_bytes(live)
        decisions = sum(1 for _ in live.read(types=[Decision]))
    assert decisions == 20_000
    assert len(recorded) == 20_200
    with Engine.replay(simulated_log, handlers=default_handlers()) as replayed:
        assert derived_rows(replayed) == recorded
        assert state_bytes(replayed) == live_state


def test_rebuild_gives_the_live_state(simulated_log: Path) -> None:
    with Engine.open(simulated_log, read_only=True) as live, Engine.replay(simulated_log) as rebuilt:
        assert state_bytes(rebuilt) == state_bytes(live)
        assert rebuilt.position == live.position


@pytest.mark.slow
def test_verify_remakes_every_decision(simulated_log: Path) -> None:
    report = Engine.verify(simulated_log)
    assert report.ok, report.difference
    assert report.decisions == 20_000
    assert report.derived == 20_000 + 200  # an ArmUpdated per feedback, ExperimentStats every 100


@pytest.mark.slow
def test_same_seed_writes_the_same_log_and_another_seed_other_decisions(tmp_path: Path) -> None:
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        simulate_into(tmp_path / f"{name}.sqlite", steps=2_000, seed=seed)
    assert rows_without_recorded_at(tmp_path / "a.sqlite") == rows_without_recorded_at(tmp_path / "b.sqlite")
    arms = [
        [env.payload.arm for env in Engine.open(tmp_path / f"{n}.sqlite", read_only=True).read(types=[Decision])]
        for n in "ac"
    ]
    assert arms[0] != arms[1]


@pytest.mark.slow
def test_what_if_leaves_the_source_byte_identical(simulated_log: Path, tmp_path: Path) -> None:
    before = sha256(simulated_log)
    strict = BanditHandler(feedback_horizon_s=1.0)
    with Engine.replay(simulated_log, into=tmp_path / "what_if.sqlite", handlers=[strict]) as what_if:
        # with a one-second horizon most feedback arrives too late to be learnt from
        assert what_if.state("bandit").ledger.rejected["unknown or expired decision"] > 10_000
    with Engine.replay(simulated_log, until_seq=5_000) as rebuilt:
        assert rebuilt.position == 5_000
    with pytest.raises(RtoptError, match="until_seq"):
        Engine.replay(simulated_log, until_seq=10**9)
    assert sha256(simulated_log) == before
    report = Engine.verify(tmp_path / "what_if.sqlite", handlers=[BanditHandler(feedback_horizon_s=1.0)])
    assert report.ok, report.difference
    assert report.decisions == 0 and "what-if replay" in report.notes[0]


def test_what_if_with_another_threshold_changes_rewards_but_not_the_source(tmp_path: Path) -> None:
    source = tmp_path / "source.sqlite"
    simulate_into(source, steps=1_000, seed=3)
    before = sha256(source)
    with Engine.open(source, read_only=True) as live:
        live_rewards = [env.payload.reward for env in live.read(types=[ArmUpdated])]
    with Engine.replay(source, handlers=[BanditHandler()]) as again:
        assert [env.payload.reward for env in again.read(types=[ArmUpdated])] == live_rewards
    assert sha256(source) == before


def test_rebuild_into_a_fork_goes_on_writing_there(simulated_log: Path, tmp_path: Path) -> None:
    before = sha256(simulated_log)
    fork = tmp_path / "fork.sqlite"
    with Engine.replay(simulated_log, into=fork, until_seq=3_000) as engine:
        assert engine.position == 3_000
        decision = engine.decide("greeting", time=1_767_300_000.0)
        assert decision.seq == 3_001
    assert sha256(simulated_log) == before
    with pytest.raises(RtoptError, match="already holds events"):
        Engine.replay(simulated_log, into=fork)


def test_snapshot_plus_tail_equals_full_replay(tmp_path: Path) -> None:
    path = tmp_path / "snap.sqlite"
    simulate_into(path, steps=1_500, seed=4)
    with Engine.open(path) as engine:
        middle = engine.snapshot()
        for step in range(300):
            decision = engine.decide("greeting", time=1_767_400_000.0 + step)
            engine.feedback(
                decision.id, success=step % 3 > 0, quality_score=0.8, response_time_ms=90.0, time=1_767_400_000.5 + step
            )
        final = state_bytes(engine)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT seq FROM snapshots WHERE handler = 'bandit'").fetchall() == [(middle,)]
    with Engine.open(path, read_only=True) as from_snapshot:
        assert state_bytes(from_snapshot) == final
    with Engine.open(path, read_only=True, handlers=[BanditHandler(feedback_horizon_s=86_400.0)]) as again:
        assert state_bytes(again) == final
    # a handler with another configuration cannot use the snapshot and folds the whole log
    with (
        pytest.warns(ConfigurationChanged, match="bandit"),
        Engine.open(path, read_only=True, handlers=[BanditHandler(feedback_horizon_s=10.0)]) as other,
    ):
        assert state_bytes(other) != final


def test_verify_reports_the_first_difference(tmp_path: Path) -> None:
    path = tmp_path / "tampered.sqlite"
    simulate_into(path, steps=300, seed=8)
    with sqlite3.connect(path) as conn:
        seq, payload = conn.execute(
            "SELECT seq, payload FROM events WHERE type = 'ArmUpdated' ORDER BY seq LIMIT 1 OFFSET 10"
        ).fetchone()
    update = msgspec.msgpack.decode(payload)
    update["reward"] = 1.0 - update["reward"]
    edit = "UPDATE events SET payload = ? WHERE seq = ?"
    edit_log(path, edit, (msgspec.msgpack.encode(update), seq))
    report = Engine.verify(path)  # the hash chain breaks at the edited row
    assert (report.difference.seq, report.difference.field) == (seq, "chain")
    edit_log(path, "SELECT 1", rechain=True)  # a forger who rebuilds the chain is caught by re-derivation
    report = Engine.verify(path)
    assert not report.ok
    assert report.difference.seq == seq
    assert report.difference.field == "payload"
    assert report.difference.recorded["reward"] == update["reward"]


def test_verify_finds_a_decision_whose_arm_was_altered_in_a_copy(tmp_path: Path) -> None:
    original = tmp_path / "original.sqlite"
    simulate_into(original, steps=300, seed=8)
    copy = tmp_path / "altered.sqlite"
    shutil.copyfile(original, copy)
    with sqlite3.connect(copy) as conn:
        seq, payload = conn.execute(
            "SELECT seq, payload FROM events WHERE type = 'Decision' ORDER BY seq LIMIT 1 OFFSET 40"
        ).fetchone()
    decision = msgspec.msgpack.decode(payload)
    chosen = decision["arm"]
    decision["arm"] = next(arm for arm in decision["candidates"] if arm != chosen)
    edit_log(copy, "UPDATE events SET payload = ? WHERE seq = ?", (msgspec.msgpack.encode(decision), seq))
    with Engine.open(copy, read_only=True, handlers=[]) as altered:
        assert next(altered.read(start=seq, until=seq)).payload.arm == decision["arm"]  # decodes as a Decision
    report = Engine.verify(copy)  # the hash chain breaks at the altered row
    assert (report.difference.seq, report.difference.field) == (seq, "chain")
    edit_log(copy, "SELECT 1", rechain=True)  # a forger who rebuilds the chain: only the re-made decision tells
    report = Engine.verify(copy)
    assert (report.difference.seq, report.difference.field) == (seq, "decision")
    assert (report.difference.recorded["arm"], report.difference.rederived["arm"]) == (decision["arm"], chosen)
    assert Engine.verify(original).ok  # the copy was altered, not the log it was copied from


class CollectorProbe(FeedbackCounter):
    """Counts Feedback, noting whether the cyclic garbage collector was on at each fold."""

    name = "collector_probe"

    def __init__(self) -> None:
        self.collector_on: list[bool] = []

    def _count(self, state: Counted, envelope: Envelope[Any], ctx: Context) -> tuple[Counted, Sequence[Event]]:
        self.collector_on.append(gc.isenabled())
        return super()._count(state, envelope, ctx)


@pytest.mark.parametrize("enabled", [True, False])
def test_rebuild_pauses_the_garbage_collector_and_leaves_it_as_it_was(tmp_path: Path, enabled: bool) -> None:
    path = tmp_path / "log.sqlite"
    feedback = Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5)
    with Engine.open(path, seed=1, handlers=[CollectorProbe()]) as engine:
        engine.publish_many([feedback] * 7, time=1.0)
    probe = CollectorProbe()
    (gc.enable if enabled else gc.disable)()
    try:
        with Engine.open(path, read_only=True, handlers=[probe]) as reopened:
            assert gc.isenabled() is enabled
            assert reopened.state("collector_probe").feedback == 7
    finally:
        gc.enable()
    assert probe.collector_on == [False] * 7

"""Several processes on one PostgreSQL log define one experiment together (they decide and learn on it in
tests/test_processes.py); durability maps to the writer session's synchronous_commit."""

from __future__ import annotations

import pytest
from processes_support import ARMS, SPAWN, WAIT_S
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine, Feedback


def define(url: str, worker: int, ready: object) -> str:
    """Define the experiment "shared" once every process is ready; returns the id of the definition."""
    with Engine.open(url, handlers=[BanditHandler()]) as engine:
        ready.wait(WAIT_S)  # type: ignore[attr-defined]
        return engine.define_experiment("shared", arms=ARMS, policy="ucb1").id


def test_processes_defining_the_same_experiment_at_once_record_it_once(pg_url: str) -> None:
    Engine.open(pg_url, seed=1, handlers=[]).close()
    processes = 4
    with SPAWN.Manager() as manager, SPAWN.Pool(processes) as pool:
        ready = manager.Barrier(processes)
        results = [pool.apply_async(define, (pg_url, worker, ready)) for worker in range(processes)]
        ids = {result.get(WAIT_S) for result in results}
    with Engine.open(pg_url, read_only=True, handlers=[BanditHandler()]) as engine:
        definitions = [envelope.id for envelope in engine.read()]
    assert len(definitions) == 1 and ids == set(definitions)  # each process got back the one recorded
    assert Engine.verify(pg_url).ok


@pytest.mark.parametrize(("durability", "setting"), [("process", "off"), ("power", "on")])
def test_durability_sets_the_writer_session_s_synchronous_commit(pg_url: str, durability: str, setting: str) -> None:
    with Engine.open(pg_url, seed=1, handlers=[], durability=durability) as engine:
        writer = engine.log._writer  # type: ignore[attr-defined]
        assert writer.execute("SHOW synchronous_commit").fetchone() == (setting,)
        writer.close()  # as if it broke: the connection made anew is set up the same way
        feedback = Feedback(prompt_id="p", variant_id="v", response_time_ms=1.0, success=True, quality_score=1.0)
        assert engine.publish(feedback).seq == 1
        assert engine.log._writer.execute("SHOW synchronous_commit").fetchone() == (setting,)  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="durability"):
        Engine.open(pg_url, handlers=[], durability="disk")

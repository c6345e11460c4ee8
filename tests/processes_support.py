"""What the tests of several processes on one log share: the experiment they play, one round of it, the
check that every Feedback in the log was learnt exactly once, and what their child processes run (kept out of
the test modules, so that a spawned child imports only this)."""

from __future__ import annotations

import itertools
import multiprocessing
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from typing import Any

from rtopt.handlers.bandits import ArmUpdated, BanditHandler

from rtopt import Draft, Engine
from rtopt.events import Decision, Feedback
from rtopt.rows import envelope_from_row
from rtopt.storage.interface import Row
from rtopt.storage.sql import SQLLog
from rtopt.storage.sqlite import SQLiteLog
from rtopt.worker import Worker

SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 120.0  # bound on any process's run: a hang fails the test instead of stalling the suite
ARMS = ["a", "b", "c"]
SUCCESS = {"a": 0.3, "b": 0.5, "c": 0.7}


@contextmanager
def failing_the_others(ready: Barrier) -> Iterator[None]:
    """Break ``ready`` if the block raises, so that the other processes stop waiting for this one."""
    try:
        yield
    except BaseException:
        ready.abort()
        raise


def play_round(
    engine: Engine, outcomes: random.Random, acknowledged: Callable[[str, str], None] = lambda kind, id: None
) -> None:
    """Decide on the experiment "shared", then give feedback drawn from ``outcomes``; ``acknowledged(kind,
    id)`` hears of each call once it returned ("decided" with the Decision's id, "learnt" with the Feedback's)."""
    decision = engine.decide("shared")
    acknowledged("decided", decision.id)
    success = outcomes.random() < SUCCESS[decision.payload.arm]
    feedback = engine.feedback(decision.id, success=success, quality_score=float(success), response_time_ms=10.0)
    acknowledged("learnt", feedback.id)


def learnt_exactly_once(path: str) -> tuple[list[str], list[str]]:
    """Check that every Feedback in the log at ``path`` has exactly one ArmUpdated, that the arms were pulled
    once per Decision and that ``Engine.verify`` passes; returns the ids of the Decisions and the Feedback."""
    with Engine.open(path, read_only=True, handlers=[BanditHandler()]) as engine:
        decisions = [envelope.id for envelope in engine.read(types=[Decision])]
        feedback = [envelope.id for envelope in engine.read(types=[Feedback])]
        updates = Counter(envelope.causation_id for envelope in engine.read(types=[ArmUpdated]))
        pulls = sum(arm.pulls for arm in engine.state("bandit", "shared").arms.values())
    assert updates == Counter(feedback)  # one each: none missing, none twice
    assert pulls == len(decisions)
    report = Engine.verify(path)
    assert report.ok, report.difference
    return decisions, feedback


# --- processes killed on purpose (tests/test_kills.py) ------------------------------------------------------

ROUNDS_AFTER_KILL = 20
"""Rounds each surviving player plays once told that the victim is dead: the others go on."""


def stop_inside(channel: Connection, writing: object) -> None:
    """Tell the test that this process holds a write transaction open, ``writing`` (what it would commit),
    and wait there to be killed."""
    channel.send(("inside", writing))
    channel.recv()  # never answered: the test kills this process here (or ends, closing the pipe)


def watch_commits(inside: Any, channel: Connection, pause_in: tuple[str, int] | None) -> None:
    """Keep ``inside.value`` at 1 while a commit of this process holds SQLite's write transaction (from BEGIN
    IMMEDIATE to the return of COMMIT); with ``pause_in`` = (type, n), stop inside the n-th commit that
    appends an input of that type, once its rows are appended, telling the input's row."""
    appending, append = SQLiteLog.appending, SQLiteLog.append
    paused_type, pause_at = pause_in or ("", 0)
    commits = itertools.count(1)

    @contextmanager
    def watched(log: SQLiteLog) -> Iterator[int | None]:
        with appending(log) as end:
            inside.value = 1
            yield end
        inside.value = 0

    def pausing(log: SQLiteLog, rows: Sequence[Row]) -> int:
        first = append(log, rows)
        of_type = [row for row in rows if row[2] == paused_type]
        if of_type and next(commits) == pause_at:
            stop_inside(channel, of_type[0])
        return first

    SQLiteLog.appending = watched  # type: ignore[method-assign]
    SQLiteLog.append = pausing  # type: ignore[method-assign]


def play_until_told(
    channel: Connection,
    path: str,
    policy: str,
    player: int,
    ready: Barrier,
    inside: Any = None,
    pause_in: tuple[str, int] | None = None,
) -> None:
    """Rounds of decide then feedback on "shared", each acknowledged call reported on ``channel``, until the
    test says "finish": then ROUNDS_AFTER_KILL more rounds, and "done". With ``inside``, its commits are
    watched (see :func:`watch_commits`)."""
    if inside is not None:
        watch_commits(inside, channel, pause_in)
    outcomes = random.Random(player)
    deadline = time.monotonic() + WAIT_S
    with failing_the_others(ready), Engine.open(path, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("shared", arms=ARMS, policy=policy)
        ready.wait(WAIT_S)
        rounds_left = None
        while rounds_left != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"player {player} was not told to finish within {WAIT_S} s")
            play_round(engine, outcomes, lambda kind, id: channel.send((kind, id)))
            if rounds_left is not None:
                rounds_left -= 1
            elif channel.poll():
                channel.recv()
                rounds_left = ROUNDS_AFTER_KILL
    channel.send(("done", ""))


def derive_until_killed(channel: Connection, location: str, pause_at: int | None) -> None:
    """A worker deriving for the log at ``location``, 20 inputs a step, reporting its position after each
    step; with ``pause_at`` it stops inside its ``pause_at``-th transaction, once its tracker has moved,
    telling the position it moved to."""
    if pause_at is not None:
        move_tracker = SQLLog._move_tracker
        transactions = itertools.count(1)

        def pausing(log: SQLLog, run: Any, tracker: str, previous: int, position: int, lock: str = "") -> None:
            move_tracker(log, run, tracker, previous, position, lock)
            if next(transactions) == pause_at:
                stop_inside(channel, position)

        SQLLog._move_tracker = pausing  # type: ignore[method-assign]
    with Worker.open(location, batch=20) as worker:
        worker.run(idle_timeout=WAIT_S, progress=lambda worker: channel.send(("step", str(worker.position))))


def publish_inputs_of(channel: Connection, source: str, location: str) -> None:
    """Publish the inputs of the log at ``source`` into the log at ``location`` with handlers=[] (workers
    derive), 25 at a time, reporting the ids of each group once published; half way, wait to be told to go
    on, then publish the rest and say "done"."""
    with Engine.open(source, read_only=True, handlers=[]) as reference:
        inputs = [envelope_from_row(row) for row in reference.log.inputs()]
    with Engine.open(location, handlers=[]) as engine:
        for start in range(0, len(inputs), 25):
            if start <= len(inputs) // 2 < start + 25:
                if not channel.poll(WAIT_S):
                    raise TimeoutError(f"not told to go on within {WAIT_S} s")
                channel.recv()
            drafts = [Draft(e.payload, e.stream, e.time, e.id, e.correlation_id) for e in inputs[start : start + 25]]
            channel.send(("published", [envelope.id for envelope in engine.publish_many(drafts)]))
    channel.send(("done", ""))


def create_until_killed(channel: Connection, path: str, statement: str) -> None:
    """Create a new log at ``path``, stopping as SQLite is about to run the first statement that starts with
    ``statement`` (where the test kills this process)."""
    connect = sqlite3.connect
    stops = itertools.count()

    def connecting(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(lambda sql: sql.startswith(statement) and not next(stops) and stop_inside(channel, sql))
        return conn

    sqlite3.connect = connecting  # type: ignore[assignment]
    Engine.open(path, seed=1, handlers=[])
    raise AssertionError(f"{path} was created without a pause")

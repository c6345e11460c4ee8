"""Processes SIGKILLed while they decide, derive or create a shared log: nothing any of them acknowledged is
lost, nothing is learnt twice, the others go on, and the log opens and verifies afterwards.

Children report each acknowledged call to the test over a pipe; the test kills one of them either once it
has acknowledged so many calls (wherever it is then) or while it holds a write transaction open (it stops
there, after appending and before committing, and says so). No timing by sleeping: every wait is on a
message, bounded by a deadline. The children's code is in processes_support.py.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from conftest import derived_events
from processes_support import (
    ARMS,
    SPAWN,
    WAIT_S,
    create_until_killed,
    derive_until_killed,
    learnt_exactly_once,
    play_round,
    play_until_told,
    publish_inputs_of,
)
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine
from rtopt.storage.interface import Row
from rtopt.storage.sql import META_TABLE


def messages(channels: list[Connection], deadline: float) -> Iterator[tuple[int, tuple[str, Any] | None]]:
    """Each message of ``channels`` as (index, message), and (index, None) once a channel is closed, until
    all are; fails the test at ``deadline``."""
    open_channels = dict(zip(channels, itertools.count()))
    while open_channels:
        waiting = wait(list(open_channels), timeout=max(deadline - time.monotonic(), 0))
        if not waiting:
            pytest.fail(f"the processes did not end within {WAIT_S} s")
        for channel in waiting:
            index = open_channels[channel]
            try:
                yield index, channel.recv()
            except EOFError:
                del open_channels[channel]
                yield index, None


@contextmanager
def started(
    children: list[tuple[Callable[..., None], tuple[Any, ...]]],
) -> Iterator[tuple[list[Any], list[Connection]]]:
    """A process for each (target, arguments) of ``children``, given one end of a pipe as first argument;
    yields the processes and the test's ends of their pipes, and kills whichever still runs at the end."""
    pipes = [SPAWN.Pipe() for _ in children]
    processes = [
        SPAWN.Process(target=target, args=(child, *arguments))
        for (_, child), (target, arguments) in zip(pipes, children, strict=True)
    ]
    try:
        for process in processes:
            process.start()
        for _, child in pipes:
            child.close()  # the test's copy: a channel ends when its process does
        yield processes, [ours for ours, _ in pipes]
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join(WAIT_S)


def kill(process: Any) -> None:
    """SIGKILL ``process`` and wait for it to be gone."""
    os.kill(process.pid, signal.SIGKILL)
    process.join(WAIT_S)
    assert process.exitcode == -signal.SIGKILL


class Killed(NamedTuple):
    """What the processes of :func:`play_and_kill_one` acknowledged, and where the kill landed."""

    acknowledged: list[tuple[str, str]]
    """("decided", Decision id) or ("learnt", Feedback id) for each call that returned, in any process."""
    inside: bool
    """Whether the victim held a write transaction when it was killed."""
    cut_short: Row | None
    """The row of the input the victim had appended but not committed when it was killed (if paused)."""


def play_and_kill_one(
    path: str,
    policy: str,
    players: int,
    *,
    kill_after: int | None = None,
    pause_in: tuple[str, int] | None = None,
) -> Killed:
    """``players`` processes play "shared" on the log at ``path``; the first is SIGKILLed once it has
    acknowledged ``kill_after`` calls (without waiting for it to stop anywhere) or once it stopped inside a
    commit (``pause_in`` = (type, n): the n-th that appends an input of that type); the others are then told
    to finish."""
    ready = SPAWN.Barrier(players)
    inside = SPAWN.Value("b", 0, lock=False)
    children = [(play_until_told, (path, policy, 0, ready, inside, pause_in))]
    children += [(play_until_told, (path, policy, player, ready)) for player in range(1, players)]
    acknowledged: list[tuple[str, str]] = []
    landed_inside = cut_short = None
    done = set()
    victim_calls = 0
    with started(children) as (processes, channels):
        victim = processes[0]
        for player, message in messages(channels, time.monotonic() + WAIT_S):
            if message is None:
                processes[player].join(WAIT_S)
                ended = processes[player].exitcode
                if player:
                    assert player in done and ended == 0, f"player {player} ended with exit code {ended}"
                else:
                    assert landed_inside is not None, f"the victim ended by itself, with exit code {ended}"
                continue
            kind = message[0]
            if kind == "done":
                done.add(player)
            elif kind != "inside":
                acknowledged.append(message)
                victim_calls += player == 0
            if player == 0 and landed_inside is None and (kind == "inside" or victim_calls == kill_after):
                kill(victim)
                landed_inside = bool(inside.value)
                cut_short = message[1] if kind == "inside" else None
                for channel in channels[1:]:
                    channel.send("finish")
    assert done == set(range(1, players))
    assert landed_inside is not None
    return Killed(acknowledged, landed_inside, cut_short)


def check_nothing_lost_nor_learnt_twice(path: str, acknowledged: list[tuple[str, str]]) -> None:
    """Every acknowledged call is in the log, each Feedback learnt once, and the log opens and verifies."""
    decisions, feedback = learnt_exactly_once(path)
    assert len(set(acknowledged)) == len(acknowledged)
    assert {id for kind, id in acknowledged if kind == "decided"} <= set(decisions)
    assert {id for kind, id in acknowledged if kind == "learnt"} <= set(feedback)
    # at most the call cut short by the kill committed without being acknowledged
    assert len(decisions) + len(feedback) - len(acknowledged) in (0, 1)
    with Engine.open(path, handlers=[BanditHandler()]) as engine:  # the log opens and takes new calls
        assert engine.log.integrity_check() == "ok"
        play_round(engine, random.Random(0))
    after_decisions, after_feedback = learnt_exactly_once(path)
    assert (len(after_decisions), len(after_feedback)) == (len(decisions) + 1, len(feedback) + 1)


SLOW = pytest.mark.slow
KILLS = [
    pytest.param("thompson", {"pause_in": ("Decision", 5)}, id="thompson-inside-a-decision-commit"),
    pytest.param("thompson", {"kill_after": 25}, id="thompson-after-25-calls", marks=SLOW),
    pytest.param("thompson", {"pause_in": ("Feedback", 4)}, id="thompson-inside-a-feedback-commit", marks=SLOW),
    pytest.param("ucb1", {"pause_in": ("Decision", 8)}, id="ucb1-inside-a-decision-commit", marks=SLOW),
    pytest.param("ucb1", {"pause_in": ("Feedback", 6)}, id="ucb1-inside-a-feedback-commit", marks=SLOW),
    *(
        pytest.param(
            policy,
            {"kill_after": random.Random(seed).randint(2, 200)},
            id=f"{policy}-seed-{seed}",
            marks=SLOW,
        )
        for policy, seed in itertools.product(("thompson", "ucb1"), range(1, 3))
    ),
]


@pytest.mark.parametrize(("policy", "kill_at"), KILLS)
def test_a_process_killed_while_deciding_loses_nothing_acknowledged(
    tmp_path: Path, policy: str, kill_at: dict[str, Any]
) -> None:
    path = str(tmp_path / "log.sqlite")
    killed = play_and_kill_one(path, policy, 4, **kill_at)
    check_nothing_lost_nor_learnt_twice(path, killed.acknowledged)
    if "pause_in" in kill_at:  # killed inside a commit, after appending: the transaction left nothing
        assert killed.inside and killed.cut_short is not None
        with Engine.open(path, read_only=True, handlers=[]) as engine:
            # its seq and id went to another process's input: ids are numbered by their place in the log
            assert killed.cut_short not in (row[: len(killed.cut_short)] for row in engine.log.rows())


WORKER_KILLS = [
    pytest.param({"pause_at": 3}, id="inside-its-third-transaction"),
    pytest.param({"kill_after": 5}, id="after-five-steps", marks=SLOW),
]


@pytest.mark.parametrize("kill_at", WORKER_KILLS)
def test_a_worker_killed_while_deriving_derives_each_input_once(
    reference: Path, location: str, kill_at: dict[str, int]
) -> None:
    with Engine.open(reference, read_only=True, handlers=[]) as source:
        Engine.open(location, seed=source.seed, handlers=[]).close()
        inputs = [row[1] for row in source.log.inputs()]
    expected = derived_events(reference)
    published: list[str] = []
    derived_at_kill = tracked_at_kill = None
    steps = stepped_to = 0
    moving_to = None
    children = [
        (derive_until_killed, (location, kill_at.get("pause_at"))),
        (publish_inputs_of, (str(reference), location)),
    ]
    with started(children) as ((worker, writer), channels):
        for index, message in messages(channels, time.monotonic() + WAIT_S):
            if message is None:
                (worker, writer)[index].join(WAIT_S)
                if index:
                    assert writer.exitcode == 0, f"the writer ended with exit code {writer.exitcode}"
                else:
                    assert derived_at_kill is not None, f"the worker ended by itself, with exit code {worker.exitcode}"
                continue
            kind, value = message
            if kind == "published":
                published.extend(value)
            if kind == "step":
                steps, stepped_to = steps + 1, int(value)
            if index == 0 and derived_at_kill is None and (kind == "inside" or steps == kill_at.get("kill_after")):
                kill(worker)
                derived_at_kill = len(derived_events(location))
                with Engine.open(location, read_only=True, handlers=[]) as log:
                    tracked_at_kill = log.log.tracked("worker:0/1")
                moving_to = value if kind == "inside" else None
                channels[1].send("go on")  # the writer goes on publishing the second half of the inputs
    assert published == inputs
    assert 0 < derived_at_kill < len(expected)  # killed mid-run
    if moving_to is None:
        assert tracked_at_kill >= stepped_to  # every step it reported was committed
    else:  # the transaction cut short left the tracker where the last step put it
        assert tracked_at_kill == stepped_to < moving_to
    restarted = subprocess.run(
        [sys.executable, "-m", "rtopt", "worker", location, "--drain", "--batch", "33"],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert restarted.returncode == 0, restarted.stderr
    with Engine.open(location, read_only=True, handlers=[]) as log:
        assert [row[1] for row in log.log.inputs()] == inputs
        last_input = max(row[0] for row in log.log.inputs())
        assert log.log.tracked("worker:0/1") == last_input
    assert f"inputs read up to seq {last_input}" in restarted.stdout
    assert derived_events(location) == expected  # each input derived once, as the one engine derived it
    report = Engine.verify(location)
    assert report.ok, report.difference


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param(f"INSERT INTO {META_TABLE}", id="inside-the-transaction-making-the-tables"),
        pytest.param("PRAGMA journal_mode=WAL", id="once-the-tables-are-made"),
    ],
)
def test_a_process_killed_while_creating_a_log_leaves_none_that_will_not_open(tmp_path: Path, statement: str) -> None:
    path = str(tmp_path / "log.sqlite")
    killed = False
    with started([(create_until_killed, (path, statement))]) as ((creator,), channels):
        for _, message in messages(channels, time.monotonic() + WAIT_S):
            assert killed or message is not None, f"the creator ended by itself, with exit code {creator.exitcode}"
            if message is not None and not killed:
                kill(creator)
                killed = True
    with Engine.open(path, handlers=[BanditHandler()]) as engine:
        assert engine.position == 0
        engine.define_experiment("shared", arms=ARMS)
        play_round(engine, random.Random(0))
    learnt_exactly_once(path)

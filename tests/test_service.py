"""The README's deployment: the example service (examples/service.py) served by uvicorn with 4 worker
processes on one SQLite log, driven over HTTP by several clients at once."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from rtopt.handlers.bandits import ArmUpdated

from rtopt import Engine
from rtopt.events import Decision, ExperimentDefined, Feedback

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "examples" / "service.py"
COMMAND = "uvicorn service:app --app-dir examples --workers 4"
WORKERS = 4
CLIENTS, ROUNDS = 8, 40
SUCCESS = {"v1": 0.3, "v2": 0.5, "v3": 0.7}
GUARD = 120.0
"""Seconds after which a wait gives up, so a service that never answers fails the test instead of hanging it."""


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    """POST ``body`` as JSON on a connection of its own (so that requests spread over the workers); returns the
    status, the answer and the process that gave it."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD)
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read()), response.getheader("X-Worker-Pid", "")
    finally:
        connection.close()


def wait_for(condition: Any, server: subprocess.Popen, what: str, output: Path) -> None:
    """Return once ``condition()`` holds, polling; fail if the server exits (showing its ``output``) or GUARD
    seconds pass."""
    deadline = time.monotonic() + GUARD
    while not condition():
        if server.poll() is not None:
            pytest.fail(
                f"the service exited with status {server.returncode} while waiting for {what}:\n{output.read_text()}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def answers(port: int) -> bool:
    try:
        post(port, "/decide", {"experiment": "unknown"})
    except OSError:
        return False
    return True


def client(port: int, number: int) -> list[tuple[int, dict[str, Any], str]]:
    """``ROUNDS`` rounds of decide, then feedback on the decision; returns every request's outcome."""
    outcomes = random.Random(number)
    done = []
    for round_ in range(ROUNDS):
        decided = post(port, "/decide", {"experiment": "greeting", "context": {"round": round_}, "unit": f"u{number}"})
        done.append(decided)
        if decided[0] != 200:
            continue
        success = outcomes.random() < SUCCESS[decided[1]["arm"]]
        rating = {"success": success, "quality_score": float(success), "response_time_ms": 40.0}
        done.append(post(port, "/feedback", {"decision_id": decided[1]["decision_id"], **rating}))
    return done


def test_the_readme_shows_the_service_and_how_to_run_it() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deployment", 1)[1].split("\n## ", 1)[0]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert example in SERVICE.read_text()  # the README shows the service as it is, in part
    assert COMMAND in section


@pytest.mark.slow
def test_four_uvicorn_workers_decide_and_learn_on_one_log(tmp_path: Path) -> None:
    log = tmp_path / "service.sqlite"
    port = free_port()
    output = tmp_path / "uvicorn.txt"
    arguments = [*COMMAND.split()[1:], "--port", str(port), "--no-access-log"]
    with output.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", *arguments],
            cwd=ROOT,
            env={**os.environ, "RTOPT_LOG": str(log)},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, to end the workers too if it does not stop
        )
    try:
        started = "Application startup complete"
        wait_for(lambda: output.read_text().count(started) == WORKERS, server, "the workers", output)
        wait_for(lambda: answers(port), server, "an answer", output)
        refused = post(port, "/decide", {"experiment": "unknown"})
        with ThreadPoolExecutor(CLIENTS) as pool:
            requests = [outcome for done in pool.map(client, [port] * CLIENTS, range(CLIENTS)) for outcome in done]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(GUARD)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            pytest.fail("the service did not stop on SIGTERM")
    printed = output.read_text()
    assert server.returncode == 0, printed
    assert printed.count("Application shutdown complete") == WORKERS  # each worker closed its engine
    assert refused[0] == 422 and refused[1]["field"] == "experiment"

    assert [status for status, _, _ in requests] == [200] * (2 * CLIENTS * ROUNDS)
    deciders = {pid for _, answer, pid in requests if "arm" in answer}
    assert len(deciders) > 1, "one worker process answered every decision"
    assert deciders <= set(re.findall(r"Started server process \[(\d+)\]", printed))
    decided = {answer["decision_id"] for _, answer, _ in requests if "arm" in answer}
    learnt = {answer["seq"] for _, answer, _ in requests if "seq" in answer}
    with Engine.open(log, read_only=True) as engine:
        assert len(list(engine.read(types=[ExperimentDefined]))) == 1  # defined by every worker, recorded once
        assert {envelope.id for envelope in engine.read(types=[Decision])} == decided
        feedback = list(engine.read(types=[Feedback]))
        assert {envelope.seq for envelope in feedback} == learnt
        updates = Counter(envelope.causation_id for envelope in engine.read(types=[ArmUpdated]))
        assert updates == Counter(envelope.id for envelope in feedback)  # one each: none missing, none twice
        assert sum(arm.pulls for arm in engine.state("bandit", "greeting").arms.values()) == CLIENTS * ROUNDS
    report = Engine.verify(log)
    assert report.ok, report.difference
    assert report.decisions == CLIENTS * ROUNDS

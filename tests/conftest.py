from __future__ import annotations

import hashlib
import itertools
import os
import random
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from rtopt.handlers.bandits import BanditHandler
from rtopt.handlers.bandits.simulation import default_variants, simulate
from rtopt.handlers.bayesopt import BayesOptHandler
from rtopt.handlers.detection import DetectionHandler, FeedbackGuard, ProtectionHandler
from rtopt.streams import Aggregates, Tumbling, WindowHandler, WindowPipeline

from rtopt import Engine, Feedback
from rtopt.pgserver import TemporaryServer, server_binaries
from rtopt.storage.interface import CHAIN, GENESIS, HEAD, chained, head_value
from rtopt.storage.sql import _SELECT
from rtopt.storage.sqlite import _TRIGGERS


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_without_recorded_at(path: Path) -> list[tuple]:
    """Every row of a log with the wall-clock column dropped."""
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        return [row[:5] + row[6:] for row in engine.log.rows()]


def derived_events(location: str | Path) -> list[tuple]:
    """The derived events of a log without their seq and recording time, sorted by id."""
    with Engine.open(location, read_only=True, handlers=[]) as engine:
        return sorted(row[1:5] + row[6:] for row in engine.log.rows() if row[6] is not None)


def edit_log(path: Path, sql: str, params: Sequence[object] = (), *, rechain: bool = False) -> None:
    """Run ``sql`` on the SQLite log at ``path`` with its append-only triggers dropped around it, as a program
    other than rtopt could; with ``rechain`` also recompute the hash chain and head anchor, as a forger who
    knows the format would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for name in _TRIGGERS:
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(sql, params)
        if rechain:
            stored = chained(conn.execute(f"{_SELECT} ORDER BY seq").fetchall(), GENESIS)
            conn.executemany(f"UPDATE events SET {CHAIN} = ? WHERE seq = ?", [(row[-1], row[0]) for row in stored])
            head = head_value(stored[-1][0], stored[-1][-1]) if stored else head_value(0, GENESIS)
            conn.execute("UPDATE rtopt_meta SET value = ? WHERE key = ?", (head, HEAD))
        for trigger in _TRIGGERS.values():
            conn.execute(trigger)
        conn.execute("COMMIT")
    finally:
        conn.close()


def simulate_into(path: Path, steps: int, seed: int, variants: int = 4) -> None:
    with Engine.open(path, seed=seed) as engine:
        simulate(engine, steps, default_variants(variants, seed), seed)


def write_monitored_log(path: Path) -> None:
    """An hour of a Thompson bandit over v1 and v2 whose v2 degrades at minute 40, watched by one-minute windows
    and the detection handler (drift, anomalies, patterns, thresholds, forecasts and the responses), a burst of
    feedback from one user flagged by the feedback guard, and a Bayesian study of 8 evaluations."""
    quality = Aggregates({"quality_score": ("mean",), "success": ("mean",)})
    pipeline = WindowPipeline("quality", Tumbling(60.0), quality, key=("prompt_id", "variant_id"))
    guard = FeedbackGuard()
    handlers = [
        BanditHandler(),
        WindowHandler(pipeline),
        DetectionHandler(),
        ProtectionHandler(guard),
        BayesOptHandler(),
    ]
    noise = random.Random(7)
    with Engine.open(path, seed=1, handlers=handlers) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2"], policy="thompson", time=0.0)
        for second in range(0, 3600, 4):
            decision = engine.decide("greeting", time=float(second))
            level = {"v1": 0.75, "v2": 0.9 if second < 2400 else 0.4}[decision.arm]
            quality_score = min(max(noise.gauss(level, 0.05), 0.0), 1.0)
            engine.feedback(decision.id, success=True, quality_score=quality_score, response_time_ms=120.0, time=second)
        rating = {"prompt_id": "greeting", "variant_id": "v1", "success": True, "quality_score": 0.8, "user_id": "u1"}
        for i in range(6):
            engine.publish(Feedback(**rating, response_time_ms=90.0), time=3600.0 + i / 10)
        engine.define_study("temperature", space={"t": (0.0, 1.5)}, n_initial=3, max_evaluations=8, time=3601.0)
        for i in range(4):
            for suggestion in engine.suggest("temperature", n=2, time=3602.0 + i):
                engine.tell(suggestion.id, 1.0 - (suggestion.payload.params["t"] - 0.4) ** 2, time=3602.5 + i)


@pytest.fixture(scope="session")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The log of :func:`write_monitored_log`, shared read-only by the dashboard tests."""
    path = tmp_path_factory.mktemp("monitored") / "monitored.sqlite"
    write_monitored_log(path)
    return path


EXPERIMENTS = (("greeting", "thompson"), ("summary", "ucb1"), ("tone", "epsilon_greedy"), ("title", "ab_test"))
"""Four experiments (so four streams) with their policies, served by the log of :func:`reference`."""


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One engine serving :data:`EXPERIMENTS` and deriving everything itself, into SQLite: what workers given
    its inputs must derive."""
    path = tmp_path_factory.mktemp("reference") / "reference.sqlite"
    with Engine.open(path, seed=21) as engine:
        for k, (name, policy) in enumerate(EXPERIMENTS):
            simulate(engine, 250, default_variants(3, k), k, experiment=name, policy=policy)
    return path


@pytest.fixture(scope="session")
def simulated_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20,000-request simulation with seed 11, shared read-only by the replay tests."""
    path = tmp_path_factory.mktemp("sim") / "sim.sqlite"
    simulate_into(path, steps=20_000, seed=11)
    return path


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TemporaryServer]:
    """A PostgreSQL server for the whole test run, in a temporary directory, stopped at the end."""
    if server_binaries() is None:
        message = "PostgreSQL server binaries are not installed (apt-get install postgresql-15)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with TemporaryServer() as server:
        yield server


_schemas = itertools.count(1)


@pytest.fixture
def pg_url(pg_server: TemporaryServer) -> str:
    """The URL of a new, empty schema on the test server (a schema is made far faster than a database)."""
    return pg_server.create_schema(f"test_{next(_schemas)}")


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A place for a new log, on each backend in turn: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "log.sqlite")
    return request.getfixturevalue("pg_url")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need a PostgreSQL server (the ``location`` fixture's second backend among them) are marked
    ``postgres``, so the fast lane can leave them out."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("location") == "postgres"
        if on_postgres or "pg_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)

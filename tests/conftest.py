from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.bandits.simulation import default_variants, simulate
from rtopt import Engine
from rtopt.pgserver import TemporaryServer, server_binaries


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows_without_recorded_at(path: Path) -> list[tuple]:
    """Every row of a log with the wall-clock column dropped."""
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        return [row[:5] + row[6:] for row in engine.log.rows()]


def simulate_into(path: Path, steps: int, seed: int, variants: int = 4) -> None:
    with Engine.open(path, seed=seed) as engine:
        simulate(engine, steps, default_variants(variants, seed), seed)


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

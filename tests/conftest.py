from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from handlers.bandits.simulation import default_variants, simulate
from rtopt import Engine


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

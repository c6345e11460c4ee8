"""Smoke tests of benchmarks/bandits.py: a tiny run reports every figure (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bandits.py"
POLICIES = {"epsilon_greedy", "ucb1", "thompson", "softmax"}
SHARED = {  # the policies each peer has
    "mabwiser": {"epsilon_greedy", "ucb1", "thompson", "softmax"},
    "river": {"epsilon_greedy", "ucb1", "thompson"},
}
FIGURES = {"rounds_per_s", "regret", "seconds"}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bandit_benchmark_quick_json(tmp_path: Path) -> None:
    data = _run("--quick", cwd=tmp_path)
    config = data["config"]
    rounds, seeds = config["rounds"], config["seeds"]
    assert set(config["policies"]) == POLICIES
    worst = rounds * (max(config["means"]) - min(config["means"]))

    peers = {lib for lib in SHARED if _installed(lib)}
    assert {lib for lib, version in data["peers"].items() if version is not None} == peers
    for policy in POLICIES:
        figures = data["results"][policy]
        expected = {"rtopt", "rtopt_batched"} | {lib for lib in peers if policy in SHARED[lib]}
        assert set(figures) == expected, policy
        for lib, values in figures.items():
            for key in FIGURES:
                assert _positive(values[key]), f"{policy} {lib} {key} = {values[key]!r}"
            assert len(values["regret_per_seed"]) == seeds
            assert 0 < values["regret"] <= worst
            assert 0 <= values["reward"] <= rounds
        ratios, status = data["ratios"][policy], data["status"][policy]
        # batching changes when events are written, not what is decided
        assert figures["rtopt_batched"]["regret_per_seed"] == figures["rtopt"]["regret_per_seed"]
        for lib in expected - {"rtopt", "rtopt_batched"}:
            assert _positive(ratios[f"speed_vs_{lib}"]) and _positive(ratios[f"regret_vs_{lib}"])
            assert _positive(ratios[f"batched_speed_vs_{lib}"])
            assert status[f"regret_vs_{lib}"] in {"PASS", "MISS"}
        if "mabwiser" in expected:
            assert {status["speed_vs_mabwiser"], status["batched_speed_vs_mabwiser"]} <= {"PASS", "MISS"}
    assert list(tmp_path.iterdir()) == []


def test_bandit_benchmark_without_peers(tmp_path: Path) -> None:
    """With neither peer importable the script says so and measures rtopt alone."""
    shadow = tmp_path / "shadow"
    for name in ("mabwiser", "river"):
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}
    data = _run("--rounds", "40", "--seeds", "1", "--policy", "ucb1", "--policy", "thompson", cwd=tmp_path, env=env)
    assert data["peers"] == {"mabwiser": None, "river": None}
    for policy in ("ucb1", "thompson"):
        assert set(data["results"][policy]) == {"rtopt", "rtopt_batched"}
        assert _positive(data["results"][policy]["rtopt"]["rounds_per_s"])
        assert data["ratios"][policy] == {} and data["status"][policy] == {}

    table = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "40", "--seeds", "1", "--policy", "softmax"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert "MABWiser is not installed" in table.stdout and "River is not installed" in table.stdout

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
POLICIES = {"epsilon_greedy", "ucb1", "thompson", "softmax", "linucb"}
SHARED = {  # the policies each peer has
    "mabwiser": POLICIES,
    "river": {"epsilon_greedy", "ucb1", "thompson"},
}
MODES = {"rtopt": "", "rtopt_group": "group_", "rtopt_batched": "batched_"}  # rtopt's runs, their ratios' prefix
LIMITS = {"limit", "limit_batched"}
FIGURES = {"rounds_per_s", "regret", "seconds"}
TINY = ("--rounds", "40", "--seeds", "1")


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


def test_bandit_benchmark_tiny_json(tmp_path: Path) -> None:
    data = _run(*TINY, cwd=tmp_path)  # the script raises if a raw copy is not the log rtopt wrote
    config = data["config"]
    rounds, seeds = config["rounds"], config["seeds"]
    assert set(config["policies"]) == POLICIES
    assert config["durability"] == {"rtopt": "process", "rtopt_group": "group", "rtopt_batched": "process"}
    worst = rounds * (max(config["means"]) - min(config["means"]))

    peers = {lib for lib in SHARED if _installed(lib)}
    assert {lib for lib, version in data["peers"].items() if version is not None} == peers
    for policy in POLICIES:
        figures = data["results"][policy]
        played = set(MODES) | {lib for lib in peers if policy in SHARED[lib]}
        assert set(figures) == played | LIMITS, policy
        for lib in LIMITS:
            assert _positive(figures[lib]["rounds_per_s"]), f"{policy} {lib}"
        for lib in played:
            values = figures[lib]
            for key in FIGURES:
                assert _positive(values[key]), f"{policy} {lib} {key} = {values[key]!r}"
            assert len(values["regret_per_seed"]) == seeds
            assert 0 < values["regret"] <= worst
            assert 0 <= values["reward"] <= rounds
        # group durability and batching change when events are written, not what is decided
        for mode in MODES:
            assert figures[mode]["regret_per_seed"] == figures["rtopt"]["regret_per_seed"], mode
        ratios, status = data["ratios"][policy], data["status"][policy]
        for prefix in MODES.values():
            assert _positive(ratios[f"{prefix}speed_vs_limit"])
            assert prefix == "" or _positive(ratios[f"{prefix}speed_vs_per_call"])
            for lib in played - set(MODES):
                assert _positive(ratios[f"{prefix}speed_vs_{lib}"]), f"{policy} {prefix}speed_vs_{lib}"
        for lib in played - set(MODES):
            assert _positive(ratios[f"regret_vs_{lib}"]) and status[f"regret_vs_{lib}"] in {"PASS", "MISS"}
            assert _positive(ratios[f"limit_vs_{lib}"]) and _positive(ratios[f"batched_limit_vs_{lib}"])
        targets = {"speed_vs_limit", "speed_vs_mabwiser", "group_speed_vs_mabwiser", "batched_speed_vs_mabwiser"}
        if "mabwiser" in peers:
            assert targets <= set(status) and set(status.values()) <= {"PASS", "MISS"}
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
        assert set(data["results"][policy]) == set(MODES) | LIMITS
        assert _positive(data["results"][policy]["rtopt"]["rounds_per_s"])
        named = [*data["ratios"][policy], *data["status"][policy]]
        assert named and not [name for name in named if "mabwiser" in name or "river" in name]

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

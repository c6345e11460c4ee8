"""Smoke tests of benchmarks/bayesopt.py: a tiny run reports every figure (no timing or quality assertions)."""

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

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bayesopt.py"
PEERS = {"optuna": "optuna-tpe", "skopt": "skopt-gp", "bayes_opt": "bayes-opt"}
TINY = ("--seeds", "1", "--evaluations", "12", "--sizes", "12", "--problem", "branin", "--problem", "llm", "--json")


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _check(data: dict, methods: set[str]) -> None:
    assert set(data["problems"]) == {"branin", "llm"}
    for problem, table in data["problems"].items():
        assert set(table) == methods, problem
        for method, row in table.items():
            assert row["cpu_per_suggestion"] > 0, (problem, method)
            for at in ("12",):
                assert math.isfinite(row["regret"][at]["median"]) and row["regret"][at]["median"] >= 0
    assert data["fit_and_suggest_seconds"]["12"]["total"] > 0


def test_bayesopt_benchmark_measures_rtopt_without_the_peers(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    for name in PEERS:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shadow), os.environ.get("PYTHONPATH")]))}
    data = _run(*TINY, cwd=tmp_path, env=env)
    assert data["missing"] == sorted(PEERS.values())
    _check(data, {"rtopt", "rtopt-random"})


def test_bayesopt_benchmark_runs_every_peer(tmp_path: Path) -> None:
    absent = [name for name in PEERS if importlib.util.find_spec(name) is None]
    if absent:
        pytest.skip(f"the bench extra is not installed ({', '.join(absent)} missing)")
    data = _run(*TINY, cwd=tmp_path)
    assert data["missing"] == []
    _check(data, {"rtopt", "rtopt-random", *PEERS.values()})

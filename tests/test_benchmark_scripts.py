"""Smoke test of benchmarks/throughput.py: a tiny run must report every figure (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
FIGURES = {
    "raw_rows_per_s",
    "publish_many_events_per_s",
    "publish_many_inputs_per_s",
    "publish_events_per_s",
    "publish_inputs_per_s",
    "decide_3_arms_p50_us",
    "decide_3_arms_p99_us",
    "decide_10_arms_p50_us",
    "decide_10_arms_p99_us",
    "replay_events_per_s",
    "verify_events_per_s",
    "streaming_events_per_s",
    "streaming_inputs_per_s",
}
RATIOS = {"publish_many_events_to_raw", "publish_many_inputs_to_raw"}


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_throughput_quick_json(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)

    assert set(data["figures"]) == FIGURES
    assert set(data["ratios"]) == RATIOS
    for key, value in {**data["figures"], **data["ratios"]}.items():
        assert _positive(value), f"{key} = {value!r}"
    assert data["ratios"]["publish_many_events_to_raw"] > data["ratios"]["publish_many_inputs_to_raw"]

    assert set(data["status"]) == set(data["targets"])
    assert set(data["status"].values()) <= {"PASS", "MISS"}

    counts = data["counts"]
    assert counts["snapshots"] == 0
    assert counts["subscriber_events"] == counts["log_events"] == counts["replay_events"]
    assert counts["publish_many_events"] >= 2 * counts["publish_many_inputs"]
    assert list(tmp_path.iterdir()) == []


def test_window_benchmark_runs_and_agrees_with_its_plain_loop() -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "windows.py"
    result = subprocess.run(
        [sys.executable, str(script), "--events", "20000", "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr  # the script raises if the two computations disagree
    data = json.loads(result.stdout)
    assert data["windows"] > 0 and data["pipelines_events_per_s"] > 0 and data["cost_ratio"] > 0


def test_dashboard_benchmark_reads_incrementally_and_downsamples() -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "dashboard.py"
    result = subprocess.run(
        [sys.executable, str(script), "--events", "6000", "--update", "300", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr  # the script raises if incremental and full reads disagree
    data = json.loads(result.stdout)
    assert 5_900 <= data["events"] <= 6_100
    for key in ("plain_read_events_per_s", "catch_up_events_per_s", "update_ms", "full_recompute_ms"):
        assert _positive(data[key]), f"{key} = {data[key]!r}"
    assert data["update_to_full_recompute"] < 1.0  # a refresh reads only what is new
    assert data["most_rows_per_plot"] <= 4 * 401  # at most ~400 windows per variant

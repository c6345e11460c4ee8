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


def test_detection_benchmark_runs_and_both_sides_agree_where_they_share_a_statistic() -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "detection.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    detectors = json.loads(result.stdout)["detectors"]
    assert set(detectors) == {"adwin", "page_hinkley", "page_hinkley_river_params", "cusum", "zscore", "iqr", "mad"}
    for name in ("adwin", "page_hinkley_river_params"):  # the same statistic on the same values
        ours, river = detectors[name]["rtopt"], detectors[name]["river"]
        assert {k: v for k, v in ours.items() if k != "updates_per_s"} == {
            k: v for k, v in river.items() if k != "updates_per_s"
        }
    for row in detectors.values():
        assert all(_positive(side["updates_per_s"]) for side in (row["rtopt"], row.get("river", row["rtopt"])))
        assert "river" not in row or _positive(row["speed_ratio"])

"""Smoke tests of the benchmark scripts: a tiny run must report every figure
(no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rtopt.pgserver import TemporaryServer

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
FIGURES = {
    "raw_rows_per_s",
    "minimal_rows_per_s",
    "publish_many_events_per_s",
    "publish_many_inputs_per_s",
    "publish_events_per_s",
    "publish_inputs_per_s",
    "publish_group_events_per_s",
    "publish_group_inputs_per_s",
    *(
        f"decide_{policy}_{q}_us{durability}"
        for policy in ("thompson", "ucb1", "linucb")
        for q in ("p50", "p99")
        for durability in ("", "_group")
    ),
    "replay_events_per_s",
    "verify_events_per_s",
    "streaming_events_per_s",
    "streaming_inputs_per_s",
}
RATIOS = {"publish_many_events_to_raw", "publish_many_events_to_minimal"}


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def run_json(script: Path, *args: str, cwd: Path) -> dict:
    """Run a benchmark script with ``--json`` and return what it printed; it must exit 0."""
    result = subprocess.run(
        [sys.executable, str(script), "--json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_throughput_quick_json(tmp_path: Path) -> None:
    data = run_json(SCRIPT, "--quick", cwd=tmp_path)

    assert set(data["figures"]) == FIGURES
    assert set(data["ratios"]) == RATIOS
    for key, value in {**data["figures"], **data["ratios"]}.items():
        assert _positive(value), f"{key} = {value!r}"
    # the minimal table has no chain, fewer columns and fewer indexes than rtopt's schema
    assert data["ratios"]["publish_many_events_to_minimal"] < data["ratios"]["publish_many_events_to_raw"]

    assert set(data["status"]) == set(data["targets"])
    assert set(data["status"].values()) <= {"PASS", "MISS"}

    counts = data["counts"]
    assert counts["snapshots"] == 0
    assert counts["subscriber_events"] == counts["log_events"] == counts["replay_events"]
    assert counts["publish_many_events"] >= 2 * counts["publish_many_inputs"]
    assert counts["raw_rows"] == counts["publish_many_events"]  # the limits wrote the rows step 2 timed
    assert list(tmp_path.iterdir()) == []


def test_import_time_reports_every_case(tmp_path: Path) -> None:
    data = run_json(SCRIPT.with_name("import_time.py"), "--runs", "1", cwd=tmp_path)

    cases = {"baseline", "import", "first_event_existing_log", "first_event_new_log", "cli_help"}
    assert data["runs"] == 1
    for medians, excess in (("median_s", "over_baseline_s"), ("median_cpu_s", "cpu_over_baseline_s")):
        assert set(data[medians]) == cases
        assert set(data[excess]) == cases - {"baseline"}
        assert all(_positive(value) for value in data[medians].values())
    assert list(tmp_path.iterdir()) == []


def test_window_benchmark_runs_and_agrees_with_its_plain_loop() -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "windows.py"
    result = subprocess.run(
        [sys.executable, str(script), "--events", "20000", "--json"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr  # the script raises if the two computations disagree
    data = json.loads(result.stdout)
    assert data["windows"] > 0 and data["pipelines_events_per_s"] > 0 and data["cost_ratio"] > 0


POSTGRES_SCRIPT = SCRIPT.parent / "postgres.py"
POSTGRES_FIGURES = {
    "sqlite_executemany_events_per_s",
    "sqlite_append_events_per_s",
    "raw_executemany_events_per_s",
    "raw_copy_events_per_s",
    "append_1_writers_events_per_s",
    "append_2_writers_events_per_s",
    "append_4_writers_events_per_s",
    "worker_inputs_per_s",
    "worker_derived_per_s",
    "wake_p50_ms",
    "wake_p99_ms",
}


def test_postgres_benchmark_tiny_json(tmp_path: Path, pg_server: TemporaryServer) -> None:
    tiny = ["--events", "2000", "--batch", "500", "--steps", "100", "--rounds", "9"]
    data = run_json(POSTGRES_SCRIPT, "--server", pg_server.url(), *tiny, cwd=tmp_path)
    assert set(data["figures"]) == POSTGRES_FIGURES
    for key, value in {**data["figures"], **data["ratios"]}.items():
        # a reader can wake before the writer's call returns: a wake-up delay may be 0
        assert _positive(value) or (key.startswith("wake_") and value == 0), f"{key} = {value!r}"
    assert data["missed_or_repeated_events"] == 0
    assert set(data["status"]) == set(data["targets"])
    assert data["status"]["missed_or_repeated_events"] == "PASS"
    assert set(data["status"].values()) <= {"PASS", "MISS"}
    assert list(tmp_path.iterdir()) == []


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
    long = json.loads(result.stdout)["adwin_long_stream"]  # the script fails if the detections differ
    for setting in ("river_defaults", "replayable", "handler_clock_1"):
        row = long[setting]
        assert all(_positive(row[key]) for key in ("river_updates_per_s", "rtopt_updates_per_s", "speed_ratio"))
        assert [i // (long["values"] // 5) for i in row["detections"]] == [1, 2, 3, 4]


def test_processes_benchmark_runs_and_every_run_verifies() -> None:
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "processes.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", "--processes", "2", "--layouts", "shared"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    runs = [(row["backend"], row["layout"], row["processes"]) for row in data["results"]]
    assert runs == [("sqlite", "shared", 2), ("postgres", "shared", 2)]
    for row in data["results"]:
        assert row["verify_ok"] and row["pulls"] == row["rounds"] == row["processes"] * data["rounds_per_process"]
        assert row["transactions"] == 2 * row["rounds"]  # a decide and a feedback commit per round
        figures = ("engine_rounds_per_s", "limit_rounds_per_s", "ratio", "engine_cpu_us_per_round")
        assert all(_positive(row[key]) for key in figures)
        assert row["to_one_process"] is None  # no run of one process to compare with
        unordered = row["unordered_limit_rounds_per_s"]  # the limit without the append lock: PostgreSQL only
        assert _positive(unordered) if row["backend"] == "postgres" else unordered is None
        assert (row["server_cpu_us_per_round"] > 0) == (row["backend"] == "postgres")
        assert 0 <= row["lag_p50_ms"] <= row["lag_p99_ms"]  # another process learns from each Feedback

"""Detector speed and accuracy: rtopt's drift and anomaly detectors beside River's on the same streams.

Streams (seeded): per seed 10,000 N(0, 1) values then 10,000 N(1, 1) (a change at 10,000), and 50,000
stationary N(0, 1) values. For each detector the script prints updates/s, the false alarms before the
change, the delay of the first detection after it and the false alarms on the stationary stream; beside
it, River's equivalent on the same values, and the speed ratio (goal: rtopt no slower per update, with
the same or earlier detections at no more false alarms).

Pairs: ADWIN (both on River's Rust core; same parameters, the same detections), Page-Hinkley (plain
Python here, River's in Python; rtopt's calibrated threshold beside River's default), Page-Hinkley with
River's parameters (the same detections: the speed of the two codes alone), the rolling z-score beside
River's ``GaussianScorer`` over the same window (both score then learn), and the IQR fences beside River's
Rust ``RollingIQR`` over the same window. CUSUM and MAD have no River equivalent and are measured alone.

ADWIN on a long stream: 500,000 seeded values whose mean moves by one standard deviation every 100,000,
given one at a time to River's ``drift.ADWIN`` class (``update(x)``, then ``drift_detected``) and to rtopt's
``ADWIN`` (``update(x) -> bool``), in River's default setting, the same with ``replayable`` (the values
since the last detection kept for snapshots) and the detection handler's (``clock=1``, ``replayable``):
updates/s of each, the ratio (goal: at least 0.95), and the detections, which must be the same (the
script fails otherwise).

Run ``python benchmarks/detection.py`` (``--seeds N``, ``--quick``, ``--json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from river import anomaly, drift
from river import stats as river_stats
from rtopt.handlers.detection import ADWIN, CUSUM, MAD, IQRFences, PageHinkley, ZScore

CHANGE = 10_000
WINDOW = 100
LONG_STREAM, LONG_CHANGES = 500_000, 5  # the ADWIN stream: its length and its levels (4 changes)
ADWIN_SETTINGS: dict[str, dict[str, Any]] = {
    "river_defaults": {},
    "replayable": {"replayable": True},
    "handler_clock_1": {"clock": 1, "replayable": True},
}
Update = Callable[[float], bool]


def step_stream(seed: int, size: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.standard_normal(size), rng.standard_normal(size) + 1.0]).tolist()


def stationary_stream(seed: int, size: int) -> list[float]:
    return np.random.default_rng(1000 + seed).standard_normal(size).tolist()


def river_drift(detector: Any) -> Update:
    def update(x: float) -> bool:
        detector.update(x)
        return detector.drift_detected

    return update


def river_gaussian() -> Update:
    """River's rolling Gaussian scorer as a 3-sigma detector: score, flag, then learn (as ZScore does)."""
    scorer = anomaly.GaussianScorer(window_size=WINDOW, grace_period=20)
    limit = 0.9973  # 2 * |cdf - 0.5| at 3 standard deviations

    def update(x: float) -> bool:
        flagged = scorer.score_one(None, x) > limit
        scorer.learn_one(None, x)
        return flagged

    return update


def river_iqr() -> Update:
    """Tukey's fences on River's rolling quartiles: flag beyond 1.5 IQR, then learn."""
    low, high = river_stats.RollingQuantile(0.25, WINDOW), river_stats.RollingQuantile(0.75, WINDOW)
    seen = 0

    def update(x: float) -> bool:
        nonlocal seen
        flagged = False
        if seen >= 20:
            q1, q3 = low.get(), high.get()
            spread = 1.5 * (q3 - q1)
            flagged = x < q1 - spread or x > q3 + spread
        low.update(x)
        high.update(x)
        seen += 1
        return flagged

    return update


DRIFT: dict[str, tuple[Callable[[], Update], Callable[[], Update] | None]] = {
    "adwin": (lambda: ADWIN().update, lambda: river_drift(drift.ADWIN())),
    "page_hinkley": (lambda: PageHinkley().update, lambda: river_drift(drift.PageHinkley())),
    "page_hinkley_river_params": (
        lambda: PageHinkley(threshold=50.0).update,
        lambda: river_drift(drift.PageHinkley()),
    ),
    "cusum": (lambda: CUSUM().update, None),
}
ANOMALY: dict[str, tuple[Callable[[], Update], Callable[[], Update] | None]] = {
    "zscore": (lambda: ZScore(window=WINDOW).update, river_gaussian),
    "iqr": (lambda: IQRFences(window=WINDOW).update, river_iqr),
    "mad": (lambda: MAD(window=WINDOW).update, None),
}


def long_stream(seed: int, size: int) -> list[float]:
    """``size`` N(0, 1) values whose mean is 0 and 1 by turns, over ``LONG_CHANGES`` equal stretches."""
    rng = np.random.default_rng(3000 + seed)
    level = (np.arange(size) * LONG_CHANGES // size) % 2
    return (rng.standard_normal(size) + level).tolist()


def river_adwin(values: Sequence[float], params: dict[str, Any]) -> list[int]:
    """The indices where River's ADWIN class, used as its documentation shows, detects a change."""
    detector = drift.ADWIN(**params)
    found = []
    for i, x in enumerate(values):
        detector.update(x)
        if detector.drift_detected:
            found.append(i)
    return found


def rtopt_adwin(values: Sequence[float], params: dict[str, Any]) -> list[int]:
    """The indices where rtopt's ADWIN detects a change."""
    detector = ADWIN(**params)
    found = []
    for i, x in enumerate(values):
        if detector.update(x):
            found.append(i)
    return found


def adwin_figures(size: int, repeats: int) -> dict[str, Any]:
    """River's ADWIN class and rtopt's on one long stream in each setting: updates per second of the process's
    CPU time (the best of ``repeats`` runs of each, taken in turns, so other work on the machine moves the
    ratio little), the ratio and the detections; raises if they detect at different values."""
    values = long_stream(0, size)
    settings = {}
    for name, options in ADWIN_SETTINGS.items():
        river_params = {key: value for key, value in options.items() if key != "replayable"}
        best = {"river": math.inf, "rtopt": math.inf}
        found: dict[str, list[int]] = {}
        for _ in range(repeats):
            for side, run_side, params in (("river", river_adwin, river_params), ("rtopt", rtopt_adwin, options)):
                gc.collect()
                gc.disable()
                try:
                    started = time.process_time()
                    found[side] = run_side(values, params)
                    best[side] = min(best[side], time.process_time() - started)
                finally:
                    gc.enable()
        if found["rtopt"] != found["river"]:
            raise AssertionError(f"ADWIN {name}: rtopt detects at {found['rtopt']}, River at {found['river']}")
        settings[name] = {
            "params": options,
            "river_updates_per_s": size / best["river"],
            "rtopt_updates_per_s": size / best["rtopt"],
            "speed_ratio": best["river"] / best["rtopt"],
            "detections": found["rtopt"],
        }
    return {"values": size, "changes_at": [size * k // LONG_CHANGES for k in range(1, LONG_CHANGES)], **settings}


def timed(make: Callable[[], Update], values: Sequence[float], repeats: int = 3) -> tuple[list[int], float]:
    """The indices a fresh ``make()`` flags in ``values`` and its updates per second (the best of ``repeats``
    runs: other work on the machine only ever slows a run down)."""
    best = 0.0
    for _ in range(repeats):
        update = make()
        gc.collect()
        gc.disable()
        try:
            started = time.perf_counter()
            flags = [update(x) for x in values]
            elapsed = time.perf_counter() - started
        finally:
            gc.enable()
        best = max(best, len(values) / elapsed)
    return [i for i, flag in enumerate(flags) if flag], best


def drift_figures(make: Callable[[], Update], seeds: int, size: int, repeats: int) -> dict[str, Any]:
    rates, false_alarms, delays, stationary = [], [], [], []
    for seed in range(seeds):
        found, rate = timed(make, step_stream(seed, size), repeats)
        rates.append(rate)
        false_alarms.append(sum(i < size for i in found))
        after = [i - size for i in found if i >= size]
        delays.append(after[0] if after else None)
        stationary.append(len(timed(make, stationary_stream(seed, 5 * size), repeats=1)[0]))
    return {
        "updates_per_s": float(np.median(rates)),
        "false_alarms_before_change": false_alarms,
        "delays": delays,
        "false_alarms_stationary": stationary,
    }


def anomaly_figures(make: Callable[[], Update], seeds: int, size: int, repeats: int) -> dict[str, Any]:
    """Updates/s on stationary values with 1 % of them replaced by 8-sigma outliers; outliers caught and
    clean values flagged."""
    rates, caught, false_flags = [], [], []
    for seed in range(seeds):
        rng = np.random.default_rng(2000 + seed)
        values = rng.standard_normal(size)
        outliers = rng.choice(np.arange(200, size), size // 100, replace=False)
        values[outliers] = 8.0 * rng.choice([-1.0, 1.0], len(outliers))
        found, rate = timed(make, values.tolist(), repeats)
        rates.append(rate)
        caught.append(len(set(found) & set(outliers.tolist())) / len(outliers))
        false_flags.append(len(set(found) - set(outliers.tolist())))
    return {"updates_per_s": float(np.median(rates)), "outliers_caught": caught, "clean_flagged": false_flags}


def run(seeds: int, size: int, repeats: int = 3, long_size: int = LONG_STREAM) -> dict[str, Any]:
    results: dict[str, Any] = {"seeds": seeds, "change_at": size, "detectors": {}}
    results["adwin_long_stream"] = adwin_figures(long_size, repeats)
    for table, figures in ((DRIFT, drift_figures), (ANOMALY, anomaly_figures)):
        for name, (ours, theirs) in table.items():
            row = {"rtopt": figures(ours, seeds, size, repeats)}
            if theirs is not None:
                row["river"] = figures(theirs, seeds, size, repeats)
                row["speed_ratio"] = row["rtopt"]["updates_per_s"] / row["river"]["updates_per_s"]
            results["detectors"][name] = row
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        f"{results['seeds']} seeds; drift: change at {results['change_at']}, stationary {5 * results['change_at']}",
        f"{'detector':28} {'side':6} {'updates/s':>11} {'ratio':>6}  accuracy",
    ]
    for name, row in results["detectors"].items():
        for side in ("rtopt", "river"):
            if side not in row:
                continue
            figures = row[side]
            ratio = f"{row['speed_ratio']:.2f}" if side == "rtopt" and "speed_ratio" in row else ""
            if "delays" in figures:
                accuracy = (
                    f"false alarms before {figures['false_alarms_before_change']}, delays {figures['delays']}, "
                    f"stationary false alarms {figures['false_alarms_stationary']}"
                )
            else:
                accuracy = f"outliers caught {figures['outliers_caught']}, clean flagged {figures['clean_flagged']}"
            lines.append(f"{name:28} {side:6} {figures['updates_per_s']:>11,.0f} {ratio:>6}  {accuracy}")
    long = results["adwin_long_stream"]
    lines += [
        "",
        f"ADWIN, {long['values']:,} values, changes at {long['changes_at']}: River's class beside rtopt's",
        f"{'setting':28} {'River/s':>11} {'rtopt/s':>11} {'ratio':>6}  detections (the same on both sides)",
    ]
    for name, row in long.items():
        if isinstance(row, dict):
            lines.append(
                f"{name:28} {row['river_updates_per_s']:>11,.0f} {row['rtopt_updates_per_s']:>11,.0f} "
                f"{row['speed_ratio']:>6.2f}  {row['detections']}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tiny run (2,000 values a side, one seed, one timing)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seeds, size, repeats, long_size = (1, 2_000, 1, 20_000) if args.quick else (args.seeds, CHANGE, 3, LONG_STREAM)
    results = run(seeds, size, repeats, long_size)
    print(json.dumps(results) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

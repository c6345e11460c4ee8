"""What starting rtopt costs: ``import rtopt``, the first event of a process, and the command line's start-up.

Each figure is the median over ``--runs`` fresh Python processes (this interpreter, the same environment)
of their wall time and of their CPU time (user + system, which other processes' load disturbs less), the
cases taking turns so that a change in the machine's load touches them all alike:

1. ``python -c pass``: the interpreter's own start-up, the baseline the others are compared with;
2. ``import rtopt``;
3. ``import rtopt``, ``Engine.open`` of an existing SQLite log with the installed handlers, and one
   ``publish`` of a Feedback: the time to a process's first durable event;
4. the same into a new log (its schema created first);
5. ``rtopt --help``: the command line's start-up (every command's parser built).

It prints each median and its excess over the baseline. Run ``python benchmarks/import_time.py``
(``--quick`` for 3 runs, ``--json`` for one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

RUNS = 15
PUBLISH = """
import sys
from rtopt import Engine, Feedback
with Engine.open(sys.argv[1], seed=7) as engine:
    engine.publish(Feedback(prompt_id="p", variant_id="v1", response_time_ms=120.0, success=True, quality_score=0.8))
"""
CASES = {
    "baseline": ["-c", "pass"],
    "import": ["-c", "import rtopt"],
    "first_event_existing_log": ["-c", PUBLISH, "{existing}"],
    "first_event_new_log": ["-c", PUBLISH, "{new}"],
    "cli_help": ["-m", "rtopt", "--help"],
}
LABELS = {
    "baseline": "python -c pass",
    "import": "import rtopt",
    "first_event_existing_log": "open an existing log + publish",
    "first_event_new_log": "create a log + publish",
    "cli_help": "rtopt --help",
}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def seconds_to_run(arguments: list[str], folder: str) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh interpreter running ``arguments`` in ``folder`` (where no other rtopt
    can be found first); it must exit 0."""
    cpu, started = _children_cpu_s(), time.perf_counter()
    subprocess.run([sys.executable, *arguments], check=True, stdout=subprocess.DEVNULL, cwd=folder)
    return time.perf_counter() - started, _children_cpu_s() - cpu


def _medians(times: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """The median of each case and its excess over the baseline's."""
    medians = {case: statistics.median(values) for case, values in times.items()}
    return medians, {case: medians[case] - medians["baseline"] for case in CASES if case != "baseline"}


def measure(runs: int) -> dict[str, object]:
    """The median wall and CPU seconds of each case over ``runs`` turns, and their excess over the baseline."""
    wall: dict[str, list[float]] = {case: [] for case in CASES}
    cpu: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as folder:
        existing = Path(folder) / "existing.sqlite"
        seconds_to_run(["-c", PUBLISH, str(existing)], folder)
        for run in range(runs):
            paths = {"existing": str(existing), "new": str(Path(folder) / f"new-{run}.sqlite")}
            for case, arguments in CASES.items():
                elapsed, used = seconds_to_run([argument.format(**paths) for argument in arguments], folder)
                wall[case].append(elapsed)
                cpu[case].append(used)
    median_wall, wall_excess = _medians(wall)
    median_cpu, cpu_excess = _medians(cpu)
    return {
        "runs": runs,
        "median_s": median_wall,
        "over_baseline_s": wall_excess,
        "median_cpu_s": median_cpu,
        "cpu_over_baseline_s": cpu_excess,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help=f"processes per case (default {RUNS})")
    parser.add_argument("--quick", action="store_true", help="3 processes per case")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    args = parser.parse_args(argv)
    results = measure(3 if args.quick else args.runs)
    if args.json:
        print(json.dumps(results))
        return 0
    wall, cpu = results["median_s"], results["median_cpu_s"]
    wall_excess, cpu_excess = results["over_baseline_s"], results["cpu_over_baseline_s"]
    assert isinstance(wall, dict) and isinstance(cpu, dict)
    assert isinstance(wall_excess, dict) and isinstance(cpu_excess, dict)
    print(f"median of {results['runs']} fresh processes each (python {sys.version.split()[0]}), in seconds")
    print(f"{'':<32}  {'wall':>6} {'over baseline':>14}  {'CPU':>6} {'over baseline':>14}")
    for case, label in LABELS.items():
        over = ("", "") if case == "baseline" else (f"{wall_excess[case]:+.3f}", f"{cpu_excess[case]:+.3f}")
        print(f"{label:<32}: {wall[case]:>6.3f} {over[0]:>14}  {cpu[case]:>6.3f} {over[1]:>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

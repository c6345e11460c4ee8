"""What starting rtopt costs: ``import rtopt``, the first event of a process, and the command line's start-up.

Each figure is the median wall time of ``--runs`` fresh Python processes (this interpreter, the same
environment), the cases taking turns so that a change in the machine's load touches them all alike:

1. ``python -c pass``: the interpreter's own start-up, the baseline the others are compared with;
2. ``import rtopt``;
3. ``import rtopt``, ``Engine.open`` of an existing SQLite log with the installed handlers, and one
   ``publish`` of a Feedback: the time to a process's first durable event;
4. the same into a new log (its schema created first);
5. ``rtopt --help``: the command line's start-up (every command's parser built).

It prints each median and its difference from the baseline. Run ``python benchmarks/import_time.py``
(``--quick`` for 3 runs, ``--json`` for one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import json
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


def seconds_to_run(arguments: list[str], folder: str) -> float:
    """Wall seconds of one fresh interpreter running ``arguments`` in ``folder`` (where no other rtopt can be
    found first); it must exit 0."""
    started = time.perf_counter()
    subprocess.run([sys.executable, *arguments], check=True, stdout=subprocess.DEVNULL, cwd=folder)
    return time.perf_counter() - started


def measure(runs: int) -> dict[str, object]:
    """The median seconds of each case over ``runs`` turns, and each one's excess over the baseline."""
    times: dict[str, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as folder:
        existing = Path(folder) / "existing.sqlite"
        seconds_to_run(["-c", PUBLISH, str(existing)], folder)
        for run in range(runs):
            paths = {"existing": str(existing), "new": str(Path(folder) / f"new-{run}.sqlite")}
            for case, arguments in CASES.items():
                times[case].append(seconds_to_run([argument.format(**paths) for argument in arguments], folder))
    medians = {case: statistics.median(values) for case, values in times.items()}
    return {
        "runs": runs,
        "median_s": medians,
        "over_baseline_s": {case: medians[case] - medians["baseline"] for case in CASES if case != "baseline"},
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
    medians, excess = results["median_s"], results["over_baseline_s"]
    assert isinstance(medians, dict) and isinstance(excess, dict)
    print(f"median wall time of {results['runs']} fresh processes each (python {sys.version.split()[0]})")
    for case, label in LABELS.items():
        beyond = "" if case == "baseline" else f"  ({excess[case]:+.3f} s over the baseline)"
        print(f"{label:<32}: {medians[case]:.3f} s{beyond}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

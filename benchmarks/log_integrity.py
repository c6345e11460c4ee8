"""What the log's integrity costs, and what a second SQLite writer costs the first, in one run.

1. Raw appends into SQLite logs, the same Feedback rows (msgpack-encoded) in batches of 1,000 rows and of
   1 row: :meth:`rtopt.storage.sqlite.SQLiteLog.append` (each row hash-chained to the one before, the head anchor
   written in the same transaction) against the append of format 1 (the same transaction without the
   chain and the anchor), run on a log of the same schema, three times each in turn, best of three; the
   ratio is chained / unchained.
2. Two writers on one SQLite file: events/s that an engine without handlers publishes alone, and then
   while another process, an engine with a handler, publishes all the time (folding what the first wrote
   before each of its commits, without rebuilding); the ratio is with / alone, and the second process's
   publishes are reported.

Run ``python benchmarks/log_integrity.py`` (``--quick`` for a tiny run, ``--json`` for one JSON object).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rtopt import Engine, Feedback
from rtopt.events import encode_payload
from rtopt.storage.interface import COLUMNS, Row
from rtopt.storage.sqlite import SQLiteLog

REPEATS = 3
_UNCHAINED = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"

SECOND_WRITER = """
import json, sys, time
from rtopt.handlers.bandits import BanditHandler
from rtopt import Engine, Feedback

path, seconds = sys.argv[1], float(sys.argv[2])
accepted = 0
with Engine.open(path, handlers=[BanditHandler()]) as engine:
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        engine.publish(Feedback(prompt_id="b", variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5))
        accepted += 1
print(json.dumps({"accepted": accepted}), flush=True)
"""


def feedback_rows(n: int) -> list[Row]:
    payload = encode_payload(
        Feedback(prompt_id="p1", variant_id="v1", response_time_ms=120.0, success=True, quality_score=0.8)
    )
    now = time.time()
    return [(i, f"id-{i}", "Feedback", "p1", now, now, None, None, 1, payload) for i in range(1, n + 1)]


def unchained_append(log: SQLiteLog) -> Callable[[Sequence[Row]], None]:
    """The append of format 1: the same transaction and placement check, without the chain and the anchor."""

    def append(rows: Sequence[Row]) -> None:
        conn = log._writer
        with log._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            conn.executemany(_UNCHAINED, log._place(rows, last))
            conn.execute("COMMIT")

    return append


def rows_per_second(folder: Path, name: str, rows: list[Row], batch: int, chained: bool) -> float:
    log = SQLiteLog.open(folder / f"{name}.sqlite", seed=1)
    try:
        append = log.append if chained else unchained_append(log)
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            append(rows[start : start + batch])
        return len(rows) / (time.perf_counter() - started)
    finally:
        log.close()


def first_writer_rate(path: Path, seconds: float) -> float:
    """Events/s an engine without handlers publishes one at a time for ``seconds``."""
    published = 0
    with Engine.open(path, handlers=[]) as engine:
        deadline = time.monotonic() + seconds
        started = time.perf_counter()
        while time.monotonic() < deadline:
            engine.publish(
                Feedback(prompt_id="a", variant_id="v", response_time_ms=1.0, success=True, quality_score=0.5)
            )
            published += 1
        return published / (time.perf_counter() - started)


def two_writers(folder: Path, seconds: float) -> dict[str, float]:
    path = folder / "two.sqlite"
    Engine.open(path, seed=1, handlers=[]).close()
    alone = first_writer_rate(path, seconds)
    second = subprocess.Popen(
        [sys.executable, "-c", SECOND_WRITER, str(path), str(seconds * 1.5)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert second.stdout is not None
        if second.stdout.readline().strip() != "ready":
            raise RuntimeError("the second writer did not start")
        beside = first_writer_rate(path, seconds)
        report = json.loads(second.stdout.readline())
    finally:
        second.wait(seconds * 10)
    return {
        "first_alone_events_per_s": alone,
        "first_beside_second_events_per_s": beside,
        "second_accepted": report["accepted"],
        "second_events_per_s": report["accepted"] / (seconds * 1.5),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="rows appended in 1,000-row batches")
    parser.add_argument("--single", type=int, default=5_000, help="rows appended one per transaction")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds each two-writer phase runs")
    parser.add_argument("--quick", action="store_true", help="a tiny run: 10,000 and 500 rows, 1 s phases")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.single, args.seconds = 10_000, 500, 1.0
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sizes = (("batch_1000", args.rows, 1000), ("batch_1", args.single, 1))
        for label, count, batch in sizes:
            rows = feedback_rows(count)
            for repeat in range(REPEATS):  # interleaved, best of each: the machine's noise hits both alike
                for chained in (False, True):
                    name = f"{label}_{'chained' if chained else 'unchained'}"
                    rate = rows_per_second(folder, f"{name}_{repeat}", rows, batch, chained)
                    figures[f"{name}_rows_per_s"] = max(rate, figures.get(f"{name}_rows_per_s", 0.0))
        figures.update(two_writers(folder, args.seconds))
    ratios = {
        "batch_1000_chained_to_unchained": figures["batch_1000_chained_rows_per_s"]
        / figures["batch_1000_unchained_rows_per_s"],
        "batch_1_chained_to_unchained": figures["batch_1_chained_rows_per_s"] / figures["batch_1_unchained_rows_per_s"],
        "first_writer_beside_second_to_alone": figures["first_beside_second_events_per_s"]
        / figures["first_alone_events_per_s"],

    }
    if args.json:
        print(json.dumps({"figures": figures, "ratios": ratios}))
        return 0
    table = Table(title="log integrity")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in {**figures, **ratios}.items():
        table.add_row(key, f"{value:,.2f}" if key in ratios else f"{value:,.0f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Decide+feedback rounds per second with several processes on one SQLite log and one experiment, beside the
physical limit measured in the same run.

For each number of processes (1, 2 and 4 by default), in SQLite files (WAL mode) under one temporary folder:

1. engine: each process opens the log with ``Engine.open(path, handlers=[BanditHandler()])``, defines the
   Thompson experiment (the same definition, recorded once) and, once all are ready, runs ``--rounds``
   rounds of ``decide`` then ``feedback``; rounds/s is every process's rounds over the time from the first
   start to the last end;
2. limit: as many processes of plain ``sqlite3`` write the very transactions step 1 committed (its rows read
   back from its log and grouped by commit: a Decision, then a Feedback with its ArmUpdated), each in one
   ``BEGIN IMMEDIATE`` transaction that reads the last seq, inserts the rows after it and moves the log's
   head, as the engine does, and nothing else: no folding, no deciding, no catching up.

The ratio engine / limit says what share of the storage's rate the engine keeps. Run
``python benchmarks/processes.py`` (``--quick`` for a tiny run, ``--json`` for one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from itertools import groupby
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine
from rtopt.storage.interface import COLUMNS, HEAD, head_value
from rtopt.storage.sql import _SET_META
from rtopt.storage.sqlite import SQLiteLog

SPAWN = multiprocessing.get_context("spawn")
SEED = 20_260_101
EXPERIMENT = "shared"
ARMS = ("v1", "v2", "v3")
SUCCESS = (0.3, 0.5, 0.7)
WAIT_S = 600.0


def engine_rounds(path: str, rounds: int, worker: int, ready: Barrier) -> tuple[float, float]:
    """Run ``rounds`` decide+feedback rounds once every process is ready; returns (start, end) in seconds of
    the system's monotonic clock."""
    import random

    outcomes = random.Random(worker)
    with Engine.open(path, handlers=[BanditHandler()]) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(ARMS), policy="thompson")
        ready.wait(WAIT_S)
        start = time.monotonic()
        for _ in range(rounds):
            decision = engine.decide(EXPERIMENT)
            success = outcomes.random() < SUCCESS[ARMS.index(decision.payload.arm)]
            engine.feedback(decision.id, success=success, quality_score=float(success), response_time_ms=10.0)
        return start, time.monotonic()


def raw_transactions(path: str, transactions: list[list[tuple[Any, ...]]], ready: Barrier) -> tuple[float, float]:
    """Write each of ``transactions`` (rows without their seq) in a ``BEGIN IMMEDIATE`` transaction of its own,
    after the last seq, moving the head; returns (start, end) as :func:`engine_rounds` does."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=NORMAL")
    insert = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    ready.wait(WAIT_S)
    start = time.monotonic()
    for rows in transactions:
        conn.execute("BEGIN IMMEDIATE")
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        numbered = [(last + i, *row) for i, row in enumerate(rows, start=1)]
        conn.executemany(insert, numbered)
        conn.execute(_SET_META, (HEAD, head_value(numbered[-1][0], numbered[-1][-1])))
        conn.execute("COMMIT")
    end = time.monotonic()
    conn.close()
    return start, end


def together(target: Any, argument_lists: list[tuple[Any, ...]]) -> float:
    """Run ``target`` in one spawned process per argument list, started together; the seconds from the
    first start to the last end."""
    with SPAWN.Manager() as manager, SPAWN.Pool(len(argument_lists)) as pool:
        ready = manager.Barrier(len(argument_lists))
        results = [pool.apply_async(target, (*arguments, ready)) for arguments in argument_lists]
        spans = [result.get(WAIT_S) for result in results]
    return max(end for _, end in spans) - min(start for start, _ in spans)


def committed_transactions(path: str) -> list[list[tuple[Any, ...]]]:
    """The rows of the engine's log after its definition, without their seq, grouped by the commit that wrote
    them (a commit's events share their recording time)."""
    conn = sqlite3.connect(path)
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM events WHERE type != 'ExperimentDefined' ORDER BY seq")
    recorded_at = COLUMNS.index("recorded_at")
    grouped = [[row[1:] for row in group] for _, group in groupby(rows, key=lambda row: row[recorded_at])]
    conn.close()
    return grouped


def measure(folder: Path, processes: int, rounds: int) -> dict[str, Any]:
    """Rounds/s of the engine and of the limit with ``processes`` processes of ``rounds`` rounds each."""
    path = str(folder / f"engine-{processes}.sqlite")
    SQLiteLog.open(path, seed=SEED).close()
    seconds = together(engine_rounds, [(path, rounds, worker) for worker in range(processes)])
    with Engine.open(path, read_only=True, handlers=[BanditHandler()]) as engine:
        ok = Engine.verify(path).ok
        pulls = sum(arm.pulls for arm in engine.state("bandit", EXPERIMENT).arms.values())
    transactions = committed_transactions(path)
    raw = str(folder / f"raw-{processes}.sqlite")
    SQLiteLog.open(raw, seed=SEED).close()
    raw_seconds = together(raw_transactions, [(raw, transactions[worker::processes]) for worker in range(processes)])
    total = processes * rounds
    engine_rate = total / seconds
    limit_rate = len(transactions) / 2 / raw_seconds
    return {
        "processes": processes,
        "rounds": total,
        "engine_rounds_per_s": engine_rate,
        "limit_rounds_per_s": limit_rate,
        "ratio": engine_rate / limit_rate,
        "transactions": len(transactions),
        "rows": sum(len(rows) for rows in transactions),
        "verify_ok": ok,
        "pulls": pulls,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the figures (a table, or one JSON object with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000, help="decide+feedback rounds per process (default 1000)")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2, 4], help="numbers of processes (default 1 2 4)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run: 50 rounds per process")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    rounds = 50 if args.quick else args.rounds
    with tempfile.TemporaryDirectory() as folder:
        results = [measure(Path(folder), processes, rounds) for processes in args.processes]
    if args.json:
        print(json.dumps({"rounds_per_process": rounds, "results": results}))
        return 0
    table = Table(title=f"decide+feedback on one SQLite log, one experiment, {rounds} rounds per process")
    for column in ("processes", "engine rounds/s", "limit rounds/s", "engine / limit", "verify", "pulls"):
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(
            str(result["processes"]),
            f"{result['engine_rounds_per_s']:,.0f}",
            f"{result['limit_rounds_per_s']:,.0f}",
            f"{result['ratio']:.2f}",
            "ok" if result["verify_ok"] else "FAILED",
            f"{result['pulls']:,}",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

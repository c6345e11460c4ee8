"""Decide+feedback rounds per second with several processes on one log and one experiment, on SQLite and on
PostgreSQL, each beside the physical limit of its storage measured in the same run.

For each backend and each number of processes (1, 2 and 4 by default; ``--processes 1 2 4 8`` adds 8), on
SQLite files (WAL mode) under one temporary folder and on a throwaway PostgreSQL server (fsync on, as a
production server runs; see :mod:`rtopt.pgserver`), each run in a log of its own:

1. engine: each process opens the log with ``Engine.open(location, handlers=[BanditHandler()])`` (the
   default ``durability="process"``), defines the Thompson experiment (the same definition, recorded once)
   and, once all are ready, runs ``--rounds`` rounds of ``decide`` then ``feedback``; rounds/s is every
   process's rounds over the time from the first start to the last end;
2. limit: as many processes of the plain driver write the very transactions step 1 committed (its rows read
   back from its log and grouped by commit: a Decision, then a Feedback with its ArmUpdated), each in one
   transaction that takes the append lock, reads the last seq, inserts the rows after it and moves the
   log's head, as the engine does, and nothing else: no folding, no deciding, no catching up. On SQLite
   that is ``sqlite3`` with ``BEGIN IMMEDIATE``; on PostgreSQL ``psycopg`` with ``synchronous_commit =
   off``, in the engine's two round trips (the lock and the read; the rows, the head, the NOTIFY and the
   COMMIT sent together).

The ratio engine / limit says what share of the storage's rate the engine keeps, the ratio to 1 process
what more processes add. Run ``python benchmarks/processes.py`` (``--quick`` for a tiny run, ``--json`` for
one JSON object on stdout, ``--backends sqlite`` for one backend).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from itertools import groupby
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine
from rtopt.pgserver import TemporaryServer, server_binaries
from rtopt.storage.factory import open_log
from rtopt.storage.interface import COLUMNS, HEAD, head_value
from rtopt.storage.sql import _SET_META

SPAWN = multiprocessing.get_context("spawn")
SEED = 20_260_101
EXPERIMENT = "shared"
ARMS = ("v1", "v2", "v3")
SUCCESS = (0.3, 0.5, 0.7)
WAIT_S = 600.0
BACKENDS = ("sqlite", "postgres")


def engine_rounds(location: str, rounds: int, worker: int, ready: Barrier) -> tuple[float, float, float]:
    """Run ``rounds`` decide+feedback rounds once every process is ready; returns (start, end) in seconds of
    the system's monotonic clock and the CPU seconds the process used in between."""
    import random

    outcomes = random.Random(worker)
    with Engine.open(location, handlers=[BanditHandler()]) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(ARMS), policy="thompson")
        ready.wait(WAIT_S)
        start, cpu = time.monotonic(), time.process_time()
        for _ in range(rounds):
            decision = engine.decide(EXPERIMENT)
            success = outcomes.random() < SUCCESS[ARMS.index(decision.payload.arm)]
            engine.feedback(decision.id, success=success, quality_score=float(success), response_time_ms=10.0)
        return start, time.monotonic(), time.process_time() - cpu


def sqlite_transactions(
    path: str, transactions: list[list[tuple[Any, ...]]], ready: Barrier
) -> tuple[float, float, float]:
    """Write each of ``transactions`` (rows without their seq) in a ``BEGIN IMMEDIATE`` transaction of its own,
    after the last seq, moving the head; returns (start, end) as :func:`engine_rounds` does."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute("PRAGMA synchronous=NORMAL")
    insert = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    ready.wait(WAIT_S)
    start, cpu = time.monotonic(), time.process_time()
    for rows in transactions:
        conn.execute("BEGIN IMMEDIATE")
        (last,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        numbered = [(last + i, *row) for i, row in enumerate(rows, start=1)]
        conn.executemany(insert, numbered)
        conn.execute(_SET_META, (HEAD, head_value(numbered[-1][0], numbered[-1][-1])))
        conn.execute("COMMIT")
    end, cpu = time.monotonic(), time.process_time() - cpu
    conn.close()
    return start, end, cpu


def postgres_transactions(
    url: str, transactions: list[list[tuple[Any, ...]]], ready: Barrier
) -> tuple[float, float, float]:
    """Write each of ``transactions`` (rows without their seq) in a transaction of its own that holds an
    advisory lock, after the last seq, moving the head and notifying, in two round trips; returns (start,
    end) as :func:`engine_rounds` does."""
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET synchronous_commit = off")
    client = psycopg.ClientCursor(conn)
    row = f"({', '.join(['%s'] * len(COLUMNS))})"
    ready.wait(WAIT_S)
    start, cpu = time.monotonic(), time.process_time()
    for rows in transactions:
        cur = conn.execute("BEGIN; SELECT pg_advisory_xact_lock(1); SELECT coalesce(max(seq), 0) FROM events")
        cur.nextset()
        cur.nextset()
        (last,) = cur.fetchone()
        numbered = [(last + i, *row) for i, row in enumerate(rows, start=1)]
        statements = (
            f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES {', '.join([row] * len(numbered))};"
            f" UPDATE rtopt_meta SET value = %s WHERE key = '{HEAD}'; NOTIFY rtopt_events; COMMIT"
        )
        values = [value for numbered_row in numbered for value in numbered_row]
        conn.execute(client.mogrify(statements, [*values, head_value(numbered[-1][0], numbered[-1][-1])]))
    end, cpu = time.monotonic(), time.process_time() - cpu
    conn.close()
    return start, end, cpu


LIMITS: dict[str, Callable[..., tuple[float, float, float]]] = {
    "sqlite": sqlite_transactions,
    "postgres": postgres_transactions,
}


def together(target: Any, argument_lists: list[tuple[Any, ...]]) -> tuple[float, float]:
    """Run ``target`` in one spawned process per argument list, started together; the seconds from the
    first start to the last end, and the CPU seconds the processes used in their runs."""
    with SPAWN.Manager() as manager, SPAWN.Pool(len(argument_lists)) as pool:
        ready = manager.Barrier(len(argument_lists))
        results = [pool.apply_async(target, (*arguments, ready)) for arguments in argument_lists]
        spans = [result.get(WAIT_S) for result in results]
    return max(end for _, end, _ in spans) - min(start for start, _, _ in spans), sum(cpu for _, _, cpu in spans)


def committed_transactions(location: str) -> list[list[tuple[Any, ...]]]:
    """The rows of the engine's log after its definition, without their seq, grouped by the commit that wrote
    them (a commit's events share their recording time)."""
    log = open_log(location, read_only=True)
    try:
        rows = [row for row in log.rows() if row[2] != "ExperimentDefined"]
    finally:
        log.close()
    recorded_at = COLUMNS.index("recorded_at")
    return [[row[1:] for row in group] for _, group in groupby(rows, key=lambda row: row[recorded_at])]


def measure(backend: str, new_log: Callable[[str], str], processes: int, rounds: int) -> dict[str, Any]:
    """Rounds/s of the engine and of the limit on ``backend`` with ``processes`` processes of ``rounds`` rounds
    each; ``new_log(name)`` gives the location of a new, empty log."""
    location = new_log(f"engine_{processes}")
    open_log(location, seed=SEED).close()
    seconds, cpu = together(engine_rounds, [(location, rounds, worker) for worker in range(processes)])
    with Engine.open(location, read_only=True, handlers=[BanditHandler()]) as engine:
        ok = Engine.verify(location).ok
        pulls = sum(arm.pulls for arm in engine.state("bandit", EXPERIMENT).arms.values())
    transactions = committed_transactions(location)
    raw = new_log(f"raw_{processes}")
    open_log(raw, seed=SEED).close()
    parts = [(raw, transactions[worker::processes]) for worker in range(processes)]
    raw_seconds, _ = together(LIMITS[backend], parts)
    total = processes * rounds
    engine_rate = total / seconds
    limit_rate = len(transactions) / 2 / raw_seconds
    return {
        "backend": backend,
        "processes": processes,
        "rounds": total,
        "engine_rounds_per_s": engine_rate,
        "limit_rounds_per_s": limit_rate,
        "ratio": engine_rate / limit_rate,
        "engine_cpu_us_per_round": cpu / total * 1e6,
        "transactions": len(transactions),
        "rows": sum(len(rows) for rows in transactions),
        "verify_ok": ok,
        "pulls": pulls,
    }


def measure_backend(backend: str, process_counts: Sequence[int], rounds: int) -> list[dict[str, Any]]:
    """:func:`measure` for each of ``process_counts`` on ``backend`` (its server started for the run)."""
    with contextlib.ExitStack() as stack:
        if backend == "postgres":
            server = stack.enter_context(TemporaryServer(durable=True))
            new_log: Callable[[str], str] = server.create_database
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            new_log = lambda name: str(folder / f"{name}.sqlite")  # noqa: E731
        results = [measure(backend, new_log, processes, rounds) for processes in process_counts]
    one = {result["processes"]: result["engine_rounds_per_s"] for result in results}.get(1)
    for result in results:
        result["to_one_process"] = None if one is None else result["engine_rounds_per_s"] / one
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the figures (a table per backend, or one JSON object with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000, help="decide+feedback rounds per process (default 1000)")
    parser.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2, 4], help="numbers of processes (default 1 2 4; add 8)"
    )
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="default both")
    parser.add_argument("--quick", action="store_true", help="a tiny run: 50 rounds per process")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    rounds = 50 if args.quick else args.rounds
    backends = [b for b in args.backends if b != "postgres" or server_binaries() is not None]
    results = [result for backend in backends for result in measure_backend(backend, args.processes, rounds)]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rounds_per_process": rounds, "load_average": load, "results": results}))
        return 0
    console = Console()
    for backend in backends:
        table = Table(title=f"decide+feedback on one {backend} log, one experiment, {rounds} rounds per process")
        for column in ("processes", "engine rounds/s", "to 1 process", "limit rounds/s", "engine / limit",
                       "CPU us/round", "verify", "pulls"):  # fmt: skip
            table.add_column(column, justify="right")
        for result in (result for result in results if result["backend"] == backend):
            table.add_row(
                str(result["processes"]),
                f"{result['engine_rounds_per_s']:,.0f}",
                "" if result["to_one_process"] is None else f"{result['to_one_process']:.2f}",
                f"{result['limit_rounds_per_s']:,.0f}",
                f"{result['ratio']:.2f}",
                f"{result['engine_cpu_us_per_round']:,.0f}",
                "ok" if result["verify_ok"] else "FAILED",
                f"{result['pulls']:,}",
            )
        console.print(table)
    skipped = sorted(set(args.backends) - set(backends))
    if skipped:
        console.print(f"skipped {', '.join(skipped)}: no PostgreSQL server binaries installed")
    console.print(f"load average at the end (1, 5, 15 min): {', '.join(f'{value:.2f}' for value in load)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

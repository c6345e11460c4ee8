"""Decide+feedback rounds per second with several processes on one log, on one experiment and on one
experiment per process, on SQLite and on PostgreSQL, each beside the physical limit of its storage measured
in the same run, with the learning lag.

For each backend and each number of processes (1, 2 and 4 by default; ``--processes 1 2 4 8`` adds 8), on
SQLite files (WAL mode) under one temporary folder and on a throwaway PostgreSQL server (fsync on, as a
production server runs; see :mod:`rtopt.pgserver`), each run in a log of its own:

1. engine: each process opens the log with ``Engine.open(location, handlers=[BanditHandler()])`` (the
   default ``durability="process"``), defines the Thompson experiment (``shared``: one for all, the same
   definition recorded once; ``own``: one per process) and, once all are ready, runs ``--rounds`` rounds of
   ``decide`` then ``feedback``; rounds/s is every process's rounds over the time from the first start to
   the last end, CPU the seconds the processes (and the PostgreSQL server's) used per round;
2. limit: as many processes of the plain driver write the very transactions step 1 committed (its rows read
   back from its log and grouped by commit: a Decision, then a Feedback with its ArmUpdated), each in one
   transaction that takes the append lock, reads the last seq, inserts the rows after it and moves the
   log's head, as the engine does, and nothing else: no folding, no deciding, no catching up. On SQLite
   that is ``sqlite3`` with ``BEGIN IMMEDIATE``; on PostgreSQL ``psycopg``, in the engine's two round trips
   (the lock and the read; the rows, the head, the NOTIFY and the COMMIT sent together);
3. on PostgreSQL, the limit without an order: the same transactions without the append lock, numbered by a
   sequence, into a table of the same shape, in one round trip each, so commits overlap and share WAL
   flushes. What the engine's order (every commit derived from every event before it) costs is the
   difference between 2 and 3.

``--durability power`` runs the engine with ``durability="power"`` and the limits with ``synchronous=FULL``
(SQLite) and ``synchronous_commit = on`` (PostgreSQL): every commit flushed before it returns.

The ratio engine / limit says what share of the storage's rate the engine keeps, the ratio to 1 process
what more processes add. The learning lag (:func:`lags_from`) is, for each Feedback and each other process
deciding on its experiment, the time from the Feedback's commit to that process's first decision made on a
state that holds what the Feedback derived. Run ``python benchmarks/processes.py`` (``--quick`` for a tiny
run, ``--json`` for one JSON object on stdout, ``--backends sqlite`` for one backend, ``--layouts shared``
for one experiment only).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import multiprocessing
import os
import sqlite3
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import groupby
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine
from rtopt.events import Decision, Feedback
from rtopt.pgserver import TemporaryServer, server_binaries
from rtopt.privacy import Keyring
from rtopt.storage.factory import open_log
from rtopt.storage.interface import CHAIN, COLUMNS, HEAD, EventLog, head_value
from rtopt.storage.sql import _SET_META, SQLLog

SPAWN = multiprocessing.get_context("spawn")
SEED = 20_260_101
EXPERIMENT = "shared"
ARMS = ("v1", "v2", "v3")
SUCCESS = (0.3, 0.5, 0.7)
WAIT_S = 600.0
BACKENDS = ("sqlite", "postgres")
STORED = (*COLUMNS, CHAIN)
"""The columns of a row as the engine stores it: the envelope, the payload and the row's link in the chain."""
LAYOUTS = ("shared", "own")
"""One experiment for every process, or one experiment per process."""
DECISION, FEEDBACK = Decision.tag(), Feedback.tag()


LagRow = tuple[int, str, str, str | None, float, int | None]
"""seq, id, type tag, causation id, recorded_at, and a Decision's basis."""


def lags_from(rows: Iterable[LagRow], makers: Mapping[str, int], learners: Mapping[str, int]) -> list[float]:
    """The learning lags, in seconds, of ``rows`` (in seq order): ``makers`` maps decision ids to the process
    that made them, ``learners`` feedback ids to the process that committed them.

    A decision is made on the state up to its basis (the seq its Decision records, or the seq right before
    it when it records none); a Feedback's derived events commit with it, so a state holds them once it
    reaches the last of them. Times are the commits' ``recorded_at`` (one host, one clock): a decision made
    before its commit counts until that commit, so a lag is an upper bound.

    >>> rows = [  # seq, id, type, causation, recorded_at, basis
    ...     (1, "d1", "Decision", None, 10.0, None), (2, "f1", "Feedback", None, 10.25, None),
    ...     (3, "u1", "ArmUpdated", "f1", 10.25, None), (4, "d2", "Decision", None, 10.5, 1),
    ...     (5, "d3", "Decision", None, 10.75, None)]
    >>> lags_from(rows, makers={"d1": 0, "d2": 1, "d3": 1}, learners={"f1": 0})
    [0.5]
    """
    decided: dict[int, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))  # state seqs, times
    committed: dict[str, tuple[int, float]] = {}  # feedback id -> (seq of the last event it caused, time)
    for seq, event_id, tag, cause, recorded_at, basis in rows:
        if tag == DECISION and event_id in makers:
            states, times = decided[makers[event_id]]
            states.append(seq - 1 if basis is None else basis)
            times.append(recorded_at)
        elif tag == FEEDBACK and event_id in learners:
            committed[event_id] = (seq, recorded_at)
        elif cause in committed:
            committed[cause] = (seq, committed[cause][1])
    lags = []
    for feedback_id, (learnt, at) in committed.items():
        for process, (states, times) in decided.items():
            if process == learners[feedback_id]:
                continue
            first = bisect.bisect_left(states, learnt)  # a process's states only move forward
            if first < len(states):
                lags.append(times[first] - at)
    return lags


def learning_lags(log: EventLog, makers: Mapping[str, int], learners: Mapping[str, int]) -> list[float]:
    """:func:`lags_from` over every event of ``log``."""
    keys = Keyring(log)

    def rows() -> Iterable[LagRow]:
        for row in log.rows():
            basis = keys.decode(row[2], row[9], row[8]).basis if row[2] == DECISION else None
            yield row[0], row[1], row[2], row[6], row[5], basis

    return lags_from(rows(), makers, learners)


class Run(NamedTuple):
    """What one process of a run reports: its start and end (seconds of the system's monotonic clock), the CPU
    seconds it used in between, and the ids of the decisions and feedback it committed."""

    start: float
    end: float
    cpu: float
    decisions: tuple[str, ...] = ()
    feedback: tuple[str, ...] = ()


def engine_rounds(location: str, rounds: int, experiment: str, worker: int, durability: str, ready: Barrier) -> Run:
    """Run ``rounds`` decide+feedback rounds on ``experiment`` once every process is ready."""
    import random

    outcomes = random.Random(worker)
    decisions, feedback = [], []
    with Engine.open(location, handlers=[BanditHandler()], durability=durability) as engine:
        engine.define_experiment(experiment, arms=list(ARMS), policy="thompson")
        ready.wait(WAIT_S)
        start, cpu = time.monotonic(), time.process_time()
        for _ in range(rounds):
            decision = engine.decide(experiment)
            success = outcomes.random() < SUCCESS[ARMS.index(decision.payload.arm)]
            learnt = engine.feedback(decision.id, success=success, quality_score=float(success), response_time_ms=10.0)
            decisions.append(decision.id)
            feedback.append(learnt.id)
        return Run(start, time.monotonic(), time.process_time() - cpu, tuple(decisions), tuple(feedback))


def sqlite_transactions(path: str, transactions: list[list[tuple[Any, ...]]], durability: str, ready: Barrier) -> Run:
    """Write each of ``transactions`` (rows without their seq) in a ``BEGIN IMMEDIATE`` transaction of its own,
    after the last seq, moving the head; returns (start, end) as :func:`engine_rounds` does."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'power' else 'NORMAL'}")
    insert = f"INSERT INTO events ({', '.join(STORED)}) VALUES ({', '.join('?' * len(STORED))})"
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
    return Run(start, end, cpu)


def postgres_transactions(url: str, transactions: list[list[tuple[Any, ...]]], durability: str, ready: Barrier) -> Run:
    """Write each of ``transactions`` (rows without their seq) in a transaction of its own that holds an
    advisory lock, after the last seq, moving the head and notifying, in two round trips; returns (start,
    end) as :func:`engine_rounds` does."""
    conn, client = _postgres_writer(url, durability)
    row = f"({', '.join(['%s'] * len(STORED))})"
    ready.wait(WAIT_S)
    start, cpu = time.monotonic(), time.process_time()
    for rows in transactions:
        cur = conn.execute("BEGIN; SELECT pg_advisory_xact_lock(1); SELECT coalesce(max(seq), 0) FROM events")
        cur.nextset()
        cur.nextset()
        (last,) = cur.fetchone()
        numbered = [(last + i, *row) for i, row in enumerate(rows, start=1)]
        statements = (
            f"INSERT INTO events ({', '.join(STORED)}) VALUES {', '.join([row] * len(numbered))};"
            f" UPDATE rtopt_meta SET value = %s WHERE key = '{HEAD}'; NOTIFY rtopt_events; COMMIT"
        )
        values = [value for numbered_row in numbered for value in numbered_row]
        conn.execute(client.mogrify(statements, [*values, head_value(numbered[-1][0], numbered[-1][-1])]))
    end, cpu = time.monotonic(), time.process_time() - cpu
    conn.close()
    return Run(start, end, cpu)


UNORDERED = "unordered_events"
"""The table the limit without an order writes (see :func:`postgres_unordered_transactions`)."""


def postgres_unordered_transactions(
    url: str, transactions: list[list[tuple[Any, ...]]], durability: str, ready: Barrier
) -> Run:
    """Write each of ``transactions`` in a transaction of its own without the append lock, its rows numbered by
    a sequence, with a NOTIFY, in one round trip; returns (start, end) as :func:`engine_rounds` does."""
    conn, client = _postgres_writer(url, durability)
    columns = STORED[1:]
    row = f"(nextval('{UNORDERED}_seq'), {', '.join(['%s'] * len(columns))})"
    ready.wait(WAIT_S)
    start, cpu = time.monotonic(), time.process_time()
    for rows in transactions:
        statement = (
            f"BEGIN; INSERT INTO {UNORDERED} ({', '.join(STORED)}) VALUES {', '.join([row] * len(rows))};"
            " NOTIFY rtopt_events; COMMIT"
        )
        conn.execute(client.mogrify(statement, [value for values in rows for value in values]))
    end, cpu = time.monotonic(), time.process_time() - cpu
    conn.close()
    return Run(start, end, cpu)


def _postgres_writer(url: str, durability: str) -> tuple[Any, Any]:
    """A connection that commits as ``durability`` says, and a client-side cursor on it to bind values with."""
    import psycopg

    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"SET synchronous_commit = {'on' if durability == 'power' else 'off'}")
    return conn, psycopg.ClientCursor(conn)


def make_unordered_table(url: str) -> None:
    """A table shaped as the events table, without its triggers, and the sequence that numbers its rows."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {UNORDERED} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
        )
        conn.execute(f"CREATE SEQUENCE {UNORDERED}_seq")


LIMITS: dict[str, Callable[..., Run]] = {
    "sqlite": sqlite_transactions,
    "postgres": postgres_transactions,
}


def together(target: Callable[..., Run], argument_lists: list[tuple[Any, ...]]) -> list[Run]:
    """Run ``target`` in one spawned process per argument list, started together; what each reports."""
    with SPAWN.Manager() as manager, SPAWN.Pool(len(argument_lists)) as pool:
        ready = manager.Barrier(len(argument_lists))
        results = [pool.apply_async(target, (*arguments, ready)) for arguments in argument_lists]
        return [result.get(WAIT_S) for result in results]


def span(runs: list[Run]) -> float:
    """Seconds from the first start of ``runs`` to their last end."""
    return max(run.end for run in runs) - min(run.start for run in runs)


def server_cpu_s(data: Path | None) -> float:
    """CPU seconds the PostgreSQL server with data directory ``data`` has used (0 without one): its postmaster,
    the children it reaped and the ones alive (Linux ``/proc``)."""
    if data is None:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid, parent = int(stat.parent.name), int(fields[1])
            if pid == postmaster:
                total += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
            elif parent == postmaster:
                total += int(fields[11]) + int(fields[12])
    return total / ticks


def committed_transactions(location: str) -> list[list[tuple[Any, ...]]]:
    """The rows of the engine's log after its definition, as stored (with their chain values) but without
    their seq, grouped by the commit that wrote them (a commit's events share their recording time)."""
    log = open_log(location, read_only=True)
    assert isinstance(log, SQLLog)  # both backends are
    try:
        rows = log._query(f"SELECT {', '.join(STORED)} FROM events WHERE type <> 'ExperimentDefined' ORDER BY seq")
    finally:
        log.close()
    recorded_at = COLUMNS.index("recorded_at")
    return [[tuple(row[1:]) for row in group] for _, group in groupby(rows, key=lambda row: row[recorded_at])]


def measure(
    backend: str,
    new_log: Callable[[str], str],
    server: Path | None,
    layout: str,
    processes: int,
    rounds: int,
    durability: str = "process",
) -> dict[str, Any]:
    """Rounds/s of the engine and of the limit on ``backend`` with ``processes`` processes of ``rounds`` rounds
    each, on experiments laid out as ``layout`` says (:data:`LAYOUTS`); ``new_log(name)`` gives the location
    of a new, empty log, ``server`` the data directory of the PostgreSQL server (None for SQLite)."""
    location = new_log(f"engine_{layout}_{processes}")
    open_log(location, seed=SEED).close()
    experiments = [EXPERIMENT if layout == "shared" else f"{EXPERIMENT}-{worker}" for worker in range(processes)]
    server_before = server_cpu_s(server)
    runs = together(
        engine_rounds, [(location, rounds, experiments[worker], worker, durability) for worker in range(processes)]
    )
    server_cpu = server_cpu_s(server) - server_before
    log = open_log(location, read_only=True)
    try:
        lags = learning_lags(
            log,
            {decision: worker for worker, run in enumerate(runs) for decision in run.decisions},
            {feedback: worker for worker, run in enumerate(runs) for feedback in run.feedback},
        ) if layout == "shared" else []  # fmt: skip
    finally:
        log.close()
    with Engine.open(location, read_only=True, handlers=[BanditHandler()]) as engine:
        ok = Engine.verify(location).ok
        pulls = sum(arm.pulls for name in set(experiments) for arm in engine.state("bandit", name).arms.values())
    transactions = committed_transactions(location)
    raw = new_log(f"raw_{layout}_{processes}")
    open_log(raw, seed=SEED).close()
    parts = [(raw, transactions[worker::processes], durability) for worker in range(processes)]
    raw_seconds = span(together(LIMITS[backend], parts))
    unordered_rate = None
    if backend == "postgres":
        make_unordered_table(raw)
        unordered_rate = len(transactions) / 2 / span(together(postgres_unordered_transactions, parts))
    total = processes * rounds
    engine_rate = total / span(runs)
    limit_rate = len(transactions) / 2 / raw_seconds
    ordered = sorted(lags)
    return {
        "backend": backend,
        "layout": layout,
        "processes": processes,
        "rounds": total,
        "engine_rounds_per_s": engine_rate,
        "limit_rounds_per_s": limit_rate,
        "ratio": engine_rate / limit_rate,
        "unordered_limit_rounds_per_s": unordered_rate,
        "durability": durability,
        "engine_cpu_us_per_round": sum(run.cpu for run in runs) / total * 1e6,
        "server_cpu_us_per_round": server_cpu / total * 1e6,
        "lag_p50_ms": percentile(ordered, 50) * 1e3 if ordered else None,
        "lag_p99_ms": percentile(ordered, 99) * 1e3 if ordered else None,
        "transactions": len(transactions),
        "rows": sum(len(rows) for rows in transactions),
        "verify_ok": ok,
        "pulls": pulls,
    }


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of sorted values."""
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def measure_backend(
    backend: str, layouts: Sequence[str], process_counts: Sequence[int], rounds: int, durability: str = "process"
) -> list[dict[str, Any]]:
    """:func:`measure` for each of ``layouts`` and ``process_counts`` on ``backend`` (its server started for
    the run)."""
    with contextlib.ExitStack() as stack:
        server: Path | None = None
        if backend == "postgres":
            postgres = stack.enter_context(TemporaryServer(durable=True))
            new_log: Callable[[str], str] = postgres.create_database
            server = postgres.data
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            new_log = lambda name: str(folder / f"{name}.sqlite")  # noqa: E731
        results = [
            measure(backend, new_log, server, layout, processes, rounds, durability)
            for layout in layouts
            for processes in process_counts
        ]
    for layout in layouts:
        of_layout = [result for result in results if result["layout"] == layout]
        one = {result["processes"]: result["engine_rounds_per_s"] for result in of_layout}.get(1)
        for result in of_layout:
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
    parser.add_argument(
        "--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS), help="one experiment, one per process"
    )
    parser.add_argument(
        "--durability", choices=("process", "power"), default="process", help="the engine's (default process)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run: 50 rounds per process")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    rounds = 50 if args.quick else args.rounds
    backends = [b for b in args.backends if b != "postgres" or server_binaries() is not None]
    results = [
        result
        for backend in backends
        for result in measure_backend(backend, args.layouts, args.processes, rounds, args.durability)
    ]
    load = os.getloadavg()
    if args.json:
        print(json.dumps({"rounds_per_process": rounds, "load_average": load, "results": results}))
        return 0
    console = Console()
    for backend in backends:
        table = Table(
            title=f"decide+feedback rounds on one {backend} log, {rounds} per process, durability"
            f" {args.durability!r} (CPU: per round)",
            caption="lag: from a Feedback's commit to each other process deciding with it learnt",
        )
        for column in ("experiments", "procs", "rounds/s", "to 1 proc", "limit/s", "to limit", "no-order limit/s",
                       "CPU us", "server us", "lag p50 ms", "lag p99 ms", "verify"):  # fmt: skip
            table.add_column(column, justify="right")
        for result in (result for result in results if result["backend"] == backend):
            table.add_row(
                "one" if result["layout"] == "shared" else "one each",
                str(result["processes"]),
                f"{result['engine_rounds_per_s']:,.0f}",
                "" if result["to_one_process"] is None else f"{result['to_one_process']:.2f}",
                f"{result['limit_rounds_per_s']:,.0f}",
                f"{result['ratio']:.2f}",
                ""
                if result["unordered_limit_rounds_per_s"] is None
                else f"{result['unordered_limit_rounds_per_s']:,.0f}",
                f"{result['engine_cpu_us_per_round']:,.0f}",
                f"{result['server_cpu_us_per_round']:,.0f}" if backend == "postgres" else "",
                "" if result["lag_p50_ms"] is None else f"{result['lag_p50_ms']:.1f}",
                "" if result["lag_p99_ms"] is None else f"{result['lag_p99_ms']:.1f}",
                "ok" if result["verify_ok"] and result["pulls"] == result["rounds"] else "FAILED",
            )
        console.print(table)
    skipped = sorted(set(args.backends) - set(backends))
    if skipped:
        console.print(f"skipped {', '.join(skipped)}: no PostgreSQL server binaries installed")
    console.print(f"load average at the end (1, 5, 15 min): {', '.join(f'{value:.2f}' for value in load)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

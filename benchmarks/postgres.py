"""Append and follow throughput of the PostgreSQL log, beside raw psycopg and SQLite, measured in one run.

A throwaway PostgreSQL server (fsync on, as a production server runs) is started in a temporary directory
and every figure is measured against it or against SQLite files in the same run, with the same rows (a
Feedback event each, msgpack-encoded) in transactions of ``--batch`` rows:

1. SQLite: plain ``sqlite3`` ``executemany`` into a fresh log's events table (the SQLite limit), and
   :meth:`rtopt.storage.sqlite.SQLiteLog.append`;
2. raw psycopg into a table with the events table's columns and indexes (no lock, no trigger):
   ``executemany`` and ``COPY ... (FORMAT BINARY)``;
3. :meth:`rtopt.storage.postgres.PostgresLog.append` (the append lock, seq after the last committed one, one
   INSERT, NOTIFY)
   from 1, 2 and 4 writer processes at once, each appending its share, while this process tails the log
   by seq and counts every event it sees (a missed or repeated seq is reported);
4. a :class:`rtopt.worker.Worker` running the Thompson bandit chain over the inputs of a simulated
   workload (decisions and their feedback): inputs read and events derived per second;
5. wake-up latency: a reader blocked in ``wait_for_change`` while another connection appends one event;
   the time from the append's return to the reader waking, p50 and p99.

Run ``python benchmarks/postgres.py`` (``--quick`` for a tiny run, ``--json`` for one JSON object on
stdout, ``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits import BanditHandler
from rtopt.handlers.bandits.simulation import default_variants, simulate

from rtopt import Engine, Feedback
from rtopt.copying import copy_log
from rtopt.events import encode_payload
from rtopt.pgserver import TemporaryServer
from rtopt.storage.interface import COLUMNS, Row
from rtopt.storage.postgres import PostgresLog
from rtopt.storage.sqlite import SQLiteLog
from rtopt.worker import Worker

WRITERS = (1, 2, 4)
TARGETS = {
    # figure: (comparison, bound)
    "append_1_writer_to_sqlite_executemany": (">=", 2.0),
    "missed_or_repeated_events": ("==", 0),
    "wake_p99_ms": ("<", 5.0),
}
_COLUMN_LIST = ", ".join(COLUMNS)
_GUARD = 60.0  # seconds a tail or a wake-up waits before the run is declared broken


def make_rows(count: int, prefix: str) -> list[Row]:
    """``count`` Feedback rows numbered 1.. with ids unique to ``prefix``."""
    rows = []
    for i in range(count):
        event = Feedback(
            prompt_id=f"p{i % 8}",
            variant_id=f"v{i % 3}",
            response_time_ms=float(200 + i % 300),
            success=i % 5 != 0,
            quality_score=(i % 10) / 10,
        )
        event_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"{prefix}/{i}"))
        rows.append((i + 1, event_id, "Feedback", event.prompt_id, float(i), 0.0, None, None, 1, encode_payload(event)))
    return rows


def batches(rows: Sequence[Row], size: int) -> list[Sequence[Row]]:
    """``rows`` cut into runs of ``size``."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def rate(count: int, seconds: float) -> float:
    """Events per second."""
    return count / seconds if seconds > 0 else float("inf")


def measure_sqlite(directory: Path, rows: list[Row], batch: int) -> dict[str, float]:
    """Events/s of raw ``executemany`` and of :meth:`SQLiteLog.append`, each into a fresh SQLite log."""
    raw_path, log_path = directory / "raw.sqlite", directory / "log.sqlite"
    SQLiteLog.open(raw_path).close()
    conn = sqlite3.connect(raw_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    insert = f"INSERT INTO events ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(COLUMNS))})"
    started = time.perf_counter()
    for part in batches(rows, batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, part)
        conn.execute("COMMIT")
    raw = rate(len(rows), time.perf_counter() - started)
    conn.close()
    log = SQLiteLog.open(log_path)
    started = time.perf_counter()
    for part in batches(rows, batch):
        log.append(part)
    appended = rate(len(rows), time.perf_counter() - started)
    log.close()
    return {"sqlite_executemany_events_per_s": raw, "sqlite_append_events_per_s": appended}


def measure_raw_postgres(url: str, rows: list[Row], batch: int) -> dict[str, float]:
    """Events/s of psycopg ``executemany`` and of binary COPY into a copy of the events table."""
    PostgresLog.open(url).close()
    figures = {}
    with psycopg.connect(url) as conn:
        for name in ("executemany", "copy"):
            table = f"raw_{name}"
            conn.execute(f"CREATE TABLE {table} (LIKE events INCLUDING DEFAULTS INCLUDING INDEXES)")
            conn.commit()
            started = time.perf_counter()
            for part in batches(rows, batch):
                with conn.cursor() as cur:
                    if name == "executemany":
                        marks = ", ".join(["%s"] * len(COLUMNS))
                        cur.executemany(f"INSERT INTO {table} ({_COLUMN_LIST}) VALUES ({marks})", part)
                    else:
                        with cur.copy(f"COPY {table} ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)") as copy:
                            copy.set_types(["int8", "text", "text", "text", "float8", "float8"] + ["text"] * 2
                                           + ["int4", "bytea"])
                            for row in part:
                                copy.write_row(row)
                conn.commit()
            figures[f"raw_{name}_events_per_s"] = rate(len(rows), time.perf_counter() - started)
    return figures


def _writer(url: str, rows: list[Row], batch: int, ready: Any, go: Any, finished: Any) -> None:
    log = PostgresLog.open(url)
    parts = batches(rows, batch)
    ready.set()
    go.wait(_GUARD)
    for part in parts:
        with log.appending() as last:  # numbered after whatever is committed when the append lock is taken
            log.append([(last + i, *row[1:]) for i, row in enumerate(part, start=1)])
    finished.put(time.perf_counter())
    log.close()


def _tail(url: str, count: int) -> list[int]:
    """The seqs a reader paging by seq sees until it has seen ``count`` events (or waited too long); it reads
    only the seq column, to take as little of the machine from the writers as it can."""
    log = PostgresLog.open(url, read_only=True)
    log.wait_for_change(0.0)  # starts listening
    seen: list[int] = []
    with psycopg.connect(url, autocommit=True) as conn:
        while len(seen) < count:
            page = conn.execute("SELECT seq FROM events WHERE seq > %s ORDER BY seq", (seen[-1] if seen else 0,))
            seen.extend(seq for (seq,) in page)
            if len(seen) < count and not log.wait_for_change(_GUARD):
                break
    log.close()
    return seen


def measure_writers(url: str, writers: int, rows: list[Row], batch: int) -> dict[str, float]:
    """Events/s of ``writers`` processes appending ``rows`` between them (from the start signal to the last
    writer's last commit), and how many seqs a reader tailing the log meanwhile missed or saw twice."""
    PostgresLog.open(url).close()
    context = multiprocessing.get_context("spawn")
    go, finished = context.Event(), context.Queue()
    readies = [context.Event() for _ in range(writers)]
    procs = [
        context.Process(target=_writer, args=(url, rows[k::writers], batch, readies[k], go, finished))
        for k in range(writers)
    ]
    for proc in procs:
        proc.start()
    for ready in readies:
        ready.wait(_GUARD)
    started = time.perf_counter()
    go.set()
    seen = _tail(url, len(rows))
    ended = max(finished.get(timeout=_GUARD) for _ in procs)
    for proc in procs:
        proc.join(_GUARD)
    wrong = sum(1 for expected, seq in enumerate(seen, start=1) if seq != expected) + abs(len(seen) - len(rows))
    return {f"append_{writers}_writers_events_per_s": rate(len(rows), ended - started), f"missed_{writers}": wrong}


def measure_worker(url: str, steps: int, directory: Path) -> dict[str, float]:
    """Inputs/s and derived events/s of a worker running the bandit chain over a simulated workload."""
    source = directory / "workload.sqlite"
    with Engine.open(source, seed=3, handlers=[BanditHandler()]) as engine:
        simulate(engine, steps, default_variants(4, 3), 3)
    copy_log(source, url, inputs_only=True)
    with Worker.open(url, [BanditHandler()], batch=1000) as worker:
        started = time.perf_counter()
        worker.run(drain=True)
        seconds = time.perf_counter() - started
        return {
            "worker_inputs_per_s": rate(worker.processed, seconds),
            "worker_derived_per_s": rate(worker.derived, seconds),
        }


def _wake_once(reader: PostgresLog, writer: PostgresLog, row: Row) -> float:
    """Milliseconds from ``writer`` appending ``row`` to ``reader``, already waiting, waking up."""
    woken: list[float] = []
    waiting = threading.Event()

    def wait() -> None:
        waiting.set()
        if reader.wait_for_change(_GUARD):
            woken.append(time.perf_counter())

    thread = threading.Thread(target=wait)
    thread.start()
    waiting.wait(_GUARD)
    writer.append([row])
    committed = time.perf_counter()
    thread.join(_GUARD)
    # the reader may wake before the writer's call returns: that counts as no delay
    return max(woken[0] - committed, 0.0) * 1000 if woken else float("inf")


def measure_wake(url: str, rounds: int) -> dict[str, float]:
    """p50 and p99 (ms) from an append's return to a waiting reader's wake-up."""
    writer = PostgresLog.open(url)
    reader = PostgresLog.open(url, read_only=True)
    reader.wait_for_change(0.0)  # starts listening
    delays = sorted(_wake_once(reader, writer, row) for row in make_rows(rounds, "wake"))
    writer.close()
    reader.close()
    return {"wake_p50_ms": delays[len(delays) // 2], "wake_p99_ms": delays[len(delays) * 99 // 100]}


def run(events: int, batch: int, steps: int, rounds: int, server: str | None = None) -> dict[str, Any]:
    """Every measurement, in new databases on ``server`` (the URL of a superuser's connection; by default
    a temporary server) and in one temporary directory."""
    figures: dict[str, float] = {}
    rows = make_rows(events, "bench")
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if server is None:
            server = stack.enter_context(TemporaryServer(durable=True)).url()
        run_id = uuid.uuid4().hex[:8]

        def database(name: str) -> str:
            with psycopg.connect(server, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE bench_{run_id}_{name}")
            return server.rsplit("/", 1)[0] + f"/bench_{run_id}_{name}"

        figures.update(measure_sqlite(directory, rows, batch))
        figures.update(measure_raw_postgres(database("raw"), rows, batch))
        missed = 0
        for writers in WRITERS:
            found = measure_writers(database(f"writers_{writers}"), writers, rows, batch)
            missed += int(found.pop(f"missed_{writers}"))
            figures.update(found)
        figures.update(measure_worker(database("worker"), steps, directory))
        figures.update(measure_wake(database("wake"), rounds))
    one = figures["append_1_writers_events_per_s"]
    ratios = {
        "append_1_writer_to_raw_copy": one / figures["raw_copy_events_per_s"],
        "append_1_writer_to_raw_executemany": one / figures["raw_executemany_events_per_s"],
        "append_1_writer_to_sqlite_executemany": one / figures["sqlite_executemany_events_per_s"],
        "append_2_writers_to_1": figures["append_2_writers_events_per_s"] / one,
        "append_4_writers_to_1": figures["append_4_writers_events_per_s"] / one,
    }
    checked = {**ratios, "missed_or_repeated_events": missed, "wake_p99_ms": figures["wake_p99_ms"]}
    status = {name: "PASS" if meets(checked[name], *target) else "MISS" for name, target in TARGETS.items()}
    return {
        "sizes": {"events": events, "batch": batch, "worker_steps": steps, "wake_rounds": rounds},
        "figures": figures,
        "ratios": ratios,
        "missed_or_repeated_events": missed,
        "targets": {name: f"{op} {bound}" for name, (op, bound) in TARGETS.items()},
        "status": status,
    }


def meets(value: float, op: str, bound: float) -> bool:
    """True if ``value op bound`` holds."""
    return {">=": value >= bound, "==": value == bound, "<": value < bound}[op]


def render(results: dict[str, Any], console: Console) -> None:
    """Print the figures, the ratios and whether each target was met."""
    sizes = results["sizes"]
    table = Table(title=f"PostgreSQL log: {sizes['events']} events in {sizes['batch']}-row transactions")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in results["figures"].items():
        table.add_row(name, f"{value:,.2f}" if name.endswith("_ms") else f"{value:,.0f}")
    for name, value in results["ratios"].items():
        table.add_row(name, f"{value:.2f}x")
    table.add_row("missed_or_repeated_events", str(results["missed_or_repeated_events"]))
    console.print(table)
    for name, status in results["status"].items():
        console.print(f"target {name} {results['targets'][name]}: {status}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark with the command line's sizes; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="rows each measurement writes (default 100000)")
    parser.add_argument("--batch", type=int, default=1000, help="rows per transaction (default 1000)")
    parser.add_argument("--steps", type=int, default=5000, help="simulated requests the worker runs (default 5000)")
    parser.add_argument("--rounds", type=int, default=500, help="wake-up latency samples (default 500)")
    parser.add_argument(
        "--server", default=None, help="a superuser's URL of a PostgreSQL server to create the databases on "
        "(default: a temporary server, fsync on)"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run: 4000 events, 300 requests, 50 samples")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.steps, args.rounds = 4000, 300, 50
    results = run(args.events, args.batch, args.steps, args.rounds, args.server)
    if args.json:
        print(json.dumps(results))
        return 0
    render(results, Console())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

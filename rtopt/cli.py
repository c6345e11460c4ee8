"""The ``rtopt`` command line: simulate a workload into a log, inspect a log, replay and verify it."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rtopt.engine import Engine
from rtopt.errors import InvalidLog, RtoptError
from rtopt.log import SQLiteLog
from rtopt.simulation import default_variants, simulate

DEMO_LOG = Path("event_log") / "demo.sqlite"


def _time(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


@contextmanager
def _progress_bar(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _remove_log(path: Path) -> None:
    """Delete an existing rtopt log (and its WAL files) so a simulation starts afresh."""
    SQLiteLog.open(path, read_only=True).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    path = Path(args.log)
    if path.exists():
        _remove_log(path)
        console.print(f"replacing the rtopt log at {path}")
    variants = default_variants(args.variants, args.seed)
    with Engine.open(path, seed=args.seed) as engine, _progress_bar(console, "simulating") as progress:
        report = simulate(
            engine,
            args.steps,
            variants,
            args.seed,
            requests_per_second=args.rate,
            feedback_delay_s=args.feedback_delay,
            progress=progress,
        )
        engine.snapshot()
    table = Table(title=f"{args.steps} requests, Thompson sampling over {len(variants)} variants (seed {args.seed})")
    for column in ("variant", "pulls", "share", "observed reward", "true reward", "posterior mean"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in report.variants:
        name = f"{v.name} (best)" if v.name == report.best else v.name
        table.add_row(
            name,
            str(v.pulls),
            f"{v.pulls / args.steps:.1%}",
            f"{v.observed_reward:.3f}",
            f"{v.true_reward:.3f}",
            f"{v.posterior_mean:.3f}",
        )
    console.print(table)
    console.print(
        f"regret against always choosing {report.best}: {report.regret:.1f} "
        f"({report.regret / args.steps:.4f} per request)\n"
        f"{report.events} events in {report.seconds:.2f} s: {report.events_per_second:,.0f} events/s\n"
        f"log: {path}"
    )
    return 0


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    with Engine.open(args.log, read_only=True, handlers=[]) as engine:
        log = engine.log
        counts = log.count_by_type()
        console.print(f"{args.log}: {sum(counts.values())} events", markup=False, highlight=False)
        table = Table()
        table.add_column("type")
        table.add_column("events", justify="right")
        for tag, count in counts.items():
            table.add_row(tag, str(count))
        console.print(table)
        last = log.last_seq()
        if last:
            first_event = next(engine.read(until=1))
            last_event = next(engine.read(start=last))
            console.print(f"event time {_time(first_event.time)} .. {_time(last_event.time)}")
            console.print(f"last {min(args.last, last)} events:")
            for envelope in engine.read(start=max(1, last - args.last + 1)):
                console.print(_line(envelope), markup=False, highlight=False)
        if args.follow:
            console.print("following; Ctrl-C to stop")
            try:
                for envelope in engine.tail(start=last + 1, idle_timeout=args.idle_timeout):
                    console.print(_line(envelope), markup=False, highlight=False)
            except KeyboardInterrupt:
                pass
    return 0


def _line(envelope: object) -> str:
    payload = msgspec.json.encode(envelope.payload).decode()
    return f"{envelope.seq:>8} {_time(envelope.time)} {envelope.type:<16} {envelope.stream:<12} {payload[:160]}"


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    if args.verify:
        with _progress_bar(console, "verifying") as progress:
            report = Engine.verify(args.log, progress=progress)
        if report.ok:
            console.print(
                f"all {report.events} events match: {report.derived} derived events re-derived and "
                f"{report.decisions} decisions re-made identically"
            )
            return 0
        diff = report.difference
        console.print(f"first difference at seq {diff.seq}, field {diff.field}:", markup=False)
        console.print(f"  recorded:   {diff.recorded!r}", markup=False, highlight=False)
        console.print(f"  re-derived: {diff.rederived!r}", markup=False, highlight=False)
        return 1
    import time

    started = time.perf_counter()
    with _progress_bar(console, "replaying") as progress:
        engine = Engine.replay(args.log, until_seq=args.until_seq, progress=progress)
    seconds = time.perf_counter() - started
    with engine:
        console.print(
            f"rebuilt {', '.join(engine.handlers())} from {engine.position} events in {seconds:.2f} s "
            f"({engine.position / seconds:,.0f} events/s)"
        )
        for name in engine.handlers():
            console.print_json(msgspec.json.encode(engine.state(name)).decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtopt", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser(
        "simulate",
        help="run a synthetic LLM workload into a log",
        description="Serve simulated requests with Thompson sampling over prompt variants "
        "whose true quality, latency and cost are hidden; write every event "
        "to a fresh log and print pulls, rewards and regret.",
    )
    sim.add_argument("--steps", type=int, default=5000, help="requests to serve (default 5000)")
    sim.add_argument("--variants", type=int, default=4, help="prompt variants (default 4)")
    sim.add_argument("--seed", type=int, default=7, help="seed of the workload and the engine (default 7)")
    sim.add_argument(
        "--log", default=str(DEMO_LOG), help=f"log to write; an existing one is replaced (default {DEMO_LOG})"
    )
    sim.add_argument("--rate", type=float, default=5.0, help="requests per second of event time (default 5)")
    sim.add_argument(
        "--feedback-delay",
        type=float,
        default=20.0,
        help="mean seconds between a response and its feedback (default 20)",
    )
    sim.set_defaults(run=cmd_simulate)

    ins = commands.add_parser(
        "inspect",
        help="counts by type, time range and last events of a log",
        description="Summarise a log; --follow tails a log another process is writing.",
    )
    ins.add_argument("log", help="path of the log")
    ins.add_argument("--last", type=int, default=10, help="how many of the last events to show (default 10)")
    ins.add_argument("--follow", action="store_true", help="keep printing new events as they are committed")
    ins.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="with --follow, stop after this many seconds without a new event",
    )
    ins.set_defaults(run=cmd_inspect)

    rep = commands.add_parser(
        "replay",
        help="rebuild state from a log, or verify it",
        description="Rebuild every handler's state from a log (the file is only read); "
        "--verify re-derives every derived event and re-makes every decision "
        "and reports the first difference.",
    )
    rep.add_argument("log", help="path of the log")
    rep.add_argument("--verify", action="store_true", help="re-derive everything and compare with the log")
    rep.add_argument("--until-seq", type=int, default=None, help="rebuild the state as of this seq")
    rep.set_defaults(run=cmd_replay)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    console = Console()
    try:
        return args.run(args, console)
    except (RtoptError, InvalidLog, ValueError) as exc:
        Console(stderr=True).print(f"rtopt {args.command}: {exc}", markup=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())

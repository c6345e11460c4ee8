"""The ``rtopt`` command line: inspect, replay, verify and copy logs, run workers on a shared log; installed
packages add commands (simulate ...).

A package adds a command by declaring, in the ``rtopt.commands`` entry point group, a function that takes
the argparse sub-parsers and adds its parser with ``set_defaults(run=function(args, console) -> int)``.
Every argument is checked before a command does anything: each on its own by its argparse ``type``, and
together by ``set_defaults(check=function(args))``, which raises :class:`UsageError`; either way the
command line exits with status 2 and a message naming the option and the value, and no log is touched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rtopt.copying import copy_log
from rtopt.engine import Engine
from rtopt.errors import InvalidArgument, InvalidLog, RtoptError
from rtopt.events import Envelope
from rtopt.storage.sqlite import LINE_SUFFIX, SQLiteLog
from rtopt.worker import WHOLE, Partition, Worker

COMMAND_ENTRY_POINTS = "rtopt.commands"
STATE_LINES = 40
LOG_HELP = "path of the log, or the postgresql:// URL of its database"
T = TypeVar("T")


def event_time(seconds: float) -> str:
    """An event time as ISO 8601 in UTC, to the millisecond."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds")


@contextmanager
def progress_bar(console: Console, label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal (nothing elsewhere); yields ``update(done, total)``."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def replace_log(path: Path, default: Path, force: bool, console: Console) -> None:
    """Delete the rtopt log at ``path`` so a command can write it afresh: always the command's ``default``
    log, another one only with ``force``; never a file that is not an rtopt log."""
    if not path.exists():
        return
    if path != default and not force:
        raise InvalidLog(f"{path} exists: pass --force to replace it, or choose another --log")
    SQLiteLog.open(path, read_only=True).close()  # refuses to delete what is not an rtopt log
    for suffix in ("", "-wal", "-shm", LINE_SUFFIX):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    console.print(f"replacing the rtopt log at {path}")


class UsageError(RtoptError):
    """An argument that does not fit the others, found before the command does anything; the command line
    reports it as argparse reports a bad argument (usage, option, value; exit status 2)."""

    def __init__(self, option: str, value: object, reason: str) -> None:
        super().__init__(f"argument {option}: {value}: {reason}")
        self.option = option
        self.value = value


def number(kind: type[int] | type[float], accept: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse type for a finite number of ``kind`` that ``accept`` takes; the error names the text
    and the ``requirement`` it missed.

    >>> number(int, lambda n: 2 <= n <= 26, "between 2 and 26")("30")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 30 is not between 2 and 26
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value

    return parse


def positive(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse type for a positive, finite number of ``kind``."""
    return number(kind, lambda value: value > 0, "positive")


def non_negative(kind: type[int] | type[float]) -> Callable[[str], Any]:
    """An argparse type for a finite number of ``kind`` that is zero or more."""
    return number(kind, lambda value: value >= 0, "zero or more")


def between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for a whole number from ``low`` to ``high``."""
    return number(int, lambda value: low <= value <= high, f"between {low} and {high}")


log_seed = between(0, 2**63 - 1)  # an argparse type for a log's seed (a new log without one draws 63 bits)


def cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    """Counts by type, the event-time range and the last events of a log; then follow it if asked."""
    with Engine.open(args.log, read_only=True, handlers=[]) as engine:
        last = engine.log.last_seq()
        counts = engine.log.count_by_type(until=last)
        console.print(f"{args.log}: {last} events", markup=False, highlight=False, soft_wrap=True)
        table = Table()
        table.add_column("type")
        table.add_column("events", justify="right")
        for tag, count in counts.items():
            table.add_row(tag, str(count))
        console.print(table)
        if last:
            first_event = next(engine.read(until=1))
            last_event = next(engine.read(start=last, until=last))
            console.print(f"event time {event_time(first_event.time)} .. {event_time(last_event.time)}")
            console.print(f"last {min(args.last, last)} events:")
            for envelope in engine.read(start=max(1, last - args.last + 1), until=last):
                console.print(_line(envelope), markup=False, highlight=False, soft_wrap=True)
        if args.follow:
            console.print("following; Ctrl-C to stop")
            try:
                for envelope in engine.tail(start=last + 1, idle_timeout=args.idle_timeout):
                    console.print(_line(envelope), markup=False, highlight=False, soft_wrap=True)
            except KeyboardInterrupt:
                pass
    return 0


def _line(envelope: Envelope[Any]) -> str:
    payload = msgspec.json.encode(envelope.payload).decode()
    return f"{envelope.seq:>8} {event_time(envelope.time)} {envelope.type:<16} {envelope.stream:<12} {payload[:160]}"


def cmd_replay(args: argparse.Namespace, console: Console) -> int:
    """Rebuild state from a log (printing how), or verify the log by re-deriving it."""
    if args.verify:
        with progress_bar(console, "verifying") as progress:
            report = Engine.verify(args.log, progress=progress)
        for note in report.notes:
            console.print(note, markup=False)
        if report.ok:
            remade = f"{report.decisions} decisions"
            if report.suggestions:
                remade += f" and {report.suggestions} suggestions"
            console.print(
                f"all {report.events} events match: {report.derived} derived events re-derived and "
                f"{remade} re-made identically"
            )
            return 0
        diff = report.difference
        assert diff is not None  # the report is not ok
        console.print(f"first difference at seq {diff.seq}, field {diff.field}:", markup=False)
        console.print(f"  recorded:   {diff.recorded!r}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"  re-derived: {diff.rederived!r}", markup=False, highlight=False, soft_wrap=True)
        return 1
    with progress_bar(console, "replaying") as progress:
        engine = Engine.replay(args.log, until_seq=args.until_seq, progress=progress)
    with engine:
        rebuilt = engine.rebuilt
        start = f"from snapshots {rebuilt.snapshots}" if rebuilt.snapshots else "from the start of the log"
        rate = f" ({rebuilt.folded / rebuilt.seconds:,.0f} events/s)" if rebuilt.seconds > 0 else ""
        console.print(
            f"rebuilt {', '.join(engine.handlers()) or 'no handler'} at seq {rebuilt.position} {start}: "
            f"folded {rebuilt.folded} events in {rebuilt.seconds:.2f} s{rate}",
            markup=False,
            soft_wrap=True,
        )
        for name in engine.handlers():
            text = msgspec.json.format(msgspec.json.encode(engine.state(name)), indent=2).decode()
            lines = text.splitlines()
            shown = lines if args.state or len(lines) <= STATE_LINES else lines[:STATE_LINES]
            console.print(f"state of {name}:", markup=False)
            console.print("\n".join(shown), markup=False, highlight=False, soft_wrap=True)
            if len(shown) < len(lines):
                console.print(f"... {len(lines) - len(shown)} more lines (--state prints all)")
    return 0


def cmd_copy(args: argparse.Namespace, console: Console) -> int:
    """Copy a log into a new one: SQLite into PostgreSQL or back."""
    with progress_bar(console, "copying") as progress:
        copied = copy_log(args.source, args.target, progress, inputs_only=args.inputs_only)
    console.print(f"copied {copied} events from {args.source} to {args.target}", markup=False, soft_wrap=True)
    return 0


def cmd_worker(args: argparse.Namespace, console: Console) -> int:
    """Run the handler chains of one partition over a shared log."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Worker.open(
        args.log, name=args.name, partition=args.partition, batch=args.batch, snapshot_every=args.snapshot_every
    ) as worker:
        with suppress(KeyboardInterrupt):
            worker.run(drain=args.drain, stop=stop, idle_timeout=args.idle_timeout)
        console.print(
            f"{worker.tracker}: resumed from seq {worker.resumed_from}, processed {worker.processed} inputs"
            f" and derived {worker.derived} events; inputs read up to seq {worker.position}",
            markup=False,
            soft_wrap=True,
        )
    return 0


def checked(read: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type that reads the text with ``read``, whose :class:`InvalidArgument` becomes argparse's
    error (naming the option and the value)."""

    def parse(text: str) -> T:
        try:
            return read(text)
        except InvalidArgument as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def non_blank(text: str) -> str:
    """An argparse type for a name that is not blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is blank")
    return text


def cmd_forget(args: argparse.Namespace, console: Console) -> int:
    """Delete the key of a user (or a session with no user): its sealed values read as a pseudonym."""
    with Engine.open(args.log, handlers=[]) as engine:
        recorded = engine.forget(args.subject)
    ref = recorded.payload.ref
    console.print(
        f"forgot {args.subject!r} in {args.log}: its key {ref} is deleted, with the handler snapshots; its values "
        f"now read as forgotten:{ref} (recorded at seq {recorded.seq})",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with the commands installed packages declare."""
    parser = argparse.ArgumentParser(prog="rtopt", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    ins = commands.add_parser(
        "inspect",
        help="counts by type, time range and last events of a log",
        description="Summarise a log; --follow tails a log another process is writing.",
    )
    ins.add_argument("log", help=LOG_HELP)
    ins.add_argument("--last", type=positive(int), default=10, help="how many of the last events to show (default 10)")
    ins.add_argument("--follow", action="store_true", help="keep printing new events as they are committed")
    ins.add_argument(
        "--idle-timeout",
        type=positive(float),
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
    rep.add_argument("log", help=LOG_HELP)
    rep.add_argument("--verify", action="store_true", help="re-derive everything and compare with the log")
    rep.add_argument("--until-seq", type=non_negative(int), default=None, help="rebuild the state as of this seq")
    rep.add_argument("--state", action="store_true", help=f"print whole states (else the first {STATE_LINES} lines)")
    rep.set_defaults(run=cmd_replay)

    cp = commands.add_parser(
        "copy",
        help="copy a log into a new one (SQLite and PostgreSQL either way)",
        description="Copy every event of a log, with its seq, seed and meta data, into a new, empty log.",
    )
    cp.add_argument("source", help=LOG_HELP)
    cp.add_argument("target", help="path or postgresql:// URL of the new log (an empty file or database)")
    cp.add_argument(
        "--inputs-only", action="store_true", help="copy only the input events, for workers to derive the rest anew"
    )
    cp.set_defaults(run=cmd_copy)

    wrk = commands.add_parser(
        "worker",
        help="run the handler chains over a shared log",
        description="Follow a log (an SQLite file or a PostgreSQL database) that other processes publish inputs to "
        "and derive the events of the handler chains for the streams of one partition, recording progress with "
        "them (exactly once).",
    )
    wrk.add_argument("log", help=LOG_HELP)
    wrk.add_argument(
        "--partition",
        type=checked(Partition.parse),
        default=WHOLE,
        help="I/N: the streams whose name hashes to I of N (default 0/1)",
    )
    wrk.add_argument(
        "--name", type=non_blank, default="worker", help="name the worker's progress is recorded under (default worker)"
    )
    wrk.add_argument("--batch", type=positive(int), default=500, help="inputs per transaction (default 500)")
    wrk.add_argument(
        "--snapshot-every",
        type=positive(int),
        default=20_000,
        help="store the chains' states every this many seqs, for a quick restart (default 20000)",
    )
    wrk.add_argument("--drain", action="store_true", help="stop once every input committed so far is processed")
    wrk.add_argument(
        "--idle-timeout", type=positive(float), default=None, help="stop after this many seconds without an input"
    )
    wrk.set_defaults(run=cmd_worker)

    fgt = commands.add_parser(
        "forget",
        help="make a user's personal values in a log unreadable",
        description="Delete the key that seals a user's (or a session's) personal values: the events stay as they "
        "are and read the values as a pseudonym, forgotten:<ref>. Snapshots are deleted too. A subject with no key "
        "(never seen, or forgotten already) is an error.",
    )
    fgt.add_argument("log", help=LOG_HELP)
    fgt.add_argument("subject", help="the user id (or the session id of feedback with no user) to forget")
    fgt.set_defaults(run=cmd_forget)

    for entry_point in sorted(entry_points(group=COMMAND_ENTRY_POINTS), key=lambda ep: ep.name):
        entry_point.load()(commands)
    return parser


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of one of ``parser``'s commands."""
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return commands.choices[command]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check = getattr(args, "check", None)
    if check is not None:
        try:
            check(args)
        except UsageError as exc:
            command_parser(parser, args.command).error(str(exc))
    console = Console()
    if not console.is_terminal:  # a pipe or a file: do not squeeze tables into 80 columns
        console = Console(width=max(console.width, 120))
    try:
        return args.run(args, console)
    except (RtoptError, ValueError) as exc:
        Console(stderr=True).print(f"rtopt {args.command}: {exc}", markup=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Replay: the handlers' state rebuilt from a log, what-if replays, and verify.

- Rebuild (:func:`rebuild`): every handler starts from its newest usable snapshot (one taken with the same
  fingerprint) or its initial state, and folds the log's events after it, in seq order, as recorded. An
  engine rebuilds when it opens, and after a failed write left its state ahead of the log.
- What-if (:func:`replay_log` with handlers): only the source's input events are fed again (:func:`refeed`),
  in the groups they were committed in, through other handlers into a new log, which derives everything
  anew. Decisions and suggestions are inputs too: they are taken as recorded.
- Verify (:func:`verify_log`): the hash chain is checked row by row, then the inputs are fed through the
  current handlers into a log in memory; each recorded answer to a command (a decision, a batch of
  suggestions) is re-made on the state it was made on, and the log derived anew is compared with the
  recorded one. Folds see only event time and a generator seeded by the engine seed and the event id, so
  the two agree unless the code or the log changed.
"""

from __future__ import annotations

import time as wall_clock
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from rtopt.commands import COMMANDS, DECIDE, SUGGEST, Command, Commands, command_of
from rtopt.copying import copy_rows, copying, refuse_non_empty
from rtopt.errors import RtoptError
from rtopt.events import Envelope, Event, encode_payload
from rtopt.handler import Handler, HandlerSlot
from rtopt.privacy import Keyring, Privacy, copy_keys, is_pseudonym
from rtopt.rows import envelope_from_row
from rtopt.storage.factory import open_log
from rtopt.storage.interface import COLUMNS, EventLog, Row

REPLAYED_FROM = "replayed_from"  # meta key of a what-if log: the log whose inputs it replayed
WORKED = "followed"  # meta key of a log whose derived events workers appended one input at a time (name kept on disk)
HANDLERS = "handlers"  # meta key: handler name -> fingerprint of the configuration that last wrote the log
Progress = Callable[[int, int], None]
"""Called with (events done, events in all) while long work runs."""
Check = Callable[[Command[Any], Envelope[Any], "Event | None"], None]
"""Called by :func:`refeed` with each recorded answer event and the event re-made in its place (None if the
answer re-made is shorter)."""


class Target(Protocol):
    """What :func:`refeed` feeds a log's inputs through: an engine's write path (:class:`rtopt.writer.Writer`)."""

    seed: int
    commands: Commands

    def recommit(self, envelopes: list[Envelope[Any]]) -> list[Envelope[Any]]:
        """Commit inputs recorded in another log as one group."""
        ...


class Opened(Protocol):
    """What :func:`replay_log` and :func:`verify_log` need of the engine they open (an :class:`rtopt.Engine`)."""

    @property
    def log(self) -> EventLog: ...

    @property
    def writer(self) -> Target: ...

    def close(self) -> None: ...


E = TypeVar("E", bound=Opened)


class ConfigurationChanged(UserWarning):
    """A handler opened a log with another configuration than the one that last wrote it."""


class Difference(msgspec.Struct, frozen=True):
    """The first place where a re-derivation disagrees with the recorded log."""

    seq: int
    field: str
    recorded: Any
    rederived: Any


class VerifyReport(msgspec.Struct, frozen=True):
    """Outcome of :meth:`Engine.verify`: how many events were checked and the first difference, if any."""

    events: int
    derived: int
    decisions: int
    difference: Difference | None
    notes: list[str] = []
    suggestions: int = 0

    @property
    def ok(self) -> bool:
        """True when everything re-derived matched the log."""
        return self.difference is None


class Rebuilt(msgspec.Struct, frozen=True):
    """How an engine's state was rebuilt when it opened: up to ``position``, starting from the
    ``snapshots`` (handler -> seq) it found, folding ``folded`` events of the log in ``seconds``."""

    position: int
    snapshots: dict[str, int]
    folded: int
    seconds: float


# --- rebuilding state --------------------------------------------------------------------------------


def rebuild(
    log: EventLog, slots: Sequence[HandlerSlot], keys: Keyring, until_seq: int | None, progress: Progress | None
) -> Rebuilt:
    """Reset every slot to its newest usable snapshot and fold the log after it, up to ``until_seq`` (the
    end of the log if None)."""
    last = log.last_seq()
    until = until_seq if until_seq is not None else last
    if not 0 <= until <= last:
        raise RtoptError(f"until_seq = {until}: the log at {log.location} holds seqs 1..{last}")
    snapshots = {}
    for slot in slots:
        slot.state = slot.handler.initial_state()
        slot.position = 0
        found = log.load_snapshot(slot.name, slot.handler.fingerprint(), until)
        if found is not None:
            try:
                slot.state = msgspec.msgpack.decode(found[1], type=slot.handler.state_type)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                warnings.warn(
                    f"{log.location}: the {slot.name} snapshot at seq {found[0]} does not decode ({exc});"
                    " its state is folded from the start of the log",
                    RuntimeWarning,
                    stacklevel=5,
                )
                continue
            slot.position = found[0]
            snapshots[slot.name] = slot.position
    started = wall_clock.perf_counter()
    folded = fold_history(log, slots, keys, until, progress)
    return Rebuilt(until, snapshots, folded, wall_clock.perf_counter() - started)


def recorded_configurations(meta: dict[str, str]) -> dict[str, str]:
    """Handler name -> fingerprint of the configuration that last wrote the log whose ``meta`` is given."""
    try:
        return msgspec.json.decode(meta.get(HANDLERS, "{}"), type=dict[str, str])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}  # unreadable: every handler's configuration counts as the first one recorded


def changed_configurations(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """The handlers whose ``current`` fingerprint differs from the ``recorded`` one, by name."""
    return sorted(name for name, fingerprint in current.items() if recorded.get(name, fingerprint) != fingerprint)


def note_configurations(log: EventLog, slots: Sequence[HandlerSlot]) -> None:
    """Warn when a handler runs with another configuration than the one that last wrote ``log``, and
    record the current ones (in a writable log)."""
    recorded = recorded_configurations(log.meta())
    current = {slot.name: slot.handler.fingerprint() for slot in slots}
    changed = changed_configurations(recorded, current)
    if changed:
        warnings.warn(
            f"{log.location}: {changed} run with another configuration than the one that last wrote this "
            "log; their state is rebuilt with the current one and can differ from what was derived",
            ConfigurationChanged,
            stacklevel=4,
        )
    merged = {**recorded, **current}
    if not log.read_only and merged != recorded:
        log.set_meta(HANDLERS, msgspec.json.encode(merged).decode())


def fold_history(
    log: EventLog,
    slots: Sequence[HandlerSlot],
    keys: Keyring,
    until: int,
    progress: Progress | None = None,
    read: Sequence[Row] | None = None,
) -> int:
    """Fold the log up to ``until`` into ``slots``, each from its own position; returns the rows read.
    ``read``, if given, holds the log's rows (of every type) from the slots' lowest position on: they are
    folded instead of reading the log again."""
    if not slots:
        return 0
    folded = 0
    start = min(slot.position for slot in slots) + 1
    tags = sorted(set().union(*(slot.accepted for slot in slots)))
    wanted = set(tags)
    found = log.rows(start=start, until=until, types=tags) if read is None else (r for r in read if r[2] in wanted)
    batch: list[Envelope[Any]] = []
    for row in found:
        folded += 1
        batch.append(envelope_from_row(row, keys))
        if len(batch) == 2000:
            _fold_into(slots, batch)
            if progress is not None:
                progress(batch[-1].seq, until)
            batch = []
    if batch:
        _fold_into(slots, batch)
    if progress is not None:
        progress(until, until)
    for slot in slots:
        slot.position = until
    return folded


def _fold_into(slots: Sequence[HandlerSlot], batch: list[Envelope[Any]]) -> None:
    for slot in slots:
        position = slot.position
        if batch[0].seq > position:
            slot.fold_batch(batch, keep=False)
        else:
            slot.fold_batch([env for env in batch if env.seq > position], keep=False)


# --- feeding a log's inputs again ---------------------------------------------------------------------


def refeed(
    writer: Target,
    source: EventLog,
    until_seq: int | None,
    *,
    progress: Progress | None = None,
    check: Check | None = None,
) -> None:
    """Commit ``source``'s input events through ``writer``, grouped as they were committed (one by one when
    workers derived the source), deriving anew; with ``check``, re-make each recorded answer that a
    registered handler answers, on the state it was made on, and pass both to ``check``."""
    singly = WORKED in source.meta()
    until = source.last_seq() if until_seq is None else until_seq
    keys = Keyring(source, Privacy(seal=False))
    commands = writer.commands
    group: list[Envelope[Any]] = []
    remade: list[Event] = []
    # answers made on a state older than the event before them (their basis), by the seq of that state
    by_basis = _answers_by_basis(source, until, keys) if check is not None else {}
    made_early: dict[str, list[Event]] = {}

    def flush() -> None:
        if group:
            writer.recommit(list(group))
            group.clear()

    def remake(first: Envelope[Any], command: Command[Any]) -> list[Event]:
        made = commands.remake(first, command, writer.seed)
        basis = command.basis(first.payload)
        return made if basis is None else [msgspec.structs.replace(event, basis=basis) for event in made]

    for row in source.rows(1, until):
        if row[0] - 1 in by_basis:  # the state some answers were made on: make them again now
            flush()
            for first, asked in by_basis.pop(row[0] - 1):
                made_early[first.id] = remake(first, asked)
        if row[6] is not None:  # a derived event closes the group of inputs it came from
            flush()
            continue
        envelope = envelope_from_row(row, keys)
        command = command_of(envelope.payload)
        if command is not None:
            position = command.position(envelope.payload)
            if position == 0:  # an answer was committed as a group of its own
                flush()
            if check is not None and commands.runs(command, getattr(envelope.payload, command.way)):
                if position == 0:
                    remade = made_early.pop(envelope.id) if envelope.id in made_early else remake(envelope, command)
                check(command, envelope, remade[position] if position < len(remade) else None)
        group.append(envelope)
        if singly:
            flush()
        if progress is not None and row[0] % 2000 == 0:
            progress(row[0], until)
    flush()
    if progress is not None:
        progress(until, until)


def _answers_by_basis(
    source: EventLog, until: int, keys: Keyring
) -> dict[int, list[tuple[Envelope[Any], Command[Any]]]]:
    """The first event of each recorded answer whose basis is older than the event before it, with its command,
    by basis."""
    found: dict[int, list[tuple[Envelope[Any], Command[Any]]]] = {}
    for row in source.rows(1, until, types=[command.makes.tag() for command in COMMANDS]):
        if row[6] is not None:
            continue
        envelope = envelope_from_row(row, keys)
        command = command_of(envelope.payload)
        assert command is not None  # rows of the types commands make
        basis = command.basis(envelope.payload)
        if basis is not None and command.position(envelope.payload) == 0:
            found.setdefault(basis, []).append((envelope, command))
    return found


def replay_log(
    open_engine: Callable[..., E],
    source: str | Path,
    into: str | Path | None,
    handlers: Sequence[Handler[Any]] | None,
    until_seq: int | None,
    *,
    seed: int | None,
    progress: Progress | None,
) -> E:
    """:meth:`rtopt.Engine.replay`, opening engines with ``open_engine`` (:meth:`rtopt.Engine.open`)."""
    if handlers is None and into is None:
        return open_engine(source, read_only=True, until_seq=until_seq, progress=progress)
    src = open_log(source, read_only=True)
    try:
        recorded_seed = int(src.meta()["seed"])
        if handlers is None:
            assert into is not None  # a rebuild without a copy returned above
            target_log = open_log(into, seed=recorded_seed)
            refuse_non_empty(target_log)
            try:
                copy_keys(src, target_log)  # first: the copy is complete once its last event is written
                copy_rows(src, target_log, until_seq, progress)
            finally:
                target_log.close()
            return open_engine(into, progress=progress)
        target = open_engine(
            ":memory:" if into is None else into, seed=recorded_seed if seed is None else seed, handlers=handlers
        )
        refuse_non_empty(target.log)
        target.log.set_meta(REPLAYED_FROM, str(source))
        copy_keys(src, target.log)  # what is derived anew is sealed as the source sealed it
        with copying(target.log, src, src.last_seq() if until_seq is None else until_seq):
            refeed(target.writer, src, until_seq, progress=progress)
        return target
    finally:
        src.close()


# --- verify --------------------------------------------------------------------------------------------


def verify_log(
    open_engine: Callable[..., Opened],
    source: str | Path,
    handlers: Sequence[Handler[Any]],
    *,
    progress: Progress | None,
) -> VerifyReport:
    """:meth:`rtopt.Engine.verify`, re-deriving with ``handlers`` in an engine opened with ``open_engine``."""
    src = open_log(source, read_only=True, check=False)
    mismatches: list[Difference] = []
    answers: Counter[str] = Counter()
    unit_forgotten = 0

    def check(command: Command[Any], recorded: Envelope[Any], remade: Event | None) -> None:
        nonlocal unit_forgotten
        answers[command.name] += 1
        if mismatches or (remade is not None and _same_payload(remade, recorded.payload)):
            return
        if is_pseudonym(command.unit(recorded.payload)):  # a way that answers by unit sees another unit now
            unit_forgotten += 1
            return
        mismatches.append(
            Difference(
                recorded.seq,
                command.noun,
                msgspec.to_builtins(recorded.payload),
                None if remade is None else msgspec.to_builtins(remade),
            )
        )

    try:
        meta = src.meta()
        notes = []
        derived = src.last_seq() - src.count_inputs(None)
        if not src.chained:
            notes.append(
                "this log is of format 1: its rows carry no hash chain, so changes made outside rtopt to events"
                " nothing derives from cannot be seen; opening it writable adds the chain"
            )
        else:
            damage = src.audit()
            if damage is not None:
                return VerifyReport(events=src.last_seq(), derived=derived, decisions=0, difference=Difference(*damage))
        changed = changed_configurations(
            recorded_configurations(meta), {handler.name: handler.fingerprint() for handler in handlers}
        )
        if changed:
            notes.append(
                f"{changed} run with another configuration than the one that last wrote this log (their code "
                "version or options changed): what they derive, and the decisions they make, can differ from "
                "what the log records"
            )
        replayed = REPLAYED_FROM in meta
        if replayed:
            notes.append(
                f"this log is a what-if replay of {meta[REPLAYED_FROM]}: its decisions were made on the state of "
                "that log, so they are taken as recorded, not re-made"
            )
        target = open_engine(
            ":memory:",
            seed=int(meta["seed"]),
            handlers=handlers,
            privacy=False,  # re-derived values are compared with what the log's values read as
        )
        try:
            refeed(target.writer, src, None, progress=progress, check=None if replayed else check)
            compare = _derived_difference if WORKED in meta else _first_difference
            difference = mismatches[0] if mismatches else compare(src, target.log, Keyring(src))
            if unit_forgotten:
                notes.append(
                    f"{unit_forgotten} decisions were not re-made: their unit was forgotten, and their policy "
                    "assigns by the unit, which reads as a pseudonym now"
                )
            derived = src.last_seq() - src.count_inputs(None)
            return VerifyReport(
                events=src.last_seq(),
                derived=derived,
                decisions=answers[DECIDE.name],
                difference=difference,
                notes=notes,
                suggestions=answers[SUGGEST.name],
            )
        finally:
            target.close()
    finally:
        src.close()


def _differs(index: int, recorded: Row, rederived: Row, keys: Keyring) -> bool:
    """True when column ``index`` of two rows differs; payloads are compared by what they read as, each
    upcast from the schema version of its row (so versions differ only through the payloads)."""
    if recorded[index] == rederived[index] or COLUMNS[index] == "schema_version":
        return False
    if COLUMNS[index] != "payload":
        return True
    return not _same_payload(
        keys.decode(recorded[2], recorded[9], recorded[8]), keys.decode(rederived[2], rederived[9], rederived[8])
    )


def _derived_difference(recorded: EventLog, rederived: EventLog, keys: Keyring) -> Difference | None:
    """Compare the derived events of two logs by id, wherever they stand, ignoring ``recorded_at``."""
    left = {row[1]: row for row in recorded.rows() if row[6] is not None}
    right = {row[1]: row for row in rederived.rows() if row[6] is not None}
    for event_id in sorted(left.keys() | right.keys()):
        a, b = left.get(event_id), right.get(event_id)
        if a is None or b is None:
            seq = (a or right[event_id])[0]
            return Difference(seq, "id", a and event_id, b and event_id)
        for index, name in enumerate(COLUMNS):
            if name not in ("seq", "recorded_at") and _differs(index, a, b, keys):
                return Difference(a[0], name, a[index], b[index])
    return None


def _same_value(a: Any, b: Any) -> bool:
    """True if two decoded values are equal, numbers by value (1 == 1.0) but a bool only to a bool."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_value(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same_value, a, b))
    return a == b and (type(a) is bool) == (type(b) is bool)


def _same_payload(a: Event, b: Event) -> bool:
    """True if two events hold the same values: an int recorded where a float is now derived (a log written
    before inputs were normalised to their decoded form) is the same number."""
    return encode_payload(a) == encode_payload(b) or _same_value(msgspec.to_builtins(a), msgspec.to_builtins(b))


def _first_difference(recorded: EventLog, rederived: EventLog, keys: Keyring) -> Difference | None:
    """Compare two logs row by row, ignoring ``recorded_at``."""
    left, right = recorded.rows(1, None), rederived.rows(1, None)
    for a, b in zip(left, right, strict=False):
        for index, name in enumerate(COLUMNS):
            if name != "recorded_at" and _differs(index, a, b, keys):
                if name == "payload":
                    return Difference(
                        a[0],
                        name,
                        msgspec.to_builtins(keys.decode(a[2], a[9], a[8])),
                        msgspec.to_builtins(keys.decode(b[2], b[9], b[8])),
                    )
                return Difference(min(a[0], b[0]), name, a[index], b[index])  # a missing row shows as a seq gap
    end_a, end_b = recorded.last_seq(), rederived.last_seq()
    if end_a != end_b:
        return Difference(min(end_a, end_b) + 1, "seq", f"log ends at {end_a}", f"log ends at {end_b}")
    return None

"""The Engine: the log, the handlers and the commands behind one API.

Each method checks its arguments and hands over to the module that does the work: the write path
(:mod:`rtopt.writer`: drafts, group commit, batches, screening, delivery), the commands that handlers
answer (:mod:`rtopt.commands`: decide, suggest), and replay and verify (:mod:`rtopt.replay`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import reactivex
from reactivex.abc import DisposableBase

from rtopt.arguments import invalid, one_of
from rtopt.commands import DECIDE, SUGGEST, Command, Request, SuggestRequest
from rtopt.errors import InvalidEvent, RtoptError, short_repr
from rtopt.events import (
    HANDLER_ENTRY_POINTS,
    ClockTicked,
    Decision,
    Dimension,
    Envelope,
    Event,
    ExperimentDefined,
    Feedback,
    Observed,
    StudyDefined,
    SubjectForgotten,
    Suggested,
    unvalidated,
    validate,
)
from rtopt.handler import Context, Handler
from rtopt.privacy import Keyring, Privacy
from rtopt.replay import Progress, Rebuilt, VerifyReport, note_configurations, replay_log, verify_log
from rtopt.rows import envelope_from_row, follow
from rtopt.storage.factory import open_log
from rtopt.storage.group import GroupCommitLog
from rtopt.storage.interface import EventLog
from rtopt.watermark import TimeBound
from rtopt.writer import Draft, EngineStats, Limits, Writer

DEFAULT_LOG = Path("event_log") / "rtopt.sqlite"
SET_BY_DECISION = frozenset({"prompt_id", "variant_id", "decision_id"})
"""Feedback fields that ``Engine.feedback`` takes from the decision."""


def default_handlers() -> list[Handler[Any]]:
    """One instance of every handler that installed packages declare under ``rtopt.handlers``."""
    from importlib.metadata import entry_points

    found = sorted(entry_points(group=HANDLER_ENTRY_POINTS), key=lambda ep: ep.name)
    return [ep.load()() for ep in found]


def _tags(types: Iterable[type[Event] | str] | None) -> list[str] | None:
    if types is None:
        return None
    return [t if isinstance(t, str) else t.tag() for t in types]


class Engine:
    """An event-sourced engine over one log.

    >>> from rtopt import Engine, Feedback
    >>> with Engine.open(":memory:", seed=7) as engine:
    ...     _ = engine.define_experiment("greeting", arms=["v1", "v2"], policy="thompson")
    ...     decision = engine.decide("greeting", time=1.0)
    ...     _ = engine.feedback(decision.id, success=True, quality_score=0.9, response_time_ms=300.0, time=2.0)
    ...     engine.state("bandit", "greeting").arms[decision.arm].pulls
    1
    """

    def __init__(
        self,
        log: EventLog,
        handlers: Sequence[Handler[Any]],
        *,
        until_seq: int | None = None,
        progress: Progress | None = None,
        limits: Limits | None = None,
        time_bound: TimeBound | None = None,
        privacy: Privacy | bool = True,
    ) -> None:
        self._log = log
        self.limits = Limits() if limits is None else limits
        self._writer = Writer(
            log,
            handlers,
            Keyring(log.storage, Privacy.of(privacy)),
            until_seq=until_seq,
            progress=progress,
            limits=self.limits,
            time_bound=TimeBound() if time_bound is None else time_bound,
        )
        self.seed = self._writer.seed
        note_configurations(log, self._writer.slots)

    # --- opening and closing ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        location: str | Path | None = None,
        *,
        seed: int | None = None,
        handlers: Sequence[Handler[Any]] | None = None,
        read_only: bool = False,
        durability: str = "process",
        commit_interval_ms: float = 5.0,
        commit_every: int = 1000,
        until_seq: int | None = None,
        progress: Progress | None = None,
        limits: Limits | None = None,
        max_time_ahead_s: float | None = 86_400.0,
        future_time: str = "reject",
        privacy: Privacy | bool = True,
        file_mode: int = 0o600,
    ) -> Engine:
        """Open the log at ``location``: an SQLite file (default ``event_log/rtopt.sqlite``; ``":memory:"``
        works) or a PostgreSQL database given as a ``postgresql://user@host:port/db`` URL. Any number of
        processes may write the same log (on one host for SQLite, on any for PostgreSQL), one commit at a time.

        ``seed`` is recorded when the log is created (a random one if None) and must match afterwards.
        ``handlers`` defaults to every handler installed packages declare. ``durability`` is
        ``"process"`` (a committed event survives the process being killed at any moment; on PostgreSQL the
        server holds the commit, ``synchronous_commit = off``, and a crash of the server or its host can lose
        the last moments' commits) or ``"power"`` (it also survives an OS crash or power loss: flushed to disk
        before the call returns) or ``"group"``: a call returns once its events are ordered and folded into the
        state, and a thread writes them, with the others of its group, in one transaction every
        ``commit_interval_ms`` or as soon as ``commit_every`` events wait; a crash loses at most that group,
        never a part of a commit, and the engine keeps the log for its process (:meth:`flush` waits for the
        group). A read-only engine rebuilds state
        up to ``until_seq`` and refuses writes. ``limits`` bounds what one call may write (:class:`Limits`).

        An input's event time may run at most ``max_time_ahead_s`` seconds (None: any) ahead of the later of
        the wall clock and its stream's latest event time (the log's for a new stream; an empty log bounds
        nothing); ``future_time`` says what becomes of one beyond: ``"reject"`` (InvalidEvent, counted) or
        ``"clamp"`` (recorded at that latest event time, counted in ``stats().clamped_times``).
        ``privacy`` says which personal values are stored sealed (a :class:`~rtopt.privacy.Privacy`; True: user
        and session ids and decision units; False: none).
        A new SQLite log's files get the permissions ``file_mode`` (owner only by default: events may hold
        user ids and session data).
        """
        one_of("durability", durability, ("process", "power", "group"))
        if commit_interval_ms <= 0 or not math.isfinite(commit_interval_ms):
            raise invalid("commit_interval_ms", commit_interval_ms, "must be a positive number of milliseconds")
        if commit_every < 1:
            raise invalid("commit_every", commit_every, "must be at least 1")
        if limits is not None and not isinstance(limits, Limits):
            raise invalid("limits", limits, "must be an rtopt.Limits")
        limits = None if limits is None else validate(limits)
        time_bound = TimeBound(max_time_ahead_s, future_time)
        log = open_log(
            DEFAULT_LOG if location is None else location,
            read_only=read_only,
            seed=seed,
            durability="process" if durability == "group" else durability,
            file_mode=file_mode,
        )
        recorded = int(log.meta()["seed"])
        if seed is not None and seed != recorded:
            log.close()
            raise RtoptError(f"{log.location} was created with seed {recorded}; open it with seed={recorded} or None")
        if until_seq is not None and not read_only:
            log.close()
            raise RtoptError("until_seq needs read_only=True: a writable engine must hold the whole log's state")
        chains = default_handlers() if handlers is None else handlers
        try:
            if durability == "group" and not read_only:
                log = GroupCommitLog(log, interval_s=commit_interval_ms / 1000, most=commit_every)
            return cls(
                log,
                chains,
                until_seq=until_seq,
                progress=progress,
                limits=limits,
                time_bound=time_bound,
                privacy=privacy,
            )
        except BaseException:
            log.close()
            raise

    def close(self) -> None:
        """Commit what is waiting, complete every observer and release the log."""
        self._writer.close()

    def flush(self) -> None:
        """Return once every event this engine committed is in the log (with ``durability="group"``: written
        by the committer; else at once). Raises :class:`~rtopt.storage.group.GroupLost` if a group was lost."""
        self._writer.flush()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def location(self) -> str:
        """Where the log lives."""
        return self._log.location

    @property
    def position(self) -> int:
        """The seq of the last event folded into this engine's state."""
        return self._writer.last_seq

    @property
    def log(self) -> EventLog:
        """The storage behind this engine."""
        return self._log

    @property
    def writer(self) -> Writer:
        """The write path behind this engine (replay feeds a log's inputs through it)."""
        return self._writer

    @property
    def rebuilt(self) -> Rebuilt:
        """How the state was last rebuilt from the log."""
        return self._writer.rebuilt

    # --- handlers and state ----------------------------------------------------------------------

    def register(self, handler: Handler[Any]) -> None:
        """Add a handler chain; it first folds the log's history, then follows live events."""
        self._writer.register(handler)

    def handlers(self) -> list[str]:
        """Names of the registered handlers, in the order they see events."""
        return [slot.name for slot in self._writer.slots]

    def state(self, handler: str, key: str | None = None) -> Any:
        """A detached copy of ``handler``'s state, or of the part of it for ``key``; on a writable engine, with
        what other processes appended to the log since this one last looked folded in first."""
        return self._writer.state(handler, key)

    def snapshot(self) -> int:
        """Store every handler's state at the current position; returns that seq."""
        return self._writer.snapshot()

    # --- publishing ------------------------------------------------------------------------------

    def publish(
        self,
        event: Event,
        stream: str | None = None,
        *,
        time: float | None = None,
        id: str | None = None,
        correlation_id: str | None = None,
    ) -> Envelope[Any]:
        """Append ``event`` and return its envelope once it is committed and delivered."""
        writer = self._writer
        return writer.submit([writer.draft(Draft(event, stream, time, id, correlation_id))])[0]

    def publish_many(
        self, events: Iterable[Event | Draft], stream: str | None = None, *, time: float | None = None
    ) -> list[Envelope[Any]]:
        """Append several events in one transaction; ``stream`` and ``time`` apply where an item sets none.

        At most ``limits.max_batch`` events a call."""
        return self._writer.submit_many(events, stream, time)

    @contextmanager
    def batch(self) -> Iterator[Engine]:
        """Commit everything published, decided and fed back inside the block as one transaction.

        Inside the block each call sees the effect of the ones before it (feedback may follow its decision
        at once), but nothing is durable or delivered to subscribers until the block ends. If the block
        raises, or a write fails, none of it is written and the engine's state is the log's again. Other
        threads' calls wait until the block ends; a batch inside a batch joins it. A log that several
        processes append to (PostgreSQL) takes no batches.

        >>> with Engine.open(":memory:", seed=7) as engine:
        ...     _ = engine.define_experiment("greeting", arms=["v1", "v2"], policy="ucb1", time=0.0)
        ...     with engine.batch():
        ...         decisions = [engine.decide("greeting", time=1.0 + i) for i in range(4)]
        ...         for d in decisions:
        ...             _ = engine.feedback(d.id, success=True, quality_score=1.0, response_time_ms=9.0, time=5.0)
        ...     engine.stats().published
        9
        """
        with self._writer.batch():
            yield self

    def tick(self, time: float | None = None) -> Envelope[ClockTicked]:
        """Tell the handlers that event time has reached ``time`` (default: now), so that deadlines pass
        even when nothing else happens (call it on a timer in a service; replay sees the same ticks)."""
        return self.publish(ClockTicked(), time=time)

    def forget(self, subject: str, *, time: float | None = None) -> Envelope[SubjectForgotten]:
        """Make every value sealed for ``subject`` (a user id, or a session id with no user) unreadable: its
        key is deleted, with every snapshot, and the state is rebuilt, where its values read as the
        pseudonym ``forgotten:<ref>``. No event is changed; a :class:`~rtopt.events.SubjectForgotten` input
        records the reference. Raises :class:`RtoptError` for a subject with no key (never seen, or
        forgotten already)."""
        return self._writer.forget(subject, time)

    # --- commands: handlers answer them, the engine records the answers ----------------------------

    def _define(self, definition: Event, name: str, time: float | None) -> Envelope[Any]:
        """Commit the definition of a command's target ``name`` on its own (screened as any input); if the
        same definition is recorded already (by this process or another), return that one."""
        writer = self._writer
        writer.check_writable()
        draft = writer.draft(Draft(definition, name, time))
        recorded: list[Envelope[Any]] = []

        def define() -> list[Draft]:  # under the write lock, on the state caught up with the log
            found = writer.recorded_definition(draft)
            recorded[:] = [] if found is None else [found]
            return [draft] if found is None else []

        with writer.lock:
            writer.commit_queue()
            committed = writer.commit_now([draft], make=define)
        return recorded[0] if recorded else committed[0]

    def _ask(self, command: Command[Any], target: str, request: Any, when: float) -> list[Envelope[Any]]:
        """Route ``request`` to the handler that answers ``command`` for ``target`` and record its answer,
        each event with the next input id and that id as its correlation id."""
        writer = self._writer
        refused = [f"unknown {command.target}"]  # why the last answer made was refused, counted if it stands

        def answer() -> list[Draft]:
            slot = writer.commands.route(command, target)
            if slot is None:
                refused[0] = f"unknown {command.target}"
                raise InvalidEvent(
                    f"{command.target} = {target!r}: no such {command.target}", field=command.target, value=target
                )
            ids = writer.next_input_ids(command.size(request))
            try:
                made = writer.commands.ask(slot, command, target, Context(when, ids[0], self.seed), request)
            except InvalidEvent:
                refused[0] = "invalid command"
                raise
            return [Draft(event, target, when, event_id, event_id) for event, event_id in zip(made, ids, strict=True)]

        with writer.lock:
            writer.commit_queue()
            try:
                return writer.commit_now([], checked=True, answer=answer)
            except InvalidEvent:
                writer.rejected[refused[0]] += 1
                raise

    def define_experiment(
        self, name: str, arms: Sequence[str], policy: str = "thompson", *, time: float | None = None, **options: Any
    ) -> Envelope[ExperimentDefined]:
        """Set up an experiment over ``arms`` run by ``policy`` (an event); ``options`` tune the policy."""
        arms = list(self._writer.collection("arms", arms))
        try:
            definition = ExperimentDefined(experiment=name, arms=arms, policy=policy, options=options)
        except InvalidEvent:
            self._writer.rejected["invalid command"] += 1
            raise
        return self._define(definition, name, time)

    def decide(
        self,
        experiment: str,
        context: dict[str, float] | None = None,
        available: Sequence[str] | None = None,
        *,
        unit: str | None = None,
        slots: int = 1,
        time: float | None = None,
    ) -> Envelope[Decision]:
        """Choose an arm of ``experiment`` for one request; the Decision is logged before it is returned.

        ``available`` restricts the choice to those arms; ``context`` is the request's feature vector;
        ``unit`` names the user or session the request is for; ``slots`` > 1 asks for a ranked slate.
        """
        writer = self._writer
        slots = writer.count("slots", slots)
        experiment = writer.key("experiment", experiment, optional=False, reason="invalid command")
        available = None if available is None else list(writer.collection("available", available))
        request = Request(context=context, available=available, unit=unit, slots=slots)
        if context is not None or available is not None or unit is not None:  # else nothing is left to check
            request = writer.accept(request, "invalid command")
        return self._ask(DECIDE, experiment, request, writer.event_time(time, experiment))[0]

    def feedback(
        self,
        decision_id: str,
        /,
        *,
        success: bool,
        quality_score: float,
        response_time_ms: float,
        time: float | None = None,
        **fields: Any,
    ) -> Envelope[Feedback]:
        """Record feedback on the response a decision led to (a Feedback event on the experiment's stream).

        Other :class:`~rtopt.events.Feedback` fields (cost_usd, user_satisfaction, tokens_in ...) are
        keyword arguments; those the decision sets (prompt_id, variant_id, decision_id) are not. An unknown
        decision id is rejected, counted and raised as InvalidEvent.
        """
        writer = self._writer
        decision_id, decision = writer.recorded_answer(DECIDE, decision_id)
        taken = sorted(fields.keys() & SET_BY_DECISION)
        if taken:
            name, value = taken[0], fields[taken[0]]
            writer.refuse(
                InvalidEvent(f"{name} = {short_repr(value)}: set by the decision", field=name, value=value),
                "invalid feedback",
            )
        try:
            with unvalidated():  # validated once, below, with the payload limit
                event = Feedback(
                    prompt_id=decision.experiment,
                    variant_id=decision.arm,
                    decision_id=decision_id,
                    success=success,
                    quality_score=quality_score,
                    response_time_ms=response_time_ms,
                    **fields,
                )
        except InvalidEvent:
            writer.rejected["invalid feedback"] += 1
            raise
        event = writer.accept(event, "invalid feedback")
        when = writer.event_time(time, decision.experiment)
        return writer.submit([Draft(event, decision.experiment, when, None, decision_id)])[0]

    def define_study(
        self,
        name: str,
        space: dict[str, Any],
        direction: str = "maximize",
        kernel: str = "matern52",
        acquisition: str = "ei",
        n_initial: int = 10,
        seed: int | None = None,
        *,
        method: str = "gp",
        time: float | None = None,
        **options: Any,
    ) -> Envelope[StudyDefined]:
        """Set up a study of the parameters in ``space`` (an event): name -> ``(low, high)`` for a float
        range, or a :class:`~rtopt.events.Dimension` or its mapping for log-scale, integer and categorical
        parameters. ``options`` tune the ``method``."""
        if not isinstance(space, Mapping):
            self._writer.refuse(
                InvalidEvent(
                    f"space = {short_repr(space)}: must be a mapping of parameter names", field="space", value=space
                )
            )
        try:
            dimensions = {key: Dimension.of(value) for key, value in space.items()}
            definition = StudyDefined(
                study=name,
                space=dimensions,
                direction=cast(Literal["maximize", "minimize"], direction),  # StudyDefined checks the value
                method=method,
                kernel=kernel,
                acquisition=acquisition,
                n_initial=n_initial,
                seed=seed,
                options=options,
            )
        except InvalidEvent:
            self._writer.rejected["invalid command"] += 1
            raise
        return self._define(definition, name, time)

    def suggest(self, study: str, n: int = 1, *, time: float | None = None) -> list[Envelope[Suggested]]:
        """Suggest ``n`` parameter sets of ``study`` to evaluate (together); they are logged before they
        are returned, and replay re-makes them identically."""
        writer = self._writer
        n = writer.count("n", n)
        study = writer.key("study", study, optional=False, reason="invalid command")
        return self._ask(SUGGEST, study, SuggestRequest(n=n), writer.event_time(time, study))

    def tell(self, suggestion_id: str, value: float, *, time: float | None = None) -> Envelope[Observed]:
        """Record the objective ``value`` measured for a suggestion (an Observed event on its study).

        An unknown suggestion id, a second value for one suggestion and a value that is not a finite number
        are rejected, counted and raised as InvalidEvent."""
        writer = self._writer
        suggestion_id, suggestion = writer.recorded_answer(SUGGEST, suggestion_id)
        study = suggestion.study
        try:
            event = Observed(study=study, suggestion_id=suggestion_id, value=value)
        except InvalidEvent:
            writer.rejected["invalid observation"] += 1
            raise
        when = writer.event_time(time, study)

        def observation() -> list[Draft]:
            if writer.commands.settled(SUGGEST, study, suggestion_id):
                writer.refuse(
                    InvalidEvent(
                        f"suggestion_id = {suggestion_id!r}: already observed",
                        field="suggestion_id",
                        value=suggestion_id,
                    ),
                    "repeated observation",
                )
            return [Draft(event, study, when, None, suggestion_id)]

        with writer.lock:
            writer.commit_queue()
            return writer.commit_now([], make=observation)[0]

    # --- observing and reading -------------------------------------------------------------------

    def observe(
        self, types: Iterable[type[Event] | str] | None = None, stream: str | None = None
    ) -> reactivex.Observable[Envelope[Any]]:
        """A hot Observable of the envelopes this engine commits (optionally only ``types`` in ``stream``), in
        seq order; events other processes append are folded but not delivered here (``tail`` follows them)."""
        return self._writer.bus.observe(_tags(types), stream)

    def subscribe(
        self,
        callback: Callable[[Envelope[Any]], None],
        types: Iterable[type[Event] | str] | None = None,
        stream: str | None = None,
    ) -> DisposableBase:
        """Call ``callback`` with every envelope this engine commits that matches (as :meth:`observe`); dispose
        the result to stop."""
        return self.observe(types, stream).subscribe(on_next=callback)

    def read(
        self,
        types: Iterable[type[Event] | str] | None = None,
        start: int = 1,
        until: int | None = None,
        stream: str | None = None,
    ) -> Iterator[Envelope[Any]]:
        """Recorded envelopes with ``start <= seq <= until``, in seq order."""
        for row in self._log.rows(start, until, _tags(types), stream):
            yield envelope_from_row(row, self._writer.keys)

    def tail(
        self,
        types: Iterable[type[Event] | str] | None = None,
        start: int | None = None,
        stream: str | None = None,
        *,
        poll_interval: float = 0.05,
        idle_timeout: float | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Envelope[Any]]:
        """Follow the log: yield recorded events from ``start`` (default: the end), then new ones as any
        process commits them, until ``stop`` is set or nothing arrives for ``idle_timeout`` seconds.

        The end of the log is taken when ``tail`` is called, not when iteration starts."""
        after = self._log.last_seq() if start is None else start - 1
        return follow(self._log, self._writer.keys, after, _tags(types), stream, poll_interval, idle_timeout, stop)

    def stats(self) -> EngineStats:
        """What this engine published, derived and rejected since it was opened."""
        return self._writer.stats()

    # --- replay ----------------------------------------------------------------------------------

    @classmethod
    def replay(
        cls,
        source: str | Path,
        into: str | Path | None = None,
        handlers: Sequence[Handler[Any]] | None = None,
        until_seq: int | None = None,
        *,
        seed: int | None = None,
        progress: Progress | None = None,
    ) -> Engine:
        """Rebuild state from the log at ``source``, which is never written to.

        Rebuild (``handlers`` is None): every event is folded as recorded. With ``into`` None the result
        is a read-only engine at ``until_seq``; with ``into`` the events up to ``until_seq`` are copied
        there first and the engine goes on writing into that copy.

        What-if (``handlers`` given): only the source's input events are fed, in their original groups,
        through ``handlers`` into ``into`` (default in memory), deriving everything anew.
        """
        return replay_log(cls.open, source, into, handlers, until_seq, seed=seed, progress=progress)

    @classmethod
    def verify(
        cls,
        source: str | Path,
        handlers: Sequence[Handler[Any]] | None = None,
        *,
        progress: Progress | None = None,
    ) -> VerifyReport:
        """Check the hash chain of ``source`` row by row, then re-derive every derived event and re-make every
        decision and suggestion; report the first difference (a broken link as field ``chain``)."""
        chains = default_handlers() if handlers is None else handlers
        return verify_log(cls.open, source, chains, progress=progress)

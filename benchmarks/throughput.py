"""Throughput and latency of the rtopt kernel, measured against the raw SQLite limit in one run.

Every figure is measured on the same machine in the same process, in SQLite files (WAL mode) under one
temporary directory:

1. raw limits: plain ``sqlite3`` ``executemany`` of the very rows step 2 wrote, read back from its log with
   their chain values, in the very transactions step 2 committed (:mod:`benchmarks.limits`): into a fresh
   log whose schema rtopt created, moving its head anchor at each commit as rtopt does (the copy is checked
   to be the same log, link by link), and into a minimal table (a seq key, a unique id and the payload);
   only the commits of step 2's timed calls (the Feedback events and what they derived) are timed;
2. ``Engine.publish_many`` of Feedback on pending decisions (the Thompson bandit chain learns from each
   and derives an ArmUpdated), 1,000 events a call, with one counting subscriber; each feedback batch
   follows the batch of the 1,000 Decision events it answers (published untimed, or made one by one with
   ``decide`` under ``--use-decide``, which is slower by the 100k decide() calls);
3. one ``Engine.publish`` call per Feedback event, and the same with ``durability="group"`` (a call returns
   once its events are folded, a committer thread writes them in groups; the clock stops after
   ``engine.flush()``, so every event is in the log);
4. ``Engine.decide`` latency (p50, p99 of each call timed alone) on 10-arm experiments with Thompson
   sampling, UCB1 and LinUCB (a context of 10 features per call), each decision followed by its (untimed)
   feedback, with the default durability (a commit on each call's path) and with ``durability="group"``
   (none: the call returns once its Decision is folded);
5. ``Engine.replay`` (rebuild, no snapshot) of the log written in step 2, and ``Engine.verify`` of the
   Thompson log of step 4 (its decisions were made by ``decide`` so that verify can re-make them);
6. step 2's publish path with a 1-minute tumbling and a 5-minute sliding window pipeline (mean, std and p95
   of latency per arm) registered beside the bandit chain.

Every step but 3's and 4's second halves runs with the default ``durability="process"`` (each call's
events committed before it returns). Targets are those of issue #16: publish_many at least 0.6x the raw
limit on rtopt's schema and 0.35x on the minimal table, decide() p99 under 300 µs (under 1 ms for LinUCB)
at either durability, replay at least 300k events/s.

Run ``python benchmarks/throughput.py`` (``--quick`` for a tiny run, ``--json`` for one JSON object on
stdout, ``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rtopt.handlers.bandits import BanditHandler
from rtopt.streams import Aggregates, Sliding, Tumbling, WindowHandler, WindowPipeline

from rtopt import Decision, Draft, Engine, Feedback
from rtopt.storage.sqlite import SQLiteLog

if not __package__:  # run as a script (python benchmarks/throughput.py): the benchmarks package is its folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.limits import audit, copy_commits, minimal_commits, stored_commits

BATCH = 1_000
SEED = 20_260_101
START = 1_767_225_600.0  # event time of the first event: 2026-01-01T00:00:00Z
EXPERIMENT = "bench"
ARMS_3 = ("v1", "v2", "v3")
ARMS_10 = tuple(f"v{i}" for i in range(1, 11))
FEATURES = tuple(f"x{i}" for i in range(10))
DECIDE_POLICIES: dict[str, dict[str, Any]] = {"thompson": {}, "ucb1": {}, "linucb": {"features": list(FEATURES)}}
"""The policies whose decide() latency step 4 measures (10 arms each), with their options."""
DECIDE_P99_US = {"thompson": 300.0, "ucb1": 300.0, "linucb": 1_000.0}  # issue #16's bound on each one's p99
DURABILITIES = {"": "process", "_group": "group"}  # steps 3 and 4: each durability and its figures' key suffix
BENCH_NAMESPACE = uuid.UUID("3c1d0a52-8f0e-4b7a-9d55-6a1f0c2b9e77")
REPLAY_ROUNDS = 3  # replay is timed this many times and the fastest counts (it is short and noise-prone)

DEFAULTS = {"events": 200_000, "publishes": 20_000, "decides": 10_000}
QUICK = {"events": 4_000, "publishes": 500, "decides": 300}

# key -> (label, unit); every key is a figure in the JSON output.
FIGURES: dict[str, tuple[str, str]] = {
    "raw_rows_per_s": ("1. raw sqlite3 executemany, rtopt's schema", "rows/s"),
    "minimal_rows_per_s": ("1. raw sqlite3 executemany, minimal table", "rows/s"),
    "publish_many_events_per_s": ("2. publish_many, inputs + derived", "events/s"),
    "publish_many_inputs_per_s": ("2. publish_many, inputs only", "events/s"),
    "publish_events_per_s": ("3. publish(), inputs + derived", "events/s"),
    "publish_inputs_per_s": ("3. publish(), inputs only", "events/s"),
    "publish_group_events_per_s": ('3. publish(), durability="group", inputs + derived', "events/s"),
    "publish_group_inputs_per_s": ('3. publish(), durability="group", inputs only', "events/s"),
    **{
        f"decide_{policy}_{q}_us{suffix}": (f"4. decide() {q}, {policy}, 10 arms{label}", "µs")
        for policy in DECIDE_POLICIES
        for suffix, label in (("", ""), ("_group", ', durability="group"'))
        for q in ("p50", "p99")
    },
    "replay_events_per_s": ("5. replay, rebuild, no snapshot", "events/s"),
    "verify_events_per_s": ("5. verify", "events/s"),
    "streaming_events_per_s": ("6. publish_many + windows, inputs + derived", "events/s"),
    "streaming_inputs_per_s": ("6. publish_many + windows, inputs only", "events/s"),
}
RATIOS: dict[str, str] = {
    "publish_many_events_to_raw": "2. events / 1. raw, rtopt's schema",
    "publish_many_events_to_minimal": "2. events / 1. raw, minimal table",
}
# key -> (comparison, bound)
TARGETS: dict[str, tuple[str, float]] = {
    "publish_many_events_to_raw": (">=", 0.6),
    "publish_many_events_to_minimal": (">=", 0.35),
    **{
        f"decide_{policy}_p99_us{suffix}": ("<", bound)
        for policy, bound in DECIDE_P99_US.items()
        for suffix in ("", "_group")
    },
    "replay_events_per_s": (">=", 300_000.0),
}


# --- workload ---------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Decisions (as drafts) and the Feedback event planned for each (its decision id is set once the
    decision is in the log)."""

    decisions: list[Draft]
    feedback: list[Feedback]


def link(planned: Sequence[Feedback], decisions: Sequence[Any]) -> list[Feedback]:
    """The planned feedback, each naming the decision (envelope) it answers and the arm that decision chose."""
    return [
        msgspec.structs.replace(event, variant_id=decision.arm, decision_id=decision.id)
        for event, decision in zip(planned, decisions, strict=True)
    ]


@dataclass
class Outcomes:
    """Pre-drawn feedback values, so drawing them costs nothing inside a timed section."""

    uniform: np.ndarray
    quality: np.ndarray
    latency_ms: np.ndarray
    tokens_out: np.ndarray

    @classmethod
    def draw(cls, count: int, seed: int, stream: int) -> Outcomes:
        rng = np.random.default_rng([seed, stream])
        return cls(
            uniform=rng.random(count),
            quality=rng.beta(7.0, 3.0, count),
            latency_ms=rng.lognormal(np.log(650.0), 0.35, count),
            tokens_out=rng.integers(80, 700, count),
        )

    def fields(self, i: int, success_rate: float) -> dict[str, Any]:
        """Keyword fields of the i-th Feedback (besides prompt, variant and decision)."""
        tokens_out = int(self.tokens_out[i])
        return {
            "success": bool(self.uniform[i] < success_rate),
            "quality_score": float(self.quality[i]),
            "response_time_ms": float(self.latency_ms[i]),
            "tokens_in": 400,
            "tokens_out": tokens_out,
            "cost_usd": (400 + tokens_out) * 2e-6,
        }


def make_workload(count: int, arms: Sequence[str], seed: int, stream: int) -> Workload:
    """``count`` decisions chosen uniformly at random among ``arms`` and their feedback.

    The decisions are real Decision events (logged, folded into the bandit's pending decisions like the
    ones ``decide`` logs); they are drawn here rather than by ``decide`` because 100k decide() calls
    (0.2-0.5 ms each) would take most of the run's time budget (see ``--use-decide``).
    """
    rng = np.random.default_rng([seed, stream, 1])
    chosen = rng.integers(len(arms), size=count)
    outcomes = Outcomes.draw(count, seed, stream)
    candidates = list(arms)
    decisions: list[Draft] = []
    feedback: list[Feedback] = []
    for i in range(count):
        arm = arms[int(chosen[i])]
        decision = Decision(
            experiment=EXPERIMENT, arm=arm, policy="uniform", propensity=1 / len(arms), candidates=candidates
        )
        decisions.append(Draft(decision))
        feedback.append(Feedback(prompt_id=EXPERIMENT, variant_id=arm, **outcomes.fields(i, 0.95)))
    return Workload(decisions, feedback)


def batches(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]) of already sorted values."""
    rank = max(1, int(np.ceil(q / 100 * len(sorted_values))))
    return float(sorted_values[rank - 1])


# --- progress ---------------------------------------------------------------------------------------


class Reporter:
    """A rich progress bar on a terminal, one status line per step otherwise (always on stderr).

    The bar is redrawn only from :meth:`tick`, between timed sections, never by a background thread.
    """

    def __init__(self, console: Console, steps: int) -> None:
        self.console = console
        self.steps = steps
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
            disable=not self.live,
        )
        self._task: Any = None
        self._last_refresh = 0.0

    def __enter__(self) -> Reporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.refresh()
        self.progress.stop()

    @contextmanager
    def step(self, number: int, title: str, total: int) -> Iterator[Callable[[int], None]]:
        started = time.perf_counter()
        if not self.live:
            self.console.print(f"[{number}/{self.steps}] {title} ...", highlight=False)
        self._task = self.progress.add_task(f"[{number}/{self.steps}] {title}", total=total)
        self.progress.refresh()
        yield self.tick
        self.progress.update(self._task, completed=total)
        self.progress.refresh()
        if not self.live:
            self.console.print(
                f"[{number}/{self.steps}] done in {time.perf_counter() - started:.1f} s", highlight=False
            )

    def tick(self, n: int = 1) -> None:
        self.progress.advance(self._task, n)
        now = time.monotonic()
        if self.live and now - self._last_refresh > 0.2:
            self._last_refresh = now
            self.progress.refresh()


# --- the measurements -------------------------------------------------------------------------------


def measure_limits(source: Path, workdir: Path) -> dict[str, float]:
    """Step 1: the commits of the step-2 log at ``source``, written again by plain sqlite3 into a fresh rtopt
    log and into the minimal table; only the commits of step 2's timed calls (those of Feedback) count."""
    commits = stored_commits(source)
    timed = [commit[0][2] == "Feedback" for commit in commits]
    rows = sum(len(commit) for commit, counted in zip(commits, timed, strict=True) if counted)
    copy = workdir / "raw.sqlite"
    SQLiteLog.open(copy, seed=SEED).close()  # the very schema (tables, indexes, triggers) rtopt writes into
    spent = {"raw": copy_commits(copy, commits), "minimal": minimal_commits(workdir / "minimal.sqlite", commits)}
    audit(copy)
    seconds = {
        name: sum(ns for ns, counted in zip(each, timed, strict=True) if counted) / 1e9 for name, each in spent.items()
    }
    return {"raw_rows_per_s": rows / seconds["raw"], "minimal_rows_per_s": rows / seconds["minimal"], "raw_rows": rows}


def measure_publish_many(
    path: Path,
    work: Workload,
    *,
    use_decide: bool,
    decisions_first: bool,
    tick: Callable[[int], None],
) -> dict[str, float]:
    """Step 2: publish_many of Feedback on pending decisions, 1,000 events a call, one subscriber."""
    seen = 0

    def count(_envelope: object) -> None:
        nonlocal seen
        seen += 1

    engine = Engine.open(path, seed=SEED)
    try:
        if "bandit" not in engine.handlers():
            raise RuntimeError(f"the bandit handler is not registered (entry points found {engine.handlers()})")
        engine.subscribe(count)
        engine.define_experiment(EXPERIMENT, arms=list(ARMS_3), time=START)
        total = len(work.feedback)
        feedback_ns = decision_ns = 0
        written = inputs = 0
        decided: list[Feedback] = []

        def make_decisions(start: int, stop: int) -> None:
            nonlocal decision_ns
            when = START + 1 + start * 1e-3
            t0 = time.perf_counter_ns()
            if use_decide:
                made = [engine.decide(EXPERIMENT, time=when) for _ in range(start, stop)]
            else:
                made = engine.publish_many(work.decisions[start:stop], time=when)
            decision_ns += time.perf_counter_ns() - t0
            decided.extend(link(work.feedback[start:stop], made))

        def send_feedback(start: int, stop: int) -> None:
            nonlocal feedback_ns, written, inputs
            chunk = decided[start:stop]
            before = engine.position
            t0 = time.perf_counter_ns()
            engine.publish_many(chunk, time=START + 1 + stop * 1e-3 + 0.5)
            feedback_ns += time.perf_counter_ns() - t0
            written += engine.position - before
            inputs += len(chunk)
            tick(len(chunk))

        gc.collect()
        if decisions_first:
            for start in range(0, total, BATCH):
                make_decisions(start, min(start + BATCH, total))
            for start in range(0, total, BATCH):
                send_feedback(start, min(start + BATCH, total))
        else:
            for start in range(0, total, BATCH):
                stop = min(start + BATCH, total)
                make_decisions(start, stop)
                send_feedback(start, stop)
        stats = engine.stats()
        position = engine.position
    finally:
        engine.close()
    if stats.rejected or stats.handler_failures or written < 2 * inputs:  # ArmUpdated, and ExperimentStats
        raise RuntimeError(f"the bandit chain did not learn from every feedback: {stats}")
    if seen != position:
        raise RuntimeError(f"the subscriber saw {seen} events, the log holds {position}")
    return {
        "publish_many_events_per_s": written / (feedback_ns / 1e9),
        "publish_many_inputs_per_s": inputs / (feedback_ns / 1e9),
        "decision_inputs_per_s": total / (decision_ns / 1e9),
        "publish_many_inputs": inputs,
        "publish_many_events": written,
        "subscriber_events": seen,
        "log_events": position,
    }


def measure_streaming(path: Path, work: Workload, tick: Callable[[int], None]) -> dict[str, float]:
    """Step 6: step 2's publish path with two window pipelines beside the bandit chain.

    A 1-minute tumbling and a 5-minute sliding window (mean, std and p95 of latency per arm); the feedback
    arrives 20 a second of event time, so the windows close as it flows.
    """
    latency = Aggregates({"response_time_ms": ("mean", "std", "p95")})
    handlers = [
        BanditHandler(),
        WindowHandler(WindowPipeline("latency_1min", Tumbling(60.0), latency, key="variant_id")),
        WindowHandler(WindowPipeline("latency_5min", Sliding(300.0, 60.0), latency, key="variant_id")),
    ]
    elapsed = written = inputs = 0
    with Engine.open(path, seed=SEED, handlers=handlers) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(ARMS_3), time=START)
        for start in range(0, len(work.feedback), BATCH):
            stop = min(start + BATCH, len(work.feedback))
            made = engine.publish_many(work.decisions[start:stop], time=START + start * 0.05)
            drafts = [
                Draft(event, time=START + (start + i) * 0.05 + 0.5)
                for i, event in enumerate(link(work.feedback[start:stop], made))
            ]
            before = engine.position
            started = time.perf_counter_ns()
            engine.publish_many(drafts)
            elapsed += time.perf_counter_ns() - started
            written += engine.position - before
            inputs += len(drafts)
            tick(len(drafts))
        windows = engine.log.count_by_type().get("WindowClosed", 0)
        stats = engine.stats()
    if stats.rejected or stats.handler_failures or not windows:
        raise RuntimeError(f"the streaming chains did not run cleanly: {stats}, {windows} windows")
    return {
        "streaming_events_per_s": written / (elapsed / 1e9),
        "streaming_inputs_per_s": inputs / (elapsed / 1e9),
        "streaming_windows": windows,
    }


def measure_publish(
    path: Path, work: Workload, tick: Callable[[int], None], durability: str = "process"
) -> dict[str, float]:
    """Step 3: one publish() call per Feedback event on pending decisions, with ``durability``; the clock
    stops once every event is in the log (``Engine.flush``)."""
    with Engine.open(path, seed=SEED, durability=durability) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(ARMS_3), time=START)
        feedback: list[Feedback] = []
        for start in range(0, len(work.decisions), BATCH):
            made = engine.publish_many(work.decisions[start : start + BATCH], time=START + 1)
            feedback.extend(link(work.feedback[start : start + BATCH], made))
        engine.flush()
        publish = engine.publish
        before = engine.position
        gc.collect()
        t0 = time.perf_counter_ns()
        for i, event in enumerate(feedback):
            publish(event, time=START + 2 + i * 1e-3)
            if i % 256 == 255:
                tick(256)
        engine.flush()
        elapsed = time.perf_counter_ns() - t0
        written = engine.position - before
        stats = engine.stats()
    if stats.rejected or written < 2 * len(work.feedback):
        raise RuntimeError(f"the bandit chain did not learn from every feedback: {stats}")
    seconds = elapsed / 1e9
    return {
        "publish_events_per_s": written / seconds,
        "publish_inputs_per_s": len(work.feedback) / seconds,
        "publish_inputs": len(work.feedback),
    }


def measure_decide(
    path: Path, policy: str, count: int, tick: Callable[[int], None], warmup: int = 50, durability: str = "process"
) -> dict[str, float]:
    """Step 4: latency of decide() alone on a 10-arm experiment of ``policy`` with ``durability``, each
    decision followed by its (untimed) feedback; a contextual policy gets a context of 10 features per call."""
    calls = warmup + count
    arms = ARMS_10
    outcomes = Outcomes.draw(calls, SEED, len(arms))
    rates = dict(zip(arms, np.linspace(0.6, 0.9, len(arms)), strict=True))
    options = DECIDE_POLICIES[policy]
    vectors = np.random.default_rng([SEED, 4]).random((calls, len(FEATURES))).tolist()
    contexts = [dict(zip(FEATURES, vector, strict=True)) if options.get("features") else None for vector in vectors]
    samples: list[int] = []
    clock = time.perf_counter_ns
    with Engine.open(path, seed=SEED, durability=durability) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(arms), policy=policy, time=START, **options)
        decide = engine.decide
        gc.collect()
        for i in range(calls):
            when = START + 1 + i * 1e-2
            context = contexts[i]
            t0 = clock()
            decision = decide(EXPERIMENT, context, time=when)
            t1 = clock()
            if i >= warmup:
                samples.append(t1 - t0)
            engine.feedback(decision.id, time=when + 5e-3, **outcomes.fields(i, rates[decision.arm]))
            if i >= warmup and (i - warmup) % 100 == 99:
                tick(100)
        stats = engine.stats()
    if stats.rejected or stats.derived < calls:
        raise RuntimeError(f"decide/feedback did not run cleanly: {stats}")
    samples.sort()
    return {"p50_us": percentile(samples, 50) / 1e3, "p99_us": percentile(samples, 99) / 1e3, "calls": count}


def log_summary(path: Path) -> tuple[int, int]:
    """(events, snapshots) in the log at ``path``."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        (snapshots,) = conn.execute("SELECT count(*) FROM snapshots").fetchone()
    finally:
        conn.close()
    return events, snapshots


def measure_replay(path: Path, rounds: int = REPLAY_ROUNDS) -> dict[str, float]:
    """Step 5a: Engine.replay (rebuild: read-only open folding the whole log), no snapshot; best of ``rounds``."""
    events, snapshots = log_summary(path)
    if snapshots:
        raise RuntimeError(f"{path} holds {snapshots} snapshots: replay would start from one")
    best = None
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter_ns()
        engine = Engine.replay(path)
        elapsed = time.perf_counter_ns() - t0
        try:
            position = engine.position
            decisions = engine.state("bandit", EXPERIMENT).decisions
        finally:
            engine.close()
        if position != events:
            raise RuntimeError(f"replay stopped at seq {position}, the log holds {events} events")
        best = elapsed if best is None else min(best, elapsed)
    assert best is not None
    return {
        "replay_events_per_s": events / (best / 1e9),
        "replay_events": events,
        "replay_decisions": decisions,
        "snapshots": snapshots,
    }


def measure_verify(path: Path) -> dict[str, float]:
    """Step 5b: Engine.verify (re-derive every derived event, re-make every decision)."""
    gc.collect()
    t0 = time.perf_counter_ns()
    report = Engine.verify(path)
    elapsed = time.perf_counter_ns() - t0
    if not report.ok:
        raise RuntimeError(f"verify found a difference in {path}: {report.difference}")
    return {"verify_events_per_s": report.events / (elapsed / 1e9), "verify_events": report.events}


# --- the run ----------------------------------------------------------------------------------------


def run(
    events: int,
    publishes: int,
    decides: int,
    *,
    workdir: Path,
    reporter: Reporter,
    use_decide: bool = False,
    decisions_first: bool = False,
) -> dict[str, Any]:
    """Run every step; return the results as one JSON-ready dict."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    pairs = max(events // 2, 1)
    main = make_workload(pairs, ARMS_3, SEED, stream=1)
    counts: dict[str, Any] = {}
    figures: dict[str, float] = {}

    how = "decide()" if use_decide else "publish_many"
    with reporter.step(2, f"publish_many of {pairs:,} Feedback (decisions by {how})", pairs) as tick:
        many = measure_publish_many(
            workdir / "publish_many.sqlite", main, use_decide=use_decide, decisions_first=decisions_first, tick=tick
        )
    del main
    for key in ("publish_many_events_per_s", "publish_many_inputs_per_s"):
        figures[key] = many[key]
    for key in ("publish_many_inputs", "publish_many_events", "subscriber_events", "log_events"):
        counts[key] = many[key]

    with reporter.step(1, "raw executemany of step 2's commits, on rtopt's schema and a minimal table", 1) as tick:
        raw = measure_limits(workdir / "publish_many.sqlite", workdir)
        tick(1)
    figures["raw_rows_per_s"] = raw["raw_rows_per_s"]
    figures["minimal_rows_per_s"] = raw["minimal_rows_per_s"]
    counts["raw_rows"] = raw["raw_rows"]

    streaming = make_workload(pairs, ARMS_3, SEED, stream=6)
    with reporter.step(6, f"publish_many of {pairs:,} Feedback through the bandit and two windows", pairs) as tick:
        stream = measure_streaming(workdir / "streaming.sqlite", streaming, tick)
    del streaming
    figures["streaming_events_per_s"] = stream["streaming_events_per_s"]
    figures["streaming_inputs_per_s"] = stream["streaming_inputs_per_s"]
    counts["streaming_windows"] = stream["streaming_windows"]

    single = make_workload(publishes, ARMS_3, SEED, stream=3)
    with reporter.step(
        3, f"publish() of {publishes:,} Feedback, one call each, process and group", 2 * publishes
    ) as tick:
        for suffix, durability in DURABILITIES.items():
            one = measure_publish(workdir / f"publish_{durability}.sqlite", single, tick, durability=durability)
            figures[f"publish{suffix}_events_per_s"] = one["publish_events_per_s"]
            figures[f"publish{suffix}_inputs_per_s"] = one["publish_inputs_per_s"]
    del single
    counts["publish_inputs"] = one["publish_inputs"]

    policies = ", ".join(DECIDE_POLICIES)
    title = f"decide() + feedback x {decides:,} on 10 arms: {policies}, process and group"
    with reporter.step(4, title, 2 * len(DECIDE_POLICIES) * decides) as tick:
        for suffix, durability in DURABILITIES.items():
            for policy in DECIDE_POLICIES:
                log = workdir / f"decide_{policy}{suffix}.sqlite"
                latency = measure_decide(log, policy, decides, tick, durability=durability)
                figures[f"decide_{policy}_p50_us{suffix}"] = latency["p50_us"]
                figures[f"decide_{policy}_p99_us{suffix}"] = latency["p99_us"]
    counts["decide_calls"] = decides

    verify_log = workdir / "decide_thompson.sqlite"
    with reporter.step(5, "replay of the step-2 log, verify of the Thompson step-4 log", 2) as tick:
        replay = measure_replay(workdir / "publish_many.sqlite")
        tick(1)
        verify = measure_verify(verify_log)
        tick(1)
    figures["replay_events_per_s"] = replay["replay_events_per_s"]
    figures["verify_events_per_s"] = verify["verify_events_per_s"]
    counts.update(
        replay_events=replay["replay_events"],
        replay_decisions=replay["replay_decisions"],
        snapshots=replay["snapshots"],
        verify_events=verify["verify_events"],
    )

    ratios = {
        "publish_many_events_to_raw": figures["publish_many_events_per_s"] / figures["raw_rows_per_s"],
        "publish_many_events_to_minimal": figures["publish_many_events_per_s"] / figures["minimal_rows_per_s"],
    }
    measured = {**figures, **ratios}
    return {
        "figures": figures,
        "ratios": ratios,
        "targets": {key: {"op": op, "value": bound} for key, (op, bound) in TARGETS.items()},
        "status": {key: "PASS" if meets(measured[key], op, bound) else "MISS" for key, (op, bound) in TARGETS.items()},
        "extra": {"decision_inputs_per_s": many["decision_inputs_per_s"]},
        "counts": counts,
        "config": {
            "events": events,
            "publishes": publishes,
            "decides": decides,
            "batch": BATCH,
            "decisions_by": "decide" if use_decide else "publish_many",
            "decisions_first": decisions_first,
            "durability": {"default": "process", "group_in_steps": [3, 4], "group_commit": group_commit_settings()},
            "replay_rounds": REPLAY_ROUNDS,
            "seed": SEED,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "machine": platform.machine(),
            "load_average": load,
        },
        "elapsed_s": time.perf_counter() - started,
    }


def group_commit_settings() -> dict[str, Any]:
    """The group commit settings ``Engine.open`` uses by default, as the group runs open it."""
    parameters = inspect.signature(Engine.open).parameters
    return {name: parameters[name].default for name in ("commit_interval_ms", "commit_every")}


def meets(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value < bound


def render(results: dict[str, Any], console: Console) -> None:
    """The results as a rich table plus the ratio lines."""
    figures, status = results["figures"], results["status"]
    table = Table(title="rtopt kernel throughput", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("target", justify="right")
    table.add_column("result")
    for key, (label, unit) in FIGURES.items():
        target = TARGETS.get(key)
        shown = f"{figures[key]:,.0f}" if unit != "µs" else f"{figures[key]:,.1f}"
        table.add_row(label, shown, unit, format_target(target, unit), format_status(status.get(key)))
    for key, label in RATIOS.items():
        table.add_row(
            f"ratio {label}",
            f"{results['ratios'][key]:.3f}",
            "",
            format_target(TARGETS.get(key), ""),
            format_status(status.get(key)),
        )
    console.print(table)
    config, counts = results["config"], results["counts"]
    raw = figures["raw_rows_per_s"]
    for key, label in RATIOS.items():
        target = TARGETS.get(key)
        suffix = f" (target {format_target(target, '')}: {status[key]})" if target else ""
        console.print(
            f"ratio {label}: {results['ratios'][key]:.3f}{suffix}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"raw limit {raw:,.0f} rows/s on rtopt's schema, {figures['minimal_rows_per_s']:,.0f} on the minimal table,"
        f" over {counts['raw_rows']:,} rows; step-2 log {counts['log_events']:,} events"
        f" ({counts['publish_many_inputs']:,} feedback, decisions by {config['decisions_by']}, decision batches"
        f" {results['extra']['decision_inputs_per_s']:,.0f} inputs/s); replayed {counts['replay_events']:,} events"
        f" with {counts['snapshots']} snapshots (best of {config['replay_rounds']});"
        f" verified {counts['verify_events']:,} events;"
        f" Python {config['python']}, SQLite {config['sqlite']}; {results['elapsed_s']:.1f} s in all;"
        f" load average {config['load_average']:.2f} at the start",
        highlight=False,
        soft_wrap=True,
    )


def format_target(target: tuple[str, float] | None, unit: str) -> str:
    if target is None:
        return "—"
    op, bound = target
    sign = "≥" if op == ">=" else "<"
    if unit == "":
        return f"{sign} {bound:.3f}"
    return f"{sign} {bound:,.0f}"


def format_status(status: str | None) -> str:
    if status is None:
        return ""
    return "[green]PASS[/green]" if status == "PASS" else "[red]MISS[/red]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        help=f"step-2 input events: half decisions, half feedback; also the raw rows (default {DEFAULTS['events']:,})",
    )
    parser.add_argument("--publishes", type=int, help=f"step-3 publish() calls (default {DEFAULTS['publishes']:,})")
    parser.add_argument(
        "--decides", type=int, help=f"step-4 decide() calls per experiment (default {DEFAULTS['decides']:,})"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few seconds), for smoke tests")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    parser.add_argument(
        "--use-decide",
        action="store_true",
        help="make the step-2 decisions with Engine.decide (about 0.5 ms each) instead of publishing them",
    )
    parser.add_argument(
        "--decisions-first",
        action="store_true",
        help="make all step-2 decisions before any feedback instead of interleaving 1,000 of each",
    )
    parser.add_argument("--keep", action="store_true", help="keep the log files (their directory is printed)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    events = args.events if args.events is not None else sizes["events"]
    publishes = args.publishes if args.publishes is not None else sizes["publishes"]
    decides = args.decides if args.decides is not None else sizes["decides"]
    if events < 2 or publishes < 1 or decides < 1:
        parser.error("--events must be at least 2, --publishes and --decides at least 1")

    err = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="rtopt-bench-"))
    try:
        with Reporter(err, steps=6) as reporter:
            results = run(
                events,
                publishes,
                decides,
                workdir=workdir,
                reporter=reporter,
                use_decide=args.use_decide,
                decisions_first=args.decisions_first,
            )
    finally:
        if args.keep:
            err.print(f"logs kept in {workdir}", highlight=False)
        else:
            for file in workdir.iterdir():
                file.unlink()
            workdir.rmdir()
    if args.json:
        print(json.dumps(results))
    else:
        render(results, Console())
    return 0


if __name__ == "__main__":
    sys.exit(main())

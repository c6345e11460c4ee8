"""A synthetic LLM workload: prompt variants with hidden quality, latency and cost, served by an engine.

Requests arrive as a Poisson process on simulated event time; each is answered by ``engine.decide``; its
feedback arrives later (response latency plus a user delay), so learning is delayed as in production.
The workload draws from its own generator seeded by ``seed``, so the same seed writes the same log.
``rtopt simulate`` (declared under the ``rtopt.commands`` entry point group) runs it into a log.
"""

from __future__ import annotations

import argparse
import heapq
import time as wall_clock
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import scipy  # its submodules load on first use
from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits.events import ArmSummary
from rtopt.handlers.bandits.handler import statistics
from rtopt.handlers.bandits.policies import POLICIES
from rtopt.handlers.experiments.events import (
    CanaryRolledBack,
    ExperimentCompleted,
    ExperimentConcluded,
    ExperimentPaused,
)
from rtopt.handlers.experiments.options import CANARY
from rtopt.handlers.experiments.options import POLICIES as AB_POLICIES

from rtopt import Decision, Engine
from rtopt.arguments import in_range, whole
from rtopt.cli import UsageError, between, log_seed, positive, progress_bar, replace_log
from rtopt.copying import refuse_non_empty
from rtopt.storage.factory import is_postgres_url, open_log
from rtopt.storage.interface import shown_url

SIMULATION_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DEMO_LOG = Path("event_log") / "demo.sqlite"
CONTEXT_FEATURES = ("bias", "long_prompt")
USERS = 2_000  # simulated users an A/B test assigns by hashing
DEFAULT_VARIANTS = 4
CANARY_VARIANTS = 2  # a canary rolls the second variant out over the first
ERRORS = ("timeout", "rate_limited", "refusal", "invalid_output")


LONG_PROMPT_SHARE = 0.4


class VariantProfile(msgspec.Struct, frozen=True):
    """The hidden truth about one prompt variant; on long prompts its mean quality moves by
    ``long_prompt_shift``, so the best variant can depend on the request (the context)."""

    name: str
    success_rate: float
    quality_mean: float
    latency_median_ms: float
    tokens_out_mean: float
    usd_per_1k_tokens: float
    quality_concentration: float = 20.0
    latency_sigma: float = 0.35
    tokens_in: int = 400
    long_prompt_shift: float = 0.0

    def quality(self, long_prompt: bool) -> float:
        """Mean quality on a short or a long prompt."""
        return float(np.clip(self.quality_mean + (self.long_prompt_shift if long_prompt else 0.0), 0.05, 0.95))

    def reward_probability(self, quality_threshold: float, long_prompt: bool | None = None) -> float:
        """P(success and quality >= threshold): the expected binary reward of this variant, on short or
        long prompts, or (None) over the workload's mix of both."""
        if long_prompt is None:
            return (1 - LONG_PROMPT_SHARE) * self.reward_probability(
                quality_threshold, False
            ) + LONG_PROMPT_SHARE * self.reward_probability(quality_threshold, True)
        mean = self.quality(long_prompt)
        a, b = mean * self.quality_concentration, (1.0 - mean) * self.quality_concentration
        return self.success_rate * float(scipy.stats.beta.sf(quality_threshold, a, b))


def default_variants(count: int, seed: int) -> list[VariantProfile]:
    """``count`` plausible variants: better quality tends to cost more tokens and time.

    >>> [v.name for v in default_variants(3, seed=1)]
    ['v1', 'v2', 'v3']
    """
    in_range("count", count, 2, 26)
    rng = np.random.default_rng([seed, 0])
    quality = np.linspace(0.62, 0.80, count)
    rng.shuffle(quality)
    return [
        VariantProfile(
            name=f"v{i + 1}",
            success_rate=float(rng.uniform(0.93, 0.99)),
            quality_mean=float(q),
            latency_median_ms=float(500 + 2500 * (q - 0.6) + rng.normal(0, 80)),
            tokens_out_mean=float(150 + 600 * (q - 0.6)),
            usd_per_1k_tokens=float(rng.choice([0.0005, 0.002, 0.01])),
            long_prompt_shift=float(rng.uniform(-0.15, 0.15)),
        )
        for i, q in enumerate(quality)
    ]


class VariantResult(msgspec.Struct, frozen=True):
    """What a simulation did with one variant: its decisions, the reward observed, the truth, and the
    experiment's statistics of it (mean learnt with a 95 % credible interval, probability of being best)."""

    name: str
    pulls: int
    observed_reward: float
    true_reward: float
    summary: ArmSummary | None = None


class SimulationReport(msgspec.Struct, frozen=True):
    """Outcome of :func:`simulate`."""

    steps: int
    events: int
    seconds: float
    regret: float
    best: str
    variants: list[VariantResult]
    conclusion: str | None = None

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else float("inf")


def simulate(
    engine: Engine,
    steps: int,
    variants: list[VariantProfile],
    seed: int,
    *,
    experiment: str = "greeting",
    policy: str = "thompson",
    requests_per_second: float = 5.0,
    feedback_delay_s: float = 20.0,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> SimulationReport:
    """Serve ``steps`` requests through ``engine`` with ``policy`` (and its ``options``) and report pulls,
    rewards and regret per variant."""
    whole("steps", steps)
    rng = np.random.default_rng([seed, 1])
    start_seq, started = engine.position, wall_clock.perf_counter()
    if policy in POLICIES and POLICIES[policy].contextual:
        options.setdefault("features", list(CONTEXT_FEATURES))
    ab_test = policy in AB_POLICIES
    if ab_test:
        options.setdefault("start", True)
    engine.define_experiment(
        experiment, arms=[v.name for v in variants], policy=policy, time=SIMULATION_START, **options
    )
    handler = "experiments" if ab_test else "bandit"
    threshold = engine.state(handler, experiment).options.quality_threshold
    by_name = {v.name: v for v in variants}
    truth = {v.name: v.reward_probability(threshold) for v in variants}
    by_context = {long: {v.name: v.reward_probability(threshold, long) for v in variants} for long in (False, True)}
    due: list[tuple[float, int, str, dict[str, Any]]] = []
    rewards = dict.fromkeys(by_name, 0.0)
    now, regret = SIMULATION_START, 0.0

    def deliver(until: float) -> None:
        while due and due[0][0] <= until:
            arrival, _, decision_id, fields = heapq.heappop(due)
            engine.feedback(decision_id, time=arrival, **fields)

    for step in range(steps):
        now += float(rng.exponential(1.0 / requests_per_second))
        deliver(now)
        long_prompt = bool(rng.random() < LONG_PROMPT_SHARE)
        context = {"bias": 1.0, "long_prompt": float(long_prompt)}
        unit = f"user-{int(rng.integers(USERS))}" if ab_test else None
        decision = engine.decide(experiment, context=context, unit=unit, time=now)
        variant = by_name[decision.arm]
        fields = _response(variant, rng, long_prompt)
        rewards[variant.name] += float(fields["success"] and fields["quality_score"] >= threshold)
        expected = by_context[long_prompt]
        regret += max(expected.values()) - expected[variant.name]
        arrival = now + fields["response_time_ms"] / 1000.0 + float(rng.exponential(feedback_delay_s))
        heapq.heappush(due, (arrival, step, decision.id, fields))
        if progress is not None and (step + 1) % 100 == 0:
            progress(step + 1, steps)
    deliver(float("inf"))
    if progress is not None:
        progress(steps, steps)
    pulls = dict.fromkeys(by_name, 0)
    for envelope in engine.read(types=[Decision], start=start_seq + 1, stream=experiment):
        pulls[envelope.payload.arm] += 1
    summaries = {}
    if not ab_test:
        summaries = statistics(
            experiment, engine.state("bandit", experiment), np.random.default_rng([seed, 2]), now
        ).arms
    results = [
        VariantResult(
            name=v.name,
            pulls=pulls[v.name],
            observed_reward=rewards[v.name] / pulls[v.name] if pulls[v.name] else 0.0,
            true_reward=truth[v.name],
            summary=summaries.get(v.name),
        )
        for v in variants
    ]
    endings = (ExperimentConcluded, ExperimentPaused, CanaryRolledBack, ExperimentCompleted)
    ends = [e.payload for e in engine.read(types=endings, start=start_seq + 1, stream=experiment)]
    conclusion = None
    if ends:
        last = next((e for e in ends if isinstance(e, ExperimentConcluded)), ends[-1])
        if isinstance(last, ExperimentConcluded):
            winner = f"; winner {last.winner}" if last.winner else ""
            conclusion = f"{last.outcome}{winner} after {last.feedback} feedback ({last.reason})"
        else:
            conclusion = f"{type(last).__name__}: {last.reason}"
    return SimulationReport(
        steps=steps,
        events=engine.position - start_seq,
        seconds=wall_clock.perf_counter() - started,
        regret=regret,
        best=max(truth, key=truth.__getitem__),
        variants=results,
        conclusion=conclusion,
    )


def _response(variant: VariantProfile, rng: np.random.Generator, long_prompt: bool) -> dict[str, Any]:
    """Draw one response's feedback fields from ``variant``'s hidden distributions."""
    success = bool(rng.random() < variant.success_rate)
    mean = variant.quality(long_prompt)
    a, b = mean * variant.quality_concentration, (1.0 - mean) * variant.quality_concentration
    quality = float(rng.beta(a, b)) if success else float(rng.uniform(0.0, 0.3))
    latency = float(variant.latency_median_ms * np.exp(rng.normal(0.0, variant.latency_sigma)))
    tokens_out = int(rng.poisson(variant.tokens_out_mean)) if success else 0
    return {
        "success": success,
        "quality_score": quality,
        "response_time_ms": latency,
        "error": None if success else str(rng.choice(ERRORS)),
        "tokens_in": variant.tokens_in,
        "tokens_out": tokens_out,
        "cost_usd": (variant.tokens_in + tokens_out) / 1000.0 * variant.usd_per_1k_tokens,
        "user_satisfaction": float(np.clip(quality + rng.normal(0.0, 0.1), 0.0, 1.0)),
    }


# --- the command -------------------------------------------------------------------------------------


def register_command(commands: argparse._SubParsersAction) -> None:
    """Add ``rtopt simulate`` to the command line."""
    sim = commands.add_parser(
        "simulate",
        help="run a synthetic LLM workload into a log",
        description="Serve simulated requests with a bandit policy over prompt variants whose true quality, "
        "latency and cost are hidden; write every event to a fresh log and print pulls, rewards, credible "
        "intervals, probabilities of being best and regret.",
    )
    contextual = [name for name, rule in POLICIES.items() if rule.contextual]
    sim.add_argument(
        "--policy",
        choices=[*POLICIES, *AB_POLICIES],
        default="thompson",
        help=f"the policy (default thompson); {' and '.join(contextual)} read each request's context (whether the "
        "prompt is long), on which the best variant depends; ab_test runs an A/B test over simulated users "
        "(the first variant is the control) and canary a rollout of the second variant",
    )
    sim.add_argument("--steps", type=positive(int), default=5000, help="requests to serve (default 5000)")
    sim.add_argument(
        "--variants",
        type=between(2, 26),
        default=None,
        help=f"prompt variants, 2 to 26 (default {DEFAULT_VARIANTS}; a canary takes {CANARY_VARIANTS})",
    )
    sim.add_argument("--seed", type=log_seed, default=7, help="seed of the workload and the engine (default 7)")
    sim.add_argument(
        "--log",
        default=str(DEMO_LOG),
        help=f"log to write (default {DEMO_LOG}, which each run replaces; another existing log needs --force), or "
        "the postgresql:// URL of a database holding no events",
    )
    sim.add_argument(
        "--workers",
        type=positive(int),
        default=1,
        help="with a PostgreSQL log: processes that each serve an experiment of their own (greeting-1, greeting-2 ...) "
        "with --steps requests, all writing to the one log at once (default 1)",
    )
    sim.add_argument("--force", action="store_true", help="replace the log given with --log if it exists")
    sim.add_argument("--rate", type=positive(float), default=5.0, help="requests per second of event time (default 5)")
    sim.add_argument(
        "--feedback-delay",
        type=positive(float),
        default=20.0,
        help="mean seconds between a response and its feedback (default 20)",
    )
    sim.set_defaults(run=run_command, check=check_arguments)


def check_arguments(args: argparse.Namespace) -> None:
    """Check the arguments of ``rtopt simulate`` together and settle the number of variants."""
    if args.policy == CANARY and args.variants not in (None, CANARY_VARIANTS):
        reason = f"a canary rolls one challenger out over a baseline: {CANARY_VARIANTS} variants"
        raise UsageError("--variants", args.variants, reason)
    if args.variants is None:
        args.variants = CANARY_VARIANTS if args.policy == CANARY else DEFAULT_VARIANTS
    if args.workers > 1 and not is_postgres_url(args.log):
        raise UsageError("--workers", args.workers, "needs a PostgreSQL log (--log postgresql://...), which they share")


def run_command(args: argparse.Namespace, console: Console) -> int:
    """``rtopt simulate``: a fresh log, the workload, and a table of what the policy did."""
    if is_postgres_url(args.log):
        log = open_log(args.log, seed=args.seed)
        refuse_non_empty(log)
        log.close()
    else:
        replace_log(Path(args.log), DEMO_LOG, args.force, console)
    if args.workers > 1:
        return _run_workers(args, console)
    variants = default_variants(args.variants, args.seed)
    with Engine.open(args.log, seed=args.seed) as engine, progress_bar(console, "simulating") as progress:
        report = simulate(
            engine,
            args.steps,
            variants,
            args.seed,
            policy=args.policy,
            requests_per_second=args.rate,
            feedback_delay_s=args.feedback_delay,
            progress=progress,
        )
        engine.snapshot()
    _print_report(
        console, report, f"{args.steps} requests, {args.policy} over {len(variants)} variants (seed {args.seed})"
    )
    console.print(
        f"{report.events} events in {report.seconds:.2f} s: {report.events_per_second:,.0f} events/s\nlog: {args.log}",
        soft_wrap=True,
    )
    return 0


def _serve_one(args: argparse.Namespace, k: int) -> SimulationReport:
    """Worker ``k`` of a multi-process run: its own experiment, variants and workload seed, the shared log."""
    with Engine.open(args.log, seed=args.seed) as engine:
        return simulate(
            engine,
            args.steps,
            default_variants(args.variants, args.seed + k),
            args.seed + k,
            experiment=f"greeting-{k + 1}",
            policy=args.policy,
            requests_per_second=args.rate,
            feedback_delay_s=args.feedback_delay,
        )


def _run_workers(args: argparse.Namespace, console: Console) -> int:
    """Run ``args.workers`` processes at once into the PostgreSQL log and print what each one did."""
    started = wall_clock.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        reports = list(pool.map(_serve_one, [args] * args.workers, range(args.workers)))
    seconds = wall_clock.perf_counter() - started
    for k, report in enumerate(reports):
        _print_report(console, report, f"greeting-{k + 1}: {args.steps} requests, {args.policy} (seed {args.seed + k})")
    log = open_log(args.log, read_only=True)
    events = log.last_seq()
    log.close()
    console.print(
        f"{args.workers} processes wrote {events} events in {seconds:.2f} s: {events / seconds:,.0f} events/s\n"
        f"log: {shown_url(args.log)}",
        soft_wrap=True,
    )
    return 0


def _print_report(console: Console, report: SimulationReport, title: str) -> None:
    table = Table(title=title)
    columns = ("variant", "pulls", "share", "observed reward", "true reward", "95% interval", "P(best)")
    for column in columns:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for v in report.variants:
        name = f"{v.name} (best)" if v.name == report.best else v.name
        interval = f"{v.summary.low:.3f}-{v.summary.high:.3f}" if v.summary and v.summary.low is not None else "-"
        table.add_row(
            name,
            str(v.pulls),
            f"{v.pulls / report.steps:.1%}",
            f"{v.observed_reward:.3f}",
            f"{v.true_reward:.3f}",
            interval,
            f"{v.summary.p_best:.3f}" if v.summary else "-",
        )
    console.print(table)
    if report.conclusion:
        console.print(f"the test: {report.conclusion}", soft_wrap=True)
    console.print(
        f"regret against the best variant for each request: {report.regret:.1f} "
        f"({report.regret / report.steps:.4f} per request)",
        soft_wrap=True,
    )

"""Tuning an LLM's generation parameters against a simulated response surface: ``rtopt tune``.

Each task type has hidden best settings. A response's quality falls off away from the best temperature
and top_p and when max_tokens cuts the answer short; high temperatures fail more often; latency and cost
grow with the tokens generated. The objective is the composite reward of the bandits (quality, cost and
latency against a budget and an SLA) computed from the response's feedback, so a study learns from the
same feedback a deployment would give it. Quality carries noise; the expected reward is known exactly,
so the regret of the configuration a study recommends is too.
"""

from __future__ import annotations

import argparse
import functools
import time as wall_clock
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import scipy  # its submodules load on first use
from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits.rewards import RewardOptions, reward
from rtopt.handlers.bayesopt.handler import recommend

from rtopt import Engine, Feedback, arguments
from rtopt.cli import log_seed, non_negative, positive, replace_log

TUNE_LOG = Path("event_log") / "tune.sqlite"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
LLM_SPACE: dict[str, Any] = {
    "temperature": (0.0, 1.5),
    "top_p": (0.5, 1.0),
    "max_tokens": {"type": "int", "low": 64, "high": 1024},
}
REWARD = RewardOptions(
    reward="composite", w_quality=1.0, w_cost=0.25, w_latency=0.25, cost_budget_usd=0.02, latency_sla_ms=12_000.0
)
NOISE_PRIOR = 0.25  # rewards from feedback are noisy: failures score 0
USD_PER_1K_TOKENS = 0.01
MS_PER_TOKEN = 12.0


class TaskProfile(msgspec.Struct, frozen=True):
    """The hidden truth of one task type: the best temperature and top_p, the tokens a full answer
    takes, and the quality reached there."""

    name: str
    temperature: float
    top_p: float
    tokens_needed: float
    peak_quality: float

    def quality(self, temperature: np.ndarray, top_p: np.ndarray, max_tokens: np.ndarray) -> np.ndarray:
        """Mean quality of a response."""
        truncated = np.maximum(np.log(self.tokens_needed / max_tokens), 0.0)
        return (
            self.peak_quality
            - 0.35 * (temperature - self.temperature) ** 2
            - 1.2 * (top_p - self.top_p) ** 2
            - 0.5 * truncated**2
        )

    def tokens(self, temperature: np.ndarray, max_tokens: np.ndarray) -> np.ndarray:
        """Tokens generated: hotter sampling rambles, max_tokens cuts."""
        return np.minimum(self.tokens_needed * (1.0 + 0.3 * temperature), max_tokens)

    def expected_reward(self, temperature: Any, top_p: Any, max_tokens: Any) -> np.ndarray:
        """The expected composite reward at these settings (arrays or numbers)."""
        t, p, n = (np.asarray(v, dtype=float) for v in (temperature, top_p, max_tokens))
        tokens = self.tokens(t, n)
        cost = 1.0 - np.minimum(tokens / 1000.0 * USD_PER_1K_TOKENS / REWARD.cost_budget_usd, 1.0)
        latency = 1.0 - np.minimum((300.0 + MS_PER_TOKEN * tokens) / REWARD.latency_sla_ms, 1.0)
        weights = REWARD.w_quality + REWARD.w_cost + REWARD.w_latency
        blend = (REWARD.w_quality * self.quality(t, p, n) + REWARD.w_cost * cost + REWARD.w_latency * latency) / weights
        return success_rate(t) * blend

    def optimum(self) -> tuple[dict[str, Any], float]:
        """The best settings and their expected reward (computed once per task)."""
        return _optimum(self)

    def feedback(self, params: dict[str, Any], rng: np.random.Generator, noise: float) -> Feedback:
        """The feedback on one simulated response with these settings."""
        t, p, n = params["temperature"], params["top_p"], params["max_tokens"]
        tokens = int(self.tokens(np.float64(t), np.float64(n)))
        quality = float(np.clip(self.quality(np.float64(t), np.float64(p), np.float64(n)) + rng.normal(0, noise), 0, 1))
        return Feedback(
            prompt_id=self.name,
            variant_id="tuned",
            response_time_ms=300.0 + MS_PER_TOKEN * tokens,
            success=bool(rng.random() < success_rate(t)),
            quality_score=quality,
            cost_usd=tokens / 1000.0 * USD_PER_1K_TOKENS,
            tokens_out=tokens,
        )


@functools.cache
def _optimum(task: TaskProfile) -> tuple[dict[str, Any], float]:
    """The best settings and their expected reward: the best point of a fine grid, refined by L-BFGS-B
    over temperature and top_p for every max_tokens near it."""
    t, p, n = np.meshgrid(np.linspace(0, 1.5, 151), np.linspace(0.5, 1.0, 101), np.arange(64, 1025, 4))
    at = np.unravel_index(int(np.argmax(task.expected_reward(t, p, n))), t.shape)
    best: tuple[dict[str, Any], float] = ({}, -np.inf)
    for tokens in range(max(64, int(n[at]) - 4), min(1024, int(n[at]) + 4) + 1):
        found = scipy.optimize.minimize(
            lambda x, tokens=tokens: -float(task.expected_reward(x[0], x[1], tokens)),
            [t[at], p[at]],
            method="L-BFGS-B",
            bounds=[LLM_SPACE["temperature"], LLM_SPACE["top_p"]],
        )
        if -found.fun > best[1]:
            best = (
                {"temperature": float(found.x[0]), "top_p": float(found.x[1]), "max_tokens": tokens},
                -found.fun,
            )
    return best


def success_rate(temperature: Any) -> Any:
    """P(a usable response): very hot sampling breaks more often."""
    return 0.99 - 0.3 * np.maximum(np.asarray(temperature) - 1.0, 0.0) ** 2


TASKS = {
    task.name: task
    for task in (
        TaskProfile("summarise", temperature=0.3, top_p=0.9, tokens_needed=250.0, peak_quality=0.85),
        TaskProfile("code", temperature=0.1, top_p=0.8, tokens_needed=600.0, peak_quality=0.9),
        TaskProfile("creative", temperature=1.0, top_p=0.95, tokens_needed=450.0, peak_quality=0.8),
    )
}


class TuneReport(msgspec.Struct, frozen=True):
    """What a study of one task found: the recommended settings, their expected reward, the optimum's,
    the regret between them and the suggestions it used."""

    task: str
    method: str
    recommended: dict[str, Any]
    expected: float
    optimum: float
    suggestions: int
    seconds: float

    @property
    def regret(self) -> float:
        """Expected reward lost by using the recommended settings instead of the best ones."""
        return self.optimum - self.expected


def tune(
    engine: Engine,
    task: TaskProfile,
    budget: int,
    seed: int,
    *,
    method: str = "gp",
    batch: int = 1,
    noise: float = 0.05,
    **options: Any,
) -> TuneReport:
    """Run a study of ``task``'s settings for ``budget`` evaluations (``batch`` suggested at once) and
    report what it recommends; ``options`` go to ``define_study`` (by default the GP expects a noisy
    objective: ``noise_prior=0.25``)."""
    arguments.non_negative("noise", noise)
    if method == "gp":
        options.setdefault("noise_prior", NOISE_PRIOR)
    rng = np.random.default_rng([seed, 3])
    study = f"{task.name}-{method}"
    started = wall_clock.process_time()
    engine.define_study(study, space=LLM_SPACE, method=method, seed=seed, time=START, **options)
    used, now = 0, START
    while used < budget:
        now += 1.0
        for suggestion in engine.suggest(study, n=min(batch, budget - used), time=now):
            value, _ = reward(task.feedback(suggestion.params, rng, noise), REWARD)
            engine.tell(suggestion.id, value, time=now + 0.5)
            used += 1
    recommended, _ = recommend(engine.state("bayesopt", study))
    return TuneReport(
        task=task.name,
        method=method,
        recommended=recommended,
        expected=float(task.expected_reward(**recommended)),
        optimum=task.optimum()[1],
        suggestions=used,
        seconds=wall_clock.process_time() - started,
    )


# --- the command -------------------------------------------------------------------------------------


def register_command(commands: argparse._SubParsersAction) -> None:
    """Add ``rtopt tune`` to the command line."""
    cmd = commands.add_parser(
        "tune",
        help="tune LLM parameters against a simulated response surface",
        description="Run a Bayesian-optimisation study of temperature, top_p and max_tokens for each task type "
        "against a simulated LLM whose best settings are hidden, learning from the composite reward of each "
        "response's feedback; a random search with the same budget runs beside it. Prints the configuration "
        "each recommends, its expected reward, the regret against the optimum and the suggestions used.",
    )
    cmd.add_argument("--task", choices=[*TASKS, "all"], default="all", help="the task type (default all)")
    cmd.add_argument("--budget", type=positive(int), default=40, help="evaluations per study (default 40)")
    cmd.add_argument("--batch", type=positive(int), default=1, help="suggestions evaluated together (default 1)")
    cmd.add_argument(
        "--noise", type=non_negative(float), default=0.05, help="standard deviation of quality (default 0.05)"
    )
    cmd.add_argument("--seed", type=log_seed, default=7, help="seed of the simulation and the engine (default 7)")
    cmd.add_argument("--log", type=Path, default=TUNE_LOG, help=f"log to write (default {TUNE_LOG}, replaced)")
    cmd.add_argument("--force", action="store_true", help="replace the log given with --log if it exists")
    cmd.set_defaults(run=run_command)


def run_command(args: argparse.Namespace, console: Console) -> int:
    """``rtopt tune``: a fresh log, a study per task and method, and a table of what each found."""
    path = args.log
    replace_log(path, TUNE_LOG, args.force, console)
    tasks = list(TASKS.values()) if args.task == "all" else [TASKS[args.task]]
    table = Table(title=f"{args.budget} evaluations per study, quality noise {args.noise} (seed {args.seed})")
    for column in ("task", "method", "temperature", "top_p", "max_tokens", "expected", "optimum", "regret", "cpu s"):
        table.add_column(column, justify="left" if column in ("task", "method") else "right")
    with Engine.open(path, seed=args.seed) as engine:
        for task in tasks:
            for method in ("gp", "random"):
                report = tune(engine, task, args.budget, args.seed, method=method, batch=args.batch, noise=args.noise)
                best = report.recommended
                table.add_row(
                    task.name,
                    method,
                    f"{best['temperature']:.2f}",
                    f"{best['top_p']:.2f}",
                    str(best["max_tokens"]),
                    f"{report.expected:.4f}",
                    f"{report.optimum:.4f}",
                    f"{report.regret:.4f}",
                    f"{report.seconds:.1f}",
                )
    console.print(table)
    console.print(f"suggestions used: {args.budget} per study; log: {path}", soft_wrap=True)
    return 0

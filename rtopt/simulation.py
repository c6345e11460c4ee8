"""A synthetic LLM workload: prompt variants with hidden quality, latency and cost, served by an engine.

Requests arrive as a Poisson process on simulated event time; each is answered by ``engine.decide``; its
feedback arrives later (response latency plus a user delay), so learning is delayed as in production.
The workload draws from its own generator seeded by ``seed``, so the same seed writes the same log.
"""

from __future__ import annotations

import heapq
import time as wall_clock
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
from scipy import stats

from rtopt.engine import Engine

SIMULATION_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ERRORS = ("timeout", "rate_limited", "refusal", "invalid_output")


class VariantProfile(msgspec.Struct, frozen=True):
    """The hidden truth about one prompt variant."""

    name: str
    success_rate: float
    quality_mean: float
    latency_median_ms: float
    tokens_out_mean: float
    usd_per_1k_tokens: float
    quality_concentration: float = 20.0
    latency_sigma: float = 0.35
    tokens_in: int = 400

    def reward_probability(self, quality_threshold: float) -> float:
        """P(success and quality >= threshold): the expected Thompson reward of this variant."""
        a = self.quality_mean * self.quality_concentration
        b = (1.0 - self.quality_mean) * self.quality_concentration
        return self.success_rate * float(stats.beta.sf(quality_threshold, a, b))


def default_variants(count: int, seed: int) -> list[VariantProfile]:
    """``count`` plausible variants: better quality tends to cost more tokens and time.

    >>> [v.name for v in default_variants(3, seed=1)]
    ['v1', 'v2', 'v3']
    """
    if not 2 <= count <= 26:
        raise ValueError(f"variants must be between 2 and 26, not {count}")
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
        )
        for i, q in enumerate(quality)
    ]


class VariantResult(msgspec.Struct, frozen=True):
    """What a simulation did with one variant."""

    name: str
    pulls: int
    observed_reward: float
    true_reward: float
    posterior_mean: float


class SimulationReport(msgspec.Struct, frozen=True):
    """Outcome of :func:`simulate`."""

    steps: int
    events: int
    seconds: float
    regret: float
    best: str
    variants: list[VariantResult]

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
    requests_per_second: float = 5.0,
    feedback_delay_s: float = 20.0,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationReport:
    """Serve ``steps`` requests through ``engine`` and report pulls, rewards and regret per variant."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}")
    rng = np.random.default_rng([seed, 1])
    start_seq, started = engine.position, wall_clock.perf_counter()
    engine.define_experiment(experiment, arms=[v.name for v in variants], policy="thompson", time=SIMULATION_START)
    threshold = engine.state("bandit", experiment).options.quality_threshold
    by_name = {v.name: v for v in variants}
    truth = {v.name: v.reward_probability(threshold) for v in variants}
    best = max(truth.values())
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
        decision = engine.decide(experiment, time=now)
        variant = by_name[decision.arm]
        fields = _response(variant, rng)
        rewards[variant.name] += float(fields["success"] and fields["quality_score"] >= threshold)
        regret += best - truth[variant.name]
        arrival = now + fields["response_time_ms"] / 1000.0 + float(rng.exponential(feedback_delay_s))
        heapq.heappush(due, (arrival, step, decision.id, fields))
        if progress is not None and (step + 1) % 100 == 0:
            progress(step + 1, steps)
    deliver(float("inf"))
    if progress is not None:
        progress(steps, steps)
    arms = engine.state("bandit", experiment).arms
    results = [
        VariantResult(
            name=v.name,
            pulls=arms[v.name].pulls,
            observed_reward=rewards[v.name] / arms[v.name].pulls if arms[v.name].pulls else 0.0,
            true_reward=truth[v.name],
            posterior_mean=arms[v.name].mean,
        )
        for v in variants
    ]
    return SimulationReport(
        steps=steps,
        events=engine.position - start_seq,
        seconds=wall_clock.perf_counter() - started,
        regret=regret,
        best=max(truth, key=truth.__getitem__),
        variants=results,
    )


def _response(variant: VariantProfile, rng: np.random.Generator) -> dict[str, Any]:
    """Draw one response's feedback fields from ``variant``'s hidden distributions."""
    success = bool(rng.random() < variant.success_rate)
    a = variant.quality_mean * variant.quality_concentration
    b = (1.0 - variant.quality_mean) * variant.quality_concentration
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

"""The Thompson-sampling chain learns: regret, propensities and posteriors on seeded Bernoulli bandits."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from handlers.bandits import BanditHandler, BetaArm
from handlers.bandits.thompson import choose
from rtopt import Engine

MEANS = {"a": 0.30, "b": 0.45, "c": 0.60}


def run_bandit(seed: int, rounds: int) -> tuple[list[float], dict[str, int]]:
    """Per-round regret of Thompson sampling through the engine on a 3-arm Bernoulli bandit."""
    world = np.random.default_rng(seed + 1000)
    regrets: list[float] = []
    with Engine.open(":memory:", seed=seed, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("b", arms=list(MEANS), time=0.0)
        for t in range(rounds):
            decision = engine.decide("b", time=float(t))
            success = bool(world.random() < MEANS[decision.arm])
            engine.feedback(decision.id, success=success, quality_score=1.0, response_time_ms=1.0, time=t + 0.5)
            regrets.append(max(MEANS.values()) - MEANS[decision.arm])
        pulls = {arm: state.pulls for arm, state in engine.state("bandit", "b").arms.items()}
    return regrets, pulls


def test_regret_grows_sublinearly_and_the_best_arm_dominates() -> None:
    early, late, best_share = [], [], []
    for seed in range(4):
        regrets, pulls = run_bandit(seed, 2_000)
        early.append(sum(regrets[:1_000]))
        late.append(sum(regrets[1_000:]))
        best_share.append(pulls["c"] / 2_000)
    # uniform random play would lose 0.15 per round on average: 300 per 2,000 rounds
    assert np.mean(early) + np.mean(late) < 0.25 * 300
    assert np.mean(late) < 0.5 * np.mean(early)
    assert min(best_share) > 0.8


def test_propensity_matches_the_probability_of_being_the_best_draw() -> None:
    arms = [BetaArm(alpha=3.0, beta=5.0), BetaArm(alpha=4.0, beta=4.0)]
    # P(X1 > X0) for X0 ~ Beta(3, 5), X1 ~ Beta(4, 4) by numerical integration
    grid = np.linspace(0.0, 1.0, 20_001)
    exact = np.trapezoid(stats.beta.pdf(grid, 4, 4) * stats.beta.cdf(grid, 3, 5), grid)
    rng = np.random.default_rng(5)
    estimates = []
    chosen = []
    for _ in range(300):
        arm, propensity = choose(arms, rng, draws=256)
        chosen.append(arm)
        estimates.append(propensity if arm == 1 else 1.0 - propensity)
    assert np.mean(estimates) == pytest.approx(exact, abs=0.01)
    assert np.mean(np.array(chosen) == 1) == pytest.approx(exact, abs=0.08)


def test_a_cold_start_with_delayed_feedback_spreads_the_batch() -> None:
    """1,000 decisions before any feedback: a cold Thompson policy explores, it does not pick one arm."""
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("b", arms=list(MEANS), time=0.0)
        arms = [engine.decide("b", time=float(t)).arm for t in range(1_000)]
    counts = np.array([arms.count(arm) for arm in MEANS])
    assert stats.chisquare(counts).pvalue > 0.001

"""The propensity of a Thompson choice: the probability that the chosen arm's posterior draw is the highest,
computed by quadrature with a stated error; off-policy estimates on Thompson logs cover the truth."""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from rtopt.handlers.bandits import ArmState, BanditOptions
from rtopt.handlers.bandits.ope import LoggedRound, always, evaluate, fixed, uniform
from rtopt.handlers.bandits.policies import POLICIES, Turn
from rtopt.handlers.bandits.policies.propensity import (
    BetaPosteriors,
    NormalPosteriors,
    Posteriors,
    StudentPosteriors,
    win_probability,
)
from scipy import integrate, stats

from rtopt import ConfigurationChanged, Context, Engine

FIXTURE = Path(__file__).parent / "fixtures" / "thompson_log_before_exact_propensities.sqlite"


@pytest.mark.parametrize(
    ("alpha", "beta", "arm", "expected"),
    [
        ([1.0, 1.0], [1.0, 1.0], 0, 0.5),
        ([2.0, 1.0], [1.0, 1.0], 0, 2.0 / 3.0),  # P(max(U, V) < X) for X ~ Beta(2, 1): E[X] = 2/3
        ([1.0, 2.0], [1.0, 1.0], 0, 1.0 / 3.0),
        ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0], 1, 1.0 / 3.0),
        ([0.5, 0.5], [0.5, 0.5], 1, 0.5),  # unbounded densities: integrated over the quantiles
        ([30.0, 30.0, 30.0, 30.0], [70.0, 70.0, 70.0, 70.0], 2, 0.25),
    ],
)
def test_known_answers(alpha: list[float], beta: list[float], arm: int, expected: float) -> None:
    value, error = win_probability(BetaPosteriors(np.array(alpha), np.array(beta)), arm)
    assert abs(value - expected) <= error <= 1e-3 * expected


def test_symmetric_normal_and_student_arms_share_the_probability_evenly() -> None:
    for posteriors in (
        NormalPosteriors(np.zeros(4), np.ones(4)),
        StudentPosteriors(np.full(4, 2.0), np.zeros(4), np.ones(4)),
    ):
        for arm in range(4):
            value, error = win_probability(posteriors, arm)
            assert abs(value - 0.25) <= error <= 1e-3


def random_beta(rng: np.random.Generator) -> BetaPosteriors:
    """2 to 10 arms with 1 to 30,000 rewards each, means spread or close together."""
    k = int(rng.integers(2, 11))
    n = 10 ** rng.uniform(0.0, 4.5, size=k)
    p = rng.uniform(0.02, 0.98, size=k) if rng.random() < 0.5 else np.clip(rng.normal(0.5, 0.02, size=k), 0.01, 0.99)
    return BetaPosteriors(1.0 + n * p, 1.0 + n * (1.0 - p))


def random_student(rng: np.random.Generator) -> StudentPosteriors:
    k = int(rng.integers(2, 11))
    return StudentPosteriors(rng.uniform(2.0, 200.0, k), rng.normal(0.5, 0.1, k), 10 ** rng.uniform(-3.0, -0.5, k))


def random_normal(rng: np.random.Generator) -> NormalPosteriors:
    k = int(rng.integers(2, 11))
    return NormalPosteriors(rng.normal(0.0, 1.0, k), 10 ** rng.uniform(-2.0, 0.5, k))


FAMILIES = {
    "beta": (
        random_beta,
        lambda p, x, b: stats.beta.pdf(x, p.alpha[b], p.beta[b]),
        lambda p, x, b: stats.beta.cdf(x, p.alpha[b], p.beta[b]),
    ),
    "student": (
        random_student,
        lambda p, x, b: stats.t.pdf(x, p.df[b], p.centre[b], p.width[b]),
        lambda p, x, b: stats.t.cdf(x, p.df[b], p.centre[b], p.width[b]),
    ),
    "normal": (
        random_normal,
        lambda p, x, b: stats.norm.pdf(x, p.centre[b], p.width[b]),
        lambda p, x, b: stats.norm.cdf(x, p.centre[b], p.width[b]),
    ),
}


def reference(posteriors: Posteriors, family: str, arm: int) -> float:
    """P(arm's draw is the highest) by scipy's adaptive quadrature, split at every arm's centre."""
    _, pdf, cdf = FAMILIES[family]
    others = [b for b in range(len(posteriors)) if b != arm]

    def integrand(x: float) -> float:
        return float(pdf(posteriors, x, arm) * np.prod([cdf(posteriors, x, b) for b in others]))

    centre, width = posteriors.centre[arm], posteriors.width[arm]
    cuts = sorted({float(c) for c in posteriors.centre} | {centre - 40 * width, centre + 40 * width})
    edges = [-np.inf, *cuts, np.inf]
    return sum(
        integrate.quad(integrand, a, b, epsabs=1e-13, epsrel=1e-12, limit=500)[0] for a, b in pairwise(edges)
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_error_bound_holds_against_a_high_precision_integral(family: str) -> None:
    make = FAMILIES[family][0]
    rng = np.random.default_rng(11)
    for _ in range(20):
        posteriors = make(rng)
        arm = int(rng.integers(len(posteriors)))
        value, error = win_probability(posteriors, arm)
        truth = reference(posteriors, family, arm)
        assert abs(value - truth) <= error + 1e-10, (posteriors.centre, posteriors.width, arm, value, truth, error)
        assert error <= 2e-3 * value + 1e-9  # SAFETY times the relative tolerance, with room for the tails


def test_the_propensity_matches_the_share_of_many_draws() -> None:
    arms = [ArmState(n=20.0, total=8.0), ArmState(n=30.0, total=15.0), ArmState(n=5.0, total=1.0)]
    for index, policy in enumerate(("thompson", "thompson_gaussian")):
        rule = POLICIES[policy]
        choice = rule.choose(arms, Turn(BanditOptions(), Context(0.0, "e", 1)))
        evidence_draws = rule.posterior_draws(arms, BanditOptions(), np.random.default_rng(index), 400_000, 0.0)
        share = float(np.mean(evidence_draws.argmax(axis=1) == choice.index))
        assert choice.propensity == pytest.approx(share, abs=0.005)


def test_the_same_inputs_give_the_same_bytes() -> None:
    posteriors = BetaPosteriors(np.array([3.0, 40.0, 12.5]), np.array([5.0, 61.0, 9.25]))
    first = [win_probability(posteriors, arm).value.hex() for arm in range(3)]
    again = BetaPosteriors(np.array([3.0, 40.0, 12.5]), np.array([5.0, 61.0, 9.25]))
    assert [win_probability(again, arm).value.hex() for arm in range(3)] == first
    assert sum(float.fromhex(h) for h in first) == pytest.approx(1.0, abs=1e-6)


def test_linear_thompson_with_a_zero_context_ties_every_arm() -> None:
    options = BanditOptions(features=["f"])
    choice = POLICIES["lin_thompson"].select(
        [ArmState(), ArmState(), ArmState()], Turn(options, Context(0.0, "e", 0), vector=np.zeros(1))
    )
    assert choice.propensity == pytest.approx(1 / 3)


def test_a_log_written_with_estimated_propensities_opens_and_verify_names_the_change(tmp_path: Path) -> None:
    path = tmp_path / "before.sqlite"
    shutil.copy(FIXTURE, path)
    with pytest.warns(ConfigurationChanged, match="bandit"), Engine.open(path, read_only=True) as engine:
        arms = engine.state("bandit", "greeting").arms
        assert sum(arm.pulls for arm in arms.values()) == 80
    report = Engine.verify(path)
    assert any("['bandit'] run with another configuration" in note for note in report.notes)
    assert report.difference is not None and report.difference.field == "decision"
    recorded, rederived = report.difference.recorded, report.difference.rederived
    # the same arm, chosen by the same draw: only the propensity, now exact, differs
    assert {key for key in recorded if recorded[key] != rederived[key]} == {"propensity"}


# --- off-policy evaluation on Thompson logs ----------------------------------------------------------

ARMS = ["a1", "a2", "a3", "a4", "a5"]
MEANS = np.array([0.40, 0.45, 0.50, 0.55, 0.60])
STOCHASTIC = np.array([0.10, 0.10, 0.20, 0.30, 0.30])
TARGETS = {
    "always-best": (always("a5"), 0.60),
    "uniform": (uniform, float(MEANS.mean())),
    "stochastic": (fixed(dict(zip(ARMS, STOCHASTIC, strict=True))), float(STOCHASTIC @ MEANS)),
}


def thompson_log(seed: int, rounds: int) -> list[LoggedRound]:
    """``rounds`` rounds of the 5-arm Bernoulli bandit played by Thompson sampling, with its propensities."""
    rule, options, arms = POLICIES["thompson"], BanditOptions(), [ArmState() for _ in ARMS]
    world = np.random.default_rng([seed, 1])
    rounds_logged = []
    for t in range(rounds):
        choice = rule.choose(arms, Turn(options, Context(float(t), f"d{t}", seed), t))
        reward = float(world.random() < MEANS[choice.index])
        arms[choice.index].pulls += 1
        rule.learn(arms[choice.index], reward, options, None)
        rounds_logged.append(LoggedRound(ARMS[choice.index], choice.propensity, reward, ARMS))
    return rounds_logged


@pytest.mark.slow
@pytest.mark.statistical
def test_intervals_cover_the_truth_on_thompson_logs_in_about_95_percent_of_seeds() -> None:
    trials = 200
    covered: dict[tuple[str, str], int] = {}
    errors: dict[str, list[float]] = {}
    for trial in range(trials):
        rounds = thompson_log(100 + trial, 500)
        for target, (policy, truth) in TARGETS.items():
            for name, estimate in evaluate(rounds, policy, seed=trial).items():
                covered[target, name] = covered.get((target, name), 0) + estimate.covers(truth)
                if name == "ips":
                    errors.setdefault(target, []).append(estimate.value - truth)
    coverage = {key: count / trials for key, count in covered.items()}
    weighted = [c for (target, name), c in coverage.items() if name != "replay"]
    # IPS and SNIPS on every target; the plain replay only where it is valid (a deterministic target)
    assert all(0.85 <= c <= 0.99 for c in weighted), coverage
    assert 0.88 <= np.mean(weighted) <= 0.97, coverage
    assert 0.88 <= coverage["always-best", "replay"] <= 0.99, coverage
    # IPS with exact propensities is unbiased on the adaptive log
    for target, values in errors.items():
        assert abs(np.mean(values)) < 3.5 * np.std(values) / np.sqrt(trials), (target, np.mean(values))

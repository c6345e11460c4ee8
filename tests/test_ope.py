"""Off-policy evaluation recovers known policy values from seeded Bernoulli bandit logs, and from rtopt logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rtopt.handlers.bandits import BanditHandler
from rtopt.handlers.bandits.ope import (
    Estimate,
    LoggedRound,
    TargetPolicy,
    always,
    evaluate,
    fixed,
    ips,
    replay,
    rounds_from_log,
    snips,
    target_probabilities,
    uniform,
)
from rtopt.handlers.bandits.simulation import default_variants, simulate

from rtopt import Engine, Feedback

ARMS = ["a1", "a2", "a3", "a4", "a5"]
MEANS = np.array([0.20, 0.35, 0.50, 0.65, 0.80])
# logging policies with known propensities: uniform (Li et al.'s setting) and epsilon-greedy with epsilon 0.4,
# greedy on the worst arm, so the best arm is logged in only 8 % of rounds (weights up to 12.5)
LOGGERS = {
    "uniform": np.full(5, 0.2),
    "epsilon-greedy": np.array([0.68, 0.08, 0.08, 0.08, 0.08]),
}
STOCHASTIC = np.array([0.10, 0.10, 0.20, 0.30, 0.30])
# target policies and their true values
TARGETS: dict[str, tuple[TargetPolicy, float]] = {
    "always-best": (always("a5"), 0.80),
    "uniform": (uniform, float(MEANS.mean())),
    "stochastic": (fixed(dict(zip(ARMS, STOCHASTIC, strict=True))), float(STOCHASTIC @ MEANS)),
}


def bandit_log(seed: int, logging: np.ndarray, rounds: int) -> list[LoggedRound]:
    """``rounds`` rounds of the 5-arm Bernoulli bandit played by the fixed stochastic policy ``logging``."""
    rng = np.random.default_rng(seed)
    arms = rng.choice(len(ARMS), size=rounds, p=logging)
    rewards = rng.random(rounds) < MEANS[arms]
    return [LoggedRound(ARMS[a], float(logging[a]), float(r), ARMS) for a, r in zip(arms, rewards, strict=True)]


def all_estimates(rounds: list[LoggedRound], policy: TargetPolicy, logger: str, seed: int) -> dict[str, Estimate]:
    # replay needs its rejection step unless the logging policy is uniform
    return evaluate(rounds, policy, seed=seed, floor=None if logger == "uniform" else "min")


@pytest.mark.parametrize("logger", list(LOGGERS))
def test_estimates_lie_within_their_intervals_of_the_truth(logger: str) -> None:
    rounds = bandit_log(1, LOGGERS[logger], 3_000)
    for target, (policy, truth) in TARGETS.items():
        for name, estimate in all_estimates(rounds, policy, logger, seed=1).items():
            assert estimate.covers(truth), (target, name, estimate)
            assert estimate.low < estimate.value < estimate.high
            assert estimate.high - estimate.low < 0.25, (target, name, estimate)


@pytest.mark.statistical
@pytest.mark.parametrize("logger", list(LOGGERS))
def test_intervals_cover_the_truth_in_about_95_percent_of_trials(logger: str) -> None:
    trials = 200
    covered: dict[tuple[str, str], int] = {}
    for trial in range(trials):
        rounds = bandit_log(1_000 + trial, LOGGERS[logger], 3_000)
        for target, (policy, truth) in TARGETS.items():
            for name, estimate in all_estimates(rounds, policy, logger, seed=trial).items():
                assert estimate.level == 0.95
                covered[target, name] = covered.get((target, name), 0) + estimate.covers(truth)
    coverage = {key: count / trials for key, count in covered.items()}
    assert len(coverage) == 9
    assert all(0.90 <= c <= 0.99 for c in coverage.values()), coverage
    assert 0.93 <= np.mean(list(coverage.values())) <= 0.97, coverage


def test_snips_has_lower_variance_than_ips_on_a_skewed_log() -> None:
    policy, truth = TARGETS["always-best"]
    values: dict[str, list[float]] = {"ips": [], "snips": []}
    for trial in range(100):
        rounds = bandit_log(5_000 + trial, LOGGERS["epsilon-greedy"], 2_000)
        a, b = ips(rounds, policy), snips(rounds, policy)
        assert b.high - b.low < a.high - a.low  # the delta method sees the smaller variance too
        assert a.max_weight == b.max_weight == pytest.approx(1 / 0.08)
        values["ips"].append(a.value)
        values["snips"].append(b.value)
    assert np.mean(values["ips"]) == pytest.approx(truth, abs=0.02)
    assert np.mean(values["snips"]) == pytest.approx(truth, abs=0.02)
    # IPS's variance adds that of the number of best-arm rounds; here about five times SNIPS's
    assert np.var(values["snips"]) < 0.4 * np.var(values["ips"])


def test_diagnostics_effective_sample_size_and_max_weight() -> None:
    rounds = bandit_log(2, LOGGERS["epsilon-greedy"], 2_000)
    best = ips(rounds, always("a5"))
    logged_best = sum(r.arm == "a5" for r in rounds)
    # Kish's effective sample size of weights 12.5 on the best-arm rounds, 0 elsewhere, is their count
    assert best.effective_sample_size == pytest.approx(logged_best)
    assert best.rounds == 2_000
    assert best.max_weight == pytest.approx(12.5)
    assert best.clip is None and best.clipped == 0
    # the logging policy itself: every weight is 1
    same = snips(rounds, fixed(dict(zip(ARMS, LOGGERS["epsilon-greedy"], strict=True))))
    assert same.effective_sample_size == pytest.approx(2_000)
    assert same.max_weight == pytest.approx(1.0)
    assert same.value == pytest.approx(np.mean([r.reward for r in rounds]))
    kept = replay(rounds, always("a5"))
    assert kept.effective_sample_size == logged_best and kept.max_weight == 1.0


def test_clipping_reports_its_level_and_trades_bias_for_variance() -> None:
    policy, truth = TARGETS["always-best"]
    clipped_values, values = [], []
    for trial in range(50):
        rounds = bandit_log(7_000 + trial, LOGGERS["epsilon-greedy"], 2_000)
        plain, clipped = ips(rounds, policy), ips(rounds, policy, clip=5.0)
        assert clipped.clip == 5.0 and clipped.max_weight == 5.0
        assert clipped.clipped == sum(r.arm == "a5" for r in rounds)
        assert clipped.high - clipped.low < plain.high - plain.low
        clipped_values.append(clipped.value)
        values.append(plain.value)
    # weights of 12.5 clipped to 5 scale the value by 5 / 12.5
    assert np.mean(clipped_values) == pytest.approx(truth * 5.0 / 12.5, abs=0.01)
    assert np.var(clipped_values) < np.var(values)
    # a clip level above every weight changes nothing but is reported
    rounds = bandit_log(3, LOGGERS["epsilon-greedy"], 500)
    loose = snips(rounds, policy, clip=100.0)
    assert loose.value == snips(rounds, policy).value and loose.clip == 100.0 and loose.clipped == 0


def test_snips_bootstrap_interval_is_seeded_and_agrees_with_the_delta_method() -> None:
    policy, truth = TARGETS["stochastic"]
    rounds = bandit_log(4, LOGGERS["epsilon-greedy"], 2_000)
    delta = snips(rounds, policy)
    boot = snips(rounds, policy, interval="bootstrap", resamples=2_000, seed=3)
    assert boot.interval == "bootstrap" and delta.interval == "delta"
    assert boot.value == delta.value
    assert boot.covers(truth)
    assert boot.low == pytest.approx(delta.low, abs=0.01)
    assert boot.high == pytest.approx(delta.high, abs=0.01)
    assert snips(rounds, policy, interval="bootstrap", resamples=2_000, seed=3) == boot
    assert snips(rounds, policy, interval="bootstrap", resamples=2_000, seed=4) != boot


def test_replay_is_seeded_and_a_stochastic_target_keeps_its_share_of_rounds() -> None:
    rounds = bandit_log(6, LOGGERS["uniform"], 4_000)
    first = replay(rounds, uniform, seed=1)
    assert replay(rounds, uniform, seed=1) == first
    assert replay(rounds, uniform, seed=2) != first
    # under uniform logging over 5 arms, a target matches the logged arm in a fifth of the rounds
    assert first.effective_sample_size == pytest.approx(800, abs=80)
    # with a non-uniform logger the rejection step keeps floor / propensity of each round first
    skewed = bandit_log(6, LOGGERS["epsilon-greedy"], 4_000)
    kept = replay(skewed, uniform, floor="min")
    assert kept.effective_sample_size == pytest.approx(4_000 * 5 * 0.08 * 0.2, abs=60)
    assert replay(skewed, uniform, floor=0.08) == kept


def test_target_probabilities_and_policies() -> None:
    rounds = [LoggedRound("a", 0.5, 1.0, ["a", "b"]), LoggedRound("c", 0.5, 0.0, ["b", "c"], context={"x": 1.0})]
    assert target_probabilities(rounds, always("b")).tolist() == [0.0, 0.0]
    assert target_probabilities(rounds, uniform).tolist() == [0.5, 0.5]
    assert target_probabilities(rounds, fixed({"a": 1.0, "b": 1.0, "c": 2.0})).tolist() == [0.5, pytest.approx(2 / 3)]

    def by_context(context: dict[str, float] | None, candidates: list[str]) -> dict[str, float]:
        return {candidates[-1]: 1.0} if context else {candidates[0]: 1.0}

    assert target_probabilities(rounds, by_context).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="'z' is not among the candidates"):
        target_probabilities(rounds, always("z"))
    assert target_probabilities(rounds, always("z", otherwise=uniform)).tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    ("rounds", "policy", "message"),
    [
        ([], uniform, "no logged rounds"),
        ([LoggedRound("a", 0.0, 1.0, ["a", "b"])], uniform, r"rounds\[0\]\.propensity = 0.0: must be in \(0, 1\]"),
        ([LoggedRound("a", 0.5, 1.5, ["a", "b"])], uniform, r"rounds\[0\]\.reward = 1.5: must be in \[0, 1\]"),
        ([LoggedRound("a", 0.5, 1.0, ["a", "b"])], lambda c, k: {"a": 0.5, "b": 0.6}, "sum to 1.1"),
        ([LoggedRound("a", 0.5, 1.0, ["a", "b"])], lambda c, k: {"a": 0.5, "z": 0.5}, r"\['z'\], not candidates"),
        ([LoggedRound("a", 0.5, 1.0, ["a", "b"])], lambda c, k: {"a": 1.5, "b": -0.5}, "outside"),
    ],
)
def test_invalid_logs_and_policies_are_refused(rounds: list[LoggedRound], policy: TargetPolicy, message: str) -> None:
    for estimator in (ips, snips, replay):
        with pytest.raises(ValueError, match=message):
            estimator(rounds, policy)


def test_estimators_refuse_what_they_cannot_estimate() -> None:
    rounds = [LoggedRound("a", 0.5, 1.0, ["a", "b"])] * 10
    with pytest.raises(ValueError, match="snips: the target policy gives none"):
        snips(rounds, always("b"))
    with pytest.raises(ValueError, match="replay: no logged round matches"):
        replay(rounds, always("b"))
    assert ips(rounds, always("b")).value == 0.0  # IPS's unbiased answer, with an effective sample size of 0
    assert ips(rounds, always("b")).effective_sample_size == 0.0
    with pytest.raises(ValueError, match="level"):
        ips(rounds, uniform, level=1.0)
    with pytest.raises(ValueError, match="clip"):
        ips(rounds, uniform, clip=0.0)
    with pytest.raises(ValueError, match="floor"):
        replay(rounds, uniform, floor=1.5)
    with pytest.raises(ValueError, match="interval"):
        snips(rounds, uniform, interval="jackknife")  # type: ignore[arg-type]


def test_rounds_from_log_joins_each_decision_with_the_reward_learnt() -> None:
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b", "c"], time=0.0)
        engine.define_experiment("other", arms=["x", "y"], time=0.0)
        good = engine.decide("g", time=1.0)
        weak = engine.decide("g", time=2.0, available=["b", "c"])
        mismatched = engine.decide("g", time=3.0)
        unanswered = engine.decide("g", time=4.0)
        elsewhere = engine.decide("other", time=5.0)
        engine.feedback(good.id, success=True, quality_score=0.9, response_time_ms=50.0, time=6.0)
        # a success below the quality threshold (0.7) is learnt as reward 0
        engine.feedback(weak.id, success=True, quality_score=0.5, response_time_ms=50.0, time=7.0)
        # feedback that names the wrong variant is rejected by the handler: no reward was learnt
        wrong = next(arm for arm in ["a", "b", "c"] if arm != mismatched.arm)
        engine.publish(
            Feedback(
                prompt_id="g",
                variant_id=wrong,
                decision_id=mismatched.id,
                success=True,
                quality_score=1.0,
                response_time_ms=50.0,
            ),
            time=7.5,
        )
        engine.feedback(elsewhere.id, success=True, quality_score=1.0, response_time_ms=50.0, time=8.0)
        log = rounds_from_log(engine, "g")
    assert log.experiment == "g"
    assert log.unanswered == 2  # the rejected one and the one never answered
    assert [r.decision_id for r in log.rounds] == [good.id, weak.id]
    assert unanswered.id not in {r.decision_id for r in log.rounds}
    first, second = log.rounds
    assert (first.arm, first.propensity, first.reward, first.candidates) == (
        good.arm,
        good.propensity,
        1.0,
        ["a", "b", "c"],
    )
    assert (second.arm, second.reward, second.candidates) == (weak.arm, 0.0, ["b", "c"])


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    """A 2,000-request Thompson-sampling run over 5 default variants (seed 5); the variants' true rewards."""
    path = tmp_path_factory.mktemp("ope") / "sim.sqlite"
    variants = default_variants(5, seed=5)
    with Engine.open(path, seed=5) as engine:
        simulate(engine, 2_000, variants, seed=5)
        threshold = engine.state("bandit", "greeting").options.quality_threshold
    assert threshold == 0.7
    return path, {v.name: v.reward_probability(threshold) for v in variants}


def test_end_to_end_always_the_best_variant_on_a_thompson_log(simulated: tuple[Path, dict[str, float]]) -> None:
    path, truth = simulated
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        log = rounds_from_log(engine, "greeting")
    assert log.unanswered == 0 and len(log.rounds) == 2_000
    best = max(truth, key=truth.__getitem__)
    # the plain replay is valid here: a deterministic target on a stationary, context-free bandit
    estimates = evaluate(log.rounds, always(best))
    for name, estimate in estimates.items():
        assert estimate.covers(truth[best]), (name, estimate, truth[best])
        assert estimate.high - estimate.low < 0.1, (name, estimate)
    # Thompson sampling concentrates on the best variant: most rounds count, no weight is extreme
    assert estimates["ips"].effective_sample_size > 1_000
    assert estimates["ips"].max_weight < 20


def test_end_to_end_the_diagnostics_flag_a_target_the_log_barely_supports(
    simulated: tuple[Path, dict[str, float]],
) -> None:
    path, _ = simulated
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        log = rounds_from_log(engine, "greeting")
    # the uniform policy chooses arms Thompson sampling has long stopped choosing: a few rounds carry
    # large weights (0.2 / their small propensity), and the effective sample size collapses
    estimate = snips(log.rounds, uniform)
    assert estimate.effective_sample_size < 0.1 * len(log.rounds)
    assert estimate.max_weight > 10

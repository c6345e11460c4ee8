"""Pareto fronts of quality, cost and latency; constrained weighted choice; candidates measured from a log."""

from __future__ import annotations

import math

import numpy as np
import pytest
from rtopt.handlers.bandits.simulation import LONG_PROMPT_SHARE, default_variants, simulate
from rtopt.handlers.pareto import (
    Candidate,
    NoFeasibleCandidate,
    choose,
    dominates,
    observed_candidates,
    pareto_front,
    scores,
)

from rtopt import Engine, Feedback, InvalidArgument


def names(candidates: list[Candidate]) -> list[str]:
    return [c.name for c in candidates]


def brute_force_front(candidates: list[Candidate]) -> list[Candidate]:
    """The O(n^2) definition: keep each candidate no other one dominates."""
    return [c for c in candidates if not any(dominates(other, c) for other in candidates)]


# --- fronts ------------------------------------------------------------------------------------------


def test_a_hand_made_front() -> None:
    candidates = [
        Candidate("cheap", 0.60, 0.001, 500.0),
        Candidate("balanced", 0.75, 0.004, 700.0),
        Candidate("best", 0.90, 0.010, 1200.0),
        Candidate("fast", 0.55, 0.003, 200.0),
        Candidate("poor", 0.50, 0.005, 900.0),  # dominated by cheap and balanced
        Candidate("pricier-cheap", 0.60, 0.002, 500.0),  # equal to cheap on quality and latency, costs more
        Candidate("slower-best", 0.90, 0.010, 1300.0),  # equal to best on two objectives, slower
        Candidate("worse-fast", 0.54, 0.003, 200.0),  # equal to fast on cost and latency, lower quality
    ]
    assert names(pareto_front(candidates)) == ["cheap", "balanced", "best", "fast"]
    assert pareto_front(candidates) == brute_force_front(candidates)


def test_duplicates_are_all_kept_and_dominated_duplicates_all_dropped() -> None:
    candidates = [
        Candidate("a", 0.8, 0.002, 400.0),
        Candidate("a-twin", 0.8, 0.002, 400.0),
        Candidate("b", 0.9, 0.004, 400.0),
        Candidate("c", 0.7, 0.002, 500.0),
        Candidate("c-twin", 0.7, 0.002, 500.0),
        Candidate("a", 0.8, 0.002, 400.0),  # the same name and values again
    ]
    assert names(pareto_front(candidates)) == ["a", "a-twin", "b", "a"]
    assert pareto_front(candidates) == brute_force_front(candidates)


def test_trivial_fronts() -> None:
    one = Candidate("only", 0.5, 0.0, 0.0)
    assert pareto_front([]) == []
    assert pareto_front([one]) == [one]
    # a total order: one candidate best on every objective dominates all the others
    chain = [Candidate(f"c{i}", 1.0 - i / 10, i / 10, 100.0 * i) for i in range(10)]
    assert names(pareto_front(chain[::-1])) == ["c0"]
    # a perfect trade-off: nobody is dominated
    trade = [Candidate(f"t{i}", i / 10, i / 10, 100.0) for i in range(10)]
    assert pareto_front(trade) == trade


@pytest.mark.parametrize("seed", range(12))
def test_front_matches_brute_force_on_seeded_random_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    if seed % 2:
        # coarse integer grids: many ties, duplicates and points equal on some objectives
        q, c, lat = rng.integers(0, 5, n) / 4, rng.integers(0, 5, n) / 1000, rng.integers(0, 5, n) * 100.0
    else:
        # continuous points along a quality-cost-latency trade-off, with noise
        q = rng.uniform(0.5, 0.95, n)
        c = np.exp(8 * q + rng.normal(0, 0.5, n)) / 1e5
        lat = 300 + 1500 * q + rng.normal(0, 150, n)
    candidates = [Candidate(f"p{i}", float(q[i]), float(c[i]), float(lat[i])) for i in range(n)]
    front = pareto_front(candidates)
    assert front == brute_force_front(candidates)
    assert front  # a finite set always has a non-dominated point


def test_non_finite_values_are_refused() -> None:
    with pytest.raises(ValueError, match=r"'bad'.*not a finite number"):
        pareto_front([Candidate("ok", 0.5, 0.001, 100.0), Candidate("bad", math.nan, 0.001, 100.0)])


# --- choice ------------------------------------------------------------------------------------------

MODELS = [
    Candidate("small", 0.62, 0.0004, 350.0),
    Candidate("medium", 0.74, 0.0020, 700.0),
    Candidate("large", 0.86, 0.0060, 1400.0),
    Candidate("flash", 0.58, 0.0010, 180.0),
    Candidate("legacy", 0.60, 0.0030, 900.0),  # dominated by medium
]


def test_each_single_weight_picks_the_best_on_that_objective() -> None:
    assert choose(MODELS, {"quality": 1.0}).name == "large"
    assert choose(MODELS, {"cost": 1.0}).name == "small"
    assert choose(MODELS, {"latency": 1.0}).name == "flash"


def test_weights_move_the_choice_along_the_front() -> None:
    chosen = [choose(MODELS, {"quality": 1 - t, "cost": t}).name for t in np.linspace(0.0, 1.0, 11)]
    # from the best quality to the lowest cost, through the middle of the front
    assert chosen[0] == "large" and chosen[-1] == "small"
    assert "medium" in chosen
    # quality and cost alike: normalised scores medium 0.64, small 0.57, large 0.50 (see scores)
    assert scores(MODELS, {"quality": 1.0, "cost": 1.0})[:3] == pytest.approx([4 / 7, 9 / 14, 1 / 2])
    assert choose(MODELS, {"quality": 1.0, "cost": 1.0}).name == "medium"
    # latency counting as much as each of them favours small (0.67) over flash (0.63) and medium (0.62)
    assert choose(MODELS, {"quality": 1.0, "cost": 1.0, "latency": 1.0}).name == "small"
    assert scores(MODELS, {"quality": 2.0, "cost": 0.0}) == pytest.approx(
        [(c.quality - 0.58) / (0.86 - 0.58) for c in MODELS]
    )


def test_a_dominated_candidate_is_never_chosen() -> None:
    tied = [Candidate("pricey", 0.8, 0.004, 500.0), Candidate("same-but-cheaper", 0.8, 0.002, 500.0)]
    assert choose(tied, {"quality": 1.0}).name == "same-but-cheaper"
    assert choose(tied, {"latency": 1.0}).name == "same-but-cheaper"
    rng = np.random.default_rng(3)
    for _ in range(50):
        weights = dict(zip(("quality", "cost", "latency"), rng.dirichlet([0.3, 0.3, 0.3]), strict=True))
        assert choose(MODELS, weights).name != "legacy"


def test_equal_scores_go_to_higher_quality_then_the_earlier_candidate() -> None:
    pair = [Candidate("cheap", 0.6, 0.001, 500.0), Candidate("good", 0.9, 0.003, 500.0)]
    assert scores(pair, {"quality": 1.0, "cost": 1.0}) == [0.5, 0.5]
    assert choose(pair, {"quality": 1.0, "cost": 1.0}).name == "good"
    twins = [Candidate("first", 0.6, 0.001, 500.0), Candidate("second", 0.6, 0.001, 500.0)]
    assert choose(twins, {"quality": 1.0}).name == "first"


def test_normalisation_makes_the_choice_independent_of_units() -> None:
    scaled = [Candidate(c.name, c.quality, c.cost_usd * 1000.0, c.latency_ms / 1000.0) for c in MODELS]
    rng = np.random.default_rng(4)
    for _ in range(20):
        weights = dict(zip(("quality", "cost", "latency"), rng.dirichlet([1.0, 1.0, 1.0]), strict=True))
        assert choose(scaled, weights).name == choose(MODELS, weights).name
    # only the ratios of the weights matter
    assert choose(MODELS, {"quality": 3.0, "cost": 1.0}) == choose(MODELS, {"quality": 0.75, "cost": 0.25})


def test_constraints_exclude_candidates_and_change_the_choice() -> None:
    quality_first = {"quality": 1.0}
    assert choose(MODELS, quality_first).name == "large"
    assert choose(MODELS, quality_first, budget_cap=0.002).name == "medium"  # inclusive: medium costs 0.002
    assert choose(MODELS, quality_first, budget_cap=0.0019).name == "small"
    assert choose(MODELS, quality_first, latency_sla=300.0).name == "flash"
    assert choose(MODELS, {"cost": 1.0}).name == "small"
    assert choose(MODELS, {"cost": 1.0}, min_quality=0.7).name == "medium"
    assert choose(MODELS, {"latency": 1.0}, min_quality=0.6).name == "small"
    assert choose(MODELS, {"latency": 1.0}, min_quality=0.6, budget_cap=0.0004).name == "small"
    # normalisation is over the feasible candidates, so excluding one can reorder the others: without
    # large, the latency range shrinks from 1220 to 720 ms and the cost range from 0.0056 to 0.0026 USD
    weights = {"cost": 0.55, "latency": 0.45}
    assert choose(MODELS, weights).name == "flash"
    assert choose(MODELS, weights, latency_sla=1000.0).name == "small"
    assert scores([c for c in MODELS if c.latency_ms <= 1000.0], {"quality": 1.0})[1] == 1.0


def test_when_no_candidate_remains_the_error_names_the_constraint() -> None:
    with pytest.raises(NoFeasibleCandidate, match=r"budget_cap = 0\.0001 excludes every candidate") as caught:
        choose(MODELS, {"quality": 1.0}, budget_cap=0.0001)
    assert caught.value.constraints == ("budget_cap",)
    assert "the cheapest costs 0.0004 USD" in str(caught.value)
    with pytest.raises(NoFeasibleCandidate, match=r"latency_sla = 100\.0 excludes every candidate") as caught:
        choose(MODELS, {"quality": 1.0}, latency_sla=100.0, budget_cap=1.0)
    assert caught.value.constraints == ("latency_sla",)
    with pytest.raises(NoFeasibleCandidate, match=r"min_quality = 0\.9 excludes") as caught:
        choose(MODELS, {"quality": 1.0}, min_quality=0.9)
    assert caught.value.constraints == ("min_quality",)
    # each constraint alone leaves a candidate; together they leave none
    with pytest.raises(NoFeasibleCandidate, match=r"budget_cap = 0\.001 and min_quality = 0\.7 together") as caught:
        choose(MODELS, {"quality": 1.0}, budget_cap=0.001, min_quality=0.7)
    assert caught.value.constraints == ("budget_cap", "min_quality")
    assert isinstance(caught.value, ValueError)


def test_invalid_weights_and_empty_sets_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown objectives \['speed'\]"):
        choose(MODELS, {"speed": 1.0})
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        choose(MODELS, {"quality": -1.0, "cost": 2.0})
    with pytest.raises(ValueError, match="non-negative and not all zero"):
        choose(MODELS, {"quality": 0.0})
    with pytest.raises(InvalidArgument, match="candidates = \\[\\]: must not be empty") as raised:
        choose([], {"quality": 1.0})
    assert (raised.value.argument, raised.value.value) == ("candidates", [])


# --- candidates from a log ---------------------------------------------------------------------------


def test_observed_candidates_are_the_means_and_percentiles_of_the_feedback() -> None:
    rng = np.random.default_rng(8)
    latencies = {"v1": rng.lognormal(6.0, 0.4, 200), "v2": rng.lognormal(6.5, 0.2, 100)}
    with Engine.open(":memory:", seed=2, handlers=[]) as engine:
        for variant, values in latencies.items():
            for i, ms in enumerate(values):
                engine.publish(
                    Feedback(
                        prompt_id="g",
                        variant_id=variant,
                        response_time_ms=float(ms),
                        success=True,
                        quality_score=0.5 + 0.4 * (i % 2),
                        cost_usd=0.001 * (1 + i % 3),
                    )
                )
        engine.publish(
            Feedback(prompt_id="other", variant_id="v1", response_time_ms=1e6, success=False, quality_score=0.0)
        )
        engine.publish(Feedback(prompt_id="g", variant_id="v3", response_time_ms=5.0, success=True, quality_score=1.0))
        engine.publish(
            Feedback(
                prompt_id="g",
                variant_id="v1",
                response_time_ms=1e6,
                success=True,
                quality_score=0.0,
                environment="staging",
            )
        )
        p95 = observed_candidates(engine, "g", environment="production", min_feedback=2)
        mean = observed_candidates(engine, "g", latency="mean", environment="production")
        p50 = observed_candidates(engine, "g", latency="p50", environment="production")
        pooled = observed_candidates(engine, latency="mean")
        with pytest.raises(InvalidArgument, match="latency = 'p101': must be 'mean' or a percentile"):
            observed_candidates(engine, latency="p101")
    assert names(p95) == ["v1", "v2"]  # v3 has a single feedback
    assert names(mean) == names(p50) == ["v1", "v2", "v3"]
    for candidate in p95:
        values = latencies[candidate.name]
        assert candidate.latency_ms == pytest.approx(np.percentile(values, 95))
        assert candidate.quality == pytest.approx(0.7, abs=0.002)
        assert candidate.cost_usd == pytest.approx(0.001 * np.mean(1 + np.arange(len(values)) % 3))
    assert [c.latency_ms for c in mean[:2]] == pytest.approx([latencies["v1"].mean(), latencies["v2"].mean()])
    assert [c.latency_ms for c in p50[:2]] == pytest.approx([np.median(latencies["v1"]), np.median(latencies["v2"])])
    # without a prompt or an environment every feedback of a variant counts
    assert pooled[0].latency_ms == pytest.approx((latencies["v1"].sum() + 2e6) / 202)


def test_observed_candidates_from_a_simulated_run_match_the_hidden_profiles(tmp_path) -> None:
    variants = default_variants(4, seed=2)
    with Engine.open(tmp_path / "sim.sqlite", seed=2) as engine:
        report = simulate(engine, 1_500, variants, seed=2)
    with Engine.open(tmp_path / "sim.sqlite", read_only=True, handlers=[]) as engine:
        observed = {c.name: c for c in observed_candidates(engine, "greeting")}
    assert sorted(observed) == sorted(v.name for v in variants)
    best = next(v for v in variants if v.name == report.best)
    measured = observed[best.name]
    # the simulator's truth: quality Beta(mean) on success, Uniform(0, 0.3) on failure; lognormal latency;
    # tokens_in + Poisson(tokens_out_mean) tokens on success, priced per 1k tokens
    mean_quality = (1 - LONG_PROMPT_SHARE) * best.quality(False) + LONG_PROMPT_SHARE * best.quality(True)
    quality = best.success_rate * mean_quality + (1 - best.success_rate) * 0.15
    cost = (best.tokens_in + best.success_rate * best.tokens_out_mean) / 1000 * best.usd_per_1k_tokens
    p95 = best.latency_median_ms * math.exp(1.6448536 * best.latency_sigma)
    assert measured.quality == pytest.approx(quality, abs=0.02)
    assert measured.cost_usd == pytest.approx(cost, rel=0.03)
    assert measured.latency_ms == pytest.approx(p95, rel=0.1)
    # and the measured candidates feed the choice
    candidates = list(observed.values())
    assert measured in pareto_front(candidates)
    assert choose(candidates, {"quality": 1.0}) == max(candidates, key=lambda c: c.quality)

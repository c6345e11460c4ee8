"""A/B tests and canary rollouts: lifecycle, assignment, statistics as events, SRM, guardrails, stopping,
canary steps and rollback, and replay."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from rtopt.handlers.bandits import BanditHandler
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.rewards import reward
from rtopt.handlers.experiments import (
    AllocationUpdated,
    CanaryAdvanced,
    CanaryRolledBack,
    ExperimentAnalysed,
    ExperimentArchived,
    ExperimentCompleted,
    ExperimentConcluded,
    ExperimentHandler,
    ExperimentPaused,
    ExperimentResumed,
    ExperimentStarted,
    SampleRatioMismatch,
    WinnerPromoted,
    cuped,
    holm,
    msprt_p_value,
    sample_ratio_mismatch,
    two_proportion_ztest,
    welch_ttest,
)
from scipy import stats as scipy_stats

from rtopt import Decision, Engine, Envelope, Feedback, FeedbackRejected, InvalidEvent

T0 = 1_767_000_000.0
METRIC = "quality"  # the metric the statistics test analyses
World = Callable[[str, np.random.Generator], dict[str, Any]]


def world(
    quality: dict[str, float],
    *,
    success: dict[str, float] | None = None,
    latency_ms: dict[str, float] | None = None,
    cost: dict[str, float] | None = None,
    pre_period: bool = False,
) -> World:
    """Feedback for an arm: quality ~ N(mean, 0.144) clipped to [0, 1] (a per-unit part, sd 0.12, and noise),
    success ~ Bernoulli, lognormal latency
    around a median, cost ~ N(mean, 10 %); with ``pre_period`` a covariate correlated with quality."""

    def draw(arm: str, rng: np.random.Generator) -> dict[str, Any]:
        baseline = rng.normal(0.0, 0.12)
        fields = {
            "success": bool(rng.random() < (success or {}).get(arm, 0.9)),
            "quality_score": float(np.clip(quality[arm] + baseline + rng.normal(0.0, 0.08), 0.0, 1.0)),
            "response_time_ms": float(rng.lognormal(math.log((latency_ms or {}).get(arm, 200.0)), 0.3)),
            "cost_usd": float(max(rng.normal((cost or {}).get(arm, 0.001), 0.0001), 0.0)),
        }
        if pre_period:
            fields["metadata"] = {"pre_period": f"{0.7 + baseline + rng.normal(0.0, 0.05):.6f}"}
        return fields

    return draw


class Lab:
    """Drives one experiment of an engine: decisions for distinct units, each answered at once by ``world``."""

    def __init__(self, engine: Engine, name: str, seed: int = 0) -> None:
        self.engine, self.name = engine, name
        self.rng = np.random.default_rng(seed)
        self.units = 0
        self.ended: list[Envelope[Any]] = []
        engine.subscribe(self._ended, types=[ExperimentPaused, ExperimentCompleted], stream=name)

    def _ended(self, envelope: Envelope[Any]) -> None:
        self.ended.append(envelope)

    def run(
        self, n: int, draw: World, *, drop: Callable[[str, dict], bool] | None = None, stop: bool = True
    ) -> list[Envelope[Decision]]:
        """Up to ``n`` decisions with their feedback (unless ``drop`` says it was lost); stops once the
        experiment pauses or completes when ``stop``."""
        decisions = []
        for _ in range(n):
            unit = self.units
            self.units += 1
            when = T0 + unit
            decision = self.engine.decide(self.name, unit=f"user-{unit}", time=when)
            decisions.append(decision)
            fields = draw(decision.arm, self.rng)
            if drop is None or not drop(decision.arm, fields):
                self.engine.feedback(decision.id, time=when + 0.5, **fields)
            if stop and self.ended:
                break
        return decisions


def payloads(engine: Engine, kind: type, stream: str | None = None) -> list[Any]:
    return [env.payload for env in engine.read(types=[kind], stream=stream)]


def memory_engine(seed: int = 7) -> Engine:
    return Engine.open(":memory:", seed=seed, handlers=[ExperimentHandler()])


# --- lifecycle ------------------------------------------------------------------------------------


def test_lifecycle_steps_are_events_and_illegal_transitions_are_refused() -> None:
    with memory_engine() as engine:
        engine.define_experiment("checkout", arms=["control", "v2"], policy="ab_test", time=T0)
        assert engine.state("experiments", "checkout").status == "draft"
        with pytest.raises(InvalidEvent, match="a draft experiment serves no decisions") as draft:
            engine.decide("checkout", unit="user-1", time=T0 + 1)
        assert draft.value.field == "experiment"
        with pytest.raises(InvalidEvent, match="a draft experiment cannot be resumed") as resumed:
            engine.publish(ExperimentResumed(experiment="checkout"), time=T0 + 1)
        assert resumed.value.field == "experiment"

        engine.publish(ExperimentStarted(experiment="checkout", reason="launch"), time=T0 + 2)
        running = engine.decide("checkout", unit="user-1", time=T0 + 3)
        assert running.propensity == 0.5
        engine.publish(ExperimentPaused(experiment="checkout", reason="incident 42"), time=T0 + 4)
        with pytest.raises(InvalidEvent, match="a paused experiment cannot be paused"):
            engine.publish(ExperimentPaused(experiment="checkout"), time=T0 + 5)
        # a paused experiment serves its control, outside the test
        paused = [engine.decide("checkout", unit=f"user-{i}", time=T0 + 5) for i in range(20)]
        assert {(d.arm, d.propensity) for d in paused} == {("control", 1.0)}
        engine.publish(ExperimentResumed(experiment="checkout"), time=T0 + 6)
        engine.publish(ExperimentCompleted(experiment="checkout", reason="shipped", winner="v2"), time=T0 + 7)
        completed = engine.decide("checkout", unit="user-1", time=T0 + 8)
        assert (completed.arm, completed.propensity) == ("v2", 1.0)
        with pytest.raises(InvalidEvent, match="a completed experiment cannot be resumed") as illegal:
            engine.publish(ExperimentResumed(experiment="checkout"), time=T0 + 9)
        assert illegal.value.field == "experiment"
        engine.publish(ExperimentArchived(experiment="checkout", reason="done"), time=T0 + 10)
        with pytest.raises(InvalidEvent, match="an archived experiment serves no decisions"):
            engine.decide("checkout", unit="user-1", time=T0 + 11)
        with pytest.raises(InvalidEvent, match=r"an archived experiment cannot be started \(only a draft one can\)"):
            engine.publish(ExperimentStarted(experiment="checkout"), time=T0 + 12)

        exp = engine.state("experiments", "checkout")
        assert [(t.status, t.reason) for t in exp.transitions] == [
            ("draft", "defined"),
            ("running", "launch"),
            ("paused", "incident 42"),
            ("running", "resumed"),
            ("completed", "shipped"),
            ("archived", "done"),
        ]
        assert exp.stats["control"].served == 20 and sum(s.decisions for s in exp.stats.values()) == 1
        assert engine.stats().rejected["invalid command"] == 6  # two decisions and four transitions
        with pytest.raises(InvalidEvent, match="no such A/B test") as unknown:
            engine.publish(ExperimentStarted(experiment="nope"), time=T0)
        assert unknown.value.field == "experiment"
        engine.define_experiment("other", arms=["a", "b"], policy="ab_test", start=True, time=T0)
        with pytest.raises(InvalidEvent, match="winner = 'v9': not an arm") as winner:
            engine.publish(ExperimentCompleted(experiment="other", winner="v9"), time=T0)
        assert winner.value.field == "winner"


def test_start_option_derives_the_start_and_derived_only_events_cannot_be_published() -> None:
    with memory_engine() as engine:
        defined = engine.define_experiment("g", arms=["a", "b"], policy="ab_test", start=True, time=T0)
        started = payloads(engine, ExperimentStarted)
        assert started == [ExperimentStarted(experiment="g", reason="started when defined (options.start)")]
        assert engine.state("experiments", "g").status == "running"
        assert next(engine.read(types=[ExperimentStarted])).causation_id == defined.id
        forged = WinnerPromoted(experiment="g", arm="b", control="a", metric="reward", difference=1.0, relative=None,
                                p_value=0.0)  # fmt: skip
        with pytest.raises(InvalidEvent, match="derived by the experiments handler") as refused:
            engine.publish(forged)
        assert refused.value.field == "type"


@pytest.mark.parametrize(
    ("arms", "policy", "options", "field"),
    [
        (["a", "b"], "ab_test", {"weights": "0.9,0.05,0.05"}, "options.weights"),
        (["a", "b"], "ab_test", {"weights": ["0.9", "x"]}, "options.weights"),
        (["a", "b"], "ab_test", {"allocation": "fixed", "weights": "1,2"}, "options.weights"),
        (["a", "b"], "ab_test", {"allocation": "weighted"}, "options.weights"),
        (["a", "b"], "ab_test", {"steps": "5,100"}, "options.steps"),
        (["a", "b"], "ab_test", {"control": "c"}, "options.control"),
        (["a", "b"], "ab_test", {"alpha": 1.5}, "options.alpha"),
        (["a", "b"], "ab_test", {"surprise": True}, "options.surprise"),
        (["a", "b", "c"], "ab_test", {"allocation": "adaptive", "floor": 0.5}, "options.floor"),
        (["a"], "ab_test", {}, "arms"),
        (["a", "a"], "ab_test", {}, "arms"),
        (["a", "b", "c"], "canary", {}, "arms"),
        (["a", "b"], "canary", {"steps": "10,50"}, "options.steps"),
        (["a", "b"], "canary", {"weights": "1,1"}, "options.weights"),
    ],
)
def test_invalid_definitions_name_the_field(arms: list, policy: str, options: dict, field: str) -> None:
    with memory_engine() as engine:
        with pytest.raises(InvalidEvent) as refused:
            engine.define_experiment("x", arms=arms, policy=policy, time=T0, **options)
        assert refused.value.field == field
        assert engine.log.last_seq() == 0


# --- assignment -----------------------------------------------------------------------------------


def test_the_same_unit_always_gets_the_same_arm_whatever_the_seed_or_time() -> None:
    arms = {}
    for seed in (1, 2):
        with memory_engine(seed) as engine:
            engine.define_experiment(
                "checkout", arms=["control", "v2"], policy="ab_test", weights=["0.9", "0.1"], start=True, time=T0
            )
            engine.define_experiment(
                "resalted", arms=["control", "v2"], policy="ab_test", weights="90,10", salt="s2", start=True, time=T0
            )
            for round_ in range(3):
                for unit in range(300):
                    when = T0 + 1000 * round_ + unit
                    decision = engine.decide("checkout", unit=f"user-{unit}", time=when)
                    assert decision.propensity == (0.9 if decision.arm == "control" else 0.1)
                    arms.setdefault(f"user-{unit}", set()).add(decision.arm)
            resalted = [engine.decide("resalted", unit=f"user-{unit}", time=T0).arm for unit in range(300)]
    assert all(len(seen) == 1 for seen in arms.values())  # 6 decisions each, two seeds: one arm
    original = [next(iter(arms[f"user-{unit}"])) for unit in range(300)]
    assert original != resalted  # another salt shuffles the units
    assert 10 <= original.count("v2") <= 50


@pytest.mark.parametrize("with_units", [True, False])
def test_weighted_allocation_shares_are_within_binomial_tolerance(with_units: bool) -> None:
    weights = {"control": 0.7, "v1": 0.2, "v2": 0.1}
    n = 3000
    with memory_engine(3) as engine:
        engine.define_experiment("w", arms=list(weights), policy="ab_test", weights="7,2,1", start=True, time=T0)
        chosen = Counter(
            engine.decide("w", unit=f"user-{i}" if with_units else None, time=T0 + i).arm for i in range(n)
        )
        exp = engine.state("experiments", "w")
    assert exp.allocation == pytest.approx([0.7, 0.2, 0.1])
    for arm, share in weights.items():
        assert abs(chosen[arm] - n * share) <= 4.0 * math.sqrt(n * share * (1.0 - share)), (arm, chosen)
        assert exp.stats[arm].decisions == chosen[arm]


def test_restricted_requests_are_served_outside_the_test_and_slates_are_refused() -> None:
    with memory_engine() as engine:
        engine.define_experiment("r", arms=["a", "b", "c"], policy="ab_test", start=True, time=T0)
        only = engine.decide("r", available=["c", "b"], unit="user-1", time=T0)
        assert only.arm in ("b", "c") and only.propensity == 0.5 and only.candidates == ["b", "c"]
        with pytest.raises(InvalidEvent) as unknown:
            engine.decide("r", available=["z"], time=T0)
        assert unknown.value.field == "available"
        with pytest.raises(InvalidEvent) as slate:
            engine.decide("r", slots=2, time=T0)
        assert slate.value.field == "slots"
        exp = engine.state("experiments", "r")
        assert sum(s.decisions for s in exp.stats.values()) == 0 and exp.stats[only.arm].served == 1


def test_adaptive_allocation_waits_for_the_burn_in_and_keeps_the_floor() -> None:
    success = {"a": 0.3, "b": 0.5, "c": 0.7}
    with memory_engine(11) as engine:
        engine.define_experiment(
            "ad",
            arms=list(success),
            policy="ab_test",
            allocation="adaptive",
            burn_in=40,
            floor=0.05,
            reallocate_every=20,
            adaptive_draws=1000,
            min_samples=100_000,
            guardrails=False,
            start=True,
            time=T0,
        )
        Lab(engine, "ad", seed=5).run(1200, world(dict.fromkeys(success, 0.8), success=success))
        events = list(engine.read(types=[Decision, AllocationUpdated, Feedback]))
    updates = [env for env in events if env.type == "AllocationUpdated"]
    assert len(updates) > 20
    first = updates[0].payload
    assert min(first.feedback.values()) == 40  # at the feedback that ended the burn-in, not before
    for update in updates:
        allocation = update.payload.allocation
        assert min(allocation.values()) >= 0.05 - 1e-12 and sum(allocation.values()) == pytest.approx(1.0)
        assert allocation == {arm: pytest.approx(0.05 + 0.85 * p) for arm, p in update.payload.p_best.items()}
    assert updates[-1].payload.allocation["c"] > 0.8 and updates[-1].payload.allocation["a"] == pytest.approx(0.05)
    # every decision records the allocation in force when it was made
    in_force, before, after = None, Counter(), Counter()
    for env in events:
        if env.type == "AllocationUpdated":
            in_force = env.payload.allocation
        elif env.type == "Decision":
            expected = 1.0 / 3.0 if in_force is None else in_force[env.arm]
            assert env.propensity == pytest.approx(expected)
            (before if in_force is None else after)[env.arm] += 1
    assert min(before.values()) >= 40
    n = sum(after.values())
    assert after["a"] >= 0.05 * n - 4.0 * math.sqrt(n * 0.05 * 0.95)  # the floor is served
    assert after["c"] > 0.6 * n


# --- analyses -------------------------------------------------------------------------------------


def test_analysed_statistics_match_the_stats_module_and_scipy() -> None:
    quality = {"control": 0.70, "v1": 0.74, "v2": 0.69}
    with memory_engine(5) as engine:
        engine.define_experiment(
            "s",
            arms=list(quality),
            policy="ab_test",
            metric="quality",
            analyse_every=150,
            min_samples=100_000,
            guardrails=False,
            start=True,
            time=T0,
        )
        draw = world(quality, success={"control": 0.85, "v1": 0.9, "v2": 0.85}, pre_period=True)
        Lab(engine, "s", seed=9).run(900, draw)
        analyses = payloads(engine, ExperimentAnalysed)
        feedback = payloads(engine, Feedback)
    assert [a.feedback for a in analyses] == [150, 300, 450, 600, 750, 900]
    options = BanditOptions(reward="composite")
    running_min = {"v1": 1.0, "v2": 1.0}
    for analysis in analyses:
        seen = feedback[: analysis.feedback]
        data = {
            arm: {
                "reward": np.array([reward(fb, options)[0] for fb in seen if fb.variant_id == arm]),
                "quality": np.array([fb.quality_score for fb in seen if fb.variant_id == arm]),
                "success": np.array([fb.success for fb in seen if fb.variant_id == arm]),
                "latency": np.array([fb.response_time_ms for fb in seen if fb.variant_id == arm]),
                "pre": np.array([float(fb.metadata["pre_period"]) for fb in seen if fb.variant_id == arm]),
            }
            for arm in quality
        }
        for arm, arrays in data.items():
            summary = analysis.variants[arm]
            assert summary.feedback == len(arrays["reward"]) and summary.successes == arrays["success"].sum()
            assert summary.reward_mean == pytest.approx(arrays["reward"].mean(), rel=1e-12)
            assert summary.reward_var == pytest.approx(arrays["reward"].var(ddof=1), rel=1e-9)
            assert summary.quality_mean == pytest.approx(arrays["quality"].mean(), rel=1e-12)
            assert summary.quality_var == pytest.approx(arrays["quality"].var(ddof=1), rel=1e-9)
            exact_p95 = np.quantile(arrays["latency"], 0.95, method="lower")
            assert abs(summary.latency_p95 - exact_p95) <= 0.01 * exact_p95
        control = data["control"]
        p_values = []
        for arm in ("v1", "v2"):
            comparison, treatment = analysis.comparisons[arm], data[arm]
            expected = welch_ttest(control[METRIC], treatment[METRIC], confidence=0.95)
            scipy_welch = scipy_stats.ttest_ind(treatment[METRIC], control[METRIC], equal_var=False)
            assert comparison.welch.statistic == pytest.approx(scipy_welch.statistic, rel=1e-9)
            assert comparison.welch.p_value == pytest.approx(scipy_welch.pvalue, rel=1e-9)
            for name in ("difference", "low", "high", "df"):
                assert getattr(comparison.welch, name) == pytest.approx(getattr(expected, name), rel=1e-9), name
            counts = [
                [control["success"].sum(), len(control["success"])],
                [treatment["success"].sum(), len(treatment["success"])],
            ]
            ztest = two_proportion_ztest(counts[0][0], counts[0][1], counts[1][0], counts[1][1])
            table = [[x, n - x] for x, n in counts]
            chi2 = scipy_stats.chi2_contingency(table, correction=False)
            assert comparison.conversion.p_value == pytest.approx(ztest.p_value, rel=1e-12)
            assert comparison.conversion.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
            assert comparison.conversion.df is None
            p_values.append(scipy_welch.pvalue)
            assert comparison.relative == pytest.approx(treatment[METRIC].mean() / control[METRIC].mean() - 1, rel=1e-9)
            # the always-valid p-value: the running minimum of one mSPRT look per analysis
            variance = control[METRIC].var(ddof=1) / len(control[METRIC]) + treatment[METRIC].var(ddof=1) / len(
                treatment[METRIC]
            )
            difference = treatment[METRIC].mean() - control[METRIC].mean()
            running_min[arm] = min(running_min[arm], msprt_p_value(difference, variance, 0.01))
            assert comparison.msprt_p == pytest.approx(running_min[arm], rel=1e-6)
            # CUPED on the pre-period covariate, fitted on every arm pooled
            fit = cuped(
                np.concatenate([d[METRIC] for d in data.values()]), np.concatenate([d["pre"] for d in data.values()])
            )
            adjusted = welch_ttest(
                fit.adjust(control[METRIC], control["pre"]), fit.adjust(treatment[METRIC], treatment["pre"])
            )
            assert comparison.cuped.theta == pytest.approx(fit.theta, rel=1e-9)
            assert comparison.cuped.variance_reduction == pytest.approx(fit.variance_reduction, rel=1e-7)
            assert comparison.cuped.test.p_value == pytest.approx(adjusted.p_value, rel=1e-7)
            assert comparison.cuped.test.difference == pytest.approx(adjusted.difference, rel=1e-9)
        adjusted_holm = holm(p_values).adjusted
        assert [analysis.comparisons[arm].p_holm for arm in ("v1", "v2")] == pytest.approx(adjusted_holm, rel=1e-9)
        counts = [len(data[arm]["reward"]) for arm in quality]
        srm = sample_ratio_mismatch(counts)
        assert analysis.srm.p_value == pytest.approx(srm.p_value, rel=1e-9)
        assert analysis.srm.p_value == pytest.approx(scipy_stats.chisquare(counts).pvalue, rel=1e-9)
        assert not analysis.srm.mismatch
    last = analyses[-1].comparisons["v1"]
    assert last.cuped.variance_reduction > 0.5  # the covariate explains much of the metric's variance


def test_sample_ratio_mismatch_fires_when_one_arm_loses_feedback_and_not_otherwise() -> None:
    draw = world({"control": 0.7, "v2": 0.7}, latency_ms={"control": 200.0, "v2": 200.0})

    def lost(arm: str, fields: dict) -> bool:  # v2's client times out and logs nothing above 240 ms (~27 %)
        return arm == "v2" and fields["response_time_ms"] > 240.0

    outcomes = {}
    with memory_engine(13) as engine:
        for name, drop in (("lossy", lost), ("clean", None)):
            engine.define_experiment(
                name,
                arms=["control", "v2"],
                policy="ab_test",
                weights="0.6,0.4",
                analyse_every=100,
                min_samples=100,
                max_samples=450,
                start=True,
                time=T0,
            )
            Lab(engine, name, seed=2).run(2000, draw, drop=drop)
            outcomes[name] = payloads(engine, ExperimentConcluded, stream=name)
        mismatches = {name: payloads(engine, SampleRatioMismatch, stream=name) for name in ("lossy", "clean")}
        analyses = {name: payloads(engine, ExperimentAnalysed, stream=name) for name in ("lossy", "clean")}
    assert len(mismatches["lossy"]) == 1 and not mismatches["clean"]
    flagged = mismatches["lossy"][0]
    assert flagged.p_value < 0.001 and flagged.counts["v2"] < flagged.expected["v2"]
    check = scipy_stats.chisquare(list(flagged.counts.values()), list(flagged.expected.values()))
    assert flagged.p_value == pytest.approx(check.pvalue, rel=1e-9)
    assert all(a.srm.p_value > 0.001 for a in analyses["clean"])
    assert [c.outcome for c in outcomes["lossy"]] == ["sample ratio mismatch"] and outcomes["lossy"][0].winner is None
    assert [c.outcome for c in outcomes["clean"]] == ["no difference"]


# --- guardrails and stopping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("guardrail", "variant"),
    [
        ("quality", {"quality": 0.56}),
        ("cost", {"cost": 0.0015}),
        ("latency_p95", {"latency_ms": 300.0}),
    ],
)
def test_a_guardrail_breach_pauses_the_experiment_with_the_reason(guardrail: str, variant: dict) -> None:
    bad = world(
        {"control": 0.7, "v2": variant.get("quality", 0.7)},
        latency_ms={"control": 200.0, "v2": variant.get("latency_ms", 200.0)},
        cost={"control": 0.001, "v2": variant.get("cost", 0.001)},
    )
    with memory_engine(17) as engine:
        engine.define_experiment(
            "g", arms=["control", "v2"], policy="ab_test", analyse_every=50, min_samples=100_000, start=True, time=T0
        )
        lab = Lab(engine, "g", seed=2)
        lab.run(3000, bad)
        paused = payloads(engine, ExperimentPaused)
        assert len(paused) == 1 and paused[0].guardrail == guardrail and paused[0].arm == "v2"
        limit = {"quality": -0.05, "cost": 0.10, "latency_p95": 0.20}[guardrail]
        assert paused[0].metrics["limit"] == limit and paused[0].metrics["p_value"] < 0.001
        assert abs(paused[0].metrics["change"]) > abs(limit) and paused[0].metrics["change"] * limit > 0
        assert f"guardrail {guardrail}" in paused[0].reason and "'v2'" in paused[0].reason
        exp = engine.state("experiments", "g")
        assert exp.status == "paused" and exp.transitions[-1].reason == paused[0].reason
        assert lab.units < 1000  # caught early
        after = engine.decide("g", unit="user-0", time=T0 + 10_000)
        assert (after.arm, after.propensity) == ("control", 1.0)


def test_a_healthy_variant_breaches_no_guardrail() -> None:
    same = world({"control": 0.7, "v2": 0.7})
    with memory_engine(19) as engine:
        engine.define_experiment(
            "h", arms=["control", "v2"], policy="ab_test", analyse_every=50, min_samples=100_000, start=True, time=T0
        )
        Lab(engine, "h", seed=3).run(2000, same)
        assert not payloads(engine, ExperimentPaused)
        assert len(payloads(engine, ExperimentAnalysed)) == 40
        assert engine.state("experiments", "h").status == "running"


def test_a_concluded_test_promotes_the_winner_and_serves_it() -> None:
    better = world({"control": 0.68, "v1": 0.69, "v2": 0.76})
    with memory_engine(23) as engine:
        engine.define_experiment(
            "win", arms=["control", "v1", "v2"], policy="ab_test", min_samples=150, analyse_every=100, start=True,
            time=T0,
        )  # fmt: skip
        Lab(engine, "win", seed=4).run(6000, better)
        [concluded] = payloads(engine, ExperimentConcluded)
        [promoted] = payloads(engine, WinnerPromoted)
        [completed] = payloads(engine, ExperimentCompleted)
        analysis = payloads(engine, ExperimentAnalysed)[-1]
        assert (concluded.outcome, concluded.winner, concluded.test) == ("variant wins", "v2", "msprt")
        verdict = concluded.verdicts["v2"]
        assert verdict.significant and verdict.p_adjusted < 0.05 and verdict.difference > 0
        assert verdict.p_adjusted == analysis.comparisons["v2"].msprt_p_holm  # the numbers the rule read
        assert min(v.feedback for v in analysis.variants.values()) >= 150
        assert (promoted.arm, promoted.control, promoted.p_value) == ("v2", "control", verdict.p_adjusted)
        assert completed.winner == "v2" and engine.state("experiments", "win").status == "completed"
        served = {engine.decide("win", unit=f"user-{i}", time=T0 + 10**6).arm for i in range(30)}
        assert served == {"v2"}


def test_no_difference_at_max_samples_and_at_a_fixed_horizon_and_max_duration() -> None:
    same = world({"control": 0.7, "v2": 0.7})
    with memory_engine(29) as engine:
        engine.define_experiment(
            "aa", arms=["control", "v2"], policy="ab_test", min_samples=100, max_samples=300, start=True, time=T0
        )
        engine.define_experiment(
            "fixed", arms=["control", "v2"], policy="ab_test", min_samples=200, sequential=False, start=True, time=T0
        )
        engine.define_experiment(
            "timed", arms=["control", "v2"], policy="ab_test", max_duration_s=250.0, start=True, time=T0
        )
        for name in ("aa", "fixed", "timed"):
            Lab(engine, name, seed=6).run(2000, same)
        [aa] = payloads(engine, ExperimentConcluded, stream="aa")
        [fixed] = payloads(engine, ExperimentConcluded, stream="fixed")
        fixed_looks = payloads(engine, ExperimentAnalysed, stream="fixed")
        [timed] = payloads(engine, ExperimentConcluded, stream="timed")
        assert not payloads(engine, WinnerPromoted)
    assert aa.outcome == "no difference" and "max_samples (300)" in aa.reason and aa.winner is None
    assert (fixed.outcome, fixed.test) == ("no difference", "welch") and "fixed horizon" in fixed.reason
    # one look, at the first analysis with 200 feedback on every arm
    assert (
        min(v.feedback for v in fixed_looks[-1].variants.values())
        >= 200
        > min(v.feedback for v in fixed_looks[-2].variants.values())
    )
    assert fixed.feedback == fixed_looks[-1].feedback
    assert fixed.verdicts["v2"].p_value == fixed_looks[-1].comparisons["v2"].welch.p_value
    assert timed.outcome == "no difference" and "max_duration_s (250 s)" in timed.reason
    assert 250.0 <= timed.elapsed_s < 252.0


# --- canary rollouts ------------------------------------------------------------------------------


def canary(engine: Engine, name: str) -> None:
    engine.define_experiment(
        name,
        arms=["stable", "candidate"],
        policy="canary",
        step_min_feedback=60,
        guardrail_min_samples=50,
        start=True,
        time=T0,
    )


def test_a_healthy_canary_advances_through_every_step_and_is_promoted() -> None:
    healthy = world({"stable": 0.75, "candidate": 0.76})
    with memory_engine(31) as engine:
        canary(engine, "roll")
        decisions = Lab(engine, "roll", seed=7).run(5000, healthy)
        advanced = list(engine.read(types=[CanaryAdvanced]))
        assert [(a.step, a.share, a.previous_share) for a in advanced] == [
            (1, 0.05, 0.0),
            (2, 0.25, 0.05),
            (3, 0.5, 0.25),
            (4, 1.0, 0.5),
        ]
        assert all(a.metrics["n_variant"] >= 60 for a in advanced[1:])
        [promoted] = payloads(engine, WinnerPromoted)
        assert (promoted.arm, promoted.reason) == ("candidate", "the canary reached 100 % after 4 steps")
        assert promoted.p_value > 0.001 and abs(promoted.relative) < 0.1  # no harm done, nothing proven either
        assert payloads(engine, ExperimentCompleted)[-1].winner == "candidate"
        assert not payloads(engine, CanaryRolledBack)
        after = engine.decide("roll", unit="user-1", time=T0 + 10**6)
        assert (after.arm, after.propensity) == ("candidate", 1.0)
    # each step serves the challenger its share; a unit on the challenger never goes back
    bounds = [env.seq for env in advanced] + [math.inf]
    on_candidate: set[str] = set()
    for step, share in enumerate((0.05, 0.25, 0.5)):
        at_step = [d for d in decisions if bounds[step] < d.seq < bounds[step + 1]]
        n = len(at_step)
        got = sum(d.arm == "candidate" for d in at_step)
        assert abs(got - n * share) <= 4.0 * math.sqrt(n * share * (1 - share)) + 1, (step, got, n)
        assert all(d.propensity == (share if d.arm == "candidate" else 1 - share) for d in at_step)
        on_candidate |= {d.unit for d in at_step if d.arm == "candidate"}
    assert len(on_candidate) == 3 * 60  # step_min_feedback at each of the first three steps


def test_a_unit_on_the_challenger_stays_there_as_the_canary_grows() -> None:
    units = [f"user-{i}" for i in range(2000)]
    with memory_engine() as engine:
        canary(engine, "grow")
        on: list[set[str]] = []
        for step, share in enumerate((0.05, 0.25, 0.5), start=1):
            if step > 1:
                engine.publish(
                    CanaryAdvanced(experiment="grow", arm="candidate", step=step, share=share, previous_share=0.0)
                )
            chosen = {u for u in units if engine.decide("grow", unit=u, time=T0 + step).arm == "candidate"}
            n = len(units)
            assert abs(len(chosen) - n * share) <= 4.0 * math.sqrt(n * share * (1 - share))
            on.append(chosen)
    assert on[0] <= on[1] <= on[2]


def test_a_bad_canary_is_rolled_back_and_the_baseline_served() -> None:
    bad = world({"stable": 0.75, "candidate": 0.55})
    with memory_engine(37) as engine:
        canary(engine, "roll")
        Lab(engine, "roll", seed=8).run(5000, bad)
        [rolled] = payloads(engine, CanaryRolledBack)
        assert (rolled.share, rolled.previous_share, rolled.guardrail, rolled.arm) == (
            0.0,
            0.05,
            "quality",
            "candidate",
        )
        assert rolled.metrics["change"] < -0.05 and "guardrail quality" in rolled.reason
        assert [a.step for a in payloads(engine, CanaryAdvanced)] == [1]
        [completed] = payloads(engine, ExperimentCompleted)
        assert completed.winner == "stable" and completed.reason.startswith("rolled back: guardrail quality")
        assert not payloads(engine, WinnerPromoted)
        served = {(engine.decide("roll", unit=f"user-{i}", time=T0 + 10**6).arm) for i in range(50)}
        assert served == {"stable"}
        with pytest.raises(InvalidEvent, match="completed canary"):
            engine.publish(CanaryRolledBack(experiment="roll", arm="candidate", previous_share=0.05))


def test_a_canary_can_be_stepped_and_rolled_back_by_hand() -> None:
    with memory_engine() as engine:
        canary(engine, "manual")
        with pytest.raises(InvalidEvent, match=r"the next step of 'manual' is step 2 at share 0\.25") as wrong:
            engine.publish(CanaryAdvanced(experiment="manual", arm="candidate", step=3, share=0.5, previous_share=0.05))
        assert wrong.value.field == "step"
        engine.publish(CanaryAdvanced(experiment="manual", arm="candidate", step=2, share=0.25, previous_share=0.05))
        assert engine.state("experiments", "manual").share == 0.25
        engine.publish(CanaryRolledBack(experiment="manual", arm="candidate", previous_share=0.25, reason="pager"))
        exp = engine.state("experiments", "manual")
        assert (exp.share, exp.status, exp.winner) == (0.0, "completed", "stable")
        assert payloads(engine, ExperimentCompleted)[-1].reason == "rolled back: pager"


# --- feedback matching ----------------------------------------------------------------------------


def test_feedback_is_matched_to_its_decision_and_bad_feedback_rejected() -> None:
    with memory_engine() as engine:
        engine.define_experiment("m", arms=["a", "b"], policy="ab_test", start=True, time=T0)
        decision = engine.decide("m", unit="user-1", time=T0)
        fields = {"success": True, "quality_score": 0.9, "response_time_ms": 100.0}
        engine.feedback(decision.id, time=T0 + 1, **fields)
        engine.feedback(decision.id, time=T0 + 2, **fields)
        other = "b" if decision.arm == "a" else "a"
        second = engine.decide("m", unit="user-1", time=T0 + 3)
        engine.publish(Feedback(prompt_id="m", variant_id=other, decision_id=second.id, **fields), time=T0 + 4)
        engine.publish(Feedback(prompt_id="m", variant_id="a", decision_id="nope", **fields), time=T0 + 5)
        engine.publish(Feedback(prompt_id="m", variant_id="a", **fields), time=T0 + 6)  # names no decision
        engine.publish(Feedback(prompt_id="elsewhere", variant_id="a", decision_id="x", **fields), time=T0 + 7)
        rejected = payloads(engine, FeedbackRejected)
        assert [(r.reason, r.handler) for r in rejected] == [
            ("duplicate feedback", "experiments"),
            ("feedback does not match its decision", "experiments"),
            ("unknown or expired decision", "experiments"),
        ]
        exp = engine.state("experiments", "m")
        assert sum(s.feedback for s in exp.stats.values()) == 1 and exp.stats[decision.arm].feedback == 1
        assert engine.state("experiments").ledger.rejected == {
            "duplicate feedback": 1,
            "feedback does not match its decision": 1,
            "unknown or expired decision": 1,
        }


# --- replay ---------------------------------------------------------------------------------------


def scenario(engine: Engine) -> None:
    """Every kind of step: a hand-run lifecycle, a weighted test concluded, an adaptive test, a guardrail
    pause, a rolled-out canary, decisions without units."""
    engine.define_experiment("hand", arms=["control", "v2"], policy="ab_test", weights="0.8,0.2", time=T0)
    engine.publish(ExperimentStarted(experiment="hand", reason="go"), time=T0)
    lab = Lab(engine, "hand", seed=1)
    lab.run(120, world({"control": 0.7, "v2": 0.7}))
    engine.publish(ExperimentPaused(experiment="hand", reason="look"), time=T0 + 200)
    lab.run(30, world({"control": 0.7, "v2": 0.7}), stop=False)
    engine.publish(ExperimentResumed(experiment="hand"), time=T0 + 300)
    lab.run(60, world({"control": 0.7, "v2": 0.7}), stop=False)
    engine.define_experiment(
        "win", arms=["control", "v2"], policy="ab_test", min_samples=100, weights="1,1", start=True, time=T0
    )
    Lab(engine, "win", seed=2).run(3000, world({"control": 0.65, "v2": 0.78}, pre_period=True))
    engine.define_experiment(
        "ad", arms=["a", "b", "c"], policy="ab_test", allocation="adaptive", burn_in=20, reallocate_every=10,
        adaptive_draws=500, start=True, time=T0,
    )  # fmt: skip
    Lab(engine, "ad", seed=3).run(400, world({"a": 0.5, "b": 0.6, "c": 0.8}))
    engine.define_experiment("guard", arms=["control", "v2"], policy="ab_test", analyse_every=50, start=True, time=T0)
    Lab(engine, "guard", seed=4).run(2000, world({"control": 0.7, "v2": 0.5}))
    canary(engine, "roll")
    Lab(engine, "roll", seed=5).run(5000, world({"stable": 0.7, "candidate": 0.7}))
    for i in range(50):
        engine.decide("hand", time=T0 + 10_000 + i)


def test_replay_reproduces_every_decision_and_every_transition(tmp_path: Path) -> None:
    path = tmp_path / "experiments.sqlite"
    with Engine.open(path, seed=41, handlers=[ExperimentHandler()]) as engine:
        scenario(engine)
        live = msgspec.msgpack.encode(engine.state("experiments"))
        kinds = Counter(env.type for env in engine.read())
        statuses = {name: exp.status for name, exp in engine.state("experiments").experiments.items()}
    assert statuses == {"hand": "running", "win": "completed", "ad": "running", "guard": "paused", "roll": "completed"}
    for kind in ("WinnerPromoted", "AllocationUpdated", "CanaryAdvanced", "ExperimentPaused", "ExperimentConcluded"):
        assert kinds[kind] > 0, kind
    report = Engine.verify(path, handlers=[ExperimentHandler()])
    assert report.ok, report.difference
    assert report.decisions == kinds["Decision"] > 2000
    with Engine.open(path, read_only=True, handlers=[ExperimentHandler()]) as rebuilt:
        assert msgspec.msgpack.encode(rebuilt.state("experiments")) == live
    # a snapshot, then more events: the state rebuilt from the snapshot is the one folded live
    with Engine.open(path, handlers=[ExperimentHandler()]) as engine:
        engine.snapshot()
        Lab(engine, "hand", seed=9).run(200, world({"control": 0.7, "v2": 0.7}), stop=False)
        live = msgspec.msgpack.encode(engine.state("experiments"))
    with Engine.open(path, read_only=True, handlers=[ExperimentHandler()]) as rebuilt:
        assert rebuilt.rebuilt.snapshots == {"experiments": rebuilt.rebuilt.snapshots["experiments"]}
        assert msgspec.msgpack.encode(rebuilt.state("experiments")) == live
    assert Engine.verify(path, handlers=[ExperimentHandler()]).ok


# --- other handlers -------------------------------------------------------------------------------


def test_bandit_experiments_are_left_to_the_bandit() -> None:
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler(), ExperimentHandler()]) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2"], policy="thompson", time=T0)
        for i in range(20):
            decision = engine.decide("greeting", time=T0 + i)
            engine.feedback(decision.id, success=True, quality_score=0.8, response_time_ms=90.0, time=T0 + i)
        assert engine.state("experiments").experiments == {} and not engine.state("experiments").ledger.pending
        assert not [r for r in payloads(engine, FeedbackRejected) if r.handler == "experiments"]
        with pytest.raises(InvalidEvent, match="already defined"):
            engine.define_experiment("greeting", arms=["v1", "v2"], policy="ab_test", time=T0)
        engine.define_experiment("checkout", arms=["control", "v2"], policy="ab_test", start=True, time=T0)
        decision = engine.decide("checkout", unit="user-1", time=T0 + 100)
        assert decision.policy == "ab_test"
        assert engine.state("experiments", "checkout").stats[decision.arm].decisions == 1
        engine.feedback(decision.id, success=True, quality_score=0.8, response_time_ms=90.0, time=T0 + 101)
        assert "checkout" not in engine.state("bandit").experiments
        assert not [r for r in payloads(engine, FeedbackRejected) if r.handler == "bandit"]


def test_a_clock_tick_ends_an_idle_test_past_its_maximum_duration(tmp_path: Path) -> None:
    path = tmp_path / "ticks.sqlite"
    same = world({"control": 0.7, "v2": 0.7})
    with Engine.open(path, seed=3, handlers=[ExperimentHandler()]) as engine:
        for name, limit in (("short", 100.0), ("long", 1000.0)):
            engine.define_experiment(
                name, arms=["control", "v2"], policy="ab_test", max_duration_s=limit, start=True, time=T0
            )
            Lab(engine, name, seed=2).run(20, same)  # feedback up to T0 + 19.5, then nothing
        engine.tick(time=T0 + 99.0)
        assert payloads(engine, ExperimentCompleted) == []
        tick = engine.tick(time=T0 + 100.0)
        ended = list(engine.read(types=[ExperimentCompleted]))
        assert [env.stream for env in ended] == ["short"] and ended[0].causation_id == tick.id
        [concluded] = payloads(engine, ExperimentConcluded)
        assert "max_duration_s (100 s) reached after 100 s" in concluded.reason
        engine.tick(time=T0 + 500.0)
        assert len(payloads(engine, ExperimentCompleted)) == 1
        assert engine.state("experiments", "long").status == "running"
    assert Engine.verify(path, handlers=[ExperimentHandler()]).ok

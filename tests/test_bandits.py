"""The bandit family: regret, non-stationarity, context, the known traps, arms at run time, statistics."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from rtopt.handlers.bandits import (
    POLICIES,
    ArmAdded,
    ArmPaused,
    ArmResumed,
    ArmRetired,
    ArmState,
    ArmUpdated,
    BanditHandler,
    BanditOptions,
    EvidenceDiscounted,
    ExperimentStats,
    Turn,
    export_policy_state,
    import_policy_state,
)
from scipy import stats

from rtopt import Context, Decision, Engine, Envelope, ExperimentDefined, Feedback, InvalidEvent, Request

_ids = itertools.count()


def envelope(payload, t: float) -> Envelope:
    return Envelope(0, f"e{next(_ids)}", payload.tag(), "x", t, 0.0, None, None, 1, payload)


class Bandit:
    """The bandit handler driven directly, as the engine drives it, without a log (fast enough for
    thousands of rounds)."""

    def __init__(self, arms: list[str], policy: str, seed: int, **options) -> None:
        self.handler, self.seed, self.t = BanditHandler(), seed, 0.0
        self.state = self.handler.initial_state()
        self.fold(ExperimentDefined(experiment="x", arms=arms, policy=policy, options=options))

    def fold(self, payload) -> list:
        env = envelope(payload, self.t)
        self.state, derived = self.handler.apply(self.state, env, Context(env.time, env.id, self.seed))
        return list(derived)

    def decide(self, context: dict | None = None, available: list | None = None) -> tuple[str, str, Decision]:
        self.t += 1.0
        decision_id = f"d{next(_ids)}"
        request = Request(context=context, available=available)
        decision = self.handler.answer(self.state, "decide", "x", Context(self.t, decision_id, self.seed), request)[0]
        env = Envelope(0, decision_id, "Decision", "x", self.t, 0.0, None, None, 1, decision)
        self.state, _ = self.handler.apply(self.state, env, Context(self.t, decision_id, self.seed))
        return decision.arm, decision_id, decision

    def feedback(self, arm: str, decision_id: str, quality: float, success: bool = True) -> list:
        return self.fold(
            Feedback(
                prompt_id="x",
                variant_id=arm,
                decision_id=decision_id,
                success=success,
                quality_score=quality,
                response_time_ms=1.0,
            )
        )


def bernoulli_run(policy: str, means: list[float], rounds: int, seed: int, **options) -> np.ndarray:
    """Per-round regret of ``policy`` on a Bernoulli bandit (quality 1 for a success, 0 otherwise)."""
    arms = [f"a{i}" for i in range(len(means))]
    bandit = Bandit(arms, policy, seed, **options)
    world = np.random.default_rng(seed + 10_000)
    regret = np.empty(rounds)
    for t in range(rounds):
        arm, decision_id, _ = bandit.decide()
        mean = means[arms.index(arm)]
        bandit.feedback(arm, decision_id, 1.0 if world.random() < mean else 0.0)
        regret[t] = max(means) - mean
    return regret


TEN_ARMS = list(np.linspace(0.10, 0.55, 10))


@pytest.fixture(scope="module")
def ten_arm_regret() -> dict[str, np.ndarray]:
    """Mean per-round regret over 3 seeds of 10,000 rounds on the 10-arm Bernoulli bandit (0.10 .. 0.55)."""
    runs = {
        "ucb1": {},
        "thompson": {},
        "epsilon_greedy": {"epsilon": 0.1},
    }
    return {
        policy: np.mean(
            [bernoulli_run(policy, TEN_ARMS, 10_000, seed, stats_every=0, **opts) for seed in range(3)], axis=0
        )
        for policy, opts in runs.items()
    }


@pytest.mark.statistical
def test_thompson_beats_epsilon_greedy(ten_arm_regret: dict[str, np.ndarray]) -> None:
    total = {policy: float(regret.sum()) for policy, regret in ten_arm_regret.items()}
    assert total["thompson"] < total["epsilon_greedy"]


@pytest.mark.statistical
def test_ucb1_beats_epsilon_greedy_once_exploration_costs_add_up() -> None:
    """Epsilon-greedy(0.1) pays 0.1 x the mean gap (0.0225) on every round, whatever it has learnt: 900 over
    40,000 rounds before any greedy mistake. UCB1's regret grows with log(rounds) instead. At 10,000 rounds
    the two are within seed noise on this bandit (UCB1 ~480; epsilon-greedy ~230 when its greedy arm is the
    best, ~650 when it settles on the 0.50 arm), so the comparison is made where the growth rates decide it."""
    rounds, seeds = 40_000, range(3)
    ucb1 = np.mean([bernoulli_run("ucb1", TEN_ARMS, rounds, seed, stats_every=0).sum() for seed in seeds])
    greedy = np.mean(
        [bernoulli_run("epsilon_greedy", TEN_ARMS, rounds, seed, stats_every=0, epsilon=0.1).sum() for seed in seeds]
    )
    exploration_floor = 0.1 * float(np.mean(max(TEN_ARMS) - np.array(TEN_ARMS))) * rounds
    assert ucb1 < exploration_floor <= greedy * 1.05


@pytest.mark.statistical
@pytest.mark.parametrize("policy", ["ucb1", "thompson"])
def test_regret_grows_sublinearly(ten_arm_regret: dict[str, np.ndarray], policy: str) -> None:
    regret = ten_arm_regret[policy]
    early, late = regret[:5_000].sum(), regret[5_000:].sum()
    assert late < 0.6 * early


def switching_share(policy: str, seed: int, **options) -> float:
    """Share of rounds 2,500-4,000 on arm b, which becomes the best at round 2,000 when arm a drops from 0.9
    to 0.3 (a stationary estimate of a, built on ~2,000 rewards, stays above b's 0.6 for ~2,000 more)."""
    bandit = Bandit(["a", "b", "c"], policy, seed, stats_every=0, **options)
    world = np.random.default_rng(seed + 1)
    chosen = []
    for t in range(4_000):
        means = {"a": 0.9, "b": 0.6, "c": 0.1} if t < 2_000 else {"a": 0.3, "b": 0.6, "c": 0.1}
        arm, decision_id, _ = bandit.decide()
        bandit.feedback(arm, decision_id, 1.0 if world.random() < means[arm] else 0.0)
        chosen.append(arm)
    return chosen[2_500:].count("b") / 1_500


@pytest.mark.statistical
@pytest.mark.parametrize("options", [{"decay": 0.99}, {"window": 300}], ids=["discounted", "sliding_window"])
def test_non_stationary_variants_recover_when_the_best_arm_changes(options: dict) -> None:
    for policy in ("thompson", "ucb1"):
        # UCB1 with a smaller exploration constant: the discounted counts keep its default bonus large
        fast = {} if policy == "thompson" else {"exploration": 0.5}
        # the stationary policy keeps choosing arm a on the strength of its past
        assert np.mean([switching_share(policy, seed, **fast) for seed in range(2)]) < 0.5
        # from 500 rounds after the change on, the forgetting variants choose the new best arm most of the time
        assert np.mean([switching_share(policy, seed, **fast, **options) for seed in range(2)]) > 0.7


def linear_world(seed: int, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    thetas = rng.normal(0.0, 0.4, (4, 3))
    contexts = rng.normal(0.0, 1.0, (rounds, 3))
    return thetas, contexts


def contextual_reward(policy: str, seed: int, rounds: int = 2_500, **options) -> float:
    """Mean expected reward of ``policy`` on a linear contextual bandit (4 arms, 3 features)."""
    thetas, contexts = linear_world(seed, rounds)
    arms = [f"a{i}" for i in range(4)]
    contextual = policy in ("linucb", "lin_thompson")
    extra = {"features": ["f0", "f1", "f2"]} if contextual else {}
    bandit = Bandit(arms, policy, seed, stats_every=0, **extra, **options)
    world = np.random.default_rng(seed + 7)
    gained = 0.0
    for x in contexts:
        context = {f"f{i}": float(v) for i, v in enumerate(x)} if contextual else None
        arm, decision_id, _ = bandit.decide(context)
        p = float(np.clip(0.5 + thetas[arms.index(arm)] @ x, 0.02, 0.98))
        gained += p
        bandit.feedback(arm, decision_id, 1.0 if world.random() < p else 0.0)
    return gained / rounds


@pytest.mark.statistical
def test_linear_policies_beat_the_best_context_free_policy() -> None:
    for seed in (1, 2):
        context_free = max(contextual_reward(p, seed) for p in ("thompson", "ucb1"))
        assert contextual_reward("linucb", seed) > context_free + 0.03
        assert contextual_reward("lin_thompson", seed) > context_free + 0.03


@pytest.mark.statistical
def test_gaussian_thompson_samples_the_uncertainty_of_the_mean_so_its_regret_flattens() -> None:
    means = [0.40, 0.50, 0.55, 0.60]
    arms = [f"a{i}" for i in range(4)]
    world = np.random.default_rng(3)
    bandit = Bandit(arms, "thompson_gaussian", 3, reward="composite", stats_every=0)
    regret = []
    for _ in range(4_000):
        arm, decision_id, _ = bandit.decide()
        mean = means[arms.index(arm)]
        bandit.feedback(arm, decision_id, float(np.clip(world.normal(mean, 0.15), 0.0, 1.0)))
        regret.append(max(means) - mean)
    # sampling the reward spread instead would keep choosing wrong arms at a constant rate
    assert sum(regret[2_000:]) < 0.35 * sum(regret[:2_000])


def test_linear_thompson_draws_independent_noise_for_each_arm() -> None:
    arms = [ArmState(), ArmState()]  # two identical arms
    options = BanditOptions(features=["f"])
    chosen = [
        POLICIES["lin_thompson"].select(arms, Turn(options, Context(0.0, f"e{i}", 0), vector=np.array([1.0]))).index
        for i in range(400)
    ]
    # shared noise would give both arms the same score in every draw, and the first would always win
    assert 150 < sum(chosen) < 250


def test_ucb1_tries_every_arm_before_trusting_any() -> None:
    bandit = Bandit([f"a{i}" for i in range(6)], "ucb1", 0)
    first = []
    for _ in range(6):
        arm, decision_id, _ = bandit.decide()
        bandit.feedback(arm, decision_id, 1.0)  # the first arm tried looks perfect, yet all are tried
        first.append(arm)
    assert sorted(first) == [f"a{i}" for i in range(6)]


@pytest.mark.parametrize("policy", ["epsilon_greedy", "ucb1", "softmax", "thompson", "thompson_gaussian"])
def test_a_cold_start_with_batched_feedback_spreads_the_batch(policy: str) -> None:
    bandit = Bandit(["a", "b", "c", "d"], policy, 5)
    chosen = [bandit.decide()[0] for _ in range(1_000)]
    counts = np.array([chosen.count(arm) for arm in "abcd"])
    assert stats.chisquare(counts).pvalue > 0.001, counts


def test_min_samples_gives_every_arm_its_first_decisions() -> None:
    bandit = Bandit(["a", "b", "c"], "thompson", 2, min_samples=4)
    first = [bandit.decide()[0] for _ in range(12)]
    assert sorted(first) == ["a"] * 4 + ["b"] * 4 + ["c"] * 4


def test_exact_propensities_of_epsilon_greedy_and_softmax() -> None:
    arms = [ArmState(n=10, total=2), ArmState(n=10, total=6), ArmState(n=10, total=6)]
    for i in range(20):
        c = POLICIES["epsilon_greedy"].select(arms, Turn(BanditOptions(epsilon=0.3), Context(0.0, f"e{i}", 1)))
        assert c.propensity == pytest.approx(0.1 + (0.7 / 2 if c.index in (1, 2) else 0.0))
        s = POLICIES["softmax"].select(arms, Turn(BanditOptions(temperature=0.2), Context(0.0, f"s{i}", 1)))
        weights = np.exp(np.array([0.2, 0.6, 0.6]) / 0.2)
        assert s.propensity == pytest.approx(weights[s.index] / weights.sum())


def test_thompson_propensity_matches_the_probability_of_the_best_draw() -> None:
    arms = [ArmState(n=6, total=2), ArmState(n=6, total=3)]  # Beta(3, 5) and Beta(4, 4) with a flat prior
    grid = np.linspace(0.0, 1.0, 20_001)
    exact = np.trapezoid(stats.beta.pdf(grid, 4, 4) * stats.beta.cdf(grid, 3, 5), grid)
    thompson = POLICIES["thompson"]
    estimates = [
        (c.propensity if c.index == 1 else 1 - c.propensity)
        for c in (thompson.select(arms, Turn(BanditOptions(), Context(0.0, f"e{i}", 5))) for i in range(300))
    ]
    assert np.mean(estimates) == pytest.approx(exact, abs=0.01)


def test_an_idle_arm_loses_confidence_with_event_time() -> None:
    arms = [ArmState(n=200, total=120, last_reward_time=0.0), ArmState(n=200, total=110, last_reward_time=990.0)]
    options = BanditOptions(idle_half_life_s=60.0, exploration=0.5)
    fresh = POLICIES["ucb1"].select(arms, Turn(BanditOptions(exploration=0.5), Context(1_000.0, "e", 0)))
    decayed = POLICIES["ucb1"].select(arms, Turn(options, Context(1_000.0, "e", 0)))
    assert (fresh.index, decayed.index) == (0, 0)
    arms[0].last_reward_time = -5_000.0  # a long idle best arm is worth exploring again... the other wins
    assert POLICIES["ucb1"].select(arms[::-1], Turn(options, Context(1_000.0, "e", 0))).index == 1


def test_arms_join_pause_resume_and_retire_at_run_time() -> None:
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"], policy="ucb1", time=0.0)
        engine.publish(ArmAdded(experiment="g", arm="c"), time=1.0)
        engine.publish(ArmPaused(experiment="g", arm="a"), time=2.0)
        chosen = {engine.decide("g", time=3.0 + i).arm for i in range(30)}
        assert chosen == {"b", "c"}
        with pytest.raises(InvalidEvent, match="paused"):
            engine.decide("g", available=["a"], time=40.0)
        for bad, field in [
            (ArmResumed(experiment="g", arm="b"), "arm"),
            (ArmAdded(experiment="g", arm="c"), "arm"),
            (ArmRetired(experiment="nope", arm="a"), "experiment"),
        ]:
            with pytest.raises(InvalidEvent) as caught:
                engine.publish(bad, time=41.0)
            assert caught.value.field == field
        engine.publish(ArmRetired(experiment="g", arm="a"), time=42.0)
        with pytest.raises(InvalidEvent, match="retired arm cannot be resumed"):
            engine.publish(ArmResumed(experiment="g", arm="a"), time=43.0)
        assert engine.state("bandit", "g").arms["a"].status == "retired"


def test_options_are_checked_against_the_policy() -> None:
    with Engine.open(":memory:", seed=3, handlers=[BanditHandler()]) as engine:
        cases = [
            ({"policy": "ucb1", "epsilon": 0.2}, "options.epsilon"),
            ({"policy": "linucb"}, "options.features"),
            ({"policy": "linucb", "features": ["f"], "decay": 0.9}, "options.decay"),
            ({"policy": "epsilon_greedy", "epsilon": 1.5}, "options.epsilon"),
            ({"policy": "thompson", "window": 0}, "options.window"),
            ({"policy": "thompson", "window": 10, "decay": 0.5}, "options.decay"),
        ]
        for options, field in cases:
            with pytest.raises(InvalidEvent) as caught:
                engine.define_experiment("g", arms=["a", "b"], **options)
            assert caught.value.field == field, str(caught.value)
        engine.define_experiment("g", arms=["a", "b"], policy="linucb", features=["f"])
        with pytest.raises(InvalidEvent, match="needs the features"):
            engine.decide("g", context={"other": 1.0})


def test_statistics_events_and_composite_rewards() -> None:
    with Engine.open(":memory:", seed=4, handlers=[BanditHandler()]) as engine:
        engine.define_experiment(
            "g",
            arms=["a", "b"],
            policy="thompson",
            reward="composite",
            w_quality=1.0,
            w_latency=1.0,
            latency_sla_ms=1_000.0,
            stats_every=50,
            time=0.0,
        )
        for t in range(100):
            d = engine.decide("g", time=float(t))
            engine.feedback(
                d.id, success=True, quality_score=0.9 if d.arm == "a" else 0.3, response_time_ms=250.0, time=t + 0.5
            )
        update = next(engine.read(types=[ArmUpdated]))
        assert update.payload.parts["latency"] == pytest.approx(0.75)
        assert update.payload.reward == pytest.approx((update.payload.parts["quality"] + 0.75) / 2)
        summaries = [env.payload for env in engine.read(types=[ExperimentStats])]
    assert [s.rewards for s in summaries] == [50, 100]
    last = summaries[-1]
    assert sum(arm.p_best for arm in last.arms.values()) == pytest.approx(1.0)
    assert last.arms["a"].p_best > 0.95
    a = last.arms["a"]
    assert a.low <= a.mean <= a.high and a.mean == pytest.approx(0.825)
    assert 0.0 <= last.exploration_rate <= 1.0


@pytest.mark.parametrize(
    ("policy", "options"),
    [
        ("epsilon_greedy", {"epsilon": 0.2, "epsilon_decay": 0.01}),
        ("ucb1", {"decay": 0.99}),
        ("softmax", {"window": 50}),
        ("thompson_gaussian", {"idle_half_life_s": 30.0}),
        ("linucb", {"features": ["f0", "f1"]}),
        ("lin_thompson", {"features": ["f0", "f1"]}),
    ],
)
def test_replay_remakes_every_decision_of_every_policy(policy: str, options: dict, tmp_path: Path) -> None:
    path = tmp_path / f"{policy}.sqlite"
    rng = np.random.default_rng(9)
    with Engine.open(path, seed=9) as engine:
        engine.define_experiment("g", arms=["a", "b", "c"], policy=policy, stats_every=25, time=0.0, **options)
        for t in range(150):
            context = {"f0": float(rng.normal()), "f1": float(rng.normal())}
            d = engine.decide("g", context=context, time=float(t))
            engine.feedback(
                d.id,
                success=bool(rng.random() < 0.7),
                quality_score=float(rng.random()),
                response_time_ms=100.0,
                time=t + 0.5,
            )
    report = Engine.verify(path)
    assert report.ok, report.difference
    assert report.decisions == 150


def test_a_slate_ranks_distinct_arms_and_learns_from_each_slot(tmp_path: Path) -> None:
    path = tmp_path / "slate.sqlite"
    with Engine.open(path, seed=6, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b", "c", "d"], policy="thompson", time=0.0)
        decision = engine.decide("g", slots=3, time=1.0)
        assert len(set(decision.slate)) == 3 and decision.arm == decision.slate[0]
        assert len(decision.slate_propensities) == 3 and decision.propensity == decision.slate_propensities[0]
        # engine.feedback answers the decision's first arm; feedback on another shown arm names it
        engine.feedback(decision.id, success=True, quality_score=0.9, response_time_ms=5.0, time=2.0)
        engine.publish(
            Feedback(
                prompt_id="g",
                variant_id=decision.slate[2],
                decision_id=decision.id,
                success=False,
                quality_score=0.1,
                response_time_ms=5.0,
            ),
            time=3.0,
        )
        engine.feedback(decision.id, success=True, quality_score=0.9, response_time_ms=5.0, time=4.0)
        assert [env.payload.reason for env in engine.read(types=["FeedbackRejected"])] == ["duplicate feedback"]
        updates = [env.payload.arm for env in engine.read(types=[ArmUpdated])]
        with pytest.raises(InvalidEvent, match="only 4 arms"):
            engine.decide("g", slots=5)
    assert sorted(updates) == sorted([decision.slate[0], decision.slate[2]])
    assert Engine.verify(path).ok


def test_policy_state_exports_and_imports_as_json_through_an_event(tmp_path: Path) -> None:
    source_path, target_path = tmp_path / "source.sqlite", tmp_path / "target.sqlite"
    with Engine.open(source_path, seed=1) as source:
        source.define_experiment("g", arms=["a", "b"], policy="ucb1", time=0.0)
        for t in range(50):
            d = source.decide("g", time=float(t))
            source.feedback(d.id, success=d.arm == "b", quality_score=0.9, response_time_ms=5.0, time=t + 0.5)
        exported = export_policy_state(source, "g")
        expected = source.state("bandit", "g").arms
    assert json.loads(exported)["b"]["n"] > 0  # plain JSON, not pickle
    with Engine.open(target_path, seed=2) as target:
        target.define_experiment("g", arms=["a", "b"], policy="ucb1", time=0.0)
        import_policy_state(target, "g", exported, time=1.0)
        assert target.state("bandit", "g").arms == expected
        with pytest.raises(InvalidEvent) as caught:
            import_policy_state(target, "g", '{"z": {}}', time=2.0)
        assert caught.value.field == "arms"
        with pytest.raises(InvalidEvent, match="not JSON"):
            import_policy_state(target, "g", "pickle?", time=2.0)
    with Engine.open(target_path, read_only=True) as reopened:
        assert reopened.state("bandit", "g").arms == expected


@pytest.mark.statistical
def test_on_the_simulated_workload_linucb_uses_the_context_to_lower_regret() -> None:
    from rtopt.handlers.bandits.simulation import VariantProfile, simulate

    def variant(name: str, quality: float, long_prompt_shift: float) -> VariantProfile:
        return VariantProfile(name, 0.97, quality, 600.0, 200.0, 0.002, long_prompt_shift=long_prompt_shift)

    # v1 is best on short prompts, v2 on long ones: a context-free policy must lose on one of them
    variants = [variant("v1", 0.80, -0.20), variant("v2", 0.68, 0.14), variant("v3", 0.62, 0.0)]
    regret = {}
    for policy in ("thompson", "linucb"):
        with Engine.open(":memory:", seed=21, handlers=[BanditHandler()]) as engine:
            regret[policy] = simulate(engine, 3_000, variants, 21, policy=policy).regret
    assert regret["linucb"] < 0.6 * regret["thompson"], regret


def test_discounted_evidence_is_scaled_and_a_factor_of_zero_forgets_it_all() -> None:
    bandit = Bandit(["a", "b"], "thompson", seed=2)
    for quality in (1.0, 1.0, 0.0, 1.0):
        arm, decision_id, _ = bandit.decide()
        bandit.feedback(arm, decision_id, quality)
    before = {name: (arm.n, arm.total) for name, arm in bandit.state.experiments["x"].arms.items()}
    bandit.fold(EvidenceDiscounted(experiment="x", factor=0.25, reason="drift"))
    after = {name: (arm.n, arm.total) for name, arm in bandit.state.experiments["x"].arms.items()}
    assert after == {name: (n * 0.25, total * 0.25) for name, (n, total) in before.items()}
    bandit.fold(EvidenceDiscounted(experiment="x", factor=0.0))
    assert all(arm.n == arm.total == 0.0 for arm in bandit.state.experiments["x"].arms.values())
    assert sum(arm.pulls for arm in bandit.state.experiments["x"].arms.values()) == 4  # the counts stay


def test_a_windowed_experiment_forgets_its_window_when_discounted() -> None:
    bandit = Bandit(["a", "b"], "ucb1", seed=2, window=3)
    for _ in range(5):
        arm, decision_id, _ = bandit.decide()
        bandit.feedback(arm, decision_id, 1.0)
    bandit.fold(EvidenceDiscounted(experiment="x", factor=0.5))
    exp = bandit.state.experiments["x"]
    assert exp.window == [] and all(arm.n == 0.0 for arm in exp.arms.values())
    arm, decision_id, _ = bandit.decide()
    bandit.feedback(arm, decision_id, 1.0)
    assert exp.arms[arm].n == 1.0  # the window starts again without taking out what it had forgotten


def test_a_discounted_linear_model_keeps_its_ridge_prior() -> None:
    bandit = Bandit(["a"], "linucb", seed=2, features=["x1", "x2"], ridge=2.0)
    contexts = [{"x1": 1.0, "x2": 0.0}, {"x1": 0.5, "x2": 1.0}, {"x1": 0.0, "x2": 2.0}]
    for context in contexts:
        arm, decision_id, _ = bandit.decide(context)
        bandit.feedback(arm, decision_id, 1.0)
    bandit.fold(EvidenceDiscounted(experiment="x", factor=0.5))
    state = bandit.state.experiments["x"].arms["a"]
    xs = np.array([[c["x1"], c["x2"]] for c in contexts])
    expected_design = 2.0 * np.eye(2) + 0.5 * xs.T @ xs
    assert np.linalg.inv(np.reshape(state.a_inv, (2, 2))) == pytest.approx(expected_design)
    assert state.b == pytest.approx(0.5 * xs.sum(axis=0))


def test_evidence_discounted_by_hand_must_name_a_bandit_experiment() -> None:
    with Engine.open(":memory:", seed=1, handlers=[BanditHandler()]) as engine:
        engine.define_experiment("g", arms=["a", "b"], policy="ucb1", time=0.0)
        engine.publish(EvidenceDiscounted(experiment="g", factor=0.5, reason="a new model"), time=1.0)
        with pytest.raises(InvalidEvent) as raised:
            engine.publish(EvidenceDiscounted(experiment="nope", factor=0.5), time=2.0)
        assert (raised.value.field, raised.value.value) == ("experiment", "nope")
        assert engine.stats().rejected == {"invalid command": 1}

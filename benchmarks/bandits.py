"""Bandit policies: rtopt through its engine against MABWiser and River on one seeded Bernoulli bandit.

Every figure is measured in one run, on the same machine and in the same process. The world is a 10-arm
Bernoulli bandit whose success rates are evenly spaced from 0.10 to 0.55. For each seed the reward of
every (round, arm) is drawn once, before anything is timed, into a table ``rewards[round, arm]``; every
library reads the reward of the arm it chose from that table, so all of them face the very same world.

For every policy rtopt shares with a peer (epsilon-greedy, UCB1, Beta-Bernoulli Thompson sampling, and
softmax and LinUCB, which MABWiser has and River has not) the script measures, over ``--rounds`` rounds and
averaged over ``--seeds`` seeds:

- **rtopt**: ``Engine.open`` on a temporary SQLite file (WAL, the default ``durability="process"``: every
  event is committed before the call returns) with ``rtopt.handlers.bandits.BanditHandler``, the experiment
  defined by ``define_experiment``, then per round ``engine.decide`` and ``engine.feedback`` (success
  drawn from the table, ``quality_score`` 1.0 on success and 0.0 otherwise, so the binary reward is the
  table's value); the experiment keeps rtopt's default options except the policy's own hyper-parameter;
  the same again with ``durability="group"`` (``commit_interval_ms`` 5, ``commit_every`` 1,000: a call
  returns once its events are folded, a committer thread writes them in groups; the timed loop ends with
  ``engine.flush()``, so every event is in the log when the clock stops; the same decisions, checked), and
  inside ``engine.batch()`` of 1,000 rounds (one transaction each; the same decisions, checked);
- **the physical limit**: plain ``sqlite3`` writing the very rows the per-call run wrote (read back from
  its log, with their chain values) into a log whose schema ``Engine.open`` created, commit by commit as
  rtopt did (a one-row transaction for the Decision; one for the Feedback, its ArmUpdated and, every 100
  rewards, its ExperimentStats), each moving the head anchor as rtopt's does, and the same rows in
  1,000-round transactions (:mod:`benchmarks.limits`; the copy is checked to be the same log, link by
  link). Nothing else runs: no encoding, hashing, folding or deciding. rtopt's ratio to it is the share of
  the storage's rate the engine keeps: per call to the per-call limit, with group durability and batched
  to the 1,000-round one (a group holds at most ``commit_every`` events, so fewer rounds than that);
- **MABWiser** (``mabwiser.mab.MAB``), one decision at a time: ``predict()`` then
  ``partial_fit([arm], [reward])``;
- **River** (``river.bandit``): ``pull(arm_ids)`` then ``update(arm, reward)``.

Figures: rounds/s (one decision and the learning from its reward; for rtopt ``decide`` + ``feedback``,
i.e. two durable commits per call, or their share of a group's or a batch's) over the timed loop only
(opening the engine and defining the experiment are not timed), and cumulative pseudo-regret
``sum_t (mu* - mu[arm_t])`` (lower variance than the realised regret; the realised reward is in the JSON
output too).

Targets (issue #16), on every policy MABWiser shares: per call, at least 0.6x the per-call limit and at
least 1x MABWiser where that limit allows it (the limit's own ratio to MABWiser is printed: below 1x, it
does not); with ``durability="group"`` and inside ``engine.batch()``, at least 3x MABWiser, with the same
decisions, hence the same regret, as per call; and rtopt's regret equal to or lower than both peers' on every
policy they share. "Equal" has a tolerance: rtopt passes if
its mean regret exceeds the peer's by no more than the larger of 10 % of the peer's mean regret and one
standard error of the per-seed (paired: same world) regret differences.

Hyper-parameters, matched where they mean the same thing:

- epsilon-greedy: epsilon 0.1 everywhere (each explores uniformly over all arms with probability 0.1);
- UCB1: rtopt ``exploration`` sqrt(2) in ``c * sqrt(ln N / n)``, MABWiser ``alpha`` 1 and River ``delta``
  1 in ``alpha * sqrt(2 ln N / n)``: the same bonus (River's "delta" is not a confidence level here: it is
  the multiplier of that bonus, and River documents delta=1 as UCB1);
- Thompson sampling: Beta(1, 1) priors everywhere. Each draws one sample per arm; rtopt also computes
  the decision's propensity (a one-dimensional integral) to log it;
- softmax: temperature 0.1 (rtopt ``temperature``, MABWiser ``tau``). MABWiser does not sample from the
  Boltzmann distribution: it takes the argmax of one Dirichlet draw whose concentrations are the softmax
  probabilities, so the two explore differently with the same temperature;
- LinUCB: alpha 1 and ridge 1 (rtopt ``alpha`` and ``ridge``, MABWiser ``alpha`` and ``l2_lambda``), on a
  contextual world of its own: each round has a context of 10 features drawn from Dirichlet(0.5, ...)
  (they sum to 1, so no intercept is needed), and arm ``a`` succeeds with probability ``x . w_a``, the
  weights ``w_a`` drawn once from U(0.05, 0.6); regret is ``sum_t (max_a x_t . w_a - x_t . w_{arm_t})``;
- first pulls: rtopt's default ``min_samples`` (1 for epsilon-greedy, UCB1 and softmax: untried arms
  first, in random order) and River's ``burn_in=1`` (in arm order) try every arm once before the policy's
  rule; MABWiser has no burn-in and its UCB1 gives untried arms an expectation of 0 (they would never be
  tried), so for those three policies the harness pulls each arm once in arm order (``fit`` then
  ``partial_fit``, timed like any other round). Thompson sampling and LinUCB have no first pulls anywhere
  (MABWiser is ``fit`` on empty data, untimed, so that ``predict`` may be called);
- rtopt also emits an ``ExperimentStats`` event (2,000 posterior draws per arm) every 100 rewards
  (``stats_every``, default 100), which it logs and the peers have no equivalent of.

If a peer is not installed (the ``bench`` extra: ``pip install -e ".[bench]"``) the script says so and
measures rtopt alone. Run ``python benchmarks/bandits.py`` (``--quick`` for a tiny run, ``--json`` for
one JSON object on stdout, ``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.metadata
import json
import math
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rtopt.handlers.bandits import BanditHandler

from rtopt import Engine

if not __package__:  # run as a script (python benchmarks/bandits.py): the benchmarks package is its folder
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.limits import audit, copy_commits, merged, stored_commits

SEED = 20_260_101
START = 1_767_225_600.0  # event time of the first round: 2026-01-01T00:00:00Z
STEP = 1e-2  # event time between rounds (s); feedback follows its decision by half a step
EXPERIMENT = "bench"
MEANS = np.linspace(0.10, 0.55, 10)
ARMS = len(MEANS)
ARM_NAMES = tuple(f"v{i}" for i in range(ARMS))
FEATURES = tuple(f"x{i}" for i in range(10))  # the context of the contextual world

DEFAULTS = {"rounds": 10_000, "seeds": 5}
QUICK = {"rounds": 300, "seeds": 2}

BATCH = 1_000  # rounds per transaction in the batched rtopt run and its limit
GROUP_COMMIT = {"commit_interval_ms": 5.0, "commit_every": 1_000}  # the group rtopt run's Engine.open settings
LIMIT_TARGET = 0.6  # rtopt per call over the raw per-call limit, at least
PER_CALL_TARGET = 1.0  # rtopt per call over MABWiser, at least (where the limit allows it)
GROUPED_TARGET = 3.0  # rtopt with durability="group", and inside engine.batch(), over MABWiser, at least
REGRET_TOLERANCE = 0.10  # relative tolerance on "equal or lower" regret (or one standard error, if larger)


@dataclass(frozen=True)
class Mode:
    """How rtopt is run: the limit it is held to, the prefix of its ratios, rounds per ``engine.batch()``
    (1: none) and the engine's durability."""

    limit: str
    prefix: str
    batch: int = 1
    durability: str = "process"


LIMITS = {"limit": "", "limit_batched": "batched_"}  # each limit and the prefix of its ratios to the peers
RTOPT_MODES = {
    "rtopt": Mode("limit", ""),
    "rtopt_group": Mode("limit_batched", "group_", durability="group"),
    "rtopt_batched": Mode("limit_batched", "batched_", batch=BATCH),
}
PER_CALL = "rtopt"  # the mode every other one must decide like, and whose log the limits copy
PEERS = ("mabwiser", "river")
LIBRARIES = (*LIMITS, *RTOPT_MODES, *PEERS)
LABELS = {
    "limit": "limit: sqlite3, per call",
    "limit_batched": f"limit: sqlite3, {BATCH:,}/commit",
    "rtopt": "rtopt, per call",
    "rtopt_group": 'rtopt, per call, "group"',
    "rtopt_batched": f"rtopt, batch() of {BATCH:,}",
    "mabwiser": "MABWiser",
    "river": "River",
}


# --- the policies and how each library spells them -------------------------------------------------


@dataclass(frozen=True)
class PolicySpec:
    """One policy: rtopt's name and options, and the peers' constructors (None: the peer lacks it)."""

    key: str
    label: str
    rtopt_options: dict[str, Any]
    warmup: bool  # every arm is pulled once before the policy's rule applies
    mabwiser: Callable[[], Any] | None
    river: Callable[[int], Any] | None
    hyper: str = ""
    contextual: bool = False  # played on the contextual world, with a context per decision


def _mabwiser_policy(name: str, **kwargs: Any) -> Callable[[], Any]:
    def make() -> Any:
        from mabwiser.mab import LearningPolicy

        return getattr(LearningPolicy, name)(**kwargs)

    return make


def _river_epsilon(seed: int) -> Any:
    from river import bandit

    return bandit.EpsilonGreedy(epsilon=0.1, burn_in=1, seed=seed)


def _river_ucb(seed: int) -> Any:
    from river import bandit

    return bandit.UCB(delta=1.0, burn_in=1, seed=seed)


def _river_thompson(seed: int) -> Any:
    from river import bandit, proba

    return bandit.ThompsonSampling(reward_obj=proba.Beta(1, 1), seed=seed)


POLICIES: dict[str, PolicySpec] = {
    spec.key: spec
    for spec in (
        PolicySpec(
            "epsilon_greedy",
            "epsilon-greedy",
            {"epsilon": 0.1},
            True,
            _mabwiser_policy("EpsilonGreedy", epsilon=0.1),
            _river_epsilon,
            "epsilon 0.1 (rtopt epsilon, MABWiser epsilon, River epsilon)",
        ),
        PolicySpec(
            "ucb1",
            "UCB1",
            {"exploration": math.sqrt(2.0)},
            True,
            _mabwiser_policy("UCB1", alpha=1.0),
            _river_ucb,
            "bonus sqrt(2 ln N / n) (rtopt exploration sqrt(2), MABWiser alpha 1, River delta 1)",
        ),
        PolicySpec(
            "thompson",
            "Thompson (Beta)",
            {"prior_alpha": 1.0, "prior_beta": 1.0},
            False,
            _mabwiser_policy("ThompsonSampling"),
            _river_thompson,
            "Beta(1, 1) priors (rtopt prior_alpha/prior_beta, MABWiser fixed, River proba.Beta(1, 1))",
        ),
        PolicySpec(
            "softmax",
            "softmax",
            {"temperature": 0.1},
            True,
            _mabwiser_policy("Softmax", tau=0.1),
            None,
            "temperature 0.1 (rtopt temperature, MABWiser tau; River has no softmax)",
        ),
        PolicySpec(
            "linucb",
            "LinUCB",
            {"features": list(FEATURES), "alpha": 1.0, "ridge": 1.0},
            False,
            _mabwiser_policy("LinUCB", alpha=1.0, l2_lambda=1.0),
            None,
            "alpha 1, ridge 1, 10 features (rtopt alpha/ridge, MABWiser alpha/l2_lambda; River not measured)",
            contextual=True,
        ),
    )
}


# --- the world ----------------------------------------------------------------------------------------


@dataclass
class World:
    """The pre-drawn rewards of one seed: ``success[i][a]`` (bool) and ``value[i][a]`` (0.0 or 1.0), drawn
    with the success rates ``means[i, a]``; a contextual world has the context of each round too, as a
    mapping (``context[i]``, for rtopt) and as a 1 x features array (``vector[i]``, for MABWiser)."""

    success: list[list[bool]]
    value: list[list[float]]
    means: np.ndarray
    context: list[dict[str, float]] | None = None
    vector: list[np.ndarray] | None = None

    @classmethod
    def draw(cls, rounds: int, seed: int) -> World:
        table = np.random.default_rng([SEED, seed]).random((rounds, ARMS)) < MEANS
        means = np.broadcast_to(MEANS, (rounds, ARMS))
        return cls(success=table.tolist(), value=table.astype(float).tolist(), means=means)

    @classmethod
    def draw_contextual(cls, rounds: int, seed: int) -> World:
        weights = np.random.default_rng([SEED, 1]).uniform(0.05, 0.6, (ARMS, len(FEATURES)))
        rng = np.random.default_rng([SEED, seed, 1])
        contexts = rng.dirichlet(np.full(len(FEATURES), 0.5), rounds)
        means = contexts @ weights.T
        table = rng.random((rounds, ARMS)) < means
        return cls(
            success=table.tolist(),
            value=table.astype(float).tolist(),
            means=means,
            context=[dict(zip(FEATURES, row, strict=True)) for row in contexts.tolist()],
            vector=[row.reshape(1, -1) for row in contexts],
        )


@dataclass
class Run:
    """One library on one policy and one seed."""

    seconds: float
    regret: float
    reward: float
    chosen: list[int] | None = None
    limits: dict[str, float] | None = None  # seconds of each physical limit (LIMITS) on the rows rtopt wrote


def score(chosen: Sequence[int], world: World, seconds: float) -> Run:
    """Pseudo-regret and realised reward of the arms ``chosen`` round by round."""
    arms = np.asarray(chosen, dtype=np.intp)
    regret = world.means.max(axis=1).sum() - world.means[np.arange(len(arms)), arms].sum()
    reward = float(sum(world.value[i][arm] for i, arm in enumerate(chosen)))
    return Run(seconds=seconds, regret=float(regret), reward=reward)


# --- the three libraries ----------------------------------------------------------------------------


def run_rtopt(spec: PolicySpec, world: World, seed: int, workdir: Path, mode: Mode) -> Run:
    """rtopt through the engine: decide + feedback per round, every event written to a SQLite file, one
    transaction per call (``mode.batch`` 1), per ``mode.batch`` rounds (``Engine.batch``) or per group
    (``durability="group"``, the timed loop ending with ``Engine.flush``). A run of one transaction per call
    measures the physical limits on the rows it wrote too (``Run.limits``)."""
    rounds = len(world.success)
    batch = mode.batch
    path = workdir / f"rtopt-{spec.key}-{seed}-{batch}-{mode.durability}.sqlite"
    index = {name: i for i, name in enumerate(ARM_NAMES)}
    chosen = [0] * rounds
    success = world.success
    contexts = world.context if spec.contextual else None
    grouping = GROUP_COMMIT if mode.durability == "group" else {}
    handlers = [BanditHandler()]
    with Engine.open(path, seed=SEED + seed, handlers=handlers, durability=mode.durability, **grouping) as engine:
        engine.define_experiment(EXPERIMENT, arms=list(ARM_NAMES), policy=spec.key, time=START, **spec.rtopt_options)
        engine.flush()
        decide, feedback = engine.decide, engine.feedback
        gc.collect()
        t0 = time.perf_counter_ns()
        for first in range(0, rounds, batch):
            with engine.batch() if batch > 1 else nullcontext():
                for i in range(first, min(first + batch, rounds)):
                    when = START + 1.0 + i * STEP
                    decision = decide(EXPERIMENT, None if contexts is None else contexts[i], time=when)
                    arm = index[decision.arm]
                    ok = success[i][arm]
                    feedback(
                        decision.id,
                        success=ok,
                        quality_score=1.0 if ok else 0.0,
                        response_time_ms=1.0,
                        time=when + STEP / 2,
                    )
                    chosen[i] = arm
        engine.flush()  # every event in the log (group durability) before the clock stops
        elapsed = time.perf_counter_ns() - t0
        stats = engine.stats()
        learnt = engine.state("bandit", EXPERIMENT).rewards
    if stats.rejected or stats.handler_failures or stats.published != 2 * rounds + 1 or learnt != rounds:
        raise RuntimeError(f"rtopt {spec.key} did not run cleanly: {stats}, {learnt} rewards learnt")
    run = score(chosen, world, elapsed / 1e9)
    run.chosen = chosen
    if mode == RTOPT_MODES[PER_CALL]:
        run.limits = measure_limits(path, rounds, SEED + seed)
    remove_log(path)
    return run


def measure_limits(path: Path, rounds: int, seed: int) -> dict[str, float]:
    """Seconds plain sqlite3 takes to write the rounds of the per-call rtopt log at ``path`` into a new log
    (its schema made by ``Engine.open``), a commit per call (``limit``) and ``BATCH`` rounds a commit
    (``limit_batched``); the experiment's definition is written first, untimed."""
    definition, *calls = stored_commits(path)
    if len(calls) != 2 * rounds:
        raise RuntimeError(f"{path}: {len(calls)} commits after the definition, expected 2 x {rounds} rounds")
    seconds = {}
    for name, commits in (("limit", calls), ("limit_batched", merged(calls, 2 * BATCH))):
        copy = path.with_name(f"{path.stem}-{name}.sqlite")
        Engine.open(copy, seed=seed, handlers=[BanditHandler()]).close()
        spent = copy_commits(copy, [definition, *commits])
        audit(copy)
        remove_log(copy)
        seconds[name] = sum(spent[1:]) / 1e9
    return seconds


def remove_log(path: Path) -> None:
    """Delete the SQLite log at ``path`` and the files SQLite and rtopt keep beside it."""
    path.unlink()
    for suffix in ("-wal", "-shm", "-lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_mabwiser(spec: PolicySpec, world: World, seed: int) -> Run:
    """MABWiser one decision at a time: predict() then partial_fit([arm], [reward]) (with the round's context
    for a contextual policy)."""
    from mabwiser.mab import MAB

    assert spec.mabwiser is not None
    rounds = len(world.value)
    value = world.value
    chosen = [0] * rounds
    mab = MAB(arms=list(range(ARMS)), learning_policy=spec.mabwiser(), seed=SEED + seed)
    first = ARMS if spec.warmup else 0
    predict, partial_fit = mab.predict, mab.partial_fit
    if spec.contextual:
        assert world.vector is not None
        vector = world.vector
        mab.fit([], [], contexts=np.empty((0, len(FEATURES))))  # nothing learnt: the ridge prior
        gc.collect()
        t0 = time.perf_counter_ns()
        for i in range(rounds):
            arm = predict(contexts=vector[i])
            partial_fit([arm], [value[i][arm]], contexts=vector[i])
            chosen[i] = arm
        return score(chosen, world, (time.perf_counter_ns() - t0) / 1e9)
    if not spec.warmup:
        mab.fit([], [])  # nothing learnt: Beta(1, 1) priors; MABWiser refuses predict() before a fit
    gc.collect()
    t0 = time.perf_counter_ns()
    for i in range(first):  # one pull of each arm, in arm order (River's burn_in=1 does the same)
        (mab.fit if i == 0 else partial_fit)([i], [value[i][i]])
        chosen[i] = i
    for i in range(first, rounds):
        arm = predict()
        partial_fit([arm], [value[i][arm]])
        chosen[i] = arm
    elapsed = time.perf_counter_ns() - t0
    return score(chosen, world, elapsed / 1e9)


def run_river(spec: PolicySpec, world: World, seed: int) -> Run:
    """River: pull(arm_ids) then update(arm, reward)."""
    assert spec.river is not None
    rounds = len(world.value)
    value = world.value
    chosen = [0] * rounds
    policy = spec.river(SEED + seed)
    arm_ids = list(range(ARMS))
    pull, update = policy.pull, policy.update
    gc.collect()
    t0 = time.perf_counter_ns()
    for i in range(rounds):
        arm = pull(arm_ids)
        update(arm, value[i][arm])
        chosen[i] = arm
    elapsed = time.perf_counter_ns() - t0
    return score(chosen, world, elapsed / 1e9)


def peer_versions() -> dict[str, str | None]:
    """The installed version of each peer, None if it is not importable."""
    versions: dict[str, str | None] = {}
    for name, module in (("mabwiser", "mabwiser.mab"), ("river", "river.bandit")):
        try:
            importlib.import_module(module)
        except ImportError:
            versions[name] = None
        else:
            versions[name] = importlib.metadata.version(name)
    return versions


# --- the run ----------------------------------------------------------------------------------------


@dataclass
class Series:
    """The runs of one library on one policy, one per seed."""

    runs: list[Run] = field(default_factory=list)

    def summary(self, rounds: int) -> dict[str, Any]:
        regrets = np.array([run.regret for run in self.runs])
        seconds = sum(run.seconds for run in self.runs)
        return {
            "rounds_per_s": rounds * len(self.runs) / seconds,
            "regret": float(regrets.mean()),
            "regret_se": standard_error(regrets),
            "regret_per_seed": regrets.tolist(),
            "reward": float(np.mean([run.reward for run in self.runs])),
            "seconds": seconds,
        }


SPEED_TARGETS = {
    "speed_vs_limit": LIMIT_TARGET,
    "speed_vs_mabwiser": PER_CALL_TARGET,  # attainable where limit_vs_mabwiser is at least as high
    "group_speed_vs_mabwiser": GROUPED_TARGET,
    "batched_speed_vs_mabwiser": GROUPED_TARGET,
}
"""Each speed ratio with a target and the least it must be."""


def speed_ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The rounds/s ratios of one policy's ``results`` (by library): each rtopt mode to its limit, to each peer
    measured and (but the per-call mode) to the per-call mode, under the mode's prefix; each limit to each
    peer, under the limit's prefix."""
    ratios: dict[str, float | None] = {}
    for limit, prefix in LIMITS.items():
        for lib in PEERS:
            if lib in results:
                ratios[f"{prefix}limit_vs_{lib}"] = results[limit]["rounds_per_s"] / results[lib]["rounds_per_s"]
    for name, mode in RTOPT_MODES.items():
        prefix, ours = mode.prefix, results[name]["rounds_per_s"]
        ratios[f"{prefix}speed_vs_limit"] = ours / results[mode.limit]["rounds_per_s"]
        if name != PER_CALL:
            ratios[f"{prefix}speed_vs_per_call"] = ours / results[PER_CALL]["rounds_per_s"]
        for lib in PEERS:
            if lib in results:
                ratios[f"{prefix}speed_vs_{lib}"] = ours / results[lib]["rounds_per_s"]
    return ratios


def standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def regret_status(ours: Sequence[float], theirs: Sequence[float]) -> tuple[str, float]:
    """PASS if rtopt's mean regret exceeds the peer's by at most the tolerance; (status, tolerance)."""
    mine, peer = np.asarray(ours), np.asarray(theirs)
    tolerance = max(REGRET_TOLERANCE * float(peer.mean()), standard_error(mine - peer))
    return ("PASS" if float(mine.mean() - peer.mean()) <= tolerance else "MISS"), tolerance


def run(
    rounds: int, seeds: int, policies: Sequence[str], *, workdir: Path, err: Console, quiet: bool = False
) -> dict[str, Any]:
    """Measure every library on every policy and seed; return the results as one JSON-ready dict."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    versions = peer_versions()
    series: dict[str, dict[str, Series]] = {key: {} for key in policies}
    for seed in range(seeds):
        worlds = {False: World.draw(rounds, seed)}
        if any(POLICIES[key].contextual for key in policies):
            worlds[True] = World.draw_contextual(rounds, seed)
        t0 = time.perf_counter()
        for key in policies:
            spec = POLICIES[key]
            world = worlds[spec.contextual]
            runs = {name: run_rtopt(spec, world, seed, workdir, mode) for name, mode in RTOPT_MODES.items()}
            for name in RTOPT_MODES:
                if runs[name].chosen != runs[PER_CALL].chosen:
                    raise RuntimeError(f"rtopt {key}: {LABELS[name]} did not decide as {LABELS[PER_CALL]}")
            if versions["mabwiser"] is not None and spec.mabwiser is not None:
                runs["mabwiser"] = run_mabwiser(spec, world, seed)
            if versions["river"] is not None and spec.river is not None:
                runs["river"] = run_river(spec, world, seed)
            for lib, result in runs.items():
                series[key].setdefault(lib, Series()).runs.append(result)
        if not quiet:
            err.print(f"seed {seed + 1}/{seeds} done in {time.perf_counter() - t0:.1f} s", highlight=False)

    results: dict[str, dict[str, Any]] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    status: dict[str, dict[str, str]] = {}
    tolerances: dict[str, dict[str, float]] = {}
    for key in policies:
        results[key] = {lib: s.summary(rounds) for lib, s in series[key].items()}
        per_call = series[key][PER_CALL].runs
        for name in LIMITS:
            seconds = sum(run.limits[name] for run in per_call if run.limits is not None)
            results[key][name] = {"rounds_per_s": rounds * len(per_call) / seconds, "seconds": seconds}
        ratios[key], status[key], tolerances[key] = speed_ratios(results[key]), {}, {}
        for lib in PEERS:
            if lib not in results[key]:
                continue
            ours, peer = results[key][PER_CALL], results[key][lib]
            ratios[key][f"regret_vs_{lib}"] = ours["regret"] / peer["regret"] if peer["regret"] > 0 else None
            verdict, tolerance = regret_status(ours["regret_per_seed"], peer["regret_per_seed"])
            status[key][f"regret_vs_{lib}"] = verdict
            tolerances[key][f"regret_vs_{lib}"] = tolerance
        for ratio, bound in SPEED_TARGETS.items():
            if ratio in ratios[key]:
                status[key][ratio] = "PASS" if ratios[key][ratio] >= bound else "MISS"
    return {
        "results": results,
        "ratios": ratios,
        "status": status,
        "tolerances": tolerances,
        "targets": {
            **{ratio: {"op": ">=", "value": bound} for ratio, bound in SPEED_TARGETS.items()},
            "regret_vs_peer": {
                "op": "<=",
                "value": "peer mean regret + max(10 % of it, 1 SE of the paired per-seed differences)",
                "relative_tolerance": REGRET_TOLERANCE,
            },
        },
        "peers": versions,
        "config": {
            "rounds": rounds,
            "seeds": seeds,
            "policies": list(policies),
            "arms": ARMS,
            "means": MEANS.round(6).tolist(),
            "hyper_parameters": {key: POLICIES[key].hyper for key in policies},
            "rtopt_options": {key: POLICIES[key].rtopt_options for key in policies},
            "durability": {name: mode.durability for name, mode in RTOPT_MODES.items()},
            "group_commit": GROUP_COMMIT,
            "batch": {name: mode.batch for name, mode in RTOPT_MODES.items()},
            "seed": SEED,
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "numpy": np.__version__,
            "machine": platform.machine(),
            "load_average": load,
        },
        "elapsed_s": time.perf_counter() - started,
    }


# --- output -----------------------------------------------------------------------------------------


def format_status(status: str | None) -> str:
    if status is None:
        return "—"
    return "[green]PASS[/green]" if status == "PASS" else "[red]MISS[/red]"


def format_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def speed_targets(ratios: dict[str, float | None], status: dict[str, str], mode: Mode) -> str:
    """The speed targets of one rtopt ``mode`` and whether they were met; a miss against MABWiser says when
    the mode's limit itself is below the target."""
    shown = []
    for against, ratio in (("limit", "speed_vs_limit"), ("MABWiser", "speed_vs_mabwiser")):
        ratio = mode.prefix + ratio
        if ratio not in SPEED_TARGETS or ratio not in status:
            continue
        bound = SPEED_TARGETS[ratio]
        text = f"≥ {bound:g}x {against} {format_status(status[ratio])}"
        allowed = ratios.get(f"{LIMITS[mode.limit]}limit_vs_mabwiser")
        if against == "MABWiser" and allowed is not None and allowed < bound:
            text += f" (limit {allowed:.2f}x)"
        shown.append(text)
    return " · ".join(shown)


def render(results: dict[str, Any], console: Console) -> None:
    """The results as a rich table plus a few lines on the world and the hyper-parameters."""
    config = results["config"]
    table = Table(
        title=f"bandits: {config['rounds']:,} rounds x {config['seeds']} seeds, {config['arms']} arms",
        title_justify="left",
    )
    table.add_column("policy")
    table.add_column("library")
    table.add_column("rounds/s", justify="right")
    table.add_column("regret (± SE)", justify="right")
    table.add_column("to limit", justify="right")
    table.add_column("to MABWiser", justify="right")
    table.add_column("to River", justify="right")
    table.add_column("targets: rtopt rounds/s, regret")
    for key in config["policies"]:
        ratios, status = results["ratios"][key], results["status"][key]
        label = POLICIES[key].label
        for lib in LIBRARIES:
            figures = results["results"][key].get(lib)
            if figures is None:
                continue
            regret = f"{figures['regret']:,.1f} ± {figures['regret_se']:,.1f}" if "regret" in figures else "—"
            row = [label, LABELS[lib], f"{figures['rounds_per_s']:,.0f}", regret]
            label = ""
            if lib in LIMITS:
                row += ["", *(format_ratio(ratios.get(f"{LIMITS[lib]}limit_vs_{peer}")) for peer in PEERS), ""]
            elif lib in RTOPT_MODES:
                mode = RTOPT_MODES[lib]
                row += [format_ratio(ratios[f"{mode.prefix}speed_vs_limit"])]
                row += [format_ratio(ratios.get(f"{mode.prefix}speed_vs_{peer}")) for peer in PEERS]
                row += [speed_targets(ratios, status, mode)]
            else:
                regret_ratio = ratios[f"regret_vs_{lib}"]
                shown = "—" if regret_ratio is None else f"{regret_ratio:.3f}"
                row += ["", "", "", f"regret {shown} {format_status(status.get(f'regret_vs_{lib}'))}"]
            table.add_row(*row)
        table.add_section()
    console.print(table)
    for lib, version in results["peers"].items():
        if version is None:
            console.print(
                f"{LABELS[lib]} is not installed: rtopt measured without it (pip install -e '.[bench]')",
                highlight=False,
            )
    means = ", ".join(f"{m:.2f}" for m in config["means"])
    group = config["group_commit"]
    versions = ", ".join(f"{LABELS[lib]} {v}" for lib, v in results["peers"].items() if v is not None)
    console.print(
        f"world: success rates {means}; the same pre-drawn rewards[round, arm] for every library; regret is the"
        f" cumulative pseudo-regret sum(mu* - mu[arm]); rtopt = Engine.decide + Engine.feedback, every event"
        f" committed (SQLite WAL, durability='process') before the call returns, or by the engine's committer"
        f" thread in groups (durability='group', commit_interval_ms {group['commit_interval_ms']:g},"
        f" commit_every {group['commit_every']:,}; the clock stops after Engine.flush()), or at the end of each"
        f" Engine.batch() of {BATCH:,} rounds (the same decisions as per call, checked, hence the same regret);"
        f" raw sqlite3 = the rows the per-call run wrote (chain values and head anchor included) written again"
        f" into a log with rtopt's schema, in rtopt's commits or {BATCH:,} rounds a commit, and nothing else"
        f" (group and batched rtopt are held to the latter); regret 'equal' = within"
        f" max({REGRET_TOLERANCE:.0%} of the peer's, 1 SE of the paired differences over seeds); LinUCB plays"
        f" a world of its own (success rate x . w_arm for a context x of {len(FEATURES)} features)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for key in config["policies"]:
        console.print(
            f"{POLICIES[key].label}: {config['hyper_parameters'][key]}", highlight=False, markup=False, soft_wrap=True
        )
    console.print(
        f"{versions or 'no peer'}; Python {config['python']}, SQLite {config['sqlite']}, numpy {config['numpy']};"
        f" {results['elapsed_s']:.1f} s in all; load average {config['load_average']:.2f} at the start",
        highlight=False,
        soft_wrap=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help=f"rounds per run (default {DEFAULTS['rounds']:,})")
    parser.add_argument("--seeds", type=int, help=f"seeds (worlds) to average over (default {DEFAULTS['seeds']})")
    parser.add_argument(
        "--policy",
        action="append",
        choices=list(POLICIES),
        help="measure only this policy (repeatable; default: all of them)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny run (a few seconds), for smoke tests")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object on stdout")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULTS
    rounds = args.rounds if args.rounds is not None else sizes["rounds"]
    seeds = args.seeds if args.seeds is not None else sizes["seeds"]
    if rounds < 2 * ARMS or seeds < 1:
        parser.error(f"--rounds must be at least {2 * ARMS} and --seeds at least 1")
    policies = list(dict.fromkeys(args.policy)) if args.policy else list(POLICIES)

    err = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="rtopt-bandits-"))
    try:
        results = run(rounds, seeds, policies, workdir=workdir, err=err)
    finally:
        for file in workdir.iterdir():
            file.unlink()
        workdir.rmdir()
    if args.json:
        print(json.dumps(results))
    else:
        console = Console()
        if not console.is_terminal:  # a pipe or a file: do not squeeze the table into 80 columns
            console = Console(width=max(console.width, 132))
        render(results, console)
    return 0


if __name__ == "__main__":
    sys.exit(main())

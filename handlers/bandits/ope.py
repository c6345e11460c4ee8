"""Off-policy evaluation: what a target policy would have earned on a log another policy made.

A logged round holds the arm the logging policy chose, the probability it had of choosing it (its
propensity, which every :class:`rtopt.Decision` records), the candidates and context it chose among and
the reward observed. Given a target policy (a function giving the probability of each candidate arm), the
estimators below estimate the target's expected reward per round, with a confidence interval:

- :func:`replay`: the replay (rejection) method of Li, Chu, Langford and Wang (2011), "Unbiased offline
  evaluation of contextual-bandit-based news article recommendation algorithms" (WSDM), keeping the rounds
  where the target would have chosen the logged arm; for a non-uniform logging policy, an optional first
  rejection step turns the log into a uniformly logged one (Dudík, Erhan, Langford and Li (2012),
  "Sample-efficient nonstationary policy evaluation for contextual bandits", UAI);
- :func:`ips`: inverse propensity scoring (Horvitz and Thompson (1952), "A generalization of sampling
  without replacement from a finite universe"), the mean of importance-weighted rewards;
- :func:`snips`: self-normalised IPS (Swaminathan and Joachims (2015), "The self-normalized estimator for
  counterfactual learning", NeurIPS), which divides by the sum of the weights instead of the count.

Each returns an :class:`Estimate` with the effective sample size and the largest weight as diagnostics.
Weights may be clipped at a level ``clip`` (truncated importance sampling: Ionides (2008), "Truncated
importance sampling", JCGS; Bottou et al. (2013), "Counterfactual reasoning and learning systems", JMLR),
which trades a downward bias for variance; the level and the number of clipped rounds are reported.

:func:`rounds_from_log` builds the rounds of one experiment from an rtopt log.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import msgspec
import numpy as np
import scipy  # its submodules load on first use
from rtopt.handlers.bandits.events import ArmUpdated

from rtopt import Decision, Engine, ExperimentDefined
from rtopt.arguments import in_range, invalid, positive, whole

TargetPolicy = Callable[[Mapping[str, float] | None, Sequence[str]], Mapping[str, float]]
"""``policy(context, candidates)`` -> the probability of each candidate arm (arms left out have 0).

The probabilities must be non-negative and sum to 1 over ``candidates``; a deterministic policy gives
one arm probability 1. It must be a pure function of its arguments: the estimators may call it once per
distinct candidate list for rounds without context.
"""

_PROBABILITY_TOLERANCE = 1e-6
# the estimators' generators are seeded by (stream, seed), so that a seed equal to the one that generated
# the log (an easy accident in a simulation) does not replay the very draws that chose the logged arms
_REPLAY_STREAM = 0x5E9_1A7
_BOOTSTRAP_STREAM = 0xB0_075


class LoggedRound(msgspec.Struct, frozen=True):
    """One logged bandit round: the ``arm`` chosen with probability ``propensity`` among ``candidates``
    given ``context``, and the ``reward`` observed, in [0, 1].

    >>> LoggedRound(arm="a", propensity=0.5, reward=1.0, candidates=["a", "b"]).propensity
    0.5
    """

    arm: str
    propensity: float
    reward: float
    candidates: list[str]
    context: dict[str, float] | None = None
    decision_id: str | None = None


class BanditLog(msgspec.Struct, frozen=True):
    """The logged rounds of one experiment, and how many of its decisions had no learnt reward."""

    experiment: str
    rounds: list[LoggedRound]
    unanswered: int


class Estimate(msgspec.Struct, frozen=True):
    """An estimate of a target policy's value (expected reward per round) with its confidence interval.

    ``interval`` says how ``low`` and ``high`` were computed (``"normal"``, ``"delta"`` or
    ``"bootstrap"``). ``rounds`` is the number of logged rounds given; ``effective_sample_size`` is Kish's
    (sum w)^2 / sum w^2 over the weights used (for :func:`replay`, the number of rounds accepted), and
    ``max_weight`` the largest weight used. ``clip`` is the clip level applied (None: no clipping) and
    ``clipped`` the number of rounds whose weight it lowered.

    >>> e = Estimate("ips", 0.5, 0.4, 0.6, 0.95, "normal", 100, 80.0, 2.0)
    >>> e.low <= e.value <= e.high
    True
    """

    estimator: str
    value: float
    low: float
    high: float
    level: float
    interval: str
    rounds: int
    effective_sample_size: float
    max_weight: float
    clip: float | None = None
    clipped: int = 0

    def covers(self, value: float) -> bool:
        """True if ``value`` lies in the confidence interval."""
        return self.low <= value <= self.high


# --- target policies ---------------------------------------------------------------------------------


def always(arm: str, otherwise: TargetPolicy | None = None) -> TargetPolicy:
    """The deterministic policy that always chooses ``arm``; where ``arm`` is not a candidate it follows
    ``otherwise`` (None: such a round raises ``ValueError``).

    >>> always("b")(None, ["a", "b"])
    {'b': 1.0}
    """

    def policy(context: Mapping[str, float] | None, candidates: Sequence[str]) -> Mapping[str, float]:
        if arm in candidates:
            return {arm: 1.0}
        if otherwise is None:
            raise ValueError(f"always({arm!r}): {arm!r} is not among the candidates {list(candidates)!r}")
        return otherwise(context, candidates)

    return policy


def uniform(context: Mapping[str, float] | None, candidates: Sequence[str]) -> Mapping[str, float]:
    """The policy that chooses uniformly among the candidates.

    >>> uniform(None, ["a", "b"])
    {'a': 0.5, 'b': 0.5}
    """
    return dict.fromkeys(candidates, 1.0 / len(candidates))


def fixed(probabilities: Mapping[str, float]) -> TargetPolicy:
    """A context-free stochastic policy: ``probabilities`` (any non-negative weights) renormalised over the
    candidates offered.

    >>> fixed({"a": 0.25, "b": 0.25, "c": 0.5})(None, ["a", "b"])
    {'a': 0.5, 'b': 0.5}
    """
    if any(not p >= 0.0 for p in probabilities.values()):
        raise invalid("probabilities", dict(probabilities), "must be non-negative")

    def policy(context: Mapping[str, float] | None, candidates: Sequence[str]) -> Mapping[str, float]:
        total = sum(probabilities.get(arm, 0.0) for arm in candidates)
        if total <= 0.0:
            raise ValueError(f"fixed policy: no probability on any of the candidates {list(candidates)!r}")
        return {arm: probabilities.get(arm, 0.0) / total for arm in candidates}

    return policy


# --- reading an rtopt log ----------------------------------------------------------------------------


def rounds_from_log(engine: Engine, experiment: str) -> BanditLog:
    """The logged rounds of ``experiment``: each Decision joined with the reward learnt from its feedback.

    Rewards are those of the ``ArmUpdated`` events the bandit handler derives (matched by their
    ``decision_id``): the reward the policy actually learnt, as the experiment's options define it (by
    default 1 when the feedback says success with quality at least ``quality_threshold``, else 0), so
    feedback the handler rejected (unknown, expired, duplicate or mismatched) gives no round. A decision
    with no learnt reward is left out and counted in ``unanswered``; leaving it out is unbiased only if
    whether feedback arrives does not depend on the reward. A decision that records no candidates is given
    the experiment's arms. Only the public API is used: ``engine.read`` of ExperimentDefined, Decision and
    ArmUpdated events, so an engine opened with ``Engine.open(path, read_only=True, handlers=[])`` will do.

    Thompson sampling's propensities are the probabilities that the chosen arm's posterior draw was the
    highest, computed by quadrature (:mod:`rtopt.handlers.bandits.policies.propensity`) to a relative
    error of about 1e-4, so IPS on such a log is unbiased. Its weights are still large where the target
    favours arms the policy has all but abandoned (the effective sample size and the largest weight show
    it), and there the normal intervals, which treat the adaptive log's rounds as independent, cover the
    truth less often than their level says. Logs written before (bandit handler version 7) recorded
    estimates from 256 posterior draws, at least 1/256, which biased IPS down for such targets.

    >>> from rtopt.handlers.bandits import BanditHandler
    >>> with Engine.open(":memory:", seed=1, handlers=[BanditHandler()]) as engine:
    ...     _ = engine.define_experiment("g", arms=["a", "b"], time=0.0)
    ...     d = engine.decide("g", time=1.0)
    ...     _ = engine.feedback(d.id, success=True, quality_score=0.9, response_time_ms=80.0, time=2.0)
    ...     _ = engine.decide("g", time=3.0)
    ...     log = rounds_from_log(engine, "g")
    >>> len(log.rounds), log.unanswered, log.rounds[0].reward, log.rounds[0].candidates
    (1, 1, 1.0, ['a', 'b'])
    """
    arms: list[str] = []
    decisions: dict[str, Decision] = {}
    rewards: dict[str, float] = {}
    for envelope in engine.read(types=[ExperimentDefined, Decision, ArmUpdated]):
        event = envelope.payload
        if event.experiment != experiment:
            continue
        if isinstance(event, ExperimentDefined):
            arms = arms or list(event.arms)
        elif isinstance(event, Decision):
            decisions[envelope.id] = event
        elif event.decision_id is not None and event.decision_id not in rewards:
            rewards[event.decision_id] = event.reward
    rounds = [
        LoggedRound(
            arm=decision.arm,
            propensity=decision.propensity,
            reward=rewards[decision_id],
            candidates=list(decision.candidates) or list(arms),
            context=decision.context,
            decision_id=decision_id,
        )
        for decision_id, decision in decisions.items()
        if decision_id in rewards
    ]
    return BanditLog(experiment=experiment, rounds=rounds, unanswered=len(decisions) - len(rounds))


# --- the estimators ----------------------------------------------------------------------------------


def target_probabilities(rounds: Sequence[LoggedRound], policy: TargetPolicy) -> np.ndarray:
    """The probability the target ``policy`` gives each round's logged arm.

    >>> target_probabilities([LoggedRound("a", 0.5, 1.0, ["a", "b"])], fixed({"a": 0.3, "b": 0.7}))
    array([0.3])
    """
    out = np.empty(len(rounds))
    cache: dict[tuple[str, ...], Mapping[str, float]] = {}
    for i, logged in enumerate(rounds):
        if logged.context is None:
            key = tuple(logged.candidates)
            distribution = cache.get(key)
            if distribution is None:
                distribution = cache[key] = _checked(policy(None, logged.candidates), logged.candidates, i)
        else:
            distribution = _checked(policy(logged.context, logged.candidates), logged.candidates, i)
        out[i] = distribution.get(logged.arm, 0.0)
    return out


def _checked(distribution: Mapping[str, float], candidates: Sequence[str], index: int) -> Mapping[str, float]:
    outside = [arm for arm, p in distribution.items() if p != 0.0 and arm not in candidates]
    if outside:
        raise ValueError(f"round {index}: the target policy gives probability to {outside}, not candidates")
    values = list(distribution.values())
    if any(not (0.0 <= p <= 1.0 + _PROBABILITY_TOLERANCE) for p in values):
        raise ValueError(f"round {index}: the target policy gives probabilities outside [0, 1]: {distribution}")
    if abs(math.fsum(values) - 1.0) > _PROBABILITY_TOLERANCE:
        raise ValueError(f"round {index}: the target policy's probabilities sum to {math.fsum(values)}, not 1")
    return distribution


def _logged(rounds: Sequence[LoggedRound]) -> tuple[np.ndarray, np.ndarray]:
    """Propensities and rewards as arrays, after checking them."""
    if not rounds:
        raise invalid("rounds", rounds, "no logged rounds to evaluate on")
    propensity = np.fromiter((r.propensity for r in rounds), float, len(rounds))
    reward = np.fromiter((r.reward for r in rounds), float, len(rounds))
    bad = np.flatnonzero(~((propensity > 0.0) & (propensity <= 1.0)))
    if bad.size:
        raise invalid(f"rounds[{int(bad[0])}].propensity", float(propensity[bad[0]]), "must be in (0, 1]")
    bad = np.flatnonzero(~((reward >= 0.0) & (reward <= 1.0)))
    if bad.size:
        raise invalid(f"rounds[{int(bad[0])}].reward", float(reward[bad[0]]), "must be in [0, 1]")
    return propensity, reward


def _weights(
    rounds: Sequence[LoggedRound], policy: TargetPolicy, clip: float | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Importance weights target / logging probability (clipped at ``clip``), rewards, rounds clipped."""
    propensity, reward = _logged(rounds)
    weight = target_probabilities(rounds, policy) / propensity
    clipped = 0
    if clip is not None:
        positive("clip", clip)
        clipped = int(np.count_nonzero(weight > clip))
        weight = np.minimum(weight, clip)
    return weight, reward, clipped


def _z(level: float) -> float:
    in_range("level", level, 0.0, 1.0, low_open=True, high_open=True)
    return float(scipy.stats.norm.ppf(0.5 + level / 2.0))


def _kish(weight: np.ndarray) -> float:
    squares = float(np.dot(weight, weight))
    return float(weight.sum()) ** 2 / squares if squares > 0.0 else 0.0


def ips(
    rounds: Sequence[LoggedRound], policy: TargetPolicy, *, level: float = 0.95, clip: float | None = None
) -> Estimate:
    """Inverse propensity scoring: the mean over rounds of w * reward, w = target / logging probability.

    Unbiased without clipping when every arm the target may choose had a positive logging probability
    (also on adaptive logs such as Thompson sampling's, whose propensities are conditional on the past).
    The interval is the normal approximation value ± z * sd(w * reward) / sqrt(n), which treats the rounds
    as independent (an approximation on adaptive logs).

    >>> rounds = [LoggedRound("a", 0.5, 1.0, ["a", "b"]), LoggedRound("b", 0.5, 0.0, ["a", "b"])] * 50
    >>> e = ips(rounds, always("a"))
    >>> round(e.value, 3), round(e.low, 3), round(e.high, 3), e.max_weight
    (1.0, 0.803, 1.197, 2.0)
    """
    z = _z(level)
    weight, reward, clipped = _weights(rounds, policy, clip)
    weighted = weight * reward
    n = len(weighted)
    value = float(weighted.mean())
    half = z * float(weighted.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return Estimate(
        estimator="ips",
        value=value,
        low=value - half,
        high=value + half,
        level=level,
        interval="normal",
        rounds=n,
        effective_sample_size=_kish(weight),
        max_weight=float(weight.max()),
        clip=clip,
        clipped=clipped,
    )


def snips(
    rounds: Sequence[LoggedRound],
    policy: TargetPolicy,
    *,
    level: float = 0.95,
    clip: float | None = None,
    interval: Literal["delta", "bootstrap"] = "delta",
    resamples: int = 1000,
    seed: int = 0,
) -> Estimate:
    """Self-normalised IPS: sum(w * reward) / sum(w), always within the reward range [0, 1].

    Biased by O(1/n) but consistent, and usually of much lower variance than :func:`ips` when weights are
    large. ``interval="delta"`` (the default) gives value ± z * se with the delta-method standard error
    se^2 = n / (n - 1) * sum(w^2 (reward - value)^2) / sum(w)^2 (Hesterberg (1995), "Weighted average
    importance sampling and defensive mixture distributions"); ``"bootstrap"`` gives the percentile
    interval of ``resamples`` bootstrap replicates drawn by a generator seeded by ``seed``. Raises
    ``ValueError`` when the target gives no logged arm a positive probability (sum(w) = 0).

    >>> rounds = [LoggedRound("a", 0.5, 1.0, ["a", "b"]), LoggedRound("a", 0.5, 0.0, ["a", "b"])] * 50
    >>> e = snips(rounds, always("a"))
    >>> round(e.value, 3), round(e.low, 3), round(e.high, 3), e.effective_sample_size
    (0.5, 0.402, 0.598, 100.0)
    """
    z = _z(level)
    weight, reward, clipped = _weights(rounds, policy, clip)
    total = float(weight.sum())
    if total <= 0.0:
        raise ValueError("snips: the target policy gives none of the logged arms a positive probability")
    n = len(weight)
    value = float(np.dot(weight, reward)) / total
    if interval == "delta":
        if n > 1:
            variance = n / (n - 1) * float(np.sum((weight * (reward - value)) ** 2)) / total**2
            half = z * math.sqrt(variance)
        else:
            half = math.inf
        low, high = value - half, value + half
    elif interval == "bootstrap":
        whole("resamples", resamples, at_least=2)
        rng = np.random.default_rng([_BOOTSTRAP_STREAM, seed])
        index = rng.integers(0, n, size=(resamples, n))
        w, wr = weight[index].sum(axis=1), (weight * reward)[index].sum(axis=1)
        replicates = np.divide(wr, w, out=np.full(resamples, np.nan), where=w > 0.0)
        replicates = replicates[~np.isnan(replicates)]
        alpha = (1.0 - level) / 2.0
        low, high = (float(q) for q in np.quantile(replicates, [alpha, 1.0 - alpha]))
    else:
        raise invalid("interval", interval, "must be 'delta' or 'bootstrap'")
    return Estimate(
        estimator="snips",
        value=value,
        low=low,
        high=high,
        level=level,
        interval=interval,
        rounds=n,
        effective_sample_size=_kish(weight),
        max_weight=float(weight.max()),
        clip=clip,
        clipped=clipped,
    )


def replay(
    rounds: Sequence[LoggedRound],
    policy: TargetPolicy,
    *,
    level: float = 0.95,
    seed: int = 0,
    floor: float | Literal["min"] | None = None,
) -> Estimate:
    """The replay method: the mean reward of the rounds where the target's choice matches the logged arm.

    Li et al. (2011) replay each round, ask the target for an arm, and keep the round if it is the logged
    one; the value is the mean reward of the kept rounds, unbiased when the logging policy chose uniformly
    among the candidates. A stochastic target's choice is drawn by a generator seeded by ``seed``, keeping
    round i with probability target(arm_i). For a context-free, stationary bandit and a
    deterministic target, the kept rounds are draws of the target's arm whatever the logging policy, so the
    plain method is valid there too.

    For another non-uniform logging policy give ``floor``, a lower bound of every candidate's logging
    probability (``"min"``: the smallest logged propensity): each round is first kept with probability
    floor / propensity, which leaves every candidate equally likely (Dudík et al. 2012), at the price of
    discarding most rounds when propensities are uneven; rounds with propensity below ``floor`` are always
    kept (a bias). The interval is the normal approximation over the kept rounds; ``effective_sample_size``
    is the number kept and ``max_weight`` is 1. Raises ``ValueError`` if no round is kept.

    >>> rounds = [LoggedRound("a", 0.5, 1.0, ["a", "b"]), LoggedRound("b", 0.5, 0.0, ["a", "b"])] * 50
    >>> e = replay(rounds, always("a"))
    >>> e.value, e.effective_sample_size
    (1.0, 50.0)
    """
    z = _z(level)
    propensity, reward = _logged(rounds)
    keep = target_probabilities(rounds, policy)
    if floor is not None:
        bound = float(propensity.min()) if floor == "min" else float(floor)
        if not 0.0 < bound <= 1.0:
            raise invalid("floor", floor, "must be in (0, 1] or 'min'")
        keep = keep * np.minimum(1.0, bound / propensity)
    draws = np.random.default_rng([_REPLAY_STREAM, seed]).random(len(rounds))
    kept = reward[draws < keep]
    if kept.size == 0:
        raise ValueError("replay: no logged round matches the target policy's choice")
    value = float(kept.mean())
    if kept.size > 1:
        half = z * float(kept.std(ddof=1)) / math.sqrt(kept.size)
        low, high = value - half, value + half
    else:
        low, high = 0.0, 1.0
    return Estimate(
        estimator="replay",
        value=value,
        low=low,
        high=high,
        level=level,
        interval="normal",
        rounds=len(rounds),
        effective_sample_size=float(kept.size),
        max_weight=1.0,
    )


def evaluate(
    rounds: Sequence[LoggedRound],
    policy: TargetPolicy,
    *,
    level: float = 0.95,
    clip: float | None = None,
    seed: int = 0,
    floor: float | Literal["min"] | None = None,
) -> dict[str, Estimate]:
    """Every estimator on the same rounds: ``{"replay": ..., "ips": ..., "snips": ...}`` (SNIPS by the
    delta method; ``clip`` applies to IPS and SNIPS, ``seed`` and ``floor`` to replay).

    >>> rounds = [LoggedRound("a", 0.5, 1.0, ["a", "b"]), LoggedRound("b", 0.5, 0.0, ["a", "b"])] * 50
    >>> {name: (round(e.value, 2), e.effective_sample_size) for name, e in evaluate(rounds, uniform).items()}
    {'replay': (0.42, 55.0), 'ips': (0.5, 100.0), 'snips': (0.5, 100.0)}
    """
    return {
        "replay": replay(rounds, policy, level=level, seed=seed, floor=floor),
        "ips": ips(rounds, policy, level=level, clip=clip),
        "snips": snips(rounds, policy, level=level, clip=clip),
    }

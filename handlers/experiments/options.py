"""The options of an A/B test or a canary rollout, checked when the experiment is defined.

``ExperimentDefined.options`` values are ``bool | int | float | str | list[str]``, so lists of numbers
are given as text: ``weights="0.9,0.1"`` or ``weights=["0.9", "0.1"]`` (any positive numbers, normalised:
``"90,10"`` is the same), and canary ``steps="5,25,50,100"`` (percent of traffic for the challenger).
"""

from __future__ import annotations

import itertools
import math
from typing import Annotated, Literal

from msgspec import Meta
from rtopt.handlers.bandits.options import BanditOptions
from rtopt.handlers.bandits.rewards import REWARD_OPTIONS, RewardOptions
from rtopt.handlers.options import typed_options

from rtopt import ExperimentDefined, InvalidEvent

Positive = Annotated[float, Meta(gt=0.0)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
Level = Annotated[float, Meta(gt=0.0, lt=1.0)]
NonNegative = Annotated[float, Meta(ge=0.0)]
AtLeastOne = Annotated[int, Meta(ge=1)]

AB_TEST, CANARY = "ab_test", "canary"
POLICIES = (AB_TEST, CANARY)

GUARDRAIL_OPTIONS = frozenset(
    {
        "guardrails",
        "guardrail_quality_drop",
        "guardrail_cost_rise",
        "guardrail_latency_rise",
        "guardrail_alpha",
        "guardrail_min_samples",
    }
)
COMMON_OPTIONS = (
    frozenset({"start", "salt", "buckets", "metric", "conversion", "reward_threshold", "analyse_every"})
    | frozenset({"covariate", "srm_threshold", "tau2", "msprt_min_samples", "alpha"})
    | REWARD_OPTIONS
    | GUARDRAIL_OPTIONS
)
POLICY_OPTIONS: dict[str, frozenset[str]] = {
    AB_TEST: COMMON_OPTIONS
    | frozenset(
        {
            "control",
            "allocation",
            "weights",
            "floor",
            "burn_in",
            "reallocate_every",
            "adaptive_draws",
            "min_samples",
            "max_samples",
            "max_duration_s",
            "min_improvement",
            "sequential",
        }
    ),
    CANARY: COMMON_OPTIONS | frozenset({"steps", "step_min_feedback"}),
}


class ExperimentOptions(RewardOptions, frozen=True, forbid_unknown_fields=True):
    """Every option of an A/B test (policy ``ab_test``) or a canary rollout (policy ``canary``).

    Lifecycle: an experiment starts in *draft*; ``start=True`` starts it when it is defined (an
    ExperimentStarted event is derived).

    Assignment: a unit (``engine.decide(..., unit=...)``) is hashed with ``salt`` (default: the experiment
    name) into one of ``buckets`` buckets with BLAKE2b; arms own consecutive bucket ranges in proportion to
    the allocation. A decision without a unit draws from the seeded generator. ``allocation`` is
    ``"fixed"`` (equal shares), ``"weighted"`` (``weights``, one per arm; the default when weights are
    given) or ``"adaptive"``: equal shares (or ``weights``) until every arm has ``burn_in`` feedback, then
    every ``reallocate_every`` feedback each arm gets ``floor + (1 - k * floor) * P(best)``, P(best) from
    ``adaptive_draws`` draws of Beta posteriors of the reward (rewards as fractional successes).

    Learning: ``metric`` is the quantity tested with Welch's t-test and the mSPRT (``"reward"``, the
    composite reward of :func:`rtopt.handlers.bandits.rewards.reward` under the ``reward`` / ``w_*`` options, by
    default quality when successful and 0 otherwise; or ``"quality"``); ``conversion`` is the binary
    outcome of the two-proportion z-test (``"success"``, or ``"reward"``: reward > ``reward_threshold``).
    ``covariate`` names the ``Feedback.metadata`` key holding a pre-period value of the metric for the
    unit, parsed as a float (missing or unparseable values are left out of CUPED).

    Analysis every ``analyse_every`` analysed feedback (while running): an ExperimentAnalysed event, the
    sample-ratio check at ``srm_threshold``, the guardrails, and the stopping rule. ``tau2`` is the mixing
    variance of the mSPRT: 0.01 (tau = 0.1, a 10-point effect on a [0, 1] metric) by default; it looks once
    every arm has ``msprt_min_samples`` feedback, at each analysis.

    Stopping (``ab_test``): once every arm has ``min_samples`` feedback, a variant whose Holm-adjusted
    p-value (the always-valid mSPRT one if ``sequential``, else Welch's at that single look) is below
    ``alpha`` and whose relative improvement on the metric is at least ``min_improvement`` wins; the test
    also concludes when every variant is decided, at ``max_samples`` feedback per arm, or after
    ``max_duration_s`` seconds of event time since the start (pauses included; checked as feedback
    arrives and at every ``Engine.tick``, so an idle test ends too). A fixed-horizon test (``sequential=False``)
    concludes at the first analysis with ``min_samples`` per arm. After a sample ratio mismatch no winner
    is declared.

    Guardrails (``guardrails=True``), each variant against the control once both have
    ``guardrail_min_samples`` feedback: mean quality down by more than ``guardrail_quality_drop`` (5 %),
    mean cost up by more than ``guardrail_cost_rise`` (10 %), p95 latency up by more than
    ``guardrail_latency_rise`` (20 %), each also significant at ``guardrail_alpha`` (one-sided Welch test;
    for p95, a two-proportion test of the share of responses slower than the control's p95). A breach
    pauses an A/B test and rolls a canary back.

    Canary: the challenger (the second arm) gets ``steps`` percent of the traffic in turn, moving on
    after ``step_min_feedback`` challenger feedback at a step when no guardrail is breached; the last
    step (100 %) completes the rollout and promotes the challenger.

    >>> ExperimentOptions().alpha, ExperimentOptions().tau2, ExperimentOptions().guardrail_latency_rise
    (0.05, 0.01, 0.2)
    """

    start: bool = False
    salt: str | None = None
    buckets: Annotated[int, Meta(ge=2, le=1_000_000)] = 10_000
    control: str | None = None
    allocation: Literal["fixed", "weighted", "adaptive"] | None = None
    weights: str | list[str] | None = None
    floor: Level = 0.01
    burn_in: Annotated[int, Meta(ge=0)] = 100
    reallocate_every: AtLeastOne = 50
    adaptive_draws: Annotated[int, Meta(ge=100, le=100_000)] = 2_000
    metric: Literal["reward", "quality"] = "reward"
    conversion: Literal["success", "reward"] = "success"
    reward_threshold: Unit = 0.5
    reward: Literal["binary", "composite"] = "composite"
    covariate: str = "pre_period"
    analyse_every: AtLeastOne = 100
    srm_threshold: Level = 0.001
    tau2: Positive = 0.01
    msprt_min_samples: Annotated[int, Meta(ge=2)] = 30
    alpha: Level = 0.05
    min_samples: AtLeastOne = 100
    max_samples: AtLeastOne | None = None
    max_duration_s: Positive | None = None
    min_improvement: NonNegative = 0.0
    sequential: bool = True
    guardrails: bool = True
    guardrail_quality_drop: Level = 0.05
    guardrail_cost_rise: Positive = 0.10
    guardrail_latency_rise: Positive = 0.20
    guardrail_alpha: Level = 0.001
    guardrail_min_samples: Annotated[int, Meta(ge=2)] = 50
    steps: str | list[str] = "5,25,50,100"
    step_min_feedback: AtLeastOne = 100

    def reward_options(self) -> BanditOptions:
        """The options :func:`rtopt.handlers.bandits.rewards.reward` reads."""
        return BanditOptions(
            reward=self.reward,
            quality_threshold=self.quality_threshold,
            w_quality=self.w_quality,
            w_cost=self.w_cost,
            w_latency=self.w_latency,
            w_satisfaction=self.w_satisfaction,
            cost_budget_usd=self.cost_budget_usd,
            latency_sla_ms=self.latency_sla_ms,
        )


def parse_options(definition: ExperimentDefined) -> ExperimentOptions:
    """The typed options of ``definition``; InvalidEvent names an unknown, misplaced or invalid option."""
    policy = definition.policy
    allowed = POLICY_OPTIONS[policy]
    options = typed_options(definition, ExperimentOptions, allowed)
    options.check()
    return options


def numbers(name: str, value: str | list[str]) -> list[float]:
    """Positive finite numbers given as ``"a,b,c"`` or ``["a", "b", "c"]``.

    >>> numbers("weights", "0.9, 0.1"), numbers("weights", ["3", "1"])
    ([0.9, 0.1], [3.0, 1.0])
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        parsed = [float(item) for item in items]
    except ValueError:
        raise InvalidEvent(
            f"options.{name} = {value!r}: numbers separated by commas, or a list of numbers as strings",
            field=f"options.{name}",
            value=value,
        ) from None
    if not parsed or not all(math.isfinite(x) and x > 0.0 for x in parsed):
        raise InvalidEvent(
            f"options.{name} = {value!r}: every number must be positive and finite",
            field=f"options.{name}",
            value=value,
        )
    return parsed


def allocation_kind(options: ExperimentOptions) -> str:
    """``fixed``, ``weighted`` or ``adaptive``: weights given without an allocation mean ``weighted``."""
    if options.allocation is not None:
        return options.allocation
    return "weighted" if options.weights is not None else "fixed"


def initial_weights(definition: ExperimentDefined, options: ExperimentOptions) -> list[float]:
    """The allocation an A/B test starts with: equal shares, or the normalised ``weights``."""
    arms = definition.arms
    kind = allocation_kind(options)
    if options.weights is None:
        if kind == "weighted":
            raise InvalidEvent(
                "options.weights: a weighted allocation needs one weight per arm, such as weights='0.9,0.1'",
                field="options.weights",
                value=None,
            )
        return [1.0 / len(arms)] * len(arms)
    if kind == "fixed":
        raise InvalidEvent(
            "options.weights: a fixed allocation gives every arm the same share; use allocation='weighted'",
            field="options.weights",
            value=options.weights,
        )
    weights = numbers("weights", options.weights)
    if len(weights) != len(arms):
        raise InvalidEvent(
            f"options.weights = {options.weights!r}: {len(weights)} weights for {len(arms)} arms",
            field="options.weights",
            value=options.weights,
        )
    total = sum(weights)
    return [w / total for w in weights]


def canary_steps(options: ExperimentOptions) -> list[float]:
    """The challenger's shares, as fractions, from ``steps`` in percent: increasing, ending at 100.

    >>> canary_steps(ExperimentOptions())
    [0.05, 0.25, 0.5, 1.0]
    """
    steps = numbers("steps", options.steps)
    if any(b <= a for a, b in itertools.pairwise(steps)) or steps[-1] != 100.0:
        raise InvalidEvent(
            f"options.steps = {options.steps!r}: percentages that increase and end at 100",
            field="options.steps",
            value=options.steps,
        )
    return [step / 100.0 for step in steps]


def check_definition(definition: ExperimentDefined) -> ExperimentOptions:
    """Every check of an experiment definition; returns its options."""
    options = parse_options(definition)
    arms = definition.arms
    if definition.policy == CANARY:
        if len(arms) != 2:
            raise InvalidEvent(
                f"arms = {arms!r}: a canary runs over exactly [baseline, challenger]", field="arms", value=arms
            )
        canary_steps(options)
        return options
    if len(arms) < 2:
        raise InvalidEvent(f"arms = {arms!r}: an A/B test needs a control and a variant", field="arms", value=arms)
    if options.control is not None and options.control not in arms:
        raise InvalidEvent(
            f"options.control = {options.control!r}: not one of the arms {arms}",
            field="options.control",
            value=options.control,
        )
    initial_weights(definition, options)
    if allocation_kind(options) == "adaptive" and options.floor * len(arms) > 1.0:
        raise InvalidEvent(
            f"options.floor = {options.floor!r}: {len(arms)} arms cannot each get that share",
            field="options.floor",
            value=options.floor,
        )
    if options.max_samples is not None and options.max_samples < options.min_samples:
        raise InvalidEvent(
            f"options.max_samples = {options.max_samples!r}: below min_samples ({options.min_samples})",
            field="options.max_samples",
            value=options.max_samples,
        )
    return options

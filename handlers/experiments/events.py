"""Events of A/B tests and canary rollouts: their lifecycle, their analyses and the decisions taken on them.

Lifecycle events (:class:`ExperimentStarted`, :class:`ExperimentPaused`, :class:`ExperimentResumed`,
:class:`ExperimentCompleted`, :class:`ExperimentArchived`) are published by the caller with
``engine.publish`` and refused by the handler's ``screen`` when the transition is illegal; the handler
also derives some of them itself (a guardrail pauses an experiment, a concluded test completes it).
:class:`CanaryAdvanced` and :class:`CanaryRolledBack` are derived by the canary policy and may also be
published by hand (a manual step or rollback). The rest are derived only, and carry the numbers needed to
audit them. Every float in an event is finite: a statistic that does not exist yet is None.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from rtopt import Event
from rtopt.events import Count, Name

Share = Annotated[float, Meta(ge=0.0, le=1.0)]
PValue = Annotated[float, Meta(ge=0.0, le=1.0)]

# --- lifecycle ------------------------------------------------------------------------------------


class ExperimentStarted(Event, frozen=True):
    """A draft experiment starts: decisions assign variants from now on (a canary starts at its first step)."""

    experiment: Name
    reason: str = ""
    stream_field: ClassVar[str] = "experiment"


class ExperimentPaused(Event, frozen=True):
    """A running experiment stops assigning variants: decisions serve the control until it is resumed.

    When a guardrail paused it, ``guardrail`` names it (``quality``, ``cost`` or ``latency_p95``), ``arm``
    the variant that breached it and ``metrics`` the numbers compared."""

    experiment: Name
    reason: str = ""
    guardrail: str | None = None
    arm: str | None = None
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    stream_field: ClassVar[str] = "experiment"


class ExperimentResumed(Event, frozen=True):
    """A paused experiment assigns variants again."""

    experiment: Name
    reason: str = ""
    stream_field: ClassVar[str] = "experiment"


class ExperimentCompleted(Event, frozen=True):
    """The experiment is over: decisions serve ``winner`` (the control if None) from now on."""

    experiment: Name
    reason: str = ""
    winner: str | None = None
    stream_field: ClassVar[str] = "experiment"


class ExperimentArchived(Event, frozen=True):
    """A completed experiment is put away: it serves no more decisions."""

    experiment: Name
    reason: str = ""
    stream_field: ClassVar[str] = "experiment"


# --- analyses -------------------------------------------------------------------------------------


class TestResult(msgspec.Struct, frozen=True):
    """A two-sided test of a variant against the control: the two estimates, their difference (variant
    minus control), the statistic, its p-value and the confidence interval of the difference; ``df`` is
    the Welch degrees of freedom (None for a z-test)."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    control: float
    treatment: float
    difference: float
    statistic: float
    p_value: PValue
    low: float
    high: float
    df: float | None = None


class VariantStats(msgspec.Struct, frozen=True):
    """One arm in an analysis: its intended ``weight`` (the allocation in force), the decisions made for
    the test and the feedback analysed, and the running statistics of that feedback. Means and variances
    (``ddof=1``) are None before there is enough feedback for them."""

    weight: Share
    decisions: Count
    feedback: Count
    successes: Count
    conversions: Count
    success_rate: float | None
    quality_mean: float | None
    quality_var: float | None
    reward_mean: float | None
    reward_var: float | None
    cost_mean: float | None
    latency_mean: float | None
    latency_p95: float | None
    covariates: Count = 0


class CupedResult(msgspec.Struct, frozen=True):
    """The CUPED-adjusted Welch test of the metric, fitted on every arm's feedback that carried the
    pre-period covariate: ``theta``, the pooled covariate mean, the share of variance removed and the
    adjusted test."""

    theta: float
    covariate_mean: float
    variance_reduction: float
    n_control: Count
    n_treatment: Count
    test: TestResult


class VariantComparison(msgspec.Struct, frozen=True):
    """A variant against the control: the two-proportion z-test of the conversion, Welch's t-test of the
    metric, its relative lift, Holm-adjusted p-values over the variants, the always-valid mSPRT p-value
    (running minimum over the analyses) and its Holm adjustment, and the CUPED-adjusted test if any."""

    conversion: TestResult | None
    welch: TestResult | None
    relative: float | None
    p_holm: PValue | None
    msprt_p: PValue
    msprt_p_holm: PValue
    cuped: CupedResult | None = None


class SrmResult(msgspec.Struct, frozen=True):
    """Pearson's chi-square test of the feedback counted per arm against the counts the allocation
    intended (``expected``); ``mismatch`` is ``p_value < threshold``."""

    counts: list[int]
    expected: list[float]
    statistic: float
    df: int
    p_value: PValue
    threshold: float
    mismatch: bool


class ExperimentAnalysed(Event, frozen=True):
    """The ``analysis``-th look at a running experiment, after ``feedback`` analysed feedback and
    ``elapsed_s`` seconds of event time since it started."""

    experiment: Name
    analysis: Count
    feedback: Count
    elapsed_s: float
    control: Name
    metric: Name
    conversion: Name
    variants: dict[str, VariantStats]
    comparisons: dict[str, VariantComparison]
    srm: SrmResult | None = None
    stream_field: ClassVar[str] = "experiment"


class SampleRatioMismatch(Event, frozen=True):
    """The feedback counted per arm departs from the intended allocation (chi-square p below the
    threshold): the data are not to be trusted, so the test will not conclude for a winner any more (it
    ends with outcome ``"sample ratio mismatch"`` at its maximum samples or duration). Emitted once."""

    experiment: Name
    counts: dict[str, int]
    expected: dict[str, float]
    statistic: float
    p_value: PValue
    threshold: float
    stream_field: ClassVar[str] = "experiment"


class Verdict(msgspec.Struct, frozen=True):
    """A variant at the conclusion: its difference to the control on the metric (and relative to the
    control's mean), the p-value the stopping rule used, adjusted for the variants (Holm), and the Welch
    confidence interval of the difference (None with too little data)."""

    difference: float
    relative: float | None
    p_value: PValue
    p_adjusted: PValue
    significant: bool
    low: float | None = None
    high: float | None = None


class ExperimentConcluded(Event, frozen=True):
    """The test reached a stopping criterion. ``outcome`` is ``"variant wins"`` (``winner`` is that
    variant), ``"control wins"`` (every variant is significantly worse; ``winner`` is the control),
    ``"no difference"`` or ``"sample ratio mismatch"`` (``winner`` None); ``test`` is the p-value the rule
    used (``"msprt"``, always valid, or ``"welch"`` at a fixed horizon)."""

    experiment: Name
    outcome: Name
    winner: str | None
    control: Name
    metric: Name
    test: Name
    alpha: float
    min_improvement: float
    reason: str
    feedback: Count
    elapsed_s: float
    verdicts: dict[str, Verdict]
    stream_field: ClassVar[str] = "experiment"


class WinnerPromoted(Event, frozen=True):
    """A variant beat the control (or a canary's challenger reached 100 %): it is served to everyone once
    the experiment completes. ``difference`` and ``relative`` compare its metric with the control's;
    ``p_value`` is the test that decided (None for a canary, promoted for doing no harm)."""

    experiment: Name
    arm: Name
    control: Name
    metric: Name
    difference: float | None
    relative: float | None
    p_value: PValue | None
    reason: str = ""
    stream_field: ClassVar[str] = "experiment"


class AllocationUpdated(Event, frozen=True):
    """An adaptive experiment moved its allocation: each arm's probability of being best under its Beta
    posterior of the reward (``p_best``, from ``draws`` seeded draws) and the allocation made of it with
    a ``floor`` per arm, from the ``feedback`` and reward ``means`` of each arm."""

    experiment: Name
    allocation: dict[str, Share]
    p_best: dict[str, Share]
    feedback: dict[str, int]
    means: dict[str, float]
    floor: Share
    draws: Count
    stream_field: ClassVar[str] = "experiment"


# --- canary rollouts ------------------------------------------------------------------------------


class CanaryAdvanced(Event, frozen=True):
    """The challenger of a canary gets ``share`` of the traffic (step ``step``, 1-based) instead of
    ``previous_share``; ``metrics`` are the guardrail numbers it passed."""

    experiment: Name
    arm: Name
    step: Annotated[int, Meta(ge=1)]
    share: Share
    previous_share: Share
    reason: str = ""
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    stream_field: ClassVar[str] = "experiment"


class CanaryRolledBack(Event, frozen=True):
    """The challenger of a canary is taken out of traffic (``share`` 0) after a guardrail breach (named in
    ``guardrail``, with its numbers in ``metrics``) or by hand; the canary then completes on the baseline."""

    experiment: Name
    arm: Name
    previous_share: Share
    share: Share = 0.0
    guardrail: str | None = None
    reason: str = ""
    metrics: dict[str, float] = msgspec.field(default_factory=dict)
    stream_field: ClassVar[str] = "experiment"


LIFECYCLE_EVENTS = (ExperimentStarted, ExperimentPaused, ExperimentResumed, ExperimentCompleted, ExperimentArchived)
CANARY_EVENTS = (CanaryAdvanced, CanaryRolledBack)
DERIVED_ONLY = (ExperimentAnalysed, SampleRatioMismatch, ExperimentConcluded, WinnerPromoted, AllocationUpdated)

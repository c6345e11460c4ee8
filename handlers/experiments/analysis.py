"""Analyses of a running experiment from the running statistics the handler keeps: the tests of every
variant against the control, the sample-ratio check, the guardrails and the stopping rule.

Everything here reads sufficient statistics (counts, Welford means and squared deviations, co-moments,
latency sketches), so an analysis costs the same after a hundred feedback or a million; the numbers are
those :mod:`rtopt.handlers.experiments.stats` gives on the raw data, up to rounding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from rtopt.handlers.experiments.events import (
    CupedResult,
    ExperimentAnalysed,
    ExperimentConcluded,
    SrmResult,
    TestResult,
    VariantComparison,
    VariantStats,
    Verdict,
)
from rtopt.handlers.experiments.state import ArmStats, CoMoments, Experiment
from rtopt.handlers.experiments.stats import (
    Comparison,
    holm,
    sample_ratio_mismatch,
    two_proportion_ztest,
    welch_ttest_from_stats,
)
from rtopt.streams.moments import RunningMoments

from rtopt import InvalidEvent

VARIANT_WINS, CONTROL_WINS, NO_DIFFERENCE, SRM_OUTCOME = (
    "variant wins",
    "control wins",
    "no difference",
    "sample ratio mismatch",
)


class Breach(NamedTuple):
    """A guardrail a variant breached: which, by how much (``metrics``), and a sentence saying so."""

    guardrail: str
    arm: str
    reason: str
    metrics: dict[str, float]


def result(comparison: Comparison) -> TestResult:
    """A stats Comparison as it goes in an event (a z-test's infinite df becomes None)."""
    return TestResult(
        control=comparison.control,
        treatment=comparison.treatment,
        difference=comparison.difference,
        statistic=comparison.statistic,
        p_value=comparison.p_value,
        low=comparison.low,
        high=comparison.high,
        df=comparison.df if math.isfinite(comparison.df) else None,
    )


def welch(
    control: tuple[float, float | None, int],
    treatment: tuple[float, float | None, int],
    alternative: str = "two-sided",
    confidence: float = 0.95,
) -> Comparison | None:
    """Welch's test from (mean, variance, n) of each arm; None below two values an arm or without variance."""
    (m_c, v_c, n_c), (m_t, v_t, n_t) = control, treatment
    if v_c is None or v_t is None or v_c + v_t == 0.0:
        return None
    return welch_ttest_from_stats(m_c, v_c, n_c, m_t, v_t, n_t, alternative=alternative, confidence=confidence)


def estimate(moments: RunningMoments) -> tuple[float, float | None, int]:
    """The (mean, sample variance, n) Welch's test reads from running moments; the variance is None below
    two values."""
    return moments.mean, moments.variance() if moments.n > 1 else None, moments.n


def _mean(moments: RunningMoments) -> float | None:
    return moments.mean if moments.n else None


def relative(treatment: float, control: float) -> float | None:
    """``treatment / control - 1``; None when the control's value is 0."""
    return treatment / control - 1.0 if control != 0.0 else None


def variant_stats(exp: Experiment, arm: str, weight: float) -> VariantStats:
    stats = exp.stats[arm]
    n = stats.feedback
    return VariantStats(
        weight=weight,
        decisions=stats.decisions,
        feedback=n,
        successes=stats.successes,
        conversions=stats.conversions,
        success_rate=stats.successes / n if n else None,
        quality_mean=_mean(stats.quality),
        quality_var=estimate(stats.quality)[1],
        reward_mean=_mean(stats.reward),
        reward_var=estimate(stats.reward)[1],
        cost_mean=_mean(stats.cost),
        latency_mean=_mean(stats.latency),
        latency_p95=stats.p95(),
        covariates=stats.covariate.n,
    )


def cuped_test(exp: Experiment, arm: str, confidence: float) -> CupedResult | None:
    """Welch's test of the CUPED-adjusted metric, ``y - theta (x - mean x)`` with theta fitted on every
    arm's (covariate, metric) pairs pooled; None without two pairs an arm or with a constant covariate."""
    control, treatment = exp.stats[exp.control].covariate, exp.stats[arm].covariate
    if control.n < 2 or treatment.n < 2:
        return None
    pooled = CoMoments()
    for stats in exp.stats.values():
        pooled = pooled.merge(stats.covariate)
    if pooled.m2_x <= 0.0:
        return None
    theta = pooled.c / pooled.m2_x

    def adjusted(m: CoMoments) -> tuple[float, float, int]:
        m2 = max(m.m2_y - 2.0 * theta * m.c + theta * theta * m.m2_x, 0.0)
        return m.mean_y - theta * (m.mean_x - pooled.mean_x), m2 / (m.n - 1), m.n

    comparison = welch(adjusted(control), adjusted(treatment), confidence=confidence)
    if comparison is None:
        return None
    variance = pooled.m2_y
    residual = max(pooled.m2_y - 2.0 * theta * pooled.c + theta * theta * pooled.m2_x, 0.0)
    return CupedResult(
        theta=theta,
        covariate_mean=pooled.mean_x,
        variance_reduction=1.0 - residual / variance if variance > 0.0 else 0.0,
        n_control=control.n,
        n_treatment=treatment.n,
        test=result(comparison),
    )


def srm_check(exp: Experiment) -> SrmResult | None:
    """The chi-square test of the feedback counted per arm against the counts the allocations intended;
    arms the allocation never gave a share are left out. None before two arms have a share and feedback."""
    arms = [arm for arm in exp.arms if exp.stats[arm].expected > 0.0]
    counts = [exp.stats[arm].feedback for arm in arms]
    if len(arms) < 2 or sum(counts) == 0:
        return None
    expected = [exp.stats[arm].expected for arm in arms]
    check = sample_ratio_mismatch(counts, expected, threshold=exp.options.srm_threshold)
    return SrmResult(
        counts=list(check.counts),
        expected=list(check.expected),
        statistic=check.statistic,
        df=check.df,
        p_value=check.p_value,
        threshold=check.threshold,
        mismatch=check.mismatch,
    )


def look(exp: Experiment) -> None:
    """One look of every variant's always-valid test, once both arms have enough feedback."""
    minimum = exp.options.msprt_min_samples
    for sprt in exp.sprt.values():
        if sprt.control.n >= minimum and sprt.treatment.n >= minimum:
            sprt.update()


def analyse(name: str, exp: Experiment, now: float) -> ExperimentAnalysed:
    """Look once (mSPRT) and describe the experiment: every arm, and every variant against the control."""
    options = exp.options
    exp.analyses += 1
    look(exp)
    confidence = 1.0 - options.alpha
    control = exp.stats[exp.control]
    metric_c = estimate(control.metric(options.metric))
    variants = {arm: variant_stats(exp, arm, weight) for arm, weight in zip(exp.arms, exp.allocation, strict=True)}
    tests: dict[str, tuple[TestResult | None, TestResult | None, float | None, CupedResult | None]] = {}
    for arm in exp.variants():
        stats = exp.stats[arm]
        conversion = None
        if control.feedback and stats.feedback:
            conversion = result(
                two_proportion_ztest(
                    control.conversions, control.feedback, stats.conversions, stats.feedback, confidence=confidence
                )
            )
        metric_t = estimate(stats.metric(options.metric))
        compared = welch(metric_c, metric_t, confidence=confidence)
        lift = relative(metric_t[0], metric_c[0]) if metric_c[2] and metric_t[2] else None
        tests[arm] = (
            conversion,
            None if compared is None else result(compared),
            lift,
            cuped_test(exp, arm, confidence),
        )
    tested = [arm for arm, (_, test, _, _) in tests.items() if test is not None]
    p_holm = dict(zip(tested, holm([tests[arm][1].p_value for arm in tested]).adjusted, strict=True)) if tested else {}
    variant_names = list(tests)
    sprt_p = [exp.sprt[arm].p_value for arm in variant_names]
    sprt_holm = dict(zip(variant_names, holm(sprt_p).adjusted, strict=True)) if variant_names else {}
    comparisons = {
        arm: VariantComparison(
            conversion=conversion,
            welch=test,
            relative=lift,
            p_holm=p_holm.get(arm),
            msprt_p=exp.sprt[arm].p_value,
            msprt_p_holm=sprt_holm[arm],
            cuped=cuped,
        )
        for arm, (conversion, test, lift, cuped) in tests.items()
    }
    return ExperimentAnalysed(
        experiment=name,
        analysis=exp.analyses,
        feedback=exp.analysed,
        elapsed_s=exp.elapsed(now),
        control=exp.control,
        metric=options.metric,
        conversion=options.conversion,
        variants=variants,
        comparisons=comparisons,
        srm=srm_check(exp),
    )


# --- guardrails -----------------------------------------------------------------------------------


def guardrail_metrics(exp: Experiment, arm: str) -> dict[str, float]:
    """The guardrail numbers of ``arm`` against the control: relative changes of mean quality and cost
    and of p95 latency (left out where the control's value is 0 or missing)."""
    control, variant = exp.stats[exp.control], exp.stats[arm]
    numbers = {"n_control": float(control.feedback), "n_variant": float(variant.feedback)}
    if control.quality.n and variant.quality.n and control.quality.mean > 0.0:
        numbers["quality_change"] = variant.quality.mean / control.quality.mean - 1.0
    if control.cost.n and variant.cost.n and control.cost.mean > 0.0:
        numbers["cost_change"] = variant.cost.mean / control.cost.mean - 1.0
    p95_c, p95_t = control.p95(), variant.p95()
    if p95_c and p95_t is not None:
        numbers["latency_p95_change"] = p95_t / p95_c - 1.0
    return numbers


def _one_sided(control: tuple[float, float | None, int], variant: tuple[float, float | None, int], side: str) -> float:
    """One-sided Welch p-value that the variant is ``side`` than the control; 0 or 1 without variance."""
    try:
        compared = welch(control, variant, alternative=side)
    except InvalidEvent:
        compared = None
    if compared is not None:
        return compared.p_value
    worse = variant[0] < control[0] if side == "less" else variant[0] > control[0]
    return 0.0 if worse else 1.0


def guardrail_breach(exp: Experiment) -> Breach | None:
    """The first guardrail a variant breaches: its point estimate past the limit and the change
    significant at ``guardrail_alpha`` (one-sided). None if every variant is within its guardrails or
    either arm has fewer than ``guardrail_min_samples`` feedback."""
    options = exp.options
    if not options.guardrails:
        return None
    control = exp.stats[exp.control]
    if control.feedback < options.guardrail_min_samples:
        return None
    for arm in exp.variants():
        variant = exp.stats[arm]
        if variant.feedback < options.guardrail_min_samples:
            continue
        for breach in (_quality(exp, arm, control, variant), _cost(exp, arm, control, variant)):
            if breach is not None:
                return breach
        breach = _latency(exp, arm, control, variant)
        if breach is not None:
            return breach
    return None


def _quality(exp: Experiment, arm: str, control: ArmStats, variant: ArmStats) -> Breach | None:
    limit = exp.options.guardrail_quality_drop
    return _mean_guardrail(exp, arm, "quality", "", control.quality, variant.quality, limit, "less")


def _cost(exp: Experiment, arm: str, control: ArmStats, variant: ArmStats) -> Breach | None:
    limit = exp.options.guardrail_cost_rise
    return _mean_guardrail(exp, arm, "cost", "$", control.cost, variant.cost, limit, "greater")


def _mean_guardrail(
    exp: Experiment,
    arm: str,
    guardrail: str,
    unit: str,
    control: RunningMoments,
    variant: RunningMoments,
    limit: float,
    side: str,
) -> Breach | None:
    """The breach of a guardrail on a mean (``guardrail`` names both), or None: the variant's mean moved
    past ``limit`` relative to the control's, down for ``side`` "less" and up for "greater", and the
    one-sided Welch test of that side significant at ``guardrail_alpha``. ``unit`` prefixes the means."""
    if control.mean <= 0.0:
        return None
    change = variant.mean / control.mean - 1.0
    less = side == "less"
    if (change >= -limit) if less else (change <= limit):
        return None
    p = _one_sided(estimate(control), estimate(variant), side)
    if p >= exp.options.guardrail_alpha:
        return None
    sign, bound = ("-", -limit) if less else ("+", limit)
    return Breach(
        guardrail,
        arm,
        f"guardrail {guardrail}: {arm!r} mean {guardrail} {unit}{variant.mean:.4g} against {unit}{control.mean:.4g} "
        f"on {exp.control!r} ({change:+.1%}, limit {sign}{limit:.0%}; one-sided Welch p = {p:.3g}, "
        f"n = {variant.n} and {control.n})",
        {"control": control.mean, "variant": variant.mean, "change": change, "limit": bound, "p_value": p},
    )


def _latency(exp: Experiment, arm: str, control: ArmStats, variant: ArmStats) -> Breach | None:
    limit = exp.options.guardrail_latency_rise
    p95_c, p95_t = control.p95(), variant.p95()
    if not p95_c or p95_t is None:
        return None
    change = p95_t / p95_c - 1.0
    if change <= limit:
        return None
    # is the variant's share of responses slower than the control's p95 larger than the control's own?
    slow_c, slow_t = control.slower_than(p95_c), variant.slower_than(p95_c)
    test = two_proportion_ztest(slow_c, control.feedback, slow_t, variant.feedback, alternative="greater")
    if test.p_value >= exp.options.guardrail_alpha:
        return None
    return Breach(
        "latency_p95",
        arm,
        f"guardrail latency_p95: {arm!r} p95 latency {p95_t:.4g} ms against {p95_c:.4g} ms on {exp.control!r} "
        f"({change:+.1%}, limit +{limit:.0%}; {slow_t}/{variant.feedback} slower than the control's p95 against "
        f"{slow_c}/{control.feedback}, one-sided p = {test.p_value:.3g})",
        {
            "control": p95_c,
            "variant": p95_t,
            "change": change,
            "limit": limit,
            "p_value": test.p_value,
            "slow_share_control": test.control,
            "slow_share_variant": test.treatment,
        },
    )


# --- stopping -------------------------------------------------------------------------------------


def conclusion(
    name: str, exp: Experiment, analysis: ExperimentAnalysed, deadline: str | None
) -> ExperimentConcluded | None:
    """The conclusion of an A/B test at this analysis, or None to go on.

    ``deadline`` says why the test must end now (maximum duration or samples reached), if it must."""
    options = exp.options
    variants = exp.variants()
    fewest = min(exp.stats[arm].feedback for arm in exp.arms)
    if deadline is None and options.max_samples is not None and fewest >= options.max_samples:
        deadline = f"every arm reached max_samples ({options.max_samples})"
    if fewest < options.min_samples and deadline is None:
        return None
    test = "msprt" if options.sequential else "welch"
    comparisons = analysis.comparisons
    verdicts: dict[str, Verdict] = {}
    for arm in variants:
        compared = comparisons[arm]
        welch_test = compared.welch
        if options.sequential:
            p, adjusted = compared.msprt_p, compared.msprt_p_holm
        else:
            p = welch_test.p_value if welch_test is not None else 1.0
            adjusted = compared.p_holm if compared.p_holm is not None else 1.0
        m_c, m_t = exp.stats[exp.control].metric(options.metric), exp.stats[arm].metric(options.metric)
        verdicts[arm] = Verdict(
            difference=m_t.mean - m_c.mean,
            relative=relative(m_t.mean, m_c.mean),
            p_value=p,
            p_adjusted=adjusted,
            significant=adjusted < options.alpha,
            low=None if welch_test is None else welch_test.low,
            high=None if welch_test is None else welch_test.high,
        )

    def improves(verdict: Verdict) -> bool:
        lift = verdict.relative if verdict.relative is not None else math.inf
        return verdict.significant and verdict.difference > 0.0 and lift >= options.min_improvement

    winners = [arm for arm in variants if improves(verdicts[arm])]
    decided = all(v.significant for v in verdicts.values())
    worse = all(v.significant and v.difference < 0.0 for v in verdicts.values())
    where = f"{fewest} feedback on the smallest arm"
    if exp.srm:
        if deadline is None:
            return None
        outcome, winner, reason = SRM_OUTCOME, None, f"{deadline} after a sample ratio mismatch ({where})"
    elif winners:
        winner = max(winners, key=lambda arm: (exp.stats[arm].metric(options.metric).mean, -variants.index(arm)))
        v = verdicts[winner]
        outcome = VARIANT_WINS
        reason = (
            f"{winner!r} beats {exp.control!r} on {options.metric}: {v.difference:+.4g} "
            f"({'n/a' if v.relative is None else f'{v.relative:+.1%}'}), {test} p = {v.p_adjusted:.3g} "
            f"(Holm) < alpha {options.alpha:g}, {where}" + (f"; {deadline}" if deadline else "")
        )
    elif worse:
        outcome, winner = CONTROL_WINS, exp.control
        reason = f"every variant is significantly worse than {exp.control!r} on {options.metric} ({test}, {where})"
    elif decided or deadline is not None or not options.sequential:
        outcome, winner = NO_DIFFERENCE, None
        why = (
            deadline
            if deadline is not None
            else "no variant improves on the control by the minimum"
            if decided
            else "fixed horizon reached"
        )
        reason = (
            f"{why}: no variant beats {exp.control!r} on {options.metric} ({test}, alpha {options.alpha:g}, {where})"
        )
    else:
        return None
    return ExperimentConcluded(
        experiment=name,
        outcome=outcome,
        winner=winner,
        control=exp.control,
        metric=options.metric,
        test=test,
        alpha=options.alpha,
        min_improvement=options.min_improvement,
        reason=reason,
        feedback=exp.analysed,
        elapsed_s=analysis.elapsed_s,
        verdicts=verdicts,
    )

"""Experiment statistics agree with scipy and with hand computations, keep their error rates, and reject bad input.

statsmodels is not available here: reference values come from scipy.stats (ttest_ind, ttest_ind_from_stats,
chi2_contingency, chisquare, binomtest, t.interval, linregress, pearsonr) or are computed by hand, as each
test says. Every simulation is seeded.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from rtopt.handlers.experiments import (
    Comparison,
    MixtureSPRT,
    bonferroni,
    cuped,
    holm,
    mean_interval,
    mean_interval_from_stats,
    msprt_p_value,
    power_two_means,
    power_two_proportions,
    sample_ratio_mismatch,
    sample_size_two_means,
    sample_size_two_proportions,
    two_proportion_ztest,
    welch_ttest,
    welch_ttest_from_stats,
    wilson_interval,
)
from rtopt.streams.moments import RunningMoments
from scipy import integrate, stats

from rtopt import InvalidArgument

ALTERNATIVES = ("two-sided", "greater", "less")


# two proportions


@pytest.mark.parametrize("counts", [(100, 1000, 130, 1000), (45, 300, 30, 280), (7, 50, 7, 60)])
def test_the_two_proportion_z_test_is_the_uncorrected_2x2_chi_square(counts: tuple[int, int, int, int]) -> None:
    x_c, n_c, x_t, n_t = counts
    result = two_proportion_ztest(x_c, n_c, x_t, n_t)
    chi2, p, _, _ = stats.chi2_contingency([[x_c, n_c - x_c], [x_t, n_t - x_t]], correction=False)
    assert result.statistic**2 == pytest.approx(chi2, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert result.difference == pytest.approx(x_t / n_t - x_c / n_c)
    assert result.df == math.inf


def test_the_two_proportion_z_test_by_hand_one_and_two_sided() -> None:
    # 100/1000 vs 130/1000: pooled 0.115, se0 = sqrt(0.115 * 0.885 * 0.002) = 0.0142671, z = 0.03 / se0 = 2.10274;
    # unpooled se = sqrt(0.09 / 1000 + 0.1131 / 1000) = 0.0142513
    two = two_proportion_ztest(100, 1000, 130, 1000)
    assert two.statistic == pytest.approx(2.10274, abs=1e-5)
    se = math.sqrt(0.1 * 0.9 / 1000 + 0.13 * 0.87 / 1000)
    assert se == pytest.approx(0.0142513, abs=1e-7)
    z975, z95 = stats.norm.ppf(0.975), stats.norm.ppf(0.95)
    assert (two.low, two.high) == pytest.approx((0.03 - z975 * se, 0.03 + z975 * se), rel=1e-12)
    assert two.p_value == pytest.approx(2 * stats.norm.sf(two.statistic), rel=1e-12)

    greater = two_proportion_ztest(100, 1000, 130, 1000, alternative="greater", confidence=0.9)
    assert greater.p_value == pytest.approx(two.p_value / 2, rel=1e-12)
    assert greater.low == pytest.approx(0.03 - stats.norm.ppf(0.9) * se, rel=1e-12)
    assert greater.high == math.inf
    less = two_proportion_ztest(100, 1000, 130, 1000, alternative="less")
    assert less.p_value == pytest.approx(1 - greater.p_value, rel=1e-12)
    assert (less.low, less.high) == (-math.inf, pytest.approx(0.03 + z95 * se, rel=1e-12))


def test_a_z_test_where_no_trial_or_every_trial_succeeded_shows_no_difference() -> None:
    for x in (0, 1):
        result = two_proportion_ztest(x * 80, 80, x * 120, 120)
        assert (result.statistic, result.p_value, result.low, result.high) == (0.0, 1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("args", "field", "value"),
    [
        ((5, 0, 5, 10), "trials_control", 0),
        ((0, 10, 0, 0), "trials_treatment", 0),
        ((11, 10, 5, 10), "successes_control", 11),
        ((5, 10, 12, 10), "successes_treatment", 12),
        ((-1, 10, 5, 10), "successes_control", -1),
        ((5, 10.5, 5, 10), "trials_control", 10.5),
        ((True, 10, 5, 10), "successes_control", True),
    ],
)
def test_bad_counts_are_rejected_naming_the_argument(args: tuple, field: str, value: object) -> None:
    with pytest.raises(InvalidArgument) as raised:
        two_proportion_ztest(*args)
    assert raised.value.argument == field
    assert raised.value.value == value


def test_bad_options_are_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        two_proportion_ztest(1, 10, 2, 10, alternative="bigger")  # type: ignore[arg-type]
    assert (raised.value.argument, raised.value.value) == ("alternative", "bigger")
    with pytest.raises(InvalidArgument) as raised:
        two_proportion_ztest(1, 10, 2, 10, confidence=95)
    assert (raised.value.argument, raised.value.value) == ("confidence", 95)
    with pytest.raises(InvalidArgument) as raised:
        welch_ttest([1.0, 2.0, float("nan")], [1.0, 2.0])
    assert raised.value.argument == "control[2]"


# Welch


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_welch_matches_scipy_on_samples(alternative: str) -> None:
    rng = np.random.default_rng(3)
    control = rng.normal(10.0, 2.0, size=40)
    treatment = rng.normal(11.0, 4.0, size=25)
    result = welch_ttest(control, treatment, alternative=alternative, confidence=0.9)  # type: ignore[arg-type]
    reference = stats.ttest_ind(treatment, control, equal_var=False, alternative=alternative)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert result.df == pytest.approx(reference.df, rel=1e-12)
    interval = reference.confidence_interval(0.9)
    assert (result.low, result.high) == (pytest.approx(interval.low, rel=1e-10), pytest.approx(interval.high))
    assert result.difference == pytest.approx(treatment.mean() - control.mean())


def test_welch_from_stats_matches_scipy_and_the_satterthwaite_df_by_hand() -> None:
    result = welch_ttest_from_stats(10.0, 4.0, 50, 11.0, 9.0, 40)
    reference = stats.ttest_ind_from_stats(11.0, 3.0, 40, 10.0, 2.0, 50, equal_var=False)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    # se² = 4/50 + 9/40 = 0.305; df = 0.305² / (0.08² / 49 + 0.225² / 39) = 65.11
    assert result.df == pytest.approx(0.305**2 / (0.08**2 / 49 + 0.225**2 / 39), rel=1e-12)
    assert result.df == pytest.approx(65.11, abs=0.01)
    half = stats.t.ppf(0.975, result.df) * math.sqrt(0.305)
    assert (result.low, result.high) == pytest.approx((1.0 - half, 1.0 + half), rel=1e-12)


def test_welch_rejects_degenerate_input() -> None:
    with pytest.raises(InvalidArgument) as raised:
        welch_ttest([1.0, 1.0, 1.0], [2.0, 2.0])
    assert raised.value.argument == "variance_control"
    with pytest.raises(InvalidArgument) as raised:
        welch_ttest([1.0, 2.0], [3.0])
    assert (raised.value.argument, raised.value.value) == ("treatment", [3.0])
    with pytest.raises(InvalidArgument) as raised:
        mean_interval([])
    assert raised.value.argument == "values"
    with pytest.raises(InvalidArgument) as raised:
        welch_ttest_from_stats(1.0, 1.0, 1, 2.0, 1.0, 10)
    assert (raised.value.argument, raised.value.value) == ("n_control", 1)
    with pytest.raises(InvalidArgument) as raised:
        welch_ttest_from_stats(1.0, -1.0, 5, 2.0, 1.0, 10)
    assert (raised.value.argument, raised.value.value) == ("variance_control", -1.0)


# intervals


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (15, 50), (50, 50), (3, 1000), (480, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(successes: int, trials: int, confidence: float) -> None:
    interval = wilson_interval(successes, trials, confidence)
    reference = stats.binomtest(successes, trials).proportion_ci(confidence, method="wilson")
    assert interval.low == pytest.approx(reference.low, abs=1e-12)
    assert interval.high == pytest.approx(reference.high, abs=1e-12)
    assert interval.estimate == successes / trials


def test_wilson_rejects_more_successes_than_trials() -> None:
    with pytest.raises(InvalidArgument) as raised:
        wilson_interval(11, 10)
    assert (raised.value.argument, raised.value.value) == ("successes", 11)


def test_the_mean_interval_matches_scipy_t_interval() -> None:
    values = np.random.default_rng(4).exponential(3.0, size=30)
    interval = mean_interval(values, 0.9)
    low, high = stats.t.interval(0.9, values.size - 1, loc=values.mean(), scale=stats.sem(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-12)
    from_stats = mean_interval_from_stats(float(values.mean()), float(values.var(ddof=1)), values.size, 0.9)
    assert from_stats == interval


# power and sample size


def test_sample_size_for_two_proportions_textbook_value() -> None:
    # p1 = 0.10, p2 = 0.12, alpha 0.05 two-sided, power 0.8, by hand:
    # z_a = 1.959964, z_b = 0.841621, p_bar = 0.11
    # sqrt(2 * 0.11 * 0.89) = 0.442493; sqrt(0.1 * 0.9 + 0.12 * 0.88) = 0.442267
    # n = (1.959964 * 0.442493 + 0.841621 * 0.442267)² / 0.02² = (0.867268 + 0.372222)² / 0.0004 = 3840.9 -> 3841
    assert sample_size_two_proportions(0.10, 0.02) == 3841
    assert sample_size_two_proportions(0.10, 0.20, relative=True) == 3841
    assert sample_size_two_proportions(0.12, -0.02) == 3841  # the same pair of rates the other way round
    # one-sided: z_a = 1.644854, n = (1.644854 * 0.442493 + 0.372222)² / 0.0004 = 3025.4 -> 3026
    assert sample_size_two_proportions(0.10, 0.02, alternative="greater") == 3026
    assert sample_size_two_proportions(0.12, -0.02, alternative="less") == 3026
    assert power_two_proportions(0.10, 0.02, 3841) >= 0.8 > power_two_proportions(0.10, 0.02, 3840)


def test_sample_size_for_two_means_textbook_value() -> None:
    # Cohen's d = 0.5: n = 2 (1.959964 + 0.841621)² / 0.25 = 62.79 -> 63 per arm (the t-based answer is 64)
    assert sample_size_two_means(0.5, 1.0) == 63
    assert sample_size_two_means(5.0, 10.0) == 63
    assert sample_size_two_means(0.05, 10.0, baseline=100.0, relative=True) == 63
    assert power_two_means(0.5, 1.0, 63) >= 0.8 > power_two_means(0.5, 1.0, 62)
    # power given n by hand: n = 40, z = 0.5 * sqrt(40 / 2) - 1.959964 = 0.276104; Phi(0.276104) = 0.60877
    assert power_two_means(0.5, 1.0, 40) == pytest.approx(0.60877, abs=1e-4)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: sample_size_two_proportions(0.10, 0.02, alternative="less"), "mde"),
        (lambda: sample_size_two_proportions(0.10, 0.0), "mde"),
        (lambda: sample_size_two_proportions(0.95, 0.10), "mde"),
        (lambda: sample_size_two_proportions(1.5, 0.10), "baseline"),
        (lambda: sample_size_two_proportions(0.10, 0.02, power=1.0), "power"),
        (lambda: sample_size_two_means(0.1, 1.0, relative=True), "baseline"),
        (lambda: sample_size_two_means(0.1, 0.0), "std"),
        (lambda: power_two_means(0.1, 1.0, 0), "n_per_arm"),
        (lambda: power_two_proportions(0.1, 0.02, 100, alpha=0.0), "alpha"),
    ],
)
def test_bad_power_arguments_are_rejected(call, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        call()
    assert raised.value.argument == field


def test_simulated_power_of_the_proportion_test_matches_the_formula() -> None:
    # 2,000 seeded experiments per size; the rejection rate's standard error is at most
    # sqrt(0.25 / 2000) = 0.011, and the normal approximation is accurate to well under 0.01 at these sizes,
    # so a tolerance of 0.035 (3 standard errors plus that) fails only if the formula is wrong
    rng = np.random.default_rng(11)
    for n in (2000, 3841):
        expected = power_two_proportions(0.10, 0.02, n)
        control = rng.binomial(n, 0.10, size=2000)
        treatment = rng.binomial(n, 0.12, size=2000)
        rejected = [
            two_proportion_ztest(int(c), n, int(t), n).p_value < 0.05 for c, t in zip(control, treatment, strict=True)
        ]
        assert np.mean(rejected) == pytest.approx(expected, abs=0.035)
    assert power_two_proportions(0.10, 0.02, 2000) == pytest.approx(0.5245, abs=1e-4)


def test_simulated_power_of_the_welch_test_matches_the_formula() -> None:
    # 2,000 seeded experiments of 63 per arm, effect 0.5 sd: formula 0.801, the exact t-test power (noncentral t) 0.795;
    # tolerance 0.035 as above
    rng = np.random.default_rng(12)
    control = rng.normal(0.0, 1.0, size=(2000, 63))
    treatment = rng.normal(0.5, 1.0, size=(2000, 63))
    rejected = [welch_ttest(c, t).p_value < 0.05 for c, t in zip(control, treatment, strict=True)]
    assert np.mean(rejected) == pytest.approx(power_two_means(0.5, 1.0, 63), abs=0.035)


# multiple comparisons


def test_holm_rejects_more_than_bonferroni_on_a_hand_made_example() -> None:
    # four variants against control, in the order given: 0.04, 0.3, 0.01, 0.015 (m = 4)
    # Bonferroni: 4p = 0.16, 1.2 -> 1, 0.04, 0.06: only the third is rejected at 0.05
    # Holm, sorted: 0.01 * 4 = 0.04, 0.015 * 3 = 0.045, 0.04 * 2 = 0.08, 0.3 * 1 = 0.3: the third and fourth
    p = [0.04, 0.3, 0.01, 0.015]
    b = bonferroni(p)
    assert b.adjusted == pytest.approx((0.16, 1.0, 0.04, 0.06))
    assert b.rejected == (False, False, True, False)
    h = holm(p)
    assert h.adjusted == pytest.approx((0.08, 0.3, 0.04, 0.045))
    assert h.rejected == (False, False, True, True)
    assert h.p_values == tuple(p)
    assert holm(p, alpha=0.01).rejected == (False, False, False, False)


def test_holm_adjusted_p_values_are_monotone_in_the_raw_ones() -> None:
    # 0.01 * 3 = 0.03, but 0.011 * 2 = 0.022 must be lifted to 0.03 to stay in order
    assert holm([0.011, 0.5, 0.01]).adjusted == pytest.approx((0.03, 0.5, 0.03))


def test_holm_is_the_step_down_rule_and_dominates_bonferroni() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        p = rng.uniform(0.0, 0.1, size=int(rng.integers(1, 8)))
        # the step-down rule written out: reject sorted p-values while p_(i) <= alpha / (m - i + 1)
        step_down = np.zeros(p.size, dtype=bool)
        for rank, index in enumerate(np.argsort(p)):
            if p[index] > 0.05 / (p.size - rank):
                break
            step_down[index] = True
        h, b = holm(p), bonferroni(p)
        assert h.rejected == tuple(step_down)
        assert all(x <= y for x, y in zip(h.adjusted, b.adjusted, strict=True))
        assert all(y <= x for x, y in zip(h.rejected, b.rejected, strict=True))


def test_bad_p_values_are_rejected() -> None:
    with pytest.raises(InvalidArgument) as raised:
        holm([0.1, 1.2])
    assert (raised.value.argument, raised.value.value) == ("p_values[1]", 1.2)
    with pytest.raises(InvalidArgument):
        bonferroni([])


# mSPRT


def test_the_msprt_ratio_is_the_normal_mixture_bayes_factor() -> None:
    # Lambda = integral of N(d; theta, v) N(theta; 0, tau2) dtheta / N(d; 0, v), by quadrature
    for d, v, tau2 in [(0.3, 0.01, 0.04), (-0.05, 0.002, 0.01), (0.0, 1.0, 2.0), (1.0, 0.5, 0.1)]:
        mixture, _ = integrate.quad(
            lambda theta, d=d, v=v, tau2=tau2: (
                stats.norm.pdf(d, theta, math.sqrt(v)) * stats.norm.pdf(theta, 0.0, math.sqrt(tau2))
            ),
            -np.inf,
            np.inf,
        )
        ratio = mixture / stats.norm.pdf(d, 0.0, math.sqrt(v))
        assert msprt_p_value(d, v, tau2) == pytest.approx(min(1.0, 1.0 / ratio), rel=1e-7)
    assert msprt_p_value(0.5, 0.01, 0.04, null=0.5) == 1.0
    assert msprt_p_value(50.0, 1e-4, 1.0) == 0.0  # no overflow for overwhelming evidence


def null_runs(data: np.ndarray, tau2: float, naive) -> tuple[int, int, int]:
    """(mSPRT ever rejects, naive test ever rejects, naive test rejects at the last look) over runs."""
    ever = peeking = final = 0
    for run in data:
        test = MixtureSPRT(tau2=tau2)
        rejections = []
        for end in range(100, run.shape[1] + 1, 100):
            test.update(control=run[0, end - 100 : end], treatment=run[1, end - 100 : end])
            rejections.append(naive(run[0, :end], run[1, :end]) < 0.05)
        ever += test.stop
        peeking += any(rejections)
        final += rejections[-1]
    return ever, peeking, final


def welch_p(control: np.ndarray, treatment: np.ndarray) -> float:
    return welch_ttest(control, treatment).p_value


def proportions_p(control: np.ndarray, treatment: np.ndarray) -> float:
    return two_proportion_ztest(int(control.sum()), control.size, int(treatment.sum()), treatment.size).p_value


# 400 runs: a valid test at alpha = 0.05 rejects at most binom.ppf(0.99, 400, 0.05) = 31 times (7.75 %) with 99 %
# probability; the naive peeking test, whose false-positive rate with 20 looks is about 25 %, must exceed the 99.9 %
# quantile binom.isf(0.001, 400, 0.05) = 35
VALID_BOUND = int(stats.binom.ppf(0.99, 400, 0.05))
INVALID_BOUND = int(stats.binom.isf(0.001, 400, 0.05))


@pytest.mark.parametrize(
    ("kind", "tau2", "naive"),
    [("normal means", 0.01, welch_p), ("proportions at 10 %", 1e-4, proportions_p)],
)
def test_msprt_keeps_alpha_under_continuous_monitoring_and_naive_peeking_does_not(kind, tau2, naive) -> None:
    # 400 seeded A/A tests of 2,000 observations per arm, looking after every 100 per arm (20 looks)
    rng = np.random.default_rng(2024)
    if kind == "normal means":
        data = rng.normal(size=(400, 2, 2000))
    else:
        data = (rng.random((400, 2, 2000)) < 0.10).astype(float)
    ever, peeking, final = null_runs(data, tau2, naive)
    assert (VALID_BOUND, INVALID_BOUND) == (31, 35)
    assert ever <= VALID_BOUND
    assert final <= VALID_BOUND  # one fixed-horizon look is valid ...
    assert peeking > INVALID_BOUND  # ... peeking at it 20 times is not
    assert peeking > 3 * max(ever, 1)


def test_msprt_rejects_real_effects_and_larger_ones_sooner() -> None:
    stops = {}
    for effect in (0.2, 0.3):
        rejected_at = []
        for seed in range(100):
            rng = np.random.default_rng(seed)
            control, treatment = rng.normal(0.0, 1.0, 2000), rng.normal(effect, 1.0, 2000)
            test = MixtureSPRT(tau2=0.01)
            for end in range(100, 2001, 100):
                test.update(control=control[end - 100 : end], treatment=treatment[end - 100 : end])
                if test.stop:
                    break
            rejected_at.append(test.rejected_at if test.rejected_at is not None else math.inf)
        stops[effect] = np.array(rejected_at)
        assert np.mean(np.isfinite(stops[effect])) >= 0.95
    assert np.median(stops[0.3]) < np.median(stops[0.2])
    assert np.mean(stops[0.3] < stops[0.2]) > 0.5


def test_msprt_state_merges_batches_exactly_and_survives_a_snapshot() -> None:
    rng = np.random.default_rng(8)
    values = 1e6 + rng.normal(size=(2, 600))
    test = MixtureSPRT(tau2=0.04, alpha=0.1)
    for end in range(200, 601, 200):
        test.update(control=values[0, end - 200 : end], treatment=values[1, end - 200 : end])
    assert test.control.n == test.treatment.n == 600
    assert test.control.mean == pytest.approx(values[0].mean(), rel=1e-14)
    assert test.control.variance() == pytest.approx(values[0].var(ddof=1), rel=1e-9)
    assert test.difference == pytest.approx(values[1].mean() - values[0].mean(), abs=1e-9)
    one_by_one = RunningMoments()
    for value in values[1]:
        one_by_one.merge(RunningMoments.of([value]))
    assert one_by_one.variance() == pytest.approx(values[1].var(ddof=1), rel=1e-9)

    restored = msgspec.msgpack.decode(msgspec.msgpack.encode(test), type=MixtureSPRT)
    assert restored == test
    more = rng.normal(size=(2, 100))
    assert restored.update(more[0], more[1]) == test.update(more[0], more[1])
    assert restored == test


def _sprt_reference(looks: list[tuple[np.ndarray, np.ndarray]], tau2: float, alpha: float):
    """The mixture SPRT as it was computed before it kept RunningMoments: each batch's moments in two numpy
    passes, folded with ``m2 = m2 + m2_batch + delta**2 * n * n_batch / total`` (an empty side taking the
    other's moments as they are); the p-value after each look and the first rejection."""
    arms = [(0, 0.0, 0.0), (0, 0.0, 0.0)]
    p_values, p_value, rejected_at = [], 1.0, None
    for look in looks:
        for side, batch in enumerate(look):
            n, mean, m2 = arms[side]
            if batch.size == 0:
                continue
            b_mean = float(batch.mean())
            b_n, b_m2 = int(batch.size), float(np.square(batch - b_mean).sum())
            if n == 0:
                arms[side] = (b_n, b_mean, b_m2)
                continue
            total, delta = n + b_n, b_mean - mean
            arms[side] = (total, mean + delta * b_n / total, m2 + b_m2 + delta * delta * n * b_n / total)
        (n_c, mean_c, m2_c), (n_t, mean_t, m2_t) = arms
        if n_c >= 2 and n_t >= 2:
            variance = m2_c / (n_c - 1) / n_c + m2_t / (n_t - 1) / n_t
            if variance > 0.0:
                p_value = min(p_value, msprt_p_value(mean_t - mean_c, variance, tau2))
                if p_value < alpha and rejected_at is None:
                    rejected_at = n_c + n_t
        p_values.append(p_value)
    return arms, p_values, rejected_at


def test_msprt_update_computes_what_it_always_computed() -> None:
    for seed in range(40):
        rng = np.random.default_rng(seed)
        looks = [
            (rng.normal(1e3, 5.0, rng.integers(0, 40)), rng.normal(1e3 + 0.8, 5.0, rng.integers(0, 40)))
            for _ in range(12)
        ]
        arms, p_values, rejected_at = _sprt_reference(looks, tau2=0.5, alpha=0.05)
        test = MixtureSPRT(tau2=0.5)
        assert [test.update(control, treatment) for control, treatment in looks] == p_values, seed
        assert [tuple(msgspec.structs.astuple(side)) for side in (test.control, test.treatment)] == arms, seed
        assert test.rejected_at == rejected_at, seed


def test_msprt_p_value_is_the_running_minimum_and_waits_for_two_observations_per_arm() -> None:
    test = MixtureSPRT(tau2=1.0)
    assert test.update(control=[1.0, 2.0], treatment=[5.0]) == 1.0
    assert test.rejected_at is None
    # a lucky start, then a long stretch without any difference: each look's 1 / Lambda climbs back, the
    # always-valid p-value keeps its minimum
    rng = np.random.default_rng(9)
    test.update(control=rng.normal(0.0, 1.0, 10), treatment=rng.normal(1.5, 1.0, 9))
    lowest = test.p_value
    assert lowest < 0.05
    assert test.rejected_at == 22  # 12 control and 10 treatment observations
    for _ in range(20):
        test.update(control=rng.normal(0.0, 1.0, 50), treatment=rng.normal(0.0, 1.0, 50))
        assert test.p_value == lowest
    variance = test.control.variance() / test.control.n + test.treatment.variance() / test.treatment.n
    assert msprt_p_value(test.difference, variance, 1.0) > 10 * lowest
    assert test.stop
    assert test.rejected_at == 22  # still the first rejection


def test_msprt_rejects_bad_settings() -> None:
    with pytest.raises(InvalidArgument) as raised:
        MixtureSPRT(tau2=0.0)
    assert (raised.value.argument, raised.value.value) == ("tau2", 0.0)
    with pytest.raises(InvalidArgument) as raised:
        MixtureSPRT(tau2=1.0, alpha=1.5)
    assert raised.value.argument == "alpha"
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"tau2": -1.0}), type=MixtureSPRT)
    with pytest.raises(InvalidArgument) as raised:
        MixtureSPRT(tau2=1.0).update(treatment=[1.0, math.inf])
    assert raised.value.argument == "treatment[1]"
    with pytest.raises(InvalidArgument) as raised:
        msprt_p_value(0.1, 0.0, 1.0)
    assert raised.value.argument == "variance"


# sample ratio mismatch


def test_srm_flags_5200_to_4800_and_not_5020_to_4980() -> None:
    # chi-square = 2 * 200² / 5000 = 16 on 1 df: p = 6.33e-5
    broken = sample_ratio_mismatch([5200, 4800])
    assert broken.statistic == pytest.approx(16.0)
    assert broken.p_value == pytest.approx(6.334e-5, rel=1e-3)
    assert broken.p_value == pytest.approx(stats.chisquare([5200, 4800]).pvalue, rel=1e-10)
    assert broken.mismatch
    fine = sample_ratio_mismatch([5020, 4980])
    assert fine.p_value == pytest.approx(stats.chisquare([5020, 4980]).pvalue, rel=1e-10)
    assert fine.p_value > 0.5
    assert not fine.mismatch


def test_srm_with_unequal_weights_matches_scipy() -> None:
    counts, weights = [5150, 2400, 2450], [2.0, 1.0, 1.0]
    check = sample_ratio_mismatch(counts, weights, threshold=0.01)
    reference = stats.chisquare(counts, f_exp=[5000.0, 2500.0, 2500.0])
    assert check.expected == (5000.0, 2500.0, 2500.0)
    assert check.df == 2
    assert check.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert check.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert check.mismatch == (reference.pvalue < 0.01)


@pytest.mark.parametrize(
    ("counts", "weights", "field"),
    [([100], None, "counts"), ([0, 0], None, "counts"), ([10, -1], None, "counts[1]"), ([10, 10], [1.0], "weights")],
)
def test_srm_rejects_bad_input(counts, weights, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        sample_ratio_mismatch(counts, weights)
    assert raised.value.argument == field


# CUPED


def correlated(rng: np.random.Generator, size: tuple[int, ...], rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, x), standard normal with correlation rho."""
    x = rng.normal(size=size)
    return rho * x + math.sqrt(1 - rho * rho) * rng.normal(size=size), x


def test_cuped_theta_is_the_regression_slope_and_removes_rho_squared() -> None:
    y, x = correlated(np.random.default_rng(21), (20_000,), 0.7)
    y = 5.0 + 2.0 * y
    fit = cuped(y, x)
    regression = stats.linregress(x, y)
    assert fit.theta == pytest.approx(regression.slope, rel=1e-10)
    assert fit.variance_reduction == pytest.approx(regression.rvalue**2, rel=1e-10)
    # rho² = 0.49; the estimate's standard error is about 2 rho (1 - rho²) / sqrt(n) = 0.005
    assert fit.variance_reduction == pytest.approx(0.49, abs=0.02)
    adjusted = fit.adjust(y, x)
    assert adjusted.var(ddof=1) == pytest.approx(fit.adjusted_variance, rel=1e-12)
    assert adjusted.var(ddof=1) == pytest.approx(y.var(ddof=1) * (1 - 0.49), rel=0.04)
    assert adjusted.mean() == pytest.approx(y.mean(), abs=1e-12)


def test_cuped_keeps_the_effect_estimate_unbiased_and_cuts_its_variance() -> None:
    # 1,000 seeded experiments of 1,000 users split at random, true effect 0.1 on y, covariate correlation 0.7
    rng = np.random.default_rng(22)
    y, x = correlated(rng, (1000, 1000), 0.7)
    treated = rng.random((1000, 1000)) < 0.5
    y = y + 0.1 * treated
    raw, adjusted = [], []
    for yi, xi, ti in zip(y, x, treated, strict=True):
        fit = cuped(yi, xi)
        yi_adj = fit.adjust(yi, xi)
        raw.append(yi[ti].mean() - yi[~ti].mean())
        adjusted.append(yi_adj[ti].mean() - yi_adj[~ti].mean())
    raw_estimates, estimates = np.array(raw), np.array(adjusted)
    # unbiased: the mean of 1,000 estimates with sd ~ sqrt(0.51 * 4 / 1000) = 0.045 is 0.1 within 4 standard errors
    assert estimates.mean() == pytest.approx(0.1, abs=4 * 0.045 / math.sqrt(1000))
    # the estimator's variance drops to about 1 - 0.49 = 0.51 of the raw one (sampling error of the ratio ~ 0.02)
    assert estimates.var() / raw_estimates.var() == pytest.approx(0.51, abs=0.06)


def test_cuped_rejects_a_constant_covariate_and_unpaired_samples() -> None:
    with pytest.raises(InvalidArgument) as raised:
        cuped([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    assert raised.value.argument == "x"
    with pytest.raises(InvalidArgument) as raised:
        cuped([1.0, 2.0, 3.0], [1.0, 2.0])
    assert raised.value.argument == "x"


def test_results_are_frozen_structs_that_encode() -> None:
    result = two_proportion_ztest(10, 100, 20, 100)
    with pytest.raises(AttributeError):
        result.p_value = 0.0  # type: ignore[misc]
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(result), type=Comparison) == result
    assert msgspec.json.decode(msgspec.json.encode(sample_ratio_mismatch([10, 12])))["df"] == 1

"""Drift and anomaly detectors on their own: seeded streams with known change points and injected outliers,
closed forms and River as oracles, and bad parameters."""

from __future__ import annotations

import itertools
import math

import msgspec
import numpy as np
import pytest
from river.drift import ADWIN as RiverADWIN
from river.drift import PageHinkley as RiverPageHinkley
from rtopt.handlers.detection import ADWIN, CUSUM, MAD, IQRFences, Mahalanobis, PageHinkley, ZScore
from scipy import spatial, stats

from rtopt import InvalidArgument, InvalidEvent

SEEDS = range(5)
CHANGE = 10_000


def detections(detector, values) -> list[int]:
    return [i for i, x in enumerate(values) if detector.update(x)]


def step_stream(seed: int) -> list[float]:
    """10,000 values of N(0, 1), then 10,000 of N(1, 1)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.standard_normal(CHANGE), rng.standard_normal(CHANGE) + 1.0]).tolist()


def stationary(seed: int, n: int = 50_000) -> list[float]:
    return np.random.default_rng(1000 + seed).standard_normal(n).tolist()


# stated figures: (most false alarms before the change, most values after it before the first detection,
# most false alarms on 50,000 stationary values), for each of 5 seeds. Measured: ADWIN 0 / 47 / 0,
# Page-Hinkley 1-2 / 66-130 / 3-5, CUSUM 1-5 / 16-30 / 4-8 (about 5 are expected in 50,000 at the
# calibrated rate; 10 is its Poisson 97th percentile).
STATED = {ADWIN: (0, 64, 0), PageHinkley: (3, 160, 10), CUSUM: (5, 40, 10)}


@pytest.mark.parametrize("kind", list(STATED), ids=lambda k: k.__name__)
def test_a_drift_detector_fires_soon_after_a_unit_shift_and_rarely_before(kind) -> None:
    most_false, most_delay, most_stationary = STATED[kind]
    for seed in SEEDS:
        found = detections(kind(), step_stream(seed))
        before = [i for i in found if i < CHANGE]
        after = [i for i in found if i >= CHANGE]
        assert len(before) <= most_false, (seed, before)
        assert after and after[0] - CHANGE <= most_delay, (seed, after[:1])
        assert len(detections(kind(), stationary(seed))) <= most_stationary


@pytest.mark.statistical
def test_calibrated_thresholds_raise_about_one_false_alarm_per_10000_values_where_defaults_raise_many() -> None:
    values = [x for seed in SEEDS for x in stationary(seed)]
    per_10k = {kind.__name__: len(detections(kind(), values)) / (len(values) / 10_000) for kind in (PageHinkley, CUSUM)}
    textbook = {
        "PageHinkley": len(detections(PageHinkley(threshold=50.0), values)) / 25,
        "CUSUM": len(detections(CUSUM(threshold=5.0), values)) / 25,
    }
    assert all(0.2 <= rate <= 1.5 for rate in per_10k.values()), per_10k
    assert all(rate >= 5.0 for rate in textbook.values()), textbook


def test_page_hinkley_detects_where_rivers_does_with_the_same_parameters() -> None:
    values = step_stream(3)[:12_000]
    river = RiverPageHinkley(threshold=30.0)
    expected = []
    for i, x in enumerate(values):
        river.update(x)
        if river.drift_detected:
            expected.append(i)
    assert len(expected) > 3
    assert detections(PageHinkley(threshold=30.0), values) == expected


@pytest.mark.parametrize("clock", [1, 8, 32])
def test_adwin_detects_where_rivers_does(clock: int) -> None:
    values = [x * 0.5 + (i // 3000) % 2 for i, x in enumerate(stationary(7, 15_000))]  # changes every 3,000
    river = RiverADWIN(delta=0.01, clock=clock)
    expected = []
    for i, x in enumerate(values):
        river.update(x)
        if river.drift_detected:
            expected.append(i)
    assert [i // 3000 for i in expected] == [1, 2, 3, 4]  # each change found before the next
    assert detections(ADWIN(delta=0.01, clock=clock), values) == expected
    kept = ADWIN(delta=0.01, clock=clock, replayable=True)
    assert detections(kept, values) == expected
    assert kept.n == len(values) and len(kept.seen) == len(values) - 1 - expected[-1]


def test_adwin_reports_the_same_evidence_whether_it_keeps_its_values_or_not() -> None:
    values = [x + (i // 2500) % 2 for i, x in enumerate(stationary(9, 10_000))]
    kept, plain = ADWIN(replayable=True), ADWIN()
    for x in values:
        found = kept.update(x)
        assert plain.update(x) is found
        if found:  # the sums of the values since the last detection: Python's of the kept ones, River's of hers
            assert (plain.evidence, plain.change_point, plain.n) == (kept.evidence, kept.change_point, kept.n)
    assert kept.detections == plain.detections == 3


def siegmund_arl(drift: float, threshold: float, shift: float) -> float:
    """Siegmund's approximation of a one-sided CUSUM's average run length."""
    delta, b = shift - drift, threshold + 1.166
    if delta == 0:
        return b * b
    return (math.exp(-2 * delta * b) + 2 * delta * b - 1) / (2 * delta * delta)


def run_lengths(detector_args: dict, shift: float, runs: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    lengths = []
    for _ in range(runs):
        cusum, n = CUSUM(target=0.0, sigma=1.0, **detector_args), 0
        while True:
            n += 1
            if cusum.update(rng.standard_normal() + shift):
                break
        lengths.append(n)
    return lengths


def test_cusum_run_lengths_match_siegmunds_approximation() -> None:
    out_of_control = run_lengths({"threshold": 9.0}, shift=1.0, runs=400, seed=1)
    assert np.mean(out_of_control) == pytest.approx(siegmund_arl(0.5, 9.0, 1.0), rel=0.08)
    in_control = run_lengths({"threshold": 4.0}, shift=0.0, runs=400, seed=2)
    one_sided = siegmund_arl(0.5, 4.0, 0.0)
    assert np.mean(in_control) == pytest.approx(one_sided / 2, rel=0.15)  # two equal sides


def test_cusum_change_point_is_where_the_sum_left_zero() -> None:
    cusum = CUSUM(target=10.0, sigma=2.0)
    found = detections(cusum, [10.0] * 50 + [7.0] * 40)
    # z = -1.5 per value from index 50: the lower sum grows by 1.0 a value and passes 8 at the 9th
    assert found == [58]
    assert (cusum.direction, cusum.change_point) == ("down", 50)
    assert cusum.evidence == {"statistic": 9.0, "threshold": 8.0, "target": 10.0, "sigma": 2.0}


def test_a_detector_re_baselines_after_a_shift_so_one_change_is_one_alarm() -> None:
    values = step_stream(4)
    for kind in STATED:
        after = [i for i in detections(kind(), values) if CHANGE <= i < CHANGE + 2000]
        assert len(after) == 1, (kind.__name__, after)


def test_adwin_reports_the_cut_and_the_means_on_either_side() -> None:
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.normal(0.2, 0.05, 2000), rng.normal(0.6, 0.05, 2000)]).tolist()
    adwin = ADWIN()
    [found] = detections(adwin, values)
    cut = adwin.change_point
    assert 1900 <= cut <= 2000 < found <= 2064
    assert adwin.evidence["mean_before"] == pytest.approx(np.mean(values[:cut]))
    assert adwin.evidence["mean_after"] == pytest.approx(np.mean(values[cut : found + 1]))


def test_a_detector_decoded_from_a_snapshot_goes_on_as_if_never_stopped() -> None:
    values = step_stream(6)
    kinds = (
        (ADWIN, {"replayable": True}),
        (ADWIN, {"replayable": True, "clock": 1}),
        (PageHinkley, {}),
        (CUSUM, {}),
        (CUSUM, {"sigma": 1.0}),
    )
    for (kind, options), stop in itertools.product(kinds, (5_000, 10_003, 10_100)):
        never_stopped = kind(**options)
        whole = detections(never_stopped, values)
        first = kind(**options)
        head = detections(first, values[:stop])
        copy = msgspec.msgpack.decode(msgspec.msgpack.encode(first), type=kind)
        assert msgspec.to_builtins(copy) == msgspec.to_builtins(first), (kind.__name__, stop)
        assert copy.n == first.n == stop
        tail = [i + stop for i in detections(copy, values[stop:])]
        assert head + tail == whole, (kind.__name__, options, stop)
        assert msgspec.to_builtins(copy) == msgspec.to_builtins(never_stopped)


def test_an_adwin_snapshot_that_also_holds_its_count_and_sum_decodes_to_the_same_detector() -> None:
    values = step_stream(6)
    first = ADWIN(replayable=True)
    detections(first, values[:10_100])
    [change] = detections(ADWIN(replayable=True), values[:10_100])
    older = {**msgspec.to_builtins(first), "n": 10_100, "total": math.fsum(values[change + 1 : 10_100])}
    copy = msgspec.msgpack.decode(msgspec.msgpack.encode(older), type=ADWIN)
    assert copy.n == 10_100
    assert detections(copy, values[10_100:]) == detections(first, values[10_100:])
    assert msgspec.to_builtins(copy) == msgspec.to_builtins(first)


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [(ADWIN, "delta", 1.5), (PageHinkley, "threshold", 0.0), (CUSUM, "drift", -1.0), (ZScore, "window", 2)],
)
def test_bad_parameters_name_the_field_and_the_value(kind, field, value) -> None:
    with pytest.raises(InvalidEvent) as raised:
        kind(**{field: value})
    assert (raised.value.field, raised.value.value) == (field, value)
    assert f"{kind.__name__}.{field} = {value!r}" in str(raised.value)


# --- anomalies --------------------------------------------------------------------------------------------

OUTLIERS = [300, 520, 777, 1010, 1400, 1650, 1900]


def series_with_outliers(seed: int = 3, inject: bool = True) -> list[float]:
    values = np.random.default_rng(seed).normal(50.0, 5.0, 2000)
    if inject:
        values[OUTLIERS] = 50.0 + np.array([45.0, -40.0, 60.0, 42.0, -55.0, 70.0, 48.0])
    return values.tolist()


@pytest.mark.parametrize("kind", [ZScore, IQRFences, MAD])
def test_an_anomaly_detector_flags_injected_outliers_and_not_the_clean_points_around_them(kind) -> None:
    flagged = set(detections(kind(), series_with_outliers()))
    assert set(OUTLIERS) <= flagged
    around = {i + k for i in OUTLIERS for k in range(-10, 11) if k}
    flagged_without_outliers = set(detections(kind(), series_with_outliers(inject=False)))
    assert flagged & around <= flagged_without_outliers  # the outliers made no neighbour look unusual
    assert len(flagged - set(OUTLIERS)) <= 0.01 * 2000


def test_scores_agree_with_numpy_and_scipy_over_the_window() -> None:
    values = series_with_outliers(5)[:400]
    zscore, iqr, mad = ZScore(window=100), IQRFences(window=100), MAD(window=100)
    for x in values:
        zscore.update(x), iqr.update(x), mad.update(x)
    probe = 71.0
    window = np.array(zscore.values)
    assert zscore.score(probe) == pytest.approx(abs(probe - window.mean()) / window.std(ddof=1))
    q1, q3 = np.quantile(iqr.values, [0.25, 0.75])
    assert iqr.score(probe) == pytest.approx((probe - q3) / (q3 - q1))
    robust = stats.median_abs_deviation(mad.values, scale="normal")
    assert mad.score(probe) == pytest.approx(abs(probe - np.median(mad.values)) / robust)


def test_an_outlier_does_not_join_the_baseline_but_a_level_shift_becomes_the_new_one() -> None:
    detector = ZScore(window=50, min_samples=10)
    base = np.random.default_rng(1).normal(0.0, 1.0, 100).tolist()
    detections(detector, base)
    std_before = detector.baseline()["std"]
    assert detector.update(25.0) and detector.baseline()["std"] == std_before
    shifted = np.random.default_rng(2).normal(20.0, 1.0, 40).tolist()
    flagged = detections(detector, shifted)
    assert flagged == list(range(9))  # the run of 10 (with the 25.0 before it) is a shift, not outliers
    assert detector.baseline()["mean"] == pytest.approx(20.0, abs=1.0)


def test_mahalanobis_flags_a_point_off_the_correlation_that_each_metric_alone_finds_ordinary() -> None:
    rng = np.random.default_rng(4)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    points = rng.multivariate_normal([0.0, 0.0], cov, 500)
    detector = Mahalanobis(dimensions=2, shrinkage=0.0)
    flags = [detector.update(p) for p in points]
    assert sum(flags) <= 2
    learnt = points[~np.array(flags)]
    probe = [1.5, -1.5]  # 1.5 sd on each axis, against a correlation of 0.9
    inverse = np.linalg.inv(np.cov(learnt.T))
    expected = spatial.distance.mahalanobis(probe, learnt.mean(axis=0), inverse) ** 2
    assert detector.score(probe) == pytest.approx(expected, rel=1e-6)
    assert detector.update(probe)
    assert detector.threshold == pytest.approx(stats.chi2.ppf(0.999, 2))


def test_mahalanobis_refuses_a_vector_of_the_wrong_size() -> None:
    with pytest.raises(InvalidArgument) as raised:
        Mahalanobis(dimensions=3).update([1.0, 2.0])
    assert (raised.value.argument, raised.value.value) == ("x", [1.0, 2.0])


def test_the_mad_of_windows_of_every_size_is_scipys() -> None:
    rng = np.random.default_rng(12)
    detector = MAD(window=25, min_samples=2)
    for x in rng.standard_t(3, 60):  # heavy tails: the window fills, slides and keeps its odd and even sizes
        detector.update(float(x))
        if len(detector.values) >= 2:
            assert detector.baseline()["mad"] == pytest.approx(stats.median_abs_deviation(detector.values))
            assert detector.baseline()["median"] == pytest.approx(np.median(detector.values))


def test_a_baseline_needing_more_values_than_its_window_holds_is_refused() -> None:
    with pytest.raises(InvalidEvent) as raised:
        IQRFences(window=10, min_samples=20)
    assert (raised.value.field, raised.value.value) == ("min_samples", 20)


@pytest.mark.parametrize("kind", [ZScore, IQRFences, MAD])
def test_an_anomaly_detector_decoded_from_a_snapshot_goes_on_as_if_never_stopped(kind) -> None:
    values = series_with_outliers(9)
    uninterrupted = kind()
    whole = detections(uninterrupted, values)
    first = kind()
    head = detections(first, values[:777])
    copy = msgspec.msgpack.decode(msgspec.msgpack.encode(first), type=kind)
    assert head + [i + 777 for i in detections(copy, values[777:])] == whole
    assert copy.baseline() == pytest.approx(uninterrupted.baseline())

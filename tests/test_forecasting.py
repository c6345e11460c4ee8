"""Forecasters against closed forms and scipy, interval coverage on seeded series, and the ensemble."""

from __future__ import annotations

import numpy as np
import pytest
from rtopt.handlers.detection import Ensemble, ExponentialSmoothing, Holt, LinearTrend, MovingAverage
from rtopt.handlers.detection.forecasting import Errors
from scipy import stats

from rtopt import InvalidEvent


def fed(model, values):
    for x in values:
        model.update(float(x))
    return model


def test_moving_average_is_the_mean_of_the_window_with_a_t_interval() -> None:
    values = np.random.default_rng(1).normal(10.0, 2.0, 30)
    model = fed(MovingAverage(window=8), values)
    window = values[-8:]
    half = stats.t.ppf(0.975, 7) * window.std(ddof=1) * np.sqrt(1 + 1 / 8)
    prediction = model.forecast(3)
    assert prediction.point == pytest.approx(window.mean())
    assert (prediction.low, prediction.high) == pytest.approx((window.mean() - half, window.mean() + half))


def test_simple_smoothing_is_the_exponentially_weighted_sum_of_the_past() -> None:
    values = np.random.default_rng(2).normal(5.0, 1.0, 25)
    alpha = 0.3
    weights = alpha * (1 - alpha) ** np.arange(24)  # x_n ... x_2, then what is left for x_1
    expected = float(weights @ values[:0:-1] + (1 - alpha) ** 24 * values[0])
    assert fed(ExponentialSmoothing(alpha=alpha), values).forecast(1).point == pytest.approx(expected)


def test_holt_and_the_regression_extend_a_straight_line_exactly() -> None:
    line = 3.0 + 0.5 * np.arange(12)
    assert fed(Holt(), line).forecast(4).point == pytest.approx(3.0 + 0.5 * 15)
    regression = fed(LinearTrend(window=12), line + np.random.default_rng(3).normal(0, 0.1, 12))
    fit = stats.linregress(np.arange(12), regression.values)
    assert regression.forecast(2).point == pytest.approx(fit.intercept + fit.slope * 13)


@pytest.mark.parametrize(
    ("model", "series"),
    [
        (MovingAverage(window=20), "level"),
        (ExponentialSmoothing(alpha=0.1), "level"),
        (LinearTrend(window=30), "trend"),
        (Holt(alpha=0.2, beta=0.05), "trend"),
    ],
    ids=["moving_average", "smoothing", "regression", "holt"],
)
@pytest.mark.statistical
def test_one_step_intervals_cover_about_95_percent(model, series: str) -> None:
    rng = np.random.default_rng(4)
    values = rng.normal(0.0, 1.0, 1500) + (0.05 * np.arange(1500) if series == "trend" else 0.0)
    covered = total = 0
    for i, x in enumerate(values):
        if i >= 100:
            prediction = model.forecast(1)
            covered += prediction.low <= x <= prediction.high
            total += 1
        model.update(float(x))
    assert 0.92 <= covered / total <= 0.98


def test_errors_are_tracked_as_mae_and_mape() -> None:
    errors = Errors()
    for forecast, actual in ((10.0, 12.0), (5.0, 4.0), (1.0, 0.0)):
        errors.add(forecast, actual)
    assert errors.mae == pytest.approx((2 + 1 + 1) / 3)
    assert errors.mape == pytest.approx((2 / 12 + 1 / 4) / 2)  # the zero actual has no percentage error


def test_the_ensemble_leans_on_its_most_accurate_member() -> None:
    rng = np.random.default_rng(5)
    trend = fed(Ensemble(), 100.0 + 2.0 * np.arange(60) + rng.normal(0, 1.0, 60))
    level = fed(Ensemble(), 100.0 + rng.normal(0, 5.0, 60))
    trend_weights, level_weights = trend.weights(), level.weights()
    assert max(trend_weights, key=trend_weights.get) in ("holt", "linear_trend")
    assert trend_weights["moving_average"] < 0.1
    assert level_weights["moving_average"] + level_weights["exponential_smoothing"] > 0.5
    assert sum(trend_weights.values()) == pytest.approx(1.0)
    members = [m.errors.mae for m in trend.members]
    assert trend.errors.mae < np.mean(members)


def test_bad_settings_name_the_field() -> None:
    with pytest.raises(InvalidEvent) as raised:
        Holt(alpha=0.0)
    assert raised.value.field == "alpha"

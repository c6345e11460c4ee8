"""Feature transformations and the feature schema: calendar features, online scalers, encoders, schema."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import msgspec
import numpy as np
import pytest
from rtopt.streams import RunningMoments
from rtopt.streams.features import (
    Binner,
    BusinessHours,
    FeatureSchema,
    FeatureSpec,
    Interactions,
    OneHot,
    OnlineMinMax,
    OnlineZScore,
    cyclical_day_of_week,
    cyclical_hour,
    day_of_week,
    hour_of_day,
    interactions,
    is_business_hours,
    is_weekend,
    time_features,
)

from rtopt import InvalidArgument


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# --- calendar features ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "minute", "expected"),
    [(6, 0, (1.0, 0.0)), (0, 0, (0.0, 1.0)), (12, 0, (0.0, -1.0)), (18, 0, (-1.0, 0.0)), (3, 0, (0.5**0.5, 0.5**0.5))],
)
def test_cyclical_hour_at_known_times(hour: int, minute: int, expected: tuple[float, float]) -> None:
    sin, cos = cyclical_hour(ts(2024, 3, 15, hour, minute))
    assert sin == pytest.approx(expected[0], abs=1e-12)
    assert cos == pytest.approx(expected[1], abs=1e-12)


def test_cyclical_hour_uses_fractional_hours() -> None:
    t = ts(2024, 3, 15, 6, 30)
    assert hour_of_day(t) == 6.5
    sin, cos = cyclical_hour(t)
    angle = 2 * math.pi * 6.5 / 24
    assert (sin, cos) == pytest.approx((math.sin(angle), math.cos(angle)), abs=1e-12)
    # 23:59:59 is next to midnight, not at the other end of the scale
    late, midnight = cyclical_hour(ts(2024, 3, 15, 23, 59, 59)), cyclical_hour(ts(2024, 3, 16))
    assert math.dist(late, midnight) < 1e-3


def test_day_and_hour_match_datetime_including_before_the_epoch() -> None:
    for t in np.random.default_rng(3).uniform(-3e9, 3e9, size=500):
        when = datetime.fromtimestamp(float(t), tz=UTC)
        midnight = when.replace(hour=0, minute=0, second=0, microsecond=0)
        assert day_of_week(float(t)) == when.weekday()
        assert hour_of_day(float(t)) == pytest.approx((when - midnight).total_seconds() / 3600, abs=1e-6)


def test_cyclical_day_of_week_at_known_days() -> None:
    monday, thursday, sunday = ts(2024, 1, 8, 13), ts(2024, 1, 11), ts(2024, 1, 14, 23, 59)
    assert cyclical_day_of_week(monday) == (0.0, 1.0)
    assert cyclical_day_of_week(thursday) == pytest.approx((math.sin(6 * math.pi / 7), math.cos(6 * math.pi / 7)))
    assert cyclical_day_of_week(sunday) == pytest.approx((math.sin(12 * math.pi / 7), math.cos(12 * math.pi / 7)))


def test_weekend_at_known_dates() -> None:
    assert is_weekend(ts(2024, 1, 6))  # Saturday 00:00
    assert is_weekend(ts(2024, 1, 7, 23, 59, 59))  # Sunday
    assert not is_weekend(ts(2024, 1, 8))  # Monday 00:00
    assert not is_weekend(ts(2024, 1, 5, 23, 59, 59))  # Friday
    assert is_weekend(ts(2024, 1, 5, 12), weekend=(4, 5))  # a Friday-Saturday weekend


def test_business_hours_defaults_are_nine_to_five_monday_to_friday_utc() -> None:
    assert is_business_hours(ts(2024, 1, 8, 9))  # Monday 09:00 is in
    assert is_business_hours(ts(2024, 1, 12, 16, 59, 59))  # Friday 16:59:59 is in
    assert not is_business_hours(ts(2024, 1, 8, 17))  # 17:00 is out
    assert not is_business_hours(ts(2024, 1, 8, 8, 59, 59))
    assert not is_business_hours(ts(2024, 1, 6, 12))  # Saturday noon
    assert not is_business_hours(ts(2024, 1, 7, 12))  # Sunday noon


def test_business_hours_are_configurable() -> None:
    weekend_shift = BusinessHours(start_hour=8, end_hour=20.5, weekdays=(5, 6))
    assert weekend_shift(ts(2024, 1, 6, 20, 29))
    assert not weekend_shift(ts(2024, 1, 6, 20, 30))
    assert not weekend_shift(ts(2024, 1, 8, 12))
    assert is_business_hours(ts(2024, 1, 8, 7), start_hour=7, end_hour=8)
    with pytest.raises(ValueError, match="start_hour < end_hour"):
        BusinessHours(start_hour=17, end_hour=9)
    with pytest.raises(ValueError, match="weekdays"):
        BusinessHours(weekdays=(7,))


def test_time_features_bundle() -> None:
    features = time_features(ts(2024, 1, 6, 6))  # Saturday 06:00
    assert list(features) == ["hour_sin", "hour_cos", "dow_sin", "dow_cos", "is_weekend", "is_business_hours"]
    assert features["hour_sin"] == pytest.approx(1.0)
    assert features["dow_sin"] == pytest.approx(math.sin(2 * math.pi * 5 / 7))
    assert (features["is_weekend"], features["is_business_hours"]) == (1.0, 0.0)


def test_calendar_features_reject_bad_times() -> None:
    with pytest.raises(InvalidArgument) as raised:
        cyclical_hour(float("nan"))
    assert raised.value.argument == "time"
    with pytest.raises(InvalidArgument):
        is_weekend("2024-01-06")  # type: ignore[arg-type]


# --- online scalers -------------------------------------------------------------------------------


@pytest.mark.parametrize("ddof", [0, 1])
def test_zscore_matches_numpy_on_seeded_data(ddof: int) -> None:
    data = np.random.default_rng(42).normal(loc=250.0, scale=40.0, size=1_000)
    scaler = OnlineZScore(ddof=ddof)
    for i, x in enumerate(data, start=1):
        scaler.learn_one(float(x))
        if i in (2, 10, 500):
            assert scaler.mean == pytest.approx(np.mean(data[:i]), rel=1e-12)
            assert scaler.variance == pytest.approx(np.var(data[:i], ddof=ddof), rel=1e-10)
    mean, std = np.mean(data), np.std(data, ddof=ddof)
    for x in (100.0, 250.0, 333.3, float(data[17])):
        assert scaler.transform_one(x) == pytest.approx((x - mean) / std, rel=1e-10)
    assert scaler.n == 1_000


def test_zscore_is_stable_far_from_zero() -> None:
    # the naive sum-of-squares formula loses every digit here; Welford does not
    data = 1e9 + np.random.default_rng(5).normal(scale=0.01, size=2_000)
    scaler = OnlineZScore()
    for x in data:
        scaler.learn_one(float(x))
    assert scaler.variance == pytest.approx(np.var(data), rel=1e-6)


def test_zscore_of_constant_or_empty_stream_is_zero() -> None:
    scaler = OnlineZScore()
    assert scaler.transform_one(5.0) == 0.0  # nothing learnt yet
    for _ in range(10):
        scaler.learn_one(0.1)
    assert scaler.variance == 0.0
    assert scaler.transform_one(0.1) == 0.0
    assert scaler.transform_one(7.0) == 0.0  # zero variance: 0.0, never inf or NaN
    one = OnlineZScore(ddof=1)
    one.learn_one(3.0)
    assert one.variance == 0.0 and one.transform_one(4.0) == 0.0


def test_zscore_variance_and_std_are_properties_with_the_scalers_ddof() -> None:
    assert (OnlineZScore().variance, OnlineZScore().std) == (0.0, 0.0)
    scaler = OnlineZScore(ddof=0)
    for x in (1.0, 3.0):
        scaler.learn_one(x)
    assert (scaler.n, scaler.mean, scaler.variance, scaler.std) == (2, 2.0, 1.0, 1.0)
    assert 3.0 / scaler.std == 3.0
    # not a RunningMoments, whose variance (ddof=1 by default) would read it as 2.0
    assert not isinstance(scaler, RunningMoments)
    assert scaler.moments == RunningMoments.of([1.0, 3.0])


def test_zscore_rejects_bad_values_and_round_trips_through_msgpack() -> None:
    scaler = OnlineZScore(name="latency")
    with pytest.raises(InvalidArgument) as raised:
        scaler.learn_one(float("nan"))
    assert (raised.value.argument, scaler.n) == ("latency", 0)
    with pytest.raises(InvalidArgument):
        scaler.learn_one(True)  # type: ignore[arg-type]
    for x in (1.0, 2.0, 6.0):
        scaler.learn_one(x)
    copy = msgspec.msgpack.decode(msgspec.msgpack.encode(scaler), type=OnlineZScore)
    assert copy == scaler and copy.transform_one(6.0) == scaler.transform_one(6.0)


def test_min_max_scaling() -> None:
    scaler = OnlineMinMax()
    assert scaler.transform_one(3.0) == 0.0  # nothing learnt yet
    scaler.learn_one(20.0)
    assert scaler.transform_one(20.0) == 0.0  # a single value
    assert scaler.transform_one(25.0) == 0.0
    for x in (60.0, 40.0):
        scaler.learn_one(x)
    assert (scaler.minimum, scaler.maximum, scaler.n) == (20.0, 60.0, 3)
    assert [scaler.transform_one(x) for x in (20.0, 30.0, 60.0, 80.0, 0.0)] == [0.0, 0.25, 1.0, 1.5, -0.5]
    clipped = OnlineMinMax(clip=True)
    for x in (20.0, 60.0):
        clipped.learn_one(x)
    assert [clipped.transform_one(x) for x in (80.0, 0.0, 50.0)] == [1.0, 0.0, 0.75]


def test_min_max_matches_numpy_on_seeded_data() -> None:
    data = np.random.default_rng(9).exponential(scale=3.0, size=300)
    scaler = OnlineMinMax()
    for x in data:
        scaler.learn_one(float(x))
    expected = (data - data.min()) / (data.max() - data.min())
    assert [scaler.transform_one(float(x)) for x in data] == pytest.approx(list(expected), rel=1e-12)


# --- encoders -------------------------------------------------------------------------------------


def test_one_hot_with_other_bucket() -> None:
    model = OneHot("model", ["gpt-small", "gpt-large"])
    assert model.columns == ["model=gpt-small", "model=gpt-large", "model=other"]
    assert model.transform_one("gpt-large") == {"model=gpt-small": 0.0, "model=gpt-large": 1.0, "model=other": 0.0}
    assert model.transform_one("claude") == {"model=gpt-small": 0.0, "model=gpt-large": 0.0, "model=other": 1.0}
    named = OneHot("model", ["a"], other="unknown")
    assert named.transform_one("b") == {"model=a": 0.0, "model=unknown": 1.0}


def test_one_hot_without_other_rejects_unknown_values() -> None:
    strict = OneHot("region", ["eu", "us"], other=None)
    assert strict.transform_one("us") == {"region=eu": 0.0, "region=us": 1.0}
    with pytest.raises(InvalidArgument) as raised:
        strict.transform_one("apac")
    assert (raised.value.argument, raised.value.value) == ("region", "apac")
    with pytest.raises(InvalidArgument) as raised:
        strict.transform_one(3)  # type: ignore[arg-type]
    assert raised.value.value == 3
    with pytest.raises(InvalidArgument, match="other bucket"):
        OneHot("region", ["eu", "other"])
    with pytest.raises(InvalidArgument, match="more than once"):
        OneHot("region", ["eu", "eu"])


def test_interactions() -> None:
    values = {"latency": 2.0, "cost": 3.0, "error": 0.5, "ignored": 100.0}
    assert interactions(values, [("latency", "cost")]) == {"latency*cost": 6.0}
    cross = Interactions(["latency", "cost", "error"], degree=3)
    assert cross.transform_one(values) == {
        "latency*cost": 6.0,
        "latency*error": 1.0,
        "cost*error": 1.5,
        "latency*cost*error": 3.0,
    }
    assert interactions(values, [("latency", "error")], separator="_x_") == {"latency_x_error": 1.0}
    with pytest.raises(InvalidArgument) as raised:
        interactions(values, [("latency", "tokens")])
    assert raised.value.argument == "tokens"
    with pytest.raises(InvalidArgument) as raised:
        interactions({"a": 1.0, "b": "x"}, [("a", "b")])
    assert (raised.value.argument, raised.value.value) == ("b", "x")
    with pytest.raises(ValueError):
        Interactions(["a", "b"], degree=3)


@pytest.mark.parametrize("right", [False, True])
def test_binning_matches_numpy_digitize(right: bool) -> None:
    edges = [0.0, 10.0, 20.5, 100.0]
    binner = Binner(edges, right=right)
    xs = [-5.0, 0.0, 0.1, 9.999, 10.0, 10.5, 20.5, 50.0, 100.0, 100.1, 1e9]
    xs += list(np.random.default_rng(1).uniform(-20, 120, size=200))
    expected = np.digitize(xs, edges, right=right)
    assert [binner.transform_one(float(x)) for x in xs] == list(expected)
    assert binner.n_bins == 5


def test_binning_edges_by_hand_and_bad_input() -> None:
    binner = Binner([1.0, 2.0], name="tier")
    assert [binner.transform_one(x) for x in (0.5, 1.0, 1.5, 2.0, 3.0)] == [0, 1, 1, 2, 2]
    assert [Binner([1.0, 2.0], right=True).transform_one(x) for x in (1.0, 1.5, 2.0, 2.5)] == [0, 1, 1, 2]
    with pytest.raises(InvalidArgument) as raised:
        binner.transform_one(float("nan"))
    assert raised.value.argument == "tier"
    with pytest.raises(ValueError, match="strictly increasing"):
        Binner([1.0, 1.0])
    with pytest.raises(ValueError):
        Binner([])


# --- the schema -----------------------------------------------------------------------------------


SCHEMA = FeatureSchema(
    [
        FeatureSpec("latency", "continuous", default=500.0),
        FeatureSpec("error_rate", "continuous", nullable=True),
        FeatureSpec("weekend", "binary"),
        FeatureSpec("tier", "ordinal", categories=["free", "pro", "team"], default="free"),
        FeatureSpec("model", "categorical", categories=["small", "large"], other="other"),
        FeatureSpec("region", "categorical", categories=["eu", "us"], nullable=True),
    ],
    version=3,
)


def test_schema_vector_in_schema_order() -> None:
    values = {
        "region": "us",
        "model": "large",
        "tier": "team",
        "weekend": False,
        "error_rate": 0.25,
        "latency": 320,
        "not_in_schema": "ignored",
    }
    vector = SCHEMA.vector(values)
    assert vector == {
        "latency": 320.0,
        "error_rate": 0.25,
        "error_rate.missing": 0.0,
        "weekend": 0.0,
        "tier": 2.0,
        "model=small": 0.0,
        "model=large": 1.0,
        "model=other": 0.0,
        "region=eu": 0.0,
        "region=us": 1.0,
        "region.missing": 0.0,
    }
    assert list(vector) == SCHEMA.columns
    assert all(type(v) is float for v in vector.values())
    array = SCHEMA.to_array(values)
    assert array.dtype == np.float64
    assert array.tolist() == [320.0, 0.25, 0.0, 0.0, 2.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]


def test_schema_defaults_and_nullable_features() -> None:
    vector = SCHEMA.vector({"weekend": 1, "model": "gpt-9"})
    assert vector == {
        "latency": 500.0,  # default
        "error_rate": 0.0,  # nullable, no default
        "error_rate.missing": 1.0,
        "weekend": 1.0,
        "tier": 0.0,  # default "free"
        "model=small": 0.0,
        "model=large": 0.0,
        "model=other": 1.0,  # unknown category -> other bucket
        "region=eu": 0.0,
        "region=us": 0.0,
        "region.missing": 1.0,
    }
    # None is missing too
    assert SCHEMA.vector({"weekend": True, "model": "small", "latency": None})["latency"] == 500.0
    defaulted = FeatureSchema([FeatureSpec("x", "continuous", nullable=True, default=7.0)])
    assert defaulted.vector({}) == {"x": 7.0, "x.missing": 1.0}
    assert defaulted.vector({"x": 7.0}) == {"x": 7.0, "x.missing": 0.0}


def test_missing_non_nullable_feature_without_default_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as raised:
        SCHEMA.vector({"model": "small"})
    assert raised.value.argument == "weekend"
    assert "weekend" in str(raised.value)
    with pytest.raises(InvalidArgument) as raised:
        SCHEMA.to_array({"weekend": True})
    assert raised.value.argument == "model"


@pytest.mark.parametrize(
    ("feature", "value"),
    [
        ("latency", "fast"),  # wrong type
        ("latency", True),  # a bool is not a number here
        ("latency", float("inf")),
        ("weekend", 0.5),
        ("weekend", "yes"),
        ("tier", "enterprise"),  # unknown category, ordinal has no other
        ("tier", 1),
        ("region", "apac"),  # unknown category, no other bucket
        ("model", 3.0),
    ],
)
def test_bad_input_names_the_feature_and_the_value(feature: str, value: object) -> None:
    values = {"weekend": True, "model": "small", feature: value}
    with pytest.raises(InvalidArgument) as raised:
        SCHEMA.vector(values)
    assert raised.value.argument == feature
    assert raised.value.value == value or (isinstance(value, float) and math.isinf(value))


def test_feature_specs_are_checked_when_defined() -> None:
    with pytest.raises(InvalidArgument) as raised:
        FeatureSpec("tier", "ordinal", categories=["a"], default="b")  # invalid default
    assert raised.value.argument == "tier"
    with pytest.raises(InvalidArgument):
        FeatureSpec("kind", "categorical")  # no categories
    with pytest.raises(InvalidArgument):
        FeatureSpec("x", "continuous", categories=["a"])
    with pytest.raises(InvalidArgument):
        FeatureSpec("x", "ordinal", categories=["a"], other="other")
    with pytest.raises(InvalidArgument):
        FeatureSpec("x", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        FeatureSpec("x", "continuous", version=0)
    with pytest.raises(InvalidArgument, match="more than once"):
        FeatureSchema([FeatureSpec("x", "continuous"), FeatureSpec("x", "binary")])
    with pytest.raises(InvalidArgument, match="more than one feature"):
        FeatureSchema([FeatureSpec("m", "categorical", categories=["a"]), FeatureSpec("m=a", "continuous")])


def test_schema_round_trips_through_json_and_is_checked_when_decoded() -> None:
    blob = msgspec.json.encode(SCHEMA)
    decoded = msgspec.json.decode(blob, type=FeatureSchema)
    assert decoded == SCHEMA
    assert decoded.fingerprint() == SCHEMA.fingerprint()
    assert decoded.vector({"weekend": True, "model": "small"}) == SCHEMA.vector({"weekend": True, "model": "small"})
    bad = blob.replace(b'"ordinal"', b'"ordnial"')
    with pytest.raises((InvalidArgument, msgspec.ValidationError)):
        msgspec.json.decode(bad, type=FeatureSchema)
    bumped = FeatureSchema(SCHEMA.features, version=4)
    assert bumped.fingerprint() != SCHEMA.fingerprint()
    assert SCHEMA.names == ["latency", "error_rate", "weekend", "tier", "model", "region"]
    assert SCHEMA.spec("tier").categories == ["free", "pro", "team"]
    with pytest.raises(KeyError):
        SCHEMA.spec("nope")

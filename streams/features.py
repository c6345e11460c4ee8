"""Feature transformations and a feature schema.

Small, pure building blocks that turn raw request and window data into the numeric feature vectors a
contextual policy reads (and a :class:`~rtopt.events.Decision` records as its ``context``):

- calendar features of an event time (seconds since the epoch, **UTC**): :func:`cyclical_hour`,
  :func:`cyclical_day_of_week`, :func:`is_weekend`, :class:`BusinessHours` / :func:`is_business_hours`,
  and :func:`time_features`, which bundles them;
- online scalers learnt from a stream one value at a time: :class:`OnlineZScore` (running mean and
  variance) and :class:`OnlineMinMax`;
- encoders: :class:`OneHot` (fixed vocabulary with an explicit "other" bucket), :class:`Interactions` /
  :func:`interactions` (products of named numeric features) and :class:`Binner` (explicit bin edges,
  :func:`numpy.digitize` semantics);
- a schema: :class:`FeatureSpec` and :class:`FeatureSchema` turn a mapping of raw values into an ordered
  ``dict[str, float]`` (or a numpy array), filling defaults and one-hot / ordinal encoding categories.

Nothing here reads the wall clock or a global random generator, so the same inputs always give the same
features, live and in replay. Bad input raises :class:`rtopt.InvalidArgument` whose ``argument`` names the
feature and whose ``value`` holds what was given. The state of the online scalers is a ``msgspec.Struct``,
so a handler can keep one in its state and snapshot it.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec
import numpy as np
from rtopt.streams.moments import RunningMoments

from rtopt.arguments import in_range, invalid, non_empty, positive
from rtopt.errors import InvalidArgument

SECONDS_PER_HOUR = 3_600.0
SECONDS_PER_DAY = 86_400.0
EPOCH_WEEKDAY = 3
"""Weekday of 1970-01-01 (a Thursday), counting Monday as 0 like :meth:`datetime.date.weekday`."""
WEEKDAYS: tuple[int, ...] = (0, 1, 2, 3, 4)
"""Monday to Friday."""
WEEKEND: tuple[int, ...] = (5, 6)
"""Saturday and Sunday."""

FeatureType = Literal["continuous", "categorical", "binary", "ordinal"]
FEATURE_TYPES: tuple[str, ...] = ("continuous", "categorical", "binary", "ordinal")
Scalar = bool | int | float | str


# --- checks ---------------------------------------------------------------------------------------


def _is_number(value: object) -> bool:
    """True for finite-or-not real numbers (ints, floats, numpy scalars), False for bools."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _number(value: object, field: str) -> float:
    """``value`` as a finite float, or InvalidArgument naming ``field``."""
    if not _is_number(value):
        raise InvalidArgument(
            f"{field} = {value!r}: expected a number, not {type(value).__name__}", argument=field, value=value
        )
    number = float(value)  # type: ignore[arg-type]
    if not math.isfinite(number):
        raise InvalidArgument(f"{field} = {value!r}: must be a finite number", argument=field, value=value)
    return number


# --- calendar features ----------------------------------------------------------------------------


def cyclical(value: float, period: float) -> tuple[float, float]:
    """``(sin, cos)`` of ``value`` on a circle of circumference ``period``.

    Encoding a periodic quantity as a point on the unit circle keeps its ends together: 23:59 is next to
    00:00, Sunday next to Monday.

    >>> sin, cos = cyclical(3.0, 12.0)
    >>> round(sin, 12), round(cos, 12)
    (1.0, 0.0)
    """
    positive("period", period)
    angle = 2.0 * math.pi * (_number(value, "value") / period)
    return math.sin(angle), math.cos(angle)


def hour_of_day(t: float) -> float:
    """The fractional hour of day in ``[0, 24)`` of event time ``t`` (seconds since the epoch, UTC).

    >>> hour_of_day(6 * 3600 + 30 * 60)
    6.5
    """
    return (_number(t, "time") % SECONDS_PER_DAY) / SECONDS_PER_HOUR


def day_of_week(t: float) -> int:
    """The day of week of event time ``t`` (UTC): Monday is 0 and Sunday 6, as :meth:`datetime.date.weekday`.

    >>> day_of_week(0.0)  # 1970-01-01 was a Thursday
    3
    """
    return (math.floor(_number(t, "time") / SECONDS_PER_DAY) + EPOCH_WEEKDAY) % 7


def cyclical_hour(t: float) -> tuple[float, float]:
    """``(sin, cos)`` of the fractional hour of day of ``t`` (UTC) over a 24-hour period.

    06:00 maps to ``(1, 0)``, 12:00 to ``(0, -1)``, 18:00 to ``(-1, 0)`` and midnight to ``(0, 1)``.

    >>> sin, cos = cyclical_hour(6 * 3600)  # 1970-01-01 06:00 UTC
    >>> round(sin, 12), round(cos, 12)
    (1.0, 0.0)
    """
    return cyclical(hour_of_day(t), 24.0)


def cyclical_day_of_week(t: float) -> tuple[float, float]:
    """``(sin, cos)`` of the (whole) day of week of ``t`` (UTC, Monday = 0) over a 7-day period.

    >>> cyclical_day_of_week(4 * 86400)  # 1970-01-05, a Monday
    (0.0, 1.0)
    """
    return cyclical(day_of_week(t), 7.0)


def is_weekend(t: float, weekend: Iterable[int] = WEEKEND) -> bool:
    """True if ``t`` (UTC) falls on one of the ``weekend`` days (default Saturday and Sunday).

    >>> is_weekend(2 * 86400), is_weekend(3 * 86400)  # 1970-01-03 (Sat), 1970-01-04 (Sun)
    (True, True)
    >>> is_weekend(4 * 86400)  # Monday
    False
    """
    return day_of_week(t) in tuple(weekend)


class BusinessHours(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Business hours: ``start_hour <= hour < end_hour`` (fractional hours, UTC) on one of ``weekdays``.

    The default is 09:00-17:00 Monday to Friday, UTC: 09:00 is inside, 17:00 is not. Hours are UTC; for a
    fixed-offset local time, shift the event time first (``hours(t + offset_seconds)``); daylight saving
    is not modelled. ``start_hour < end_hour`` is required (no shift running past midnight).

    >>> hours = BusinessHours()
    >>> monday = 4 * 86400  # 1970-01-05 00:00 UTC, a Monday
    >>> hours(monday + 9 * 3600), hours(monday + 17 * 3600), hours(monday + 8.99 * 3600)
    (True, False, False)
    >>> BusinessHours(start_hour=10, end_hour=14, weekdays=[5])(monday - 2 * 86400 + 12 * 3600)  # Sat noon
    True
    """

    start_hour: float = 9.0
    end_hour: float = 17.0
    weekdays: tuple[int, ...] = WEEKDAYS

    def __post_init__(self) -> None:
        start = _number(self.start_hour, "start_hour")
        end = _number(self.end_hour, "end_hour")
        if not 0.0 <= start < end <= 24.0:
            raise invalid("start_hour, end_hour", (start, end), "business hours need 0 <= start_hour < end_hour <= 24")
        for day in self.weekdays:
            if isinstance(day, bool) or not isinstance(day, int) or not 0 <= day <= 6:
                raise invalid("weekdays", self.weekdays, f"holds {day!r}: weekdays are integers from 0 (Monday) to 6")

    def __call__(self, t: float) -> bool:
        """True if event time ``t`` is within these business hours."""
        return day_of_week(t) in self.weekdays and self.start_hour <= hour_of_day(t) < self.end_hour


DEFAULT_BUSINESS_HOURS = BusinessHours()


def is_business_hours(
    t: float, start_hour: float = 9.0, end_hour: float = 17.0, weekdays: Iterable[int] = WEEKDAYS
) -> bool:
    """True if ``t`` is within ``start_hour <= hour < end_hour`` (UTC) on one of ``weekdays``.

    Defaults: 09:00-17:00, Monday to Friday, UTC. See :class:`BusinessHours`.

    >>> is_business_hours(4 * 86400 + 12 * 3600)  # Monday 12:00 UTC
    True
    >>> is_business_hours(2 * 86400 + 12 * 3600)  # Saturday 12:00 UTC
    False
    """
    return BusinessHours(float(start_hour), float(end_hour), tuple(weekdays))(t)


def time_features(t: float, business_hours: BusinessHours = DEFAULT_BUSINESS_HOURS) -> dict[str, float]:
    """The calendar features of event time ``t`` (UTC), ready for a context vector.

    Keys: ``hour_sin``, ``hour_cos``, ``dow_sin``, ``dow_cos``, ``is_weekend`` and ``is_business_hours``
    (the last two 0.0 or 1.0).

    >>> features = time_features(4 * 86400 + 12 * 3600)  # Monday 12:00 UTC
    >>> {k: round(v, 6) for k, v in features.items()}
    {'hour_sin': 0.0, 'hour_cos': -1.0, 'dow_sin': 0.0, 'dow_cos': 1.0, 'is_weekend': 0.0, 'is_business_hours': 1.0}
    """
    hour_sin, hour_cos = cyclical_hour(t)
    dow_sin, dow_cos = cyclical_day_of_week(t)
    return {
        "hour_sin": hour_sin,
        "hour_cos": hour_cos,
        "dow_sin": dow_sin,
        "dow_cos": dow_cos,
        "is_weekend": float(is_weekend(t)),
        "is_business_hours": float(business_hours(t)),
    }


# --- online scalers -------------------------------------------------------------------------------


class OnlineZScore(msgspec.Struct, forbid_unknown_fields=True):
    """Standardises values with their running mean and variance: ``(x - mean) / std``.

    ``learn_one`` takes a value into the running ``moments``; ``transform_one`` scales with what was learnt
    so far and learns nothing. ``ddof`` is the delta degrees of freedom of :attr:`variance` and :attr:`std`
    (0: population variance, as :func:`numpy.std`'s default; 1: sample variance). Before any value, or
    while the variance is zero (a constant stream), the z-score is 0.0.

    >>> scaler = OnlineZScore()
    >>> for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]:
    ...     scaler.learn_one(x)
    >>> scaler.mean, scaler.std, scaler.transform_one(9.0)
    (5.0, 2.0, 2.0)
    >>> constant = OnlineZScore()
    >>> constant.learn_one(3.0); constant.learn_one(3.0)
    >>> constant.transform_one(3.0)
    0.0
    """

    moments: RunningMoments = msgspec.field(default_factory=RunningMoments)
    ddof: int = 0
    name: str = "x"

    def learn_one(self, x: float) -> None:
        """Take ``x`` into the running moments."""
        self.moments.update(_number(x, self.name))

    @property
    def n(self) -> int:
        """How many values were learnt."""
        return self.moments.n

    @property
    def mean(self) -> float:
        """The mean of the values learnt (0.0 before any)."""
        return self.moments.mean

    @property
    def variance(self) -> float:
        """The variance of the values learnt, ``m2 / (n - ddof)``; 0.0 while ``n <= ddof``."""
        return self.moments.variance(self.ddof)

    @property
    def std(self) -> float:
        """The standard deviation of the values learnt."""
        return math.sqrt(self.variance)

    def transform_one(self, x: float) -> float:
        """``(x - mean) / std`` with the statistics so far; 0.0 when the variance is zero."""
        value = _number(x, self.name)
        variance = self.variance
        if variance <= 0.0:
            return 0.0
        return (value - self.mean) / math.sqrt(variance)


class OnlineMinMax(msgspec.Struct):
    """Scales values to ``[0, 1]`` with the running minimum and maximum: ``(x - min) / (max - min)``.

    Values outside the range seen so far scale outside ``[0, 1]`` unless ``clip`` is set. Before any
    value, or while every value learnt was the same, the result is 0.0.

    >>> scaler = OnlineMinMax()
    >>> for x in [10.0, 30.0, 20.0]:
    ...     scaler.learn_one(x)
    >>> scaler.transform_one(15.0), scaler.transform_one(40.0)
    (0.25, 1.5)
    >>> OnlineMinMax(clip=True, minimum=10.0, maximum=30.0, n=2).transform_one(40.0)
    1.0
    """

    n: int = 0
    minimum: float | None = None
    maximum: float | None = None
    clip: bool = False
    name: str = "x"

    def learn_one(self, x: float) -> None:
        """Widen the range to include ``x``."""
        value = _number(x, self.name)
        self.n += 1
        self.minimum = value if self.minimum is None else min(self.minimum, value)
        self.maximum = value if self.maximum is None else max(self.maximum, value)

    def transform_one(self, x: float) -> float:
        """``(x - min) / (max - min)`` (clipped to ``[0, 1]`` if ``clip``); 0.0 for an empty or single-valued range."""
        value = _number(x, self.name)
        low, high = self.minimum, self.maximum
        if low is None or high is None or high <= low:
            return 0.0
        scaled = (value - low) / (high - low)
        return min(1.0, max(0.0, scaled)) if self.clip else scaled


# --- encoders -------------------------------------------------------------------------------------


class OneHot(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One-hot encoding over a fixed ``vocabulary`` with an explicit ``other`` bucket.

    Columns are named ``"<name>=<category>"``, in vocabulary order, then ``"<name>=<other>"``. A value
    outside the vocabulary sets the other column; with ``other=None`` it raises InvalidArgument instead.

    >>> colour = OneHot("colour", ["red", "green"])
    >>> colour.transform_one("green")
    {'colour=red': 0.0, 'colour=green': 1.0, 'colour=other': 0.0}
    >>> colour.transform_one("blue")
    {'colour=red': 0.0, 'colour=green': 0.0, 'colour=other': 1.0}
    >>> OneHot("colour", ["red"], other=None).transform_one("blue")
    Traceback (most recent call last):
    rtopt.errors.InvalidArgument: colour = 'blue': not in the vocabulary ['red'] and there is no 'other' bucket
    """

    name: str
    vocabulary: list[str]
    other: str | None = "other"

    def __post_init__(self) -> None:
        _check_categories(self.name, self.vocabulary, self.other)

    @property
    def columns(self) -> list[str]:
        """The output column names, in order."""
        buckets = [*self.vocabulary, self.other] if self.other is not None else self.vocabulary
        return [f"{self.name}={bucket}" for bucket in buckets]

    def index(self, value: str) -> int:
        """The column that ``value`` sets."""
        if not isinstance(value, str):
            raise InvalidArgument(
                f"{self.name} = {value!r}: expected a category (str), not {type(value).__name__}",
                argument=self.name,
                value=value,
            )
        try:
            return self.vocabulary.index(value)
        except ValueError:
            if self.other is None:
                raise InvalidArgument(
                    f"{self.name} = {value!r}: not in the vocabulary {self.vocabulary!r} "
                    "and there is no 'other' bucket",
                    argument=self.name,
                    value=value,
                ) from None
            return len(self.vocabulary)

    def transform_one(self, value: str) -> dict[str, float]:
        """The one-hot columns of ``value``."""
        hot = self.index(value)
        return {column: 1.0 if i == hot else 0.0 for i, column in enumerate(self.columns)}


def _check_categories(name: str, categories: Sequence[str], other: str | None) -> None:
    if not categories:
        raise InvalidArgument(f"{name}: needs at least one category", argument=name, value=list(categories))
    if any(not isinstance(c, str) for c in categories):
        raise InvalidArgument(
            f"{name}: categories must be strings, not {categories!r}", argument=name, value=categories
        )
    repeated = sorted({c for c in categories if list(categories).count(c) > 1})
    if repeated:
        raise InvalidArgument(f"{name}: categories {repeated} appear more than once", argument=name, value=categories)
    if other is not None and other in categories:
        raise InvalidArgument(
            f"{name}: the other bucket {other!r} is also a category; name it differently", argument=name, value=other
        )


def interactions(
    values: Mapping[str, float], groups: Iterable[Sequence[str]], separator: str = "*"
) -> dict[str, float]:
    """Products of named numeric features: one column ``"a*b"`` per group ``("a", "b")``.

    >>> interactions({"latency": 2.0, "cost": 3.0, "load": 0.5}, [("latency", "cost"), ("latency", "cost", "load")])
    {'latency*cost': 6.0, 'latency*cost*load': 3.0}
    """
    out: dict[str, float] = {}
    for group in groups:
        names = list(group)
        if len(names) < 2:
            raise invalid("groups", names, "an interaction needs at least two features")
        product = 1.0
        for name in names:
            if name not in values:
                raise InvalidArgument(
                    f"{name}: missing, needed by the interaction {names!r}", argument=name, value=None
                )
            product *= _number(values[name], name)
        out[separator.join(names)] = product
    return out


class Interactions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Every product of 2 to ``degree`` distinct features among ``names`` (no squares), named ``"a*b"``.

    >>> cross = Interactions(["a", "b", "c"])
    >>> cross.groups
    [('a', 'b'), ('a', 'c'), ('b', 'c')]
    >>> cross.transform_one({"a": 2.0, "b": 3.0, "c": -1.0})
    {'a*b': 6.0, 'a*c': -2.0, 'b*c': -3.0}
    >>> Interactions(["a", "b", "c"], degree=3).transform_one({"a": 2.0, "b": 3.0, "c": -1.0})["a*b*c"]
    -6.0
    """

    names: list[str]
    degree: int = 2
    separator: str = "*"

    def __post_init__(self) -> None:
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            raise invalid("names", self.names, "interactions need at least two distinct feature names")
        in_range("degree", self.degree, 2, len(self.names))

    @property
    def groups(self) -> list[tuple[str, ...]]:
        """The feature groups multiplied, by degree then in the order of ``names``."""
        return [group for k in range(2, self.degree + 1) for group in itertools.combinations(self.names, k)]

    def transform_one(self, values: Mapping[str, float]) -> dict[str, float]:
        """The products of ``values`` for every group."""
        return interactions(values, self.groups, self.separator)


class Binner(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The bin index of a value given explicit, strictly increasing ``edges``, as :func:`numpy.digitize`.

    With ``right=False`` (the default) bin ``i`` holds ``edges[i-1] <= x < edges[i]``; with ``right=True``
    it holds ``edges[i-1] < x <= edges[i]``. Values below the first edge get 0 and values at or past the
    last edge get ``len(edges)``, so there are ``len(edges) + 1`` bins. Unlike numpy, a NaN raises
    InvalidArgument rather than landing in the last bin.

    >>> latency = Binner([100.0, 500.0, 1000.0], name="latency_ms")
    >>> [latency.transform_one(x) for x in (50.0, 100.0, 499.0, 500.0, 2000.0)]
    [0, 1, 1, 2, 3]
    >>> Binner([100.0, 500.0], right=True).transform_one(100.0)
    0
    """

    edges: list[float]
    right: bool = False
    name: str = "x"

    def __post_init__(self) -> None:
        non_empty("edges", self.edges)
        for edge in self.edges:
            _number(edge, f"{self.name}.edges")
        if any(b <= a for a, b in itertools.pairwise(self.edges)):
            raise invalid("edges", self.edges, "must be strictly increasing")

    @property
    def n_bins(self) -> int:
        """How many bins there are: ``len(edges) + 1``."""
        return len(self.edges) + 1

    def transform_one(self, x: float) -> int:
        """The bin index of ``x``."""
        value = _number(x, self.name)
        return bisect.bisect_left(self.edges, value) if self.right else bisect.bisect_right(self.edges, value)


# --- the schema -----------------------------------------------------------------------------------


class FeatureSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One feature of a :class:`FeatureSchema`: its name, type, nullability, default and version.

    Encoding by ``type`` (the columns are named after the feature):

    - ``"continuous"``: a finite number, one column ``name``;
    - ``"binary"``: ``True``/``False`` or 0/1, one column ``name`` (1.0 or 0.0);
    - ``"ordinal"``: one of ``categories``, one column ``name`` holding its index (0.0, 1.0, ...);
    - ``"categorical"``: one of ``categories``, one-hot over columns ``"name=<category>"``, then
      ``"name=<other>"`` if ``other`` is set: values outside ``categories`` go there instead of raising.

    A value is *missing* when its key is absent or is ``None``. A missing value takes ``default`` if one is
    set; otherwise a ``nullable`` feature encodes as zeros (0.0, or no one-hot column set) and a feature
    that is neither raises InvalidArgument. A nullable feature also has a ``"name.missing"`` column, 1.0 when
    its value was missing (defaulted or not), so a model can tell "missing" from "zero".

    ``version`` is the version of the feature's definition: bump it when its computation changes.

    >>> FeatureSpec("tier", "ordinal", categories=["free", "pro", "team"]).encode("team")
    {'tier': 2.0}
    >>> FeatureSpec("latency", "continuous", nullable=True).encode(None)
    {'latency': 0.0, 'latency.missing': 1.0}
    """

    name: str
    type: FeatureType
    nullable: bool = False
    default: Scalar | None = None
    version: int = 1
    categories: list[str] = []
    other: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgument(
                f"a feature needs a non-empty name, not {self.name!r}", argument="name", value=self.name
            )
        if self.type not in FEATURE_TYPES:
            raise InvalidArgument(
                f"{self.name}: type = {self.type!r}, expected one of {list(FEATURE_TYPES)}",
                argument=self.name,
                value=self.type,
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise InvalidArgument(
                f"{self.name}: version = {self.version!r}, expected an integer >= 1",
                argument=self.name,
                value=self.version,
            )
        if self.type in ("categorical", "ordinal"):
            _check_categories(self.name, self.categories, self.other)
        elif self.categories:
            raise InvalidArgument(
                f"{self.name}: a {self.type} feature takes no categories", argument=self.name, value=self.categories
            )
        if self.other is not None and self.type != "categorical":
            raise InvalidArgument(
                f"{self.name}: only a categorical feature has an 'other' bucket", argument=self.name, value=self.other
            )
        if self.default is not None:
            self._encode_value(self.default, {})  # an invalid default fails here, not at request time

    @property
    def columns(self) -> list[str]:
        """The names of the columns this feature encodes to, in order."""
        if self.type == "categorical":
            buckets = [*self.categories, self.other] if self.other is not None else self.categories
            columns = [f"{self.name}={bucket}" for bucket in buckets]
        else:
            columns = [self.name]
        return [*columns, f"{self.name}.missing"] if self.nullable else columns

    def encode(self, value: Any, out: dict[str, float] | None = None) -> dict[str, float]:
        """Write this feature's columns for ``value`` (None: missing) into ``out`` and return it."""
        out = {} if out is None else out
        missing = value is None
        if missing:
            if self.default is not None:
                self._encode_value(self.default, out)
            elif self.nullable:
                for column in self.columns[:-1]:
                    out[column] = 0.0
            else:
                raise InvalidArgument(
                    f"{self.name}: missing, and the feature is not nullable and has no default",
                    argument=self.name,
                    value=None,
                )
        else:
            self._encode_value(value, out)
        if self.nullable:
            out[f"{self.name}.missing"] = 1.0 if missing else 0.0
        return out

    def _encode_value(self, value: Any, out: dict[str, float]) -> None:
        name, kind = self.name, self.type
        if kind == "continuous":
            out[name] = _number(value, name)
        elif kind == "binary":
            if isinstance(value, bool | np.bool_):
                out[name] = 1.0 if value else 0.0
            elif _is_number(value) and value in (0, 1):
                out[name] = float(value)
            else:
                raise InvalidArgument(f"{name} = {value!r}: expected True/False or 0/1", argument=name, value=value)
        else:
            if not isinstance(value, str):
                raise InvalidArgument(
                    f"{name} = {value!r}: expected one of {self.categories!r}, not a {type(value).__name__}",
                    argument=name,
                    value=value,
                )
            if value in self.categories:
                index = self.categories.index(value)
            elif self.other is not None:
                index = len(self.categories)
            else:
                raise InvalidArgument(f"{name} = {value!r}: not one of {self.categories!r}", argument=name, value=value)
            if kind == "ordinal":
                out[name] = float(index)
            else:
                buckets = len(self.categories) + (self.other is not None)
                for i in range(buckets):
                    bucket = self.categories[i] if i < len(self.categories) else self.other
                    out[f"{name}={bucket}"] = 1.0 if i == index else 0.0


class FeatureSchema(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An ordered list of :class:`FeatureSpec` that turns raw values into a feature vector.

    :meth:`vector` returns a ``dict[str, float]`` in schema order (a categorical feature spreads over its
    one-hot columns), ready to pass as ``engine.decide(experiment, context=vector)``; :meth:`to_array`
    returns the same numbers as a numpy array. Keys of ``values`` that the schema does not name are
    ignored. ``version`` is the schema's version; :meth:`fingerprint` identifies its exact definition.

    >>> schema = FeatureSchema([
    ...     FeatureSpec("latency", "continuous", default=0.0),
    ...     FeatureSpec("weekend", "binary"),
    ...     FeatureSpec("model", "categorical", categories=["small", "large"], other="other"),
    ... ], version=2)
    >>> schema.vector({"weekend": True, "model": "large"})
    {'latency': 0.0, 'weekend': 1.0, 'model=small': 0.0, 'model=large': 1.0, 'model=other': 0.0}
    >>> schema.to_array({"latency": 250.0, "weekend": 0, "model": "tiny"})
    array([250.,   0.,   0.,   0.,   1.])
    >>> schema.vector({"latency": 250.0})
    Traceback (most recent call last):
    rtopt.errors.InvalidArgument: weekend: missing, and the feature is not nullable and has no default
    """

    features: list[FeatureSpec]
    version: int = 1

    def __post_init__(self) -> None:
        names = [spec.name for spec in self.features]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InvalidArgument(f"features {repeated} appear more than once", argument=repeated[0], value=repeated)
        columns = self.columns
        clashes = sorted({column for column in columns if columns.count(column) > 1})
        if clashes:
            raise InvalidArgument(
                f"columns {clashes} are produced by more than one feature", argument=clashes[0], value=clashes
            )
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise InvalidArgument(
                f"schema version = {self.version!r}, expected an integer >= 1", argument="version", value=self.version
            )

    @property
    def names(self) -> list[str]:
        """The feature names, in schema order."""
        return [spec.name for spec in self.features]

    @property
    def columns(self) -> list[str]:
        """The column names of :meth:`vector` and :meth:`to_array`, in order."""
        return [column for spec in self.features for column in spec.columns]

    def spec(self, name: str) -> FeatureSpec:
        """The spec of feature ``name``."""
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(f"no feature named {name!r} in the schema; known: {self.names}")

    def vector(self, values: Mapping[str, Any]) -> dict[str, float]:
        """Encode ``values`` into the schema's columns, in order (missing features take their defaults)."""
        out: dict[str, float] = {}
        for spec in self.features:
            spec.encode(values.get(spec.name), out)
        return out

    def to_array(self, values: Mapping[str, Any]) -> np.ndarray:
        """:meth:`vector` as a float64 numpy array in column order."""
        vector = self.vector(values)
        return np.fromiter(vector.values(), dtype=np.float64, count=len(vector))

    def fingerprint(self) -> str:
        """A short hash of the schema's exact definition (names, types, defaults, categories, versions).

        >>> FeatureSchema([FeatureSpec("x", "continuous")]).fingerprint() == FeatureSchema(
        ...     [FeatureSpec("x", "continuous", version=2)]).fingerprint()
        False
        """
        return hashlib.sha256(msgspec.msgpack.encode(self)).hexdigest()[:16]

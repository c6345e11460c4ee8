"""Argument checks: a bad argument is refused with InvalidArgument naming the argument and the value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtopt import Engine, InvalidArgument, InvalidEvent
from rtopt.arguments import finite, in_range, non_empty, non_negative, one_of, positive, whole


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (positive, 0.0),
        (positive, -1),
        (positive, math.nan),
        (positive, True),
        (positive, "3"),
        (non_negative, -0.5),
        (finite, math.inf),
        (whole, 2.0),
        (whole, False),
        (whole, 0),
    ],
)
def test_a_refused_value_is_named_with_its_argument(check, value) -> None:
    with pytest.raises(InvalidArgument) as raised:
        check("size", value)
    assert raised.value.argument == "size" and raised.value.value is value
    assert str(raised.value).startswith(f"size = {value!r}: ")


def test_accepted_values_come_back_unchanged() -> None:
    assert positive("x", math.inf) == math.inf
    assert positive("x", np.float64(0.5)) == 0.5
    assert whole("n", np.int64(3)) == 3
    assert whole("n", 0, at_least=0) == 0
    assert in_range("p", 1.0, 0.0, 1.0) == 1.0
    assert one_of("late", "drop", ("drop", "update")) == "drop"
    assert non_empty("names", ["a"]) == ["a"]


def test_bounds_of_a_range_are_open_or_closed_as_asked() -> None:
    with pytest.raises(InvalidArgument, match=r"p = 1.0: must be in \[0.0, 1.0\)"):
        in_range("p", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(InvalidArgument, match=r"p = 0.0: must be in \(0.0, 1.0\]"):
        in_range("p", 0.0, 0.0, 1.0, low_open=True)
    with pytest.raises(InvalidArgument, match="names = \\[\\]: must not be empty"):
        non_empty("names", [])


def test_invalid_arguments_are_value_errors_apart_from_invalid_events() -> None:
    with pytest.raises(ValueError) as raised:
        Engine.open(":memory:", handlers=[], durability="disk")  # type: ignore[arg-type]
    assert isinstance(raised.value, InvalidArgument) and not isinstance(raised.value, InvalidEvent)
    assert (raised.value.argument, raised.value.value) == ("durability", "disk")

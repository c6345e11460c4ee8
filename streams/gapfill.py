"""Regular time series from window results, with the missing windows filled as asked."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import msgspec

from rtopt.arguments import invalid, one_of, positive

FillMethod = Literal["none", "zero", "ffill", "linear"]


class Point(msgspec.Struct, frozen=True):
    """One step of a series: its time, its values (None where a gap is left open) and whether it was filled."""

    time: float
    values: dict[str, float] | None
    filled: bool = False


def fill_gaps(
    points: Iterable[tuple[float, dict[str, float]]], step: float, method: FillMethod = "none"
) -> list[Point]:
    """The series on a grid of ``step`` seconds from the first point to the last, gaps filled by ``method``.

    ``none`` leaves a gap as ``values=None``; ``zero`` puts 0 in every field; ``ffill`` repeats the last
    known values; ``linear`` interpolates each field between its neighbours.

    >>> series = [(0.0, {"x": 1.0}), (180.0, {"x": 4.0})]
    >>> [p.values["x"] for p in fill_gaps(series, 60.0, "linear")]
    [1.0, 2.0, 3.0, 4.0]
    >>> [p.values for p in fill_gaps(series, 60.0, "none")]
    [{'x': 1.0}, None, None, {'x': 4.0}]
    """
    one_of("method", method, ("none", "zero", "ffill", "linear"))
    positive("step", step)
    known = sorted(points, key=lambda p: p[0])
    if not known:
        return []
    origin = known[0][0]
    by_index: dict[int, dict[str, float]] = {}
    for time, values in known:
        index = round((time - origin) / step)
        if not math.isclose(origin + index * step, time, rel_tol=0.0, abs_tol=step * 1e-6):
            raise invalid("points", time, f"a point's time is not on the {step}-second grid starting at {origin}")
        by_index[index] = values
    indices = sorted(by_index)
    series: list[Point] = []
    for left, right in zip(indices, [*indices[1:], None], strict=True):
        series.append(Point(origin + left * step, by_index[left]))
        if right is None:
            break
        for missing in range(left + 1, right):
            series.append(
                Point(
                    origin + missing * step,
                    _fill(method, by_index[left], by_index[right], (missing - left) / (right - left)),
                    filled=True,
                )
            )
    return series


def _fill(
    method: FillMethod, before: dict[str, float], after: dict[str, float], fraction: float
) -> dict[str, float] | None:
    if method == "none":
        return None
    if method == "zero":
        return dict.fromkeys(before.keys() | after.keys(), 0.0)
    if method == "ffill":
        return dict(before)
    return {name: before[name] + (after[name] - before[name]) * fraction for name in before.keys() & after.keys()}

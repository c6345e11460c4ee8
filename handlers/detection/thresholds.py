"""Threshold profiles: the limits a window's metrics must keep, and the response to each kind of breach.

A limit names a window value (``"<field>.<statistic>"``, as window pipelines name them) and a bound: ``min``
(the value must not fall below) or ``max``. A window without that value is not judged on it. ``error_rate``
is a field a pipeline computes from Feedback, e.g. ``("error_rate", (lambda f: f.error is not None, ("mean",)))``.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec


class Limit(msgspec.Struct, frozen=True):
    """One limit of a profile: ``bound`` ``min`` or ``max`` of the window value ``metric``, and the action a
    breach calls for."""

    metric: str
    bound: str
    limit: float
    action: str


PROFILES: dict[str, tuple[Limit, ...]] = {
    "basic": (
        Limit("success.mean", "min", 0.80, "strategy_change"),
        Limit("quality_score.mean", "min", 0.60, "ab_test_start"),
        Limit("response_time_ms.mean", "max", 5_000.0, "cache_update"),
        Limit("error_rate.mean", "max", 0.10, "strategy_change"),
    ),
    "production": (
        Limit("success.mean", "min", 0.95, "strategy_change"),
        Limit("quality_score.mean", "min", 0.75, "ab_test_start"),
        Limit("response_time_ms.mean", "max", 1_000.0, "cache_update"),
        Limit("response_time_ms.p95", "max", 2_000.0, "cache_update"),
        Limit("error_rate.mean", "max", 0.02, "strategy_change"),
    ),
}


def breaches(values: Mapping[str, float], profile: str) -> list[tuple[Limit, float]]:
    """The limits of ``profile`` that ``values`` (one window's results) break, with the offending value.

    >>> [(limit.metric, value) for limit, value in breaches({"success.mean": 0.7, "quality_score.mean": 0.9}, "basic")]
    [('success.mean', 0.7)]
    """
    out = []
    for limit in PROFILES[profile]:
        value = values.get(limit.metric)
        if value is None:
            continue
        if (value < limit.limit) if limit.bound == "min" else (value > limit.limit):
            out.append((limit, value))
    return out


def relative_gap(limit: Limit, value: float) -> float:
    """How far ``value`` is past its limit, as a fraction of the limit: the improvement a fix would bring."""
    return abs(value - limit.limit) / abs(limit.limit) if limit.limit else abs(value)

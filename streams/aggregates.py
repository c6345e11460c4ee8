"""Mergeable streaming aggregates: several statistics of several fields in one pass.

Statistics: ``count``, ``sum``, ``mean``, ``min``, ``max``, ``var`` and ``std`` (running moments; sample
variance, 0 for one value), ``rate`` (values per second of the window) and percentiles ``pNN`` (``p50``,
``p90``, ``p95``, ``p99`` ...). Percentiles are exact (numpy's linear interpolation) while a window
holds at most ``exact_limit`` values and come from a :class:`~rtopt.streams.sketch.DDSketch` beyond, within
its relative error. Every aggregate merges with another of the same spec, so sliding windows are built
from panes.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import numpy as np
from rtopt.streams.moments import RunningMoments
from rtopt.streams.sketch import DDSketch

from rtopt.arguments import invalid, non_empty, whole

STATISTICS = ("count", "sum", "mean", "min", "max", "var", "std", "rate")
_PERCENTILE = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")
Extractor = Callable[[Any], float | bool | None]


def _is_statistic(name: str) -> bool:
    return name in STATISTICS or _PERCENTILE.match(name) is not None


class FieldStats(msgspec.Struct, forbid_unknown_fields=True):
    """Running statistics of one field: its ``moments`` (count, mean, squared deviations), sum and extremes,
    and its values or a sketch of them.

    Encoded as a map with the moments under ``moments``; a map of the earlier layout (``n``, ``mean`` and
    ``m2`` at the top) is refused rather than read as an empty field.

    >>> stats = FieldStats()
    >>> for x in (5.0, 7.0):
    ...     stats.add(x, keep_values=False, exact_limit=1024, alpha=0.01)
    >>> stats.statistic("sum", 60.0), stats.statistic("mean", 60.0), stats.statistic("var", 60.0)
    (12.0, 6.0, 2.0)
    """

    moments: RunningMoments = msgspec.field(default_factory=RunningMoments)
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    values: list[float] | None = None
    sketch: DDSketch | None = None

    def add(self, x: float, keep_values: bool, exact_limit: int, alpha: float) -> None:
        self.moments.update(x)
        self.total += x
        if x < self.low:
            self.low = x
        if x > self.high:
            self.high = x
        if keep_values:
            if self.sketch is not None:
                self.sketch.add(x)
            else:
                if self.values is None:
                    self.values = []
                self.values.append(x)
                if len(self.values) > exact_limit:
                    self._to_sketch(alpha)

    def _to_sketch(self, alpha: float) -> None:
        self.sketch = DDSketch.with_accuracy(alpha)
        self.sketch.extend(self.values or [])
        self.values = None

    def merge(self, other: FieldStats, exact_limit: int, alpha: float) -> None:
        """Fold ``other``'s values into these statistics."""
        if other.moments.n == 0:
            return
        self.moments.merge(other.moments)
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        if other.values is None and other.sketch is None:
            return
        if self.sketch is None and other.sketch is None:
            self.values = [*(self.values or []), *(other.values or [])]
            if len(self.values) > exact_limit:
                self._to_sketch(alpha)
            return
        if self.sketch is None:
            self._to_sketch(alpha)
        if other.sketch is not None:
            self.sketch.merge(other.sketch)
        else:
            self.sketch.extend(other.values or [])

    def statistic(self, name: str, duration: float) -> float:
        """The value of the statistic ``name`` over a window ``duration`` seconds long."""
        moments = self.moments
        if name == "count":
            return float(moments.n)
        if name == "sum":
            return self.total
        if name == "mean":
            return moments.mean
        if name == "min":
            return self.low
        if name == "max":
            return self.high
        if name in ("var", "std"):
            var = moments.variance()
            return math.sqrt(max(var, 0.0)) if name == "std" else max(var, 0.0)
        if name == "rate":
            return moments.n / duration if duration > 0 else float(moments.n)
        q = float(_PERCENTILE.match(name).group(1)) / 100.0
        if self.sketch is not None:
            return self.sketch.quantile(q)
        return float(np.quantile(self.values, q))


class Summary(msgspec.Struct):
    """The aggregates of one window (or pane): per field statistics and the number of events."""

    count: int = 0
    fields: dict[str, FieldStats] = {}


class Aggregates:
    """What to compute: for each output field, where its value comes from and which statistics.

    A source is a payload attribute name or a function of the payload; a ``None`` value is skipped and
    booleans count as 0/1 (so ``mean`` of ``success`` is the success rate).

    >>> from rtopt import Feedback
    >>> spec = Aggregates({"response_time_ms": ("mean", "p95"), "success": ("mean",)})
    >>> summary = spec.empty()
    >>> for ms in (100.0, 200.0, 300.0):
    ...     spec.add(summary, Feedback(prompt_id="g", variant_id="v", response_time_ms=ms, success=ms < 300,
    ...                                quality_score=0.5))
    >>> spec.results(summary, duration=60.0)
    {'response_time_ms.mean': 200.0, 'response_time_ms.p95': 290.0, 'success.mean': 0.6666666666666667}
    """

    def __init__(
        self,
        fields: Mapping[str, Sequence[str] | tuple[str | Extractor, Sequence[str]]],
        *,
        exact_limit: int = 1024,
        alpha: float = 0.01,
    ) -> None:
        non_empty("fields", fields)
        whole("exact_limit", exact_limit)
        self.exact_limit = exact_limit
        self.alpha = alpha
        self._fields: list[tuple[str, Extractor, tuple[str, ...], bool]] = []
        for name, spec in fields.items():
            if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[1], str):
                source, statistics = spec
            else:
                source, statistics = name, spec
            statistics = tuple(statistics)
            unknown = [s for s in statistics if not _is_statistic(s)]
            if unknown or not statistics:
                raise invalid(f"fields[{name!r}]", spec, f"unknown statistics {unknown} (known: {STATISTICS} and pNN)")
            extract = operator.attrgetter(source) if isinstance(source, str) else source
            keep_values = any(_PERCENTILE.match(s) for s in statistics)
            self._fields.append((name, extract, statistics, keep_values))

    def config(self) -> dict[str, Any]:
        """A description of the spec (for handler fingerprints)."""
        return {
            "fields": {name: list(stats) for name, _, stats, _ in self._fields},
            "exact_limit": self.exact_limit,
            "alpha": self.alpha,
        }

    def empty(self) -> Summary:
        return Summary(count=0, fields={name: FieldStats() for name, _, _, _ in self._fields})

    def add(self, summary: Summary, payload: Any) -> None:
        """Fold one event's payload into ``summary``."""
        summary.count += 1
        fields, limit, alpha = summary.fields, self.exact_limit, self.alpha
        for name, extract, _, keep_values in self._fields:
            value = extract(payload)
            if value is None:
                continue
            fields[name].add(float(value), keep_values, limit, alpha)

    def merge(self, into: Summary, other: Summary) -> None:
        """Fold ``other`` into ``into``."""
        into.count += other.count
        for name, stats in other.fields.items():
            into.fields[name].merge(stats, self.exact_limit, self.alpha)

    def combine(self, summaries: Sequence[Summary]) -> Summary:
        """A new summary of all ``summaries`` (which stay as they were)."""
        total = self.empty()
        for summary in summaries:
            self.merge(total, summary)
        return total

    def results(self, summary: Summary, duration: float) -> dict[str, float]:
        """``"field.statistic" -> value`` for every field with at least one value."""
        out: dict[str, float] = {}
        for name, _, statistics, _ in self._fields:
            stats = summary.fields[name]
            if stats.moments.n == 0:
                continue
            for statistic in statistics:
                out[f"{name}.{statistic}"] = stats.statistic(statistic, duration)
        return out

"""Reactive operators over streams of envelopes: windows, watermarks, deduplication, aggregates, features.

Everything here reads event time only, so a live run and a replay of its log give the same results.
"""

from rtopt.streams.aggregates import Aggregates, FieldStats, Summary
from rtopt.streams.dedup import Deduplicator
from rtopt.streams.events import WindowClosed, WindowUpdated
from rtopt.streams.gapfill import Point, fill_gaps
from rtopt.streams.handler import WindowHandler
from rtopt.streams.moments import RunningMoments
from rtopt.streams.operators import deduplicated, windowed
from rtopt.streams.sketch import DDSketch
from rtopt.streams.windows import Counting, Session, Sliding, Tumbling, WindowPipeline

__all__ = [
    "Aggregates",
    "Counting",
    "DDSketch",
    "Deduplicator",
    "FieldStats",
    "Point",
    "RunningMoments",
    "Session",
    "Sliding",
    "Summary",
    "Tumbling",
    "WindowClosed",
    "WindowHandler",
    "WindowPipeline",
    "WindowUpdated",
    "deduplicated",
    "fill_gaps",
    "windowed",
]

"""Reactive operators over streams of envelopes: windows, watermarks, deduplication, aggregates, features.

Everything here reads event time only, so a live run and a replay of its log give the same results.
"""

from streams.aggregates import Aggregates, FieldStats, Summary
from streams.dedup import Deduplicator
from streams.events import WindowClosed, WindowUpdated
from streams.gapfill import Point, fill_gaps
from streams.handler import WindowHandler
from streams.operators import deduplicated, windowed
from streams.sketch import DDSketch
from streams.windows import Counting, Session, Sliding, Tumbling, WindowPipeline

__all__ = [
    "Aggregates",
    "Counting",
    "DDSketch",
    "Deduplicator",
    "FieldStats",
    "Point",
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

"""The dashboard's data layer on a large log: catch-up rate and update cost against a plain read of the log.

Writes a log of ``--events`` events (default 1,000,000: decisions, feedback and arm updates over four
variants, five requests per second of event time, statistics every 100 requests), then measures:

- plain read: ``engine.read()`` over the whole log, decoding every event (the least any reader pays);
- catch-up: a :class:`rtopt.apps.LogTail` folding the whole log into the dashboard's views, then every frame
  the plots draw (what opening the dashboard on the log costs);
- update: after ``--update`` more events are appended, one refresh (read what is new, draw every frame),
  against recomputing the views from the whole log.

It prints events/s, the ratios and the most rows a plot is sent. Run ``python benchmarks/dashboard.py``
(``--quick`` for a short run, ``--json`` for one JSON object).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rtopt.apps import LogTail
from rtopt.handlers.bandits import ArmSummary, ArmUpdated, ExperimentStats

from rtopt import Decision, Draft, Engine, Feedback

ARMS = ("v1", "v2", "v3", "v4")
START = 1_767_225_600.0
CHUNK = 3_000  # requests per publish_many call: about 9,100 events, within the default Limits.max_batch


def requests(count: int, first: int, seed: int) -> Iterator[Draft]:
    """The events of ``count`` requests numbered from ``first``: decision, feedback, arm update (and
    statistics every 100 requests)."""
    rng = np.random.default_rng([seed, first])
    arms = rng.integers(0, len(ARMS), count)
    latency = rng.lognormal(6.5, 0.4, count)
    quality = rng.beta(8, 3, count)
    success = rng.random(count) < 0.95
    for i in range(count):
        number, arm, when = first + i, ARMS[arms[i]], START + (first + i) / 5.0
        yield Draft(Decision(experiment="greeting", arm=arm, policy="recorded", propensity=0.25), time=when)
        yield Draft(
            Feedback(
                prompt_id="greeting",
                variant_id=arm,
                response_time_ms=float(latency[i]),
                success=bool(success[i]),
                quality_score=float(quality[i]),
                cost_usd=0.001,
            ),
            time=when + 2.0,
        )
        yield Draft(
            ArmUpdated(experiment="greeting", arm=arm, reward=float(success[i]), pulls=number, posterior={}),
            time=when + 2.0,
        )
        if number % 100 == 0:
            summary = ArmSummary("active", number // 4, number // 4, 0.7, 0.6, 0.8, 0.25)
            stats = ExperimentStats("greeting", number, number, 0.1, dict.fromkeys(ARMS, summary))
            yield Draft(stats, time=when + 2.0)


def append(engine: Engine, events: int, first_request: int, seed: int = 1) -> int:
    """Append about ``events`` events (whole requests) to ``engine``; returns the number of requests."""
    count = max(1, round(events / 3.03))
    for start in range(0, count, CHUNK):
        engine.publish_many(list(requests(min(CHUNK, count - start), first_request + start, seed)))
    return count


def catch_up(path: Path) -> tuple[float, LogTail]:
    started = time.perf_counter()
    tail = LogTail(path)
    while tail.poll():
        pass
    tail.model.frames()
    return time.perf_counter() - started, tail


def measure(events: int, update: int, rounds: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "large.sqlite"
        with Engine.open(path, seed=1, handlers=[]) as writer:
            made = append(writer, events, 1)
            with Engine.open(path, read_only=True, handlers=[]) as reader:
                started = time.perf_counter()
                total = sum(1 for _ in reader.read())
                plain = time.perf_counter() - started
            catch_up_s, tail = catch_up(path)
            update_s = []
            for _ in range(rounds):
                made += append(writer, update, made + 1)
                started = time.perf_counter()
                tail.poll()
                drawn = tail.model.frames()
                update_s.append(time.perf_counter() - started)
            full_s, fresh = catch_up(path)
            if tail.model.events_seen != fresh.model.events_seen or tail.model.counts != fresh.model.counts:
                raise RuntimeError("the incremental reader and a full read disagree")
            tail.close()
            fresh.close()
        update_median = statistics.median(update_s)
        return {
            "events": total,
            "plain_read_events_per_s": total / plain,
            "catch_up_events_per_s": total / catch_up_s,
            "catch_up_to_plain_read": catch_up_s / plain,
            "update_events": update,
            "update_ms": update_median * 1000,
            "full_recompute_ms": full_s * 1000,
            "update_to_full_recompute": update_median / full_s,
            "most_rows_per_plot": max(len(frame) for frame in drawn.values()),
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1,000,000)")
    parser.add_argument("--update", type=int, default=1_000, help="events appended before a refresh (default 1,000)")
    parser.add_argument("--quick", action="store_true", help="a short run: 30,000 events")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    results = measure(30_000 if args.quick else args.events, args.update)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"a log of {results['events']:,} events")
    print(f"plain read (engine.read, decoded) : {results['plain_read_events_per_s']:>12,.0f} events/s")
    print(f"dashboard catch-up (views+frames)  : {results['catch_up_events_per_s']:>12,.0f} events/s")
    print(f"catch-up cost / plain read         : {results['catch_up_to_plain_read']:.2f}")
    print(
        f"refresh after {results['update_events']:,} new events: {results['update_ms']:.1f} ms, against "
        f"{results['full_recompute_ms']:,.0f} ms to recompute from the whole log "
        f"(ratio {results['update_to_full_recompute']:.4f})"
    )
    print(f"most rows sent to one plot: {results['most_rows_per_plot']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

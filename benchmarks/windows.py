"""Windowed aggregation throughput: rtopt's window pipelines against the same computation as a plain loop.

Both sides compute, per key (100 keys), a 1-minute tumbling window and a 5-minute window sliding every
minute, each with the mean, standard deviation and 95th percentile of the latency, over the same events
in event-time order, and emit every window once the watermark passes its end. The script checks that
both produce the same results, then prints events/s of each and their ratio (goal: the operators cost
at most 2x the plain loop).

Run ``python benchmarks/windows.py`` (``--events N``, ``--json``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from rtopt.streams import Aggregates, Sliding, Tumbling, WindowPipeline

from rtopt import Envelope, Feedback

KEYS = 100
MINUTE = 60.0


def make_events(count: int, seed: int = 1) -> list[Envelope[Any]]:
    """``count`` Feedback envelopes over 100 model keys, about 20 per second of event time, in time order."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.exponential(0.05, count))
    keys = rng.integers(0, KEYS, count)
    latency = rng.lognormal(6.0, 0.5, count)
    events = []
    for i in range(count):
        payload = Feedback(
            prompt_id=f"model-{keys[i]}",
            variant_id="v",
            response_time_ms=float(latency[i]),
            success=True,
            quality_score=0.8,
        )
        events.append(
            Envelope(i + 1, f"e{i}", "Feedback", payload.prompt_id, float(times[i]), 0.0, None, None, 1, payload)
        )
    return events


def run_pipelines(events: Sequence[Envelope[Any]]) -> list[tuple]:
    spec = Aggregates({"response_time_ms": ("mean", "std", "p95")})
    pipelines = [
        WindowPipeline("t1m", Tumbling(MINUTE), spec),
        WindowPipeline("s5m", Sliding(5 * MINUTE, MINUTE), spec),
    ]
    states = [p.initial_state() for p in pipelines]
    out = []
    for envelope in events:
        for pipeline, state in zip(pipelines, states, strict=True):
            out.extend(pipeline.step(state, envelope))
    return [
        (
            w.pipeline,
            w.key,
            w.start,
            w.end,
            w.count,
            w.values["response_time_ms.mean"],
            w.values["response_time_ms.std"],
            w.values["response_time_ms.p95"],
        )
        for w in out
    ]


def run_plain_loop(events: Sequence[Envelope[Any]]) -> list[tuple]:
    """The same windows written directly: per key and minute, Welford moments and the raw values."""
    panes: dict[str, dict[int, list]] = {}  # key -> minute -> [n, mean, m2, values]
    open_ends: dict[str, set[int]] = {}
    due: list[tuple[int, str]] = []
    import heapq

    out: list[tuple] = []
    watermark = -math.inf

    def result(name: str, key: str, first: int, end: int, parts: list[list]) -> tuple:
        n = sum(p[0] for p in parts)
        mean = sum(p[0] * p[1] for p in parts) / n
        m2 = sum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
        values = [v for p in parts for v in p[3]]
        std = math.sqrt(m2 / (n - 1)) if n > 1 else 0.0
        return (name, key, first * MINUTE, end * MINUTE, n, mean, std, float(np.quantile(values, 0.95)))

    for envelope in events:
        key, t = envelope.stream, envelope.time
        minute = math.floor(t / MINUTE)
        per_key = panes.setdefault(key, {})
        pane = per_key.get(minute)
        if pane is None:
            pane = per_key[minute] = [0, 0.0, 0.0, []]
            ends = open_ends.setdefault(key, set())
            for end in range(minute + 1, minute + 6):
                if end not in ends:
                    ends.add(end)
                    heapq.heappush(due, (end, key))
        x = envelope.payload.response_time_ms
        pane[0] += 1
        delta = x - pane[1]
        pane[1] += delta / pane[0]
        pane[2] += delta * (x - pane[1])
        pane[3].append(x)
        if t > watermark:
            watermark = t
            while due and due[0][0] * MINUTE <= watermark:
                end, closing = heapq.heappop(due)
                open_ends[closing].discard(end)
                mine = panes[closing]
                if end - 1 in mine:
                    out.append(result("t1m", closing, end - 1, end, [mine[end - 1]]))
                parts = [mine[m] for m in range(end - 5, end) if m in mine]
                out.append(result("s5m", closing, end - 5, end, parts))
                mine.pop(end - 5, None)
    return out


def measure(events: Sequence[Envelope[Any]], rounds: int = 3) -> dict[str, float]:
    best: dict[str, float] = {}
    outputs: dict[str, list] = {}
    for name, run in (("plain_loop", run_plain_loop), ("pipelines", run_pipelines)):
        for _ in range(rounds):
            gc.collect()
            started = time.perf_counter()
            outputs[name] = run(events)
            elapsed = time.perf_counter() - started
            best[name] = min(best.get(name, math.inf), elapsed)
    ours = sorted(outputs["pipelines"], key=lambda r: (r[3], r[0], r[1]))
    theirs = sorted(outputs["plain_loop"], key=lambda r: (r[3], r[0], r[1]))
    if len(ours) != len(theirs) or any(
        a[:5] != b[:5] or not np.allclose(a[5:], b[5:], rtol=1e-9) for a, b in zip(ours, theirs, strict=True)
    ):
        raise RuntimeError("the pipelines and the plain loop disagree")
    return {
        "events": len(events),
        "windows": len(ours),
        "plain_loop_events_per_s": len(events) / best["plain_loop"],
        "pipelines_events_per_s": len(events) / best["pipelines"],
        "cost_ratio": best["pipelines"] / best["plain_loop"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000, help="events to aggregate (default 200,000)")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    results = measure(make_events(args.events))
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{results['events']:,} events, {results['windows']:,} windows (1-min tumbling + 5-min sliding, 100 keys)")
    print(f"plain Python loop : {results['plain_loop_events_per_s']:>12,.0f} events/s")
    print(f"window pipelines  : {results['pipelines_events_per_s']:>12,.0f} events/s")
    verdict = "PASS" if results["cost_ratio"] <= 2.0 else "MISS"
    print(f"cost ratio (pipelines / plain loop): {results['cost_ratio']:.2f} (goal <= 2.0: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

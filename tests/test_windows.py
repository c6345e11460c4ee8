"""Windows, watermarks and late events against hand-computed results."""

from __future__ import annotations

import itertools
from pathlib import Path

import msgspec
import numpy as np
import pytest
from rtopt.streams import (
    Aggregates,
    Counting,
    Deduplicator,
    FieldStats,
    RunningMoments,
    Session,
    Sliding,
    Tumbling,
    WindowClosed,
    WindowHandler,
    WindowPipeline,
    WindowUpdated,
    fill_gaps,
)

from rtopt import Engine, Envelope, Feedback

_ids = itertools.count()


def event(t: float, ms: float = 100.0, variant: str = "v1", prompt: str = "g", event_id: str | None = None):
    payload = Feedback(prompt_id=prompt, variant_id=variant, response_time_ms=ms, success=ms < 500, quality_score=0.5)
    return Envelope(
        seq=0,
        id=event_id or f"e{next(_ids)}",
        type="Feedback",
        stream=prompt,
        time=t,
        recorded_at=0.0,
        causation_id=None,
        correlation_id=None,
        schema_version=1,
        payload=payload,
    )


LATENCY = Aggregates({"response_time_ms": ("count", "sum", "mean", "min", "max")})


def run(pipeline: WindowPipeline, events: list, flush: bool = True) -> tuple[list, object]:
    state = pipeline.initial_state()
    out = [result for e in events for result in pipeline.step(state, e)]
    if flush:
        out += pipeline.flush(state)
    return out, state


def summary(results: list) -> list[tuple]:
    return [(type(r).__name__, r.key, r.start, r.end, r.count, r.values.get("response_time_ms.sum")) for r in results]


def test_tumbling_windows_close_when_the_watermark_passes_their_end() -> None:
    pipeline = WindowPipeline("t", Tumbling(10.0), LATENCY)
    results, _ = run(pipeline, [event(1, 10), event(4, 20), event(12, 30), event(25, 40)], flush=False)
    # the event at 12 closes [0, 10); the event at 25 closes [10, 20); [20, 30) stays open
    assert summary(results) == [("WindowClosed", "g", 0.0, 10.0, 2, 30.0), ("WindowClosed", "g", 10.0, 20.0, 1, 30.0)]
    assert results[0].values == {
        "response_time_ms.count": 2.0,
        "response_time_ms.sum": 30.0,
        "response_time_ms.mean": 15.0,
        "response_time_ms.min": 10.0,
        "response_time_ms.max": 20.0,
    }


def test_flush_closes_what_is_left_in_order_of_end_and_key() -> None:
    pipeline = WindowPipeline("t", Tumbling(10.0), LATENCY, key="variant_id")
    results, _ = run(pipeline, [event(1, 1, "b"), event(3, 2, "a"), event(15, 4, "a")])
    assert summary(results) == [
        ("WindowClosed", "a", 0.0, 10.0, 1, 2.0),
        ("WindowClosed", "b", 0.0, 10.0, 1, 1.0),
        ("WindowClosed", "a", 10.0, 20.0, 1, 4.0),
    ]


def test_sliding_windows_are_built_from_panes() -> None:
    pipeline = WindowPipeline("s", Sliding(size=30.0, step=10.0), LATENCY)
    results, _ = run(pipeline, [event(5, 1), event(15, 2), event(25, 4), event(41, 8)], flush=False)
    # windows end every 10 s and span 30 s; the event at 41 moves the watermark to 41
    assert summary(results) == [
        ("WindowClosed", "g", -20.0, 10.0, 1, 1.0),
        ("WindowClosed", "g", -10.0, 20.0, 2, 3.0),
        ("WindowClosed", "g", 0.0, 30.0, 3, 7.0),
        ("WindowClosed", "g", 10.0, 40.0, 2, 6.0),
    ]


def test_session_windows_merge_events_within_the_gap() -> None:
    pipeline = WindowPipeline("sess", Session(gap=5.0), LATENCY)
    # 10, 12 and 14 form one session; 30 starts another; 13 arriving late but within the gap joins the first
    results, _ = run(pipeline, [event(10, 1), event(12, 2), event(14, 4), event(13, 8), event(30, 16)])
    assert summary(results) == [
        ("WindowClosed", "g", 10.0, 19.0, 4, 15.0),
        ("WindowClosed", "g", 30.0, 35.0, 1, 16.0),
    ]


def test_an_out_of_order_event_bridges_two_sessions() -> None:
    pipeline = WindowPipeline("sess", Session(gap=5.0), LATENCY, out_of_orderness=20.0)
    results, _ = run(pipeline, [event(10, 1), event(18, 2), event(14, 4)])
    assert summary(results) == [("WindowClosed", "g", 10.0, 23.0, 3, 7.0)]


def test_count_windows_follow_arrival_order_per_key() -> None:
    pipeline = WindowPipeline("c", Counting(2), LATENCY, key="variant_id")
    results, _ = run(pipeline, [event(5, 1, "a"), event(1, 2, "b"), event(3, 4, "a"), event(9, 8, "a")])
    assert summary(results) == [
        ("WindowClosed", "a", 5.0, 3.0, 2, 5.0),
        ("WindowClosed", "a", 9.0, 9.0, 1, 8.0),
        ("WindowClosed", "b", 1.0, 1.0, 1, 2.0),
    ]


def test_out_of_order_events_within_the_bound_are_counted_in_their_window() -> None:
    pipeline = WindowPipeline("t", Tumbling(10.0), LATENCY, out_of_orderness=5.0)
    results, state = run(pipeline, [event(8, 1), event(13, 2), event(9, 4), event(16, 8)], flush=False)
    # watermark after 13 is 8: [0, 10) still open when 9 arrives; 16 moves it to 11 and closes [0, 10)
    assert summary(results) == [("WindowClosed", "g", 0.0, 10.0, 2, 5.0)]
    assert state.dropped == 0


def test_late_events_are_dropped_and_counted_under_the_drop_policy() -> None:
    pipeline = WindowPipeline("t", Tumbling(10.0), LATENCY, out_of_orderness=2.0, late="drop")
    results, state = run(pipeline, [event(3, 1), event(13, 2), event(5, 4), event(25, 8)], flush=False)
    assert summary(results) == [("WindowClosed", "g", 0.0, 10.0, 1, 1.0), ("WindowClosed", "g", 10.0, 20.0, 1, 2.0)]
    assert state.dropped == 1


def test_late_events_reopen_their_window_under_the_update_policy() -> None:
    pipeline = WindowPipeline("t", Tumbling(10.0), LATENCY, late="update", allowed_lateness=10.0)
    events = [event(3, 1), event(12, 2), event(5, 4), event(7, 8), event(25, 16), event(6, 32)]
    results, state = run(pipeline, events, flush=False)
    # 12 closes [0,10); 5 and 7 revise it (watermark 12 < 10 + 10); 25 closes [10,20) and moves the watermark
    # to 25 >= 10 + 10, so the event at 6 comes too late even for an update
    assert summary(results) == [
        ("WindowClosed", "g", 0.0, 10.0, 1, 1.0),
        ("WindowUpdated", "g", 0.0, 10.0, 2, 5.0),
        ("WindowUpdated", "g", 0.0, 10.0, 3, 13.0),
        ("WindowClosed", "g", 10.0, 20.0, 1, 2.0),
    ]
    assert [(r.revision, r.late) for r in results if isinstance(r, WindowUpdated)] == [(1, 1), (2, 2)]
    assert state.dropped == 1
    assert state.updated == 2


def test_late_session_events_update_the_closed_session() -> None:
    pipeline = WindowPipeline("s", Session(gap=5.0), LATENCY, late="update", allowed_lateness=20.0)
    results, _ = run(pipeline, [event(10, 1), event(30, 2), event(12, 4)], flush=False)
    assert summary(results) == [("WindowClosed", "g", 10.0, 15.0, 1, 1.0), ("WindowUpdated", "g", 10.0, 17.0, 2, 5.0)]


def test_duplicates_are_dropped_within_the_horizon() -> None:
    dedup = Deduplicator(horizon=30.0)
    stream = [event(0, event_id="a"), event(1, event_id="b"), event(10, event_id="a"), event(40, event_id="a")]
    assert [dedup.first(e) for e in stream] == [True, True, False, True]
    assert dedup.state.duplicates == 1
    by_variant = Deduplicator(horizon=30.0, key=lambda e: e.payload.variant_id)
    assert [by_variant.first(e) for e in (event(0, variant="x"), event(5, variant="x"), event(6, variant="y"))] == [
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("none", [1.0, None, None, 4.0, 5.0]),
        ("zero", [1.0, 0.0, 0.0, 4.0, 5.0]),
        ("ffill", [1.0, 1.0, 1.0, 4.0, 5.0]),
        ("linear", [1.0, 2.0, 3.0, 4.0, 5.0]),
    ],
)
def test_gap_filling(method: str, expected: list) -> None:
    series = fill_gaps([(240.0, {"x": 5.0}), (0.0, {"x": 1.0}), (180.0, {"x": 4.0})], 60.0, method)
    assert [p.time for p in series] == [0.0, 60.0, 120.0, 180.0, 240.0]
    assert [p.values["x"] if p.values else None for p in series] == expected
    assert [p.filled for p in series] == [False, True, True, False, False]


def test_percentiles_are_exact_on_small_windows_and_within_the_bound_beyond() -> None:
    rng = np.random.default_rng(3)
    small = rng.lognormal(6.0, 0.6, 500)
    exact = Aggregates({"x": ("p50", "p90", "p95", "p99")}, exact_limit=1000)
    s = exact.empty()
    for v in small:
        exact.add(s, type("P", (), {"x": float(v)})())
    for q in (50, 90, 95, 99):
        assert exact.results(s, 1.0)[f"x.p{q}"] == pytest.approx(np.percentile(small, q), rel=1e-12)

    large = rng.lognormal(6.0, 0.6, 20_000)
    sketched = Aggregates({"x": ("p50", "p90", "p95", "p99")}, exact_limit=1000, alpha=0.01)
    panes = [sketched.empty() for _ in range(4)]
    for i, v in enumerate(large):
        sketched.add(panes[i % 4], type("P", (), {"x": float(v)})())
    merged = sketched.combine(panes)
    assert merged.fields["x"].sketch is not None
    for q in (50, 90, 95, 99):
        truth = np.quantile(large, q / 100, method="lower")
        assert abs(sketched.results(merged, 1.0)[f"x.p{q}"] - truth) <= 0.01 * truth


def test_field_stats_keep_moments_sum_and_extremes_together() -> None:
    stats, other = FieldStats(), FieldStats()
    stats.add(5.0, keep_values=True, exact_limit=4, alpha=0.01)
    other.add(7.0, keep_values=True, exact_limit=4, alpha=0.01)
    stats.merge(other, exact_limit=4, alpha=0.01)
    # not a RunningMoments: its update and merge would skip the sum, the extremes and the values
    assert not isinstance(stats, RunningMoments)
    assert stats.moments == RunningMoments.of([5.0, 7.0])
    assert [stats.statistic(name, 1.0) for name in ("count", "sum", "mean", "min", "max", "var", "p50")] == [
        2.0,
        12.0,
        6.0,
        5.0,
        7.0,
        2.0,
        6.0,
    ]


def test_field_stats_of_the_earlier_flat_layout_are_refused_not_read_as_empty() -> None:
    flat = {"n": 1, "total": 5.0, "mean": 5.0, "m2": 0.0, "low": 5.0, "high": 5.0, "values": None, "sketch": None}
    with pytest.raises(msgspec.ValidationError, match="unknown field `n`"):
        msgspec.msgpack.decode(msgspec.msgpack.encode(flat), type=FieldStats)


def test_welford_moments_and_their_merge_match_numpy() -> None:
    rng = np.random.default_rng(5)
    values = rng.normal(100.0, 15.0, 3_001)
    spec = Aggregates({"x": ("mean", "std", "var", "min", "max", "sum", "rate")})
    left, right = spec.empty(), spec.empty()
    for i, v in enumerate(values):
        spec.add(left if i < 1_000 else right, type("P", (), {"x": float(v)})())
    result = spec.results(spec.combine([left, right]), duration=60.0)
    assert result["x.mean"] == pytest.approx(values.mean(), rel=1e-12)
    assert result["x.std"] == pytest.approx(values.std(ddof=1), rel=1e-10)
    assert result["x.var"] == pytest.approx(values.var(ddof=1), rel=1e-10)
    assert (result["x.min"], result["x.max"]) == (values.min(), values.max())
    assert result["x.rate"] == pytest.approx(3_001 / 60.0)


def test_a_keyed_pipeline_over_100_keys_matches_a_plain_python_computation() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    times = np.sort(rng.uniform(0, 3_600, n))
    keys = rng.integers(0, 100, n)
    latency = rng.lognormal(6.0, 0.5, n)
    spec = Aggregates({"response_time_ms": ("count", "mean", "std", "p95")})
    pipeline = WindowPipeline("k", Tumbling(60.0), spec, key="variant_id")
    events = [event(float(t), float(ms), f"m{k}") for t, k, ms in zip(times, keys, latency, strict=True)]
    results, _ = run(pipeline, events)

    expected: dict[tuple[str, float], list[float]] = {}
    for t, k, ms in zip(times, keys, latency, strict=True):
        expected.setdefault((f"m{k}", float(np.floor(t / 60.0) * 60.0)), []).append(float(ms))
    assert len(results) == len(expected)
    for r in results:
        values = np.array(expected[(r.key, r.start)])
        assert r.count == len(values)
        assert r.values["response_time_ms.mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert r.values["response_time_ms.std"] == pytest.approx(
            values.std(ddof=1) if len(values) > 1 else 0.0, rel=1e-9, abs=1e-9
        )
        assert r.values["response_time_ms.p95"] == pytest.approx(np.percentile(values, 95), rel=1e-12)


def test_replaying_the_log_yields_the_window_events_of_the_live_run(tmp_path: Path) -> None:
    def pipelines() -> list[WindowHandler]:
        spec = Aggregates({"response_time_ms": ("mean", "p95"), "success": ("mean",)})
        return [
            WindowHandler(WindowPipeline("t1m", Tumbling(60.0), spec, key="variant_id", out_of_orderness=5.0)),
            WindowHandler(WindowPipeline("s5m", Sliding(300.0, 60.0), spec, late="update", allowed_lateness=30.0)),
            WindowHandler(WindowPipeline("sess", Session(120.0), spec, key="variant_id")),
        ]

    rng = np.random.default_rng(11)
    path = tmp_path / "windows.sqlite"
    with Engine.open(path, seed=3, handlers=pipelines()) as engine:
        t = 0.0
        for _ in range(3_000):
            t += float(rng.exponential(2.0))
            jitter = float(rng.uniform(-20.0, 0.0))  # events arrive up to 20 s out of order
            engine.publish(
                Feedback(
                    prompt_id="g",
                    variant_id=f"v{rng.integers(3)}",
                    response_time_ms=float(rng.lognormal(6, 0.4)),
                    success=bool(rng.random() < 0.9),
                    quality_score=0.7,
                ),
                time=t + jitter,
            )
        live = [(e.id, e.type, e.payload) for e in engine.read(types=[WindowClosed, WindowUpdated])]
        assert {e[1] for e in live} == {"WindowClosed", "WindowUpdated"}
        assert engine.state("t1m").dropped > 0
    with Engine.replay(path, handlers=pipelines()) as replayed:
        assert [(e.id, e.type, e.payload) for e in replayed.read(types=[WindowClosed, WindowUpdated])] == live
    assert Engine.verify(path, handlers=pipelines()).ok

"""The online feature store, its handler over window results, replay, and the decide(context=...) flow."""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from rtopt.handlers.bandits import BanditHandler
from rtopt.streams.events import WindowClosed, WindowUpdated
from rtopt.streams.feature_store import (
    EntityFeatures,
    FeatureStoreHandler,
    FeatureTable,
    FeatureValue,
    OnlineFeatureStore,
    ReadStats,
    StoredFeature,
    request_context,
)
from rtopt.streams.features import FeatureSchema, FeatureSpec, time_features

from rtopt import Decision, Engine, InvalidArgument

FEATURES = {
    "window_1min_avg_latency": ("latency_1min", "response_time_ms.mean"),
    "window_5min_p95_latency": ("latency_5min", "response_time_ms.p95"),
    "window_15min_error_rate": ("errors_15min", "error.mean"),
    "window_1h_cost": ("cost_1h", "cost_usd.sum"),
}
TTL = {
    "window_1min_avg_latency": 120.0,
    "window_5min_p95_latency": 600.0,
    "window_15min_error_rate": 1_800.0,
    "window_1h_cost": 7_200.0,
}
T0 = 1_704_700_800.0  # 2024-01-08 08:00:00 UTC, a Monday


def store_handler(**kwargs: object) -> FeatureStoreHandler:
    return FeatureStoreHandler(FEATURES, ttl=TTL, **kwargs)  # type: ignore[arg-type]


def closed(pipeline: str, key: str, start: float, end: float, values: dict[str, float]) -> WindowClosed:
    return WindowClosed(pipeline=pipeline, key=key, start=start, end=end, count=5, values=values)


def updated(
    pipeline: str, key: str, start: float, end: float, values: dict[str, float], revision: int
) -> WindowUpdated:
    return WindowUpdated(
        pipeline=pipeline, key=key, start=start, end=end, count=6, values=values, revision=revision, late=revision
    )


def publish(engine: Engine, window: WindowClosed | WindowUpdated, delay: float = 1.0) -> None:
    """Publish a window result as a window operator would: on the key's stream, just after its end."""
    engine.publish(window, stream=window.key, time=window.end + delay)


# --- the store on its own -------------------------------------------------------------------------


def test_ttl_freshness_at_the_boundaries() -> None:
    store = OnlineFeatureStore(default_ttl=60.0, ttl={"cost": 3_600.0, "forever": math.inf})
    store.put("api", "latency", 420.0, computed_at=1_000.0)
    store.put("api", "cost", 1.5, computed_at=1_000.0)
    store.put("api", "forever", 7.0, computed_at=0.0)
    assert store.get("api", "latency", now=1_000.0) == FeatureValue(420.0, 1_000.0, fresh=True, age=0.0)
    assert store.get("api", "latency", now=1_060.0) == FeatureValue(420.0, 1_000.0, fresh=True, age=60.0)
    assert store.get("api", "latency", now=1_060.001).fresh is False
    assert store.get("api", "latency", now=1_060.001).age == pytest.approx(60.001)
    assert store.get("api", "latency", now=990.0) == FeatureValue(420.0, 1_000.0, fresh=True, age=-10.0)
    assert store.get("api", "cost", now=4_600.0).fresh is True  # its own TTL
    assert store.get("api", "cost", now=4_600.5).fresh is False
    assert store.get("api", "forever", now=1e12).fresh is True
    assert store.ttl_for("latency") == 60.0 and store.ttl_for("cost") == 3_600.0


def test_missing_reads_return_none_or_the_default() -> None:
    store = OnlineFeatureStore()
    store.put("api", "latency", 420.0, computed_at=10.0)
    assert store.get("web", "latency", now=20.0) is None
    assert store.get("api", "cost", now=20.0, default=0.0) == 0.0
    assert store.default_ttl == 300.0


def test_read_counters_per_feature() -> None:
    store = OnlineFeatureStore(default_ttl=10.0)
    store.put("a", "x", 1.0, computed_at=100.0)
    store.put("b", "y", 2.0, computed_at=100.0)
    for now in (100.0, 105.0, 110.0, 110.5, 200.0):  # fresh, fresh, fresh (at the TTL), stale, stale
        store.get("a", "x", now)
    store.get("b", "x", 100.0)  # missing
    store.get("b", "y", 200.0)  # stale
    assert store.stats() == {"x": ReadStats(fresh=3, stale=2, missing=1), "y": ReadStats(fresh=0, stale=1, missing=0)}
    assert store.stats()["x"].reads == 6
    store.counters.reset()
    assert store.stats() == {}


def test_latest_value_wins_by_event_time_not_arrival() -> None:
    store = OnlineFeatureStore()
    assert store.put("api", "latency", 300.0, computed_at=120.0)
    assert not store.put("api", "latency", 900.0, computed_at=60.0)  # an older window, arriving late
    assert store.table.entities["api"]["latency"] == StoredFeature(300.0, 120.0, 0)
    assert store.put("api", "latency", 310.0, computed_at=120.0, revision=2)  # a revision of the same window
    assert not store.put("api", "latency", 305.0, computed_at=120.0, revision=1)  # an older revision
    assert store.put("api", "latency", 320.0, computed_at=180.0)
    assert store.get("api", "latency", now=180.0).value == 320.0
    assert store.table.out_of_order == {"latency": 2}


def test_store_rejects_bad_values_and_times() -> None:
    store = OnlineFeatureStore()
    with pytest.raises(InvalidArgument) as raised:
        store.put("api", "latency", float("nan"), computed_at=1.0)
    assert (raised.value.argument, store.table.entities) == ("latency", {})
    with pytest.raises(InvalidArgument) as raised:
        store.get("api", "latency", now=float("inf"))
    assert raised.value.argument == "now"
    with pytest.raises(ValueError):
        OnlineFeatureStore(default_ttl=0.0)
    with pytest.raises(ValueError):
        OnlineFeatureStore(ttl={"x": float("nan")})
    known = OnlineFeatureStore(known=["latency"])
    with pytest.raises(KeyError):
        known.get("api", "latncy", now=1.0)


def test_entity_vector_without_schema() -> None:
    store = OnlineFeatureStore(default_ttl=60.0)
    store.put("api", "latency", 420.0, computed_at=1_000.0)
    store.put("api", "cost", 2.0, computed_at=990.0)
    api = store.entity("api")
    assert api.vector(["latency", "cost"], now=1_030.0, extra={"hour_sin": 0.5}) == {
        "latency": 420.0,
        "cost": 2.0,
        "hour_sin": 0.5,
    }
    with pytest.raises(InvalidArgument) as raised:  # both are stale at 1_061.0: a stale value counts as missing
        api.vector(["latency", "cost"], now=1_061.0)
    assert raised.value.argument == "latency"
    assert api.vector(["latency", "cost"], now=1_061.0, default=-1.0) == {"latency": -1.0, "cost": -1.0}
    assert api.vector(["latency", "cost"], now=1_061.0, use_stale=True) == {"latency": 420.0, "cost": 2.0}
    with pytest.raises(InvalidArgument) as raised:
        api.vector(["latency"], now=1_030.0, extra={"latency": 1.0})
    assert raised.value.argument == "latency"


# --- the handler ----------------------------------------------------------------------------------


def test_handler_folds_windows_into_entity_features() -> None:
    handler = store_handler()
    with Engine.open(":memory:", seed=3, handlers=[handler]) as engine:
        publish(engine, closed("latency_1min", "greeting", T0, T0 + 60, {"response_time_ms.mean": 420.0}))
        publish(
            engine,
            closed("latency_5min", "greeting", T0, T0 + 300, {"response_time_ms.p95": 910.0, "other.x": 1.0}),
        )
        publish(engine, closed("errors_15min", "summary", T0, T0 + 900, {"error.mean": 0.04}))
        publish(engine, closed("cost_1h", "greeting", T0, T0 + 3600, {"tokens_in.sum": 12.0}))  # no cost_usd.sum
        publish(engine, closed("unrelated", "greeting", T0, T0 + 60, {"response_time_ms.mean": 1.0}))
        # the entity is the window's key, whatever stream the window was published on
        engine.publish(closed("errors_15min", "greeting", T0, T0 + 900, {"error.mean": 0.1}), stream="x", time=T0)

        greeting = engine.state("features", "greeting")
        assert isinstance(greeting, EntityFeatures)
        assert greeting.features == {
            "window_1min_avg_latency": StoredFeature(420.0, T0 + 60, 0),
            "window_5min_p95_latency": StoredFeature(910.0, T0 + 300, 0),
            "window_15min_error_rate": StoredFeature(0.1, T0 + 900, 0),
        }
        assert "window_1h_cost" not in greeting
        assert engine.state("features", "summary")["window_15min_error_rate"] == 0.04
        assert len(engine.state("features", "nobody")) == 0
        assert engine.state("features").entities() == ["greeting", "summary"]
        assert engine.stats().derived == 0  # the store derives no events


def test_an_older_window_never_overwrites_a_newer_value() -> None:
    handler = store_handler()
    with Engine.open(":memory:", seed=3, handlers=[handler]) as engine:
        mean = "response_time_ms.mean"
        publish(engine, closed("latency_1min", "g", T0 + 60, T0 + 120, {mean: 300.0}))
        # the previous minute's result and a late revision of it arrive afterwards
        publish(engine, closed("latency_1min", "g", T0, T0 + 60, {mean: 900.0}), delay=70.0)
        publish(engine, updated("latency_1min", "g", T0, T0 + 60, {mean: 950.0}, revision=1), delay=80.0)
        assert engine.state("features", "g").features["window_1min_avg_latency"] == StoredFeature(300.0, T0 + 120, 0)
        # a revision of the newest window does replace it, and an older revision of it does not
        publish(engine, updated("latency_1min", "g", T0 + 60, T0 + 120, {mean: 320.0}, revision=2), delay=5.0)
        publish(engine, updated("latency_1min", "g", T0 + 60, T0 + 120, {mean: 310.0}, revision=1), delay=6.0)
        publish(engine, closed("latency_1min", "g", T0 + 60, T0 + 120, {mean: 300.0}), delay=7.0)  # a duplicate
        assert engine.state("features", "g").features["window_1min_avg_latency"] == StoredFeature(320.0, T0 + 120, 2)
        assert engine.state("features").table.out_of_order == {"window_1min_avg_latency": 4}
        publish(engine, closed("latency_1min", "g", T0 + 120, T0 + 180, {mean: 280.0}))
        assert engine.state("features", "g")["window_1min_avg_latency"] == 280.0


def test_views_are_detached_and_reads_are_counted_on_the_handler() -> None:
    handler = store_handler(default_ttl=30.0)
    with Engine.open(":memory:", seed=3, handlers=[handler]) as engine:
        publish(engine, closed("latency_1min", "g", T0, T0 + 60, {"response_time_ms.mean": 420.0}))
        store = engine.state("features")
        store.put("g", "window_1min_avg_latency", 1.0, computed_at=T0 + 10_000)
        assert engine.state("features", "g")["window_1min_avg_latency"] == 420.0
        g = engine.state("features", "g")
        assert g.get("window_1min_avg_latency", now=T0 + 180).fresh is True  # TTL 120 s
        assert g.get("window_1min_avg_latency", now=T0 + 181).fresh is False
        assert g.get("window_1h_cost", now=T0 + 181) is None  # default TTL applies to what has no TTL of its own
        with pytest.raises(KeyError):
            g.get("window_1min_avg_latncy", now=T0 + 180)
        assert handler.stats() == {
            "window_1h_cost": ReadStats(0, 0, 1),
            "window_1min_avg_latency": ReadStats(1, 1, 0),
        }


def test_handler_configuration_is_checked_and_keys_snapshots() -> None:
    with pytest.raises(ValueError):
        FeatureStoreHandler({})
    with pytest.raises(ValueError):
        FeatureStoreHandler({"x": ("only-a-pipeline",)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="does not produce"):
        FeatureStoreHandler(FEATURES, ttl={"unknown": 10.0})
    assert store_handler().fingerprint() == FeatureStoreHandler(FEATURES, default_ttl=5.0).fingerprint()  # TTLs: reads
    assert store_handler().fingerprint() != FeatureStoreHandler({"x": ("p", "a.mean")}).fingerprint()
    assert FeatureStoreHandler(FEATURES, name="features_v2").name == "features_v2"
    assert store_handler().name == "features"


# --- replay ---------------------------------------------------------------------------------------


def _fill(engine: Engine) -> list[bytes]:
    """Publish a mixed history; return the store's encoding after each step."""
    encodings = []
    steps = [
        closed("latency_1min", "greeting", T0, T0 + 60, {"response_time_ms.mean": 420.0}),
        closed("latency_5min", "greeting", T0, T0 + 300, {"response_time_ms.p95": 910.0}),
        closed("latency_1min", "farewell", T0, T0 + 60, {"response_time_ms.mean": 380.0}),
        closed("latency_1min", "greeting", T0 + 60, T0 + 120, {"response_time_ms.mean": 440.0}),
        updated("latency_1min", "greeting", T0, T0 + 60, {"response_time_ms.mean": 999.0}, revision=1),
        closed("errors_15min", "greeting", T0, T0 + 900, {"error.mean": 0.05}),
        closed("cost_1h", "greeting", T0, T0 + 3600, {"cost_usd.sum": 1.25}),
        updated("cost_1h", "greeting", T0, T0 + 3600, {"cost_usd.sum": 1.5}, revision=1),
    ]
    for window in steps:
        publish(engine, window)
        encodings.append(engine.state("features").encode())
    return encodings


def test_replay_rebuilds_the_same_store_state(tmp_path: Path) -> None:
    path = tmp_path / "features.sqlite"
    with Engine.open(path, seed=21, handlers=[store_handler(), BanditHandler()]) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2"], time=T0)
        encodings = _fill(engine)
        engine.decide("greeting", context={"x": 1.0}, time=T0 + 3_700)
        live = engine.state("features").encode()
        live_table = engine.state("features").table
        positions = [e.seq for e in engine.read(types=[WindowClosed, WindowUpdated])]
    assert live == encodings[-1]
    assert msgspec.msgpack.decode(live, type=FeatureTable) == live_table

    # rebuild: fold the recorded events
    with Engine.open(path, read_only=True, handlers=[store_handler(), BanditHandler()]) as rebuilt:
        assert rebuilt.state("features").encode() == live
    # rebuild up to each window: the state the live engine had then
    for seq, expected in zip(positions, encodings, strict=True):
        with Engine.open(path, read_only=True, until_seq=seq, handlers=[store_handler()]) as partial:
            assert partial.state("features").encode() == expected
    # what-if replay: the inputs fed anew through a fresh handler configuration
    with Engine.replay(path, handlers=[store_handler(), BanditHandler()]) as replayed:
        assert replayed.state("features").encode() == live
        assert replayed.state("bandit", "greeting").decisions == 1
    report = Engine.verify(path, handlers=[store_handler(), BanditHandler()])
    assert report.ok, report.difference


def test_snapshot_round_trip_gives_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "snap.sqlite"
    with Engine.open(path, seed=5, handlers=[store_handler()]) as engine:
        encodings = _fill(engine)
        at = engine.snapshot()
        publish(engine, closed("latency_1min", "greeting", T0 + 120, T0 + 180, {"response_time_ms.mean": 460.0}))
        live = engine.state("features").encode()
        handler = store_handler()
        assert engine.log.load_snapshot("features", handler.fingerprint(), at) is not None
    assert live != encodings[-1]
    with Engine.open(path, read_only=True, handlers=[store_handler()]) as reopened:
        assert reopened.state("features").encode() == live
    with Engine.open(path, read_only=True, until_seq=at, handlers=[store_handler()]) as at_snapshot:
        assert at_snapshot.state("features").encode() == encodings[-1]


# --- the request flow -----------------------------------------------------------------------------


SCHEMA = FeatureSchema(
    [
        FeatureSpec("window_1min_avg_latency", "continuous", default=500.0),
        FeatureSpec("window_5min_p95_latency", "continuous", default=1_000.0),
        FeatureSpec("window_15min_error_rate", "continuous", nullable=True),
        FeatureSpec("window_1h_cost", "continuous", nullable=True, default=0.0),
        FeatureSpec("is_business_hours", "binary"),
        FeatureSpec("hour_sin", "continuous"),
    ],
    version=1,
)


def test_decide_records_the_feature_vector(tmp_path: Path) -> None:
    path = tmp_path / "flow.sqlite"
    features = store_handler()
    with Engine.open(path, seed=8, handlers=[features, BanditHandler()]) as engine:
        engine.define_experiment("greeting", arms=["v1", "v2", "v3"], time=T0)
        publish(engine, closed("latency_1min", "greeting", T0 + 3_540, T0 + 3_600, {"response_time_ms.mean": 420.0}))
        publish(engine, closed("latency_5min", "greeting", T0 + 3_300, T0 + 3_600, {"response_time_ms.p95": 910.0}))
        publish(engine, closed("errors_15min", "greeting", T0 + 2_700, T0 + 3_600, {"error.mean": 0.05}))
        publish(engine, closed("cost_1h", "greeting", T0 - 7_200, T0 - 3_600, {"cost_usd.sum": 1.25}))

        now = T0 + 3_630.0  # Monday 09:00:30 UTC
        clock = time_features(now)
        vector = request_context(
            engine,
            "greeting",
            None,
            now,
            SCHEMA,
            extra={"is_business_hours": clock["is_business_hours"], "hour_sin": clock["hour_sin"]},
        )
        assert vector == {
            "window_1min_avg_latency": 420.0,
            "window_5min_p95_latency": 910.0,
            "window_15min_error_rate": 0.05,
            "window_15min_error_rate.missing": 0.0,
            "window_1h_cost": 0.0,  # computed 7_230 s ago, TTL 7_200 s: stale, so its default
            "window_1h_cost.missing": 1.0,
            "is_business_hours": 1.0,
            "hour_sin": pytest.approx(math.sin(2 * math.pi * (9 + 30 / 3600) / 24)),
        }
        decision = engine.decide("greeting", context=vector, time=now)
        assert decision.context == vector
        assert features.stats() == {
            "window_15min_error_rate": ReadStats(1, 0, 0),
            "window_1h_cost": ReadStats(0, 1, 0),
            "window_1min_avg_latency": ReadStats(1, 0, 0),
            "window_5min_p95_latency": ReadStats(1, 0, 0),
        }

        # a minute later the 1-minute latency is stale too and falls back to its default
        later = request_context(
            engine, "greeting", None, now + 91.0, SCHEMA, extra={"is_business_hours": 1, "hour_sin": 0.0}
        )
        assert later["window_1min_avg_latency"] == 500.0
        # an entity without any window gets every default, or an error naming what has none
        with pytest.raises(InvalidArgument) as raised:
            request_context(engine, "unknown", None, now, SCHEMA)
        assert raised.value.argument == "is_business_hours"
        with pytest.raises(TypeError):
            request_context(engine, "greeting", None, now, SCHEMA, handler="bandit")

    with Engine.open(path, read_only=True, handlers=[store_handler(), BanditHandler()]) as reader:
        [recorded] = list(reader.read(types=[Decision]))
        assert recorded.payload.context == vector
        assert list(recorded.payload.context) == SCHEMA.columns
        # replayed at the decision's time, the store gives back the vector the decision recorded
        replayed = request_context(
            reader,
            "greeting",
            None,
            recorded.time,
            SCHEMA,
            extra={"is_business_hours": vector["is_business_hours"], "hour_sin": vector["hour_sin"]},
        )
        assert replayed == recorded.payload.context
    assert Engine.verify(path, handlers=[store_handler(), BanditHandler()]).ok


def test_features_from_a_live_window_pipeline(tmp_path: Path) -> None:
    """Feedback -> WindowHandler -> WindowClosed (derived) -> FeatureStoreHandler, in one commit, and replay."""
    from rtopt.streams import Aggregates, Tumbling, WindowPipeline
    from rtopt.streams.handler import WindowHandler

    from rtopt import Feedback

    def handlers() -> list:
        pipeline = WindowPipeline("latency_1min", Tumbling(60.0), Aggregates({"response_time_ms": ("mean",)}))
        return [WindowHandler(pipeline), store_handler(), BanditHandler()]

    path = tmp_path / "live.sqlite"
    with Engine.open(path, seed=4, handlers=handlers()) as engine:
        for t, ms in ((T0 + 5, 100.0), (T0 + 30, 300.0), (T0 + 61, 80.0)):
            engine.publish(
                Feedback(prompt_id="greeting", variant_id="v1", response_time_ms=ms, success=True, quality_score=0.9),
                time=t,
            )
        value = engine.state("features", "greeting").get("window_1min_avg_latency", now=T0 + 61)
        assert value == FeatureValue(200.0, T0 + 60, fresh=True, age=1.0)
        live = engine.state("features").encode()
    with Engine.open(path, read_only=True, handlers=handlers()) as rebuilt:
        assert rebuilt.state("features").encode() == live
    assert Engine.verify(path, handlers=handlers()).ok

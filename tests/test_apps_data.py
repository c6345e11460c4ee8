"""The dashboard's data layer: what it reads from a log and how it aggregates it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pandas as pd
import pytest
from conftest import simulate_into
from rtopt.apps.replay import state_at
from rtopt.apps.views.decisions import Allocation, ArmPosteriors, ExperimentTests
from rtopt.apps.views.detection import Detections, Forecasts, Responses
from rtopt.apps.views.overview import AlertFeed, EventRate, FeedbackMetrics
from rtopt.apps.views.sources import EngineFeed, LogModel, LogTail
from rtopt.apps.views.studies import Studies
from rtopt.handlers.bandits import ArmSummary, EvidenceDiscounted, ExperimentStats
from rtopt.handlers.bayesopt import StudyCompleted
from rtopt.handlers.detection import (
    AnomalyDetected,
    ConfigurationCaptured,
    DriftDetected,
    FeedbackFlagged,
    Forecast,
    OptimizationAction,
    PatternDetected,
    RateLimitExceeded,
    Recommendation,
    ThresholdBreached,
)
from rtopt.handlers.experiments import ExperimentAnalysed, ExperimentPaused, VariantComparison
from rtopt.streams import WindowClosed, WindowUpdated

from rtopt import (
    Decision,
    Dimension,
    Draft,
    Engine,
    Envelope,
    Feedback,
    FeedbackRejected,
    HandlerFailed,
    Observed,
    StudyDefined,
    Suggested,
)


def feedback(variant: str, latency: float, *, success: bool = True, quality: float = 0.5, cost: float = 0.0):
    return Feedback(
        prompt_id="greeting",
        variant_id=variant,
        response_time_ms=latency,
        success=success,
        quality_score=quality,
        cost_usd=cost,
    )


def decision(arm: str) -> Decision:
    return Decision(experiment="greeting", arm=arm, policy="recorded", propensity=0.5)


@pytest.fixture
def crafted() -> Engine:
    """A small log whose windows are easy to compute by hand (60 s buckets)."""
    engine = Engine.open(":memory:", seed=1, handlers=[])
    events = [
        (0.0, decision("a")),
        (1.0, decision("a")),
        (2.0, decision("b")),
        (10.0, feedback("a", 100.0, quality=0.9, cost=0.01)),
        (20.0, feedback("a", 200.0, quality=0.7, cost=0.03)),
        (30.0, feedback("a", 300.0, success=False, quality=0.2, cost=0.02)),
        (40.0, feedback("b", 50.0, quality=0.4)),
        (65.0, decision("b")),
        (70.0, feedback("a", 400.0, quality=1.0)),
    ]
    for time, event in events:
        engine.publish(event, time=time)
    engine.publish(
        HandlerFailed(handler="bandit", event_type="Feedback", error_type="KeyError", message="v9"), "x", time=72.0
    )
    engine.publish(FeedbackRejected(reason="unknown decision", decision_id="d-1"), "greeting", time=75.0)
    return engine


def read_all(source: Engine | Path) -> LogModel:
    tail = LogTail(source)
    tail.poll(limit=10**9)
    return tail.model


def test_feedback_windows_per_variant(crafted: Engine) -> None:
    frame = read_all(crafted).frame(FeedbackMetrics).set_index(["time", "variant"])
    first_a = frame.loc[(0.0, "a")]
    assert first_a["count"] == 3
    assert first_a["quality"] == pytest.approx((0.9 + 0.7 + 0.2) / 3)
    assert first_a["latency_p50"] == pytest.approx(200.0)
    assert first_a["latency_p95"] == pytest.approx(290.0)  # numpy's linear interpolation of 100, 200, 300
    assert first_a["error_rate"] == pytest.approx(1 / 3)
    assert first_a["cost"] == pytest.approx(0.02)
    assert frame.loc[(0.0, "b")]["count"] == 1
    assert frame.loc[(60.0, "a")][["count", "quality", "latency_p95"]].tolist() == [1, 1.0, 400.0]
    assert len(frame) == 3


def test_event_rate_counts_every_type_per_bucket(crafted: Engine) -> None:
    model = read_all(crafted)
    rate = model.frame(EventRate)
    assert rate["time"].tolist() == [0.0, 60.0]
    assert rate["events"].tolist() == [7, 4]
    assert rate["rate"].tolist() == pytest.approx([7 / 60, 4 / 60])
    assert model.counts == {"Decision": 4, "Feedback": 5, "HandlerFailed": 1, "FeedbackRejected": 1}
    assert model.events_seen == model.last_seq == 11


def test_allocation_shares_per_window(crafted: Engine) -> None:
    frame = read_all(crafted).frame(Allocation)
    assert frame[["time", "arm", "decisions", "share"]].values.tolist() == [
        [0.0, "a", 2, pytest.approx(2 / 3)],
        [0.0, "b", 1, pytest.approx(1 / 3)],
        [60.0, "b", 1, 1.0],
    ]


def test_alert_feed_newest_first_with_what_happened(crafted: Engine) -> None:
    frame = read_all(crafted).frame(AlertFeed)
    assert frame["type"].tolist() == ["FeedbackRejected", "HandlerFailed"]
    assert frame["what"].tolist() == ["unknown decision", "bandit failed on Feedback: KeyError: v9"]


def test_views_show_only_when_their_events_exist(crafted: Engine) -> None:
    model = LogTail(crafted).model
    assert model.shown() == []
    model = read_all(crafted)
    assert {type(view) for view in model.shown()} == {EventRate, FeedbackMetrics, Allocation, AlertFeed}
    stats = ExperimentStats(
        experiment="greeting",
        decisions=4,
        rewards=3,
        exploration_rate=0.25,
        arms={
            "a": ArmSummary("active", 3, 3, 0.6, 0.2, 0.9, 0.7),
            "b": ArmSummary("active", 1, 0, None, None, None, 0.3),
        },
    )
    comparison = VariantComparison(None, None, None, None, msprt_p=0.2, msprt_p_holm=0.4)
    analysed = ExperimentAnalysed(
        experiment="greeting",
        analysis=1,
        feedback=5,
        elapsed_s=70.0,
        control="a",
        metric="quality",
        conversion="success",
        variants={},
        comparisons={"b": comparison},
    )
    paused = ExperimentPaused(experiment="greeting", reason="guardrail quality", guardrail="quality", arm="b")
    for event in (stats, analysed, paused):
        crafted.publish(event, time=80.0)
    tail = LogTail(crafted, model)
    assert tail.poll() == 3
    assert {ArmPosteriors, ExperimentTests} <= {type(view) for view in model.shown()}
    arms = model.frame(ArmPosteriors).set_index("arm")
    assert arms.loc["a", ["mean", "low", "high", "p_best"]].tolist() == [0.6, 0.2, 0.9, 0.7]
    tables = model.frames()
    assert tables["ExperimentTests"][["analysis", "variant", "msprt_p", "p_welch"]].values.tolist() == [
        [1, "b", 0.2, None]
    ]
    assert tables["ExperimentStatus"][["status", "reason"]].values.tolist() == [
        ["paused", "ExperimentPaused: guardrail quality"]
    ]
    assert model.frame(AlertFeed)["type"].iloc[0] == "ExperimentPaused"


def test_downsampled_windows_equal_wider_windows(simulated_small: Path) -> None:
    narrow = LogModel([FeedbackMetrics(bucket_s=10.0)])
    wide = LogModel([FeedbackMetrics(bucket_s=30.0)])
    model = read_all(simulated_small)
    feedback = list(LogTail(simulated_small).engine.read(types=[Feedback]))
    narrow.add(feedback)
    wide.add(feedback)
    windows = narrow.states[0]
    buckets = windows.last - windows.first + 1
    downsampled = narrow.frame(FeedbackMetrics, max_points=buckets // 3 + (buckets % 3 > 0))
    assert len(downsampled) < len(narrow.frame(FeedbackMetrics, max_points=10**6))
    pd.testing.assert_frame_equal(downsampled, wide.frame(FeedbackMetrics))
    assert model.frame(FeedbackMetrics, max_points=5)["time"].nunique() <= 6


def test_a_changed_window_is_computed_again(crafted: Engine) -> None:
    tail = LogTail(crafted)
    tail.poll()
    before = tail.model.frame(FeedbackMetrics)
    crafted.publish(feedback("a", 1000.0, quality=0.0), time=5.0)  # late: into the first window
    tail.poll()
    after = tail.model.frame(FeedbackMetrics)
    assert after.equals(read_all(crafted).frame(FeedbackMetrics))
    assert after.loc[0, "count"] == before.loc[0, "count"] + 1


@pytest.fixture(scope="module")
def simulated_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("apps") / "small.sqlite"
    simulate_into(path, steps=600, seed=3)
    return path


def assert_same_frames(model: LogModel, other: LogModel) -> None:
    ours, theirs = model.frames(), other.frames()
    assert list(ours) == list(theirs)
    for name, frame in ours.items():
        pd.testing.assert_frame_equal(frame, theirs[name], obj=name)


def test_reading_in_small_steps_equals_one_full_read(simulated_small: Path) -> None:
    full = read_all(simulated_small)
    tail = LogTail(simulated_small)
    steps = 0
    while tail.poll(limit=97):
        steps += 1
    assert steps == -(-full.last_seq // 97)
    assert tail.model.events_seen == full.events_seen == full.last_seq
    assert_same_frames(tail.model, full)


def test_a_tail_follows_a_log_as_it_grows(tmp_path: Path, simulated_small: Path) -> None:
    path = tmp_path / "growing.sqlite"
    tail = LogTail(path)
    assert tail.poll() == 0 and tail.engine is None  # not written yet
    with Engine.open(path, seed=3, handlers=[]) as writer, Engine.open(simulated_small, read_only=True) as source:
        rows = list(source.read())
        writer.publish_many([_draft(e) for e in rows[:500]])
        assert tail.poll() == 500
        writer.publish_many([_draft(e) for e in rows[500:900]])
        assert tail.poll() == 400
        assert tail.poll() == 0
    assert_same_frames(tail.model, read_all(path))
    tail.close()


def _draft(envelope: Envelope[Any]) -> Draft:
    return Draft(envelope.payload, envelope.stream, envelope.time)


def test_engine_feed_reads_history_then_follows_the_engine(crafted: Engine) -> None:
    feed = EngineFeed(crafted)
    crafted.publish(feedback("b", 60.0), time=90.0)  # committed before the first poll: read once
    assert feed.poll(limit=4) == 4
    while feed.poll(limit=4):
        pass
    crafted.publish(feedback("b", 70.0), time=95.0)
    assert feed.poll() == 1
    assert feed.model.events_seen == feed.model.last_seq == 13
    assert_same_frames(feed.model, read_all(crafted))
    feed.close()
    crafted.publish(feedback("b", 80.0), time=99.0)
    assert feed.poll() == 0


def test_state_at_a_past_seq_is_rebuilt_by_replay(simulated_small: Path) -> None:
    with Engine.open(simulated_small, read_only=True, handlers=[]) as engine:
        seq = engine.position // 2
        pulls = pd.Series([e.payload.arm for e in engine.read(types=[Decision], until=seq)]).value_counts()
    past = state_at(simulated_small, seq)
    assert past.seq == seq and past.time is not None
    assert past.arms.set_index("arm")["pulls"].to_dict() == pulls.to_dict()
    assert past.experiments.empty


def test_a_replaced_log_is_read_from_its_start(tmp_path: Path, simulated_small: Path) -> None:
    path = tmp_path / "replaced.sqlite"
    with Engine.open(simulated_small, read_only=True) as source:
        rows = list(source.read(until=900))
    with Engine.open(path, seed=3, handlers=[]) as writer:
        writer.publish_many([_draft(e) for e in rows[:600]])
    tail = LogTail(path)
    assert tail.poll() == 600
    first_model = tail.model
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with Engine.open(path, seed=3, handlers=[]) as writer:
        writer.publish_many([_draft(e) for e in rows[:250]])
    assert tail.poll() == 250
    assert tail.model is not first_model
    assert tail.model.events_seen == tail.model.last_seq == 250
    assert_same_frames(tail.model, read_all(path))
    tail.close()


def drift(revision: int, change_point: float, statistic: float) -> DriftDetected:
    return DriftDetected(
        pipeline="quality",
        key="greeting/b",
        metric="quality_score.mean",
        start=0.0,
        end=120.0 + 60 * revision,
        alert=1,
        revision=revision,
        detector="cusum",
        change_point=change_point,
        direction="down",
        statistics={"statistic": statistic, "threshold": 8.0},
        detectors=["cusum", "adwin"][: revision + 1],
    )


@pytest.fixture
def detected() -> Engine:
    """A log of detections and responses as the detection handler writes them, one of each kind."""
    engine = Engine.open(":memory:", seed=1, handlers=[])
    where = {"pipeline": "quality", "key": "greeting/b", "start": 0.0, "end": 120.0}
    advice = [
        Recommendation("strategy_change", "critical", "move traffic away from b", 0.3),
        Recommendation("investigate", "high", "look at b's prompt", 0.1, steps=["diff the prompts"]),
    ]
    events = [
        (120.0, drift(0, 60.0, 9.5)),
        (120.0, AnomalyDetected(**where, metric="success.mean", detector="mad", value=0.2, score=4.5, threshold=3.5)),
        (120.0, EvidenceDiscounted(experiment="greeting", factor=0.0, reason="drift of greeting/b")),
        (180.0, drift(1, 60.0, 14.0)),  # the same alert, grown: replaces its first report
        (
            180.0,
            PatternDetected(
                **where,
                metric="quality_score.mean",
                alert=2,
                kind="degradation",
                confidence=0.99,
                significance=0.01,
                magnitude=-0.3,
                windows=3,
                recommendations=advice,
            ),
        ),
        (
            180.0,
            OptimizationAction(
                action="strategy_change",
                target="greeting",
                reason="PatternDetected: degradation of greeting/b",
                metric="quality_score.mean",
                expected_impact=0.3,
                confidence=0.99,
                parameters={"decay": 0.5},
            ),
        ),
        (
            240.0,
            ThresholdBreached(
                **where, metric="quality_score.mean", profile="basic", value=0.45, limit=0.6, bound="min"
            ),
        ),
        (240.0, ConfigurationCaptured(**where, metric="success.mean", values={"success.mean": 0.95})),
    ]
    for time, event in events:
        engine.publish(event, time=time)
    return engine


def test_detections_show_one_row_per_alert_newest_first_with_its_latest_revision(detected: Engine) -> None:
    model = read_all(detected)
    assert {Detections, Responses} <= {type(view) for view in model.shown()}
    frame = model.frame(Detections)
    assert frame["type"].tolist() == ["ThresholdBreached", "PatternDetected", "DriftDetected", "AnomalyDetected"]
    assert frame["seq"].tolist() == [7, 5, 4, 2]
    breach, pattern, change, anomaly = (row for _, row in frame.iterrows())
    assert (breach["detector"], breach["score"], breach["what"]) == (
        "basic profile",
        0.45,
        "0.45 below the minimum 0.6",
    )
    assert (pattern["pattern"], pattern["confidence"], pattern["what"]) == (
        "degradation",
        0.99,
        "degradation: magnitude -0.3 over 3 windows",
    )
    assert (change["detector"], change["change_point"], change["revision"]) == ("cusum+adwin", 60.0, 1)
    assert change["what"] == "level went down: statistic 14, threshold 8"
    assert (anomaly["detector"], anomaly["metric"], anomaly["score"]) == ("mad", "success.mean", 4.5)
    assert math.isnan(anomaly["change_point"]) and math.isnan(anomaly["confidence"])


def test_the_recommendations_of_each_pattern_are_listed_with_their_priority(detected: Engine) -> None:
    frame = read_all(detected).frames()["Recommendations"]
    columns = ["seq", "pattern", "priority", "action", "description", "expected_improvement"]
    assert frame[columns].values.tolist() == [
        [5, "degradation", "critical", "strategy_change", "move traffic away from b", 0.3],
        [5, "degradation", "high", "investigate", "look at b's prompt", 0.1],
    ]


def test_the_feed_keeps_the_newest_alerts_up_to_its_limit() -> None:
    model = LogModel([Detections(limit=2)])
    for seq, alert in enumerate((1, 2, 1, 3), start=1):
        event = drift(0, 60.0, 9.0)
        event = DriftDetected(**{**msgspec.structs.asdict(event), "alert": alert})
        model.add([Envelope(seq, "id", "DriftDetected", "greeting/b", 60.0 * seq, 0.0, None, None, 1, event)])
    assert model.frame(Detections)["seq"].tolist() == [4, 3]  # alert 3, then alert 1 reported again; alert 2 dropped


def test_responses_name_the_action_its_target_and_expected_impact(detected: Engine) -> None:
    frame = read_all(detected).frame(Responses)
    assert frame[["seq", "type", "action", "target", "metric"]].values.tolist() == [
        [8, "ConfigurationCaptured", "capture configuration", "greeting/b", "success.mean"],
        [6, "OptimizationAction", "strategy_change", "greeting", "quality_score.mean"],
        [3, "EvidenceDiscounted", "scale evidence by 0", "greeting", ""],
    ]
    assert frame["what"].tolist() == [
        "success.mean 0.95",
        "PatternDetected: degradation of greeting/b (decay=0.5)",
        "drift of greeting/b",
    ]
    assert frame.loc[1, ["expected_impact", "confidence"]].tolist() == [0.3, 0.99]


def window(start: float, count: int, revision: int = 0) -> WindowClosed:
    fields = {"pipeline": "volume", "key": "greeting", "start": start, "end": start + 60.0, "count": count}
    if revision:
        return WindowUpdated(**fields, values={"quality_score.mean": count / 20}, revision=revision, late=1)
    return WindowClosed(**fields, values={"quality_score.mean": count / 20})


def forecast(start: float, points: list[float], mae: float) -> Forecast:
    return Forecast(
        pipeline="volume",
        key="greeting",
        metric="count",
        start=start,
        step=60.0,
        points=points,
        lows=[p - 5.0 for p in points],
        highs=[p + 5.0 for p in points],
        level=0.95,
        weights={"holt": 0.75, "linear_trend": 0.25},
        mae=mae,
        mape=0.1,
        scored=2,
    )


def test_forecasts_are_set_against_the_windows_they_forecast() -> None:
    model = LogModel()
    engine = Engine.open(":memory:", seed=1, handlers=[])
    tail = LogTail(engine, model)
    for time, event in ((60.0, window(0.0, 10)), (120.0, window(60.0, 12))):
        engine.publish(event, "greeting", time=time)
    tail.poll()
    assert Forecasts not in {type(view) for view in model.shown()}  # windows alone: nothing forecast yet
    events = [
        (120.0, forecast(120.0, [14.0, 16.0], mae=1.0)),
        (180.0, window(120.0, 13)),
        (185.0, window(120.0, 15, revision=1)),  # a late event revises the window
        (240.0, forecast(180.0, [17.0, 19.0], mae=1.5)),
        (240.0, window(180.0, 16)),
    ]
    for time, event in events:
        engine.publish(event, "greeting", time=time)
    tail.poll()
    assert Forecasts in {type(view) for view in model.shown()}
    frame = model.frame(Forecasts)
    assert frame["time"].tolist() == [0.0, 60.0, 120.0, 180.0, 240.0]
    nan = math.nan
    assert frame["forecast"].tolist() == pytest.approx([nan, nan, 14.0, 17.0, 19.0], nan_ok=True)
    assert frame["high"].tolist() == pytest.approx([nan, nan, 19.0, 22.0, 24.0], nan_ok=True)
    assert frame["actual"].tolist() == pytest.approx([10.0, 12.0, 15.0, 16.0, nan], nan_ok=True)
    assert model.frame(Forecasts, max_points=2)["time"].tolist() == [180.0, 240.0]
    errors = model.frames()["ForecastErrors"]
    assert errors[["metric", "mae", "weights"]].values.tolist() == [["count", 1.5, "holt 0.75, linear_trend 0.25"]]


def test_flagged_feedback_and_rate_limits_are_in_the_alert_feed() -> None:
    model = LogModel([AlertFeed()])
    flagged = FeedbackFlagged(feedback_id="f-1", user="u1", source="web", reasons=["burst"], reliability=0.25)
    limited = RateLimitExceeded(scope="user", who="u1", limit=30, window_s=60.0, count=31)
    for seq, event in enumerate((flagged, limited), start=1):
        model.add([Envelope(seq, "id", type(event).__name__, "u1", 0.0, 0.0, None, None, 1, event)])
    assert model.frame(AlertFeed)["what"].tolist() == [
        "user u1: 31 feedback within 60 s (limit 30)",
        "feedback f-1 of u1 flagged: burst (user reliability 0.25)",
    ]


def study_log() -> list[Envelope[Any]]:
    """Two studies of one parameter: ``up`` maximises, ``down`` minimises; both observe 0.5, 0.3, 0.9."""
    events: list[tuple[str, Any]] = [
        ("up", StudyDefined(study="up", space={"x": Dimension.of((0.0, 1.0))})),
        ("down", StudyDefined(study="down", space={"x": Dimension.of((0.0, 1.0))}, direction="minimize")),
    ]
    for study in ("up", "down"):
        for i, (x, value) in enumerate(((0.2, 0.5), (0.7, 0.3), (0.9, 0.9))):
            guided = {"acquisition": 0.1 * i, "mean": 0.6, "std": 0.2} if i else {}
            events.append((f"{study}-{i}", Suggested(study=study, params={"x": x}, method="gp", **guided)))
            events.append(("", Observed(study=study, suggestion_id=f"{study}-{i}", value=value)))
    events.append(("up-3", Suggested(study="up", params={"x": 1.0}, method="gp", acquisition=0.01, mean=0.95, std=0.1)))
    completed = StudyCompleted(
        study="down",
        reason="3 evaluations",
        evaluations=3,
        best_params={"x": 0.7},
        best_value=0.3,
        recommended={"x": 0.7},
        predicted=0.35,
    )
    events.append(("", completed))
    return [
        Envelope(seq, key or f"e{seq}", type(event).__name__, event.study, float(seq), 0.0, None, None, 1, event)
        for seq, (key, event) in enumerate(events, start=1)
    ]


def test_studies_show_the_best_value_so_far_in_their_direction() -> None:
    model = LogModel()
    model.add(study_log())
    assert Studies in {type(view) for view in model.shown()}
    frame = model.frame(Studies)
    assert frame[frame["study"] == "up"][["iteration", "value", "best"]].values.tolist() == [
        [1, 0.5, 0.5],
        [2, 0.3, 0.5],
        [3, 0.9, 0.9],
    ]
    assert frame[frame["study"] == "down"]["best"].tolist() == [0.5, 0.3, 0.3]
    assert model.frame(Studies, max_points=2).query("study == 'up'")["iteration"].tolist() == [1, 3]
    status = model.frames()["StudyStatus"].set_index("study")
    assert status.loc["up", ["evaluations", "best", "best_params", "status"]].tolist() == [3, 0.9, "x=0.9", "running"]
    assert status.loc["down", ["direction", "best", "best_params", "status"]].tolist() == [
        "minimize",
        0.3,
        "x=0.7",
        "completed: 3 evaluations",
    ]


def test_the_suggestions_carry_their_prediction_and_the_value_observed() -> None:
    model = LogModel()
    model.add(study_log())
    frame = model.frames()["Suggestions"]
    assert len(frame) == 7
    newest, *_ = (row for _, row in frame.iterrows())
    assert (newest["study"], newest["params"], newest["acquisition"], newest["mean"]) == ("up", "x=1", 0.01, 0.95)
    assert math.isnan(newest["value"])  # not observed yet
    up = frame[frame["study"] == "up"].iloc[1:]  # oldest last
    assert up["params"].tolist() == ["x=0.9", "x=0.7", "x=0.2"]
    assert up["value"].tolist() == [0.9, 0.3, 0.5]
    predicted = up[["acquisition", "mean", "std"]].to_numpy().ravel().tolist()
    nan = math.nan  # the first suggestion was made before a model guided the study
    assert predicted == pytest.approx([0.2, 0.6, 0.2, 0.1, 0.6, 0.2, nan, nan, nan], nan_ok=True)


def test_only_the_latest_suggestions_are_kept_and_the_best_value_survives_them() -> None:
    model = LogModel([Studies(limit=2)])
    model.add([Envelope(1, "def", "StudyDefined", "up", 0.0, 0.0, None, None, 1, study_log()[0].payload)])
    for seq, x in enumerate((0.1, 0.2, 0.3), start=2):
        suggested = Suggested(study="up", params={"x": x}, method="random")
        model.add([Envelope(seq, f"s{seq}", "Suggested", "up", 0.0, 0.0, None, None, 1, suggested)])
    for seq, (suggestion, value) in enumerate((("s2", 0.9), ("s4", 0.4)), start=5):
        observed = Observed(study="up", suggestion_id=suggestion, value=value)
        model.add([Envelope(seq, f"o{seq}", "Observed", "up", 0.0, 0.0, None, None, 1, observed)])
    tables = model.frames()
    assert tables["Suggestions"][["params", "value"]].values.tolist() == [
        ["x=0.3", 0.4],
        ["x=0.2", pytest.approx(math.nan, nan_ok=True)],
    ]
    assert tables["Studies"]["best"].tolist() == [0.9, 0.9]  # the first suggestion's value, though it was dropped
    assert tables["StudyStatus"][["evaluations", "best", "best_params"]].values.tolist() == [[2, 0.9, ""]]


def test_each_view_folded_alone_gives_the_tables_it_gives_in_the_model(monitored: Path) -> None:
    model = read_all(monitored)
    assert {type(view) for view in model.views if view not in model.shown()} == {ExperimentTests}  # no A/B test
    tables = model.frames()
    with Engine.open(monitored, read_only=True, handlers=[]) as engine:
        envelopes = list(engine.read())
    for view in model.views:
        for name, frame in view.frames(view.fold(view.initial_state(), envelopes)).items():
            pd.testing.assert_frame_equal(frame, tables[name], obj=name)


def test_an_emptied_model_folds_anew_with_the_same_views(crafted: Engine) -> None:
    model = LogModel([AlertFeed(limit=1)])
    model.add(crafted.read())
    emptied = model.emptied()
    assert emptied.views == model.views and emptied.events_seen == 0 and emptied.frame(AlertFeed).empty
    emptied.add(crafted.read())
    assert emptied.frame(AlertFeed)["type"].tolist() == model.frame(AlertFeed)["type"].tolist() == ["FeedbackRejected"]

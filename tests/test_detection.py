"""The detection handler in an engine: a degradation leads through events to a response, replay derives the
same, alerts do not storm; the pattern tests on constructed and null series."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import msgspec
import numpy as np
import pytest
from rtopt.handlers.bandits import BanditHandler
from rtopt.handlers.detection import DetectionHandler, DetectionOptions, PatternOptions
from rtopt.handlers.detection import patterns as found_in
from rtopt.handlers.detection.detectors import Drift
from rtopt.handlers.detection.response import Response
from rtopt.handlers.detection.state import Alert, DetectionState
from rtopt.handlers.experiments import ExperimentHandler
from rtopt.streams import Aggregates, Tumbling, WindowClosed, WindowHandler, WindowPipeline, WindowUpdated

from rtopt import Context, Engine, Envelope, Feedback, InvalidEvent

DROP_AT = 3600.0  # event time when arm b's quality drops from 0.85 to 0.5
MINUTES = 90
DETECTIONS = ["DriftDetected", "AnomalyDetected", "PatternDetected", "ThresholdBreached"]
RESPONSES = ["OptimizationAction", "EvidenceDiscounted", "ConfigurationCaptured"]


def handlers(detect: bool) -> list:
    pipeline = WindowPipeline(
        "quality",
        Tumbling(60.0),
        Aggregates({"quality_score": ("mean",), "success": ("mean",)}),
        key=("prompt_id", "variant_id"),
    )
    return [BanditHandler(), WindowHandler(pipeline)] + ([DetectionHandler()] if detect else [])


def serve(path: Path | str, detect: bool, seed: int = 3, snapshot_at: int | None = None) -> tuple[list, object]:
    """A Thompson bandit over arms a (quality ~0.75) and b (~0.85, dropping to ~0.5 at DROP_AT), 20 requests a
    minute; returns the (time, arm) of each decision and the detection handler's final state."""
    rng = np.random.default_rng(seed)
    chosen = []
    with Engine.open(path, seed=seed, handlers=handlers(detect)) as engine:
        engine.define_experiment("g", arms=["a", "b"], policy="thompson", time=0.0)
        for i in range(MINUTES * 20):
            t = i * 3.0
            decision = engine.decide("g", time=t)
            mean = {"a": 0.75, "b": 0.85 if t < DROP_AT else 0.5}[decision.arm]
            quality = float(np.clip(rng.normal(mean, 0.1), 0.0, 1.0))
            engine.feedback(decision.id, success=True, quality_score=quality, response_time_ms=100.0, time=t + 1.0)
            chosen.append((t, decision.arm))
            if i == snapshot_at:
                engine.snapshot()
        state = engine.state("detection") if detect else None
    return chosen, state


def share_of_b(chosen: list, since: float) -> float:
    late = [arm for t, arm in chosen if t >= since]
    return late.count("b") / len(late)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, object]:
    path = tmp_path_factory.mktemp("detect") / "served.sqlite"
    chosen, state = serve(path, detect=True)
    return path, chosen, state


def test_a_degradation_leads_through_events_to_a_pattern_an_action_and_a_changed_allocation(served) -> None:
    path, chosen, _ = served
    with Engine.open(path, read_only=True, handlers=[]) as engine:
        found = list(engine.read(types=DETECTIONS + RESPONSES))
        by_id = {env.id: env for env in engine.read()}
    assert found and min(env.time for env in found) >= DROP_AT  # nothing before the drop
    degradation = [e for e in found if e.type == "PatternDetected" and e.payload.kind == "degradation"]
    assert degradation and {e.payload.key for e in degradation} == {"g/b"}
    assert degradation[0].payload.magnitude < -0.1
    discounted = [e for e in found if e.type == "EvidenceDiscounted"]
    assert [e.payload.experiment for e in discounted] == ["g"]
    action = next(e for e in found if e.type == "OptimizationAction" and e.payload.action == "strategy_change")
    window = by_id[discounted[0].causation_id]  # the response was derived from the window that showed the drop
    assert window.type == "WindowClosed" and window.payload.key == "g/b" and window.payload.start >= DROP_AT
    assert action.causation_id == window.id
    unwatched, _ = serve(":memory:", detect=False)
    since = DROP_AT + 600.0
    assert share_of_b(unwatched, since) > 0.4  # without a response the bandit keeps its faith in b
    assert share_of_b(chosen, since) < 0.1


def test_replay_derives_every_detection_and_action_again(served) -> None:
    path, _, live_state = served
    report = Engine.verify(path, handlers=handlers(detect=True))
    assert report.ok, report.difference
    with Engine.open(path, read_only=True, handlers=handlers(detect=True)) as engine:
        assert msgspec.to_builtins(engine.state("detection")) == msgspec.to_builtins(live_state)


def test_state_restored_from_a_snapshot_goes_on_as_the_live_one(tmp_path: Path, served) -> None:
    _, chosen, live_state = served
    path = tmp_path / "snap.sqlite"
    again, _ = serve(path, detect=True, snapshot_at=MINUTES * 10)
    assert again == chosen
    with Engine.open(path, read_only=True, handlers=handlers(detect=True)) as engine:
        assert engine.rebuilt.snapshots["detection"] > 0
        assert msgspec.to_builtins(engine.state("detection")) == msgspec.to_builtins(live_state)


# --- the handler driven directly ---------------------------------------------------------------------

_ids = itertools.count()


def fold(handler: DetectionHandler, state, window: WindowClosed) -> list:
    env = Envelope(0, f"w{next(_ids)}", window.tag(), window.key, window.end, 0.0, None, None, 1, window)
    state, out = handler.apply(state, env, Context(env.time, env.id, 1))
    return list(out)


def windows(values: list[float], metric: str = "success.mean", key: str = "g/v") -> list[WindowClosed]:
    return [
        WindowClosed(pipeline="p", key=key, start=60.0 * i, end=60.0 * (i + 1), count=10, values={metric: v})
        for i, v in enumerate(values)
    ]


def test_a_breach_that_goes_on_is_one_alert_and_one_action_until_the_cooldown_ends() -> None:
    handler = DetectionHandler(DetectionOptions(drift=[], anomaly="none", cooldown_s=1800.0, alert_windows=5))
    state = handler.initial_state()
    out = [e for w in windows([0.5] * 40) for e in fold(handler, state, w)]  # success 0.5 < 0.8 every minute
    breaches = [e for e in out if type(e).__name__ == "ThresholdBreached"]
    actions = [e for e in out if type(e).__name__ == "OptimizationAction"]
    assert [(b.alert, b.revision) for b in breaches] == [(1, 0)]  # the same breach, not grown: reported once
    assert [a.action for a in actions] == ["strategy_change"]
    later = [e for w in windows([0.5] * 10 + [0.9] * 10 + [0.3] * 3) for e in fold(handler, state, w)]
    new = [e for e in later if type(e).__name__ == "ThresholdBreached"]
    assert [(b.alert, b.revision, b.value) for b in new] == [(2, 0, 0.3)]  # after 10 clean windows: a new alert
    assert state.suppressed_actions == 1  # its action fell inside the cool-down of the first


def test_a_late_revision_changes_the_value_patterns_see_and_nothing_else() -> None:
    handler = DetectionHandler(DetectionOptions(profile="none"))
    state = handler.initial_state()
    for w in windows([0.9] * 12):
        fold(handler, state, w)
    watched = state.pipelines["p"]["g/v"]["success.mean"]
    seen = watched.adwin.n
    revised = WindowUpdated(
        pipeline="p", key="g/v", start=120.0, end=180.0, count=11, values={"success.mean": 0.4}, revision=1, late=1
    )
    assert fold(handler, state, revised) == []
    assert watched.values[2] == 0.4 and watched.adwin.n == seen and state.revisions == 1


def test_pipelines_and_metrics_not_watched_are_left_alone() -> None:
    handler = DetectionHandler(DetectionOptions(pipelines=["other"]))
    state = handler.initial_state()
    assert [e for w in windows([0.1] * 30) for e in fold(handler, state, w)] == []
    assert state.pipelines == {}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("profile", "strict"),
        ("anomaly", "median"),
        ("drift", ["kswin"]),
        ("discount_factor", 1.5),
        ("warmup", 1),
        ("warmup", 60),
    ],
)
def test_bad_options_name_the_field_and_the_value(field: str, value: object) -> None:
    with pytest.raises(InvalidEvent) as raised:
        DetectionOptions(**{field: value})
    assert raised.value.field == field


# --- patterns -----------------------------------------------------------------------------------------

OPTIONS = PatternOptions()
t = np.arange(20)


def kinds(values, lower_is_better: bool = False, after_change: bool = False) -> set[str]:
    return {f.kind for f in found_in.find_patterns(list(values), lower_is_better, OPTIONS, after_change)}


def test_each_pattern_is_recognised_on_a_series_built_to_show_it() -> None:
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 0.01, 20)
    assert kinds(0.9 - 0.01 * t + noise) == {"degradation"}
    assert kinds(0.6 + 0.01 * t + noise) == {"improvement"}
    assert kinds(300.0 + 5.0 * t + 100 * noise, lower_is_better=True) == {"degradation"}  # latency rising
    assert kinds(0.7 + 0.1 * np.sin(2 * math.pi * t / 5) + noise) == {"oscillation"}
    assert kinds(0.8 + noise, after_change=True) == {"plateau"}
    spiked = 0.8 + noise
    spiked[-1] = 0.5
    assert kinds(spiked) == {"anomaly"}


def test_a_pattern_carries_the_numbers_of_its_test() -> None:
    values = 0.9 - 0.01 * t + np.random.default_rng(1).normal(0.0, 0.01, 20)
    [trend] = found_in.find_patterns(values.tolist(), False, OPTIONS)
    fit = np.polyfit(t, values, 1)
    assert trend.magnitude == pytest.approx(fit[0] * 19)
    assert trend.confidence == pytest.approx(1.0 - trend.significance)
    period = found_in.oscillation((0.7 + 0.1 * np.sin(2 * math.pi * t / 5)).tolist(), OPTIONS)
    assert period.details["period"] == 5.0 and period.magnitude == pytest.approx(0.1, rel=0.1)


def test_short_series_hold_no_pattern() -> None:
    assert kinds((0.9 - 0.05 * np.arange(7)).tolist()) == set()


@pytest.fixture(scope="module")
def null_rates() -> dict[str, float]:
    """The share of 400 seeded null series (20 windows each) in which each kind of pattern is found. The null
    of a trend, an oscillation or an anomaly is white noise; that of a plateau (found only after a change) is
    a series still moving by a little more than the plateau tolerance (5 % of its level) over its windows."""
    noise = np.random.default_rng(11).normal(0.7, 0.02, (400, 20))
    found = [kinds(values) for values in noise]
    rates = {kind: sum(kind in f for f in found) / len(noise) for kind in found_in.KINDS}
    moving = noise + 0.04 * t / 19  # 0.04 over the series: more than 5 % of a level near 0.72
    rates["plateau"] = sum("plateau" in kinds(values, after_change=True) for values in moving) / len(noise)
    return rates


@pytest.mark.statistical
@pytest.mark.parametrize("kind", found_in.KINDS)
def test_white_noise_shows_a_pattern_less_often_than_the_configured_level(kind: str, null_rates) -> None:
    assert null_rates[kind] <= 1.0 - OPTIONS.confidence


def test_correlations_are_those_of_scipy() -> None:
    rng = np.random.default_rng(2)
    quality = rng.normal(0.7, 0.05, 20)
    series = {"q": quality.tolist(), "s": (quality * 0.5 + rng.normal(0, 0.01, 20)).tolist(), "flat": [1.0] * 20}
    found = found_in.correlations(series, "q")
    assert set(found) == {"s"}  # a constant series correlates with nothing
    assert found["s"].pearson == pytest.approx(np.corrcoef(series["q"], series["s"])[0, 1])


def test_the_readme_example_runs_and_the_degraded_variant_loses_its_traffic() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("## Detection and response", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    # z = 1.5 a value from index 50: the upper sum grows by 1.0 a value and passes 8 at the 9th
    assert scope["alarms"] == [58]
    first_time, first_type, _ = scope["responses"][0]
    assert 2400 < first_time <= 2521 and first_type == "DriftDetected"  # within two windows of the drop
    assert any(kind == "EvidenceDiscounted" for _, kind, _ in scope["responses"])
    assert scope["after"].count("v2") / len(scope["after"]) < 0.2


def test_request_volume_is_forecast_for_the_next_windows_with_its_error_so_far() -> None:
    handler = DetectionHandler(DetectionOptions(drift=[], anomaly="none", profile="none", forecast_horizon=2))
    state = handler.initial_state()
    counts = [100 + 10 * i + (3 if i % 2 else -3) for i in range(30)]
    out = []
    for i, count in enumerate(counts):
        window = WindowClosed(pipeline="p", key="g", start=60.0 * i, end=60.0 * (i + 1), count=count, values={})
        out += [e for e in fold(handler, state, window) if type(e).__name__ == "Forecast"]
    last = out[-1]
    assert (last.metric, last.start, last.step, last.scored) == ("count", 1800.0, 60.0, 28)  # from the 3rd window
    assert last.points == pytest.approx([400.0, 410.0], abs=6.0)  # the line 100 + 10 i at i = 30, 31
    assert all(low < point < high for low, point, high in zip(last.lows, last.points, last.highs, strict=True))
    assert 0 < last.mae < 15 and last.mape < 0.1


def test_an_improvement_captures_the_configuration_behind_it_and_each_response_can_be_switched_off() -> None:
    rising = [0.5 + 0.02 * i + (0.004 if i % 2 else -0.004) for i in range(20)]
    falling = rising[::-1]
    on = DetectionHandler(DetectionOptions(profile="none", forecast=[]))
    state = on.initial_state()
    out = [e for w in windows(rising, "quality_score.mean", key="g/v2") for e in fold(on, state, w)]
    captured = [e for e in out if type(e).__name__ == "ConfigurationCaptured"]
    assert [(c.key, c.metric) for c in captured] == [("g/v2", "quality_score.mean")]
    assert captured[0].values == {"quality_score.mean": pytest.approx(rising[int(captured[0].end // 60) - 1])}
    off = DetectionHandler(
        DetectionOptions(profile="none", forecast=[], capture_improvements=False, discount_on_drift=False)
    )
    state = off.initial_state()
    both = [e for w in windows(rising + falling, "quality_score.mean", key="g/v2") for e in fold(off, state, w)]
    kinds = {e.kind for e in both if type(e).__name__ == "PatternDetected"}
    assert {"improvement", "degradation"} <= kinds  # still found and reported
    assert not [e for e in both if type(e).__name__ in ("ConfigurationCaptured", "EvidenceDiscounted")]


def test_metrics_that_part_ways_are_a_joint_anomaly_though_each_looks_ordinary() -> None:
    handler = DetectionHandler(DetectionOptions(drift=[], profile="none", forecast=[]))
    state = handler.initial_state()
    rng = np.random.default_rng(6)
    out = []
    for i in range(60):
        load = rng.normal(0.0, 1.0)
        values = {"quality_score.mean": 0.7 + 0.05 * load, "success.mean": 0.9 + 0.03 * (load + 0.1 * rng.normal())}
        if i == 50:  # quality one standard deviation up while success goes one down: against their correlation
            values = {"quality_score.mean": 0.75, "success.mean": 0.87}
        window = WindowClosed(pipeline="p", key="g/v", start=60.0 * i, end=60.0 * (i + 1), count=10, values=values)
        out += [e for e in fold(handler, state, window) if type(e).__name__ == "AnomalyDetected"]
    assert [(e.metric, e.detector, e.start) for e in out] == [
        ("quality_score.mean+success.mean", "mahalanobis", 3000.0)
    ]
    assert out[0].score > out[0].threshold and out[0].baseline["count"] == 50.0


def test_a_breach_can_start_an_ab_test_over_the_variants_seen() -> None:
    pipeline = WindowPipeline(
        "quality", Tumbling(60.0), Aggregates({"quality_score": ("mean",)}), key=("prompt_id", "variant_id")
    )
    detection = DetectionHandler(DetectionOptions(ab_test_on_breach=True, drift=[], forecast=[]))
    with Engine.open(":memory:", seed=2, handlers=[ExperimentHandler(), WindowHandler(pipeline), detection]) as engine:
        for minute in range(12):
            for variant in ("v1", "v2"):
                quality = 0.3 if variant == "v2" and minute >= 10 else 0.8
                engine.publish(
                    Feedback(
                        prompt_id="g", variant_id=variant, response_time_ms=90.0, success=True, quality_score=quality
                    ),
                    time=minute * 60.0 + 5.0,
                )
        [defined] = [e for e in engine.read(types=["ExperimentDefined"])]
        assert (defined.payload.experiment, defined.payload.arms, defined.time) == ("g-ab-1", ["v1", "v2"], 665.0)
        assert engine.state("experiments", "g-ab-1").status == "running"
        assert engine.decide("g-ab-1", unit="user-1", time=700.0).payload.arm in ("v1", "v2")


def test_a_failing_success_rate_can_start_a_bayesian_study_that_replays(tmp_path: Path) -> None:
    from rtopt.handlers.bayesopt import BayesOptHandler

    pipeline = WindowPipeline(
        "success", Tumbling(60.0), Aggregates({"success": ("mean",)}), key=("prompt_id", "variant_id")
    )
    space = {"temperature": (0.0, 1.5), "top_p": (0.5, 1.0)}
    path = tmp_path / "study.sqlite"

    def chains() -> list:
        options = DetectionOptions(study_on_breach=space, drift=[], forecast=[], anomaly="none")
        return [WindowHandler(pipeline), DetectionHandler(options), BayesOptHandler()]

    with Engine.open(path, seed=2, handlers=chains()) as engine:
        for minute in range(12):
            for variant in ("v1", "v2"):
                ok = not (variant == "v2" and minute >= 10)  # v2 starts failing at minute 10
                engine.publish(
                    Feedback(prompt_id="g", variant_id=variant, response_time_ms=90.0, success=ok, quality_score=0.8),
                    time=minute * 60.0 + 5.0,
                )
        [defined] = list(engine.read(types=["StudyDefined"]))
        [breach] = list(engine.read(types=["ThresholdBreached"]))
        assert (breach.payload.metric, breach.payload.key) == ("success.mean", "g/v2")
        assert defined.causation_id == breach.causation_id  # both derived from the window that broke the limit
        assert defined.payload.study == "g-study-1" and set(defined.payload.space) == set(space)
        [suggestion] = engine.suggest("g-study-1", time=700.0)
        assert 0.0 <= suggestion.payload.params["temperature"] <= 1.5
        assert 0.5 <= suggestion.payload.params["top_p"] <= 1.0
        engine.tell(suggestion.id, 0.9, time=710.0)
    assert Engine.verify(path, handlers=chains()).ok


def test_a_drift_for_the_worse_is_an_event_and_a_discount_that_the_cooldown_holds_back_once() -> None:
    response, state = Response(DetectionOptions(cooldown_s=600.0)), DetectionState()
    window = WindowClosed(pipeline="p", key="g/v", start=600.0, end=660.0, count=10, values={"quality_score.mean": 0.4})

    def drift(metric: str, direction: str) -> Drift:
        return Drift(metric, 11, "cusum", direction, 600.0, {"statistic": 9.0}, 0.9999)

    first = response.drift(state, Alert(), window, drift("quality_score.mean", "down"), now=660.0)
    assert [type(e).__name__ for e in first] == ["DriftDetected", "OptimizationAction", "EvidenceDiscounted"]
    assert (first[0].change_point, first[1].target, first[2].experiment) == (600.0, "g", "g")
    again = response.drift(state, Alert(), window, drift("success.mean", "down"), now=700.0)
    assert [type(e).__name__ for e in again] == ["DriftDetected"] and state.suppressed_actions == 1
    better = response.drift(state, Alert(), window, drift("quality_score.mean", "up"), now=2000.0)
    assert [type(e).__name__ for e in better] == ["DriftDetected"]

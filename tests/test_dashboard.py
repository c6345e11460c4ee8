"""The dashboard object without a browser: sections appear with their events, history and what-if fill in."""

from __future__ import annotations

from pathlib import Path

import pytest
from bokeh.models import GlyphRenderer, Plot
from conftest import simulate_into, write_monitored_log

from apps.data import (
    AlertFeed,
    ArmPosteriors,
    Detections,
    ExperimentTests,
    FeedbackMetrics,
    Forecasts,
    LogTail,
    Responses,
    Studies,
)
from apps.ui import Dashboard
from handlers.bandits.simulation import default_variants, simulate
from rtopt import Engine


def test_sections_appear_once_their_events_exist_and_follow_the_log(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    page = Dashboard(LogTail(path))
    assert not any(slot.visible for slot in page.slots)
    assert 'id="events-seen">0<' in page.status.object
    with Engine.open(path, seed=2) as engine:
        simulate(engine, 120, default_variants(3, seed=2), seed=2)
        page.refresh()
        views = page.tail.model.views
        visible = {type(view) for view, slot in zip(views, page.slots, strict=True) if slot.visible}
        assert FeedbackMetrics in visible and ArmPosteriors in visible
        first = engine.position
        assert f'id="events-seen">{first:,}<' in page.status.object
        assert page.history is not None and page.history.slider.end == first
        simulate(engine, 60, default_variants(3, seed=2), seed=2, experiment="other")
        page.refresh()
        assert f'id="events-seen">{engine.position:,}<' in page.status.object
        assert page.history.slider.value == page.history.slider.end == engine.position
        assert page.history.experiment.options == ["greeting", "other"]
    page.tail.close()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "recorded.sqlite"
    simulate_into(path, steps=300, seed=4, variants=3)
    return path


def test_history_shows_the_state_at_a_past_seq_and_what_if_the_estimates(recorded: Path) -> None:
    page = Dashboard(LogTail(recorded))
    assert page.history is not None
    page.history.show_past(100)
    assert page.history.past.objects[0].object.startswith("State at seq 100")
    arms = page.history.past.objects[1].object
    assert arms["pulls"].sum() == sum(1 for _ in page.tail.engine.read(types=["Decision"], until=100))
    page.history.show_estimates("greeting")
    estimates = page.history.estimates.objects[0][1].object
    assert estimates["policy"].tolist() == ["logged", "uniform", "always:v1", "always:v2", "always:v3"]
    page.tail.close()


def test_every_section_of_an_ab_test_renders(tmp_path: Path) -> None:
    path = tmp_path / "ab.sqlite"
    with Engine.open(path, seed=7) as engine:
        simulate(engine, 1000, default_variants(4, seed=7), seed=7, policy="ab_test")
    page = Dashboard(LogTail(path))
    views = page.tail.model.views
    visible = {type(view) for view, slot in zip(views, page.slots, strict=True) if slot.visible}
    assert {ExperimentTests, AlertFeed} <= visible
    page.panel.get_root()  # builds every Bokeh model the browser would receive
    feed = page.tail.model.view(AlertFeed).frame()
    assert feed["type"].iloc[0] == "ExperimentPaused" and "guardrail" in feed["what"].iloc[0]
    page.tail.close()


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "monitored.sqlite"
    write_monitored_log(path)
    return path


def test_every_section_of_a_detection_log_renders(monitored: Path) -> None:
    page = Dashboard(LogTail(monitored))
    views = page.tail.model.views
    visible = {type(view) for view, slot in zip(views, page.slots, strict=True) if slot.visible}
    assert {Detections, Responses, Forecasts, AlertFeed} <= visible
    detections = page.tail.model.view(Detections)
    assert "DriftDetected" in set(detections.frame()["type"])
    assert "strategy_change" in set(detections.recommendations_frame()["action"])
    assert "FeedbackFlagged" in set(page.tail.model.view(AlertFeed).frame()["type"])
    root = page.panel.get_root()  # builds every Bokeh model the browser would receive
    [forecast] = [plot for plot in root.select({"type": Plot}) if plot.title.text.startswith("forecast")]
    glyphs = [type(renderer.glyph).__name__ for renderer in forecast.select({"type": GlyphRenderer})]
    series = len(page.tail.model.view(Forecasts).errors_frame())
    assert series >= 1 and sorted(glyphs) == ["Line"] * 2 * series + ["Patch"] * series  # interval, forecast, actual
    for index, view in enumerate(views):
        if isinstance(view, (Detections, Responses)):
            for section in page.sections[index]:
                assert section.rows is not None and len(section.rows.object) > 0
    page.tail.close()


def test_the_sections_of_a_study_render(monitored: Path) -> None:
    page = Dashboard(LogTail(monitored))
    views = page.tail.model.views
    assert Studies in {type(view) for view, slot in zip(views, page.slots, strict=True) if slot.visible}
    studies = page.tail.model.view(Studies)
    assert studies.frame()["iteration"].tolist() == list(range(1, 9))
    assert studies.status_frame()["status"].tolist() == ["completed: 8 evaluations"]
    suggestions = studies.suggestions_frame()
    assert len(suggestions) == 8 and suggestions["mean"].notna().iloc[0]  # the last ones were guided by the model
    root = page.panel.get_root()
    [plot] = [plot for plot in root.select({"type": Plot}) if plot.title.text.startswith("best value so far")]
    assert sorted(type(renderer.glyph).__name__ for renderer in plot.select({"type": GlyphRenderer})) == [
        "Line",
        "Scatter",
    ]
    page.tail.close()

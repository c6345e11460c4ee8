"""The dashboard object without a browser: sections appear with their events, history and what-if fill in;
the served dashboard answers only its own host names and, with a token, only requests carrying it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import rtopt.apps.ui
from bokeh.models import GlyphRenderer, Plot
from conftest import free_port, simulate_into
from rtopt.apps.access import COOKIE, Access, new_token
from rtopt.apps.ui import Dashboard, dashboard_server
from rtopt.apps.views.decisions import ArmPosteriors, ExperimentTests
from rtopt.apps.views.detection import Detections, Forecasts, Responses
from rtopt.apps.views.overview import AlertFeed, FeedbackMetrics
from rtopt.apps.views.sources import LogTail
from rtopt.apps.views.studies import Studies
from rtopt.handlers.bandits.simulation import default_variants, simulate

from rtopt import Engine, RtoptError
from rtopt.cli import main


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
    feed = page.tail.model.frame(AlertFeed)
    assert feed["type"].iloc[0] == "ExperimentPaused" and "guardrail" in feed["what"].iloc[0]
    page.tail.close()


def test_every_section_of_a_detection_log_renders(monitored: Path) -> None:
    page = Dashboard(LogTail(monitored))
    views = page.tail.model.views
    visible = {type(view) for view, slot in zip(views, page.slots, strict=True) if slot.visible}
    assert {Detections, Responses, Forecasts, AlertFeed} <= visible
    tables = page.tail.model.frames()
    assert "DriftDetected" in set(tables["Detections"]["type"])
    assert "strategy_change" in set(tables["Recommendations"]["action"])
    assert "FeedbackFlagged" in set(page.tail.model.frame(AlertFeed)["type"])
    root = page.panel.get_root()  # builds every Bokeh model the browser would receive
    [forecast] = [plot for plot in root.select({"type": Plot}) if plot.title.text.startswith("forecast")]
    glyphs = [type(renderer.glyph).__name__ for renderer in forecast.select({"type": GlyphRenderer})]
    series = len(tables["ForecastErrors"])
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
    tables = page.tail.model.frames()
    assert tables["Studies"]["iteration"].tolist() == list(range(1, 9))
    assert tables["StudyStatus"]["status"].tolist() == ["completed: 8 evaluations"]
    suggestions = tables["Suggestions"]
    assert len(suggestions) == 8 and suggestions["mean"].notna().iloc[0]  # the last ones were guided by the model
    root = page.panel.get_root()
    [plot] = [plot for plot in root.select({"type": Plot}) if plot.title.text.startswith("best value so far")]
    assert sorted(type(renderer.glyph).__name__ for renderer in plot.select({"type": GlyphRenderer})) == [
        "Line",
        "Scatter",
    ]
    page.tail.close()


# --- the served dashboard: who may open it --------------------------------------------------------------


@contextlib.contextmanager
def serving(log: Path, access: Access, port: int) -> Iterator[str]:
    """The dashboard of ``log`` served by this process on 127.0.0.1:``port`` with ``access``, at the URL given
    once it answers."""
    servers: list[Any] = []

    def run() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        server = dashboard_server(log, port=port, access=access, period_ms=60_000)
        servers.append(server)
        server.start()
        server.io_loop.start()
        server.stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while status(url) is None:
        assert thread.is_alive() and time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.05)
    try:
        yield url
    finally:
        servers[0].io_loop.add_callback(servers[0].io_loop.stop)
        thread.join(timeout=30)


def status(url: str, opener: urllib.request.OpenerDirector | None = None, **headers: str) -> int | None:
    """The HTTP status of a GET of ``url`` (None if nothing answers)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code
    except (urllib.error.URLError, ConnectionError):
        return None


def websocket_upgrade(url: str, **headers: str) -> int:
    """The status of a websocket handshake on the Bokeh endpoint of ``url``."""
    host, port = url.split("/")[2].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
        "Sec-WebSocket-Version": "13",
        "Origin": f"http://{host}:{port}",
    }
    connection.request("GET", "/ws", headers=handshake | headers)
    code = connection.getresponse().status
    connection.close()
    return code


@pytest.mark.slow
def test_with_a_token_only_requests_carrying_it_are_served(recorded: Path) -> None:
    token, port = new_token(), free_port()
    with serving(recorded, Access.serving("127.0.0.1", port, token), port) as url:
        resource = f"{url}static/js/bokeh.min.js"
        assert status(url) == 401
        assert status(resource) == 401
        assert websocket_upgrade(url) == 401
        assert status(url, Authorization=f"Bearer {token[:-1]}x") == 401
        assert status(url, Authorization=f"Bearer {token}") == 200
        assert status(resource, Authorization=f"Bearer {token}") == 200
        basic = base64.b64encode(f"anyone:{token}".encode()).decode()
        assert status(url, Authorization=f"Basic {basic}") == 200
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})) as page:
            assert b"<title>rtopt dashboard</title>" in page.read()

        # a browser opens the address with the token once; the cookie it gets carries the token afterwards
        cookies = CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
        assert status(f"{url}?token=wrong", browser) == 401 and not list(cookies)
        assert status(f"{url}?token={token}", browser) == 200
        assert [(cookie.name, cookie.value) for cookie in cookies] == [(COOKIE, token)]
        assert status(resource, browser) == 200
        assert websocket_upgrade(url, Cookie=f"{COOKIE}={token}") == 101  # switching protocols


@pytest.mark.slow
def test_a_request_for_a_host_it_does_not_serve_is_refused(recorded: Path) -> None:
    port = free_port()
    with serving(recorded, Access.serving("127.0.0.1", port), port) as url:
        assert status(url) == 200  # this machine only: no token asked
        assert status(url, Host=f"localhost:{port}") == 200
        assert status(url, Host=f"rebound.example:{port}") == 403  # a DNS-rebinding page names its own host
        assert status(url, Host=f"127.0.0.1:{port + 1}") == 403
        assert websocket_upgrade(url, Host=f"rebound.example:{port}") == 403
        assert websocket_upgrade(url, Origin="http://elsewhere.example") == 403  # a page of another site


def test_served_from_python_beyond_this_machine_the_dashboard_asks_for_a_token(recorded: Path) -> None:
    with pytest.raises(RtoptError, match="serves beyond this machine"):
        dashboard_server(recorded, address="0.0.0.0", port=free_port())  # refused before it binds


@pytest.fixture
def served_with(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``rtopt dashboard`` asks apps.ui.serve for, without binding any address."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(rtopt.apps.ui, "serve", lambda log, **options: calls.append({"log": log, **options}))
    return calls


def test_the_dashboard_serves_this_machine_only_by_default(
    served_with: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboard", str(tmp_path / "log.sqlite")]) == 0
    [call] = served_with
    assert call["address"] == "127.0.0.1" and call["access"].token is None
    assert call["access"].allows_host("127.0.0.1:5006") and not call["access"].allows_host("example.org:5006")
    assert "warning" not in capsys.readouterr().err


def test_beyond_this_machine_the_dashboard_refuses_to_start_without_a_token(
    served_with: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for address in ("0.0.0.0", "::", "192.0.2.10"):
        with pytest.raises(SystemExit) as exited:
            main(["dashboard", str(tmp_path / "log.sqlite"), "--address", address])
        assert exited.value.code == 2
        error = capsys.readouterr().err
        assert f"argument --address: {address}: serves beyond this machine" in error and "--token-file" in error
    assert served_with == []


def test_beyond_this_machine_the_dashboard_warns_and_asks_for_the_token(
    served_with: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret-0123456789abcdef\n")
    log = str(tmp_path / "log.sqlite")
    assert main(["dashboard", log, "--address", "0.0.0.0", "--token-file", str(token_file)]) == 0
    output = capsys.readouterr()
    assert "warning: serving" in output.err and "beyond this machine, on 0.0.0.0:5006" in output.err
    assert "s3cret" not in output.out + output.err  # the file's token is never printed
    assert served_with[-1]["address"] == "0.0.0.0" and served_with[-1]["access"].token == "s3cret-0123456789abcdef"

    assert main(["dashboard", log, "--address", "0.0.0.0", "--generate-token", "--port", "8111"]) == 0
    output = capsys.readouterr()
    generated = served_with[-1]["access"].token
    assert len(generated) >= 32 and output.out.count(generated) == 1 and f":8111/?token={generated}" in output.out
    assert "warning: serving" in output.err

    assert main(["dashboard", log, "--token-file", str(token_file)]) == 0  # a token on this machine too
    assert served_with[-1]["access"].token == "s3cret-0123456789abcdef"
    assert "warning" not in capsys.readouterr().err

    token_file.write_text("short")
    with pytest.raises(SystemExit) as exited:
        main(["dashboard", log, "--address", "0.0.0.0", "--token-file", str(token_file)])
    assert exited.value.code == 2 and f"argument --token-file: {token_file}: must hold" in capsys.readouterr().err
    assert len(served_with) == 3


def test_a_port_already_taken_is_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(tmp_path / "log.sqlite"), "--port", str(port)]) == 2
    assert f"rtopt dashboard: cannot listen on 127.0.0.1:{port}: " in capsys.readouterr().err

"""The served dashboard in headless Chromium: it loads offline without console errors, draws its plots and
counts the events of a log while a simulation writes it; on a log with studies, detections and forecasts
their sections render too."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from conftest import free_port, write_monitored_log
from rtopt.handlers.bandits.simulation import default_variants, simulate

from rtopt import Engine

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str:
    """The system's Chromium; outside CI a machine without it skips the test."""
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def wait_until_served(
    url: str, server: subprocess.Popen[bytes], timeout: float = 90.0, headers: dict[str, str] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the dashboard exited"
        try:
            request = urllib.request.Request(url, headers=headers or {})
            # the first page can take seconds on a loaded machine: a slow answer is waited for, not given up on
            with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@contextlib.contextmanager
def serving(log: Path, token_file: Path | None = None) -> Iterator[str]:
    """The dashboard of ``log`` on a free port (asking for the token in ``token_file`` if given), at the URL
    given; the server must not print a traceback."""
    port = free_port()
    command = [sys.executable, "-m", "rtopt", "dashboard", str(log), "--port", str(port), "--refresh", "0.25"]
    headers = {}
    if token_file is not None:
        command += ["--token-file", str(token_file)]
        headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
    server = subprocess.Popen(command, cwd=log.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_served(url, server, headers=headers)
        yield url
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=30)
    assert b"Traceback" not in errors, errors.decode()


@contextlib.contextmanager
def browsing(profile: Path) -> Iterator[tuple[Page, list[tuple[str, str]], list[str]]]:
    """A page of headless Chromium, with the console messages and page errors it logs and the URLs it asks for."""
    from playwright.sync_api import sync_playwright

    messages: list[tuple[str, str]] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=chromium(),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.on("console", lambda message: messages.append((message.type, message.text)))
            page.on("pageerror", lambda error: messages.append(("pageerror", str(error))))
            page.on("request", lambda request: requested.append(request.url))
            page.on("websocket", lambda socket: requested.append(socket.url))
            yield page, messages, requested
        finally:
            browser.close()


def errors_in(messages: list[tuple[str, str]]) -> list[str]:
    return [text for kind, text in messages if kind in ("error", "pageerror")]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A dashboard on a free port over a log that does not exist yet."""
    log = tmp_path / "live.sqlite"
    with serving(log) as url:
        yield url, log


def test_the_dashboard_counts_a_live_simulation_in_a_browser(served: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, log = served
    with browsing(tmp_path / "profile") as (page, messages, requested):
        page.goto(url)
        seen = page.locator("#events-seen")
        expect(seen).to_have_text("0", timeout=30_000)

        # a simulation writes the log in three parts from this process; after each, the page catches up
        counts_while_writing = []
        with Engine.open(log, seed=5) as engine:
            for part in range(1, 4):
                simulate(engine, 1500, default_variants(4, 5), 5, experiment=f"greeting-{part}")
                expect(seen).to_have_text(f"{engine.position:,}", timeout=30_000)
                counts_while_writing.append(engine.position)
        assert counts_while_writing == sorted(set(counts_while_writing)) and counts_while_writing[0] > 0

        expect(page.get_by_text("Feedback metrics per variant")).to_be_visible()
        expect(page.get_by_text("Arms: posterior means and 95 % intervals")).to_be_visible()
        plots = page.locator(".bk-Canvas")
        expect(plots.first).to_be_visible()
        assert plots.count() >= 9  # rate, six feedback metrics, allocation, arm intervals
        assert page.locator("canvas").count() >= plots.count()

        page.get_by_role("button", name="estimate other policies").click()
        expect(page.get_by_text("always:v1").first).to_be_visible(timeout=30_000)

        shot = page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard.png").write_bytes(shot)

    assert errors_in(messages) == []
    assert any(address.startswith("ws://") for address in requested)
    hosts = {urlsplit(address).netloc for address in requested if not address.startswith(("data:", "blob:"))}
    assert hosts == {urlsplit(url).netloc}


def test_the_studies_detections_and_forecasts_render_in_a_browser(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    log = tmp_path / "monitored.sqlite"
    write_monitored_log(log)
    with Engine.open(log, read_only=True, handlers=[]) as engine:
        last = engine.position
    with serving(log) as url, browsing(tmp_path / "profile") as (page, messages, _):
        page.goto(url)
        expect(page.locator("#events-seen")).to_have_text(f"{last:,}", timeout=30_000)
        for title in (
            "Bayesian studies: best value over iterations",
            "Suggestions",
            "Detections: drift, anomalies, patterns, thresholds",
            "Recommendations of the patterns",
            "Actions taken",
            "Forecasts against actual values",
        ):
            expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
        expect(page.get_by_text("strategy_change").first).to_be_visible()
        expect(page.get_by_text("completed: 8 evaluations")).to_be_visible()
        plots = page.locator(".bk-Canvas")
        expect(plots.first).to_be_visible()
        assert plots.count() >= 11  # rate, six feedback metrics, allocation, arm intervals, study, forecast
        shot = page.screenshot(path=tmp_path / "monitored.png", full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard-monitored.png").write_bytes(shot)
    assert errors_in(messages) == []


def test_with_a_token_the_browser_gets_in_through_the_address_that_carries_it(tmp_path: Path) -> None:
    from playwright.sync_api import expect

    log = tmp_path / "log.sqlite"
    with Engine.open(log, seed=3) as engine:
        simulate(engine, 300, default_variants(3, 3), 3)
        last = engine.position
    token = "a-token-of-the-test-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token)
    with serving(log, token_file) as url, browsing(tmp_path / "profile") as (page, messages, requested):
        assert page.request.get(url).status == 401  # (a page would ask for the token as a password)
        page.goto(f"{url}?token={token}")
        expect(page.locator("#events-seen")).to_have_text(f"{last:,}", timeout=30_000)
        assert page.url == url  # the token left the address bar; a cookie carries it
        expect(page.locator(".bk-Canvas").first).to_be_visible()
    assert errors_in(messages) == []
    assert any(address.startswith("ws://") for address in requested)

"""The dashboard in a real browser (headless Chromium) against a live Daphne server.

Channels' live-server test case runs Daphne in another process on the test database, so the
HTTP API and the WebSocket route are real: runs are created over HTTP and a worker subscribes
over WebSocket while the page, never reloaded, shows the numbers and the chart change.

The example project itself then runs as in production (``DJANGO_DEBUG=0``, its static files
collected and served by WhiteNoise) with a real worker: the admin is styled, the run list fits the
screen, and a cancel clicked on a run's page stops the run the worker is running.

Set ``TASKQUEUE_SCREENSHOT_DIR`` to also write ``dashboard.png`` (the README's screenshot) there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import SyncToAsync
from channels.testing import ChannelsLiveServerTestCase
from daphne.testing import DaphneProcess
from django.contrib.auth import get_user_model
from django.test import override_settings

from project.servers import production_server
from taskqueue_app import testing
from tests.worker_helpers import (
    WorkerProcess,
    api,
    create_run,
    wait_for_state,
    worker_env,
)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    SKIP_REASON = None
except ImportError:  # pragma: no cover - selenium is a test requirement
    SKIP_REASON = "selenium is not installed"

if SKIP_REASON is None and not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    SKIP_REASON = "no Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"

pytestmark = [
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
    pytest.mark.timeout(180),
]

DASHBOARD = "/admin/taskqueue_app/queuedashboard/"
RUNS = "/admin/taskqueue_app/taskrunrecord/"
SLOW = "tests.worker_tasks.slow"
WORKER_ID = "gpu-node-17.build.example.com-48213-5ebed3d4"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEYS = {
    "emails.send": {"scheduled_size": 50, "retry_size": 10},
    "reports.build": {"scheduled_size": 20, "retry_size": 5},
}
# Stale: the script redraws rows every second; missing: a row not drawn yet.
RETRY_ON = (StaleElementReferenceException, NoSuchElementException) if not SKIP_REASON else ()


def chrome(profile: str) -> webdriver.Chrome:
    """Headless Chromium, 1400 px wide, with a profile directory of its own."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def sign_in(driver: webdriver.Chrome, base_url: str, then: str = DASHBOARD) -> None:
    """Log in as admin/pw through the admin's own form, then wait for ``then``."""
    driver.get(f"{base_url}/admin/login/?next={then}")
    driver.find_element(By.ID, "id_username").send_keys("admin")
    driver.find_element(By.ID, "id_password").send_keys("pw")
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(driver, 10).until(lambda d: d.current_url.endswith(then), "login failed")


def chart(driver: webdriver.Chrome) -> dict[str, Any]:
    """What the chart's script drew: its data attributes and the y of each enqueued point
    (0 is the top, the SVG's height the zero line)."""
    return driver.execute_script(
        """
        const svg = document.getElementById("tq-chart");
        const line = svg.querySelector(".tq-line-enqueued").getAttribute("points").trim();
        const points = line ? line.split(" ").map((p) => p.split(",").map(Number)) : [];
        return {
            points: Number(svg.dataset.points),
            peak_enqueued: Number(svg.dataset.peakEnqueued),
            height: svg.viewBox.baseVal.height,
            enqueued: points,
        };
        """
    )


def peak_x(drawn: dict[str, Any]) -> float:
    """Where the highest point of the enqueued line is drawn."""
    return min(drawn["enqueued"], key=lambda point: point[1])[0]


class ForkedDaphneProcess(DaphneProcess):
    """Daphne in a forked child, rid of what the fork copied but could not keep working.

    A fork copies executors without their threads: asgiref's single thread executor (every sync
    view runs there) would take work no thread ever picks up once an earlier test in this
    process used ``sync_to_async``, and the page would never load. The child makes its own.
    """

    def run(self) -> None:
        SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
        testing.reset()
        super().run()


@override_settings(TASKQUEUE={"KEYS": KEYS, "AUTH_TOKEN": None})
class DashboardInBrowserTest(ChannelsLiveServerTestCase):
    """Log in, watch the dashboard while runs arrive and a worker connects, lose the network."""

    host = "127.0.0.1"
    ProtocolServerProcess = ForkedDaphneProcess

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.profile = tempfile.mkdtemp(prefix="taskqueue-chromium-")
        try:
            cls.driver = chrome(cls.profile)
        except Exception:
            super().tearDownClass()
            shutil.rmtree(cls.profile, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.driver.quit()
        shutil.rmtree(cls.profile, ignore_errors=True)
        super().tearDownClass()

    @pytest.fixture(autouse=True)
    def _tmp_path(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path

    # -- helpers ----------------------------------------------------------------------------------

    def wait_for(self, condition, timeout: float = 10.0, message: str = ""):
        return WebDriverWait(self.driver, timeout, ignored_exceptions=RETRY_ON).until(
            condition, message
        )

    def text_of(self, selector: str) -> str:
        return self.driver.find_element(By.CSS_SELECTOR, selector).text

    def wait_for_text(self, selector: str, expected: str) -> None:
        self.wait_for(
            lambda d: self.text_of(selector) == expected,
            message=f"{selector} never read {expected!r}",
        )

    def create_runs(self, key: str, count: int) -> None:
        for _ in range(count):
            request = urllib.request.Request(
                f"{self.live_server_url}/api/task_runs/",
                data=json.dumps({"task_key": key}).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 201

    @contextmanager
    def subscribe(self, client_id: str, keys: list[str], prefetch: int = 1):
        """A worker's connection (legacy mode: no token is set), subscribed to ``keys``."""
        from websockets.sync.client import connect

        with connect(f"{self.live_server_ws_url}/api/task_runs/subscriptions/scheduled") as ws:
            message = {"type": "subscribe", "keys": keys, "client_id": client_id}
            ws.send(json.dumps({**message, "prefetch": prefetch}))
            yield ws

    def log_in(self) -> None:
        get_user_model().objects.create_superuser("admin", "admin@example.com", "pw")
        sign_in(self.driver, self.live_server_url)

    def save_screenshots(self, target: Path) -> None:
        """Screenshots for the docs in ``target``: light and dark, 1400 px wide and as tall as
        the page (keys, chart and workers)."""
        target.mkdir(parents=True, exist_ok=True)
        height = self.driver.execute_script("return document.documentElement.scrollHeight;")
        self.driver.set_window_size(1400, min(1400, height + 120))
        dark = [{"name": "prefers-color-scheme", "value": "dark"}]
        try:
            self.driver.save_screenshot(str(target / "dashboard.png"))
            self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": dark})
            self.driver.save_screenshot(str(target / "dashboard-dark.png"))
        finally:
            self.driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
            self.driver.set_window_size(1400, 1000)

    def status(self) -> str:
        return self.driver.find_element(By.ID, "tq-status").get_attribute("data-state")

    # -- the test ---------------------------------------------------------------------------------

    def test_dashboard_is_live(self) -> None:
        self.log_in()
        self.wait_for(lambda d: self.status() == "live", message="the page never went live")
        emails = 'tr[data-key="emails.send"]'
        # Configured keys are listed before any run exists.
        self.assertEqual(self.text_of(f"{emails} .tq-scheduled .tq-count"), "0 / 50")
        self.assertEqual(self.text_of(f"{emails} .tq-bounds"), "configured")
        # A marker on the window survives only if the page is never reloaded.
        self.driver.execute_script("window.tqNotReloaded = true;")
        # The chart draws a point per poll; nothing was enqueued yet, so all at zero.
        self.wait_for(lambda d: chart(d)["points"] >= 2, message="the chart drew no points")
        quiet = chart(self.driver)
        self.assertEqual(quiet["peak_enqueued"], 0)
        self.assertTrue(all(y == quiet["height"] for _, y in quiet["enqueued"]), quiet)

        self.create_runs("emails.send", 42)
        self.wait_for_text(f"{emails} .tq-scheduled .tq-count", "42 / 50")
        # The runs just enqueued lift the enqueued line off zero...
        self.wait_for(lambda d: chart(d)["peak_enqueued"] > 0, message="the chart did not move")
        drawn = chart(self.driver)
        self.assertLess(min(y for _, y in drawn["enqueued"]), drawn["height"])
        # ...and, as later polls come in, the peak slides left (older) while points are added.
        self.wait_for(
            lambda d: peak_x(chart(d)) < peak_x(drawn) and chart(d)["points"] > drawn["points"],
            message="the chart did not scroll",
        )
        # Runs wait and no worker serves the key: the row says so.
        self.wait_for(
            lambda d: (
                "tq-unserved"
                in (d.find_element(By.CSS_SELECTOR, emails).get_attribute("class") or "")
            ),
            message="emails.send was not marked as having no worker",
        )
        self.assertIn("no worker", self.text_of(f"{emails} .tq-workers").lower())
        bar = self.driver.find_element(By.CSS_SELECTOR, f"{emails} .tq-scheduled .tq-bar")
        self.assertEqual(bar.get_attribute("title"), "scheduled: 42 of 50 (84%)")
        self.assertIn("tq-high", bar.get_attribute("class"))
        self.create_runs("reports.build", 12)
        self.create_runs("images.resize", 4)
        self.wait_for_text('tr[data-key="images.resize"] .tq-scheduled .tq-count', "4 / 1000")
        self.wait_for_text('[data-total="keys"]', "3")

        # A worker connects and takes one run: it appears, holding it, and the queue shrinks.
        with self.subscribe("gpu-worker-1", ["images.resize", "emails.send"]) as worker:
            first = json.loads(worker.recv(timeout=10))
            self.assertEqual(first["task_key"], "images.resize")
            # Another takes five runs and vanishes without acking: they go to the retry lane.
            with self.subscribe("reports-worker", ["reports.build"], prefetch=5) as leaver:
                for _ in range(5):
                    run = json.loads(leaver.recv(timeout=10))
                    self.assertEqual(run["task_key"], "reports.build")
            gpu = 'tr[data-worker="gpu-worker-1"]'
            self.wait_for_text(f"{gpu} .tq-held", "1")
            # Sent to the worker, not started: waiting in its hands, not running.
            images = 'tr[data-key="images.resize"]'
            self.wait_for_text(f"{images} .tq-waiting", "1")
            self.assertEqual(self.text_of(f"{images} .tq-running"), "0")
            # A worker serves emails.send now: its mark goes.
            self.wait_for(
                lambda d: not d.find_elements(By.CSS_SELECTOR, f"{emails}.tq-unserved"),
                message="emails.send stayed marked while a worker serves it",
            )
            self.assertEqual(self.text_of(f"{gpu} .tq-keys"), "images.resize, emails.send")
            self.wait_for_text('tr[data-key="images.resize"] .tq-scheduled .tq-count', "3 / 1000")
            self.wait_for_text('tr[data-key="images.resize"] .tq-workers', "1")
            reports = 'tr[data-key="reports.build"]'
            self.wait_for_text(f"{reports} .tq-retry .tq-count", "5 / 5")
            self.wait_for_text(f"{reports} .tq-scheduled .tq-count", "7 / 20")
            full = self.driver.find_element(By.CSS_SELECTOR, f"{reports} .tq-retry .tq-bar")
            self.assertIn("tq-full", full.get_attribute("class"))
            gone = 'tr[data-worker="reports-worker"]'
            self.wait_for(lambda d: not d.find_elements(By.CSS_SELECTOR, gone), message=gone)
            self.assertTrue(self.driver.execute_script("return window.tqNotReloaded === true;"))

            path = self.tmp_path / "dashboard.png"
            self.assertTrue(self.driver.save_screenshot(str(path)))
            data = path.read_bytes()
            self.assertTrue(data.startswith(PNG_SIGNATURE))
            self.assertGreater(len(data), 10_000)

        # The worker leaves: its row goes and its run returns to the queue's retry lane.
        self.wait_for_text("#tq-workers tbody", "No worker is connected.")
        self.wait_for_text('tr[data-key="images.resize"] .tq-retry .tq-count', "1 / 100")

        # The network drops: the page says so, keeps the last numbers, and recovers.
        self.driver.set_network_conditions(
            offline=True, latency=0, download_throughput=0, upload_throughput=0
        )
        self.wait_for(lambda d: self.status() == "lost", message="the drop was not shown")
        self.assertIn("Connection to the server lost", self.text_of("#tq-status"))
        self.assertEqual(self.text_of(f"{emails} .tq-scheduled .tq-count"), "42 / 50")
        self.driver.delete_network_conditions()
        self.wait_for(lambda d: self.status() == "live", message="the page did not recover")
        self.assertIn("Live", self.text_of("#tq-status"))
        self.assertTrue(self.driver.execute_script("return window.tqNotReloaded === true;"))

        target = os.environ.get("TASKQUEUE_SCREENSHOT_DIR")
        if target:
            self.screenshot_session(Path(target))

    def screenshot_session(self, target: Path, seconds: float = 45.0) -> None:
        """The docs' screenshots after a stretch of steady traffic: a real worker serves two of
        the keys while runs keep arriving, so that the chart shows both lines."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        args = [
            sys.executable,
            "-m",
            "taskqueue_app.worker",
            "--url",
            self.live_server_url + "/api",
        ]
        args += ["--limit", "4", "--client-id", "render-01-48213-5ebed3d4"]
        echo = "tests.worker_tasks.echo"
        keys = [f"emails.send={echo}", f"images.resize={echo}"]
        worker = WorkerProcess([*args, *keys], env)
        try:
            worker.wait_for("connected to ")
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                # A rate that rises and falls, a few runs a second.
                self.create_runs("emails.send", 1 + round(3 * abs(math.sin(elapsed / 8))))
                self.create_runs("images.resize", 1)
                time.sleep(0.25)  # pacing the traffic, not waiting for anything
            self.wait_for(lambda d: chart(d)["points"] > seconds / 2, message="too few points")
            self.save_screenshots(target)
        finally:
            worker.stop()


# -- the example project as in production, with a real worker --------------------------------------


@pytest.fixture(scope="module")
def production():
    """The project with DJANGO_DEBUG=0 (WhiteNoise serves what collectstatic gathered into a
    STATIC_ROOT of its own), a superuser in its database."""
    with production_server() as server:
        yield server


@pytest.fixture(scope="module")
def browser(production):
    """A browser signed in to the production server's admin."""
    profile = tempfile.mkdtemp(prefix="taskqueue-chromium-")
    driver = chrome(profile)
    try:
        sign_in(driver, production.url)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def worker(production):
    """``python -m taskqueue_app.worker`` serving the slow task, one run at a time, under a long
    client id (a host name and a pid), as a fleet's workers are named."""
    env = worker_env(production)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    args = [sys.executable, "-m", "taskqueue_app.worker", "--url", production.api_url]
    process = WorkerProcess([*args, "--limit", "1", "--client-id", WORKER_ID, SLOW], env)
    try:
        process.wait_for("connected to ")
        yield process
    finally:
        process.stop()


def computed(driver, selector: str, prop: str) -> str:
    script = "return getComputedStyle(document.querySelector(arguments[0]))[arguments[1]];"
    return driver.execute_script(script, selector, prop)


def wait(driver, condition, message: str, timeout: float = 15.0):
    return WebDriverWait(driver, timeout, ignored_exceptions=RETRY_ON).until(condition, message)


def test_the_admin_is_styled_with_debug_off(production, browser):
    for path in (DASHBOARD, RUNS):
        browser.get(production.url + path)
        # Unstyled, the header is a transparent block: the admin's base.css makes it a coloured
        # flex box, and the app's own stylesheet lays out the dashboard's totals in a row.
        assert computed(browser, "#header", "backgroundColor") not in ("rgba(0, 0, 0, 0)", "")
        assert computed(browser, "#header", "display") == "flex", path
    browser.get(production.url + DASHBOARD)
    assert computed(browser, "#tq-totals", "display") == "flex"
    assert computed(browser, "svg.tq-chart", "borderTopStyle") == "solid"


def test_cancel_on_the_run_page_stops_the_run_in_the_worker(production, browser, worker):
    run = create_run(production, SLOW, "cancel-me", 60)
    worker.wait_for("slow-started cancel-me")
    wait_for_state(production, run["id"], "RUNNING")
    browser.get(f"{production.url}{RUNS}{run['id']}/change/")
    buttons = browser.find_elements(By.CSS_SELECTOR, ".object-tools button.tq-operate")
    assert [button.text for button in buttons] == ["CANCEL", "GIVE BACK"]
    buttons[0].click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".messagelist .success"), "no message")
    message = browser.find_element(By.CSS_SELECTOR, ".messagelist .success").text
    assert message.startswith("Cancelled 1 run (now Running (Cancelling): 1)."), message
    # The worker was told: it stops the run and reports it cancelled, and the API says so.
    worker.wait_for(f"run {SLOW} {run['id']} cancelled by the server")
    done = wait_for_state(production, run["id"], "CANCELLED")
    assert done["state_name"] == "Cancelled"
    # The run's page, read again, now offers to retry it.
    browser.refresh()
    labels = [b.text for b in browser.find_elements(By.CSS_SELECTOR, "button.tq-operate")]
    assert labels == ["RETRY"]


def test_the_run_list_fits_a_1400_px_screen(production, browser, worker):
    runs = [create_run(production, SLOW, f"wide-{i}", 30) for i in range(2)]
    worker.wait_for("slow-started wide-0")
    wait_for_state(production, runs[0]["id"], "RUNNING")
    browser.get(production.url + RUNS)
    assert browser.execute_script("return window.innerWidth;") <= 1400
    table = browser.find_element(By.ID, "result_list")
    width, room = browser.execute_script(
        "return [arguments[0].scrollWidth, arguments[0].parentElement.clientWidth];", table
    )
    assert width <= room, f"the list is {width} px wide in {room} px"
    cell = browser.find_element(By.CSS_SELECTOR, "#result_list td.field-worker_id .tq-worker")
    # Cut in the middle, whole in its title.
    assert cell.get_attribute("title") == WORKER_ID
    head, tail = cell.text.split("…")
    assert WORKER_ID.startswith(head) and WORKER_ID.endswith(tail) and len(cell.text) < 20
    # One line each: the worker id, the state and the times never wrap (an inline element broken
    # over lines has a box per line).
    lines = browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map((node) => node.getClientRects().length);",
        "#result_list .tq-worker, #result_list .tq-state, #result_list time",
    )
    assert lines and set(lines) == {1}, lines
    for run in runs:  # leave nothing running for the next test
        assert api(production, "POST", f"task_runs/{run['id']}/cancel")[0] == 200

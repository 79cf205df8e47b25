"""The dashboard in a real browser (headless Chromium) against a live Daphne server.

Channels' live-server test case runs Daphne in another process on the test database, so the
HTTP API and the WebSocket route are real: runs are created over HTTP and a worker subscribes
over WebSocket while the page, never reloaded, shows the numbers change.

Set ``TASKQUEUE_SCREENSHOT_DIR`` to also write ``dashboard.png`` (the README's screenshot) there.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from asgiref.sync import SyncToAsync
from channels.testing import ChannelsLiveServerTestCase
from daphne.testing import DaphneProcess
from django.contrib.auth import get_user_model
from django.test import override_settings

from taskqueue_app import testing

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
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEYS = {
    "emails.send": {"scheduled_size": 50, "retry_size": 10},
    "reports.build": {"scheduled_size": 20, "retry_size": 5},
}
# Stale: the script redraws rows every second; missing: a row not drawn yet.
RETRY_ON = (StaleElementReferenceException, NoSuchElementException) if not SKIP_REASON else ()


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
            f"--user-data-dir={cls.profile}",
        ):
            options.add_argument(flag)
        try:
            cls.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
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
        self.driver.get(f"{self.live_server_url}/admin/login/?next={DASHBOARD}")
        self.driver.find_element(By.ID, "id_username").send_keys("admin")
        self.driver.find_element(By.ID, "id_password").send_keys("pw")
        self.driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        self.wait_for(lambda d: d.current_url.endswith(DASHBOARD), message="login failed")

    def save_screenshots(self, target: Path) -> None:
        """Screenshots for the docs in ``target``: light and dark, cropped to the content."""
        target.mkdir(parents=True, exist_ok=True)
        self.driver.set_window_size(1400, 880)
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

        self.create_runs("emails.send", 42)
        self.wait_for_text(f"{emails} .tq-scheduled .tq-count", "42 / 50")
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
            target = os.environ.get("TASKQUEUE_SCREENSHOT_DIR")
            if target:
                self.save_screenshots(Path(target))

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

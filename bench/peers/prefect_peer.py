"""The Prefect peer of the end-to-end benchmark: a local Prefect server (SQLite), one task
worker (``serve``, limit 10) and a producer calling ``task.delay``, all in the Prefect venv."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import venvs

ROOT = Path(__file__).resolve().parent.parent.parent
REQUIREMENTS = ["prefect==3.9.*"]
START_TIMEOUT_S = 120


def _wait_healthy(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)  # waiting for another process to come up
    raise TimeoutError("the Prefect server did not become healthy")


def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure_prefect(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Prefect 3.9 background tasks; in quick mode only if its venv exists already."""
    from taskqueue_app.testing import free_port

    common.progress("end_to_end: Prefect venv (created on first use, full mode)")
    python = venvs.ensure(
        "prefect",
        REQUIREMENTS,
        "import prefect; assert prefect.__version__.startswith('3.9')",
        create=not config["quick"],
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    home = tmp / "prefect"
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "PYTHONPATH": str(ROOT),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": url,
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    server = worker = None
    try:
        with open(tmp / "prefect-server.log", "wb") as log:
            server = subprocess.Popen(
                [python, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
                + ["--port", str(port)],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _wait_healthy(url, server)
        with open(tmp / "prefect-worker.log", "wb") as log:
            worker = subprocess.Popen(
                [python, "-m", "bench.peers.prefect_run", "worker"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        common.progress(f"end_to_end: Prefect, {config['prefect_runs']} runs")
        driver = subprocess.run(
            [python, "-m", "bench.peers.prefect_run", "drive", json.dumps(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        for line in driver.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))
        tail = "\n".join(driver.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"the Prefect driver failed (exit {driver.returncode}):\n{tail}")
    finally:
        _stop(worker)
        _stop(server)

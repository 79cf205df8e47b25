"""The Celery peer of the end-to-end benchmark: Celery 5 with Redis as broker and result backend
(``redis-server`` started on a free loopback port), one worker process with a pool of threads,
driven by ``celery_run`` in the Celery venv."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import venvs

NAME = "end_to_end"
ROOT = Path(__file__).resolve().parent.parent.parent
CELERY_REQUIREMENTS = ["celery[redis]>=5.4,<6"]
DRIVER_TIMEOUT_S = 600


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Wait until ``process`` listens on ``port`` (it is another process: poll the socket)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} in {timeout}s")


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure_celery(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Celery 5 + Redis (broker and results), one worker process with 10 threads."""
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise venvs.PeerUnavailable("redis-server is not installed")
    common.progress(f"{NAME}: Celery venv (created on first use)")
    python = venvs.ensure("celery", CELERY_REQUIREMENTS, "import celery, redis")
    from taskqueue_app.testing import free_port

    port = free_port()
    env = {**os.environ, "BENCH_REDIS_URL": f"redis://127.0.0.1:{port}/0", "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    redis = worker = None
    try:
        redis = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(tmp)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(port, redis, "redis-server")
        with open(tmp / "celery-worker.log", "wb") as log:
            worker = subprocess.Popen(
                [python, "-m", "celery", "-A", "bench.peers.celery_app", "worker"]
                + ["--pool", "threads", "--concurrency", str(config["limit"])]
                + ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
                + ["--without-heartbeat"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        common.progress(f"{NAME}: Celery, paced phase and burst of {config['runs']:,}")
        driver = subprocess.run(
            [python, "-m", "bench.peers.celery_run", json.dumps(config)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
        )
        return _driver_result(driver, "Celery")
    finally:
        stop(worker)
        stop(redis)


def _driver_result(driver: subprocess.CompletedProcess, what: str) -> dict[str, Any]:
    for line in driver.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    tail = "\n".join((driver.stderr or "").strip().splitlines()[-15:])
    raise RuntimeError(f"the {what} driver failed (exit {driver.returncode}):\n{tail}")

"""The Celery peer: Celery 5 with Redis as broker and result backend (``redis-server`` started
on a free loopback port), one worker process with a pool of threads, driven by ``celery_run``
in the Celery venv. Its "server" is redis-server: the CPU and memory counted are that process's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import venvs
from bench.peers.redis_server import RedisServer, stop

ROOT = Path(__file__).resolve().parent.parent.parent
CELERY_REQUIREMENTS = ["celery[redis]>=5.4,<6"]
CELERY_PROBE = "import celery, redis"
DRIVER_TIMEOUT_S = 900


def celery_python() -> Path:
    """The Celery venv's interpreter, created on first use."""
    common.progress("Celery venv (created on first use)")
    return venvs.ensure("celery", CELERY_REQUIREMENTS, CELERY_PROBE)


def peer_env(redis_url: str) -> dict[str, str]:
    """The environment of a peer process: the bench importable, no Django settings."""
    env = {**os.environ, "BENCH_REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def drive(python: Path, module: str, args: list[str], env: dict, what: str) -> dict[str, Any]:
    """Run a driver module in a peer venv; the dict of its ``RESULT`` line."""
    done = subprocess.run(
        [python, "-m", module, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DRIVER_TIMEOUT_S,
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    tail = "\n".join((done.stderr or "").strip().splitlines()[-15:])
    raise RuntimeError(f"the {what} driver failed (exit {done.returncode}):\n{tail}")


def measure_celery(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Celery 5 + Redis (broker and results), one worker process with ``limit`` threads."""
    with RedisServer(tmp) as redis:
        python = celery_python()
        env = peer_env(redis.url)
        worker = None
        try:
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
            common.progress(
                f"end_to_end: Celery, paced phase and {config['repeats']} bursts of "
                f"{config['runs']:,}"
            )
            driver_config = {**config, "server_pids": [redis.pid]}
            return drive(
                python, "bench.peers.celery_run", ["e2e", json.dumps(driver_config)], env, "Celery"
            )
        finally:
            stop(worker)

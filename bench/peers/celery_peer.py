"""The Celery peer: Celery 5 with Redis as broker and result backend (``redis-server`` started
on a free loopback port), one worker process with a pool of threads, driven by ``celery_run``
in the Celery venv. Its "server" is redis-server: the CPU and memory counted are that process's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.peers.common import peer_python, redis_e2e

CELERY_REQUIREMENTS = ["celery[redis]>=5.4,<6"]
CELERY_PROBE = "import celery, redis"


def celery_python() -> Path:
    """The Celery venv's interpreter, created on first use."""
    return peer_python("Celery", CELERY_REQUIREMENTS, CELERY_PROBE)


def measure_celery(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Celery 5 + Redis (broker and results), one worker process with ``limit`` threads."""

    def worker(python: Path, redis_url: str) -> list[Any]:
        return (
            [python, "-m", "celery", "-A", "bench.peers.celery_app", "worker"]
            + ["--pool", "threads", "--concurrency", str(config["limit"])]
            + ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
            + ["--without-heartbeat"]
        )

    return redis_e2e("Celery", celery_python, worker, config, tmp)

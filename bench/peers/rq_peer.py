"""The RQ peer: RQ 2 on Redis (``redis-server`` on a free loopback port), one worker process of
RQ's non-forking ``SimpleWorker`` (one job at a time), driven by ``rq_run`` in the RQ venv. Its
"server" is redis-server: the CPU and memory counted are that process's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.peers.common import peer_python, redis_e2e

RQ_REQUIREMENTS = ["rq>=2,<3"]
RQ_PROBE = "import rq, redis"


def rq_python() -> Path:
    """The RQ venv's interpreter, created on first use."""
    return peer_python("RQ", RQ_REQUIREMENTS, RQ_PROBE)


def _worker(python: Path, redis_url: str) -> list[Any]:
    """RQ's non-forking ``SimpleWorker`` on the queue ``bench``."""
    return (
        [python.parent / "rq", "worker", "--url", redis_url]
        + ["--worker-class", "rq.worker.SimpleWorker"]
        + ["--logging_level", "WARNING", "--quiet", "bench"]
    )


def measure_rq(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """RQ with one ``SimpleWorker`` process on the queue ``bench``."""
    return redis_e2e("RQ", rq_python, _worker, config, tmp)

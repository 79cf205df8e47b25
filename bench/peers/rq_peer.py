"""The RQ peer: RQ 2 on Redis (``redis-server`` on a free loopback port), one worker process of
RQ's non-forking ``SimpleWorker`` (one job at a time), driven by ``rq_run`` in the RQ venv. Its
"server" is redis-server: the CPU and memory counted are that process's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import venvs
from bench.peers.celery_peer import ROOT, drive, peer_env
from bench.peers.redis_server import RedisServer, stop

RQ_REQUIREMENTS = ["rq>=2,<3"]
RQ_PROBE = "import rq, redis"


def rq_python() -> Path:
    """The RQ venv's interpreter, created on first use."""
    common.progress("RQ venv (created on first use)")
    return venvs.ensure("rq", RQ_REQUIREMENTS, RQ_PROBE)


def measure_rq(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """RQ with one ``SimpleWorker`` process on the queue ``bench``."""
    with RedisServer(tmp) as redis:
        python = rq_python()
        env = peer_env(redis.url)
        worker = None
        try:
            with open(tmp / "rq-worker.log", "wb") as log:
                worker = subprocess.Popen(
                    [python.parent / "rq", "worker", "--url", redis.url]
                    + ["--worker-class", "rq.worker.SimpleWorker"]
                    + ["--logging_level", "WARNING", "--quiet", "bench"],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            common.progress(
                f"end_to_end: RQ, paced phase and {config['repeats']} bursts of {config['runs']:,}"
            )
            driver_config = {**config, "server_pids": [redis.pid]}
            return drive(
                python, "bench.peers.rq_run", ["e2e", json.dumps(driver_config)], env, "RQ"
            )
        finally:
            stop(worker)

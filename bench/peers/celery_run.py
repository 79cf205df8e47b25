"""Drive the Celery peer (run in the Celery venv): warm up, paced phase, burst phase.

``python -m bench.peers.celery_run '{"runs": N, "paced_runs": M, "paced_rate": R, ...}'``
prints one ``RESULT {...}`` line.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime

from bench.peers import phases
from bench.peers.celery_app import noop

TIMEOUT_S = 300


def _done_at(result) -> float:
    """When the worker stored the result (the backend's ``date_done``), as a Unix time."""
    value = result.date_done
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _collect(handles: list) -> tuple[list[float], list[float]]:
    latencies = [handle.get(timeout=TIMEOUT_S) for handle in handles]
    return latencies, [_done_at(handle) for handle in handles]


def main() -> None:
    config = json.loads(sys.argv[1])

    def enqueue():
        return noop.delay(time.time())

    def enqueue_many(count: int) -> list:
        return [noop.delay(time.time()) for _ in range(count)]

    _collect(phases.paced(enqueue, config["warmup"], 500))  # also waits for the worker to be up
    paced, _ = _collect(phases.paced(enqueue, config["paced_runs"], config["paced_rate"]))
    started, handles = phases.burst(enqueue_many, config["runs"], config["producers"])
    latencies, finished = _collect(handles)
    phases.emit(
        {
            "paced": phases.summary(paced),
            "burst": phases.summary(latencies, started, finished),
        }
    )


if __name__ == "__main__":
    main()

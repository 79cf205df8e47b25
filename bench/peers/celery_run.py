"""Drive the Celery peer (run in the Celery venv).

``python -m bench.peers.celery_run e2e '{"runs": N, "paced_runs": M, ...}'``: warm up, paced
phase, repeated bursts; prints one ``RESULT {...}`` line.
``python -m bench.peers.celery_run fill N``: publish N runs (no worker is running) and print
``RESULT {"published": N}``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
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


def e2e(config: dict) -> None:
    def enqueue():
        return noop.delay(time.time())

    def enqueue_many(count: int) -> list:
        return [noop.delay(time.time()) for _ in range(count)]

    _collect(phases.paced(enqueue, config["warmup"], 500))  # also waits for the worker to be up
    paced, _ = _collect(phases.paced(enqueue, config["paced_runs"], config["paced_rate"]))
    burst = phases.bursts(enqueue_many, _collect, config, config["runs"])
    phases.emit({"paced": phases.summary(paced), "burst": burst})


def fill(count: int, threads: int = 4) -> None:
    """Publish ``count`` runs from ``threads`` producers, as many as the burst uses."""

    def publish(share: int) -> None:
        for _ in range(share):
            noop.delay(time.time())

    shares = [count // threads + (i < count % threads) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(publish, shares))
    with noop.app.connection_for_write() as connection:
        queued = connection.default_channel.client.llen("celery")
    phases.emit({"published": count, "queued": queued})


def main() -> None:
    """``fill N`` or ``e2e '<JSON config>'``."""
    phases.driver_main(fill, e2e)


if __name__ == "__main__":
    main()

"""Drive the Prefect peer (run in the Prefect venv): a task worker, or the producer.

``python -m bench.peers.prefect_run worker`` serves the no-op task;
``python -m bench.peers.prefect_run drive '{"prefect_runs": N, ...}'`` enqueues with
``task.delay`` and prints one ``RESULT {...}`` line. Both import the task from here, so that
its task key matches.
"""

from __future__ import annotations

import json
import sys
import time

from prefect import task

from bench.peers import phases

TIMEOUT_S = 600


@task(persist_result=True)
def noop(sent_at: float) -> float:
    """Returns how long after its enqueue (wall clock, seconds) the task body started."""
    return time.time() - sent_at


def _collect(futures: list) -> tuple[list[float], list[float]]:
    latencies, finished = [], []
    for future in futures:
        latencies.append(future.result(timeout=TIMEOUT_S))
        finished.append(time.time())  # when the producer read it back
    return latencies, finished


def drive(config: dict) -> None:
    runs = config["prefect_runs"]

    def enqueue():
        return noop.delay(time.time())

    def enqueue_many(count: int) -> list:
        return [noop.delay(time.time()) for _ in range(count)]

    _collect(phases.paced(enqueue, 5, 5))  # warm-up; also waits for the worker to be up
    paced, _ = _collect(phases.paced(enqueue, max(10, runs // 5), 2))
    burst = phases.bursts(enqueue_many, _collect, config, runs)
    phases.emit({"paced": phases.summary(paced), "burst": burst})


def main() -> None:
    if sys.argv[1] == "worker":
        from prefect.task_worker import serve

        serve(noop, limit=10)
    else:
        drive(json.loads(sys.argv[2]))


if __name__ == "__main__":
    main()

"""Drive the RQ peer (run in the RQ venv).

``python -m bench.peers.rq_run e2e '{"runs": N, ...}'``: warm up, paced phase, repeated bursts;
prints one ``RESULT {...}`` line. ``python -m bench.peers.rq_run fill N``: enqueue N jobs (no
worker is running) and print ``RESULT {"published": N}``.
"""

from __future__ import annotations

import os
import threading
import time

from redis import Redis
from rq import Queue
from rq.job import Job

from bench.peers import phases
from bench.peers.ours import noop  # a plain function: the RQ worker imports it by path

QUEUE = "bench"
RESULT_TTL_S = 3600  # results kept for the whole run (RQ's default is 500 s)
TIMEOUT_S = 300
FILL_BATCH = 1000

connection = Redis.from_url(os.environ["BENCH_REDIS_URL"])
queue = Queue(QUEUE, connection=connection)
_enqueued = [0]  # jobs enqueued by this driver, to compare with RQ's registries
_lock = threading.Lock()  # the burst enqueues from several threads


def enqueue() -> str:
    """One job, as ``queue.enqueue`` makes it; its id."""
    with _lock:
        _enqueued[0] += 1
    return queue.enqueue(noop, time.time(), result_ttl=RESULT_TTL_S).id


def _settled() -> int:
    return queue.finished_job_registry.count + queue.failed_job_registry.count


def _wait(ids: list[str]) -> None:
    """Until the worker has settled every job enqueued so far (counts of RQ's registries)."""
    deadline = time.monotonic() + TIMEOUT_S
    while (left := _enqueued[0] - _settled()) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} RQ jobs did not finish")
        time.sleep(0.02)  # another process's jobs: polled with a deadline


def _collect(ids: list[str]) -> tuple[list[float], list[float]]:
    _wait(ids)
    jobs = Job.fetch_many(ids, connection=connection)
    failed = [job.id for job in jobs if job is None or job.get_status() != "finished"]
    if failed:
        raise RuntimeError(f"{len(failed)} RQ jobs did not finish, e.g. {failed[0]}")
    return [job.return_value() for job in jobs], [job.ended_at.timestamp() for job in jobs]


def e2e(config: dict) -> None:
    _collect(phases.paced(enqueue, config["warmup"], 500))  # also waits for the worker
    paced, _ = _collect(phases.paced(enqueue, config["paced_runs"], config["paced_rate"]))
    burst = phases.bursts(
        lambda count: [enqueue() for _ in range(count)],
        _collect,
        config,
        config["runs"],
        wait=_wait,
    )
    phases.emit({"paced": phases.summary(paced), "burst": burst})


def fill(count: int) -> None:
    """Enqueue ``count`` jobs, ``FILL_BATCH`` per pipeline (``enqueue_many``)."""
    left = count
    while left > 0:
        size = min(FILL_BATCH, left)
        queue.enqueue_many(
            [Queue.prepare_data(noop, (time.time(),), result_ttl=RESULT_TTL_S) for _ in range(size)]
        )
        left -= size
    phases.emit({"published": count, "queued": queue.count})


def main() -> None:
    """``fill N`` or ``e2e '<JSON config>'``."""
    phases.driver_main(fill, e2e)


if __name__ == "__main__":
    main()

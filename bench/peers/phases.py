"""The two load phases every system of the end-to-end benchmark goes through, the same way.

Pure standard library: the Celery and Prefect drivers import it from their own venvs.

- *paced*: runs enqueued at a steady rate well under capacity, one producer; the task body
  returns how long after its enqueue it started, which gives the enqueue -> start latency.
- *burst*: N runs enqueued as fast as ``producers`` threads can; throughput is N over the time
  from the first enqueue to the last completion the system recorded.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any


def paced(enqueue: Callable[[], Any], count: int, rate: float) -> list[Any]:
    """Call ``enqueue()`` ``count`` times at ``rate`` per second (open loop); the handles."""
    handles = []
    start = time.perf_counter()
    for index in range(count):
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the load, not waiting for a result
        handles.append(enqueue())
    return handles


def burst(
    enqueue_many: Callable[[int], list], count: int, producers: int, batch: int = 1
) -> tuple[float, list]:
    """Enqueue ``count`` runs from ``producers`` threads at once, ``enqueue_many(k)`` taking
    ``k <= batch`` runs per call; (wall-clock start, handles)."""
    shares = [count // producers + (i < count % producers) for i in range(producers)]
    handles: list[list[Any]] = [[] for _ in shares]
    errors: list[BaseException] = []
    ready = threading.Barrier(producers + 1)

    def produce(index: int) -> None:
        ready.wait()
        try:
            left = shares[index]
            while left > 0:
                handles[index] += enqueue_many(min(batch, left))
                left -= min(batch, left)
        except BaseException as exc:  # reported by the caller, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(producers)]
    for thread in threads:
        thread.start()
    started = time.time()
    ready.wait()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return started, [handle for share in handles for handle in share]


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, as ``bench.common.percentile``."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(
    latencies_s: list[float], started: float | None = None, finished: list[float] | None = None
) -> dict[str, Any]:
    """Percentiles of latencies (ms) and, for a burst, runs per second."""
    out: dict[str, Any] = {
        "runs": len(latencies_s),
        "p50_ms": percentile(latencies_s, 50) * 1000,
        "p99_ms": percentile(latencies_s, 99) * 1000,
        "mean_ms": statistics.fmean(latencies_s) * 1000,
    }
    if started is not None and finished:
        out["seconds"] = max(finished) - started
        out["runs_per_s"] = len(latencies_s) / out["seconds"]
    return out


def emit(result: dict[str, Any]) -> None:
    """Print the driver's result as the one line the benchmark reads."""
    print("RESULT " + json.dumps(result), flush=True)
    sys.stdout.flush()

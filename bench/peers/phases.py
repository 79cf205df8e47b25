"""The load phases every system of the end-to-end benchmark goes through, the same way.

Pure standard library: the Celery, RQ and Prefect drivers import it from their own venvs.

- *paced*: runs enqueued at a steady rate well under capacity, one producer; the task body
  returns how long after its enqueue it started, which gives the enqueue -> start latency.
- *burst*: N runs enqueued as fast as ``producers`` threads can; throughput is N over the time
  from the first enqueue to the last completion the system recorded. Repeated (``repeats``),
  the median reported, with the server's CPU time over each burst (``server_pids``).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU time of the processes ``pids`` (all their threads), from ``/proc``;
    None where there is no ``/proc`` (the figure is then left out, not guessed)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # Fields after the command name (which may hold spaces): utime, stime are 14, 15.
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) * _TICK_S
    return total


def bursts(
    enqueue_many: Callable[[int], list],
    collect: Callable[[list], tuple[list[float], list[float]]],
    config: dict[str, Any],
    runs: int,
    batch: int = 1,
    wait: Callable[[list], None] | None = None,
) -> dict[str, Any]:
    """``config["repeats"]`` bursts of ``runs``, each collected before the next; the median
    burst's summary, every repeat's runs/s, and the server's CPU milliseconds per run.

    The CPU window ends when ``wait(handles)`` returns (every run done), before ``collect``
    reads the figures back, where reading them back is not part of running the tasks."""
    pids = config.get("server_pids") or []
    repeats = []
    for _ in range(config.get("repeats", 1)):
        cpu_before = cpu_seconds(pids) if pids else None
        started, handles = burst(enqueue_many, runs, config["producers"], batch)
        if wait is not None:
            wait(handles)
        cpu_after = cpu_seconds(pids) if pids else None
        latencies, finished = collect(handles)
        one = summary(latencies, started, finished)
        if cpu_before is not None and cpu_after is not None:
            one["server_cpu_ms_per_run"] = 1000 * (cpu_after - cpu_before) / runs
        repeats.append(one)
    return median_burst(repeats)


def median_burst(
    repeats: list[dict[str, Any]], cpu_fields: Sequence[str] = ("server_cpu_ms_per_run",)
) -> dict[str, Any]:
    """The median burst's summary by runs/s, every repeat's runs/s, and the median of each of
    ``cpu_fields`` over the repeats that measured it."""
    ordered = sorted(repeats, key=lambda one: one["runs_per_s"])
    middle = dict(ordered[len(ordered) // 2])
    middle["repeats_runs_per_s"] = [one["runs_per_s"] for one in repeats]
    for name in cpu_fields:
        values = [one[name] for one in repeats if name in one]
        if values:
            middle[name] = statistics.median(values)
    return middle


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


def driver_main(fill: Callable[[int], None], e2e: Callable[[dict], None]) -> None:
    """A Redis peer driver's command line: ``fill N`` or ``e2e '<JSON config>'``."""
    if sys.argv[1] == "fill":
        fill(int(sys.argv[2]))
    else:
        e2e(json.loads(sys.argv[2]))

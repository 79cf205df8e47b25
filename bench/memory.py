"""Memory per queued run: N runs queued in memory with no worker, the server's (or broker's)
resident memory growth divided by N. Ours: Daphne on ``bench.settings`` (queue bound raised to
1,000,000), runs enqueued in the server in batches (``await task.aenqueue()``, durable records
included). Celery and RQ: redis-server's growth, runs published by their own clients. Prefect:
not measured (see the report). Also what one ``TaskRun`` costs in this process (tracemalloc).
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import procs
from bench.peers.celery_peer import celery_python
from bench.peers.common import drive, measured_or_skipped, peer_env
from bench.peers.ours_peer import Records, Trigger, server
from bench.peers.redis_server import RedisServer
from bench.peers.rq_peer import rq_python

NAME = "memory"
TARGET_BYTES = 2048
WARMUP = 1_000
BATCH = 1_000  # runs per request to the in-server producer view
PREFECT_REASON = (
    "not measured: its server queues at most 1,000 runs per key by default (a put then waits) "
    "and creates a few runs per second here, so 100,000 queued runs are out of reach"
)
LABELS = {
    "ours": "taskqueue (Daphne process)",
    "celery": "Celery 5 (redis-server)",
    "rq": "RQ 2 (redis-server)",
    "prefect": "Prefect 3.9 (server)",
}


def _config(quick: bool) -> dict[str, Any]:
    return {"quick": quick, "runs": 10_000 if quick else 100_000}


def _queued(api_url: str) -> int:
    with urllib.request.urlopen(f"{api_url}/task_queues/", timeout=30) as response:
        return sum(queue["scheduled_size"] for queue in json.loads(response.read()))


def _growth(pid: int, before: int, runs: int, queued: int) -> dict[str, Any]:
    process = procs.tree(pid)[:1]
    after, peak = procs.rss_bytes(process), procs.peak_rss_bytes(pid)
    return {
        "runs": runs,
        "queued": queued,
        "rss_before": before,
        "rss_after": after,
        "rss_peak": peak,
        "bytes_per_run": (after - before) / runs,
        "peak_bytes_per_run": (peak - before) / runs if peak else None,
    }


def measure_ours(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Daphne, no worker: ``runs`` enqueued in the server, ``BATCH`` per request, 2 at a time."""
    runs = config["runs"]
    with server(tmp, "memory") as daphne:
        trigger, records = Trigger(daphne.port), Records(daphne.database)
        trigger(WARMUP)  # code paths, allocator arenas, the database file
        process = procs.tree(daphne.process.pid)[:1]
        gc.collect()
        before = procs.rss_bytes(process)
        common.progress(f"{NAME}: ours, {runs:,} runs enqueued in the server")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(trigger, [BATCH] * (runs // BATCH)))
        deadline = time.monotonic() + 300
        while records.count() < WARMUP + runs:  # written behind: wait until all are durable
            if time.monotonic() > deadline:
                raise TimeoutError("the run records were not all written")
            time.sleep(0.1)  # another process's writes: polled with a deadline
        return _growth(daphne.process.pid, before, runs, _queued(daphne.api_url))


def _redis_peer(python: Path, module: str, config: dict, tmp: Path, what: str) -> dict:
    with RedisServer(tmp) as redis:
        env = peer_env(redis.url)
        drive(python, module, ["fill", str(WARMUP)], env, what)
        process = procs.tree(redis.pid)
        before = procs.rss_bytes(process)
        common.progress(f"{NAME}: {what}, {config['runs']:,} runs published")
        done = drive(python, module, ["fill", str(config["runs"])], env, what)
        return _growth(redis.pid, before, config["runs"], done.get("queued", config["runs"]))


def measure_celery(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Celery's ``delay()`` into Redis, no worker: redis-server's growth."""
    return _redis_peer(celery_python(), "bench.peers.celery_run", config, tmp, "Celery")


def measure_rq(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """RQ's ``enqueue_many`` into Redis, no worker: redis-server's growth."""
    return _redis_peer(rq_python(), "bench.peers.rq_run", config, tmp, "RQ")


def task_run_cost(count: int = 10_000) -> dict[str, Any]:
    """What one queued ``TaskRun`` costs in this process: tracemalloc over ``count`` runs made
    as the server makes them (``run_from_request``) and queued as the memory engine keeps them
    (without their JSON text), and ``sys.getsizeof`` of its parts."""
    from taskqueue_app.inputs import run_from_request

    body = {
        "task_key": "bench.peers.ours.noop",
        "parameters": {"args": [time.time()], "kwargs": {}},
    }
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    runs = [run_from_request(json.loads(json.dumps(body))) for _ in range(count)]
    for run in runs:
        run.forget_json()
    traced = (tracemalloc.get_traced_memory()[0] - before) / count
    tracemalloc.stop()
    sample = runs[0]
    parts = {
        slot: sys.getsizeof(getattr(sample, slot))
        for slot in type(sample).__slots__
        if getattr(sample, slot, None) is not None
    }
    return {
        "traced_bytes_per_run": traced,
        "object_bytes": sys.getsizeof(sample),
        "largest_parts": dict(sorted(parts.items(), key=lambda item: -item[1])[:6]),
    }


def run(quick: bool) -> dict[str, Any]:
    """Ours, Celery and RQ one after another; Prefect reported as not measured."""
    common.setup_django()
    config = _config(quick)
    result: dict[str, Any] = {"config": config}
    with tempfile.TemporaryDirectory(prefix="taskqueue-memory-") as name:
        tmp = Path(name)
        result["ours"] = measure_ours(config, tmp)
        result["celery"] = measured_or_skipped(NAME, "Celery", measure_celery, config, tmp)
        result["rq"] = measured_or_skipped(NAME, "RQ", measure_rq, config, tmp)
    result["prefect"] = {"skipped": PREFECT_REASON}
    result["task_run"] = task_run_cost()
    result["environment"] = common.environment()
    per_run = result["ours"]["bytes_per_run"]
    result["targets"] = [
        common.target(
            "memory per queued run", f"< {TARGET_BYTES:,} bytes", per_run, per_run < TARGET_BYTES
        )
    ]
    return result


def report(result: dict[str, Any]) -> str:
    """The Markdown table of a ``run`` result, with the notes needed to read it."""
    fmt = common.fmt_number
    rows = []
    for key, label in LABELS.items():
        entry = result[key]
        if "skipped" in entry:
            rows.append([label, "—", "—", "—", "—", f"skipped: {entry['skipped']}"])
            continue
        rows.append(
            [
                label,
                f"{entry['runs']:,}",
                fmt(entry["bytes_per_run"]),
                fmt(entry["peak_bytes_per_run"]),
                f"{entry['rss_before'] / 2**20:,.1f} -> {entry['rss_after'] / 2**20:,.1f}",
                f"{entry['queued']:,} queued at the end",
            ]
        )
    table = common.markdown_table(
        ["system", "runs", "bytes/run (RSS)", "bytes/run (peak)", "RSS MiB", "notes"],
        rows,
        "lrrrrl",
    )
    cost, target = result["task_run"], result["targets"][0]
    parts = ", ".join(f"{name} {size:,} B" for name, size in cost["largest_parts"].items())
    notes = [
        "",
        f"- {result['config']['runs']:,} runs queued after {WARMUP:,} warm-up runs, no worker: "
        "resident memory growth of the server (ours: the Daphne process; Celery, RQ: "
        "redis-server) divided by the runs; peak: the process's high-water mark (VmHWM) over the "
        "same baseline.",
        f"- Ours: `await task.aenqueue()` in a bench-only view, {BATCH:,} per request, durable "
        "records written (SQLite); queue bound raised in `bench/settings.py`. Celery: "
        "`noop.delay()` from 4 threads; RQ: `enqueue_many` in pipelines of 1,000.",
        f"- Target: ours < {TARGET_BYTES:,} bytes per queued run: "
        f"{fmt(target['value'])}, {common.verdict(target)}.",
        f"- One `TaskRun` as the server builds and queues it (`run_from_request`, its JSON text "
        "dropped as the memory engine does; tracemalloc over 10,000 "
        f"in the bench process): {fmt(cost['traced_bytes_per_run'])} bytes; the object itself "
        f"{cost['object_bytes']} bytes (slots); largest parts: {parts}.",
        f"{common.environment_note(result['environment'])}.",
    ]
    return "\n".join([table, *notes])


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.memory [--quick]``: measure and print the Markdown table."""
    common.stage_main(NAME, __doc__, "10,000 runs instead of 100,000", run, report, argv)


if __name__ == "__main__":
    main()

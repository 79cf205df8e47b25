"""End to end: no-op tasks through one worker process, ours against Celery and Prefect.

Ours: the example project under Daphne (``bench.settings``, DEBUG off, records in SQLite WAL),
one ``python -m taskqueue_app.worker --limit 10`` process, runs enqueued through the Django
Tasks backend from this process (HTTP to ``SERVER_URL``, one kept-alive connection per
producer thread). Celery 5 with Redis as broker and result backend (``redis-server`` started
here on a free loopback port), one worker process with a pool of 10 threads. Prefect 3.9
background tasks (``task.delay`` + ``serve``) against a local Prefect server. Every system runs
the same phases (``bench/peers/phases.py``): a paced phase for latency, a burst for throughput.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import phases, venvs
from bench.peers.celery_peer import measure_celery, stop
from bench.peers.prefect_peer import measure_prefect

NAME = "end_to_end"
ROOT = Path(__file__).resolve().parent.parent
LIMIT = 10
PRODUCERS = 4
SERVER_BATCH = 50  # runs enqueued per request to the in-server producer view
THROUGHPUT_RATIO_MIN = 2.0  # ours / Celery-with-results, in the same run
COLLECT_TIMEOUT_S = 300


def _config(quick: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "runs": 1_000 if quick else 5_000,
        "paced_runs": 100 if quick else 300,
        "paced_rate": 100,
        "warmup": 50,
        "producers": PRODUCERS,
        "limit": LIMIT,
        "http_runs": 300 if quick else 1_000,
        "prefect_runs": 100,
    }


# -- ours ---------------------------------------------------------------------------------------


def _collect_records(database: Path, ids: list[str]) -> tuple[list[float], list[float]]:
    """Poll the server's records until every run in ``ids`` is COMPLETED; (latencies, finished)."""
    keys = [uuid.UUID(run_id).hex for run_id in ids]
    chunks = [keys[start : start + 500] for start in range(0, len(keys), 500)]
    deadline = time.monotonic() + COLLECT_TIMEOUT_S
    with sqlite3.connect(database, timeout=30) as connection:

        def select(columns: str) -> list[tuple]:
            rows = []
            for chunk in chunks:
                rows += connection.execute(
                    f"SELECT {columns} FROM taskqueue_app_taskrunrecord "
                    f"WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
            return rows

        while True:
            states = [state for (state,) in select("state_type")]
            if len(states) == len(keys) and all(state == "COMPLETED" for state in states):
                break
            if any(state in ("FAILED", "CRASHED") for state in states):
                raise RuntimeError(f"a benchmark run did not complete: {sorted(set(states))}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{states.count('COMPLETED')}/{len(keys)} runs completed")
            time.sleep(0.05)  # another process's records: polled with a deadline
        rows = select("state_type, result, finished")
    latencies = [json.loads(row[1]) for row in rows]
    finished = [datetime.fromisoformat(row[2]).replace(tzinfo=UTC).timestamp() for row in rows]
    return latencies, finished


def _wait_for_worker(api_url: str, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(
            f"{api_url}/task_workers/filter", data=b"{}", method="POST"
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:
            if json.loads(response.read()):
                return
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not subscribe")
        time.sleep(0.05)


class _Trigger:
    """Calls the in-server producer view over one kept-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def __call__(self, count: int) -> list[str]:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port)
        connection.request("POST", f"/bench/e2e/enqueue?count={count}", b"")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"the producer view answered {response.status}: {body[:200]!r}")
        return json.loads(body)


def _phases(database: Path, paced_one, burst_many, runs: int, batch: int, config) -> dict:
    """Warm-up, paced phase and burst of one producer path of ours."""
    _collect_records(database, phases.paced(paced_one, config["warmup"], 500))
    paced, _ = _collect_records(
        database, phases.paced(paced_one, config["paced_runs"], config["paced_rate"])
    )
    started, ids = phases.burst(burst_many, runs, config["producers"], batch)
    latencies, finished = _collect_records(database, ids)
    return {"paced": phases.summary(paced), "burst": phases.summary(latencies, started, finished)}


def measure_ours(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Daphne + one TaskWorker process; runs enqueued in the server, and over HTTP."""
    from django.conf import settings
    from django.test import override_settings

    from bench.peers.ours import noop
    from taskqueue_app.backend import QueueTask
    from taskqueue_app.testing import DaphneServer

    server = DaphneServer(
        settings="bench.peers.ours_settings",
        database=tmp / "ours.sqlite3",
        env={"DJANGO_DEBUG": "0"},
        cwd=ROOT,
    )
    worker = None
    with server, open(tmp / "ours-worker.log", "wb") as log:
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskqueue_app.worker", "--url", server.api_url]
            + ["--limit", str(config["limit"]), "--log-level", "WARNING", "bench.peers.ours.noop"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_worker(server.api_url)
            trigger = _Trigger(server.port)
            common.progress(f"{NAME}: ours, enqueued in the server, burst of {config['runs']:,}")
            in_server = _phases(
                server.database,
                lambda: trigger(1)[0],
                trigger,
                config["runs"],
                SERVER_BATCH,
                config,
            )
            urls = {**settings.TASKQUEUE, "SERVER_URL": server.api_url}
            with override_settings(TASKQUEUE=urls):
                task = QueueTask(func=noop)

                def enqueue() -> str:
                    return task.enqueue(time.time()).id

                common.progress(f"{NAME}: ours, enqueued over HTTP, {config['http_runs']:,} runs")
                over_http = _phases(
                    server.database,
                    enqueue,
                    lambda count: [enqueue() for _ in range(count)],
                    config["http_runs"],
                    1,
                    config,
                )
        finally:
            stop(worker)
    return {"in_server": in_server, "http": over_http}


# -- the stage ------------------------------------------------------------------------------------


def _peer(name: str, measure, config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    try:
        return measure(config, tmp)
    except venvs.PeerUnavailable as exc:
        common.progress(f"{NAME}: {name} skipped: {exc}")
        return {"skipped": str(exc)}
    except Exception as exc:  # a peer that breaks must not hide our own figures
        common.progress(f"{NAME}: {name} failed: {exc}")
        return {"skipped": f"failed: {str(exc).splitlines()[0]}"}


def _targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    ours, celery = result["ours"]["in_server"], result["celery"]
    if "skipped" in celery:
        return [
            {
                "name": "throughput vs Celery",
                "target": f">= {THROUGHPUT_RATIO_MIN:g}x Celery+Redis with results",
                "value": None,
                "met": False,
            }
        ]
    ratio = ours["burst"]["runs_per_s"] / celery["burst"]["runs_per_s"]
    return [
        {
            "name": "throughput vs Celery",
            "target": f">= {THROUGHPUT_RATIO_MIN:g}x Celery+Redis with results",
            "value": ratio,
            "met": ratio >= THROUGHPUT_RATIO_MIN,
        },
        {
            "name": "p50 latency vs Celery",
            "target": "<= Celery's p50",
            "value": ours["paced"]["p50_ms"],
            "met": ours["paced"]["p50_ms"] <= celery["paced"]["p50_ms"],
        },
    ]


def run(quick: bool) -> dict[str, Any]:
    """Ours, Celery and (full mode, or quick with its venv present) Prefect, one after another."""
    common.setup_django()
    config = _config(quick)
    with tempfile.TemporaryDirectory(prefix="taskqueue-e2e-") as name:
        tmp = Path(name)
        common.progress(f"{NAME}: ours")
        result: dict[str, Any] = {"config": config, "ours": measure_ours(config, tmp)}
        result["celery"] = _peer("Celery", measure_celery, config, tmp)
        common.progress(f"{NAME}: Prefect")
        result["prefect"] = _peer("Prefect", measure_prefect, config, tmp)
    result["environment"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    result["targets"] = _targets(result)
    return result


def report(result: dict[str, Any]) -> str:
    """The Markdown table of a ``run`` result, with the notes needed to read it."""
    fmt = common.fmt_number
    rows = []
    systems = [
        ("taskqueue, enqueued in the server (aenqueue)", result["ours"]["in_server"]),
        ("taskqueue, enqueued over HTTP (another process)", result["ours"]["http"]),
        ("Celery 5 + Redis, with results", result.get("celery")),
        ("Prefect 3.9 background tasks", result.get("prefect")),
    ]
    for label, entry in systems:
        entry = entry or {"skipped": "not run"}
        if "skipped" in entry:
            rows.append([label, "—", "—", "—", "—", f"skipped: {entry['skipped']}"])
            continue
        burst, paced = entry["burst"], entry["paced"]
        rows.append(
            [
                label,
                f"{burst['runs']:,}",
                fmt(burst["runs_per_s"]),
                fmt(paced["p50_ms"]),
                fmt(paced["p99_ms"]),
                f"p50 under the burst: {fmt(burst['p50_ms'])} ms",
            ]
        )
    table = common.markdown_table(
        ["system", "runs", "runs/s", "p50 ms", "p99 ms", "notes"], rows, "lrrrrl"
    )
    config = result["config"]
    verdicts = [
        f"- Target {t['name']}: {t['target']}: {fmt(t['value']) if t['value'] else '—'}"
        f"{'x' if 'throughput' in t['name'] and t['value'] else ' ms' if t['value'] else ''}, "
        f"{'met' if t['met'] else '**NOT met**'}."
        for t in result["targets"]
    ]
    notes = [
        "",
        f"- runs/s: a burst of `runs` no-op tasks enqueued by {config['producers']} producer "
        "threads, from the first enqueue to the last completion the system recorded (ours: the "
        "run records' `finished`; Celery: the results' `date_done`; Prefect: the last result "
        "read back).",
        f"- Ours in the server: a bench-only async view calls `await task.aenqueue()` "
        f"{SERVER_BATCH} times concurrently per request (as views starting background work do; "
        "HTTP only carries the trigger). Over HTTP: `task.enqueue()` in this process, one "
        "`POST /api/task_runs/` per run on a kept-alive connection per thread; Daphne's HTTP "
        "ceiling on this machine bounds it (see the http_enqueue stage).",
        f"- p50/p99: enqueue to task-body start (wall clock), {config['paced_runs']} runs paced "
        f"at {config['paced_rate']}/s after {config['warmup']} warm-up runs; Prefect: "
        f"{config['prefect_runs']} runs.",
        f"- One worker process each, {config['limit']} concurrent runs (ours: thread pool; "
        "Celery: `--pool threads`), log level WARNING. Targets compare ours in the server with "
        "Celery.",
        *verdicts,
        f"- Python {result['environment']['python']}, {result['environment']['cpus']} CPUs, "
        f"{result['environment']['platform']}.",
    ]
    return "\n".join([table, *notes])


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.end_to_end [--quick]``: measure and print the Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 runs; Prefect if present")
    args = parser.parse_args(argv)
    print(report(run(args.quick)))


if __name__ == "__main__":
    main()

"""Our system in the end-to-end benchmark: Daphne serving the example project on
``bench.peers.ours_settings`` (DEBUG off, records in SQLite WAL) and one
``python -m taskqueue_app.worker --limit 10`` process. Runs are enqueued in the server (a
bench-only view awaiting ``task.aenqueue()``) and from this process (``task.enqueue()`` here,
through ``SERVER_URL``: the producer stream). Its "server" is the Daphne process: the CPU and
memory counted are its own."""

from __future__ import annotations

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import phases
from bench.peers.redis_server import stop

ROOT = common.ROOT
SERVER_BATCH = 50  # runs enqueued per request to the in-server producer view
COLLECT_TIMEOUT_S = 300
RECORDS = "taskqueue_app_taskrunrecord"


def server(tmp: Path, name: str = "ours", asgi_server: str = "daphne"):
    """A ``ProjectServer`` (not started) of the benchmark's project, on its own database file,
    under ``asgi_server`` (Daphne, or Uvicorn)."""
    from project.servers import ProjectServer

    return ProjectServer(
        settings="bench.peers.ours_settings",
        database=tmp / f"{name}.sqlite3",
        env={"DJANGO_DEBUG": "0"},
        cwd=ROOT,
        server=asgi_server,
    )


class Trigger:
    """Calls the in-server producer view over one kept-alive connection per thread."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def __call__(self, count: int) -> list[str]:
        """Enqueue ``count`` runs in the server; their ids."""
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection("127.0.0.1", self.port)
        connection.request("POST", f"/bench/e2e/enqueue?count={count}", b"")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"the producer view answered {response.status}: {body[:200]!r}")
        return json.loads(body)


class Records:
    """Reads the server's run records from its SQLite file (another process's: polled)."""

    def __init__(self, database: Path) -> None:
        self.database = database

    def _select(self, columns: str, ids: list[str]) -> list[tuple]:
        keys = [uuid.UUID(run_id).hex for run_id in ids]
        rows: list[tuple] = []
        with sqlite3.connect(self.database, timeout=30) as connection:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                rows += connection.execute(
                    f"SELECT {columns} FROM {RECORDS} WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk,
                ).fetchall()
        return rows

    def count(self) -> int:
        """How many runs are recorded."""
        with sqlite3.connect(self.database, timeout=30) as connection:
            return connection.execute(f"SELECT COUNT(*) FROM {RECORDS}").fetchone()[0]

    def wait(self, ids: list[str]) -> None:
        """Until every run in ``ids`` is recorded COMPLETED."""
        deadline = time.monotonic() + COLLECT_TIMEOUT_S
        while True:
            states = [state for (state,) in self._select("state_type", ids)]
            if len(states) == len(ids) and all(state == "COMPLETED" for state in states):
                return
            if any(state in ("FAILED", "CRASHED") for state in states):
                raise RuntimeError(f"a benchmark run did not complete: {sorted(set(states))}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{states.count('COMPLETED')}/{len(ids)} runs completed")
            time.sleep(0.05)  # another process's records: polled with a deadline

    def collect(self, ids: list[str]) -> tuple[list[float], list[float]]:
        """(latencies the task bodies returned, finish times) of completed runs."""
        self.wait(ids)
        rows = self._select("result, finished", ids)
        latencies = [json.loads(result) for result, _ in rows]
        finished = [datetime.fromisoformat(f).replace(tzinfo=UTC).timestamp() for _, f in rows]
        return latencies, finished


def wait_for_worker(api_url: str, timeout: float = 30) -> None:
    """Until a worker is subscribed (the server's worker list; another process: polled)."""
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


def start_worker(api_url: str, limit: int, log) -> subprocess.Popen:
    """One ``python -m taskqueue_app.worker`` process serving the no-op task."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.Popen(
        [sys.executable, "-m", "taskqueue_app.worker", "--url", api_url]
        + ["--limit", str(limit), "--log-level", "WARNING", "bench.peers.ours.noop"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _phases(records: Records, one, many, runs: int, batch: int, config: dict) -> dict:
    """Warm-up, paced phase and repeated bursts of one producer path of ours."""
    records.collect(phases.paced(one, config["warmup"], 500))
    paced, _ = records.collect(phases.paced(one, config["paced_runs"], config["paced_rate"]))
    burst = phases.bursts(many, records.collect, config, runs, batch, wait=records.wait)
    return {"paced": phases.summary(paced), "burst": burst}


def measure_ours(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Daphne + one TaskWorker process; runs enqueued in the server, and from this process."""
    from django.conf import settings
    from django.test import override_settings

    from bench.peers.ours import noop
    from taskqueue_app.backend import QueueTask

    daphne = server(tmp)
    with daphne, open(tmp / "ours-worker.log", "wb") as log:
        worker = start_worker(daphne.api_url, config["limit"], log)
        try:
            wait_for_worker(daphne.api_url)
            records = Records(daphne.database)
            config = {**config, "server_pids": [daphne.process.pid]}
            trigger = Trigger(daphne.port)
            common.progress(
                f"end_to_end: ours, enqueued in the server, {config['repeats']} bursts of "
                f"{config['runs']:,}"
            )
            in_server = _phases(
                records, lambda: trigger(1)[0], trigger, config["runs"], SERVER_BATCH, config
            )
            with override_settings(TASKQUEUE={**settings.TASKQUEUE, "SERVER_URL": daphne.api_url}):
                task = QueueTask(func=noop)

                def enqueue() -> str:
                    return task.enqueue(time.time()).id

                http_config = {**config, "repeats": config["http_repeats"]}
                common.progress(
                    f"end_to_end: ours, enqueued from this process, {http_config['repeats']} "
                    f"bursts of {config['http_runs']:,}"
                )
                over_http = _phases(
                    records,
                    enqueue,
                    lambda count: [enqueue() for _ in range(count)],
                    config["http_runs"],
                    1,
                    http_config,
                )
        finally:
            stop(worker)
    return {"in_server": in_server, "http": over_http}

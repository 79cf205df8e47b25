"""Server CPU with 100 idle workers, ours against the peers: the server's share of one core over
a quiet window, first with no worker connected, then with 100 idle ones.

- Ours: Daphne (``bench.peers.ours_settings``) with 100 subscribed WebSocket connections
  (authenticated, subscribed, prefetch 1), no runs.
- Celery: redis-server with 100 connections blocking as an idle Celery worker's consumer does
  (kombu: ``BRPOP`` on the queue with a 1 s timeout, in a loop). 100 real Celery worker
  processes would need gigabytes here; their broker traffic at idle is that loop.
- RQ: redis-server with 100 connections blocking as an idle RQ worker does (``BLPOP`` with its
  405 s dequeue timeout).
- Prefect: its server with 100 task-worker subscriptions (Prefect's ``Subscription`` client, as
  ``serve`` opens it), in one process. Full mode only.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import common
from bench.consumer_clients import Workers
from bench.peers import procs
from bench.peers.celery_peer import celery_python
from bench.peers.common import ROOT, measured_or_skipped, peer_env
from bench.peers.ours_peer import server
from bench.peers.prefect_peer import PrefectServer, prefect_python
from bench.peers.redis_server import RedisServer
from bench.peers.rq_peer import rq_python

NAME = "idle"
WORKERS = 100
SETTLE_S = 1.0  # after connecting: every handshake handled before the window opens
TARGET_PCT = 1.0
LABELS = {
    "ours": "taskqueue (Daphne process)",
    "celery": "Celery 5 (redis-server)",
    "rq": "RQ 2 (redis-server)",
    "prefect": "Prefect 3.9 (server processes)",
}
WHAT = {
    "ours": f"{WORKERS} subscribed WebSocket connections",
    "celery": f"{WORKERS} connections in `BRPOP celery 1` loops",
    "rq": f"{WORKERS} connections in `BLPOP rq:queue:bench 405`",
    "prefect": f"{WORKERS} Prefect `Subscription` WebSockets",
}


def _config(quick: bool) -> dict[str, Any]:
    return {"quick": quick, "seconds": 2.0 if quick else 10.0}


def _windows(pids: list[int], seconds: float, connect) -> dict[str, Any]:
    """% of a core with no worker, then with ``WORKERS`` idle ones (``connect()`` is a context
    manager holding them, giving how many connected)."""
    processes = [procs.psutil.Process(pid) for pid in pids]
    time.sleep(SETTLE_S)  # the server's own start-up work done
    alone = procs.idle_cpu_pct(processes, seconds)
    with connect() as connected:
        time.sleep(SETTLE_S)
        busy = procs.idle_cpu_pct(processes, seconds)
    return {"no_workers_pct": alone, "workers_pct": busy, "workers": connected}


@contextmanager
def _our_workers(port: int) -> Iterator[int]:
    """``WORKERS`` subscribed connections held open by an event loop in a thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    pool = Workers(port, f"bench.idle.{uuid.uuid4().hex[:8]}", WORKERS, 1)
    asyncio.run_coroutine_threadsafe(pool.open(), loop).result(60)
    try:
        yield len(pool.sockets)
    finally:
        asyncio.run_coroutine_threadsafe(pool.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextmanager
def _clients(python: Path, args: list[str], env: dict[str, str]) -> Iterator[int]:
    """``bench.peers.idle_clients`` in a peer's venv, until its stdin closes."""
    process = subprocess.Popen(
        [python, "-m", "bench.peers.idle_clients", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # blocks until the clients are connected
        if not line.startswith("READY "):
            raise RuntimeError(f"idle clients failed: {process.stderr.read()[-500:]}")
        yield int(line.split()[1])
    finally:
        process.stdin.close()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure_ours(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    with server(tmp, "idle") as daphne:
        return _windows([daphne.process.pid], config["seconds"], lambda: _our_workers(daphne.port))


def _redis(python: Path, queue: str, timeout: int, config: dict, tmp: Path) -> dict[str, Any]:
    with RedisServer(tmp) as redis:
        args = ["redis", redis.url, queue, str(timeout), str(WORKERS)]
        env = peer_env(redis.url)
        return _windows([redis.pid], config["seconds"], lambda: _clients(python, args, env))


def measure_celery(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    return _redis(celery_python(), "celery", 1, config, tmp)


def measure_rq(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    return _redis(rq_python(), "rq:queue:bench", 405, config, tmp)


def measure_prefect(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    python = prefect_python(config["quick"])
    with PrefectServer(python, tmp) as prefect:
        args = ["prefect", str(WORKERS)]
        return _windows(
            prefect.pids(), config["seconds"], lambda: _clients(python, args, prefect.env)
        )


def run(quick: bool) -> dict[str, Any]:
    """Each system in turn: a window with no worker, a window with ``WORKERS`` idle ones."""
    common.setup_django()
    config = _config(quick)
    measures = {
        "ours": measure_ours,
        "celery": measure_celery,
        "rq": measure_rq,
        "prefect": measure_prefect,
    }
    result: dict[str, Any] = {"config": config}
    with tempfile.TemporaryDirectory(prefix="taskqueue-idle-") as name:
        for key, measure in measures.items():
            common.progress(f"{NAME}: {LABELS[key]}, {config['seconds']:g} s windows")
            result[key] = measured_or_skipped(NAME, LABELS[key], measure, config, Path(name))
    result["environment"] = common.environment()
    ours = result["ours"]["workers_pct"]
    result["targets"] = [
        common.target(
            f"idle CPU, {WORKERS} workers", f"< {TARGET_PCT}% of one core", ours, ours < TARGET_PCT
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
            rows.append([label, "—", "—", f"skipped: {entry['skipped']}"])
            continue
        what = WHAT[key]
        if entry["workers"] != WORKERS:
            what += f" (only {entry['workers']} could connect)"
        rows.append([label, fmt(entry["no_workers_pct"]), fmt(entry["workers_pct"]), what])
    table = common.markdown_table(
        ["server", "no workers (% of a core)", f"{WORKERS} idle workers (% of a core)", "workers"],
        rows,
        "lrrl",
    )
    seconds = result["config"]["seconds"]
    target = result["targets"][0]
    notes = [
        "",
        f"- User + system CPU time of the server process(es) over a {seconds:g} s window, "
        f"{SETTLE_S:g} s after the workers connected, as % of one core; counted in "
        f"{1000 * procs.TICK_S:g} ms ticks, so 0 means under "
        f"{100 * procs.TICK_S / seconds:.2g}%.",
        "- Celery and RQ: no real worker processes (100 would need gigabytes here) but 100 "
        "connections doing what their idle workers do on Redis; Prefect: the task-worker "
        "client's subscriptions, all in one process.",
        f"- Target: ours < {TARGET_PCT}% of one core with {WORKERS} idle workers: "
        f"{fmt(target['value'])}%, {common.verdict(target)}.",
        f"{common.environment_note(result['environment'])}.",
    ]
    return "\n".join([table, *notes])


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.idle [--quick]``: measure and print the Markdown table."""
    common.stage_main(NAME, __doc__, "2 s windows; no Prefect", run, report, argv)


if __name__ == "__main__":
    main()

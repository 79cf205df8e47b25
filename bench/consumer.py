"""Benchmark of the subscription consumer: runs from enqueue to ack through Daphne, beside a bare
asyncio + ``websockets`` server doing the same as the ceiling (``bench/ws_ceiling.py``).

Three servers' worth of rows per setting (1 or 4 worker connections, prefetch 1 or 8):

- ``ceiling``: ``bench.ws_ceiling`` in a subprocess; runs arrive as WebSocket frames (no HTTP),
  wait in an ``asyncio.Queue``, go out to the workers, come back acked. No Django, no records.
- ``ours, ws enqueue``: Daphne serving ``bench.consumer_asgi``; runs arrive the same way, on a
  bench-only route that calls ``lifecycle.create`` (validated, recorded durably, queued: what
  ``POST /api/task_runs/`` does, minus Django's HTTP handling). This is the like-for-like row:
  the target (>= 40% of the ceiling) applies to it.
- ``ours, POST``: the same server, runs created with ``POST /api/task_runs/``: the whole path a
  producer takes. It is bounded by Daphne + Django's HTTP handling (see the http_enqueue stage).

Throughput: 8 producers in closed loop (next run when the last was answered) and the workers
acking each run as it arrives, ``runs`` runs, from the first send to the last ack. Latency:
one run at a time (nothing queued), from the producer's send to the worker's receive. Idle: the
server's CPU (psutil, the server process) while 100 subscribed workers wait.

The load generator is one asyncio loop in this process; on two cores it shares the machine with
the server, alike for every row.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from bench import common
from bench.consumer_clients import HttpProducer, Workers, WsProducer

NAME = "consumer"
SETTINGS = [(1, 1), (1, 8), (4, 1), (4, 8)]  # (worker connections, prefetch)
QUICK_SETTINGS = [(1, 1), (4, 8)]  # the aggregate quick run must stay under two minutes
PRODUCERS = 8
IDLE_WORKERS = 100
TARGET_RATIO = 0.40
IDLE_MAX_PCT = 1.0
ROOT = common.ROOT
TICK_S = 1 / os.sysconf("SC_CLK_TCK")  # the resolution of a process's CPU times
KINDS = ("ceiling", "ws", "post")
LABELS = {"ceiling": "ceiling (bare websockets)", "ws": "ours, ws enqueue", "post": "ours, POST"}


# -- one measurement -------------------------------------------------------------------------------


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def _throughput(
    port: int, pid: int, kind: str, workers: int, prefetch: int, runs: int
) -> dict:
    key = f"bench.consumer.{uuid.uuid4().hex[:8]}"
    pool = Workers(port, key, workers, prefetch)
    await pool.open()
    producers = [(HttpProducer if kind == "post" else WsProducer)(port) for _ in range(PRODUCERS)]
    await asyncio.gather(*(p.open() for p in producers))

    async def produce(producer, ids: list[str]) -> None:
        for run_id in ids:
            await producer.create(key, run_id)

    async def batch(count: int) -> float:
        ids = [str(uuid.uuid4()) for _ in range(count)]
        pool.expect(count)
        started = time.perf_counter()
        share = -(-count // PRODUCERS)
        await asyncio.gather(
            *(produce(p, ids[i * share : (i + 1) * share]) for i, p in enumerate(producers))
        )
        await asyncio.wait_for(pool.all_in.wait(), 120)
        assert set(pool.received) == set(ids), "a run was lost or not ours"
        return time.perf_counter() - started

    await batch(max(20, runs // 10))  # warm-up: code paths, connections, the database file
    latencies = []
    for _ in range(max(20, runs // 10)):  # one run at a time: the pipeline's own latency
        run_id = str(uuid.uuid4())
        pool.expect(1)
        sent = time.perf_counter()
        await producers[0].create(key, run_id)
        await asyncio.wait_for(pool.all_in.wait(), 30)
        latencies.append(pool.received[run_id] - sent)
    server = psutil.Process(pid)
    cpu_before = _cpu_seconds(server)
    elapsed = await batch(runs)
    cpu_used = _cpu_seconds(server) - cpu_before
    for producer in producers:
        await producer.close()
    await pool.close()
    p50, p99 = common.p50_p99(latencies)
    return {
        "runs": runs,
        "runs_per_s": runs / elapsed,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "latency_samples": len(latencies),
        "server_cpu_ms_per_run": 1000 * cpu_used / runs,
    }


async def _idle_cpu(port: int, pid: int, seconds: float) -> float:
    """% of one core the server spends while ``IDLE_WORKERS`` subscribed workers wait."""
    pool = Workers(port, f"bench.idle.{uuid.uuid4().hex[:8]}", IDLE_WORKERS, 1)
    await pool.open()
    await asyncio.sleep(1.0)  # every subscribe handled, every delivery task asleep
    process = psutil.Process(pid)
    before, wall = process.cpu_times(), time.perf_counter()
    await asyncio.sleep(seconds)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    await pool.close()
    return 100 * used / (time.perf_counter() - wall)


# -- the servers -------------------------------------------------------------------------------


class CeilingServer:
    """``python -m bench.ws_ceiling`` in a subprocess on a free port."""

    def __init__(self) -> None:
        from taskqueue_app.testing import free_port

        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> CeilingServer:
        from taskqueue_app.testing import wait_for_port

        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.ws_ceiling", "--port", str(self.port)], cwd=ROOT
        )
        wait_for_port(self.port, self.process, "the ceiling server")
        return self

    def stop(self) -> None:
        from taskqueue_app.testing import end_process

        end_process(self.process)


def _ours(tmp: str):
    from project.servers import ProjectServer

    return ProjectServer(
        "bench.consumer_asgi:application",
        settings="bench.settings",
        database=Path(tmp) / "bench.sqlite3",
        env={"DJANGO_DEBUG": "0"},
        cwd=ROOT,
    )


def _config(quick: bool) -> dict[str, Any]:
    if quick:
        return {"runs": {"ceiling": 1000, "ws": 400, "post": 200}, "idle_seconds": 5.0}
    return {"runs": {"ceiling": 4000, "ws": 1500, "post": 600}, "idle_seconds": 10.0}


def run(quick: bool) -> dict[str, Any]:
    """Every setting against the ceiling and ours; idle CPU of both. A JSON-able dict."""
    common.setup_django()
    config = _config(quick)
    rows: dict[str, dict[str, Any]] = {}
    idle: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as tmp:
        ceiling, ours = CeilingServer().start(), _ours(tmp).start()
        try:
            for workers, prefetch in QUICK_SETTINGS if quick else SETTINGS:
                row = rows[f"{workers}x{prefetch}"] = {"workers": workers, "prefetch": prefetch}
                for kind in KINDS:
                    server = ceiling if kind == "ceiling" else ours
                    common.progress(
                        f"{NAME}: {LABELS[kind]}, {workers} worker(s), prefetch {prefetch}"
                    )
                    row[kind] = asyncio.run(
                        _throughput(
                            server.port,
                            server.process.pid,
                            kind,
                            workers,
                            prefetch,
                            config["runs"][kind],
                        )
                    )
                for kind in ("ws", "post"):
                    row[kind]["of_ceiling"] = row[kind]["runs_per_s"] / row["ceiling"]["runs_per_s"]
            for label, server in (("ceiling", ceiling), ("ours", ours)):
                common.progress(f"{NAME}: idle CPU, {IDLE_WORKERS} workers, {label}")
                pid = server.process.pid
                idle[label] = asyncio.run(_idle_cpu(server.port, pid, config["idle_seconds"]))
        finally:
            ceiling.stop()
            ours.stop()
    targets = [
        common.target(
            f"throughput, {row['workers']} worker(s), prefetch {row['prefetch']}",
            f"ours (ws enqueue) >= {TARGET_RATIO:.0%} of the ceiling",
            round(row["ws"]["of_ceiling"], 3),
            row["ws"]["of_ceiling"] >= TARGET_RATIO,
        )
        for row in rows.values()
    ]
    targets.append(
        common.target(
            f"idle CPU, {IDLE_WORKERS} workers",
            f"< {IDLE_MAX_PCT}% of one core",
            round(idle["ours"], 3),
            idle["ours"] < IDLE_MAX_PCT,
        )
    )
    return {
        "config": config,
        "rows": rows,
        "idle_cpu_pct": idle,
        **common.environment(),
        "targets": targets,
    }


def report(result: dict[str, Any]) -> str:
    """The Markdown table of a ``run`` result, with the notes needed to read it."""
    fmt = common.fmt_number
    met = common.met_marks(result["targets"])
    lines = []
    for row in result["rows"].values():
        setting = f"{row['workers']} worker(s), prefetch {row['prefetch']}"
        for kind in KINDS:
            cell = row[kind]
            share = f"{cell['of_ceiling']:.0%}" if kind != "ceiling" else "100%"
            verdict = met[f"throughput, {setting}"] if kind == "ws" else ""
            lines.append(
                [
                    f"{setting}: {LABELS[kind]}",
                    fmt(cell["runs_per_s"]),
                    fmt(cell["p50_ms"]),
                    fmt(cell["p99_ms"]),
                    fmt(cell["server_cpu_ms_per_run"]),
                    share,
                    verdict,
                ]
            )
    table = common.markdown_table(
        [
            "setting: server",
            "runs/s",
            "p50 (ms)",
            "p99 (ms)",
            "server CPU (ms/run)",
            "of ceiling",
            "met (>= 40%)",
        ],
        lines,
        "lrrrrrl",
    )
    idle = result["idle_cpu_pct"]
    name = f"idle CPU, {IDLE_WORKERS} workers"
    idle_table = common.markdown_table(
        ["idle, 100 subscribed workers", "ours", "ceiling", "target", "met"],
        [
            [
                "server CPU (% of one core)",
                fmt(idle["ours"]),
                fmt(idle["ceiling"]),
                f"< {IDLE_MAX_PCT}%",
                met[name],
            ]
        ],
        "lrrll",
    )
    runs = result["config"]["runs"]
    notes = [
        f"- runs/s: {PRODUCERS} closed-loop producers, workers ack each run on arrival; "
        f"{runs['ceiling']:,} / {runs['ws']:,} / {runs['post']:,} runs (ceiling / ws / POST) "
        "after a warm-up, from the first send to the last ack.",
        "- p50/p99: one run at a time, from the producer's send to the worker's receive.",
        "- server CPU: user + system time of the server process (all its threads: the records "
        "writer's too) during the measured runs, per run.",
        "- ceiling: `bench/ws_ceiling.py`, bare asyncio + websockets, runs sent as frames to an "
        "asyncio.Queue (no HTTP, no database). ours, ws enqueue: Daphne, the same frames on a "
        "bench-only route calling `lifecycle.create` (durable record). ours, POST: "
        "`POST /api/task_runs/` through Django (bounded by the http_enqueue stage's figures).",
        "- Idle: psutil CPU time of the server process over "
        f"{result['config']['idle_seconds']:g} s, counted in {1000 * TICK_S:g} ms ticks (0 means "
        f"under {100 * TICK_S / result['config']['idle_seconds']:.2g}% of a core); Prefect's "
        "server spends about 0.44% of a core per idle worker.",
        f"{common.environment_note(result)}; load generator in the same machine.",
    ]
    return table + "\n\n" + idle_table + "\n\n" + "\n".join(notes)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.consumer [--quick]``: measure and print the tables."""
    common.stage_main(NAME, __doc__, "fewer runs, a 5 s idle window", run, report, argv)


if __name__ == "__main__":
    main()

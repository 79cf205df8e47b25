"""Stage costs: how the server's CPU per run and memory per queued run grow with the number of
task keys (1, 10, 100, 1,000) and of connected workers (1, 10, 100).

Daphne serving ``bench.consumer_asgi`` (the consumer stage's server: runs arrive as WebSocket
frames and go through ``lifecycle.create``, recorded durably). CPU per run: ``runs`` runs spread
round-robin over the keys, 8 producers in closed loop, the workers (one connection subscribed to
every key, or W connections on one key, prefetch 8) acking each run as it arrives; the Daphne
process's CPU time over the burst divided by the runs. Memory per queued run: ``queued`` runs
spread over the keys with no worker; the growth of Daphne's resident set divided by the runs.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from typing import Any

import psutil

from bench import common
from bench.consumer import PRODUCERS, _cpu_seconds, _ours
from bench.consumer_clients import Workers, WsProducer

NAME = "costs"
KEY_COUNTS = (1, 10, 100, 1000)
WORKER_COUNTS = (1, 10, 100)
PREFETCH = 8


async def _burst(port: int, pid: int, keys: list[str], workers: int, runs: int) -> float:
    """Server CPU ms per run for ``runs`` runs over ``keys``, ``workers`` connections acking."""
    pool = Workers(port, keys if workers == 1 else keys[0], workers, PREFETCH)
    await pool.open()
    producers = [WsProducer(port) for _ in range(PRODUCERS)]
    await asyncio.gather(*(p.open() for p in producers))

    async def produce(producer, items: list[tuple[str, str]]) -> None:
        for key, run_id in items:
            await producer.create(key, run_id)

    async def batch(count: int) -> None:
        items = [(keys[i % len(keys)], str(uuid.uuid4())) for i in range(count)]
        pool.expect(count)
        await asyncio.gather(*(produce(p, items[i::PRODUCERS]) for i, p in enumerate(producers)))
        await asyncio.wait_for(pool.all_in.wait(), 300)

    await batch(max(100, runs // 10))  # warm-up: every key's queue exists, every path is hot
    server = psutil.Process(pid)
    before = _cpu_seconds(server)
    await batch(runs)
    used = _cpu_seconds(server) - before
    for producer in producers:
        await producer.close()
    await pool.close()
    return 1000 * used / runs


async def _memory(port: int, pid: int, keys: list[str], queued: int) -> float:
    """Bytes of Daphne's resident set per run queued over ``keys`` (no worker)."""
    producers = [WsProducer(port) for _ in range(PRODUCERS)]
    await asyncio.gather(*(p.open() for p in producers))

    async def produce(producer, items: list[tuple[str, str]]) -> None:
        for key, run_id in items:
            await producer.create(key, run_id)

    server = psutil.Process(pid)
    before = server.memory_info().rss
    items = [(keys[i % len(keys)], str(uuid.uuid4())) for i in range(queued)]
    await asyncio.gather(*(produce(p, items[i::PRODUCERS]) for i, p in enumerate(producers)))
    await asyncio.sleep(0.5)  # the last records' writes settle before the reading
    grown = server.memory_info().rss - before
    for producer in producers:
        await producer.close()
    return grown / queued


def _config(quick: bool) -> dict[str, Any]:
    return {"runs": 1_000 if quick else 4_000, "queued": 5_000 if quick else 20_000}


def run(quick: bool) -> dict[str, Any]:
    common.setup_django()
    config = _config(quick)
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="taskqueue-costs-") as tmp:
        for count in KEY_COUNTS:
            # A fresh server and database per row: its memory and its queues start empty (a
            # database of an earlier row would be restored into them).
            daphne = _ours(tempfile.mkdtemp(dir=tmp)).start()
            try:
                prefix = f"bench.costs.{uuid.uuid4().hex[:6]}"
                # Memory first, on the fresh server: after a burst, freed memory would be
                # reused by the queued runs and hide what they cost.
                common.progress(f"{NAME}: {count} key(s), {config['queued']:,} queued")
                idle_keys = [f"{prefix}.idle.{i}" for i in range(count)]
                memory = asyncio.run(
                    _memory(daphne.port, daphne.process.pid, idle_keys, config["queued"])
                )
                common.progress(f"{NAME}: {count} key(s), 1 worker")
                keys = [f"{prefix}.{i}" for i in range(count)]
                cpu = asyncio.run(_burst(daphne.port, daphne.process.pid, keys, 1, config["runs"]))
            finally:
                daphne.stop()
            rows[f"keys={count}"] = {"keys": count, "workers": 1, "cpu_ms": cpu, "bytes": memory}
        for count in WORKER_COUNTS:
            daphne = _ours(tempfile.mkdtemp(dir=tmp)).start()
            try:
                common.progress(f"{NAME}: 1 key, {count} worker(s)")
                key = [f"bench.costs.w.{uuid.uuid4().hex[:6]}"]
                started = time.perf_counter()
                cpu = asyncio.run(
                    _burst(daphne.port, daphne.process.pid, key, count, config["runs"])
                )
                common.progress(
                    f"{NAME}: {count} worker(s) took {time.perf_counter() - started:.1f}s"
                )
            finally:
                daphne.stop()
            rows[f"workers={count}"] = {"keys": 1, "workers": count, "cpu_ms": cpu}
    return {"config": config, "rows": rows, **common.environment()}


def report(result: dict[str, Any]) -> str:
    fmt = common.fmt_number
    key_rows = [
        [str(r["keys"]), fmt(r["cpu_ms"]), fmt(r["bytes"] / 1024)]
        for r in result["rows"].values()
        if r["workers"] == 1 and "bytes" in r
    ]
    worker_rows = [
        [str(r["workers"]), fmt(r["cpu_ms"])] for r in result["rows"].values() if "bytes" not in r
    ]
    config = result["config"]
    return "\n".join(
        [
            common.markdown_table(
                ["task keys", "server CPU ms/run", "KiB per queued run"], key_rows, "rrr"
            ),
            "",
            common.markdown_table(
                ["connected workers (1 key)", "server CPU ms/run"], worker_rows, "rr"
            ),
            "",
            f"- CPU: {config['runs']:,} runs round-robin over the keys, {PRODUCERS} producers "
            f"in closed loop, prefetch {PREFETCH}; one worker connection subscribed to every key "
            "(first table) or W connections on one key (second). Memory: "
            f"{config['queued']:,} runs queued over the keys with no worker, Daphne's RSS growth "
            "per run (records included in SQLite's page cache).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    common.stage_main(NAME, __doc__, "1,000 runs, 5,000 queued", run, report, argv)


if __name__ == "__main__":
    main()

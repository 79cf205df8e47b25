"""Benchmark of ``POST /api/task_runs/`` against one Daphne process, beside the server's ceiling.

The server is the example project under ``bench.settings`` (DEBUG off, durable records on a
SQLite file in WAL mode), started with ``taskqueue_app.testing.ProjectServer``. The ceiling is
``bench/ceiling/``, a trivial async view in the same process that answers 201 without touching
a queue or the database: the cost of Daphne + Django's middleware alone.

The load generator is one asyncio loop in this process over raw keep-alive HTTP/1.1 sockets,
one per client, each sending its next request when the answer to the last has arrived (closed
loop). It costs a few tens of microseconds per request, so on two cores it leaves the server
its own core.
"""

from __future__ import annotations

import asyncio
import json
import pstats
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common

NAME = "http_enqueue"
CLIENTS = (8, 64)
TARGET_RATIO = 0.60
TASK_KEY = "bench.http"
API_PATH = "/api/task_runs/"
CEILING_PATH = "/bench/ceiling/"
BODY = json.dumps(
    {"task_key": TASK_KEY, "parameters": {"args": [1, "two"], "kwargs": {"x": 3}}},
    separators=(",", ":"),
).encode()


def _request(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response off a keep-alive connection; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _client(
    port: int, request: bytes, measure_from: float, stop_at: float, out: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies, statuses = out["latencies"], out["statuses"]
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                break
            writer.write(request)
            status = await _read_response(reader)
            out["all_statuses"][status] += 1
            if started >= measure_from:
                latencies.append(time.perf_counter() - started)
                statuses[status] += 1
    finally:
        writer.close()


async def _load(port: int, path: str, clients: int, warmup: float, seconds: float) -> dict:
    """``clients`` closed-loop connections for ``warmup + seconds``; what the last part saw."""
    out: dict[str, Any] = {
        "latencies": [],
        "statuses": Counter(),
        "all_statuses": Counter(),
    }
    begin = time.perf_counter()
    measure_from, stop_at = begin + warmup, begin + warmup + seconds
    await asyncio.gather(
        *(_client(port, _request(path, BODY), measure_from, stop_at, out) for _ in range(clients))
    )
    return {
        "window": max(time.perf_counter(), stop_at) - measure_from,
        "latencies": out["latencies"],
        "statuses": out["statuses"],
        "created_total": out["all_statuses"][201],
    }


def _figures(rounds: list[dict]) -> dict[str, Any]:
    """Requests/s over all rounds' windows, percentiles over all their latencies."""
    latencies = [value for one in rounds for value in one["latencies"]]
    statuses: Counter = sum((one["statuses"] for one in rounds), Counter())
    p50, p99 = common.p50_p99(latencies) if latencies else (None, None)
    return {
        "requests_per_s": len(latencies) / sum(one["window"] for one in rounds),
        "p50_ms": p50 * 1000 if p50 is not None else None,
        "p99_ms": p99 * 1000 if p99 is not None else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "created_total": sum(one["created_total"] for one in rounds),
    }


def _recorded(database: Path) -> int:
    """Run records of the benchmark's key in the server's database file."""
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM taskqueue_app_taskrunrecord WHERE task_key = ?", (TASK_KEY,)
        ).fetchone()
    return count


def _config(quick: bool) -> dict[str, float]:
    # Ceiling and API alternate in rounds, so that a neighbour's load on the machine falls on
    # both alike.
    if quick:
        return {"rounds": 1, "warmup": 0.5, "seconds": 2.0}
    return {"rounds": 3, "warmup": 0.5, "seconds": 4.0}


def _server(tmp: str, profile: str | None = None):
    from project.servers import ProjectServer

    env = {"DJANGO_DEBUG": "0"}
    if profile:
        env["TASKQUEUE_BENCH_PROFILE"] = profile
    return ProjectServer(
        "bench.ceiling_asgi:application",
        settings="bench.settings",
        database=Path(tmp) / "bench.sqlite3",
        env=env,
        cwd=common.ROOT,
    )


def run(quick: bool) -> dict[str, Any]:
    """Ceiling and API, 8 and 64 clients, one server; the figures as a JSON-able dict."""
    config = _config(quick)
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as tmp:
        server = _server(tmp)
        server.start()
        try:
            for clients in CLIENTS:
                rounds: dict[str, list[dict]] = {"ceiling": [], "api": []}
                for number in range(1, int(config["rounds"]) + 1):
                    for label, path in (("ceiling", CEILING_PATH), ("api", API_PATH)):
                        common.progress(f"{NAME}: {label}, {clients} clients, round {number}")
                        rounds[label].append(
                            asyncio.run(
                                _load(
                                    server.port,
                                    path,
                                    clients,
                                    config["warmup"],
                                    config["seconds"],
                                )
                            )
                        )
                row = figures[str(clients)] = {
                    label: _figures(results) for label, results in rounds.items()
                }
                row["ratio"] = row["api"]["requests_per_s"] / row["ceiling"]["requests_per_s"]
            created = sum(row["api"]["created_total"] for row in figures.values())
            recorded = _recorded(server.database)
        finally:
            server.stop()
    targets = [
        common.target(
            f"enqueue throughput, {clients} clients",
            f">= {TARGET_RATIO:.0%} of the ceiling",
            round(row["ratio"], 3),
            row["ratio"] >= TARGET_RATIO,
        )
        for clients, row in figures.items()
    ]
    targets.append(
        common.target(
            "every 201 is a durable record",
            "records == 201 answers",
            f"{recorded} / {created}",
            recorded == created,
        )
    )
    return {
        "config": config,
        "figures": figures,
        "created": created,
        "recorded": recorded,
        **common.environment(),
        "targets": targets,
    }


def report(result: dict[str, Any]) -> str:
    """The Markdown table of a ``run`` result, with the notes needed to read it."""
    fmt = common.fmt_number
    met = common.met_marks(result["targets"])
    rows = []
    for clients, row in result["figures"].items():
        for label in ("ceiling", "api"):
            cell = row[label]
            errors = sum(n for status, n in cell["statuses"].items() if status != "201")
            is_api = label == "api"
            rows.append(
                [
                    f"{clients} clients, {'POST /api/task_runs/' if is_api else 'ceiling view'}",
                    fmt(cell["requests_per_s"]),
                    fmt(cell["p50_ms"]),
                    fmt(cell["p99_ms"]),
                    str(errors),
                    f"{row['ratio']:.0%}" if is_api else "100%",
                    met[f"enqueue throughput, {clients} clients"] if is_api else "",
                ]
            )
    table = common.markdown_table(
        ["load", "requests/s", "p50 (ms)", "p99 (ms)", "non-201", "of ceiling", "met (>= 60%)"],
        rows,
        "lrrrrrl",
    )
    config = result["config"]
    notes = [
        f"- One Daphne process (`bench.ceiling_asgi`, DEBUG off), SQLite file in WAL mode; per "
        f"row {config['rounds']:g} round(s) of {config['seconds']:g} s measured after "
        f"{config['warmup']:g} s of warm-up, ceiling and API alternating.",
        "- Load: one asyncio loop in the bench process, raw keep-alive HTTP/1.1 sockets, one per "
        "client, closed loop (next request when the answer arrived).",
        "- Ceiling: `bench/ceiling/`, an async view answering 201 through the same middleware, "
        "without queue or database.",
        f"- Durability: {result['recorded']:,} run records for {result['created']:,} answers "
        f"201 ({met['every 201 is a durable record']}).",
        f"{common.environment_note(result)}.",
    ]
    return table + "\n\n" + "\n".join(notes)


def profile(target: str = "api", seconds: float = 5.0, clients: int = 64, top: int = 30) -> str:
    """Run one load (``api`` or ``ceiling``) under cProfile in the server's main thread;
    the top functions by cumulative and by own time."""
    path_of = {"api": API_PATH, "ceiling": CEILING_PATH}
    with tempfile.TemporaryDirectory(prefix="taskqueue-bench-") as tmp:
        path = str(Path(tmp) / "server.prof")
        server = _server(tmp, profile=path)
        server.start()
        try:
            asyncio.run(_load(server.port, path_of[target], clients, 0.5, seconds))
        finally:
            server.stop()
        stats = pstats.Stats(path)
        lines: list[str] = []

        class _Sink:
            def write(self, text: str) -> None:
                lines.append(text)

        stats.stream = _Sink()  # type: ignore[assignment]
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top)
        return "".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.http_enqueue [--quick | --profile]``: measure and print the table."""
    parser = common.stage_parser(NAME, __doc__, "2 s per row instead of 10 s")
    parser.add_argument(
        "--profile",
        choices=["api", "ceiling"],
        help="instead: cProfile the server under 64 clients of this load",
    )
    args = parser.parse_args(argv)
    if args.profile:
        print(profile(args.profile))
        return
    print(report(run(args.quick)))


if __name__ == "__main__":
    sys.exit(main())

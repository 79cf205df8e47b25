"""Stage producers: the memory engine (the embedded default) with producers in processes of
their own, over the producer stream and over HTTP, beside Celery 5 with Redis and results.

One Daphne process and one ``python -m taskqueue_app.worker --limit 10``; producer processes
call ``task.enqueue()`` with ``TASKQUEUE_SERVER_URL`` set, once with the default transport (the
producer stream: one kept-open WebSocket per process, creates pipelined) and once with
``OPTIONS["transport"] = "http"`` (one request per run, the path before the stream). Measured
the scale_out stage's way: paced runs for latency (enqueue to task start), repeated bursts for
throughput, the server's CPU per run.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from bench import common
from bench.peers.celery_peer import measure_celery
from bench.peers.common import measured_or_skipped
from bench.peers.ours_peer import Records, server, start_worker, wait_for_worker
from bench.peers.redis_server import stop
from bench.scale_out import burst_config, producer_phases

NAME = "producers"
TRANSPORTS = ("websocket", "http")
# (result key, transport, ASGI server): the default path, the path before it, and both under
# Uvicorn beside Daphne.
SYSTEMS = (
    ("websocket", "websocket", "daphne"),
    ("http", "http", "daphne"),
    ("uvicorn_websocket", "websocket", "uvicorn"),
    ("uvicorn_http", "http", "uvicorn"),
)


def measure_ours(
    config: dict[str, Any], tmp: Path, transport: str, asgi_server: str = "daphne"
) -> dict[str, Any]:
    """One server process on the memory engine, one worker, producer processes over
    ``transport``."""
    name = f"producers-{transport}-{asgi_server}"
    daphne = server(tmp, name, asgi_server).start()
    log = open(tmp / f"{name}-worker.log", "wb")  # noqa: SIM115
    worker = start_worker(daphne.api_url, config["limit"], log)
    try:
        wait_for_worker(daphne.api_url)
        records = Records(daphne.database)
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "bench.peers.ours_settings",
            "DJANGO_DEBUG": "0",
            # The producers' own database (none is needed: the server records the runs).
            "TASKQUEUE_DB": str(tmp / f"{name}-producer.sqlite3"),
            "TASKQUEUE_SERVER_URL": daphne.api_url,
            "BENCH_TRANSPORT": transport,
        }
        cpu = {"server_cpu_ms_per_run": [daphne.process.pid]}
        return producer_phases(env, records, config, cpu)
    finally:
        stop(worker)
        daphne.stop()
        log.close()


def _targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    stream, http, celery = (
        result.get(k) or {"skipped": "not run"} for k in TRANSPORTS + ("celery",)
    )
    targets = []
    if "skipped" not in stream and "skipped" not in http:
        ratio = stream["burst"]["runs_per_s"] / http["burst"]["runs_per_s"]
        targets.append(
            common.target("stream vs HTTP", ">= 5x the HTTP path's runs/s", ratio, ratio >= 5)
        )
    if "skipped" not in stream and "skipped" not in celery:
        p50 = celery["paced"]["p50_ms"] / stream["paced"]["p50_ms"]
        targets.append(
            common.target("p50 vs Celery", "p50 <= Celery's (ratio >= 1)", p50, p50 >= 1)
        )
        ratio = stream["burst"]["runs_per_s"] / celery["burst"]["runs_per_s"]
        targets.append(common.target("runs/s vs Celery", "reported", ratio, True))
    return targets


def run(quick: bool) -> dict[str, Any]:
    common.setup_django()
    config = burst_config(quick)
    result: dict[str, Any] = {"config": config}
    with tempfile.TemporaryDirectory(prefix="taskqueue-producers-") as name:
        tmp = Path(name)
        for key, transport, asgi_server in SYSTEMS:
            common.progress(f"{NAME}: ours, memory engine, {transport}, {asgi_server}")
            measure = partial(measure_ours, transport=transport, asgi_server=asgi_server)
            result[key] = measured_or_skipped(
                NAME, f"ours ({transport}, {asgi_server})", measure, config, tmp
            )
        common.progress(f"{NAME}: Celery 5 + Redis")
        result["celery"] = measured_or_skipped(NAME, "Celery", measure_celery, config, tmp)
    result["targets"] = _targets(result)
    return result


LABELS = {
    "websocket": "taskqueue, producer stream (Daphne)",
    "http": "taskqueue, HTTP, one POST per run (Daphne)",
    "uvicorn_websocket": "taskqueue, producer stream (Uvicorn)",
    "uvicorn_http": "taskqueue, HTTP, one POST per run (Uvicorn)",
    "celery": "Celery 5 + Redis, with results",
}


def report(result: dict[str, Any]) -> str:
    fmt = common.fmt_number
    rows = []
    for key, label in LABELS.items():
        entry = result.get(key) or {"skipped": "not run"}
        if "skipped" in entry:
            rows.append([label, "—", "—", "—", "—", f"skipped: {entry['skipped']}"])
            continue
        burst, paced = entry["burst"], entry["paced"]
        cpu = burst.get("server_cpu_ms_per_run", burst.get("redis_cpu_ms_per_run"))
        repeats = ", ".join(fmt(v) for v in burst.get("repeats_runs_per_s", []))
        rows.append(
            [
                label,
                fmt(burst["runs_per_s"]),
                fmt(paced["p50_ms"]),
                fmt(paced["p99_ms"]),
                fmt(cpu),
                f"repeats: {repeats} runs/s",
            ]
        )
    table = common.markdown_table(
        ["path", "runs/s", "p50 ms", "p99 ms", "server CPU ms/run", "notes"], rows, "lrrrrl"
    )
    config = result["config"]
    notes = [
        "",
        f"- {config['producers']} producer processes call `task.enqueue()`; one Daphne on the "
        f"memory engine, one `python -m taskqueue_app.worker --limit {config['limit']}`. "
        "Celery: the end_to_end stage's peer. Server CPU: Daphne's (Celery: redis-server's).",
        *common.burst_notes(config, result["targets"]),
    ]
    return "\n".join([table, *notes])


def main(argv: list[str] | None = None) -> None:
    common.stage_main(NAME, __doc__, "1,000 runs", run, report, argv)


if __name__ == "__main__":
    main()

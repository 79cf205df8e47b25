"""End to end: no-op tasks through one worker process, ours against Celery, RQ and Prefect.

Ours: the example project under Daphne (``bench.settings``, DEBUG off, records in SQLite WAL),
one ``python -m taskqueue_app.worker --limit 10`` process, runs enqueued in the server
(``await task.aenqueue()`` in a bench-only view) and from another process (the Django Tasks
backend from this process, over the producer stream). Celery 5 with Redis as broker and result
backend, one worker process with a pool of 10 threads. RQ 2 on Redis with one non-forking
``SimpleWorker``. Prefect 3.9 background tasks (``task.delay`` + ``serve``) against a local
Prefect server. Every system runs the same phases (``bench/peers/phases.py``): a paced phase for
latency, repeated bursts for throughput. Peers live in their own venvs under the user's cache
directory (``bench/peers/venvs.py``).
"""

from __future__ import annotations

import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.peers.celery_peer import measure_celery
from bench.peers.common import measured_or_skipped
from bench.peers.ours_peer import SERVER_BATCH, measure_ours
from bench.peers.prefect_peer import measure_prefect
from bench.peers.rq_peer import measure_rq

NAME = "end_to_end"
LIMIT = 10
PRODUCERS = 4
PEERS = {"celery": "Celery", "rq": "RQ", "prefect": "Prefect"}
LABELS = {
    "ours": "taskqueue, enqueued in the server (aenqueue)",
    "ours_http": "taskqueue, enqueued from another process (producer stream)",
    "celery": "Celery 5 + Redis, with results",
    "rq": "RQ 2 + Redis, SimpleWorker",
    "prefect": "Prefect 3.9 background tasks",
}
SERVER_OF = {
    "ours": "Daphne process",
    "ours_http": "Daphne process",
    "celery": "redis-server",
    "rq": "redis-server",
    "prefect": "Prefect server processes",
}


def _config(quick: bool) -> dict[str, Any]:
    return {
        "quick": quick,
        "repeats": 3,
        "runs": 1_000 if quick else 5_000,
        "paced_runs": 100 if quick else 300,
        "paced_rate": 100,
        "warmup": 50,
        "producers": PRODUCERS,
        "limit": LIMIT,
        "http_runs": 300 if quick else 1_000,
        "http_repeats": 1 if quick else 3,
        "prefect_runs": 60,
    }


def systems(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every system's entry by key (``ours``, ``ours_http``, peers), in table order."""
    out = {"ours": result["ours"]["in_server"], "ours_http": result["ours"]["http"]}
    out.update({key: result.get(key) or {"skipped": "not run"} for key in PEERS})
    return out


def _targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours (enqueued in the server) ahead of every peer that ran, on runs/s and on p50."""
    ours = result["ours"]["in_server"]
    targets = []
    for key, name in PEERS.items():
        peer = result.get(key) or {"skipped": "not run"}
        if "skipped" in peer:
            continue
        ratio = ours["burst"]["runs_per_s"] / peer["burst"]["runs_per_s"]
        targets.append(
            common.target(f"throughput vs {name}", f"ours > {name} (runs/s)", ratio, ratio > 1)
        )
        p50_ratio = peer["paced"]["p50_ms"] / ours["paced"]["p50_ms"]
        targets.append(
            common.target(
                f"p50 latency vs {name}", f"ours < {name} (p50 ms)", p50_ratio, p50_ratio > 1
            )
        )
    return targets


def run(quick: bool) -> dict[str, Any]:
    """Ours, then each peer (Prefect only in full mode), one after another."""
    common.setup_django()
    config = _config(quick)
    with tempfile.TemporaryDirectory(prefix="taskqueue-e2e-") as name:
        tmp = Path(name)
        common.progress(f"{NAME}: ours")
        result: dict[str, Any] = {"config": config, "ours": measure_ours(config, tmp)}
        for key, label in PEERS.items():
            common.progress(f"{NAME}: {label}")
            measure = {"celery": measure_celery, "rq": measure_rq, "prefect": measure_prefect}
            result[key] = measured_or_skipped(NAME, label, measure[key], config, tmp)
    result["environment"] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
    }
    result["targets"] = _targets(result)
    return result


def report(result: dict[str, Any]) -> str:
    """The Markdown table of a ``run`` result, with the notes needed to read it."""
    fmt = common.fmt_number
    rows = []
    for key, entry in systems(result).items():
        if "skipped" in entry:
            rows.append([LABELS[key], "—", "—", "—", "—", "—", f"skipped: {entry['skipped']}"])
            continue
        burst, paced = entry["burst"], entry["paced"]
        spread = ", ".join(fmt(value) for value in burst.get("repeats_runs_per_s", []))
        rows.append(
            [
                LABELS[key],
                f"{burst['runs']:,}",
                fmt(burst["runs_per_s"]),
                fmt(paced["p50_ms"]),
                fmt(paced["p99_ms"]),
                fmt(burst.get("server_cpu_ms_per_run")),
                f"repeats: {spread} runs/s; p50 under the burst {fmt(burst['p50_ms'])} ms; "
                f"server: {SERVER_OF[key]}",
            ]
        )
    table = common.markdown_table(
        ["system", "runs", "runs/s", "p50 ms", "p99 ms", "server CPU ms/run", "notes"],
        rows,
        "lrrrrrl",
    )
    config = result["config"]
    verdicts = [
        f"- Target {t['name']}: {t['target']}: {common.fmt_ratio(t['value'])}, {common.verdict(t)}."
        for t in result["targets"]
    ]
    notes = [
        "",
        f"- runs/s: median of {config['repeats']} bursts of `runs` no-op tasks enqueued by "
        f"{config['producers']} producer threads, from the first enqueue to the last completion "
        "the system recorded (ours: the run records' `finished`; Celery: the results' "
        "`date_done`; RQ: the jobs' `ended_at`; Prefect: the last result read back).",
        f"- Ours in the server: a bench-only async view calls `await task.aenqueue()` "
        f"{SERVER_BATCH} times concurrently per request (as views starting background work do; "
        "HTTP only carries the trigger). From another process: `task.enqueue()` in this "
        "process, through `SERVER_URL` over the producer stream (one kept-open WebSocket, "
        "creates pipelined; the producers stage has one `POST` per run beside it).",
        f"- p50/p99: enqueue to task-body start (wall clock), {config['paced_runs']} runs paced "
        f"at {config['paced_rate']}/s after {config['warmup']} warm-up runs; Prefect: "
        f"{max(10, config['prefect_runs'] // 5)} runs at 2/s, bursts of "
        f"{config['prefect_runs']}.",
        "- server CPU: user + system CPU time of the server during the bursts, per run: ours the "
        "Daphne process (queue, records writer thread, WebSocket delivery); Celery and RQ "
        "redis-server only (the broker and result store; the worker's and producer's own CPU "
        "is not counted for anyone); Prefect its server's process tree. Celery's window "
        "includes the producer reading the results back (its `get()` is how completion is "
        "known); the others' ends when every run is done.",
        f"- One worker process each: ours {config['limit']} threads, Celery `--pool threads "
        f"--concurrency {config['limit']}`, RQ's `SimpleWorker` (one job at a time, no fork), "
        f"Prefect `serve(limit={config['limit']})`; log level WARNING.",
        *verdicts,
        f"{common.environment_note(result['environment'])}, {result['environment']['platform']}.",
    ]
    return "\n".join([table, *notes])


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.end_to_end [--quick]``: measure and print the Markdown table."""
    common.stage_main(NAME, __doc__, "1,000 runs; no Prefect", run, report, argv)


if __name__ == "__main__":
    main()

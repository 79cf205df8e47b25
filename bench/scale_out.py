"""Stage scale_out: the Redis engine with producers in processes of their own.

Two Daphne processes on one database and one Redis, a worker on each, and producer processes
calling ``task.enqueue()`` (straight into Redis and the records: no HTTP, no ``SERVER_URL``);
beside Celery 5 with Redis and results, measured in the same stage the same way (paced for
latency, repeated bursts for throughput). The Redis CPU per run is reported beside Celery's.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import phases
from bench.peers.celery_peer import measure_celery
from bench.peers.common import measured_or_skipped
from bench.peers.ours_peer import Records, start_worker, wait_for_worker
from bench.peers.redis_server import RedisServer, stop

NAME = "scale_out"
PRODUCERS, LIMIT = 4, 10


def burst_config(quick: bool) -> dict[str, Any]:
    """The phases of the stages that drive producers (``scale_out``, ``producers``,
    ``postgres``): 3 bursts, 4 producers, a worker ``--limit 10``, runs paced at 100/s."""
    return {
        "quick": quick,
        "repeats": 3,
        "runs": 1_000 if quick else 4_000,
        "paced_runs": 100 if quick else 300,
        "paced_rate": 100,
        "warmup": 50,
        "producers": PRODUCERS,
        "limit": LIMIT,
    }


def producer_process(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.peers.ours_producer", *args],
        cwd=common.ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def paced_producer(env: dict[str, str], count: int, rate: float) -> list[str]:
    process = producer_process(env, "paced", str(count), str(rate))
    out, _ = process.communicate(timeout=600)
    return json.loads(out.strip().splitlines()[-1])["ids"]


def burst_producers(
    env: dict[str, str], count: int, producers: int
) -> tuple[float, list[str], float]:
    """Start, ids enqueued, and the producers' CPU seconds, of one burst of ``count`` runs."""
    shares = [count // producers + (i < count % producers) for i in range(producers)]
    processes = [producer_process(env, "burst", str(share)) for share in shares]
    for process in processes:
        assert process.stdout.readline().strip() == "ready"
    started = time.time()
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    ids: list[str] = []
    cpu = 0.0
    for process in processes:
        answer = json.loads(process.stdout.readline())
        ids += answer["ids"]
        cpu += answer["cpu_s"]
        process.wait(60)
    return started, ids, cpu


def producer_phases(
    env: dict[str, str], records: Any, config: dict[str, Any], cpu: dict[str, list[int]]
) -> dict[str, Any]:
    """Warm-up, paced runs and bursts from producer processes run with ``env``; the paced and
    median burst summaries, with the CPU ms per run of each ``cpu`` field's processes."""
    records.collect(paced_producer(env, config["warmup"], 500))
    latencies, _ = records.collect(paced_producer(env, config["paced_runs"], config["paced_rate"]))
    repeats = []
    for _ in range(config["repeats"]):
        before = {field: phases.cpu_seconds(pids) for field, pids in cpu.items()}
        started, ids, producers_cpu = burst_producers(env, config["runs"], config["producers"])
        records.wait(ids)
        after = {field: phases.cpu_seconds(pids) for field, pids in cpu.items()}
        burst_latencies, finished = records.collect(ids)
        one = phases.summary(burst_latencies, started, finished)
        for field in cpu:
            one[field] = 1000 * (after[field] - before[field]) / config["runs"]
        one["producer_cpu_ms_per_run"] = 1000 * producers_cpu / config["runs"]
        repeats.append(one)
    fields = (*cpu, "producer_cpu_ms_per_run")
    return {"paced": phases.summary(latencies), "burst": phases.median_burst(repeats, fields)}


def measure_ours_on_redis(
    config: dict[str, Any], tmp: Path, pg: Any = None, asgi_server: str = "daphne"
) -> dict[str, Any]:
    """Two Daphne (or ``asgi_server``) processes, a worker on each, producers in processes of
    their own; the records on one SQLite file, or with ``pg`` (a ``PostgresServer``) in a
    PostgreSQL database."""
    from bench.postgres import PgRecords
    from project.servers import ProjectServer

    # A database of its own per measurement (the same stage runs it on one core again).
    sqlite = tmp / f"scale-{asgi_server}-{uuid.uuid4().hex[:8]}.sqlite3"
    with RedisServer(tmp) as redis:
        env = {"DJANGO_DEBUG": "0", "TASKQUEUE_REDIS_URL": redis.url}
        if pg is None:
            env["TASKQUEUE_DB"] = str(sqlite)
        else:
            name = pg.create_database(f"scale_{os.getpid()}")
            env.update(pg.environ(name))
        servers = [
            ProjectServer(
                settings="bench.peers.ours_settings",
                database=sqlite,
                database_env="TASKQUEUE_DB" if pg is None else None,
                env=env,
                cwd=common.ROOT,
                server=asgi_server,
            )
            for _ in range(2)
        ]
        servers[0].start()
        servers[1]._migrated = True  # noqa: SLF001 - one database, migrated once
        servers[1].start()
        logs = [open(tmp / f"scale-worker-{i}.log", "wb") for i in range(2)]  # noqa: SIM115
        workers = [
            start_worker(s.api_url, config["limit"], log)
            for s, log in zip(servers, logs, strict=True)
        ]
        try:
            for daphne in servers:
                wait_for_worker(daphne.api_url)
            if pg is None:
                records: Records = Records(servers[0].database)
            else:
                records = PgRecords(pg.dsn(env["TASKQUEUE_PG_NAME"]))
            producer_env = {
                **os.environ,
                **env,
                "DJANGO_SETTINGS_MODULE": "bench.peers.ours_settings",
                "TASKQUEUE_SERVER_URL": "",
            }
            cpu = {
                "server_cpu_ms_per_run": [s.process.pid for s in servers],
                "redis_cpu_ms_per_run": [redis.pid],
                "worker_cpu_ms_per_run": [worker.pid for worker in workers],
            }
            return producer_phases(producer_env, records, config, cpu)
        finally:
            for worker in workers:
                stop(worker)
            for daphne in servers:
                daphne.stop()
            for log in logs:
                log.close()


def _targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    ours, celery = result["ours"], result.get("celery") or {"skipped": "not run"}
    if "skipped" in ours or "skipped" in celery:
        return []
    ratio = ours["burst"]["runs_per_s"] / celery["burst"]["runs_per_s"]
    p50 = celery["paced"]["p50_ms"] / ours["paced"]["p50_ms"]
    return [
        common.target("throughput vs Celery", ">= 1.5x Celery's runs/s", ratio, ratio >= 1.5),
        common.target("p50 vs Celery", "p50 <= Celery's (ratio >= 1)", p50, p50 >= 1),
    ]


def _on_postgres(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from taskqueue_app.testing_postgres import PostgresServer

    if not PostgresServer.available():
        return {"skipped": "PostgreSQL's initdb and pg_ctl were not found"}
    with PostgresServer() as pg:
        return measured_or_skipped(
            NAME, "ours (PostgreSQL)", lambda c, t: measure_ours_on_redis(c, t, pg), config, tmp
        )


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """This process, and every process it starts meanwhile, on one CPU: the same systems on
    one core and on all of them are the stage's measured simulation of scaling with cores."""
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, everything)


def _on_one_core(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Ours and Celery again, every process of theirs on one core."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        return {"skipped": "needs two CPUs or more, and CPU affinity"}
    with one_core():
        common.progress(f"{NAME}: ours and Celery again, on one core")
        return {
            "ours": measured_or_skipped(NAME, "ours, one core", measure_ours_on_redis, config, tmp),
            "celery": measured_or_skipped(NAME, "Celery, one core", measure_celery, config, tmp),
        }


def run(quick: bool) -> dict[str, Any]:
    common.setup_django()
    config = burst_config(quick)
    with tempfile.TemporaryDirectory(prefix="taskqueue-scale-") as name:
        tmp = Path(name)
        common.progress(f"{NAME}: ours on Redis, 2 servers, {config['producers']} producers")
        result: dict[str, Any] = {"config": config}
        result["ours"] = measured_or_skipped(NAME, "ours", measure_ours_on_redis, config, tmp)
        common.progress(f"{NAME}: ours on Redis, 2 Uvicorn servers")
        result["ours_uvicorn"] = measured_or_skipped(
            NAME,
            "ours (Uvicorn)",
            lambda c, t: measure_ours_on_redis(c, t, asgi_server="uvicorn"),
            config,
            tmp,
        )
        common.progress(f"{NAME}: ours on Redis, the records on PostgreSQL")
        result["ours_pg"] = _on_postgres(config, tmp)
        common.progress(f"{NAME}: Celery 5 + Redis")
        result["celery"] = measured_or_skipped(NAME, "Celery", measure_celery, config, tmp)
        result["one_core"] = _on_one_core(config, tmp)
    result["targets"] = _targets(result)
    return result


def report(result: dict[str, Any]) -> str:
    fmt = common.fmt_number
    rows = []
    systems = (
        ("ours", "taskqueue on Redis, 2 servers, SQLite"),
        ("ours_uvicorn", "taskqueue on Redis, 2 Uvicorn servers, SQLite"),
        ("ours_pg", "taskqueue on Redis, 2 servers, PostgreSQL"),
        ("celery", "Celery 5 + Redis"),
    )
    for key, label in systems:
        entry = result.get(key) or {"skipped": "not run"}
        if "skipped" in entry:
            rows.append([label, "—", "—", "—", "—", "—", "—", "—", f"skipped: {entry['skipped']}"])
            continue
        burst, paced = entry["burst"], entry["paced"]
        redis_cpu = burst.get("redis_cpu_ms_per_run", burst.get("server_cpu_ms_per_run"))
        daphne_cpu = burst.get("redis_cpu_ms_per_run") and burst.get("server_cpu_ms_per_run")
        rows.append(
            [
                label,
                fmt(burst["runs_per_s"]),
                fmt(paced["p50_ms"]),
                fmt(paced["p99_ms"]),
                fmt(redis_cpu),
                fmt(daphne_cpu) if daphne_cpu else "—",
                fmt(burst.get("worker_cpu_ms_per_run")),
                fmt(burst.get("producer_cpu_ms_per_run")),
                "repeats: "
                + ", ".join(fmt(v) for v in burst.get("repeats_runs_per_s", []))
                + " runs/s",
            ]
        )
    table = common.markdown_table(
        [
            "system",
            "runs/s",
            "p50 ms",
            "p99 ms",
            "redis CPU ms/run",
            "Daphne CPU ms/run",
            "workers CPU ms/run",
            "producers CPU ms/run",
            "notes",
        ],
        rows,
        "lrrrrrrrl",
    )
    config = result["config"]
    cores = _cores_table(result)
    notes = [
        "",
        f"- Ours: {config['producers']} producer processes call `task.enqueue()` with the Redis "
        "engine configured (the record and the run written directly, no HTTP); two Daphne "
        "processes (Uvicorn in its row) on one SQLite file (or one PostgreSQL database, a "
        "cluster the bench starts on a unix socket), one `python -m taskqueue_app.worker --limit "
        f"{config['limit']}` on each. The targets are the SQLite row's. Celery: the end_to_end "
        f"stage's peer (one worker, {config['limit']} threads, {config['producers']} producer "
        "threads, results read back).",
        *common.burst_notes(config, result["targets"]),
        "- CPU ms/run: CPU time of those processes during the bursts, per run; the Daphne "
        "column is both servers' (Daphne or Uvicorn), the workers' both workers'. Celery's "
        "worker and producers are not counted: only its Redis.",
    ]
    return "\n".join([table, *notes, *cores])


def _cores_table(result: dict[str, Any]) -> list[str]:
    """Runs/s on one core and on all, for ours and Celery, and what the second core gave."""
    one = result.get("one_core") or {"skipped": "not run"}
    if "skipped" in one:
        return ["", f"- On one core: skipped ({one['skipped']})."]
    fmt, rows = common.fmt_number, []
    for key, label in (("ours", "taskqueue on Redis, 2 servers"), ("celery", "Celery 5 + Redis")):
        single, full = one.get(key) or {}, result.get(key) or {}
        if "burst" not in single or "burst" not in full:
            rows.append([label, "—", "—", "—"])
            continue
        a, b = single["burst"]["runs_per_s"], full["burst"]["runs_per_s"]
        rows.append([label, fmt(a), fmt(b), f"{b / a:.2f}x"])
    cpus = len(os.sched_getaffinity(0))
    table = common.markdown_table(
        ["system", "runs/s on 1 core", f"runs/s on {cpus} cores", "gain"], rows, "lrrr"
    )
    return [
        "",
        "Scaling with cores (every process of the system pinned to one CPU, then on all):",
        "",
        table,
    ]


def main(argv: list[str] | None = None) -> None:
    common.stage_main(NAME, __doc__, "1,000 runs", run, report, argv)


if __name__ == "__main__":
    main()

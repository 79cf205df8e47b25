"""Stage postgres: the run records on PostgreSQL beside SQLite, in one run.

The same server (the end_to_end stage's: Daphne, ``bench.peers.ours_settings``, one ``python -m
taskqueue_app.worker --limit 10``) once on a SQLite file and once on a PostgreSQL cluster the
bench starts itself (``taskqueue_app.testing_postgres.PostgresServer``: Debian's binaries, a unix
socket, no TCP), skipped with the reason where PostgreSQL is absent. Measured:

- end to end, runs enqueued in the server (``await task.aenqueue()``): paced for latency, bursts
  for throughput, the server's CPU per run (every run's record is written three times);
- restore: ``restore_runs`` runs recorded ``SCHEDULED`` with no worker, the server killed with
  SIGKILL and started again; the time from the start to every run back in its queue.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC
from pathlib import Path
from typing import Any

from bench import common
from bench.peers import phases
from bench.peers.common import measured_or_skipped
from bench.peers.ours_peer import (
    COLLECT_TIMEOUT_S,
    RECORDS,
    SERVER_BATCH,
    Records,
    Trigger,
    start_worker,
    wait_for_worker,
)
from bench.peers.redis_server import stop
from bench.scale_out import burst_config

NAME = "postgres"
KEY = "bench.peers.ours.noop"


class PgRecords(Records):
    """``Records`` read from a PostgreSQL database (another process's: polled)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _select(self, columns: str, ids: list[str]) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.dsn) as connection:
            return connection.execute(
                f"SELECT {columns} FROM {RECORDS} WHERE id = ANY(%s)",
                [[uuid.UUID(run_id) for run_id in ids]],
            ).fetchall()

    def count(self) -> int:
        import psycopg

        with psycopg.connect(self.dsn) as connection:
            return connection.execute(f"SELECT COUNT(*) FROM {RECORDS}").fetchone()[0]

    def collect(self, ids: list[str]) -> tuple[list[float], list[float]]:
        self.wait(ids)
        rows = self._select("result, finished", ids)  # jsonb and timestamptz: decoded already
        latencies = [float(result) for result, _ in rows]
        finished = [when.astimezone(UTC).timestamp() for _, when in rows]
        return latencies, finished


def _config(quick: bool) -> dict[str, Any]:
    return {**burst_config(quick), "restore_runs": 5_000 if quick else 20_000}


def _server(tmp: Path, database: str, pg: Any):
    from project.servers import ProjectServer

    if database == "sqlite":
        return ProjectServer(
            settings="bench.peers.ours_settings",
            database=tmp / "records.sqlite3",
            env={"DJANGO_DEBUG": "0"},
            cwd=common.ROOT,
        )
    name = pg.create_database(f"bench_{uuid.uuid4().hex[:8]}")
    return ProjectServer(
        settings="bench.peers.ours_settings",
        database=tmp / "pg-unused.sqlite3",  # names the log file only
        database_env=None,
        env={"DJANGO_DEBUG": "0", **pg.environ(name)},
        cwd=common.ROOT,
    )


def _queued(api_url: str) -> int:
    with urllib.request.urlopen(f"{api_url}/task_queues/", timeout=30) as response:
        rows = json.loads(response.read())
    return sum(row["scheduled_size"] for row in rows if row["task_key"] == KEY)


def _restore_seconds(daphne: Any, trigger: Trigger, runs: int) -> float:
    """Record ``runs`` SCHEDULED runs, kill the server, start it: seconds until all are back."""
    for start in range(0, runs, 1_000):
        trigger(min(1_000, runs - start))
    daphne.kill()
    started = time.perf_counter()
    daphne.start()
    deadline = started + COLLECT_TIMEOUT_S
    while _queued(daphne.api_url) < runs:
        if time.perf_counter() > deadline:
            raise TimeoutError("the runs were not restored in time")
        time.sleep(0.05)  # another process's queues: polled with a deadline
    return time.perf_counter() - started


def measure(config: dict[str, Any], tmp: Path, database: str, pg: Any = None) -> dict[str, Any]:
    """End to end and restore on ``database`` (``"sqlite"`` or ``"postgres"``)."""
    daphne = _server(tmp, database, pg).start()
    log = open(tmp / f"{database}-worker.log", "wb")  # noqa: SIM115
    worker = start_worker(daphne.api_url, config["limit"], log)
    try:
        wait_for_worker(daphne.api_url)
        if database == "sqlite":
            records: Records = Records(daphne.database)
        else:
            records = PgRecords(pg.dsn(daphne.extra_env["TASKQUEUE_PG_NAME"]))
        trigger = Trigger(daphne.port)
        records.collect(phases.paced(lambda: trigger(1)[0], 50, 500))  # warm-up
        latencies, _ = records.collect(
            phases.paced(lambda: trigger(1)[0], config["paced_runs"], config["paced_rate"])
        )
        burst = phases.bursts(
            trigger,
            records.collect,
            {**config, "server_pids": [daphne.process.pid]},
            config["runs"],
            SERVER_BATCH,
            records.wait,
        )
        stop(worker)
        worker = None
        restore = _restore_seconds(daphne, trigger, config["restore_runs"])
    finally:
        if worker is not None:
            stop(worker)
        daphne.stop()
        log.close()
    return {"paced": phases.summary(latencies), "burst": burst, "restore_s": restore}


def run(quick: bool) -> dict[str, Any]:
    common.setup_django()
    from taskqueue_app.testing_postgres import PostgresServer

    config = _config(quick)
    result: dict[str, Any] = {"config": config}
    with tempfile.TemporaryDirectory(prefix="taskqueue-postgres-") as name:
        tmp = Path(name)
        common.progress(f"{NAME}: SQLite")
        result["sqlite"] = measured_or_skipped(
            NAME, "SQLite", lambda c, t: measure(c, t, "sqlite"), config, tmp
        )
        common.progress(f"{NAME}: PostgreSQL")
        if not PostgresServer.available():
            reason = (
                "PostgreSQL's initdb and pg_ctl were not found (Debian: apt-get install postgresql)"
            )
            result["postgres"] = {"skipped": reason}
        else:
            with PostgresServer() as pg:

                def on_postgres(c: dict[str, Any], t: Path) -> dict[str, Any]:
                    return measure(c, t, "postgres", pg)

                result["postgres"] = measured_or_skipped(
                    NAME, "PostgreSQL", on_postgres, config, tmp
                )
    return result


def report(result: dict[str, Any]) -> str:
    fmt = common.fmt_number
    rows = []
    for key, label in (("sqlite", "SQLite (WAL)"), ("postgres", "PostgreSQL 15+ (unix socket)")):
        entry = result.get(key) or {"skipped": "not run"}
        if "skipped" in entry:
            rows.append([label, "—", "—", "—", "—", "—", f"skipped: {entry['skipped']}"])
            continue
        burst, paced = entry["burst"], entry["paced"]
        rows.append(
            [
                label,
                fmt(burst["runs_per_s"]),
                fmt(paced["p50_ms"]),
                fmt(paced["p99_ms"]),
                fmt(burst.get("server_cpu_ms_per_run")),
                fmt(entry["restore_s"]),
                "repeats: " + ", ".join(fmt(v) for v in burst.get("repeats_runs_per_s", [])),
            ]
        )
    config = result["config"]
    table = common.markdown_table(
        ["records on", "runs/s", "p50 ms", "p99 ms", "server CPU ms/run", "restore s", "notes"],
        rows,
        "lrrrrrl",
    )
    return "\n".join(
        [
            table,
            "",
            f"- End to end: runs enqueued in the server, one worker `--limit {config['limit']}`; "
            f"runs/s the median of {config['repeats']} bursts of {config['runs']:,}, p50/p99 of "
            f"{config['paced_runs']} paced at {config['paced_rate']}/s (enqueue to task start).",
            f"- Restore: {config['restore_runs']:,} runs recorded SCHEDULED, the server killed "
            "(SIGKILL) and started: seconds from the start until every run is back in its queue.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    common.stage_main(NAME, __doc__, "1,000 runs, 5,000 restored", run, report, argv)


if __name__ == "__main__":
    main()

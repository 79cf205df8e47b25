"""The fault test: real processes killed at random, and afterwards every accepted run COMPLETED,
none run twice except by a worker killed while it had the run in hand (at-least-once, and only
then).

A real Daphne, three worker processes, producers posting over HTTP. Workers are SIGKILLed and
replaced at random moments; the server is SIGKILLed once mid-burst and started again on the
same database. Each run appends ``start``/``end`` lines (with the worker's pid) to one file, so
every execution is counted. The schedule of faults is seeded: ``FAULT_SEED=N`` replays one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict

import pytest

from project.servers import ProjectServer
from tests.worker_helpers import start_cli_worker

pytestmark = pytest.mark.timeout(120)

TALLY = "tests.worker_tasks.tally"
RUNS, PRODUCERS, WORKERS, WORKER_KILLS = 240, 3, 3, 4
SEED = int(os.environ.get("FAULT_SEED", "20261201"))


def post_until_accepted(server: ProjectServer, body: dict, deadline: float) -> None:
    """POST the run until the server accepts it; the same id and dynamic key make a resend safe
    (a server that died after recording it answers 200 with the same run next time)."""
    data = json.dumps(body).encode()
    while True:
        request = urllib.request.Request(f"{server.api_url}/task_runs/", data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status in (200, 201)
                return
        except urllib.error.HTTPError as error:
            assert error.code == 503, (error.code, error.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # the server is down or restarting: try again
        assert time.monotonic() < deadline, f"run {body['id']} was never accepted"
        time.sleep(0.05)


def states(database) -> dict[str, int]:
    with sqlite3.connect(database, timeout=10) as db:
        rows = db.execute(
            "SELECT state_type, COUNT(*) FROM taskqueue_app_taskrunrecord WHERE task_key = ?"
            " GROUP BY state_type",
            (TALLY,),
        ).fetchall()
    return dict(rows)


def test_killed_workers_and_a_killed_server_lose_nothing_and_run_nothing_twice(tmp_path):
    rng = random.Random(SEED)
    log_path = tmp_path / "executions.log"
    log_path.touch()
    server = ProjectServer(
        database=tmp_path / "db.sqlite3", env={"TASKQUEUE_ORPHAN_TIMEOUT": "8"}
    ).start()
    workers = [start_cli_worker(server, TALLY, limit=4) for _ in range(WORKERS)]
    killed: set[int] = set()
    tokens: dict[str, str] = {}  # token -> run id
    deadline = time.monotonic() + 80

    bodies = []
    for _ in range(RUNS):
        token, run_id = uuid.uuid4().hex, str(uuid.uuid4())
        tokens[token] = run_id
        # Mostly short runs; a few outlast ORPHAN_TIMEOUT, so that the server's restart finds
        # runs still running in living workers, which must keep them (not run them twice).
        work = rng.choice((0.0, 0.01, 0.03, 0.1)) if rng.random() < 0.92 else 12.0
        bodies.append(
            {
                "id": run_id,
                "task_key": TALLY,
                "dynamic_key": f"fault-{token}",
                "parameters": {"args": [str(log_path), token, work], "kwargs": {}},
                "empirical_policy": {"retries": 50, "retry_delay_seconds": 0},
            }
        )
    accepted = [0]
    lock = threading.Lock()

    def produce(share: list[dict]) -> None:
        for body in share:
            post_until_accepted(server, body, deadline)
            with lock:
                accepted[0] += 1

    producers = [
        threading.Thread(target=produce, args=(bodies[i::PRODUCERS],)) for i in range(PRODUCERS)
    ]
    try:
        for worker in workers:
            worker.wait_for("connected to ")
        for thread in producers:
            thread.start()
        # The fault schedule: worker kills at random moments, the server once mid-burst.
        server_killed = False
        kills = 0
        while any(thread.is_alive() for thread in producers) or kills < WORKER_KILLS:
            time.sleep(rng.uniform(0.1, 0.6))
            if not server_killed and accepted[0] >= RUNS * 0.4:
                server.kill()
                server.start()
                server_killed = True
                continue
            if kills < WORKER_KILLS:
                victim = workers.pop(rng.randrange(len(workers)))
                killed.add(victim.process.pid)
                victim.signal(signal.SIGKILL)
                victim.wait()
                workers.append(start_cli_worker(server, TALLY, limit=4))
                kills += 1
            assert time.monotonic() < deadline, "the burst did not end"
        for thread in producers:
            thread.join()
        assert server_killed, "the server was never killed: the schedule is too short"

        # Afterwards: every accepted run completes (orphans of killed workers come back too).
        while states(server.database).get("COMPLETED", 0) < RUNS:
            assert time.monotonic() < deadline, f"not all runs completed: {states(server.database)}"
            time.sleep(0.2)
        assert states(server.database) == {"COMPLETED": RUNS}
        with sqlite3.connect(server.database) as db:
            orphaned = db.execute(
                "SELECT COUNT(*) FROM taskqueue_app_taskrunrecord WHERE error LIKE '%Orphaned%'"
            ).fetchone()[0]
    finally:
        for worker in workers:
            worker.stop()
        server.stop()

    starts: dict[str, list[int]] = defaultdict(list)
    for line in log_path.read_text().splitlines():
        kind, token, pid = line.split()
        if kind == "start":
            starts[token].append(int(pid))
    assert set(starts) == set(tokens), "a run completed without running"
    twice = {token: pids for token, pids in starts.items() if len(pids) > 1}
    for token, pids in twice.items():
        # Every execution but one was by a worker killed while the run was in its hands.
        by_living = [pid for pid in pids if pid not in killed]
        assert len(by_living) <= 1, f"run {tokens[token]} ran twice in living workers: {pids}"
    print(
        f"fault test (seed {SEED}): {RUNS} runs, {len(killed)} workers killed, server killed "
        f"once; {len(twice)} run(s) executed again after their worker was killed; "
        f"{orphaned} given back as orphans"
    )

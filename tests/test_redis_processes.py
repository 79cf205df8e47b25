"""Several server processes on one Redis and one database: real Daphne processes, a real
redis-server, killed and restarted for real."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import datetime

import pytest
from websockets.asyncio.client import connect

from project.servers import ProjectServer
from tests.worker_helpers import (
    ROOT,
    api,
    create_run,
    read_run,
    start_cli_worker,
    start_django_worker,
    terminate_gently,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(120)
ECHO = "tests.worker_tasks.echo"
FULL = "tests.e2e_urls.never_run"  # bound 1 in tests.e2e_settings


@pytest.fixture
def site(tmp_path, redis_server):
    """Two Daphne processes, A and B, on one SQLite file and one Redis (short heartbeats)."""
    env = {
        "TASKQUEUE_REDIS_URL": redis_server.location,
        "TASKQUEUE_REDIS_PREFIX": "{tq-" + uuid.uuid4().hex[:10] + "}",
        "TASKQUEUE_REDIS_HEARTBEAT": "0.2",
        "TASKQUEUE_REDIS_ALIVE_TTL": "1",
    }
    database = tmp_path / "db.sqlite3"
    a = ProjectServer(settings="tests.e2e_settings", database=database, env=env).start()
    b = ProjectServer(settings="tests.e2e_settings", database=database, env=env)
    b._migrated = True  # noqa: SLF001 - one database, migrated once by A
    b.start()
    yield a, b
    for server in (a, b):
        server.stop()


async def subscriber(server: ProjectServer, keys: list[str], **extra):
    ws = await connect(server.ws_url, subprotocols=["prefect"])
    await ws.send(json.dumps({"type": "auth", "token": None}))
    assert json.loads(await ws.recv()) == {"type": "auth_success"}
    subscribe = {"type": "subscribe", "keys": keys, "client_id": f"c-{uuid.uuid4().hex[:6]}"}
    await ws.send(json.dumps({**subscribe, **extra}))
    return ws


def test_a_run_enqueued_on_one_process_runs_on_a_worker_of_the_other(site):
    a, b = site
    worker = start_cli_worker(b, ECHO)
    try:
        worker.wait_for("connected to ")
        run = create_run(a, ECHO, "across")
        done = wait_for_state(a, run["id"])
        assert (done["state_type"], done["result"]) == ("COMPLETED", "across")
        # Either process shows the whole site: B's worker, listed by A.
        status, workers = api(a, "POST", "task_workers/filter", {})
        assert status == 200 and [w["task_keys"] for w in workers] == [[ECHO]]
    finally:
        terminate_gently(worker)


def test_the_bound_of_a_key_is_shared_by_every_process(site):
    a, b = site
    create_run(a, FULL)  # fills its one slot (no worker serves it)
    status, body = api(b, "POST", "task_runs/", {"task_key": FULL})
    assert status == 503, body
    assert "is full" in body["error"]
    status, rows = api(b, "GET", "task_queues/")
    (row,) = [r for r in rows if r["task_key"] == FULL]
    assert (row["scheduled_size"], row["scheduled_limit"]) == (1, 1)


async def test_keys_keep_their_order_and_retry_comes_first_across_processes(site):
    a, b = site
    first, second = "tests.order.first", "tests.order.second"
    ids = [
        await asyncio.to_thread(create_run, a, second),
        await asyncio.to_thread(create_run, b, first),
        await asyncio.to_thread(create_run, a, first),
    ]
    ws = await subscriber(b, [first, second], prefetch=3)
    got = [json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] for _ in range(3)]
    assert got == [ids[1]["id"], ids[2]["id"], ids[0]["id"]]
    await ws.close()  # unacked: back first in line, for the next subscriber on the other process
    ws = await subscriber(a, [first, second])
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["id"] == ids[1]["id"]
    await ws.close()


async def test_a_killed_process_gives_back_the_unacked_runs_it_held_within_seconds(site):
    a, b = site
    run = await asyncio.to_thread(create_run, a, "tests.kill.k")
    held = await subscriber(b, ["tests.kill.k"])
    assert json.loads(await asyncio.wait_for(held.recv(), 10))["id"] == run["id"]
    b.kill()  # SIGKILL: nothing of B runs after this, its heartbeat stops
    other = await subscriber(a, ["tests.kill.k"])
    again = json.loads(await asyncio.wait_for(other.recv(), 15))
    assert (again["id"], again["state_type"]) == (run["id"], "SCHEDULED")
    await other.send(json.dumps({"type": "ack", "id": run["id"]}))
    await asyncio.to_thread(wait_for_state, a, run["id"], "PENDING")
    await other.close()


def test_restarting_every_process_restores_each_recorded_run_once(site, redis_server):
    import redis

    a, b = site
    runs = [create_run(a, "tests.restore.k", i) for i in range(3)]
    a.kill()
    b.kill()
    # Redis lost its data (no persistence): the records are the truth, rebuilt once.
    redis.Redis(unix_socket_path=redis_server.location.removeprefix("unix://")).flushall()
    a.start()
    b.start()
    status, rows = api(b, "GET", "task_queues/")
    (row,) = [r for r in rows if r["task_key"] == "tests.restore.k"]
    assert row["scheduled_size"] == 3, rows  # once, not once per process
    assert read_run(b, runs[0]["id"])["state_type"] == "SCHEDULED"


PRODUCER = """
import django
django.setup()
from django.test import Client
from project.tasks import add

result = add.enqueue(20, 22)
answer = Client().post(
    "/api/task_runs/", {"task_key": "project.tasks.add",
    "parameters": {"args": [1, 2], "kwargs": {}}}, content_type="application/json")
print(result.id, answer.status_code, answer.json()["id"])
"""


def test_a_producer_process_with_no_server_url_enqueues_straight_into_redis(site):
    a, b = site
    env = {
        **os.environ,
        **a.extra_env,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "TASKQUEUE_DB": str(a.database),
        "TASKQUEUE_SERVER_URL": "",  # no HTTP hop to any server
    }
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    task_id, status, view_id = done.stdout.split()
    assert status == "201"
    worker = start_django_worker(b, "project.tasks.add")
    try:
        assert wait_for_state(a, task_id)["result"] == 42
        assert wait_for_state(b, view_id)["result"] == 3
    finally:
        terminate_gently(worker)


def test_a_worker_whose_process_was_killed_reconnects_and_reports_what_it_ran(site):
    a, b = site
    worker = start_cli_worker(b, "tests.worker_tasks.slow", limit=1)
    try:
        worker.wait_for("connected to ")
        run = create_run(a, "tests.worker_tasks.slow", "kept", 4, empirical_policy={"retries": 2})
        worker.wait_for("slow-started kept")
        wait_for_state(a, run["id"], "RUNNING")
        b.kill()  # the worker's server process dies; A's reaper sees its heartbeat stop
        b.start()  # the worker reconnects (to B's address: a load balancer would pick any)
        done = wait_for_state(a, run["id"], timeout=30)
        assert (done["state_type"], done["result"], done["run_count"]) == ("COMPLETED", "kept", 1)
        assert worker.count("slow-started kept") == 1  # resumed, not run again
        assert worker.count("connected to ") == 2
    finally:
        terminate_gently(worker)


def test_a_cancel_sent_to_one_process_stops_the_run_a_worker_of_the_other_runs(site):
    a, b = site
    worker = start_cli_worker(a, "tests.worker_tasks.slow", limit=1)
    try:
        worker.wait_for("connected to ")
        # 10 s: the worker abandons the sync call, but its thread runs on to its end, and
        # the worker's exit waits for it.
        run = create_run(a, "tests.worker_tasks.slow", "doomed", 10)
        worker.wait_for("slow-started doomed")
        wait_for_state(a, run["id"], "RUNNING")
        status, asking = api(b, "POST", f"task_runs/{run['id']}/cancel")
        assert status == 200, asking
        assert asking["state"]["state_details"]["cancel_requested"] is True
        done = wait_for_state(a, run["id"], timeout=15)
        assert (done["state_type"], done["run_count"]) == ("CANCELLED", 1)
        started, finished = (
            datetime.fromisoformat(done[name]) for name in ("start_time", "end_time")
        )
        assert (finished - started).total_seconds() < 8  # cancelled, not run to its end
    finally:
        terminate_gently(worker)

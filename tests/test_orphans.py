"""Nothing stays PENDING or RUNNING forever: runs whose worker vanished with a server restart are
given back after ORPHAN_TIMEOUT, and a worker that comes back in time keeps its run."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from websockets.asyncio.client import connect

from project.servers import ProjectServer
from tests.worker_helpers import (
    api,
    create_run,
    read_run,
    start_cli_worker,
    terminate_gently,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(120)
SLOW = "tests.worker_tasks.slow"


def orphan_server(tmp_path, timeout: float) -> ProjectServer:
    env = {"TASKQUEUE_ORPHAN_TIMEOUT": str(timeout)}
    return ProjectServer(database=tmp_path / "db.sqlite3", env=env)


def test_a_run_started_by_a_worker_that_never_comes_back_crashes_and_is_retried(tmp_path):
    server = orphan_server(tmp_path, 1.0).start()
    doomed = start_cli_worker(server, SLOW, limit=1)
    rescuer = None
    try:
        doomed.wait_for("connected to ")
        run = create_run(server, SLOW, "orphan", 2, empirical_policy={"retries": 1})
        doomed.wait_for("slow-started orphan")
        wait_for_state(server, run["id"], "RUNNING")
        server.kill()  # the server first: nothing sees the worker's connection close
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        server.start()
        crashed = wait_for_state(server, run["id"], "SCHEDULED", timeout=20)
        assert crashed["state_name"] == "AwaitingRetry"
        assert crashed["error"]["type"] == "taskqueue_app.errors.Orphaned"
        rescuer = start_cli_worker(server, SLOW, limit=1)
        done = wait_for_state(server, run["id"])
        assert (done["state_type"], done["result"], done["run_count"]) == (
            "COMPLETED",
            "orphan",
            2,
        )
    finally:
        doomed.stop()
        if rescuer is not None:
            terminate_gently(rescuer)
        server.stop()


async def test_a_run_acked_by_a_client_that_never_comes_back_goes_back_to_its_queue(tmp_path):
    server = orphan_server(tmp_path, 1.0).start()
    try:
        run = await asyncio.to_thread(create_run, server, "tests.orphans.acked")
        ws = await connect(server.ws_url, subprotocols=["prefect"])
        await ws.send(json.dumps({"type": "auth", "token": None}))
        await ws.recv()
        subscribe = {"type": "subscribe", "keys": ["tests.orphans.acked"], "client_id": "gone"}
        await ws.send(json.dumps({**subscribe, "reports_outcomes": True}))
        assert json.loads(await ws.recv())["id"] == run["id"]
        await ws.send(json.dumps({"type": "ack", "id": run["id"]}))
        await asyncio.to_thread(wait_for_state, server, run["id"], "PENDING")
        server.kill()
        await ws.close()
        server.start()
        back = await asyncio.to_thread(wait_for_state, server, run["id"], "SCHEDULED", 20)
        assert (back["state_name"], back["run_count"]) == ("Scheduled", 0)
        # It waits first in line in its retry lane, for the next worker.
        _, rows = await asyncio.to_thread(api, server, "GET", "task_queues/")
        (row,) = [r for r in rows if r["task_key"] == "tests.orphans.acked"]
        assert (row["retry_size"], row["scheduled_size"]) == (1, 0)
    finally:
        server.stop()


def test_a_worker_that_reconnects_in_time_resumes_its_run_which_runs_once(tmp_path):
    server = orphan_server(tmp_path, 4.0).start()
    worker = start_cli_worker(server, SLOW, limit=1)
    try:
        worker.wait_for("connected to ")
        run = create_run(server, SLOW, "kept", 7, empirical_policy={"retries": 3})
        worker.wait_for("slow-started kept")
        wait_for_state(server, run["id"], "RUNNING")
        server.kill()
        server.start()
        done = wait_for_state(server, run["id"], timeout=30)
        assert (done["state_type"], done["result"], done["run_count"]) == ("COMPLETED", "kept", 1)
        assert done["error"] is None  # never crashed, never orphaned
        assert worker.count("slow-started kept") == 1
        assert worker.count("connected to ") == 2  # it did reconnect, and reported there
    finally:
        terminate_gently(worker)
        server.stop()


async def ack_one(server: ProjectServer, key: str, reports_outcomes: bool) -> str:
    """Subscribe to ``key``, ack the one run sent, and leave: the run's id."""
    async with connect(server.ws_url, subprotocols=["prefect"]) as ws:
        await ws.send(json.dumps({"type": "auth", "token": None}))
        await ws.recv()
        subscribe = {"type": "subscribe", "keys": [key], "client_id": key}
        await ws.send(json.dumps({**subscribe, "reports_outcomes": reports_outcomes}))
        run_id = json.loads(await ws.recv())["id"]
        await ws.send(json.dumps({"type": "ack", "id": run_id}))
        await asyncio.to_thread(wait_for_state, server, run_id, "PENDING")
        return run_id


async def test_a_prefect_client_s_acked_run_is_its_own_and_never_given_back(tmp_path):
    server = orphan_server(tmp_path, 0.5).start()
    try:
        for key in ("tests.orphans.prefect", "tests.orphans.canary"):
            await asyncio.to_thread(create_run, server, key)
        prefect = await ack_one(server, "tests.orphans.prefect", reports_outcomes=False)
        canary = await ack_one(server, "tests.orphans.canary", reports_outcomes=True)
        assert (await asyncio.to_thread(read_run, server, prefect))["state_name"] == "Delivered"
        server.kill()
        server.start()
        # The canary (acked by a worker that reports outcomes) coming back shows a sweep ran.
        await asyncio.to_thread(wait_for_state, server, canary, "SCHEDULED", 20)
        handed_over = await asyncio.to_thread(read_run, server, prefect)
        assert (handed_over["state_type"], handed_over["state_name"]) == ("PENDING", "Delivered")
    finally:
        server.stop()

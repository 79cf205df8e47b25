"""Restart for real: Daphne in a subprocess on a file database, SIGKILLed and started again.

Runs recorded SCHEDULED come back into their queues (retry runs into the retry lane), in order,
and a run deferred into the future is still deferred and enters its queue at its time.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any

import pytest
from websockets.asyncio.client import connect

from project.servers import ProjectServer
from taskqueue_app.schemas import isoformat, now, parse_datetime

# Long enough that the restart (process start, Django set-up) is over well before it is due.
DEFER_S = 6.0


def call(server: ProjectServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One HTTP request with the standard library; returns (status, JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.api_url}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def create(server: ProjectServer, **fields: Any) -> dict:
    status, run = call(server, "POST", "/task_runs/", fields)
    assert status == 201, run
    return run


def queues(server: ProjectServer) -> dict[str, dict]:
    status, rows = call(server, "GET", "/task_queues/")
    assert status == 200, rows
    return {row["task_key"]: row for row in rows}


def wait_for_state(server: ProjectServer, run_id: str, state: str, timeout: float = 10) -> None:
    """Wait until the server records ``state`` for the run (another process: we can only ask)."""
    deadline = time.monotonic() + timeout
    while True:
        status, run = call(server, "GET", f"/task_runs/{run_id}")
        if run.get("state_type") == state:
            return
        assert time.monotonic() < deadline, f"run {run_id} is {run}, not {state}"
        time.sleep(0.02)


async def subscribe(server: ProjectServer, keys: list[str], **extra: Any):
    ws = await connect(server.ws_url, open_timeout=10)
    await ws.send(json.dumps({"type": "subscribe", "keys": keys, "client_id": "test", **extra}))
    return ws


async def receive_run(ws, timeout: float = 10) -> dict:
    run = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    await ws.send(json.dumps({"type": "ack", "id": run["id"]}))
    return run


async def fail_through_a_worker(server: ProjectServer, key: str) -> str:
    """Take one run of ``key`` as a worker that reports outcomes, and report it failed."""
    ws = await subscribe(server, [key], reports_outcomes=True)
    try:
        run = await receive_run(ws)
        await ws.send(json.dumps({"type": "started", "id": run["id"]}))
        error = {"type": "ValueError", "message": "boom", "traceback": None}
        await ws.send(json.dumps({"type": "failed", "id": run["id"], "error": error}))
        await asyncio.to_thread(wait_for_state, server, run["id"], "FAILED")
        return run["id"]
    finally:
        await ws.close()


async def read_in_order(server: ProjectServer, keys: list[str], count: int) -> list[str]:
    ws = await subscribe(server, keys)
    try:
        return [(await receive_run(ws))["id"] for _ in range(count)]
    finally:
        await ws.close()


async def wait_for_deferred(server: ProjectServer, key: str) -> tuple[dict, Any]:
    """The next run of ``key`` as a subscriber receives it, and when it arrived."""
    ws = await subscribe(server, [key])
    try:
        run = await receive_run(ws, timeout=DEFER_S + 10)
        return run, now()
    finally:
        await ws.close()


@pytest.mark.timeout(120)
def test_runs_survive_sigkill_and_come_back_in_order(tmp_path):
    server = ProjectServer(database=tmp_path / "db.sqlite3")
    server.start()
    try:
        plain = [create(server, task_key="restore.a", dynamic_key=f"a{i}") for i in range(3)]
        create(server, task_key="restore.b")
        # A run in the retry lane: failed by a worker, then retried by hand.
        failing = create(server, task_key="restore.r")
        assert asyncio.run(fail_through_a_worker(server, "restore.r")) == failing["id"]
        status, retried = call(server, "POST", f"/task_runs/{failing['id']}/retry")
        assert (status, retried["state_name"]) == (200, "AwaitingRetry")
        due = now() + timedelta(seconds=DEFER_S)
        later = create(server, task_key="restore.later", expected_start_time=isoformat(due))

        before = queues(server)
        assert before["restore.a"]["scheduled_size"] == 3
        assert before["restore.r"]["retry_size"] == 1

        server.kill()
        server.start()

        after = queues(server)
        assert now() < due, "the restart took longer than the deferral: raise DEFER_S"
        assert (after["restore.a"]["scheduled_size"], after["restore.a"]["retry_size"]) == (3, 0)
        assert after["restore.b"]["scheduled_size"] == 1
        assert (after["restore.r"]["scheduled_size"], after["restore.r"]["retry_size"]) == (0, 1)
        # Still deferred: recorded SCHEDULED, but in no queue before its time.
        assert after.get("restore.later", {}).get("scheduled_size", 0) == 0
        status, record = call(server, "GET", f"/task_runs/{later['id']}")
        assert (status, record["state_type"]) == (200, "SCHEDULED")

        # Read out through a subscriber: the retry lane first, then the scheduled runs in order.
        order = asyncio.run(read_in_order(server, ["restore.r", "restore.a"], 4))
        assert order == [failing["id"], *(run["id"] for run in plain)]

        run, arrived = asyncio.run(wait_for_deferred(server, "restore.later"))
        assert run["id"] == later["id"]
        assert arrived >= due
        assert parse_datetime(run["expected_start_time"], "t") == parse_datetime(
            isoformat(due), "t"
        )
    finally:
        server.stop()

"""Connected workers: the engine's connections, and POST /api/task_workers/filter fed by real
subscriptions."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from project.asgi import application
from taskqueue_app import lifecycle, server
from taskqueue_app.queues import SCHEDULED, get_queues
from taskqueue_app.records import writer
from taskqueue_app.schemas import TaskRun
from taskqueue_app.workers import queue_rows, workers
from tests.test_consumer import handled

URL = "/api/task_runs/subscriptions/scheduled"
FILTER = "/api/task_workers/filter"


def parse(stamp: str) -> datetime:
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# -- the engine's connections ------------------------------------------------------------------


async def workers_per_key() -> dict[str, int]:
    """Per key in the engine's snapshot, the connections subscribed to it (keys with some)."""
    return {row["task_key"]: row["workers"] for row in await queue_rows() if row["workers"]}


async def test_a_worker_is_listed_once_across_its_connections_and_leaves_with_the_last():
    queues = get_queues()
    await queues.connect("c1", "alpha", ["a", "b"])
    await queues.connect("c2", "alpha", ["b", "c"])
    await queues.connect("c3", "beta", ["z"])
    (alpha, beta) = await workers()
    assert (alpha["identifier"], alpha["task_keys"], alpha["connections"]) == (
        "alpha",
        ["a", "b", "c"],
        2,
    )
    assert (beta["identifier"], beta["task_keys"]) == ("beta", ["z"])
    assert await workers_per_key() == {"a": 1, "b": 2, "c": 1, "z": 1}

    await queues.disconnect("c1")
    assert [w["identifier"] for w in await workers()] == ["alpha", "beta"]
    await queues.disconnect("c2")
    assert [w["identifier"] for w in await workers()] == ["beta"]
    await queues.disconnect("c2")  # twice is harmless
    assert "b" not in await workers_per_key()


async def test_filter_by_any_key():
    await get_queues().connect("c1", "alpha", ["a", "b"])
    await get_queues().connect("c2", "beta", ["c"])
    assert [w["identifier"] for w in await workers(["b", "c"])] == ["alpha", "beta"]
    assert [w["identifier"] for w in await workers(["c"])] == ["beta"]
    assert await workers(["nobody"]) == []
    assert len(await workers([])) == 2  # an empty filter lists everyone, as Prefect does


async def test_touch_moves_last_activity_and_prefects_timestamp():
    queues = get_queues()
    await queues.connect("c1", "alpha", ["a"])
    (before,) = await queues.connections()
    await asyncio.sleep(0.01)  # the stamps are wall-clock times: let the clock move on
    await queues.touch("c1")
    await queues.touch("unknown")  # a connection that already left: ignored
    assert [c.holder for c in await queues.connections()] == ["c1"]
    (alpha,) = await workers()
    assert parse(alpha["connected_since"]) == before.connected_since
    assert parse(alpha["last_activity"]) > before.last_activity
    assert alpha["timestamp"] == alpha["last_activity"]


async def test_runs_held_by_a_workers_connections_are_listed():
    queues = get_queues()
    await queues.connect("c1", "alpha", ["a"])
    run = TaskRun(task_key="a", dynamic_key="a-1", name="a")
    await queues.enqueue(run, SCHEDULED)
    assert (await queues.claim("c1", ["a"])).id == run.id
    (alpha,) = await workers()
    assert alpha["held"] == [str(run.id)]
    await queues.ack("c1", run.id)
    assert (await workers())[0]["held"] == []


# -- through real subscriptions ---------------------------------------------------------------


@pytest.fixture
async def started():
    await server.ensure_started()
    yield
    await writer.flush()


async def subscribe(keys, client_id, **extra) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(application, URL, subprotocols=["prefect"])
    assert (await comm.connect(3))[0]
    await comm.send_json_to({"type": "auth", "token": None})
    assert await comm.receive_json_from(3) == {"type": "auth_success"}
    await comm.send_json_to({"type": "subscribe", "keys": keys, "client_id": client_id, **extra})
    return comm


async def listed(body=None) -> list[dict]:
    response = await AsyncClient().post(
        FILTER, data=json.dumps(body or {}), content_type="application/json"
    )
    assert response.status_code == 200
    return response.json()


@pytest.mark.django_db(transaction=True)
async def test_subscribed_workers_are_listed_as_prefect_lists_them(started):
    one = await subscribe(["emails.send", "reports.build"], "worker-one")
    two = await subscribe(["reports.build"], "worker-two")
    await handled(one)
    await handled(two)

    everyone = await listed()
    assert [w["identifier"] for w in everyone] == ["worker-one", "worker-two"]
    assert {"identifier", "task_keys", "timestamp"} <= set(everyone[0])
    assert everyone[0]["task_keys"] == ["emails.send", "reports.build"]
    only_mail = await listed({"task_worker_filter": {"task_keys": ["emails.send"]}})
    assert [w["identifier"] for w in only_mail] == ["worker-one"]

    await one.disconnect()
    assert [w["identifier"] for w in await listed()] == ["worker-two"]
    await two.disconnect()
    assert await listed() == []


@pytest.mark.django_db(transaction=True)
async def test_runs_in_a_workers_hands_are_listed_and_a_quit_worker_leaves(started):
    run, _ = await lifecycle.create({"task_key": "k"})
    comm = await subscribe(["k"], "busy")
    delivered = await comm.receive_json_from(3)
    (worker,) = await listed()
    assert worker["held"] == [delivered["id"]] == [str(run.id)]
    await comm.send_json_to({"type": "quit"})
    assert (await comm.receive_output(3))["code"] == 1000
    assert await listed() == []


@pytest.mark.django_db(transaction=True)
async def test_an_ack_counts_as_activity(started):
    await lifecycle.create({"task_key": "k"})
    comm = await subscribe(["k"], "busy")
    await comm.receive_json_from(3)
    await handled(comm)  # the delivery's own activity is noted
    (before,) = await listed()
    await asyncio.sleep(0.01)  # the stamps are wall-clock times: let the clock move on
    await comm.send_json_to({"type": "ack"})
    await handled(comm)  # nothing else is delivered: only the ack can move the stamp
    (worker,) = await listed()
    assert parse(worker["timestamp"]) > parse(before["timestamp"])
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_runs_a_worker_has_started_are_listed_until_their_outcome():
    queues = get_queues()
    await queues.connect("c1", "alpha", ["a"])
    run, _ = await lifecycle.create({"task_key": "a"})
    await queues.claim("c1", ["a"])
    await lifecycle.acknowledge("c1", run.id, "alpha", watch=True)
    await lifecycle.start("c1", run.id, "alpha")
    # A started run stays held by its connection, which crashes it if it vanishes.
    assert [(r.id, r.state_type) for r in await queues.held("c1")] == [(run.id, "RUNNING")]
    assert (await workers())[0]["held"] == [str(run.id)]
    assert [(row["held"], row["running"]) for row in await queue_rows()] == [(1, 1)]
    await lifecycle.complete("c1", run.id, None, "alpha")
    assert await queues.held("c1") == []
    assert (await workers())[0]["held"] == []
    assert [(row["held"], row["running"]) for row in await queue_rows()] == [(0, 0)]
    await writer.flush()

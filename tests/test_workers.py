"""Connected workers: the registry, and POST /api/task_workers/filter fed by real subscriptions."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from project.asgi import application
from taskqueue_app import lifecycle, server
from taskqueue_app.records import writer
from taskqueue_app.schemas import TaskRun
from taskqueue_app.task_queue import MultiQueue, TaskQueue
from taskqueue_app.workers import WorkerRegistry, queue_rows, registry
from tests.test_consumer import handled

URL = "/api/task_runs/subscriptions/scheduled"
FILTER = "/api/task_workers/filter"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def parse(stamp: str) -> datetime:
    assert stamp.endswith("Z")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# -- the registry -----------------------------------------------------------------------------


def test_a_worker_is_listed_once_across_its_connections_and_leaves_with_the_last():
    workers = WorkerRegistry()
    workers.connect("c1", "alpha", ["a", "b"])
    workers.connect("c2", "alpha", ["b", "c"])
    workers.connect("c3", "beta", ["z"])
    (alpha, beta) = workers.workers()
    assert (alpha["identifier"], alpha["task_keys"], alpha["connections"]) == (
        "alpha",
        ["a", "b", "c"],
        2,
    )
    assert (beta["identifier"], beta["task_keys"]) == ("beta", ["z"])
    assert workers.counts_per_key() == {"a": 1, "b": 2, "c": 1, "z": 1}

    workers.disconnect("c1")
    assert [w["identifier"] for w in workers.workers()] == ["alpha", "beta"]
    workers.disconnect("c2")
    assert [w["identifier"] for w in workers.workers()] == ["beta"]
    workers.disconnect("c2")  # twice is harmless
    assert "b" not in workers.counts_per_key()


def test_filter_by_any_key():
    workers = WorkerRegistry()
    workers.connect("c1", "alpha", ["a", "b"])
    workers.connect("c2", "beta", ["c"])
    assert [w["identifier"] for w in workers.workers(["b", "c"])] == ["alpha", "beta"]
    assert [w["identifier"] for w in workers.workers(["c"])] == ["beta"]
    assert workers.workers(["nobody"]) == []
    assert len(workers.workers([])) == 2  # an empty filter lists everyone, as Prefect does


def test_touch_moves_last_activity_and_prefects_timestamp():
    workers = WorkerRegistry()
    workers.connect("c1", "alpha", ["a"])
    (connection,) = workers.connections()
    connection.connected_since = connection.last_activity = LONG_AGO
    workers.touch("c1")
    workers.touch("unknown")  # a connection that already left: ignored
    (alpha,) = workers.workers()
    assert parse(alpha["connected_since"]) == LONG_AGO
    assert parse(alpha["last_activity"]) > LONG_AGO
    assert alpha["timestamp"] == alpha["last_activity"]


def test_runs_held_by_a_workers_connections_are_listed():
    workers = WorkerRegistry()
    workers.connect("c1", "alpha", ["a"])
    run = TaskRun(task_key="a", dynamic_key="a-1", name="a")
    TaskQueue.hold("c1", run)
    (alpha,) = workers.workers()
    assert alpha["held"] == [str(run.id)]
    TaskQueue.ack("c1", run.id)
    assert workers.workers()[0]["held"] == []


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
    await lifecycle.create({"task_key": "k"})
    comm = await subscribe(["k"], "busy")
    await comm.receive_json_from(3)
    (connection,) = registry.connections()
    connection.last_activity = LONG_AGO
    await comm.send_json_to({"type": "ack"})
    await comm.receive_json_from(3)  # the next run: the ack was handled
    (worker,) = await listed()
    assert parse(worker["timestamp"]) > LONG_AGO
    await comm.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_runs_a_worker_has_started_are_listed_until_their_outcome():
    workers = WorkerRegistry()
    workers.connect("c1", "alpha", ["a"])
    run, _ = await lifecycle.create({"task_key": "a"})
    await MultiQueue(["a"]).claim("c1")
    await lifecycle.acknowledge("c1", run.id, "alpha", watch=True)
    await lifecycle.start("c1", run.id, "alpha")
    assert TaskQueue.held("c1") == []  # no longer the queue's: the lifecycle watches it
    assert workers.workers()[0]["held"] == [str(run.id)]
    assert [row["held"] for row in queue_rows()] == [1]
    await lifecycle.complete("c1", run.id, None, "alpha")
    assert workers.workers()[0]["held"] == []
    assert [row["held"] for row in queue_rows()] == [0]
    await writer.flush()

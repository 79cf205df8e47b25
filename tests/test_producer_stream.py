"""The producer stream (``producers.py`` and ``worker/stream.py``): creates from another process
over one kept-open WebSocket, each answered once durable; and the HTTP batch create."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient, override_settings
from websockets.asyncio.client import connect

from project.asgi import application
from project.servers import ProjectServer
from taskqueue_app.errors import QueueFull, ValidationError
from taskqueue_app.testing import queued
from taskqueue_app.worker.http import EnqueueError
from taskqueue_app.worker.stream import ProducerStream
from tests.worker_helpers import api

pytestmark = pytest.mark.timeout(120)
WAIT = 5
FULL = "tests.e2e_urls.never_run"  # bound 1 in tests.e2e_settings
PATH = "/api/task_runs/stream"


def body(key: str = "stream.k", **extra) -> dict:
    run_id = uuid.uuid4()
    return {"id": str(run_id), "task_key": key, "dynamic_key": f"{key}-{run_id.hex}", **extra}


def record_ids(server: ProjectServer) -> list[str]:
    with sqlite3.connect(server.database) as db:
        return [
            uuid.UUID(row[0]).hex
            for row in db.execute("SELECT id FROM taskqueue_app_taskrunrecord")
        ]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    database = tmp_path_factory.mktemp("stream") / "db.sqlite3"
    with ProjectServer(settings="tests.e2e_settings", database=database) as running:
        yield running


def test_creates_from_many_threads_over_one_stream_are_each_recorded_once(server):
    stream = ProducerStream(server.api_url, None, timeout=WAIT)
    bodies = [body() for _ in range(200)]
    answers: dict[str, dict] = {}

    def produce(share):
        for item in share:
            answers[item["id"]] = stream.create(item)

    threads = [threading.Thread(target=produce, args=(bodies[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 4)
    stream.close()
    assert sorted(answers) == sorted(b["id"] for b in bodies)
    assert {a["state_type"] for a in answers.values()} == {"SCHEDULED"}
    stored = set(record_ids(server))
    assert {uuid.UUID(b["id"]).hex for b in bodies} <= stored
    status, rows = api(server, "GET", "task_queues/")
    assert [r["scheduled_size"] for r in rows if r["task_key"] == "stream.k"] == [200]


def test_a_create_sent_again_answers_the_run_it_made(server):
    stream = ProducerStream(server.api_url, None, timeout=WAIT)
    item = body("stream.again")
    first, again = stream.create(item), stream.create(item)
    assert first["id"] == again["id"] == item["id"]
    assert record_ids(server).count(uuid.UUID(item["id"]).hex) == 1
    stream.close()


def test_refusals_come_back_as_the_errors_of_the_http_path(server):
    stream = ProducerStream(server.api_url, None, timeout=WAIT)
    with pytest.raises(ValidationError, match="task_key is required"):
        stream.create({"parameters": {}})
    with pytest.raises(ValidationError, match="priority must be"):
        stream.create(body(priority="high"))
    stream.create(body(FULL))
    with pytest.raises(QueueFull, match="is full"):
        stream.create(body(FULL))
    taken = body("stream.taken")
    stream.create(taken)
    with pytest.raises(EnqueueError, match="HTTP 409: id .* belongs to another run"):
        stream.create({**taken, "task_key": "stream.other", "dynamic_key": "x"})
    assert stream.create(body())["state_type"] == "SCHEDULED"  # the stream is still open
    stream.close()


def test_a_server_restart_mid_stream_loses_and_duplicates_nothing(tmp_path):
    with ProjectServer(settings="tests.e2e_settings", database=tmp_path / "db.sqlite3") as server:
        stream = ProducerStream(server.api_url, None, timeout=30)
        bodies = [body("stream.restart") for _ in range(300)]
        answers: dict[str, dict] = {}
        errors: list[BaseException] = []
        half = threading.Event()

        def produce(share):
            try:
                for item in share:
                    answers[item["id"]] = stream.create(item)
                    if len(answers) >= 100:
                        half.set()
            except BaseException as exc:  # noqa: BLE001 - the test reports it
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(bodies[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        assert half.wait(WAIT * 4)
        server.kill()  # creates in flight: some durable and unanswered, some never received
        server.start()
        for thread in threads:
            thread.join(60)
        stream.close()
        assert errors == []
        assert sorted(answers) == sorted(b["id"] for b in bodies)
        ids = record_ids(server)
        assert sorted(ids) == sorted(uuid.UUID(b["id"]).hex for b in bodies)  # once each
        status, rows = api(server, "GET", "task_queues/")
        assert [r["scheduled_size"] for r in rows if r["task_key"] == "stream.restart"] == [300]


def test_with_a_token_the_stream_asks_for_it(tmp_path):
    env = {"TASKQUEUE_AUTH_TOKEN": "stream-secret"}
    with ProjectServer(database=tmp_path / "db.sqlite3", env=env) as server:
        wrong = ProducerStream(server.api_url, "nope", timeout=WAIT)
        with pytest.raises(EnqueueError, match="refused the producer stream: Invalid token"):
            wrong.create(body())
        right = ProducerStream(server.api_url, "stream-secret", timeout=WAIT)
        assert right.create(body())["state_type"] == "SCHEDULED"
        right.close()


async def test_frames_that_break_the_protocol_close_the_stream_with_4001(server):
    async with connect(
        server.url.replace("http", "ws") + PATH, subprotocols=["taskqueue.producer"]
    ) as ws:
        await ws.send(json.dumps({"type": "auth", "token": None}))
        assert json.loads(await ws.recv()) == {"type": "auth_success"}
        await ws.send(json.dumps({"type": "create", "run": {"task_key": "k"}}))  # no ref
        with pytest.raises(Exception) as closed:
            await asyncio.wait_for(ws.recv(), WAIT)
        assert ws.close_code == 4001
        assert "'create' needs a 'ref'" in ws.close_reason, closed.value


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("serving")
async def test_answers_carry_the_ref_and_come_once_durable():
    comm = WebsocketCommunicator(application, PATH, subprotocols=["taskqueue.producer"])
    assert (await comm.connect(WAIT))[0]
    await comm.send_json_to({"type": "auth", "token": None})
    assert await comm.receive_json_from(WAIT) == {"type": "auth_success"}
    items = [body("asgi.k") for _ in range(5)]
    for ref, item in enumerate(items):  # pipelined: no wait between creates
        await comm.send_json_to({"type": "create", "ref": ref, "run": item})
    await comm.send_json_to({"type": "create", "ref": "bad", "run": {"task_key": ""}})
    answers = {}
    for _ in range(6):
        answer = await comm.receive_json_from(WAIT)
        answers[answer["ref"]] = answer
    assert {answers[ref]["run"]["id"] for ref in range(5)} == {i["id"] for i in items}
    assert {answers[ref]["status"] for ref in range(5)} == {201}
    assert answers["bad"]["status"] == 400 and "task_key" in answers["bad"]["error"]
    assert await queued("asgi.k") == 5
    await comm.send_json_to({"type": "subscribe"})
    closed = await comm.receive_output(WAIT)
    assert closed == {
        "type": "websocket.close",
        "code": 4001,
        "reason": "Protocol violation: unknown message type 'subscribe'",
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("serving")
async def test_a_run_over_the_size_limit_is_answered_413_and_the_stream_stays_open():
    with override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 2000}):
        comm = WebsocketCommunicator(application, PATH, subprotocols=["taskqueue.producer"])
        assert (await comm.connect(WAIT))[0]
        await comm.send_json_to({"type": "auth", "token": None})
        assert await comm.receive_json_from(WAIT) == {"type": "auth_success"}
        big = body("asgi.big", parameters={"x": "y" * 3000})
        await comm.send_json_to({"type": "create", "ref": 1, "run": big})
        answer = await comm.receive_json_from(WAIT)
        assert (answer["ref"], answer["status"]) == (1, 413)
        assert "MAX_MESSAGE_BYTES" in answer["error"]
        await comm.send_json_to({"type": "create", "ref": 2, "run": body("asgi.big")})
        assert (await comm.receive_json_from(WAIT))["status"] == 201
        await comm.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("serving")
async def test_a_client_that_offers_no_subprotocol_is_refused():
    comm = WebsocketCommunicator(application, PATH)
    connected, code = await comm.connect(WAIT)
    assert not connected and code == 1008


# -- POST /api/task_runs/batch ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_batch_creates_each_run_on_its_own_and_answers_in_order():
    client = AsyncClient()
    with override_settings(TASKQUEUE={"KEYS": {"batch.tight": {"scheduled_size": 1}}}):
        items = [body("batch.k"), {"task_key": ""}, body("batch.tight"), body("batch.tight")]
        response = await client.post(
            "/api/task_runs/batch", json.dumps(items), content_type="application/json"
        )
        assert response.status_code == 200
        answers = response.json()
        assert [a["status"] for a in answers] == [201, 400, 201, 503]
        assert answers[0]["run"]["id"] == items[0]["id"]
        assert "task_key" in answers[1]["error"]
        assert answers[3] == {
            "status": 503,
            "error": "the scheduled queue of 'batch.tight' is full; try again later",
            "retry_after": 1,
        }
        assert await queued("batch.k") == 1 and await queued("batch.tight") == 1
    again = await client.post(
        "/api/task_runs/batch", json.dumps(items[:1]), content_type="application/json"
    )
    assert [a["status"] for a in again.json()] == [200]


@pytest.mark.django_db(transaction=True)
async def test_a_batch_must_be_a_non_empty_list_of_at_most_1000():
    client = AsyncClient()
    for bad in ({"task_key": "k"}, []):
        response = await client.post(
            "/api/task_runs/batch", json.dumps(bad), content_type="application/json"
        )
        assert (response.status_code, response.json()) == (
            400,
            {"error": "the request body must be a non-empty JSON list of runs"},
        )
    response = await client.post(
        "/api/task_runs/batch", json.dumps([{}] * 1001), content_type="application/json"
    )
    assert (response.status_code, response.json()) == (
        413,
        {"error": "a batch holds at most 1000 runs, not 1001"},
    )
    assert (await client.get("/api/task_runs/batch")).status_code == 405

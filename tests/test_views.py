"""The HTTP API: every status code with its message, idempotency, backpressure, auth, deferral."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Permission, User
from django.core.handlers.asgi import ASGIHandler
from django.test import AsyncClient, override_settings

from taskqueue_app import lifecycle
from taskqueue_app.models import StateType, TaskRunRecord
from taskqueue_app.queues import RETRY, get_queues
from taskqueue_app.schemas import TaskRun, isoformat, now
from taskqueue_app.testing import claim, queued, take, take_now
from taskqueue_app.testing import queue_row as row

RUNS = "/api/task_runs/"
QUEUES = "/api/task_queues/"
WORKERS = "/api/task_workers/filter"
TOKEN = "s3cret-token"

db = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client() -> AsyncClient:
    return AsyncClient()


async def post(client: AsyncClient, path: str, data: object, **kwargs):
    body = data if isinstance(data, (str, bytes)) else json.dumps(data)
    kwargs.setdefault("content_type", "application/json")
    return await client.post(path, body, **kwargs)


async def record_count(**filters) -> int:
    return await TaskRunRecord.objects.filter(**filters).acount()


async def raw_asgi(method: str, path: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
    """Call Django's ASGI handler with exactly these headers and body chunks (no test client
    niceties such as an automatic Content-Type or Content-Length)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
    }
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks or [b""])
    ]

    async def receive():
        if messages:
            return messages.pop(0)
        # The client stays connected: Django cancels the view on an early http.disconnect.
        await asyncio.get_running_loop().create_future()

    sent = []

    async def send(message):
        sent.append(message)

    await ASGIHandler()(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(body)


# -- POST /api/task_runs/ -----------------------------------------------------------------------


@db
async def test_create_answers_201_with_the_run_records_it_and_queues_it(client):
    response = await post(
        client,
        RUNS,
        {
            "task_key": "emails.send",
            "parameters": {"args": [1], "kwargs": {"to": "a@example.com"}},
            "empirical_policy": {"retries": 2, "retry_delay_seconds": 0.5},
        },
    )
    assert response.status_code == 201, response.content
    assert response["Content-Type"] == "application/json"
    run = response.json()
    assert run["task_key"] == "emails.send"
    assert run["name"] == "send"
    assert run["dynamic_key"].startswith("emails.send-")
    assert run["state"]["type"] == run["state_type"] == "SCHEDULED"
    assert run["state"]["state_details"] == {"deferred": True}
    assert run["empirical_policy"] == {"retries": 2, "retry_delay_seconds": 0.5}
    assert run["created"].endswith("Z")
    assert await record_count(pk=run["id"], state_type="SCHEDULED") == 1
    assert str((await take_now("emails.send")).id) == run["id"]


@db
async def test_same_dynamic_key_again_answers_200_with_the_existing_run_queued_once(client):
    body = {"task_key": "k", "dynamic_key": "once", "parameters": {"x": 1}}
    first = await post(client, RUNS, body)
    second = await post(client, RUNS, {**body, "parameters": {"x": 2}})
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["parameters"] == {"x": 1}
    assert await record_count() == 1
    assert await queued("k") == 1


@db
async def test_two_racing_creates_with_one_dynamic_key_give_one_run(client):
    body = {"task_key": "race", "dynamic_key": "same"}
    one, two = await asyncio.gather(post(client, RUNS, body), post(AsyncClient(), RUNS, body))
    assert sorted([one.status_code, two.status_code]) == [200, 201]
    assert one.json()["id"] == two.json()["id"]
    assert await record_count() == 1
    assert await queued("race") == 1


@db
async def test_application_json_with_charset_is_accepted(client):
    response = await post(
        client, RUNS, {"task_key": "k"}, content_type="application/json; charset=utf-8"
    )
    assert response.status_code == 201


@db
async def test_a_body_without_content_type_is_415_and_stores_nothing():
    # What a cross-site browser request can send without a preflight: refused.
    status, body = await raw_asgi(
        "POST", RUNS, [(b"content-length", b"17")], [b'{"task_key":"k"}\n']
    )
    assert status == 415
    assert body == {"error": "Content-Type must be application/json; none was sent"}
    assert await TaskRunRecord.objects.acount() == 0
    assert await queued("k") == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "the request body is not valid JSON"),
        (b"\xff\xfe\xfa", "the request body is not valid JSON"),
        ('{"task_key": "k", "parameters": {"x": NaN}}', "NaN is not valid JSON"),
        ("[1, 2]", "the request body must be a JSON object"),
        ({}, "task_key is required"),
        ({"task_key": ""}, "task_key must be a non-empty string of at most 200 characters"),
        ({"task_key": 7}, "task_key must be a non-empty string"),
        ({"task_key": "k" * 201}, "task_key must be a non-empty string of at most 200"),
        ({"task_key": "k", "parameters": [1]}, "parameters must be a JSON object"),
        ({"task_key": "k", "state": {"type": "DONE"}}, "state.type 'DONE' is not a state"),
        ({"task_key": "k", "state": {"type": "RUNNING"}}, "state.type must be SCHEDULED"),
        (
            {"task_key": "k", "empirical_policy": {"retries": -1}},
            "empirical_policy.retries must be a non-negative integer",
        ),
        (
            {"task_key": "k", "empirical_policy": {"retry_delay_seconds": "soon"}},
            "empirical_policy.retry_delay_seconds must be a non-negative number",
        ),
        ({"task_key": "k", "id": "nope"}, "id must be a UUID string"),
        ({"task_key": "k", "expected_start_time": "tomorrow"}, "expected_start_time must be"),
        ({"task_key": "k", "colour": "red"}, "unknown field(s): colour"),
    ],
)
@db
async def test_bad_input_is_400_naming_the_problem_and_stores_nothing(client, body, message):
    response = await post(client, RUNS, body)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert await record_count() == 0
    assert all(
        (r["scheduled_size"], r["retry_size"], r["backlog"], r["deferred"]) == (0, 0, 0, 0)
        for r in await get_queues().snapshot()
    )


@pytest.mark.parametrize("priority", [-100, 0, 7, 100])
@db
async def test_a_priority_round_trips_in_the_run(client, priority):
    response = await post(client, RUNS, {"task_key": "p", "priority": priority})
    assert response.status_code == 201, response.content
    assert response.json()["priority"] == priority
    # Recorded and queued with it, too.
    read = await client.get(f"{RUNS}{response.json()['id']}")
    assert read.json()["priority"] == priority
    assert (await take_now("p")).priority == priority


@pytest.mark.parametrize(
    ("priority", "message"),
    [
        (101, "priority must be from -100 to 100, not 101"),
        (-101, "priority must be from -100 to 100, not -101"),
        ("high", "priority must be an integer from -100 to 100"),
        (True, "priority must be an integer from -100 to 100"),
        (1.5, "priority must be an integer from -100 to 100"),
    ],
)
@db
async def test_a_wrong_priority_is_400_naming_it_and_stores_nothing(client, priority, message):
    response = await post(client, RUNS, {"task_key": "p", "priority": priority})
    assert (response.status_code, response.json()) == (400, {"error": message})
    assert await record_count() == 0
    assert await queued("p") == 0


@db
async def test_empty_body_is_400(client):
    response = await client.post(RUNS, "", content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": "the request body is empty; send a JSON object"}


@db
async def test_wrong_content_type_is_415(client):
    response = await post(client, RUNS, {"task_key": "k"}, content_type="text/plain")
    assert response.status_code == 415
    assert response.json() == {"error": "Content-Type must be application/json; not 'text/plain'"}
    assert await record_count() == 0


@override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 100})
@db
async def test_oversize_body_is_413_by_content_length_before_parsing(client):
    # Not even JSON: the size alone decides, the body is never parsed.
    response = await post(client, RUNS, "x" * 101)
    assert response.status_code == 413
    assert response.json() == {
        "error": "the request body is larger than MAX_MESSAGE_BYTES (100 bytes)"
    }
    assert await record_count() == 0


@override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 100})
@db
async def test_oversize_body_without_content_length_is_413():
    status, body = await raw_asgi(
        "POST", RUNS, [(b"content-type", b"application/json")], [b"x" * 60, b"x" * 60]
    )
    assert (status, body["error"]) == (
        413,
        "the request body is larger than MAX_MESSAGE_BYTES (100 bytes)",
    )


@db
async def test_malformed_content_length_is_400():
    status, body = await raw_asgi(
        "POST", RUNS, [(b"content-length", b"ten")], [b'{"task_key":"k"}']
    )
    assert (status, body) == (400, {"error": "Content-Length must be an integer, not 'ten'"})


@db
async def test_full_scheduled_queue_is_503_with_retry_after_and_leaves_nothing(client):
    await get_queues().configure("small", scheduled_size=1)
    assert (await post(client, RUNS, {"task_key": "small", "dynamic_key": "a"})).status_code == 201
    response = await post(client, RUNS, {"task_key": "small", "dynamic_key": "b"})
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json() == {"error": "the scheduled queue of 'small' is full; try again later"}
    assert await record_count() == 1
    assert await queued("small") == 1
    # An existing run is still found while the queue is full: that is not a new run.
    again = await post(client, RUNS, {"task_key": "small", "dynamic_key": "a"})
    assert again.status_code == 200
    assert await queued("small") == 1


@db
async def test_future_start_time_defers_the_run_until_then(client):
    due = now() + timedelta(seconds=0.2)
    response = await post(
        client, RUNS, {"task_key": "later", "expected_start_time": isoformat(due)}
    )
    assert response.status_code == 201
    assert response.json()["expected_start_time"] == isoformat(due)
    assert await queued("later") == 0
    assert (await row("later"))["deferred"] == 1
    run = await take("later")
    assert str(run.id) == response.json()["id"]
    assert now() >= due
    assert (await row("later"))["deferred"] == 0


# -- GET /api/task_runs/<id> ----------------------------------------------------------------------


@db
async def test_read_a_run_200_unknown_404_malformed_400(client):
    created = (await post(client, RUNS, {"task_key": "k"})).json()
    response = await client.get(f"{RUNS}{created['id']}")
    assert response.status_code == 200
    assert response.json()["id"] == created["id"]
    assert response.json()["state_type"] == "SCHEDULED"

    missing = uuid.uuid4()
    response = await client.get(f"{RUNS}{missing}")
    assert (response.status_code, response.json()) == (
        404,
        {"error": f"no task run with id {missing}"},
    )
    response = await client.get(f"{RUNS}not-a-uuid")
    assert (response.status_code, response.json()) == (
        400,
        {"error": "id must be a UUID string, not 'not-a-uuid'"},
    )


@db
async def test_read_shows_the_result_of_a_finished_run(client):
    created = (await post(client, RUNS, {"task_key": "k"})).json()
    run = await claim("k", "conn-1")
    await lifecycle.start("conn-1", run.id, "worker-1")
    await lifecycle.complete("conn-1", run.id, {"answer": 42})
    body = (await client.get(f"{RUNS}{created['id']}")).json()
    assert body["state_type"] == "COMPLETED"
    assert body["result"] == {"answer": 42}
    assert body["run_count"] == 1


# -- POST /api/task_runs/<id>/retry --------------------------------------------------


async def failed_run(client: AsyncClient, key: str) -> str:
    created = (await post(client, RUNS, {"task_key": key})).json()
    run = await claim(key, "conn")
    await lifecycle.start("conn", run.id, "w")
    failed = await lifecycle.fail("conn", run.id, {"type": "ValueError", "message": "boom"})
    assert failed.state_type == StateType.FAILED
    return created["id"]


@db
async def test_retry_a_failed_run_puts_it_in_the_retry_lane(client):
    run_id = await failed_run(client, "r")
    response = await client.post(f"{RUNS}{run_id}/retry", "", content_type="")
    assert response.status_code == 200
    assert (response.json()["state_type"], response.json()["state_name"]) == (
        "SCHEDULED",
        "AwaitingRetry",
    )
    assert (await row("r"))["retry_size"] == 1
    assert str((await take_now("r")).id) == run_id
    assert await record_count(pk=run_id, state_name="AwaitingRetry") == 1


@db
async def test_retry_unknown_404_unfinished_409_malformed_400(client):
    missing = uuid.uuid4()
    response = await client.post(f"{RUNS}{missing}/retry", "", content_type="")
    assert (response.status_code, response.json()) == (
        404,
        {"error": f"no task run with id {missing}"},
    )
    created = (await post(client, RUNS, {"task_key": "k"})).json()
    response = await client.post(f"{RUNS}{created['id']}/retry", "", content_type="")
    assert response.status_code == 409
    assert response.json()["error"] == (
        f"run {created['id']} is SCHEDULED: only FAILED, CRASHED or CANCELLED runs can be "
        "retried, and it has not finished yet; cancel it first to run it again"
    )
    response = await client.post(f"{RUNS}zzz/retry")
    assert response.status_code == 400
    assert response.json()["error"] == "id must be a UUID string, not 'zzz'"


@db
async def test_retry_into_a_full_retry_lane_is_503_and_changes_nothing(client):
    run_id = await failed_run(client, "full")
    await get_queues().configure("full", retry_size=1)
    filler = TaskRun(task_key="full", dynamic_key="filler", name="filler")
    await get_queues().enqueue(filler, RETRY)  # any run fills the lane
    response = await client.post(f"{RUNS}{run_id}/retry", "", content_type="")
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json() == {"error": "the retry queue of 'full' is full; try again later"}
    assert await record_count(pk=run_id, state_type="FAILED") == 1
    assert (await row("full"))["retry_size"] == 1
    assert (await take_now("full")).id == filler.id


# -- POST /api/task_runs/<id>/cancel ---------------------------------------------------


@db
async def test_cancel_a_queued_run_then_409_once_it_is_cancelled(client):
    created = (await post(client, RUNS, {"task_key": "c"})).json()
    response = await client.post(f"{RUNS}{created['id']}/cancel", "", content_type="")
    assert response.status_code == 200
    assert (response.json()["state_type"], response.json()["state_name"]) == (
        "CANCELLED",
        "Cancelled",
    )
    assert await queued("c") == 0
    assert await record_count(pk=created["id"], state_type="CANCELLED") == 1
    again = await client.post(f"{RUNS}{created['id']}/cancel", "", content_type="")
    assert again.status_code == 409
    assert again.json()["error"] == (
        f"run {created['id']} is CANCELLED: it has already finished, so there is nothing to cancel"
    )


@db
async def test_cancel_a_running_run_answers_it_still_running_with_cancel_requested(client):
    created = (await post(client, RUNS, {"task_key": "c"})).json()
    queues = get_queues()
    await queues.connect("conn", "w", ["c"])
    heard: list[str] = []
    queues.listen("conn", heard.append)
    run = await claim("c", "conn")
    await lifecycle.start("conn", run.id, "w")
    body = (await client.post(f"{RUNS}{created['id']}/cancel", "", content_type="")).json()
    assert (body["state_type"], body["state_name"]) == ("RUNNING", "Cancelling")
    assert body["state"]["state_details"] == {"deferred": True, "cancel_requested": True}
    assert [json.loads(notice)["type"] for notice in heard] == ["cancel"]


@db
async def test_cancel_unknown_404_malformed_400_and_get_405(client):
    missing = uuid.uuid4()
    response = await client.post(f"{RUNS}{missing}/cancel", "", content_type="")
    assert (response.status_code, response.json()) == (
        404,
        {"error": f"no task run with id {missing}"},
    )
    assert (await client.post(f"{RUNS}nope/cancel")).status_code == 400
    response = await client.get(f"{RUNS}{missing}/cancel")
    assert (response.status_code, response["Allow"]) == (405, "POST")


@db
@pytest.mark.parametrize(
    "path, hint",
    [
        ("/api/task_runs", " (this path ends with a slash)"),
        (
            f"/api/task_runs/{uuid.uuid4()}/",
            " (the paths of runs and workers have no trailing slash)",
        ),
        ("/api/task_workers/filter/", " (the paths of runs and workers have no trailing slash)"),
        ("/api/nothing-here", ""),
    ],
)
async def test_every_other_path_under_the_api_answers_json_404(client, path, hint):
    for method in (client.get, client.post):
        response = await method(path)
        assert response.status_code == 404
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"error": f"no API endpoint at {path}{hint}; see the API docs"}


# -- GET /api/task_queues/ and POST /api/task_workers/filter ------------------------------


@db
async def test_task_queues_lists_each_key_with_sizes_limits_and_workers(client):
    await get_queues().configure("b", scheduled_size=5, retry_size=2)
    await post(client, RUNS, {"task_key": "a"})
    await get_queues().connect("c1", "worker-1", ["a", "b"])
    await get_queues().connect("c2", "worker-2", ["a"])
    response = await client.get(QUEUES)
    assert response.status_code == 200
    rows = {row["task_key"]: row for row in response.json()}
    expected_keys = {
        "task_key",
        "scheduled_size",
        "scheduled_limit",
        "retry_size",
        "retry_limit",
        "configured",
        "workers",
    }
    assert expected_keys <= set(rows["a"])
    assert {k: rows["a"][k] for k in expected_keys} == {
        "task_key": "a",
        "scheduled_size": 1,
        "scheduled_limit": 1000,
        "retry_size": 0,
        "retry_limit": 100,
        "configured": False,
        "workers": 2,
    }
    assert (rows["b"]["scheduled_limit"], rows["b"]["retry_limit"]) == (5, 2)
    assert (rows["b"]["configured"], rows["b"]["workers"]) == (True, 1)


async def test_workers_filter_lists_all_or_those_of_the_keys(client):
    await get_queues().connect("c1", "worker-1", ["a", "b"])
    await get_queues().connect("c2", "worker-2", ["c"])
    everyone = await post(client, WORKERS, {})
    assert everyone.status_code == 200
    assert [w["identifier"] for w in everyone.json()] == ["worker-1", "worker-2"]
    assert {"identifier", "task_keys", "timestamp"} <= set(everyone.json()[0])
    no_body = await client.post(WORKERS, "", content_type="")
    assert [w["identifier"] for w in no_body.json()] == ["worker-1", "worker-2"]
    some = await post(client, WORKERS, {"task_worker_filter": {"task_keys": ["b"]}})
    assert [(w["identifier"], w["task_keys"]) for w in some.json()] == [("worker-1", ["a", "b"])]
    empty = await post(client, WORKERS, {"task_worker_filter": {"task_keys": []}})
    assert len(empty.json()) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the request body must be a JSON object"),
        ({"filter": {}}, "unknown field(s): filter; allowed: task_worker_filter"),
        ({"task_worker_filter": "a"}, "task_worker_filter must be a JSON object"),
        (
            {"task_worker_filter": {"keys": []}},
            "task_worker_filter has unknown field(s): keys; allowed: task_keys",
        ),
        (
            {"task_worker_filter": {"task_keys": "a"}},
            "task_worker_filter.task_keys must be a list of strings",
        ),
        (
            {"task_worker_filter": {"task_keys": [1]}},
            "task_worker_filter.task_keys must be a list of strings",
        ),
    ],
)
async def test_workers_filter_refuses_a_bad_body(client, body, message):
    response = await post(client, WORKERS, body)
    assert (response.status_code, response.json()) == (400, {"error": message})


# -- methods ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("get", RUNS, "POST"),
        ("put", RUNS, "POST"),
        ("delete", f"{RUNS}{uuid.UUID(int=1)}", "GET"),
        ("get", f"{RUNS}{uuid.UUID(int=1)}/retry", "POST"),
        ("post", QUEUES, "GET"),
        ("get", WORKERS, "POST"),
    ],
)
async def test_wrong_method_is_405_with_allow(client, method, path, allow):
    response = await getattr(client, method)(path)
    assert response.status_code == 405
    assert response["Allow"] == allow
    assert response.json() == {"error": f"method {method.upper()} is not allowed here; use {allow}"}


# -- auth ------------------------------------------------------------------------------------------

ENDPOINTS = [
    ("post", RUNS),
    ("get", f"{RUNS}{uuid.UUID(int=1)}"),
    ("post", f"{RUNS}{uuid.UUID(int=1)}/retry"),
    ("get", QUEUES),
    ("post", WORKERS),
]

with_token = override_settings(TASKQUEUE={"AUTH_TOKEN": TOKEN})


@with_token
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_without_token_every_endpoint_is_401(client, method, path):
    response = await getattr(client, method)(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert response.json() == {
        "error": "authentication required: send 'Authorization: Bearer <token>'"
    }
    other_scheme = await getattr(client, method)(path, headers={"Authorization": "Basic eDp5"})
    assert other_scheme.status_code == 401
    assert other_scheme.json() == {"error": "Authorization header must be 'Bearer <token>'"}


@with_token
@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_wrong_token_is_403(client, method, path):
    response = await getattr(client, method)(path, headers={"Authorization": "Bearer nope"})
    assert (response.status_code, response.json()) == (403, {"error": "invalid token"})


@with_token
@db
async def test_right_token_passes_and_csrf_does_not_apply():
    client = AsyncClient(enforce_csrf_checks=True)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    created = await post(client, RUNS, {"task_key": "k"}, headers=auth)
    assert created.status_code == 201
    read = await client.get(f"{RUNS}{created.json()['id']}", headers=auth)
    assert read.status_code == 200


async def logged_in(is_staff: bool, *permissions: str) -> AsyncClient:
    user = await sync_to_async(User.objects.create_user)(
        f"user-{uuid.uuid4().hex[:8]}", password="pw", is_staff=is_staff
    )
    if permissions:
        granted = Permission.objects.filter(
            content_type__app_label="taskqueue_app", codename__in=permissions
        )
        await sync_to_async(user.user_permissions.set)(await sync_to_async(list)(granted))
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(user)
    return client


@with_token
@db
async def test_staff_session_with_the_permission_is_accepted_for_reads_only():
    staff = await logged_in(True, "view_queuedashboard", "view_taskrunrecord")
    assert (await staff.get(QUEUES)).status_code == 200
    assert (await staff.get(f"{RUNS}{uuid.uuid4()}")).status_code == 404
    refused = await post(staff, RUNS, {"task_key": "k"})
    assert refused.status_code == 401
    assert await record_count() == 0
    # A session never rescues a wrong token.
    wrong = await staff.get(QUEUES, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403


@with_token
@db
async def test_a_session_that_is_not_staff_is_refused():
    user = await logged_in(False, "view_queuedashboard", "view_taskrunrecord")
    assert (await user.get(QUEUES)).status_code == 401


@with_token
@db
async def test_a_staff_session_without_the_view_permission_is_refused():
    # The dashboard's permission opens the queue numbers, not the runs' parameters and results.
    staff = await logged_in(True, "view_queuedashboard")
    assert (await staff.get(QUEUES)).status_code == 200
    assert (await staff.get(f"{RUNS}{uuid.uuid4()}")).status_code == 401
    bare = await logged_in(True)
    assert (await bare.get(QUEUES)).status_code == 401


@override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 1000})
@db
async def test_a_run_whose_json_would_exceed_the_limit_is_413(client):
    # The body fits, but the run built from it (with its added fields) would not reach a worker.
    body = {"task_key": "k", "parameters": {"blob": "x" * 600}}
    assert len(json.dumps(body)) < 1000
    response = await post(client, RUNS, body)
    assert response.status_code == 413
    assert "over MAX_MESSAGE_BYTES (1000)" in response.json()["error"]
    assert await record_count() == 0


@db
async def test_a_body_nested_too_deeply_is_400(client):
    response = await post(client, RUNS, "[" * 100_000 + "]" * 100_000)
    assert (response.status_code, response.json()) == (
        400,
        {"error": "the request body is nested too deeply"},
    )


def _rename_table(old: str, new: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {old} RENAME TO {new}")


@db
async def test_a_database_that_refuses_the_insert_is_503_and_nothing_is_queued(client):
    table = TaskRunRecord._meta.db_table
    await sync_to_async(_rename_table)(table, f"{table}_away")
    try:
        response = await post(client, RUNS, {"task_key": "k"})
    finally:
        await sync_to_async(_rename_table)(f"{table}_away", table)
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json()["error"].startswith("the run could not be recorded (")
    assert await queued("k") == 0
    # The writer keeps going: the next run is accepted.
    assert (await post(client, RUNS, {"task_key": "k"})).status_code == 201


@db
async def test_an_id_that_belongs_to_another_run_is_409(client):
    run_id = str(uuid.uuid4())
    first = await post(client, RUNS, {"id": run_id, "task_key": "a", "dynamic_key": "one"})
    assert first.status_code == 201
    # The same id again for the same run is a retried request: the run, 200.
    again = await post(client, RUNS, {"id": run_id, "task_key": "a"})
    assert (again.status_code, again.json()["id"]) == (200, run_id)
    for other in ({"task_key": "b"}, {"task_key": "a", "dynamic_key": "two"}):
        response = await post(client, RUNS, {"id": run_id, **other})
        assert response.status_code == 409
        assert response.json() == {
            "error": f"id {run_id} belongs to another run (task_key 'a', dynamic_key 'one')"
        }
    assert await record_count() == 1
    assert await queued("a") == 1 and await queued("b") == 0

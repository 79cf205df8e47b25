"""The Django Tasks backend: in the server's loop, from another thread of the server, from
another process over HTTP, and end to end with ``manage.py taskworker`` and a real Daphne."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django.utils import timezone

import taskqueue_app
from project.servers import ProjectServer
from project.tasks import add, flaky_greeting, wait_then_echo
from taskqueue_app import lifecycle
from taskqueue_app import server as tq_server
from taskqueue_app.backend import EnqueueError, QueueTask, TaskQueueBackend
from taskqueue_app.errors import AlreadyFinished
from taskqueue_app.management.commands.taskworker import discover_tasks
from taskqueue_app.models import StateType, TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.schemas import TaskRun
from taskqueue_app.tasks_compat import (
    InvalidTaskError,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_enqueued,
    task_finished,
    task_started,
)
from taskqueue_app.testing import free_port, queued, take
from taskqueue_app.testing import queue_row as lane_row
from taskqueue_app.worker.django_worker import DjangoTaskWorker
from tests.worker_helpers import (
    Received,
    api,
    shell_result,
    start_django_worker,
    terminate_gently,
    wait_for_state,
)

ADD = "project.tasks.add"
WHEN_SERVED = "tests.e2e_urls.add_when_served"  # the test views' task
DB = pytest.mark.django_db(transaction=True)


# -- in the server's loop and its threads -------------------------------------------------------


@DB
async def test_aenqueue_in_the_server_loop_creates_and_queues_the_run():
    await tq_server.ensure_started()  # this test's loop is the server's loop
    with Received(task_enqueued) as enqueued:
        result = await add.aenqueue(2, b=3)
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs, result.backend) == ([2], {"b": 3}, "default")
    record = await TaskRunRecord.objects.aget(pk=uuid.UUID(result.id))
    assert (record.task_key, record.name) == (ADD, "add")
    assert record.parameters == {"args": [2], "kwargs": {"b": 3}}
    assert await queued(ADD) == 1
    assert enqueued.results == [(TaskQueueBackend, TaskResultStatus.READY, result)]
    read_back = await add.aget_result(result.id)
    assert (read_back.id, read_back.status, read_back.attempts) == (result.id, "READY", 0)


@DB
async def test_enqueue_from_another_thread_of_the_server_is_handed_to_its_loop():
    await tq_server.ensure_started()
    result = await asyncio.to_thread(add.enqueue, 1, 2)
    assert await queued(ADD) == 1  # put by the loop, not by the thread
    assert await TaskRunRecord.objects.filter(pk=uuid.UUID(result.id)).aexists()
    read_back = await asyncio.to_thread(add.get_result, result.id)
    assert read_back.status == TaskResultStatus.READY


@DB
async def test_priority_is_recorded_and_honoured_within_the_key():
    await tq_server.ensure_started()
    low = await add.using(priority=-5).aenqueue(1, 1)
    plain = await add.aenqueue(2, 2)
    high = await add.using(priority=20).aenqueue(3, 3)
    record = await TaskRunRecord.objects.aget(pk=uuid.UUID(high.id))
    assert record.priority == 20
    order = [str((await take(ADD)).id) for _ in range(3)]
    assert order == [high.id, plain.id, low.id]


@DB
async def test_a_blocking_enqueue_inside_the_loop_is_refused_with_the_fix():
    await tq_server.ensure_started()
    with pytest.raises(RuntimeError, match=r"await task.aenqueue"):
        add.enqueue(1, 2)


@DB
async def test_run_after_defers_the_run_until_then():
    await tq_server.ensure_started()
    due = timezone.now() + timedelta(hours=1)
    result = await add.using(run_after=due).aenqueue(1, 1)
    record = await TaskRunRecord.objects.aget(pk=uuid.UUID(result.id))
    assert record.expected_start_time == due
    assert (await lane_row(ADD))["deferred"] == 1
    assert await queued(ADD) == 0
    # The run waiting for its time is this one: it can be taken out of the engine by its id.
    assert (await get_queues().cancel(uuid.UUID(result.id))).id == uuid.UUID(result.id)
    assert (await lane_row(ADD))["deferred"] == 0


@DB
async def test_a_full_queue_raises_and_stores_nothing():
    await tq_server.ensure_started()
    await get_queues().configure(ADD, scheduled_size=1)
    await add.aenqueue(1, 1)
    with pytest.raises(lifecycle.QueueFullError, match="full"):
        await add.aenqueue(2, 2)
    assert await TaskRunRecord.objects.acount() == 1


# -- refusals without a server -------------------------------------------------------------------


def test_arguments_that_are_not_json_are_refused_by_name():
    with pytest.raises(TypeError, match=r"arguments of task project.tasks.add must be JSON"):
        add.enqueue({1, 2}, 3)


@override_settings(TASKQUEUE={"SERVER_URL": None})
def test_with_no_server_loop_and_no_server_url_enqueue_says_what_to_set():
    with pytest.raises(ImproperlyConfigured, match=r"TASKQUEUE\['SERVER_URL'\] is not set"):
        add.enqueue(1, 2)


def test_an_unreachable_server_url_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}/api"
    with override_settings(TASKQUEUE={"SERVER_URL": url}):
        with pytest.raises(EnqueueError, match=f"cannot reach the task server at {url}"):
            add.enqueue(1, 2)


@pytest.mark.django_db
def test_unknown_and_malformed_result_ids_do_not_exist():
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result(str(uuid.uuid4()))
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result("not-a-uuid")


def test_retry_policy_comes_from_options_and_a_task_may_set_its_own():
    tasks = {
        "default": {
            "BACKEND": "taskqueue_app.backend.TaskQueueBackend",
            "OPTIONS": {"retries": 3, "retry_delay_seconds": 5},
        }
    }
    with override_settings(TASKS=tasks):
        backend = add.get_backend()
        assert backend.create_request(add, [1, 2], {})["empirical_policy"] == {
            "retries": 3,
            "retry_delay_seconds": 5,
        }
        policy = backend.create_request(flaky_greeting, ["x"], {})["empirical_policy"]
        assert policy == {"retries": 2, "retry_delay_seconds": 1}
        with pytest.raises(InvalidTaskError, match="retries must be a non-negative integer"):
            QueueTask(func=add.func, retries=-1)
    bad = {"default": {**tasks["default"], "OPTIONS": {"retries": "many"}}}
    with override_settings(TASKS=bad):
        with pytest.raises(InvalidTaskError, match="OPTIONS.* retries"):
            add.get_backend()


# -- results and the worker side -----------------------------------------------------------------


def _run(state: str, **changes) -> TaskRun:
    run = TaskRun(task_key=ADD, dynamic_key=f"k-{uuid.uuid4().hex}", name="add")
    return run.with_state(
        state, state.title(), parameters={"args": [1, 2], "kwargs": {}}, **changes
    )


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (StateType.SCHEDULED, TaskResultStatus.READY),
        (StateType.PENDING, TaskResultStatus.READY),
        (StateType.RUNNING, TaskResultStatus.RUNNING),
        (StateType.COMPLETED, TaskResultStatus.SUCCESSFUL),
        (StateType.FAILED, TaskResultStatus.FAILED),
        (StateType.CRASHED, TaskResultStatus.FAILED),
        (StateType.CANCELLED, TaskResultStatus.FAILED),
    ],
)
def test_states_map_to_task_result_statuses(state, status):
    assert add.get_backend().result_of(_run(state)).status == status


def test_a_result_carries_value_errors_timestamps_and_attempts():
    backend = add.get_backend()
    now = timezone.now()
    done = backend.result_of(
        _run(StateType.COMPLETED, result=3, run_count=2, worker="w1", started=now, finished=now)
    )
    assert (done.return_value, done.attempts, done.worker_ids) == (3, 2, ["w1", "w1"])
    assert (done.started_at, done.finished_at, done.task) == (now, now, add)
    error = {"type": "builtins.KeyError", "message": "'x'", "traceback": "Traceback ..."}
    failed = backend.result_of(_run(StateType.FAILED, error=error, run_count=1))
    assert failed.errors[0].exception_class is KeyError
    assert failed.errors[0].traceback == "Traceback ..."
    with pytest.raises(ValueError, match="Task failed"):
        failed.return_value  # noqa: B018


def test_the_worker_side_sends_task_started_and_task_finished_and_passes_context():
    worker = DjangoTaskWorker(
        "http://h/api", {ADD: add, flaky_greeting.module_path: flaky_greeting}
    )
    run = {"id": str(uuid.uuid4()), "task_key": ADD, "run_count": 0}
    with Received(task_started) as started, Received(task_finished) as finished:
        # What a call returns is the value as the worker reports it: JSON, checked once.
        assert worker.result_json(ADD, worker.call_sync(ADD, add.func, run, [2], {"b": 5})) == "7"
    assert [status for _, status, _ in started.results] == ["RUNNING"]
    assert [status for _, status, _ in finished.results] == ["SUCCESSFUL"]
    assert finished.results[0][2].id == run["id"]
    key = flaky_greeting.module_path
    first = {"id": str(uuid.uuid4()), "task_key": key, "run_count": 0}
    with Received(task_finished) as finished:
        with pytest.raises(ConnectionError, match="attempt 1"):
            worker.call_sync(key, flaky_greeting.func, first, ["ann"], {})
    assert finished.results[0][1] == "FAILED"
    assert finished.results[0][2].errors[0].exception_class is ConnectionError
    second = {**first, "run_count": 1}
    value = worker.call_sync(key, flaky_greeting.func, second, ["ann"], {})
    assert json.loads(worker.result_json(key, value)) == "Hello, ann! (attempt 2)"


async def test_the_worker_side_signals_around_async_tasks_too():
    worker = DjangoTaskWorker("http://h/api", [wait_then_echo])
    key = wait_then_echo.module_path
    run = {"id": str(uuid.uuid4()), "task_key": key, "run_count": 0}
    with Received(task_started) as started, Received(task_finished) as finished:
        value = await worker.call_async(key, wait_then_echo.func, run, ["v"], {"seconds": 0})
    assert worker.result_json(key, value) == '"v"'
    assert [s for _, s, _ in started.results + finished.results] == ["RUNNING", "SUCCESSFUL"]


def test_taskworker_with_no_paths_serves_every_task_of_this_backend():
    found = discover_tasks()
    assert {ADD, "project.tasks.count_slowly", flaky_greeting.module_path} <= set(found)
    assert found[ADD] is add


# -- end to end: Daphne, manage.py taskworker, views and another process ---------------------------


@pytest.fixture(scope="module")
def server():
    with ProjectServer(settings="tests.e2e_settings") as running:
        worker = start_django_worker(running, ADD, flaky_greeting.module_path)
        worker.wait_for("connected to ")
        running.worker = worker
        yield running
        terminate_gently(worker)


def _get_json(server: ProjectServer, path: str) -> dict:
    with urllib.request.urlopen(f"{server.url}/{path}", timeout=20) as response:
        return json.loads(response.read())


def _wait_for_status(server: ProjectServer, result_id: str, timeout: float = 20.0) -> dict:
    """Poll get_result (through a sync view of the server) until the run is finished."""
    deadline = time.monotonic() + timeout
    while True:
        body = _get_json(server, f"test/result/{result_id}")
        if body["status"] in ("SUCCESSFUL", "FAILED"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("view", "thread"), [("enqueue-sync", "other"), ("enqueue-async", "main")])
def test_enqueue_from_a_view_and_read_the_result_back(server, view, thread):
    # The views enqueue a task no worker serves yet, so what they read back is determined: the
    # run waits in its queue, READY, until this test starts a worker for it.
    answer = _get_json(server, f"test/{view}?a=20&b=22")
    assert (answer["status"], answer["task"]) == ("READY", WHEN_SERVED)
    assert answer["read_back"] == "READY"
    assert (answer["thread"] == "MainThread") is (thread == "main")
    status, queues = api(server, "GET", "task_queues/")
    assert status == 200
    (row,) = [q for q in queues if q["task_key"] == WHEN_SERVED]
    assert (row["scheduled_size"], row["held"], row["workers"]) == (1, 0, 0)
    assert _get_json(server, f"test/result/{answer['id']}") == {"status": "READY", "attempts": 0}
    worker = start_django_worker(server, WHEN_SERVED)
    try:
        body = _wait_for_status(server, answer["id"])
        assert body == {"status": "SUCCESSFUL", "attempts": 1, "return_value": 42}
    finally:
        terminate_gently(worker)


SHELL_ENQUEUE = """
    import json
    from datetime import datetime, timedelta
    from django.utils import timezone
    from project.tasks import add, flaky_greeting
    from taskqueue_app.lifecycle import QueueFullError
    from tests.e2e_urls import never_run

    due = timezone.now() + timedelta(seconds=1.5)
    ids = {
        "add": add.enqueue(1, 2).id,
        "flaky": flaky_greeting.enqueue("Ada").id,
        "deferred": add.using(run_after=due).enqueue(3, 4).id,
    }
    never_run.enqueue()
    try:
        never_run.enqueue()
        full = None
    except QueueFullError as exc:
        full = str(exc)
    print("RESULT " + json.dumps({"ids": ids, "due": due.isoformat(), "full": full}))
"""

SHELL_READ = """
    import json
    from project.tasks import add, flaky_greeting
    ids = {ids}
    out = {{}}
    for name, task in (("add", add), ("flaky", flaky_greeting), ("deferred", add)):
        result = task.get_result(ids[name])
        out[name] = [result.status, result.return_value, result.attempts, len(result.errors)]
    print("RESULT " + json.dumps(out))
"""


@pytest.mark.timeout(120)
def test_enqueue_from_another_process_retries_defer_and_a_full_queue(server):
    sent = shell_result(server, SHELL_ENQUEUE)
    ids = sent["ids"]
    assert sent["full"] and "full" in sent["full"]
    status, queues = api(server, "GET", "task_queues/")
    assert status == 200
    (never,) = [q for q in queues if q["task_key"] == "tests.e2e_urls.never_run"]
    assert never["scheduled_size"] == 1  # the refused run was not stored
    for name in ("add", "flaky", "deferred"):
        wait_for_state(server, ids[name], "COMPLETED")
    deferred = wait_for_state(server, ids["deferred"])
    due = datetime.fromisoformat(sent["due"])
    assert datetime.fromisoformat(deferred["expected_start_time"]) == due
    assert datetime.fromisoformat(deferred["start_time"]) >= due  # not started before its time
    flaky = wait_for_state(server, ids["flaky"])
    assert flaky["run_count"] == 2  # failed once, then succeeded on the retry
    read = shell_result(server, SHELL_READ.format(ids=ids))
    assert read["add"] == ["SUCCESSFUL", 3, 1, 0]
    assert read["flaky"] == ["SUCCESSFUL", "Hello, Ada! (attempt 2)", 2, 1]
    assert read["deferred"] == ["SUCCESSFUL", 7, 1, 0]
    server.worker.wait_for(rf"run {flaky_greeting.module_path} {ids['flaky']} failed .*attempt 1")


# -- cancel (the Tasks framework has none: taskqueue_app.cancel) --------------------------------


@DB
async def test_cancel_a_waiting_result_in_the_server_loop():
    await tq_server.ensure_started()
    result = await add.aenqueue(1, 2)
    cancelled = await taskqueue_app.acancel(result.id)
    assert cancelled.status == TaskResultStatus.FAILED  # the framework has no cancelled status
    assert await queued(ADD) == 0
    record = await TaskRunRecord.objects.aget(pk=uuid.UUID(result.id))
    assert record.state_type == StateType.CANCELLED
    with pytest.raises(AlreadyFinished, match="already finished"):
        await taskqueue_app.acancel(result.id)
    with pytest.raises(TaskResultDoesNotExist):
        await taskqueue_app.acancel(str(uuid.uuid4()))


SHELL_CANCEL = """
    import json, uuid
    from datetime import timedelta
    from django.utils import timezone
    import taskqueue_app
    from taskqueue_app.errors import AlreadyFinished
    from project.tasks import add

    result = add.using(run_after=timezone.now() + timedelta(hours=1)).enqueue(1, 1)
    first = taskqueue_app.cancel(result.id)
    try:
        taskqueue_app.cancel(result.id)
        again = None
    except AlreadyFinished as exc:
        again = str(exc)
    try:
        taskqueue_app.cancel(str(uuid.uuid4()))
        unknown = None
    except Exception as exc:
        unknown = type(exc).__name__
    print("RESULT " + json.dumps(
        {"id": result.id, "status": first.status, "again": again, "unknown": unknown}))
"""


@pytest.mark.timeout(60)
def test_cancel_from_another_process_goes_to_the_server(server):
    sent = shell_result(server, SHELL_CANCEL)
    assert sent["status"] == "FAILED"
    assert "already finished" in sent["again"]
    assert sent["unknown"] == "TaskResultDoesNotExist"
    status, run = api(server, "GET", f"task_runs/{sent['id']}")
    assert (status, run["state_type"]) == (200, "CANCELLED")

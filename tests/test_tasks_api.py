"""The Tasks API walked the way Django's own backend tests walk it (``tests/tasks/`` of Django
6.1 and the django-tasks database backend's), against a real Daphne and real workers.

This process is a producer that reaches the server only over HTTP (``SERVER_URL``; its test
database is not the server's): it enqueues, reads results back and refreshes them. A
``manage.py taskworker`` (``worker-a``, queues ``default`` and ``queue-1``) runs the tasks of
tests/tasks.py. Other processes read the same runs back: the server itself (test views), a
shell sharing the server's database, and a shell with an empty database of its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.request
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

import tests.e2e_settings as e2e
from project.servers import ProjectServer
from taskqueue_app.backend import TaskQueueBackend
from taskqueue_app.errors import NotJSONSerializable
from taskqueue_app.tasks_compat import (
    TaskResultDoesNotExist,
    TaskResultMismatch,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from tests import tasks as t
from tests.worker_helpers import (
    ROOT,
    Received,
    create_run,
    shell_result,
    start_django_worker,
    terminate_gently,
    wait_for_state,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]

WORKER = "worker-a"
READY, SUCCESSFUL, FAILED = (
    TaskResultStatus.READY,
    TaskResultStatus.SUCCESSFUL,
    TaskResultStatus.FAILED,
)


@pytest.fixture(scope="module")
def server():
    with ProjectServer(settings="tests.e2e_settings") as running:
        worker = start_django_worker(
            running, "--client-id", WORKER, "--queue", "default", "--queue", "queue-1"
        )
        worker.wait_for("connected to ")
        running.worker = worker
        yield running
        terminate_gently(worker)


@pytest.fixture(autouse=True)
def producer(server):
    """This process as a producer of the server's: its TASKS, and its address."""
    queue = {**settings.TASKQUEUE, "SERVER_URL": server.api_url}
    with override_settings(TASKS=e2e.TASKS, TASKQUEUE=queue):
        yield


def finished(result, timeout: float = 20.0):
    """Refresh ``result`` until its run is finished (another process runs it: poll)."""
    deadline = time.monotonic() + timeout
    while True:
        result.refresh()
        if result.is_finished:
            return result
        assert time.monotonic() < deadline, t.describe(result)
        time.sleep(0.05)


async def afinished(result, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        await result.arefresh()
        if result.is_finished:
            return result
        assert time.monotonic() < deadline, t.describe(result)
        await asyncio.sleep(0.05)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=20) as response:
        return json.loads(response.read())


# -- enqueue, get_result, refresh ----------------------------------------------------------------


def test_enqueue_answers_ready_announces_it_here_and_reads_back_equal(server):
    idle = t.noop_task.using(queue_name="idle")  # no worker serves it: it stays READY
    with Received(task_enqueued) as enqueued:
        result = idle.enqueue(1, two=3)
    assert uuid.UUID(result.id).version == 4
    assert (result.status, result.is_finished, result.attempts) == (READY, False, 0)
    assert (result.started_at, result.last_attempted_at, result.finished_at) == (None, None, None)
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    assert (result.task, result.args, result.kwargs, result.backend) == (
        idle,
        [1],
        {"two": 3},
        "default",
    )
    assert enqueued.results == [(TaskQueueBackend, READY, result)]
    assert task_backends["default"].get_result(result.id) == result
    assert idle.get_result(result.id) == result
    before = dataclasses.asdict(result)
    result.refresh()
    assert dataclasses.asdict(result) == before


async def test_aenqueue_aget_result_and_arefresh(server):
    idle = t.noop_task_async.using(queue_name="idle")
    with Received(task_enqueued) as enqueued:
        result = await idle.aenqueue()
    assert (result.status, result.task, result.args, result.kwargs) == (READY, idle, [], {})
    assert enqueued.results == [(TaskQueueBackend, READY, result)]
    assert await task_backends["default"].aget_result(result.id) == result
    assert await idle.aget_result(result.id) == result
    before = dataclasses.asdict(result)
    await result.arefresh()
    assert dataclasses.asdict(result) == before


async def test_unknown_ids_do_not_exist_and_another_tasks_result_mismatches(server):
    backend = task_backends["default"]
    for result_id in (str(uuid.uuid4()), "123"):
        with pytest.raises(TaskResultDoesNotExist):
            await asyncio.to_thread(backend.get_result, result_id)
        with pytest.raises(TaskResultDoesNotExist):
            await backend.aget_result(result_id)
    other = await t.noop_task_async.using(queue_name="idle").aenqueue()
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        await asyncio.to_thread(t.noop_task.get_result, other.id)
    with pytest.raises(TaskResultMismatch, match="Task does not match"):
        await t.noop_task.aget_result(other.id)


def test_a_run_done_by_the_worker_refreshes_to_successful(server):
    result = t.calculate_meaning_of_life.enqueue()
    assert result.status == READY
    finished(result)
    assert (result.status, result.return_value, result.attempts) == (SUCCESSFUL, 42, 1)
    assert (result.worker_ids, result.errors) == ([WORKER], [])
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == result.started_at
    assert result.task == t.calculate_meaning_of_life


async def test_an_async_task_runs_and_arefresh_follows_it(server):
    result = await afinished(await t.echo_async.aenqueue("value"))
    assert (result.status, result.return_value, result.worker_ids) == (
        SUCCESSFUL,
        "value",
        [WORKER],
    )
    none = await afinished(await t.noop_task_async.aenqueue())
    assert (none.status, none.return_value) == (SUCCESSFUL, None)


# -- the task as enqueued, read back from every kind of process ----------------------------------

SHELL_READ = """
    import json
    from taskqueue_app.tasks_compat import task_backends
    from tests.tasks import describe
    print("RESULT " + json.dumps(describe(task_backends["default"].get_result({id!r}))))
"""


def test_queue_priority_run_after_and_alias_round_trip_through_every_process(server, tmp_path):
    due = timezone.now() + timedelta(seconds=1)
    task = t.describe_context.using(
        queue_name="queue-1", priority=7, run_after=due, backend="other"
    )
    result = task.enqueue()
    assert (result.task, result.backend) == (task, "other")
    finished(result)
    # What the worker handed the task, in its context: the task as enqueued.
    seen = result.return_value
    assert (seen["queue_name"], seen["priority"], seen["backend"]) == ("queue-1", 7, "other")
    assert (seen["run_after"], seen["status"], seen["worker_ids"]) == (
        due.isoformat(),
        "RUNNING",
        [WORKER],
    )
    assert result.started_at >= due  # deferred until run_after
    # Here (over HTTP only), through either alias: the run's own alias, the task as enqueued.
    assert (result.task, result.backend) == (task, "other")
    expected = t.describe(result)
    assert t.describe(task_backends["default"].get_result(result.id)) == expected
    # In the server process: a sync view (a thread, handed to the loop) and an async view.
    for view in ("details", "adetails"):
        assert _get_json(f"{server.url}/test/{view}/{result.id}") == expected
    # A process sharing the server's database, with no server URL: the records.
    assert (
        shell_result(server, SHELL_READ.format(id=result.id), TASKQUEUE_SERVER_URL="") == expected
    )
    # A process with a database of its own, empty (no tables): over HTTP.
    empty = str(tmp_path / "empty.sqlite3")
    assert shell_result(server, SHELL_READ.format(id=result.id), TASKQUEUE_DB=empty) == expected


# -- errors, tracebacks, return values -----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "exception", "message"),
    [
        ("failing_task_value_error", ValueError, "This task failed due to ValueError"),
        ("failing_task_system_exit", SystemExit, "This task failed due to SystemExit"),
        (
            "failing_task_keyboard_interrupt",
            KeyboardInterrupt,
            "This task failed due to KeyboardInterrupt",
        ),
    ],
)
def test_a_failing_task_fails_its_run_with_its_traceback_and_the_worker_lives_on(
    server, name, exception, message
):
    result = finished(getattr(t, name).enqueue())
    assert result.status == FAILED
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018
    assert result.enqueued_at <= result.started_at <= result.finished_at
    (error,) = result.errors
    assert error.exception_class is exception
    assert error.traceback.endswith(f"{exception.__name__}: {message}\n"), error.traceback
    # The traceback starts at the task, as the framework records it, not in the worker.
    assert error.traceback.splitlines()[1].lstrip().startswith(f'File "{ROOT}/tests/tasks.py"')
    assert server.worker.process.poll() is None
    assert finished(t.calculate_meaning_of_life.enqueue()).return_value == 42


def test_complex_exceptions_exit_and_a_return_value_that_is_not_json(server):
    complex_error = finished(t.complex_exception.enqueue())
    assert complex_error.errors[0].exception_class is ValueError
    assert 'ValueError(ValueError("This task failed"))' in complex_error.errors[0].traceback
    exited = finished(t.exit_task.enqueue())
    assert (exited.status, exited.errors[0].exception_class) == (FAILED, SystemExit)
    not_json = finished(t.complex_return_value.enqueue())
    assert not_json.status == FAILED
    assert not_json._return_value is None
    assert not_json.enqueued_at <= not_json.started_at <= not_json.finished_at
    assert not_json.errors[0].exception_class is NotJSONSerializable
    assert issubclass(not_json.errors[0].exception_class, TypeError)
    assert "is not JSON serializable" in not_json.errors[0].traceback
    assert server.worker.process.poll() is None


def test_return_values_come_back_through_json(server):
    assert finished(t.pair.enqueue(1, "a")).return_value == [1, "a"]  # a tuple, as JSON
    value = {"nested": [1, 2.5, None, True, {"x": "ü"}]}
    assert finished(t.echo.enqueue(value)).return_value == value
    assert finished(t.noop_task.enqueue()).return_value is None


def test_retries_keep_one_error_per_failed_attempt_and_the_first_start(server):
    result = finished(t.fails_twice.enqueue())
    assert (result.status, result.return_value, result.attempts) == (SUCCESSFUL, 3, 3)
    assert result.worker_ids == [WORKER] * 3
    assert [error.exception_class for error in result.errors] == [ConnectionError] * 2
    assert result.errors[0].traceback.endswith("ConnectionError: attempt 1 failed\n")
    assert result.errors[1].traceback.endswith("ConnectionError: attempt 2 failed\n")
    assert result.enqueued_at <= result.started_at < result.last_attempted_at <= result.finished_at


def test_takes_context_and_context_attempt(server):
    result = finished(t.get_task_id.enqueue())
    assert result.return_value == result.id
    assert finished(t.test_context.enqueue(1)).status == SUCCESSFUL


# -- signals -------------------------------------------------------------------------------------


def _wait_for_count(worker, pattern: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while worker.count(pattern) != 1:
        assert time.monotonic() < deadline, f"not once: {pattern!r}\n{worker.log}"
        time.sleep(0.05)


def test_worker_signals_fire_in_the_worker_with_the_recorded_status(server):
    with Received(task_started) as started, Received(task_finished) as done:
        ok = finished(t.calculate_meaning_of_life.enqueue())
        raised = finished(t.failing_task_value_error.enqueue())
        not_json = finished(t.complex_return_value.enqueue())
    assert (started.results, done.results) == ([], [])  # none in the producer's process
    for result, status in ((ok, "SUCCESSFUL"), (raised, "FAILED"), (not_json, "FAILED")):
        assert result.status == status
        _wait_for_count(server.worker, f"SIGNAL task_started {result.id} RUNNING$")
        _wait_for_count(server.worker, f"SIGNAL task_finished {result.id} {status}$")


# -- queues, priorities, what a worker refuses, transactions -------------------------------------


def test_a_worker_serves_only_its_queues_and_takes_a_burst_by_priority(server):
    priorities = [0, 5, -5, 10, 0, 5, -100, 100, 10, 0, -5, 1]
    burst = [
        t.echo.using(queue_name="burst", priority=priority).enqueue(index)
        for index, priority in enumerate(priorities)
    ]
    # worker-a does not serve "burst": a run of its own queues enqueued after the burst runs...
    assert finished(t.echo.enqueue("default queue")).return_value == "default queue"
    for result in burst:
        result.refresh()
        assert result.status == READY  # ...while the burst waits
    worker = start_django_worker(server, "--queue", "burst", "--client-id", "worker-burst", limit=1)
    try:
        worker.wait_for("connected to ")
        done = [finished(result) for result in burst]
    finally:
        terminate_gently(worker)
    assert all(result.worker_ids == ["worker-burst"] for result in done)
    order = [result.return_value for result in sorted(done, key=lambda r: r.started_at)]
    # Higher priority first; among equals, the order of enqueueing.
    expected = sorted(range(len(priorities)), key=lambda index: (-priorities[index], index))
    assert order == expected


def test_a_path_that_is_not_a_task_fails_its_runs_and_is_never_called(server, tmp_path):
    marker = tmp_path / "called"
    path = "tests.tasks.check_output"
    worker = start_django_worker(server, path, "--client-id", "worker-plain")
    try:
        worker.wait_for(rf"{path} is not a task .*never called")
        worker.wait_for("connected to ")
        run = create_run(server, path, ["touch", str(marker)])
        failed = wait_for_state(server, run["id"])
    finally:
        terminate_gently(worker)
    assert (failed["state_type"], failed["error"]["type"]) == (
        "FAILED",
        "django.core.exceptions.SuspiciousOperation",
    )
    assert failed["error"]["message"] == f"Task {run['id']} does not point to a Task ({path})"
    assert not marker.exists()
    # Read back through the Tasks API, as the framework's database backend answers it.
    with pytest.raises(SuspiciousOperation, match=r"does not point to a Task \(tests.tasks"):
        task_backends["default"].get_result(run["id"])


def test_enqueue_inside_atomic_creates_the_run_when_the_block_commits(server):
    backend = task_backends["default"]
    with transaction.atomic():
        result = t.noop_task.using(queue_name="idle").enqueue()
        assert result.status == READY
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(result.id)
    assert backend.get_result(result.id).status == READY
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        rolled_back = t.noop_task.using(queue_name="idle").enqueue()
        1 / 0  # noqa: B018
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(rolled_back.id)

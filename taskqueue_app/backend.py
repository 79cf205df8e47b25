"""The Django Tasks backend: ``task.enqueue()`` creates a task run that a ``TaskWorker`` runs.

Where a run is created depends on where ``enqueue`` is called:

- in the server's event loop (``await task.aenqueue()`` in an async view): ``lifecycle.create``
  directly;
- in another thread of the server process (a sync view under Daphne): handed to the server's
  loop, since the queues are asyncio objects that only that loop may touch;
- in another process (``manage.py shell``, a cron job): ``POST`` to ``TASKQUEUE["SERVER_URL"]``.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from . import lifecycle, records
from .conf import taskqueue_settings
from .enqueue_http import EnqueueError, post_run
from .models import StateType
from .schemas import TaskRun, isoformat, parse_uuid
from .tasks_compat import (
    BaseTaskBackend,
    InvalidTaskError,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    normalize_json,
    task_enqueued,
)

__all__ = ["EnqueueError", "QueueTask", "TaskQueueBackend"]

# How long a thread of the server process waits for the server's loop to create a run.
LOOP_TIMEOUT_S = 30.0

STATUS_OF_STATE = {
    StateType.SCHEDULED: TaskResultStatus.READY,
    StateType.PENDING: TaskResultStatus.READY,
    StateType.RUNNING: TaskResultStatus.RUNNING,
    StateType.COMPLETED: TaskResultStatus.SUCCESSFUL,
    StateType.FAILED: TaskResultStatus.FAILED,
    StateType.CRASHED: TaskResultStatus.FAILED,
    StateType.CANCELLED: TaskResultStatus.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueTask(Task):
    """A Task with a retry policy of its own: ``@task(retries=3, retry_delay_seconds=10)``.

    ``None`` takes the backend's ``OPTIONS`` (``retries``, ``retry_delay_seconds``).
    """

    retries: int | None = None
    retry_delay_seconds: float | None = None


def _check_policy(retries: Any, delay: Any, where: str) -> None:
    if retries is not None and (
        isinstance(retries, bool) or not isinstance(retries, int) or retries < 0
    ):
        raise InvalidTaskError(f"{where} retries must be a non-negative integer, not {retries!r}")
    if delay is not None and (
        isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < 1e9
    ):
        raise InvalidTaskError(
            f"{where} retry_delay_seconds must be a non-negative number, not {delay!r}"
        )


def _submit(coro: Any, loop: asyncio.AbstractEventLoop) -> Future:
    """Run ``coro`` in the server's loop from another thread, in a fresh context.

    A fresh context, because a sync view's context carries its request's thread-sensitive
    executor: ORM calls of ``coro`` would queue behind the very thread that waits for it.
    """
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, loop)


class TaskQueueBackend(BaseTaskBackend):
    """Django Tasks backend delivering runs to ``TaskWorker`` processes over WebSocket.

    ``OPTIONS``: ``retries`` and ``retry_delay_seconds`` (defaults of every task of this
    backend; a ``QueueTask`` may set its own), ``timeout`` (seconds, for HTTP enqueues).
    """

    task_class = QueueTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = False  # one FIFO per key: a priority would not be honoured

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.retries = self.options.get("retries", 0)
        self.retry_delay_seconds = self.options.get("retry_delay_seconds", 0)
        self.timeout = float(self.options.get("timeout", 10))
        _check_policy(self.retries, self.retry_delay_seconds, f"TASKS[{alias!r}]['OPTIONS']")

    def validate_task(self, task: Task) -> None:
        """The framework's checks, and a sane retry policy on a ``QueueTask``."""
        super().validate_task(task)
        _check_policy(
            getattr(task, "retries", None),
            getattr(task, "retry_delay_seconds", None),
            f"task {task.module_path}:",
        )

    # -- enqueue ------------------------------------------------------------------------------

    def create_request(self, task: Task, args: Any, kwargs: Any) -> dict[str, Any]:
        """The ``POST /api/task_runs/`` body of a run of ``task``; raises on non-JSON args."""
        try:
            parameters = {"args": normalize_json(args), "kwargs": normalize_json(kwargs)}
            json.dumps(parameters, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the arguments of task {task.module_path} must be JSON (lists, dicts, str, "
                f"int, float, bool, None): {exc}"
            ) from None
        run_id = uuid.uuid4()
        retries = getattr(task, "retries", None)
        delay = getattr(task, "retry_delay_seconds", None)
        body: dict[str, Any] = {
            "id": str(run_id),
            "task_key": task.module_path,
            # Our own dynamic key: an HTTP create sent twice (a retried request) is one run.
            "dynamic_key": f"{task.module_path}-{run_id.hex}",
            "name": task.name,
            "parameters": parameters,
            "empirical_policy": {
                "retries": self.retries if retries is None else retries,
                "retry_delay_seconds": self.retry_delay_seconds if delay is None else delay,
            },
        }
        if task.run_after is not None:
            body["expected_start_time"] = isoformat(task.run_after)
        return body

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Create a run of ``task``; raises ``lifecycle.QueueFullError`` when its queue is full."""
        self.validate_task(task)
        body = self.create_request(task, args, kwargs)
        loop = lifecycle.serving_loop()
        if lifecycle.in_serving_loop():
            raise RuntimeError(
                "enqueue() was called from the server's event loop, where it would block it: "
                "use 'await task.aenqueue(...)' in async code"
            )
        if loop is not None:
            try:
                run, _ = _submit(lifecycle.create(body), loop).result(LOOP_TIMEOUT_S)
            except TimeoutError:
                # The create may still land: name the run so that the caller can look it up
                # instead of enqueueing a second one.
                raise EnqueueError(
                    f"the server did not confirm run {body['id']} within {LOOP_TIMEOUT_S} s; "
                    f"it may still be created: check get_result({body['id']!r}) before "
                    "enqueueing again"
                ) from None
        else:
            run = self._post(body)
        result = self.result_of(run, task)
        task_enqueued.send(sender=type(self), task_result=result)
        return result

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """``enqueue`` for async code; in the server's loop it creates the run directly."""
        self.validate_task(task)
        body = self.create_request(task, args, kwargs)
        loop = lifecycle.serving_loop()
        if lifecycle.in_serving_loop():
            run, _ = await lifecycle.create(body)
        elif loop is not None:
            run, _ = await asyncio.wrap_future(_submit(lifecycle.create(body), loop))
        else:
            run = await sync_to_async(self._post, thread_sensitive=False)(body)
        result = self.result_of(run, task)
        await task_enqueued.asend(sender=type(self), task_result=result)
        return result

    def _post(self, body: dict[str, Any]) -> TaskRun:
        url = taskqueue_settings.SERVER_URL
        if not url:
            raise ImproperlyConfigured(
                "cannot enqueue: this process is not the task server (no server loop is "
                "running here) and TASKQUEUE['SERVER_URL'] is not set; set it to the "
                "server's API base, e.g. http://127.0.0.1:8000/api"
            )
        data = post_run(url, body, taskqueue_settings.AUTH_TOKEN, self.timeout)
        return _run_from_api(data)

    # -- results ------------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        """The run's current state as a ``TaskResult``; ``TaskResultDoesNotExist`` if unknown."""
        run_id = _parse_result_id(result_id)
        loop = lifecycle.serving_loop()
        if lifecycle.in_serving_loop():
            raise RuntimeError(
                "get_result() was called from the server's event loop: use "
                "'await backend.aget_result(...)' in async code"
            )
        if loop is not None:
            run = _submit(lifecycle.get(run_id), loop).result(LOOP_TIMEOUT_S)
        else:
            run = records.read(run_id)
        return self._existing(result_id, run)

    async def aget_result(self, result_id: str) -> TaskResult:
        """``get_result`` for async code."""
        run_id = _parse_result_id(result_id)
        loop = lifecycle.serving_loop()
        if lifecycle.in_serving_loop():
            run = await lifecycle.get(run_id)
        elif loop is not None:
            run = await asyncio.wrap_future(_submit(lifecycle.get(run_id), loop))
        else:
            run = await records.aread(run_id)
        return self._existing(result_id, run)

    def _existing(self, result_id: str, run: TaskRun | None) -> TaskResult:
        if run is None:
            raise TaskResultDoesNotExist(f"no task run with id {result_id}")
        return self.result_of(run)

    def task_of(self, run: TaskRun) -> Task:
        """The Task a run was created for, from its key; a plain function is wrapped in one."""
        try:
            target = import_string(run.task_key)
        except ImportError:
            raise TaskResultDoesNotExist(
                f"task run {run.id} is for {run.task_key!r}, which cannot be imported here"
            ) from None
        if isinstance(target, Task):
            return target
        return self.task_class(func=target, backend=self.alias)

    def result_of(self, run: TaskRun, task: Task | None = None) -> TaskResult:
        """A ``TaskResult`` of ``run``: status mapped from its state, value, error, attempts."""
        return task_result(run, task if task is not None else self.task_of(run), self.alias)


def task_result(run: TaskRun, task: Task, backend_alias: str) -> TaskResult:
    """The framework's ``TaskResult`` of ``run`` as a task of the backend ``backend_alias``."""
    parameters = run.parameters or {}
    result = TaskResult(
        task=task,
        id=str(run.id),
        status=STATUS_OF_STATE.get(run.state_type, TaskResultStatus.READY),
        enqueued_at=run.created,
        started_at=run.started,
        finished_at=run.finished,
        last_attempted_at=run.started,
        args=parameters.get("args") or [],
        kwargs=parameters.get("kwargs") or {},
        backend=backend_alias,
        errors=_errors_of(run),
        # One entry per attempt; the record keeps the last worker only.
        worker_ids=[run.worker or "unknown"] * run.run_count,
    )
    if run.state_type == StateType.COMPLETED:
        object.__setattr__(result, "_return_value", run.result)
    return result


def _errors_of(run: TaskRun) -> list[TaskError]:
    """The run's error as the framework's ``TaskError`` (the record keeps the last one)."""
    error = run.error
    if not isinstance(error, dict):
        return []
    traceback = error.get("traceback") or f"{error.get('type')}: {error.get('message')}"
    return [TaskError(exception_class_path=str(error.get("type") or ""), traceback=traceback)]


def _parse_result_id(result_id: str) -> uuid.UUID:
    try:
        return parse_uuid(str(result_id), "result_id")
    except ValueError:
        raise TaskResultDoesNotExist(f"no task run with id {result_id!r}") from None


def _run_from_api(data: dict[str, Any]) -> TaskRun:
    """The ``TaskRun`` of a run's JSON form as the HTTP API returns it."""
    from .schemas import parse_datetime

    def when(name: str) -> Any:
        value = data.get(name)
        return parse_datetime(value, name) if value else None

    policy = data.get("empirical_policy") or {}
    return TaskRun(
        id=uuid.UUID(data["id"]),
        task_key=data["task_key"],
        dynamic_key=data["dynamic_key"],
        name=data["name"],
        parameters=data.get("parameters") or {},
        state_type=data["state_type"],
        state_name=data["state_name"],
        run_count=data.get("run_count") or 0,
        retries=policy.get("retries") or 0,
        retry_delay_seconds=policy.get("retry_delay_seconds") or 0,
        created=when("created"),
        expected_start_time=when("expected_start_time"),
        started=when("start_time"),
        finished=when("end_time"),
        result=data.get("result"),
        error=data.get("error"),
        worker=data.get("worker") or "",
    )

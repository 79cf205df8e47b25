"""The Django Tasks backend: ``task.enqueue()`` creates a task run that a ``TaskWorker`` runs.

Where a run is created depends on where ``enqueue`` is called:

- in the server's event loop (``await task.aenqueue()`` in an async view): ``lifecycle.create``
  directly;
- in another thread of the server process (a sync view under Daphne): handed to the server's
  loop, since the queues are asyncio objects that only that loop may touch;
- in another process (``manage.py shell``, a cron job): ``POST`` to ``TASKQUEUE["SERVER_URL"]``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, router, transaction
from django.utils.module_loading import import_string

from . import lifecycle, records, server
from .conf import taskqueue_settings
from .models import TaskRunRecord
from .queues import get_queues
from .results import STATUS_OF_STATE, task_result
from .schemas import TaskRun, isoformat, parse_uuid, run_from_request
from .tasks_compat import (
    BaseTaskBackend,
    InvalidTaskError,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    normalize_json,
    task_enqueued,
)
from .worker.http import EnqueueError, post_run

__all__ = ["STATUS_OF_STATE", "EnqueueError", "QueueTask", "TaskQueueBackend", "task_result"]


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


class TaskQueueBackend(BaseTaskBackend):
    """Django Tasks backend delivering runs to ``TaskWorker`` processes over WebSocket.

    ``OPTIONS``: ``retries`` and ``retry_delay_seconds`` (defaults of every task of this
    backend; a ``QueueTask`` may set its own), ``timeout`` (seconds, for HTTP enqueues).
    """

    task_class = QueueTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True  # within a key's lane, higher first (the engine orders by it)

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
            "priority": task.priority,
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
        """Create a run of ``task``; raises ``QueueFull`` when its queue is full.

        Inside ``transaction.atomic()`` on the database of the run records, the run is created
        when that transaction commits (and not at all if it rolls back): on SQLite the open
        transaction holds the one write lock the server would need, and a task should not run
        before the data it was enqueued for is committed. ``QueueFull`` or an unreachable
        server is then raised as the transaction commits.
        """
        self.validate_task(task)
        body = self.create_request(task, args, kwargs)
        alias = router.db_for_write(TaskRunRecord)
        if connections[alias].in_atomic_block:
            # Checked now, so that bad input fails the call rather than the commit.
            run = run_from_request(body, taskqueue_settings.MAX_MESSAGE_BYTES)
            transaction.on_commit(partial(self._create_and_announce, task, body), using=alias)
            return self.result_of(run, task)
        return self._create_and_announce(task, body)

    def _create_and_announce(self, task: Task, body: dict[str, Any]) -> TaskResult:
        if not _creates_here():
            run = self._post(body)
        else:
            _refuse_in_loop("enqueue", "await task.aenqueue(...)")
            try:
                run, _ = server.call(lifecycle.create, body)
            except server.LoopTimeout:
                # The create may still land: name the run so that the caller can look it up
                # instead of enqueueing a second one.
                raise EnqueueError(
                    f"the server did not confirm run {body['id']} within "
                    f"{server.LOOP_TIMEOUT_S} s; it may still be created: check "
                    f"get_result({body['id']!r}) before enqueueing again"
                ) from None
        result = self.result_of(run, task)
        task_enqueued.send(sender=type(self), task_result=result)
        return result

    async def aenqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """``enqueue`` for async code; in the server's loop it creates the run directly."""
        self.validate_task(task)
        body = self.create_request(task, args, kwargs)
        if not _creates_here():
            run = await sync_to_async(self._post, thread_sensitive=False)(body)
        else:
            run, _ = await server.acall(lifecycle.create, body)
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
        return TaskRun.from_dict(data)

    # -- results ------------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        """The run's current state as a ``TaskResult``; ``TaskResultDoesNotExist`` if unknown."""
        run_id = _parse_result_id(result_id)
        if server.serving_loop() is None:
            run = records.read(run_id)
        else:
            _refuse_in_loop("get_result", "await backend.aget_result(...)")
            run = server.call(lifecycle.get, run_id)
        return self._existing(result_id, run)

    async def aget_result(self, result_id: str) -> TaskResult:
        """``get_result`` for async code."""
        run_id = _parse_result_id(result_id)
        if server.serving_loop() is None:
            run = await records.aread(run_id)
        else:
            run = await server.acall(lifecycle.get, run_id)
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


def _creates_here() -> bool:
    """True where a run can be created directly: in the server process, or in any process when
    the engine is shared by every process (Redis), with no HTTP hop. Else it is POSTed."""
    return server.serving_loop() is not None or get_queues().shared


def _refuse_in_loop(name: str, instead: str) -> None:
    if server.in_serving_loop():
        raise RuntimeError(
            f"{name}() was called from the server's event loop, where it would block it: "
            f"use '{instead}' in async code"
        )


def _parse_result_id(result_id: str) -> uuid.UUID:
    try:
        return parse_uuid(str(result_id), "result_id")
    except ValueError:
        raise TaskResultDoesNotExist(f"no task run with id {result_id!r}") from None

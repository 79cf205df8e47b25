"""The Django Tasks backend: ``task.enqueue()`` creates a task run that a ``TaskWorker`` runs.

Where a run is created depends on where ``enqueue`` is called:

- in the server's event loop (``await task.aenqueue()`` in an async view): ``lifecycle.create``
  directly;
- in another thread of the server process (a sync view under Daphne): handed to the server's
  loop, since the queues are asyncio objects that only that loop may touch;
- in another process (``manage.py shell``, a cron job, a WSGI site) on the memory engine: over
  the producer stream to ``TASKQUEUE["SERVER_URL"]`` (one kept-open WebSocket per process,
  ``worker.stream``), or one ``POST`` per run with ``OPTIONS["transport"] = "http"``; with the
  Redis engine, ``lifecycle.create`` in the process itself.

``get_result`` reads the run the same three ways: from the server's loop, from the records (a
process sharing the server's database), or with ``GET`` from ``SERVER_URL`` (a process that
reaches the server only over HTTP). A run's task key is its task's path, and a queue other than
``default`` makes a key of its own (``path@queue``): workers serve queues by subscribing to keys.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db import DatabaseError, connections, router, transaction
from django.utils.module_loading import import_string

from . import actions, lifecycle, records, server
from .conf import taskqueue_settings
from .inputs import run_from_request
from .models import TaskRunRecord
from .results import STATUS_OF_STATE, queue_key, task_as_enqueued, task_path_of, task_result
from .schemas import QUEUE_NAME_MAX, TASK_KEY_MAX, TaskRun, isoformat, parse_uuid
from .tasks_compat import (
    BaseTaskBackend,
    InvalidTaskError,
    Task,
    TaskResult,
    TaskResultDoesNotExist,
    normalize_json,
    task_enqueued,
)
from .worker.http import EnqueueError, cancel_run, post_run
from .worker.stream import stream_for

TRANSPORTS = ("websocket", "http")

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
    backend; a ``QueueTask`` may set its own), ``timeout`` (seconds, for enqueues from another
    process), ``transport`` (how another process reaches the server: ``"websocket"``, the
    producer stream, by default, or ``"http"``, one request per run).
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
        # How a process that is not the server reaches it: the producer stream (one kept-open
        # WebSocket, creates pipelined) or one HTTP request per run.
        self.transport = self.options.get("transport", "websocket")
        if self.transport not in TRANSPORTS:
            raise ImproperlyConfigured(
                f"TASKS[{alias!r}]['OPTIONS']['transport'] must be one of "
                f"{', '.join(TRANSPORTS)}, not {self.transport!r}"
            )
        _check_policy(self.retries, self.retry_delay_seconds, f"TASKS[{alias!r}]['OPTIONS']")

    def validate_task(self, task: Task) -> None:
        """The framework's checks, a sane retry policy on a ``QueueTask``, and a queue name
        that makes a task key (at most 200 characters with the task's path)."""
        super().validate_task(task)
        _check_policy(
            getattr(task, "retries", None),
            getattr(task, "retry_delay_seconds", None),
            f"task {task.module_path}:",
        )
        name = task.queue_name
        if not isinstance(name, str) or not 0 < len(name) <= QUEUE_NAME_MAX:
            raise InvalidTaskError(
                f"queue_name must be a non-empty string of at most {QUEUE_NAME_MAX} characters"
            )
        if len(queue_key(task.module_path, name)) > TASK_KEY_MAX:
            raise InvalidTaskError(
                f"task {task.module_path} on queue {name!r}: its task key "
                f"{queue_key(task.module_path, name)!r} is over {TASK_KEY_MAX} characters"
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
            "task_key": queue_key(task.module_path, task.queue_name),
            # Our own dynamic key: an HTTP create sent twice (a retried request) is one run.
            "dynamic_key": f"{task.module_path}-{run_id.hex}",
            "name": task.name,
            "priority": task.priority,
            "queue_name": task.queue_name,
            "backend": self.alias,
            "parameters": parameters,
            "empirical_policy": {
                "retries": self.retries if retries is None else retries,
                "retry_delay_seconds": self.retry_delay_seconds if delay is None else delay,
            },
        }
        if task.run_after is not None:
            body["run_after"] = isoformat(task.run_after)  # the server defers the run until then
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
        if not server.queues_here():
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
        if not server.queues_here():
            run = await sync_to_async(self._post, thread_sensitive=False)(body)
        else:
            run, _ = await server.acall(lifecycle.create, body)
        result = self.result_of(run, task)
        await task_enqueued.asend(sender=type(self), task_result=result)
        return result

    def _post(self, body: dict[str, Any]) -> TaskRun:
        url = _server_url("enqueue")
        token = taskqueue_settings.AUTH_TOKEN
        if self.transport == "http":
            return TaskRun.from_dict(post_run(url, body, token, self.timeout))
        return TaskRun.from_dict(stream_for(url, token, self.timeout).create(body))

    # -- cancel -------------------------------------------------------------------------------

    def cancel(self, result_id: str) -> TaskResult:
        """Cancel the run of ``result_id``: the result as it is now (its run CANCELLED, or
        still RUNNING until its worker confirms). ``TaskResultDoesNotExist`` for an unknown
        run, ``AlreadyFinished`` for a finished one."""
        run_id = _parse_result_id(result_id)
        if server.queues_here():
            _refuse_in_loop("cancel", "await backend.acancel(...)")
            return self._existing(result_id, server.call(actions.cancel, run_id))
        return self._existing(result_id, self._cancel_remote(run_id))

    async def acancel(self, result_id: str) -> TaskResult:
        """``cancel`` for async code."""
        run_id = _parse_result_id(result_id)
        if server.queues_here():
            return self._existing(result_id, await server.acall(actions.cancel, run_id))
        run = await sync_to_async(self._cancel_remote, thread_sensitive=False)(run_id)
        return self._existing(result_id, run)

    def _cancel_remote(self, run_id: uuid.UUID) -> TaskRun | None:
        url = _server_url("cancel")
        data = cancel_run(url, str(run_id), taskqueue_settings.AUTH_TOKEN, self.timeout)
        return None if data is None else TaskRun.from_dict(data)

    # -- results ------------------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        """The run's current state as a ``TaskResult``; ``TaskResultDoesNotExist`` if unknown.

        In the server process, from its loop; elsewhere from the records, and, for a run they
        do not have (a process with a database of its own), from ``SERVER_URL`` over HTTP.
        """
        run_id = _parse_result_id(result_id)
        if server.serving_loop() is not None:
            _refuse_in_loop("get_result", "await backend.aget_result(...)")
            return self._existing(result_id, server.call(lifecycle.get, run_id))
        try:
            run = records.read(run_id)
        except DatabaseError:
            if not taskqueue_settings.SERVER_URL:
                raise
            run = None  # no run records here (no such table): the server has them
        if run is None and taskqueue_settings.SERVER_URL:
            run = self._fetch(result_id, run_id)
        return self._existing(result_id, run)

    async def aget_result(self, result_id: str) -> TaskResult:
        """``get_result`` for async code."""
        run_id = _parse_result_id(result_id)
        if server.serving_loop() is not None:
            return self._existing(result_id, await server.acall(lifecycle.get, run_id))
        try:
            run = await records.aread(run_id)
        except DatabaseError:
            if not taskqueue_settings.SERVER_URL:
                raise
            run = None
        if run is None and taskqueue_settings.SERVER_URL:
            run = await sync_to_async(self._fetch, thread_sensitive=False)(result_id, run_id)
        return self._existing(result_id, run)

    def _fetch(self, result_id: str, run_id: uuid.UUID) -> TaskRun | None:
        """The run as the task server has it (``GET task_runs/<id>``), None if it has none."""
        url = f"{taskqueue_settings.SERVER_URL.rstrip('/')}/task_runs/{run_id}"
        try:
            data = get_run(url, taskqueue_settings.AUTH_TOKEN, self.timeout)
        except EnqueueError as exc:
            if exc.status is not None:
                raise  # refused (a wrong token, say): not something to hide
            raise TaskResultDoesNotExist(
                f"no task run with id {result_id} in this process's database, and the task "
                f"server could not be asked: {exc}"
            ) from exc
        return None if data is None else TaskRun.from_dict(data)

    def _existing(self, result_id: str, run: TaskRun | None) -> TaskResult:
        if run is None:
            raise TaskResultDoesNotExist(f"no task run with id {result_id}")
        return self.result_of(run)

    def task_of(self, run: TaskRun) -> Task:
        """The Task a run was enqueued for, as it was enqueued (queue, priority, ``run_after``,
        backend alias). ``SuspiciousOperation`` when its path names something that is not a
        Task, as the framework's database backend raises."""
        path = task_path_of(run)
        try:
            target = import_string(path)
        except ImportError:
            raise TaskResultDoesNotExist(
                f"task run {run.id} is for {path!r}, which cannot be imported here"
            ) from None
        if not isinstance(target, Task):
            raise SuspiciousOperation(f"Task {run.id} does not point to a Task ({path})")
        return task_as_enqueued(target, run)

    def result_of(self, run: TaskRun, task: Task | None = None) -> TaskResult:
        """A ``TaskResult`` of ``run``: status mapped from its state, value, errors, attempts."""
        task = task if task is not None else self.task_of(run)
        return task_result(run, task, task.backend)


def _server_url(action: str) -> str:
    url = taskqueue_settings.SERVER_URL
    if not url:
        raise ImproperlyConfigured(
            f"cannot {action}: this process is not the task server (no server loop is "
            "running here) and TASKQUEUE['SERVER_URL'] is not set; set it to the "
            "server's API base, e.g. http://127.0.0.1:8000/api"
        )
    return url


def _refuse_in_loop(name: str, instead: str) -> None:
    if server.in_serving_loop():
        raise RuntimeError(
            f"{name}() was called from the server's event loop, where it would block it: "
            f"use '{instead}' in async code"
        )


def get_run(url: str, token: str | None, timeout: float) -> dict | None:
    """The JSON run at ``url`` (the API's ``task_runs/<id>``); None on 404.

    Raises ``EnqueueError``: with ``status`` when the server refused, without when unreachable.
    """
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise EnqueueError(f"the task server answered HTTP {exc.code} for {url}", exc.code) from exc
    except (OSError, ValueError) as exc:  # refused, timed out, unreachable; not JSON
        raise EnqueueError(f"cannot reach the task server at {url}: {exc}") from exc


def _parse_result_id(result_id: str) -> uuid.UUID:
    try:
        return parse_uuid(str(result_id), "result_id")
    except ValueError:
        raise TaskResultDoesNotExist(f"no task run with id {result_id!r}") from None

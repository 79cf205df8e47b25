"""``TaskWorker`` inside a Django project: Tasks-framework context, signals, DB connections."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.db import close_old_connections
from django.utils import timezone

from ..attempts import begun
from ..results import task_as_enqueued, task_error, task_result
from ..schemas import TaskRun
from ..states import StateType
from ..tasks_compat import (
    Task,
    TaskContext,
    TaskResult,
    TaskResultStatus,
    task_finished,
    task_started,
)
from .calls import OutcomeError, error_of
from .client import TaskWorker

logger = logging.getLogger(__name__)

__all__ = ["DjangoTaskWorker"]


@dataclass(frozen=True, slots=True)
class _Encoded:
    """A return value already checked and encoded as JSON (before ``task_finished`` said so)."""

    text: str


class DjangoTaskWorker(TaskWorker):
    """Runs Tasks-framework ``Task`` objects as the framework expects: a ``TaskContext`` for
    ``takes_context`` tasks, ``task_started`` / ``task_finished`` around each run (with the
    status the run is recorded with), the task as it was enqueued (queue, priority,
    ``run_after``, backend alias), and stale database connections closed between runs of sync
    tasks (as Django does per request).

    With ``tasks_only`` (``manage.py taskworker``), a key whose target is not a ``Task`` fails
    each of its runs with ``SuspiciousOperation``, as the framework's database worker does for
    a path that is not a task; the target is never called. Without it (``python -m
    taskqueue_app.worker`` with Django set up), plain functions run as plain functions.
    """

    def __init__(self, *args: Any, tasks_only: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tasks_only = tasks_only

    def _task_result(self, key: str, run: dict[str, Any], args: list, kwargs: dict) -> TaskResult:
        # The run as the server sent it (its enqueue time is ``TaskResult.enqueued_at``, its
        # attempts so far its worker_ids and errors), in the attempt that starts now.
        stamp = timezone.now()
        value = TaskRun.from_dict({**run, "task_key": key})
        value = value.with_state(
            StateType.RUNNING,
            "Running",
            parameters={"args": args, "kwargs": kwargs},
            run_count=value.run_count + 1,
            started=stamp,
            worker=self.client_id,
            attempts=begun(value.attempts, self.client_id, stamp),
        )
        task = task_as_enqueued(self.tasks[key], value)
        return task_result(value, task, task.backend)

    def _refuse(self, key: str, run: dict[str, Any]) -> None:
        if self.tasks_only:
            raise SuspiciousOperation(f"Task {run.get('id')} does not point to a Task ({key})")

    def result_json(self, key: str, result: Any) -> str:
        if isinstance(result, _Encoded):
            return result.text
        return super().result_json(key, result)

    def _outcome(self, key: str, result: TaskResult, value: Any) -> _Encoded:
        """Check and encode what the task returned, and finish ``result`` as the run will be
        recorded: a value that is not JSON fails the run, and ``task_finished`` says FAILED."""
        try:
            text = self.result_json(key, value)
        except OutcomeError as exc:
            self._finish(result, exc=exc)
            raise
        self._finish(result, json.loads(text))
        return _Encoded(text)

    def _arguments(self, key: str, result: TaskResult | None, args: list) -> list:
        task = self.tasks[key]
        if result is not None and task.takes_context:
            return [TaskContext(task_result=result), *args]
        return args

    @staticmethod
    def _finish(result: TaskResult, value: Any = None, exc: BaseException | None = None) -> None:
        object.__setattr__(result, "finished_at", timezone.now())
        if exc is None:
            object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
            object.__setattr__(result, "_return_value", value)
        else:
            error = exc.error if isinstance(exc, OutcomeError) else error_of(exc)
            result.errors.append(task_error(error))
            object.__setattr__(result, "status", TaskResultStatus.FAILED)

    def call_sync(
        self, key: str, func: Callable, run: dict[str, Any], args: list, kwargs: dict
    ) -> Any:
        """Call a sync task in a pool thread, between ``task_started`` and ``task_finished``."""
        if not isinstance(self.tasks[key], Task):
            self._refuse(key, run)
            return super().call_sync(key, func, run, args, kwargs)
        close_old_connections()
        result = self._task_result(key, run, args, kwargs)
        sender = type(result.task.get_backend())
        try:
            task_started.send(sender=sender, task_result=result)
            try:
                value = func(*self._arguments(key, result, args), **kwargs)
            except BaseException as exc:
                self._finish(result, exc=exc)
                task_finished.send(sender=sender, task_result=result)
                raise
            try:
                return self._outcome(key, result, value)
            finally:
                task_finished.send(sender=sender, task_result=result)
        finally:
            close_old_connections()

    async def call_async(
        self, key: str, func: Callable, run: dict[str, Any], args: list, kwargs: dict
    ) -> Any:
        """Await an async task in the worker's loop, between the same two signals."""
        if not isinstance(self.tasks[key], Task):
            self._refuse(key, run)
            return await super().call_async(key, func, run, args, kwargs)
        result = self._task_result(key, run, args, kwargs)
        sender = type(result.task.get_backend())
        await task_started.asend(sender=sender, task_result=result)
        try:
            value = await func(*self._arguments(key, result, args), **kwargs)
        except BaseException as exc:
            self._finish(result, exc=exc)
            await task_finished.asend(sender=sender, task_result=result)
            raise
        try:
            return self._outcome(key, result, value)
        finally:
            await task_finished.asend(sender=sender, task_result=result)

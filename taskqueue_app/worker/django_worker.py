"""``TaskWorker`` inside a Django project: Tasks-framework context, signals, DB connections."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections
from django.utils import timezone

from ..results import task_result
from ..schemas import TaskRun
from ..states import StateType
from ..tasks_compat import (
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultStatus,
    task_finished,
    task_started,
)
from .calls import error_of
from .client import TaskWorker

logger = logging.getLogger(__name__)

__all__ = ["DjangoTaskWorker"]


class DjangoTaskWorker(TaskWorker):
    """Runs Tasks-framework ``Task`` objects as the framework expects: a ``TaskContext`` for
    ``takes_context`` tasks, ``task_started`` / ``task_finished`` around each run, and stale
    database connections closed between runs of sync tasks (as Django does per request)."""

    def _task_result(self, key: str, run: dict[str, Any], args: list, kwargs: dict) -> TaskResult:
        task: Task = self.tasks[key]
        # The run as the server sent it (its enqueue time is ``TaskResult.enqueued_at``), in
        # the attempt that starts now.
        value = TaskRun.from_dict({**run, "task_key": key}).with_state(
            StateType.RUNNING,
            "Running",
            parameters={"args": args, "kwargs": kwargs},
            run_count=int(run.get("run_count") or 0) + 1,
            started=timezone.now(),
            worker=self.client_id,
        )
        return task_result(value, task, task.backend)

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
            error = error_of(exc)
            result.errors.append(
                TaskError(exception_class_path=error["type"], traceback=error["traceback"])
            )
            object.__setattr__(result, "status", TaskResultStatus.FAILED)

    def call_sync(
        self, key: str, func: Callable, run: dict[str, Any], args: list, kwargs: dict
    ) -> Any:
        """Call a sync task in a pool thread, between ``task_started`` and ``task_finished``."""
        if not isinstance(self.tasks[key], Task):
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
            self._finish(result, value)
            task_finished.send(sender=sender, task_result=result)
            return value
        finally:
            close_old_connections()

    async def call_async(
        self, key: str, func: Callable, run: dict[str, Any], args: list, kwargs: dict
    ) -> Any:
        """Await an async task in the worker's loop, between the same two signals."""
        if not isinstance(self.tasks[key], Task):
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
        self._finish(result, value)
        await task_finished.asend(sender=sender, task_result=result)
        return value

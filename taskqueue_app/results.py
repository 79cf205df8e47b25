"""A run as the Tasks framework sees it: the ``TaskResult`` of a ``TaskRun``, the task as it was
enqueued, and the task key a run of a task on a queue goes by.

Shared by the backend (server side) and the Django worker (worker side), so it imports neither.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .attempts import errors_of, started_of, workers_of
from .schemas import DEFAULT_QUEUE, TaskRun
from .states import StateType
from .tasks_compat import Task, TaskError, TaskResult, TaskResultStatus, task_backends

__all__ = ["STATUS_OF_STATE", "queue_key", "task_as_enqueued", "task_path_of", "task_result"]

STATUS_OF_STATE = {
    StateType.SCHEDULED: TaskResultStatus.READY,
    StateType.PENDING: TaskResultStatus.READY,
    StateType.RUNNING: TaskResultStatus.RUNNING,
    StateType.COMPLETED: TaskResultStatus.SUCCESSFUL,
    StateType.FAILED: TaskResultStatus.FAILED,
    StateType.CRASHED: TaskResultStatus.FAILED,
    StateType.CANCELLED: TaskResultStatus.FAILED,
}

# What joins a task's path and its queue in a task key: workers subscribe by key, so a queue of
# its own is a key of its own (the default queue keeps the bare path).
QUEUE_SEPARATOR = "@"


def queue_key(task_path: str, queue_name: str) -> str:
    """The task key of runs of the task at ``task_path`` enqueued on ``queue_name``."""
    if queue_name == DEFAULT_QUEUE:
        return task_path
    return f"{task_path}{QUEUE_SEPARATOR}{queue_name}"


def task_path_of(run: TaskRun) -> str:
    """The dotted path of the task a run was enqueued for (its key without its queue)."""
    suffix = f"{QUEUE_SEPARATOR}{run.queue_name}"
    if run.queue_name != DEFAULT_QUEUE and run.task_key.endswith(suffix):
        return run.task_key[: -len(suffix)]
    return run.task_key


def task_as_enqueued(task: Task, run: TaskRun) -> Task:
    """``task`` as ``run`` was enqueued for it: its queue, priority, ``run_after`` and backend
    alias (what ``.using()`` changed), the same object when nothing did."""
    changes: dict[str, Any] = {}
    if run.queue_name != task.queue_name:
        changes["queue_name"] = run.queue_name
    if run.priority != task.priority:
        changes["priority"] = run.priority
    if run.run_after != task.run_after:
        changes["run_after"] = run.run_after
    # An alias this process does not configure cannot be the task's: keep the task's own.
    if run.backend and run.backend != task.backend and run.backend in task_backends.settings:
        changes["backend"] = run.backend
    return replace(task, **changes) if changes else task


def task_result(run: TaskRun, task: Task, backend_alias: str) -> TaskResult:
    """The framework's ``TaskResult`` of ``run`` as a task of the backend ``backend_alias``.

    One ``worker_ids`` entry and one ``errors`` entry per (failed) attempt; ``started_at`` is
    when the first attempt started, ``last_attempted_at`` when the latest one did.
    """
    parameters = run.parameters or {}
    first, latest = started_of(run)
    result = TaskResult(
        task=task,
        id=str(run.id),
        status=STATUS_OF_STATE.get(run.state_type, TaskResultStatus.READY),
        enqueued_at=run.created,
        started_at=first,
        finished_at=run.finished,
        last_attempted_at=latest,
        args=parameters.get("args") or [],
        kwargs=parameters.get("kwargs") or {},
        backend=backend_alias,
        errors=[task_error(error) for error in errors_of(run)],
        worker_ids=workers_of(run),
    )
    if run.state_type == StateType.COMPLETED:
        object.__setattr__(result, "_return_value", run.result)
    return result


def task_error(error: dict[str, Any]) -> TaskError:
    """A run's ``error`` object as the framework's ``TaskError``; errors the app decides itself
    carry no traceback, so theirs is the exception's line (``Type: message``)."""
    traceback = error.get("traceback") or f"{error.get('type')}: {error.get('message')}\n"
    return TaskError(exception_class_path=str(error.get("type") or ""), traceback=traceback)

"""A run as the Tasks framework sees it: the ``TaskResult`` of a ``TaskRun``.

Shared by the backend (server side) and the Django worker (worker side), so it imports neither.
"""

from __future__ import annotations

from .schemas import TaskRun
from .states import StateType
from .tasks_compat import Task, TaskError, TaskResult, TaskResultStatus

__all__ = ["STATUS_OF_STATE", "task_result"]

STATUS_OF_STATE = {
    StateType.SCHEDULED: TaskResultStatus.READY,
    StateType.PENDING: TaskResultStatus.READY,
    StateType.RUNNING: TaskResultStatus.RUNNING,
    StateType.COMPLETED: TaskResultStatus.SUCCESSFUL,
    StateType.FAILED: TaskResultStatus.FAILED,
    StateType.CRASHED: TaskResultStatus.FAILED,
    StateType.CANCELLED: TaskResultStatus.FAILED,
}


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

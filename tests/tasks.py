"""Tasks of tests/test_tasks_api.py, after Django's own ``tests/tasks/tasks.py``.

A worker run with ``tests.e2e_settings`` discovers them (the settings package's ``tasks``
module). The signal receivers print one line per signal, so that a test can read in the
worker's log which process sent what, with which status.
"""

from __future__ import annotations

import subprocess
from typing import Any

from taskqueue_app.tasks_compat import TaskContext, task, task_finished, task_started


@task()
def noop_task(*args: Any, **kwargs: Any) -> None:
    return None


@task()
async def noop_task_async(*args: Any, **kwargs: Any) -> None:
    return None


@task()
def calculate_meaning_of_life() -> int:
    return 42


@task()
async def echo_async(value: Any) -> Any:
    return value


@task()
def echo(value: Any) -> Any:
    """Returns what it is given: JSON in, JSON out (a tuple comes back a list)."""
    return value


@task()
def pair(a: Any, b: Any) -> tuple:
    return (a, b)


@task()
def failing_task_value_error() -> None:
    raise ValueError("This task failed due to ValueError")


@task()
def failing_task_system_exit() -> None:
    raise SystemExit("This task failed due to SystemExit")


@task()
def failing_task_keyboard_interrupt() -> None:
    raise KeyboardInterrupt("This task failed due to KeyboardInterrupt")


@task()
def complex_exception() -> None:
    raise ValueError(ValueError("This task failed"))


@task()
def complex_return_value() -> dict:
    return {"value": object()}  # not JSON: the run fails


@task()
def exit_task() -> None:
    exit(1)


@task(takes_context=True)
def get_task_id(context: TaskContext) -> str:
    return context.task_result.id


@task(takes_context=True)
def test_context(context: TaskContext, attempt: int) -> None:
    assert isinstance(context, TaskContext)
    assert context.attempt == attempt


@task(takes_context=True, retries=2, retry_delay_seconds=0)
def fails_twice(context: TaskContext) -> int:
    """Fails on attempts 1 and 2, succeeds on the third: one error per failed attempt."""
    if context.attempt < 3:
        raise ConnectionError(f"attempt {context.attempt} failed")
    return context.attempt


@task(takes_context=True)
def describe_context(context: TaskContext) -> dict:
    """What the worker hands the task: the run as the Tasks API knows it."""
    return describe(context.task_result, with_value=False)


def check_output(args: list[str]) -> str:
    """Not a task: a wrapper around ``subprocess.check_output`` that no run may call."""
    return subprocess.check_output(args, text=True)


def describe(result: Any, with_value: bool = True) -> dict:
    """A ``TaskResult`` as JSON, to compare what each process reads back."""
    run_after = result.task.run_after
    body = {
        "id": result.id,
        "status": str(result.status),
        "task": result.task.module_path,
        "queue_name": result.task.queue_name,
        "priority": result.task.priority,
        "run_after": run_after.isoformat() if run_after else None,
        "backend": result.task.backend,
        "result_backend": result.backend,
        "args": result.args,
        "kwargs": result.kwargs,
        "attempts": result.attempts,
        "worker_ids": result.worker_ids,
        "errors": [[error.exception_class_path, error.traceback] for error in result.errors],
        "enqueued_at": result.enqueued_at.isoformat() if result.enqueued_at else None,
        "started_at": result.started_at.isoformat() if result.started_at else None,
        "last_attempted_at": (
            result.last_attempted_at.isoformat() if result.last_attempted_at else None
        ),
    }
    if with_value and str(result.status) == "SUCCESSFUL":
        body["return_value"] = result.return_value
    return body


def _print_signal(signal_name: str, task_result: Any) -> None:
    print(f"SIGNAL {signal_name} {task_result.id} {task_result.status}", flush=True)


def _on_started(sender: Any, task_result: Any, **kwargs: Any) -> None:
    _print_signal("task_started", task_result)


def _on_finished(sender: Any, task_result: Any, **kwargs: Any) -> None:
    _print_signal("task_finished", task_result)


task_started.connect(_on_started, dispatch_uid="tests.tasks.started")
task_finished.connect(_on_finished, dispatch_uid="tests.tasks.finished")

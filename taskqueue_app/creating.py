"""Creating runs: validated, recorded durably, then put into their key's queue, once.

``lifecycle.create`` is this module's ``create``: the views, the producer stream and the Tasks
backend call it in the server's loop (or, with a shared engine, in any process's producer loop).
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import metrics
from .conf import taskqueue_settings
from .inputs import run_from_request
from .models import TaskRunRecord
from .queues import SCHEDULED, QueueFull, get_queues
from .records import writer
from .schemas import TaskRun, TooLargeError, ValidationError, now

__all__ = ["create", "reset"]


class _Process:
    """Process-local helpers of the lifecycle (nothing about runs: that lives in the engine)."""

    def __init__(self) -> None:
        # Creates whose caller hung up while the insert was in flight, finishing on their own.
        self.finishing: set[asyncio.Task] = set()


_process = _Process()


def reset() -> None:
    """Forget the process-local helpers (a testing utility: each test has its own loop)."""
    global _process
    _process = _Process()


async def _find_existing(run: TaskRun) -> TaskRun | None:
    record = await TaskRunRecord.objects.filter(
        task_key=run.task_key, dynamic_key=run.dynamic_key
    ).afirst()
    return TaskRun.from_record(record) if record is not None else None


async def create(data: Any) -> tuple[TaskRun, bool]:
    """Validate, record durably, and queue a new run; returns (run, created).

    An existing (task_key, dynamic_key) returns that run and False, queued once. A full
    scheduled lane raises ``QueueFullError`` with nothing stored. Raises ``ValidationError``
    (``TooLargeError`` when the run's JSON would exceed ``MAX_MESSAGE_BYTES``).
    """
    try:
        run = run_from_request(data, taskqueue_settings.MAX_MESSAGE_BYTES)
    except TooLargeError:
        metrics.rejected("too_large")
        raise
    except ValidationError:
        metrics.rejected("invalid")
        raise
    queues = get_queues()
    # A run due now takes its slot before it is stored, so that a refused create stores nothing.
    reserved = run.expected_start_time is None or run.expected_start_time <= now()
    if reserved:
        try:
            await queues.reserve(run.task_key)
        except QueueFull:
            existing = await _find_existing(run)
            if existing is not None:
                return existing, False
            metrics.rejected("queue_full", run.task_key)
            raise
    write = writer.submit(run)  # a future, not a task: nothing extra per create
    try:
        stored, created = await asyncio.shield(write)
    except asyncio.CancelledError:
        # The producer hung up; the insert goes on, and a stored run must reach its queue, or
        # it would wait for a restart.
        task = asyncio.ensure_future(_admit_when_written(write, run.task_key, reserved))
        _process.finishing.add(task)
        task.add_done_callback(_process.finishing.discard)
        raise
    except BaseException:
        if reserved:
            await queues.unreserve(run.task_key)
        raise
    await _admit_created(stored, created, run.task_key, reserved)
    return stored, created


async def _admit_created(stored: TaskRun, created: bool, key: str, reserved: bool) -> None:
    """Queue a run just recorded. A cancel that came while its record was being written, from
    any process, keeps it out (the engine's ``cancel`` and ``admit``)."""
    queues = get_queues()
    if created:
        if await queues.admit(stored, SCHEDULED, reserved=reserved):
            metrics.enqueued(stored)
    elif reserved:
        await queues.unreserve(key)  # the run existed (it is queued, or was)


async def _admit_when_written(write: asyncio.Future, key: str, reserved: bool) -> None:
    try:
        stored, created = await write
    except Exception:
        if reserved:
            await get_queues().unreserve(key)
        return
    await _admit_created(stored, created, key, reserved)

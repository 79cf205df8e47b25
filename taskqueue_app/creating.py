"""Creating runs: validated, recorded durably, then put into their key's queue, once.

``lifecycle.create`` is this module's ``create``: the views, the producer stream and the Tasks
backend call it in the server's loop (or, with a shared engine, in any process's producer loop).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from . import metrics
from .conf import taskqueue_settings
from .inputs import run_from_request
from .models import TaskRunRecord
from .queues import SCHEDULED, QueueFull, get_queues
from .records import writer
from .schemas import TaskRun, TooLargeError, ValidationError, now

__all__ = ["create", "reset", "withdraw"]


class _Process:
    """Process-local helpers of the lifecycle (nothing about runs: that lives in the engine)."""

    def __init__(self) -> None:
        # Creates whose caller hung up while the insert was in flight, finishing on their own.
        self.finishing: set[asyncio.Task] = set()
        # Runs being created here: recorded (or about to be), not yet in their queue; and those
        # of them cancelled meanwhile, which must not reach it.
        self.admitting: set[uuid.UUID] = set()
        self.withdrawn: set[uuid.UUID] = set()


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
    _process.admitting.add(run.id)
    try:
        stored, created = await asyncio.shield(write)
    except asyncio.CancelledError:
        # The producer hung up; the insert goes on, and a stored run must reach its queue, or
        # it would wait for a restart.
        task = asyncio.ensure_future(_admit_when_written(write, run.id, run.task_key, reserved))
        _process.finishing.add(task)
        task.add_done_callback(_process.finishing.discard)
        raise
    except BaseException:
        _process.admitting.discard(run.id)
        if reserved:
            await queues.unreserve(run.task_key)
        raise
    await _admit_created(run.id, stored, created, run.task_key, reserved)
    return stored, created


async def _admit_created(
    asked: uuid.UUID, stored: TaskRun, created: bool, key: str, reserved: bool
) -> None:
    """Queue a run just recorded (``asked`` is the id its create registered as admitting; an
    existing run answered instead has another)."""
    queues = get_queues()
    try:
        if created and stored.id in _process.withdrawn:
            created = False  # cancelled while its record was written: never queued
        if created:
            await queues.admit(stored, SCHEDULED, reserved=reserved)
            metrics.enqueued(stored)
            if stored.id in _process.withdrawn:
                await queues.cancel(stored.id)  # cancelled while it was being queued
        elif reserved:
            await queues.unreserve(key)  # the run existed (it is queued, or was), or is cancelled
    finally:
        _process.admitting.discard(asked)
        _process.withdrawn.discard(asked)


def withdraw(run_id: uuid.UUID) -> bool:
    """Keep a run this process is creating out of its queue (a cancel arrived while its record
    was being written); True if there was one."""
    if run_id not in _process.admitting:
        return False
    _process.withdrawn.add(run_id)
    return True


async def _admit_when_written(
    write: asyncio.Future, run_id: uuid.UUID, key: str, reserved: bool
) -> None:
    try:
        stored, created = await write
    except Exception:
        _process.admitting.discard(run_id)
        if reserved:
            await get_queues().unreserve(key)
        return
    await _admit_created(run_id, stored, created, key, reserved)

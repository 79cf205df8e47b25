"""Shared steps of the lifecycle and hand-action tests: make a run, read its record."""

from __future__ import annotations

import uuid

from taskqueue_app import lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.records import writer
from taskqueue_app.schemas import TaskRun

BOOM = {"type": "ValueError", "message": "boom", "traceback": None}


async def make(key: str = "k", **fields) -> TaskRun:
    """A new run of ``key``, created (recorded and queued) through the lifecycle."""
    run, created = await lifecycle.create({"task_key": key, **fields})
    assert created
    return run


async def recorded(run_id: uuid.UUID) -> TaskRunRecord:
    """The run's record once every pending write is in."""
    await writer.flush()
    return await TaskRunRecord.objects.aget(pk=run_id)

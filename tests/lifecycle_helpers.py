"""Shared steps of the lifecycle and hand-action tests: make a run, start it on a live
connection, read its record."""

from __future__ import annotations

import uuid

from taskqueue_app import lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.records import writer
from taskqueue_app.schemas import TaskRun
from taskqueue_app.testing import claim

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


async def running(key: str = "k", holder: str = "c1", **fields) -> tuple[TaskRun, list[str]]:
    """A run started by a live connection ``holder`` of worker ``w1``, and the notices it hears."""
    run = await make(key, **fields)
    queues = get_queues()
    await queues.connect(holder, "w1", [key])
    heard: list[str] = []
    queues.listen(holder, heard.append)
    await claim(key, holder)
    await lifecycle.acknowledge(holder, run.id, "w1", True)
    started = await lifecycle.start(holder, run.id, "w1")
    assert started is not None and started.state_type == "RUNNING"
    return started, heard

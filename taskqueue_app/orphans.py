"""Runs stranded with a vanished worker are given back: nothing stays PENDING or RUNNING forever.

A run recorded PENDING (acked) or RUNNING by a worker that reports outcomes, that no live
connection holds, and whose record has not changed for ``TASKQUEUE["ORPHAN_TIMEOUT"]`` seconds,
is an orphan: its worker is gone (a server restart it never came back from, a dead server
process) and had that long to reconnect and say what became of it. PENDING goes back to the
front of its retry lane; RUNNING becomes CRASHED and is retried if it has retries left.

One sweep every half timeout, in the server's loop, is a query of an indexed column. A run is
given back only when two sweeps in a row find it stranded and unchanged, and its record, read
again, still says so; so nothing is given back before the server has run for one whole
timeout, and workers always get that long to reconnect after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async

from . import lifecycle, metrics
from .conf import taskqueue_settings
from .models import TaskRunRecord
from .queues import get_queues
from .records import aread, transition, writer
from .schemas import TaskRun, now
from .states import CANCELLING, StateType

logger = logging.getLogger(__name__)

__all__ = ["ORPHAN_ERROR", "WATCHED", "Sweeper", "give_back", "sweep"]

ORPHAN_ERROR = {
    "type": "taskqueue_app.errors.Orphaned",
    "message": "the run's worker vanished and did not come back within ORPHAN_TIMEOUT",
    "traceback": None,
}
# The holder name under which orphans pass through the engine on their way back.
SWEEPER = "taskqueue-orphan-sweeper"
WATCHED = ("Pending", "Running", CANCELLING)  # "Delivered" (a Prefect client's) is its own


def _stranded(before: datetime) -> list[TaskRun]:
    records = TaskRunRecord.objects.filter(
        state_type__in=(StateType.PENDING, StateType.RUNNING),
        state_name__in=WATCHED,
        updated__lt=before,
    ).order_by("updated")
    return [TaskRun.from_record(record) for record in records]


async def sweep(timeout: float, suspects: dict) -> int:
    """Give back every run stranded for ``timeout`` seconds; how many were.

    ``suspects`` (run id -> its record's ``updated``) is kept between sweeps: a run is given
    back only when the previous sweep found it stranded too, unchanged. A run whose outcome is
    being recorded right now is out of its worker's hands for a moment, and must not be taken
    for an orphan. Just before a run is given back, its record is read again.
    """
    await writer.flush()  # the records must show the state changes still being written
    candidates = await sync_to_async(_stranded)(now() - timedelta(seconds=timeout))
    queues = get_queues()
    seen = dict(suspects)
    suspects.clear()
    given = 0
    for run in candidates:
        if await queues.find_held(run.id) is not None:
            continue  # a live connection has it: its worker came back
        suspects[run.id] = run.updated
        if seen.get(run.id) != run.updated:
            continue  # first seen stranded: given back at the next sweep if still so
        await writer.flush()
        fresh = await aread(run.id)
        if fresh is None or fresh.updated != run.updated or fresh.state_type != run.state_type:
            continue  # it moved on meanwhile (an outcome came in)
        if await queues.find_held(run.id) is not None:
            continue
        del suspects[run.id]
        if await give_back(fresh, ORPHAN_ERROR) is not None:
            given += 1
    if given:
        logger.warning("gave back %d run(s) whose worker vanished (ORPHAN_TIMEOUT)", given)
    return given


async def give_back(run: TaskRun, error: dict) -> TaskRun | None:
    """A stranded run (no connection holds it) goes on: RUNNING crashes with ``error`` (and is
    retried if it may be), PENDING goes back to the front of its key's retry lane.

    ``run`` is its record as just read: None, and nothing done, if another process's sweep (or
    an operator's give-back) changed that record first, so no orphan is given back twice.
    """
    if run.state_type == StateType.RUNNING:
        return await lifecycle.crash(run, error, since=run)
    back = run.with_state(StateType.SCHEDULED, "Scheduled")
    if not await transition(back, run):
        return None
    # Through the engine's own give-back, so that it goes first in line like any release.
    queues = get_queues()
    await queues.hold(SWEEPER, back)
    metrics.redelivered(await queues.release(SWEEPER))
    return back


class Sweeper:
    """The periodic sweep of one server process, started with the server, stopped with it."""

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        # Runs found stranded by the last sweep, and their records' ``updated`` then.
        self.suspects: dict = {}

    def start(self) -> None:
        if self.task is None or self.task.done():
            loop = asyncio.get_running_loop()
            self.task = loop.create_task(self._run(), name="taskqueue-orphans")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        timeout = float(taskqueue_settings.ORPHAN_TIMEOUT)
        # Workers get one whole timeout after the start to reconnect before anything is swept;
        # a run is given back at the second sweep that finds it stranded, half a timeout later.
        await asyncio.sleep(timeout / 2)
        while True:
            try:
                await sweep(timeout, self.suspects)
            except Exception:
                logger.exception("the orphan sweep failed; trying again later")
            await asyncio.sleep(max(0.05, timeout / 2))

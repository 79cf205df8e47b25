"""Start-up: the runs recorded SCHEDULED go back into their queues (``lifecycle.restore``)."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async

from .models import TaskRunRecord
from .queues import RETRY, SCHEDULED, get_queues
from .schemas import TaskRun
from .states import StateType

logger = logging.getLogger("taskqueue_app.lifecycle")

__all__ = ["lane_of", "restore"]


def lane_of(run: TaskRun) -> str:
    """The lane a waiting run belongs in: retry for AwaitingRetry, else scheduled."""
    return RETRY if run.is_retry else SCHEDULED


async def restore() -> int:
    """Put runs recorded SCHEDULED back into their queues, oldest first; once per site."""
    records = await sync_to_async(list)(
        TaskRunRecord.objects.filter(state_type=StateType.SCHEDULED).order_by("created")
    )
    # Only now: a failed read ("database is locked" at start-up) must be tried again.
    queues = get_queues()
    if not await queues.mark_restored():
        return 0
    for record in records:
        run = TaskRun.from_record(record)
        await queues.admit(run, lane_of(run))
    if records:
        logger.info("restored %d scheduled runs", len(records))
    return len(records)

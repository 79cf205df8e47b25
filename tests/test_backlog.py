"""Accepted runs that find their lane full wait in a backlog and are fed in as room frees up."""

from datetime import timedelta

import pytest

from taskqueue_app import lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.schemas import TaskRun, now
from taskqueue_app.testing import queue_row as row
from taskqueue_app.testing import queued, take, take_now
from taskqueue_app.workers import queue_rows

pytestmark = pytest.mark.django_db(transaction=True)


def make_record(key: str, index: int, **fields) -> TaskRunRecord:
    run = TaskRun(task_key=key, dynamic_key=f"{key}-{index}", name=key, **fields)
    run.created = now() + timedelta(microseconds=index)  # a strict order to restore in
    return TaskRunRecord(**run.record_fields())


async def test_restore_beyond_the_bound_feeds_the_rest_in_order():
    await get_queues().configure("k", scheduled_size=2)
    records = [make_record("k", i) for i in range(5)]
    await TaskRunRecord.objects.abulk_create(records)

    assert await lifecycle.restore() == 5
    assert await queued("k") == 2
    (only,) = await queue_rows()
    assert (only["task_key"], only["scheduled_size"], only["backlog"]) == ("k", 2, 3)

    got = [await take("k") for _ in records]
    assert [run.id for run in got] == [record.id for record in records]
    assert all(entry["backlog"] == 0 for entry in await get_queues().snapshot())


async def test_restore_happens_once_per_process():
    await TaskRunRecord.objects.abulk_create([make_record("k", 0)])
    assert await lifecycle.restore() == 1
    assert await lifecycle.restore() == 0
    assert await queued("k") == 1


async def test_restore_puts_retries_in_the_retry_lane_and_defers_future_runs():
    retry = make_record("k", 0, state_name="AwaitingRetry")
    plain = make_record("k", 1)
    later = make_record("k", 2, expected_start_time=now() + timedelta(hours=1))
    await TaskRunRecord.objects.abulk_create([plain, retry, later])
    await lifecycle.restore()
    entry = await row("k")
    assert (entry["retry_size"], entry["scheduled_size"], entry["deferred"]) == (1, 1, 1)
    assert (await take_now("k")).id == retry.id
    assert (await take_now("k")).id == plain.id
    # The only run left is the deferred one, waiting for its start time.
    assert await queued("k") == 0
    cancelled = await get_queues().cancel(later.id)
    assert cancelled is not None and cancelled.id == later.id
    assert (await row("k"))["deferred"] == 0

"""Accepted runs that find their lane full wait in a backlog and are fed in as room frees up."""

import asyncio
from datetime import timedelta

import pytest
from taskqueue_app.scheduler import scheduler

from taskqueue_app import lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.schemas import TaskRun, now
from taskqueue_app.task_queue import MultiQueue, TaskQueue
from taskqueue_app.workers import queue_rows

pytestmark = pytest.mark.django_db(transaction=True)


def make_record(key: str, index: int, **fields) -> TaskRunRecord:
    run = TaskRun(task_key=key, dynamic_key=f"{key}-{index}", name=key, **fields)
    run.created = now() + timedelta(microseconds=index)  # a strict order to restore in
    return TaskRunRecord(**run.record_fields())


async def test_restore_beyond_the_bound_feeds_the_rest_in_order():
    TaskQueue.configure_task_key("k", scheduled_size=2)
    records = [make_record("k", i) for i in range(5)]
    await TaskRunRecord.objects.abulk_create(records)

    assert await lifecycle.restore() == 5
    queue = TaskQueue.for_key("k")
    assert queue.qsize() == 2
    assert scheduler.backlog_sizes() == {"k": 3}
    (row,) = queue_rows()
    assert (row["scheduled_size"], row["backlog"]) == (2, 3)

    multi = MultiQueue(["k"])
    got = [await asyncio.wait_for(multi.get(), 1) for _ in records]
    assert [run.id for run in got] == [record.id for record in records]
    assert scheduler.backlog_sizes() == {}


async def test_restore_happens_once_per_process():
    await TaskRunRecord.objects.abulk_create([make_record("k", 0)])
    assert await lifecycle.restore() == 1
    assert await lifecycle.restore() == 0
    assert TaskQueue.for_key("k").qsize() == 1


async def test_restore_puts_retries_in_the_retry_lane_and_defers_future_runs():
    retry = make_record("k", 0, state_name="AwaitingRetry")
    plain = make_record("k", 1)
    later = make_record("k", 2, expected_start_time=now() + timedelta(hours=1))
    await TaskRunRecord.objects.abulk_create([plain, retry, later])
    await lifecycle.restore()
    queue = TaskQueue.for_key("k")
    assert queue.retry_room() == queue.retry_limit - 1
    assert queue.get_nowait().id == retry.id
    assert queue.get_nowait().id == plain.id
    assert [run.id for run in scheduler.deferred_runs()] == [later.id]

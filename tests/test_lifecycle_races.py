"""Races and stale messages: nothing stored is left out of a queue, no stale outcome wins."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.db import DatabaseError, connection

from taskqueue_app import actions, creating, lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.records import writer
from taskqueue_app.testing import claim, queued, take_now

pytestmark = pytest.mark.django_db(transaction=True)

BOOM = {"type": "ValueError", "message": "boom", "traceback": None}


async def recorded(run_id: uuid.UUID) -> TaskRunRecord:
    await writer.flush()
    return await TaskRunRecord.objects.aget(pk=run_id)


async def started_by(holder: str, client_id: str, key: str = "k", **fields):
    run, _ = await lifecycle.create({"task_key": key, **fields})
    await claim(key, holder)
    await lifecycle.acknowledge(holder, run.id, client_id, watch=True)
    await lifecycle.start(holder, run.id, client_id)
    return run


async def test_a_create_cancelled_mid_insert_still_queues_what_it_stored():
    creating = asyncio.create_task(lifecycle.create({"task_key": "k", "dynamic_key": "d"}))
    await asyncio.sleep(0)  # let it hand the insert to the writer
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating
    await writer.flush()
    record = await TaskRunRecord.objects.aget(dynamic_key="d")
    assert (await take_now("k")).id == record.id
    # The producer tries again: the same run, queued once.
    again, created = await lifecycle.create({"task_key": "k", "dynamic_key": "d"})
    assert (again.id, created) == (record.id, False)
    assert await queued("k") == 0


def _rename_table(old: str, new: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{old}" RENAME TO "{new}"')


async def test_a_failed_restore_is_tried_again():
    run, _ = await lifecycle.create({"task_key": "k"})
    # A new process: the run is only in the records now.
    creating.reset()
    writer.reset()
    await get_queues().reset()
    assert await queued("k") == 0
    table = TaskRunRecord._meta.db_table
    await sync_to_async(_rename_table)(table, "moved_away")  # the read fails, as a locked DB would
    try:
        with pytest.raises(DatabaseError, match="no such table|does not exist"):
            await lifecycle.restore()
    finally:
        await sync_to_async(_rename_table)("moved_away", table)
    assert await lifecycle.restore() == 1
    assert (await take_now("k")).id == run.id


async def test_a_stale_failure_cannot_requeue_a_run_another_worker_is_running():
    run, _ = await lifecycle.create({"task_key": "k", "empirical_policy": {"retries": 2}})
    await claim("k", "c1")
    await get_queues().release("c1")  # c1's connection dropped before its ack arrived
    await claim("k", "c2")
    await lifecycle.acknowledge("c2", run.id, "w2", watch=True)
    await lifecycle.start("c2", run.id, "w2")
    # w1 reconnects as c3 and reports a failure for the run it never really had.
    assert await lifecycle.fail("c3", run.id, BOOM, "w1") is None
    assert await lifecycle.complete("c3", run.id, 1, "w1") is None
    record = await recorded(run.id)
    assert (record.state_type, record.worker) == ("RUNNING", "w2")
    assert await queued("k") == 0
    assert (await lifecycle.complete("c2", run.id, 42, "w2")).state_type == "COMPLETED"


async def test_an_ack_of_a_copy_settled_elsewhere_keeps_the_record():
    run, _ = await lifecycle.create({"task_key": "k"})
    await claim("k", "c1")
    await lifecycle.disconnect("c1")  # dropped before its ack arrived: the run goes back
    copy = await claim("k", "c2")  # sent to another worker
    assert copy.id == run.id
    # The first worker did run it, and reports from a new connection: accepted.
    assert (await lifecycle.complete("c3", run.id, 7, "w1")).state_type == "COMPLETED"
    # The copy in flight is acked afterwards: dropped, the record stays COMPLETED.
    assert await lifecycle.acknowledge("c2", run.id, "w2", watch=True) is None
    record = await recorded(run.id)
    assert (record.state_type, record.result) == ("COMPLETED", 7)
    assert await get_queues().held("c2") == []


async def test_a_late_outcome_of_a_crashed_run_counts_only_from_its_worker():
    run = await started_by("c1", "w1")
    await lifecycle.disconnect("c1")
    assert (await recorded(run.id)).state_type == "CRASHED"
    assert await lifecycle.complete("c2", run.id, 1, "someone-else") is None
    assert (await recorded(run.id)).state_type == "CRASHED"
    done = await lifecycle.complete("c3", run.id, 2, "w1")
    assert done is not None and done.state_type == "COMPLETED"
    assert (await recorded(run.id)).result == 2


# -- a connection's kept copy gone stale (``known``): the change made meanwhile wins -----------


async def test_an_ack_over_a_copy_cancelled_meanwhile_changes_nothing():
    run, _ = await lifecycle.create({"task_key": "k"})
    sent = await claim("k", "c1")
    await actions.cancel(run.id)  # sent, not started: CANCELLED at once, out of c1's hands
    assert await lifecycle.acknowledge("c1", run.id, "w1", True, known=sent) is None
    assert await lifecycle.start("c1", run.id, "w1", known=sent) is None
    assert await get_queues().find_held(run.id) is None
    assert (await recorded(run.id)).state_type == "CANCELLED"


async def test_a_failure_over_a_copy_an_operator_changed_ends_cancelled_not_retried():
    run, _ = await lifecycle.create({"task_key": "k", "empirical_policy": {"retries": 3}})
    await get_queues().connect("c1", "w1", ["k"])  # live: a cancel asks, it does not end it
    sent = await claim("k", "c1")
    pending = await lifecycle.acknowledge("c1", run.id, "w1", True, known=sent)
    started = await lifecycle.start("c1", run.id, "w1", known=pending)
    assert (await get_queues().find_held(run.id)).run.state_type == "RUNNING"
    await actions.cancel(run.id)  # the held copy is now Cancelling; ``started`` is stale
    done = await lifecycle.fail("c1", run.id, BOOM, "w1", known=started)
    assert (done.state_type, (await recorded(run.id)).state_type) == ("CANCELLED", "CANCELLED")
    assert await get_queues().find_held(run.id) is None
    assert await queued("k") == 0


async def test_an_outcome_over_a_kept_copy_takes_the_run_out_of_hand_in_one_step():
    run, _ = await lifecycle.create({"task_key": "k"})
    sent = await claim("k", "c1")
    pending = await lifecycle.acknowledge("c1", run.id, "w1", True, known=sent)
    assert (await get_queues().find_held(run.id)).run.state_name == "Pending"
    started = await lifecycle.start("c1", run.id, "w1", known=pending)
    done = await lifecycle.complete("c1", run.id, 7, "w1", known=started)
    assert done.state_type == "COMPLETED" and done.run_count == 1
    assert await get_queues().find_held(run.id) is None
    assert (await recorded(run.id)).result == 7

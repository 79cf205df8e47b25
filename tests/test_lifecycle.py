"""The run lifecycle: create, defer, ack, start, complete, fail with retries, crash, hand retry."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from taskqueue_app import lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.records import writer
from taskqueue_app.schemas import TooLargeError, ValidationError, isoformat, now
from taskqueue_app.testing import claim, queued, take, take_now
from taskqueue_app.testing import queue_row as row
from tests.lifecycle_helpers import BOOM, make, recorded

pytestmark = pytest.mark.django_db(transaction=True)


# -- create and defer ------------------------------------------------------------------------------


async def test_create_records_durably_before_returning_and_queues():
    run = await make("k", parameters={"a": 1})
    # Durable at return: no flush needed to see the record.
    record = await TaskRunRecord.objects.aget(pk=run.id)
    assert (record.state_type, record.parameters) == ("SCHEDULED", {"a": 1})
    assert (await take_now("k")).id == run.id


async def test_create_refuses_bad_input_and_oversize_runs_storing_nothing():
    with pytest.raises(ValidationError, match="task_key is required"):
        await lifecycle.create({})
    from django.test import override_settings

    with override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 500}):
        with pytest.raises(TooLargeError, match="over MAX_MESSAGE_BYTES"):
            await lifecycle.create({"task_key": "k", "parameters": {"x": "y" * 500}})
    assert await TaskRunRecord.objects.acount() == 0


async def test_a_bad_create_does_not_fail_the_others_in_its_batch():
    # Python callers may pass anything; a run that cannot be stored must not take the other
    # creates of the same group commit down with it.
    good = lifecycle.create({"task_key": "k", "dynamic_key": "good"})
    bad = lifecycle.create({"task_key": "k", "parameters": {"x": object()}})
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0][1] is True
    assert isinstance(results[1], ValidationError)
    assert await TaskRunRecord.objects.acount() == 1


async def test_concurrent_creates_fill_the_lane_exactly_and_the_rest_are_refused():
    await get_queues().configure("small", scheduled_size=3)
    results = await asyncio.gather(
        *(lifecycle.create({"task_key": "small"}) for _ in range(8)), return_exceptions=True
    )
    created = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, lifecycle.QueueFullError)]
    assert (len(created), len(refused)) == (3, 5)
    assert await TaskRunRecord.objects.acount() == 3
    assert await queued("small") == 3


async def test_deferred_runs_enter_their_queue_at_their_time_in_due_order():
    start = now()
    late = await make("d", expected_start_time=isoformat(start + timedelta(seconds=0.3)))
    early = await make("d", expected_start_time=isoformat(start + timedelta(seconds=0.15)))
    assert await queued("d") == 0
    assert (await row("d"))["deferred"] == 2
    first = await take("d")
    assert first.id == early.id and now() >= early.expected_start_time
    second = await take("d")
    assert second.id == late.id and now() >= late.expected_start_time
    assert (await row("d"))["deferred"] == 0


async def test_a_deferred_run_is_not_refused_by_a_full_lane_and_waits_for_room():
    await get_queues().configure("busy", scheduled_size=1)
    waiting = await make("busy")
    later = await make("busy", expected_start_time=isoformat(now() + timedelta(seconds=0.1)))
    # Due while the lane is full: it waits in the backlog, then follows once there is room.
    for _ in range(500):  # the deferral timer fires 0.1 s from now; give it up to 5 s
        entry = await row("busy")
        if entry["deferred"] == 0:
            break
        await asyncio.sleep(0.01)
    assert (entry["scheduled_size"], entry["deferred"], entry["backlog"]) == (1, 0, 1)
    got = [await take("busy"), await take("busy")]
    assert [r.id for r in got] == [waiting.id, later.id]


# -- delivery and outcomes ------------------------------------------------------------------


async def test_ack_without_watch_hands_the_run_over():
    run = await make()
    held = await claim("k", "c1")
    assert held.id == run.id
    pending = await lifecycle.acknowledge("c1", run.id, "worker-1", watch=False)
    assert (pending.state_type, pending.worker) == ("PENDING", "worker-1")
    assert await get_queues().held("c1") == []
    record = await recorded(run.id)
    assert (record.state_type, record.worker) == ("PENDING", "worker-1")
    # The connection closing gives nothing back: Prefect's rule.
    await lifecycle.disconnect("c1")
    assert await queued("k") == 0


async def test_ack_of_a_run_not_held_is_ignored():
    assert await lifecycle.acknowledge("c1", uuid.uuid4(), "w", watch=False) is None


async def test_start_then_complete_records_the_result_and_the_attempt():
    run = await make()
    await claim("k", "c1")
    await lifecycle.acknowledge("c1", run.id, "w1", watch=True)
    running = await lifecycle.start("c1", run.id, "w1")
    assert (running.state_type, running.run_count) == ("RUNNING", 1)
    # Started: the connection holds the RUNNING copy only (it crashes it if it vanishes).
    assert [(r.id, r.state_type) for r in await get_queues().held("c1")] == [(run.id, "RUNNING")]
    assert (await row("k"))["running"] == 1
    done = await lifecycle.complete("c1", run.id, {"ok": True})
    assert done.state_type == "COMPLETED"
    assert await get_queues().held("c1") == []
    assert (await row("k"))["running"] == 0
    record = await recorded(run.id)
    assert (record.state_type, record.result, record.run_count) == ("COMPLETED", {"ok": True}, 1)
    assert record.started is not None and record.finished is not None
    # A second outcome for a finished run changes nothing.
    assert await lifecycle.complete("c1", run.id, {"ok": False}) is None
    assert await lifecycle.fail("c1", run.id, BOOM) is None
    assert (await recorded(run.id)).result == {"ok": True}


async def test_fail_with_retries_comes_back_after_the_delay_then_fails_for_good():
    run = await make("f", empirical_policy={"retries": 1, "retry_delay_seconds": 0.15})
    await claim("f", "c1")
    await lifecycle.start("c1", run.id, "w1")
    later = await lifecycle.fail("c1", run.id, BOOM)
    assert (later.state_type, later.state_name) == ("SCHEDULED", "AwaitingRetry")
    assert later.expected_start_time >= now() + timedelta(seconds=0.1)
    assert await queued("f") == 0  # not before its delay
    assert (await row("f"))["deferred"] == 1
    record = await recorded(run.id)
    assert (record.state_name, record.error) == ("AwaitingRetry", BOOM)

    again = await claim("f", "c2")
    assert again.id == run.id and again.is_retry
    assert now() >= later.expected_start_time
    await lifecycle.start("c2", run.id, "w1")
    final = await lifecycle.fail("c2", run.id, BOOM)
    assert (final.state_type, final.run_count) == ("FAILED", 2)
    record = await recorded(run.id)
    assert (record.state_type, record.run_count) == ("FAILED", 2)
    assert await queued("f") == 0 and (await row("f"))["deferred"] == 0


async def test_fail_without_retries_is_final():
    run = await make()
    await claim("k", "c1")
    await lifecycle.start("c1", run.id, "w1")
    assert (await lifecycle.fail("c1", run.id, BOOM)).state_type == "FAILED"


async def test_a_closed_connection_gives_back_unacked_and_unstarted_runs_first_in_line():
    first, second, third = [await make() for _ in range(3)]
    await claim("k", "c1")
    await claim("k", "c1")
    await lifecycle.acknowledge("c1", second.id, "w1", watch=True)  # acked, never started
    assert (await recorded(second.id)).state_type == "PENDING"
    await lifecycle.disconnect("c1")
    # Back at the front of the retry lane, in claim order, ahead of the third run.
    entry = await row("k")
    assert (entry["retry_size"], entry["scheduled_size"]) == (2, 1)
    assert [(await take_now("k")).id for _ in range(3)] == [first.id, second.id, third.id]
    assert (await recorded(second.id)).state_type == "SCHEDULED"


async def test_a_closed_connection_crashes_its_started_runs_retrying_those_with_retries_left():
    once = await make("c")
    twice = await make("c", empirical_policy={"retries": 1})
    for run in (once, twice):
        await claim("c", "c1")
        await lifecycle.start("c1", run.id, "w1")
    await lifecycle.disconnect("c1")
    crashed = await recorded(once.id)
    assert crashed.state_type == "CRASHED"
    assert crashed.error["type"] == "taskqueue_app.errors.Crashed"
    retried = await recorded(twice.id)
    assert (retried.state_type, retried.state_name) == ("SCHEDULED", "AwaitingRetry")
    back = await take("c")
    assert back.id == twice.id and back.is_retry


async def test_an_outcome_for_a_run_of_an_earlier_connection_is_accepted():
    run = await make()
    await claim("k", "old")
    await lifecycle.acknowledge("old", run.id, "w1", watch=False)
    await writer.flush()
    # The worker reconnected (new connection id) and reports what it finished.
    assert (await lifecycle.start("new", run.id, "w1")).state_type == "RUNNING"
    assert (await lifecycle.complete("new", run.id, 7)).state_type == "COMPLETED"
    assert (await recorded(run.id)).result == 7


# -- hand retry ------------------------------------------------------------------------------------

"""An operator's hand actions (``actions``): retry a finished run, cancel a run wherever it is,
give back a run stranded with a vanished worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import pytest

from taskqueue_app import actions, lifecycle, orphans
from taskqueue_app.errors import AlreadyFinished
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import RETRY, get_queues
from taskqueue_app.records import writer
from taskqueue_app.schemas import TaskRun, now
from taskqueue_app.testing import claim, queued, take_now
from taskqueue_app.testing import queue_row as row
from tests.lifecycle_helpers import BOOM, make, recorded, running

pytestmark = pytest.mark.django_db(transaction=True)


async def failed(key: str = "k") -> TaskRun:
    run = await make(key)
    await claim(key, "c1")
    await lifecycle.start("c1", run.id, "w1")
    await lifecycle.fail("c1", run.id, BOOM)
    return run


def cancel_frames(heard: list[str]) -> list[dict]:
    return [json.loads(notice) for notice in heard]


# -- retry ------------------------------------------------------------------------------------


async def test_hand_retry_of_a_finished_run_puts_it_in_the_retry_lane():
    run = await failed()
    again = await actions.retry(run.id)
    assert (again.state_type, again.state_name) == ("SCHEDULED", "AwaitingRetry")
    record = await TaskRunRecord.objects.aget(pk=run.id)  # durable before retry() returned
    assert (record.state_name, record.finished) == ("AwaitingRetry", None)
    assert (await row("k"))["retry_size"] == 1
    assert (await take_now("k")).id == run.id


async def test_hand_retry_unknown_unfinished_completed_and_full():
    assert await actions.retry(uuid.uuid4()) is None
    waiting = await make("other")
    with pytest.raises(actions.NotFinishedError, match="is SCHEDULED: .* has not finished yet"):
        await actions.retry(waiting.id)
    done = await make("done")
    await claim("done", "c2")
    await lifecycle.start("c2", done.id, "w1")
    await lifecycle.complete("c2", done.id, 1)
    with pytest.raises(actions.NotFinishedError, match="is COMPLETED: .* it succeeded"):
        await actions.retry(done.id)
    run = await failed("full")
    await get_queues().configure("full", retry_size=1)
    # Any run fills the lane.
    await get_queues().enqueue(TaskRun(task_key="full", dynamic_key="filler", name="f"), RETRY)
    with pytest.raises(lifecycle.QueueFullError, match="the retry queue of 'full' is full"):
        await actions.retry(run.id)
    assert (await recorded(run.id)).state_type == "FAILED"


async def test_a_hand_retry_another_process_made_first_is_refused(monkeypatch):
    run = await failed()
    stale = await lifecycle.get(run.id)  # what the other process had read: FAILED
    await actions.retry(run.id)  # ... and this one retried it first
    reads = iter([stale])
    real_get = lifecycle.get
    monkeypatch.setattr(lifecycle, "get", lambda run_id: _first(reads, real_get, run_id))
    with pytest.raises(actions.NotFinishedError, match="retried meanwhile"):
        await actions.retry(run.id)
    assert (await row("k"))["retry_size"] == 1
    assert (await recorded(run.id)).state_name == "AwaitingRetry"
    await get_queues().configure("k", retry_size=2)
    await get_queues().reserve("k", RETRY)  # the refused retry gave its reservation back


async def _first(reads, real_get, run_id):
    return next(reads, None) or await real_get(run_id)


async def test_two_racing_hand_retries_queue_the_run_once():
    run = await failed()
    results = await asyncio.gather(
        actions.retry(run.id), actions.retry(run.id), return_exceptions=True
    )
    assert sum(isinstance(r, TaskRun) for r in results) == 1
    assert sum(isinstance(r, actions.NotFinishedError) for r in results) == 1
    assert await queued("k") == 1


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_a_queued_run_takes_it_out_of_its_lane():
    run = await make()
    other = await make()
    done = await actions.cancel(run.id)
    assert (done.state_type, done.finished is not None) == ("CANCELLED", True)
    assert (await TaskRunRecord.objects.aget(pk=run.id)).state_type == "CANCELLED"  # durable
    assert await queued("k") == 1
    assert (await take_now("k")).id == other.id


async def test_cancel_a_deferred_run_and_a_run_awaiting_its_retry():
    later = await make(expected_start_time=(now() + timedelta(hours=1)).isoformat())
    assert (await row("k"))["deferred"] == 1
    assert (await actions.cancel(later.id)).state_type == "CANCELLED"
    assert (await row("k"))["deferred"] == 0
    retried = await make("r", empirical_policy={"retries": 1, "retry_delay_seconds": 3600})
    await claim("r", "c1")
    await lifecycle.start("c1", retried.id, "w1")
    waiting = await lifecycle.fail("c1", retried.id, BOOM)
    assert waiting.state_name == "AwaitingRetry"
    assert (await actions.cancel(retried.id)).state_type == "CANCELLED"
    assert (await row("r"))["deferred"] == 0


async def test_cancel_unknown_is_none_and_finished_is_refused():
    assert await actions.cancel(uuid.uuid4()) is None
    run = await failed()
    with pytest.raises(AlreadyFinished, match="is FAILED: it has already finished"):
        await actions.cancel(run.id)
    assert (await recorded(run.id)).state_type == "FAILED"


async def test_cancel_a_run_sent_but_not_started_cancels_it_and_tells_the_worker():
    run = await make()
    queues = get_queues()
    await queues.connect("c1", "w1", ["k"])
    heard: list[str] = []
    queues.listen("c1", heard.append)
    await claim("k", "c1")
    done = await actions.cancel(run.id)
    assert done.state_type == "CANCELLED"
    assert cancel_frames(heard) == [{"type": "cancel", "id": str(run.id)}]
    assert await queues.find_held(run.id) is None
    # The worker's later reports change nothing: it may not start it.
    assert await lifecycle.start("c1", run.id, "w1") is None
    assert await lifecycle.cancelled("c1", run.id, "w1") is None
    assert (await recorded(run.id)).state_type == "CANCELLED"


async def test_cancel_a_running_run_asks_its_worker_and_ends_when_it_confirms():
    run, heard = await running(empirical_policy={"retries": 3})
    asking = await actions.cancel(run.id)
    assert (asking.state_type, asking.state_name) == ("RUNNING", "Cancelling")
    assert asking.to_dict()["state"]["state_details"]["cancel_requested"] is True
    assert (await recorded(run.id)).state_name == "Cancelling"
    assert cancel_frames(heard) == [{"type": "cancel", "id": str(run.id)}]
    # Asked twice: the worker is told again, the run stays as it is.
    assert (await actions.cancel(run.id)).state_name == "Cancelling"
    assert len(heard) == 2
    done = await lifecycle.cancelled("c1", run.id, "w1")
    assert done.state_type == "CANCELLED"
    record = await recorded(run.id)
    assert record.state_type == "CANCELLED" and record.attempts[-1]["finished"] is not None
    assert await get_queues().find_held(run.id) is None


async def test_a_running_run_that_completes_before_the_cancel_arrives_stays_completed():
    run, _ = await running()
    await actions.cancel(run.id)
    assert (await lifecycle.complete("c1", run.id, 42, "w1")).state_type == "COMPLETED"
    assert (await recorded(run.id)).result == 42


async def test_a_cancelling_run_whose_worker_vanishes_ends_cancelled_not_retried():
    run, _ = await running(empirical_policy={"retries": 3})
    await actions.cancel(run.id)
    await get_queues().disconnect("c1")
    await lifecycle.disconnect("c1")
    record = await recorded(run.id)
    assert record.state_type == "CANCELLED"
    assert await queued("k") == 0 and (await row("k"))["deferred"] == 0


async def test_cancel_a_run_held_by_a_connection_that_is_gone_cancels_it_at_once():
    run, heard = await running()
    await get_queues().disconnect("c1")  # its process died: the copy is held, nobody listens
    done = await actions.cancel(run.id)
    assert done.state_type == "CANCELLED" and heard == []
    assert await get_queues().find_held(run.id) is None


async def test_cancel_of_a_retry_sent_again_to_the_same_worker_keeps_the_crash_it_follows():
    run, _ = await running(empirical_policy={"retries": 3})
    await lifecycle.disconnect("c1")  # the attempt ends Crashed, a guess; retried at once
    await get_queues().connect("c2", "w1", ["k"])  # the same worker, connected again
    await claim("k", "c2")
    done = await actions.cancel(run.id)
    assert done.state_type == "CANCELLED"
    (attempt,) = (await recorded(run.id)).attempts
    assert attempt["worker"] == "w1" and attempt["error"]["type"].endswith("Crashed")


async def test_a_stranded_cancelling_run_is_swept_into_cancelled():
    run, _ = await running(empirical_policy={"retries": 3})
    await actions.cancel(run.id)
    queues = get_queues()
    await queues.disconnect("c1")
    await queues.ack("c1", run.id)  # a server restart: no process holds it any more
    suspects: dict = {}
    await orphans.sweep(0, suspects)  # first seen
    assert await orphans.sweep(0, suspects) == 1
    assert (await recorded(run.id)).state_type == "CANCELLED"


# -- give back --------------------------------------------------------------------------------


async def test_give_back_a_stranded_running_run_crashes_and_retries_it():
    run, _ = await running(empirical_policy={"retries": 1})
    queues = get_queues()
    await queues.disconnect("c1")
    given = await actions.give_back(run.id)
    assert (given.state_type, given.state_name) == ("SCHEDULED", "AwaitingRetry")
    assert given.error["message"] == "given back by an operator: its worker was gone"
    assert await queues.find_held(run.id) is None
    assert (await take_now("k")).id == run.id


async def test_give_back_a_stranded_pending_run_puts_it_first_in_line():
    first = await make()
    queues = get_queues()
    await claim("k", "c1")
    await lifecycle.acknowledge("c1", first.id, "w1", True)
    await queues.ack("c1", first.id)  # a restart: recorded PENDING, held by nobody
    second = await make()
    given = await actions.give_back(first.id)
    assert (given.state_type, given.state_name) == ("SCHEDULED", "Scheduled")
    assert (await take_now("k")).id == first.id
    assert (await take_now("k")).id == second.id


async def test_an_orphan_two_processes_give_back_at_once_goes_back_once():
    running_run, _ = await running("r", holder="c1", empirical_policy={"retries": 3})
    pending_run = await make("p")
    await claim("p", "c2")
    await lifecycle.acknowledge("c2", pending_run.id, "w1", True)
    queues = get_queues()
    await queues.disconnect("c1")
    await queues.ack("c1", running_run.id)  # its server process died: held by nobody
    await queues.ack("c2", pending_run.id)
    for run in (running_run, pending_run):
        read = await lifecycle.get(run.id)  # what both sweeps read
        assert await orphans.give_back(read, orphans.ORPHAN_ERROR) is not None
        assert await orphans.give_back(read, orphans.ORPHAN_ERROR) is None  # the later one
    assert (await row("r"))["retry_size"] == 1 and (await row("p"))["retry_size"] == 1
    again = await recorded(running_run.id)
    assert (again.state_name, len(again.attempts)) == ("AwaitingRetry", 1)


async def test_give_back_leaves_a_run_handed_over_to_a_prefect_client_alone():
    run = await make()
    await claim("k", "prefect-like")
    await lifecycle.acknowledge("prefect-like", run.id, "p1", watch=False)  # handed over
    with pytest.raises(actions.NotStrandedError, match="handed over to a client"):
        await actions.give_back(run.id)
    assert (await recorded(run.id)).state_name == "Delivered"
    assert await queued("k") == 0


async def test_give_back_refuses_runs_that_are_not_stranded():
    assert await actions.give_back(uuid.uuid4()) is None
    waiting = await make()
    with pytest.raises(actions.NotStrandedError, match="is SCHEDULED: only a PENDING or RUNNING"):
        await actions.give_back(waiting.id)
    run, _ = await running("live", holder="c9")
    with pytest.raises(actions.NotStrandedError, match="held by a connected worker .w1.; cancel"):
        await actions.give_back(run.id)
    assert (await recorded(run.id)).state_type == "RUNNING"


async def test_a_run_cancelled_while_its_record_is_written_never_reaches_its_queue():
    run_id = uuid.uuid4()
    # The engine's half of a cancel that read the record of a create still in flight (in this
    # process or another): the run is nowhere in the engine yet.
    assert await get_queues().cancel(run_id, keep_out=True) is None
    run, created = await lifecycle.create({"task_key": "w", "id": str(run_id)})
    assert (run.id, created) == (run_id, True)
    assert await queued("w") == 0  # recorded, but kept out of its queue
    assert await get_queues().find_held(run_id) is None
    await get_queues().configure("w", scheduled_size=1)
    await make("w")  # its reserved slot was given back: the one slot is free


async def test_a_failure_reported_while_cancelling_ends_cancelled_not_retried():
    run, _ = await running(empirical_policy={"retries": 3})
    await actions.cancel(run.id)
    done = await lifecycle.fail("c1", run.id, BOOM, "w1")
    assert done.state_type == "CANCELLED"
    assert await queued("k") == 0 and (await row("k"))["deferred"] == 0


async def test_the_writer_shows_a_change_not_yet_written_to_a_cancel():
    run, _ = await running()
    done = await lifecycle.complete("c1", run.id, 1, "w1")  # written behind, not flushed
    assert writer.latest_state(run.id) == "COMPLETED" == done.state_type
    await writer.flush()
    assert writer.latest_state(run.id) is None  # the record shows it now
    with pytest.raises(AlreadyFinished, match="is COMPLETED"):
        await actions.cancel(run.id)
    assert (await recorded(run.id)).state_type == "COMPLETED"

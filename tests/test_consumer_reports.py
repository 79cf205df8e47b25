"""The consumer's half of "nothing lost" (DESIGN §6 steps 3 and 5): ``limit``, ``recorded`` once
a report is durable, ``cancel`` for a run a worker must not run, ``cancelled`` back."""

from __future__ import annotations

import uuid

import pytest
from channels.testing import WebsocketCommunicator

from project.asgi import application
from taskqueue_app import actions, lifecycle, protocol
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.testing import queued, subscriber

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("serving")]

WAIT = 3


async def subscribed(keys, client_id="w1", **extra) -> WebsocketCommunicator:
    return await subscriber(application, keys, client_id, **{"reports_outcomes": True, **extra})


async def create(key: str = "k") -> uuid.UUID:
    run, _ = await lifecycle.create({"task_key": key})
    return run.id


async def stored_state(run_id: uuid.UUID) -> str:
    """The state in the database itself, committed writes only (no flush first)."""
    record = await TaskRunRecord.objects.aget(pk=run_id)
    return record.state_type


async def test_recorded_answers_a_report_only_once_it_is_in_the_database():
    run_id = await create()
    comm = await subscribed(["k"])
    assert (await comm.receive_json_from(WAIT))["id"] == str(run_id)
    await comm.send_json_to({"type": "ack", "id": str(run_id)})
    await comm.send_json_to({"type": "started", "id": str(run_id)})
    assert await comm.receive_json_from(WAIT) == {
        "type": "recorded",
        "id": str(run_id),
        "of": "started",
    }
    assert await stored_state(run_id) == "RUNNING"
    await comm.send_json_to({"type": "completed", "id": str(run_id), "result": 7})
    confirmed = await comm.receive_json_from(WAIT)
    assert confirmed == {"type": "recorded", "id": str(run_id), "of": "completed"}
    assert await stored_state(run_id) == "COMPLETED"
    await comm.disconnect()


async def test_a_start_for_a_finished_run_is_answered_with_cancel_and_nothing_changes():
    run_id = await create()
    comm = await subscribed(["k"])
    await comm.receive_json_from(WAIT)
    for message in ("ack", "started"):
        await comm.send_json_to({"type": message, "id": str(run_id)})
    await comm.receive_json_from(WAIT)  # recorded (started)
    await comm.send_json_to({"type": "completed", "id": str(run_id), "result": 1})
    await comm.receive_json_from(WAIT)  # recorded (completed)
    await comm.send_json_to({"type": "started", "id": str(run_id)})  # a stale start
    assert await comm.receive_json_from(WAIT) == {"type": "cancel", "id": str(run_id)}
    await comm.send_json_to({"type": "cancelled", "id": str(run_id)})
    assert (await comm.receive_json_from(WAIT))["of"] == "cancelled"
    assert (await lifecycle.get(run_id)).state_type == "COMPLETED"  # the stale cancel is dropped
    await comm.disconnect()


async def test_a_start_for_a_run_another_live_worker_runs_is_cancelled():
    run_id = await create()
    first = await subscribed(["k"], client_id="first")
    await first.receive_json_from(WAIT)
    for message in ("ack", "started"):
        await first.send_json_to({"type": message, "id": str(run_id)})
    await first.receive_json_from(WAIT)
    second = await subscribed(["k"], client_id="second")
    await second.send_json_to({"type": "started", "id": str(run_id)})
    assert await second.receive_json_from(WAIT) == {"type": "cancel", "id": str(run_id)}
    run = await lifecycle.get(run_id)
    assert (run.state_type, run.worker, run.run_count) == ("RUNNING", "first", 1)
    await first.disconnect()
    await second.disconnect()


async def test_cancelled_from_the_worker_holding_a_run_cancels_it():
    run_id = await create()
    comm = await subscribed(["k"])
    await comm.receive_json_from(WAIT)
    await comm.send_json_to({"type": "ack", "id": str(run_id)})
    await comm.send_json_to({"type": "cancelled", "id": str(run_id)})
    assert (await comm.receive_json_from(WAIT))["of"] == "cancelled"
    assert (await lifecycle.get(run_id)).state_type == "CANCELLED"
    (connection,) = await get_queues().connections()
    assert connection.held == []
    await comm.disconnect()


async def test_limit_stops_delivery_while_the_worker_holds_that_many_runs_in_any_state():
    ids = [await create() for _ in range(3)]
    comm = await subscribed(["k"], prefetch=5, limit=2)
    got = [(await comm.receive_json_from(WAIT))["id"] for _ in range(2)]
    assert got == [str(i) for i in ids[:2]]
    for run_id in got:
        await comm.send_json_to({"type": "ack", "id": run_id})
        await comm.send_json_to({"type": "started", "id": run_id})
        assert (await comm.receive_json_from(WAIT))["of"] == "started"
    # Acked and running: the prefetch credit is back, but ``limit`` holds the third run back.
    assert await comm.receive_nothing(0.2)
    assert await queued("k") == 1
    await comm.send_json_to({"type": "completed", "id": got[0], "result": None})
    # A slot is free: the third run is sent (before or after the confirmation of the first).
    frames = [await comm.receive_json_from(WAIT) for _ in range(2)]
    assert {"type": "recorded", "id": got[0], "of": "completed"} in frames
    assert [f["id"] for f in frames if "task_key" in f] == [str(ids[2])]
    await comm.disconnect()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"limit": 0}, protocol.BAD_LIMIT),
        ({"limit": "2"}, protocol.BAD_LIMIT),
        ({"limit": True}, protocol.BAD_LIMIT),
        ({"limit": 2, "reports_outcomes": False}, protocol.LIMIT_WITHOUT_OUTCOMES),
    ],
)
async def test_a_malformed_limit_closes_4001_with_a_reason(extra, reason):
    comm = await subscribed(["k"], **extra)
    message = await comm.receive_output(WAIT)
    assert (message["type"], message["code"], message["reason"]) == (
        "websocket.close",
        4001,
        reason,
    )


async def test_an_operators_cancel_reaches_the_worker_running_the_run():
    run_id = await create()
    comm = await subscribed(["k"])
    await comm.receive_json_from(WAIT)
    for message in ("ack", "started"):
        await comm.send_json_to({"type": message, "id": str(run_id)})
    assert (await comm.receive_json_from(WAIT))["of"] == "started"
    asking = await actions.cancel(run_id)
    assert asking.state_name == "Cancelling"
    assert await comm.receive_json_from(WAIT) == {"type": "cancel", "id": str(run_id)}
    await comm.send_json_to({"type": "cancelled", "id": str(run_id)})
    assert (await comm.receive_json_from(WAIT))["of"] == "cancelled"
    assert await stored_state(run_id) == "CANCELLED"
    await comm.disconnect()


async def test_a_worker_resuming_a_run_it_was_asked_to_cancel_is_asked_again():
    run_id = await create()
    first = await subscribed(["k"])
    await first.receive_json_from(WAIT)
    await first.send_json_to({"type": "started", "id": str(run_id)})
    assert (await first.receive_json_from(WAIT))["of"] == "started"
    await actions.cancel(run_id)
    assert await first.receive_json_from(WAIT) == {"type": "cancel", "id": str(run_id)}
    # That frame was lost with the connection: the same worker, connected again, resumes.
    second = await subscribed(["k"])
    await second.send_json_to({"type": "started", "id": str(run_id)})
    frames = [await second.receive_json_from(WAIT) for _ in range(2)]
    assert {"type": "cancel", "id": str(run_id)} in frames
    assert {"type": "recorded", "id": str(run_id), "of": "started"} in frames
    await second.send_json_to({"type": "cancelled", "id": str(run_id)})
    assert (await second.receive_json_from(WAIT))["of"] == "cancelled"
    assert await stored_state(run_id) == "CANCELLED"
    await first.disconnect()
    await second.disconnect()


async def test_a_client_that_reports_nothing_is_never_sent_a_cancel_frame():
    run_id = await create()
    comm = await subscriber(application, ["k"], "prefect-like")
    await comm.receive_json_from(WAIT)  # sent, in its hands (a Prefect client knows no cancel)
    assert (await actions.cancel(run_id)).state_type == "CANCELLED"
    assert await comm.receive_nothing(0.2)
    await comm.disconnect()

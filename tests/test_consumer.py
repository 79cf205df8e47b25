"""The subscription consumer at the ASGI level (Channels' communicator): every rule of DESIGN §6.

Close reasons are checked here, where the ASGI close message carries them; end-to-end codes are
checked against a real Daphne in test_consumer_live.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from django.urls import path

from project.asgi import application
from taskqueue_app import lifecycle, protocol, server
from taskqueue_app.consumers import SubscriptionConsumer, live_subscriptions
from taskqueue_app.queues import RETRY, get_queues
from taskqueue_app.schemas import TaskRun, now
from taskqueue_app.testing import queued, subscriber
from taskqueue_app.workers import workers

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("serving")]

URL = "/api/task_runs/subscriptions/scheduled"
TOKEN = "s3cret-token"
WAIT = 3  # seconds a communicator waits for a frame: generous, the suite shares 2 cores


# -- helpers -----------------------------------------------------------------------------------


async def opened(subprotocols=("prefect",), app=application) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(app, URL, subprotocols=list(subprotocols))
    connected, subprotocol = await comm.connect(WAIT)
    assert connected, subprotocol
    return comm


async def authed(token=None, app=application) -> WebsocketCommunicator:
    comm = await opened(app=app)
    await comm.send_json_to({"type": "auth", "token": token})
    assert await comm.receive_json_from(WAIT) == {"type": "auth_success"}
    return comm


async def subscribed(keys, client_id="worker-1", app=application, **extra):
    return await subscriber(app, keys, client_id, **extra)


async def closed_with(comm: WebsocketCommunicator) -> tuple[int, str | None]:
    """The code and reason of the close the consumer sends next."""
    message = await comm.receive_output(WAIT)
    assert message["type"] == "websocket.close", message
    return message.get("code"), message.get("reason")


async def create(key: str, **fields) -> uuid.UUID:
    run, created = await lifecycle.create({"task_key": key, **fields})
    assert created
    return run.id


async def receive_run(comm: WebsocketCommunicator) -> dict:
    """The next run sent, past the server's ``recorded`` confirmations of earlier reports."""
    while True:
        frame = await comm.receive_json_from(WAIT)
        if frame.get("type") != "recorded":
            return frame


async def record(run_id) -> TaskRun:
    run = await lifecycle.get(run_id)
    assert run is not None
    return run


async def connection_of(client_id: str) -> str:
    """The connection id (the runs' holder) of a subscribed client."""
    (conn,) = [c for c in await get_queues().connections() if c.client_id == client_id]
    return conn.holder


async def held_by(client_id: str) -> list[TaskRun]:
    """The runs the engine records as held by a subscribed client's connection."""
    return await get_queues().held(await connection_of(client_id))


async def quit_after(comm: WebsocketCommunicator) -> None:
    """Quit and wait for the close: the consumer handles frames in order, so every frame sent
    before has been handled, database reads included."""
    await comm.send_json_to({"type": "quit"})
    assert (await closed_with(comm))[0] == 1000


async def settle() -> None:
    """Let every ready task run (the delivery task included) without waiting on a clock."""
    for _ in range(20):
        await asyncio.sleep(0)


async def handled(comm: WebsocketCommunicator) -> None:
    """Wait until the consumer has handled every frame sent so far: it handles them one at a
    time, in order, and asks for the next only when done; so it is done when it waits for input
    with none queued."""
    queue = comm.input_queue
    deadline = asyncio.get_running_loop().time() + WAIT
    while asyncio.get_running_loop().time() < deadline:
        if queue.empty() and any(not getter.done() for getter in queue._getters):  # noqa: SLF001
            await settle()  # and let the delivery task act on what it was given
            return
        await asyncio.sleep(0)
    raise AssertionError("the consumer did not handle its input")


# -- 1. upgrade and 2. auth ---------------------------------------------------------------------


async def test_route_is_mounted_at_prefects_path_and_accepts_the_prefect_subprotocol():
    comm = WebsocketCommunicator(application, URL, subprotocols=["prefect"])
    assert await comm.connect(WAIT) == (True, "prefect")
    await comm.disconnect()


async def test_no_origin_header_is_needed():
    comm = WebsocketCommunicator(application, URL, headers=[], subprotocols=["prefect"])
    connected, _ = await comm.connect(WAIT)
    assert connected
    await comm.disconnect()


async def test_auth_without_a_configured_token_accepts_prefects_null_token():
    comm = await authed(token=None)  # what Prefect's client sends when it has no key
    await comm.disconnect()


async def test_first_message_must_be_auth():
    comm = await opened()
    await comm.send_json_to({"type": "subscribe", "keys": ["k"], "client_id": "w"})
    assert await closed_with(comm) == (1008, "Expected 'auth' message")


@override_settings(TASKQUEUE={"AUTH_TOKEN": TOKEN})
@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "auth"}, "Auth required but no token provided"),
        ({"type": "auth", "token": None}, "Auth required but no token provided"),
        ({"type": "auth", "token": ""}, "Auth required but no token provided"),
        ({"type": "auth", "token": "wrong"}, "Invalid token"),
        ({"type": "auth", "token": 12345}, "Invalid token"),
        ({"token": TOKEN}, "Expected 'auth' message"),
    ],
)
async def test_auth_failures_close_1008_with_the_design_reasons(message, reason):
    comm = await opened()
    await comm.send_json_to(message)
    assert await closed_with(comm) == (1008, reason)


@override_settings(TASKQUEUE={"AUTH_TOKEN": TOKEN})
async def test_right_token_gets_auth_success_and_runs():
    run_id = await create("emails.send")
    comm = await authed(token=TOKEN)
    await comm.send_json_to({"type": "subscribe", "keys": ["emails.send"], "client_id": "w"})
    assert (await receive_run(comm))["id"] == str(run_id)
    await comm.disconnect()


async def test_legacy_mode_without_token_skips_auth():
    run_id = await create("k")
    comm = await opened(subprotocols=())
    await comm.send_json_to({"type": "subscribe", "keys": ["k"], "client_id": "legacy"})
    assert (await receive_run(comm))["id"] == str(run_id)
    await comm.disconnect()


@override_settings(TASKQUEUE={"AUTH_TOKEN": TOKEN})
async def test_legacy_mode_with_a_token_is_refused_before_accepting():
    comm = WebsocketCommunicator(application, URL)
    await comm.send_input({"type": "websocket.connect"})
    message = await comm.receive_output(WAIT)
    assert message == {"type": "websocket.close", "code": 1008, "reason": protocol.LEGACY_REFUSED}
    assert live_subscriptions() == 0


# -- 3. subscribe ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"type": "ack"}, "Protocol violation: expected 'subscribe' message"),
        ({"keys": ["k"], "client_id": "w"}, "Protocol violation: expected 'subscribe' message"),
        ({"type": "subscribe", "client_id": "w"}, protocol.EXPECTED_KEYS),
        ({"type": "subscribe", "keys": [], "client_id": "w"}, protocol.EXPECTED_KEYS),
        ({"type": "subscribe", "keys": "k", "client_id": "w"}, protocol.BAD_KEYS),
        ({"type": "subscribe", "keys": ["k", 3], "client_id": "w"}, protocol.BAD_KEYS),
        ({"type": "subscribe", "keys": ["x" * 201], "client_id": "w"}, protocol.BAD_KEYS),
        (
            {"type": "subscribe", "keys": ["k"]},
            "Protocol violation: expected 'client_id' in subscribe message",
        ),
        ({"type": "subscribe", "keys": ["k"], "client_id": ""}, protocol.EXPECTED_CLIENT_ID),
        ({"type": "subscribe", "keys": ["k"], "client_id": 7}, protocol.BAD_CLIENT_ID),
        (
            {"type": "subscribe", "keys": ["k"], "client_id": "w", "prefetch": 0},
            protocol.BAD_PREFETCH,
        ),
        (
            {"type": "subscribe", "keys": ["k"], "client_id": "w", "prefetch": 101},
            "Protocol violation: prefetch must be an integer from 1 to 100",
        ),
        (
            {"type": "subscribe", "keys": ["k"], "client_id": "w", "prefetch": "2"},
            protocol.BAD_PREFETCH,
        ),
        (
            {"type": "subscribe", "keys": ["k"], "client_id": "w", "prefetch": True},
            protocol.BAD_PREFETCH,
        ),
        (
            {"type": "subscribe", "keys": ["k"], "client_id": "w", "prefetch": 2.5},
            protocol.BAD_PREFETCH,
        ),
        (
            {"type": "subscribe", "keys": ["k"], "client_id": "w", "reports_outcomes": "yes"},
            protocol.BAD_REPORTS_OUTCOMES,
        ),
    ],
)
async def test_subscribe_errors_close_4001_with_a_reason(message, reason):
    comm = await authed()
    await comm.send_json_to(message)
    assert await closed_with(comm) == (4001, reason)
    assert await get_queues().connections() == []


async def test_subscribe_registers_the_worker_and_sends_no_reply():
    comm = await subscribed(["b", "a", "b"], client_id="w-42")
    await handled(comm)  # the subscribe has been handled: a reply would be out by now
    (worker,) = await workers()
    assert worker["identifier"] == "w-42"
    assert worker["task_keys"] == ["b", "a"]
    assert await comm.receive_nothing(0.05)
    # Nor one held back until there is something to send: the first frame the worker gets
    # after its subscribe is the first run.
    run_id = await create("a")
    assert (await receive_run(comm))["id"] == str(run_id)
    await comm.disconnect()
    assert await workers() == []


# -- 4. delivery ---------------------------------------------------------------------------------


async def test_delivery_keys_in_order_retry_first_only_subscribed_keys():
    a1, a2 = await create("a"), await create("a")
    b1 = await create("b")
    await create("c")  # not subscribed: never delivered
    retried = (await record(b1)).with_state("SCHEDULED", "AwaitingRetry", id=uuid.uuid4())
    await get_queues().enqueue(retried, RETRY)

    comm = await subscribed(["b", "a"], prefetch=10)
    got = [(await receive_run(comm))["id"] for _ in range(4)]
    assert got == [str(retried.id), str(b1), str(a1), str(a2)]
    assert await comm.receive_nothing(0.05)
    assert await queued("c") == 1
    await comm.disconnect()


async def test_run_json_carries_the_design_fields():
    run_id = await create(
        "mail.send", parameters={"args": [1], "kwargs": {}}, empirical_policy={"retries": 2}
    )
    comm = await subscribed(["mail.send"])
    run = await receive_run(comm)
    assert run["id"] == str(run_id)
    assert run["task_key"] == "mail.send"
    assert run["name"] == "send"
    assert run["parameters"] == {"args": [1], "kwargs": {}}
    assert run["state"]["type"] == run["state_type"] == "SCHEDULED"
    assert run["state"]["state_details"] == {"deferred": True}
    assert run["empirical_policy"]["retries"] == 2
    await comm.disconnect()


async def test_default_prefetch_is_one_unacked_run():
    first, second = await create("k"), await create("k")
    comm = await subscribed(["k"])
    assert (await receive_run(comm))["id"] == str(first)
    assert await comm.receive_nothing(0.05)
    assert await queued("k") == 1  # the second waits in the queue, not in hand
    await comm.send_json_to({"type": "ack"})
    assert (await receive_run(comm))["id"] == str(second)
    await comm.disconnect()


async def test_prefetch_limits_unacked_runs():
    ids = [await create("k") for _ in range(5)]
    comm = await subscribed(["k"], prefetch=3)
    got = [(await receive_run(comm))["id"] for _ in range(3)]
    assert got == [str(i) for i in ids[:3]]
    assert await comm.receive_nothing(0.05)
    assert len(await held_by("worker-1")) == 3
    await comm.send_json_to({"type": "ack"})
    assert (await receive_run(comm))["id"] == str(ids[3])
    assert await comm.receive_nothing(0.05)
    await comm.disconnect()


async def test_runs_enqueued_later_wake_the_waiting_connection():
    comm = await subscribed(["k"])
    await handled(comm)
    run_id = await create("k")
    assert (await receive_run(comm))["id"] == str(run_id)
    await comm.disconnect()


async def test_an_idle_subscription_arms_no_timer():
    loop = asyncio.get_running_loop()
    # The process's own timers (the orphan sweep's) were armed when the server started.
    before = {h for h in loop._scheduled if not h.cancelled()}  # noqa: SLF001
    comm = await subscribed(["k1", "k2"], prefetch=4)
    await handled(comm)
    assert {h for h in loop._scheduled if not h.cancelled()} - before == set()  # noqa: SLF001
    await comm.disconnect()


async def test_ack_without_id_acks_the_oldest_and_with_id_the_named_one():
    r1, r2, r3 = await create("k"), await create("k"), await create("k")
    comm = await subscribed(["k"], prefetch=3)
    for _ in range(3):
        await receive_run(comm)
    await comm.send_json_to({"type": "ack", "id": str(r3)})
    await comm.send_json_to({"type": "ack", "extra": "ignored"})
    await handled(comm)
    assert (await record(r1)).state_type == "PENDING"
    assert (await record(r2)).state_type == "SCHEDULED"
    assert (await record(r3)).state_type == "PENDING"
    assert [run.id for run in await held_by("worker-1")] == [r2]
    assert (await record(r1)).worker == "worker-1"
    await comm.disconnect()


async def test_stray_acks_change_nothing():
    r1 = await create("k")
    comm = await subscribed(["k"])
    await receive_run(comm)
    await comm.send_json_to({"type": "ack", "id": str(uuid.uuid4())})  # not sent here
    await comm.send_json_to({"type": "ack"})
    await comm.send_json_to({"type": "ack"})  # nothing left to ack
    r2, _r3 = await create("k"), await create("k")
    assert (await receive_run(comm))["id"] == str(r2)
    await handled(comm)
    # The stray acks earned no credit: still one unacked run at a time, so r3 waits its turn.
    assert await comm.receive_nothing(0.05)
    assert await queued("k") == 1
    assert [run.id for run in await held_by("worker-1")] == [r2]
    assert (await record(r1)).state_type == "PENDING"
    assert (await record(r2)).state_type == "SCHEDULED"
    await comm.disconnect()


async def test_ack_with_a_malformed_id_is_a_protocol_violation():
    await create("k")
    comm = await subscribed(["k"])
    await receive_run(comm)
    await comm.send_json_to({"type": "ack", "id": "not-a-uuid"})
    code, reason = await closed_with(comm)
    assert code == 4001
    assert "'id' must be a run id" in reason


async def test_two_connections_on_one_key_never_receive_the_same_run():
    ids = {str(await create("k")) for _ in range(20)}
    one = await subscribed(["k"], client_id="one", prefetch=5)
    two = await subscribed(["k"], client_id="two", prefetch=5)
    seen: list[str] = []
    deadline = asyncio.get_running_loop().time() + 3 * WAIT
    while len(seen) < 20:
        assert asyncio.get_running_loop().time() < deadline, f"{len(seen)} of 20 runs: {seen}"
        for comm in (one, two):
            if not await comm.receive_nothing(0.01):
                seen.append((await receive_run(comm))["id"])
                await comm.send_json_to({"type": "ack"})
    assert sorted(seen) == sorted(ids)
    await one.disconnect()
    await two.disconnect()


# -- 5. outcomes -----------------------------------------------------------------------------------


async def test_outcomes_update_the_record():
    done, broken = await create("k"), await create("k")
    comm = await subscribed(["k"], prefetch=2, reports_outcomes=True)
    await receive_run(comm)
    await receive_run(comm)
    await comm.send_json_to({"type": "ack", "id": str(done)})
    await comm.send_json_to({"type": "started", "id": str(done)})
    await handled(comm)
    running = await record(done)
    assert (running.state_type, running.run_count) == ("RUNNING", 1)
    await comm.send_json_to({"type": "completed", "id": str(done), "result": {"sum": 3}})
    await comm.send_json_to({"type": "ack", "id": str(broken)})
    await comm.send_json_to({"type": "started", "id": str(broken)})
    error = {"type": "ValueError", "message": "boom", "traceback": "Traceback ..."}
    await comm.send_json_to({"type": "failed", "id": str(broken), "error": error})
    await handled(comm)
    finished = await record(done)
    assert (finished.state_type, finished.result) == ("COMPLETED", {"sum": 3})
    failed = await record(broken)
    assert (failed.state_type, failed.error) == ("FAILED", error)
    assert await held_by("worker-1") == []
    await comm.disconnect()


async def test_a_failed_run_with_retries_comes_back_after_its_delay():
    run_id = await create("k", empirical_policy={"retries": 1, "retry_delay_seconds": 0.2})
    comm = await subscribed(["k"], reports_outcomes=True)
    await receive_run(comm)
    await comm.send_json_to({"type": "ack"})
    await comm.send_json_to({"type": "started", "id": str(run_id)})
    failed_at = now()
    await comm.send_json_to({"type": "failed", "id": str(run_id), "error": "flaky"})
    again = await receive_run(comm)
    assert again["id"] == str(run_id)
    assert (again["state_type"], again["state_name"]) == ("SCHEDULED", "AwaitingRetry")
    assert again["run_count"] == 1
    assert again["error"] == {"type": "Error", "message": "flaky", "traceback": None}
    due = datetime.fromisoformat(again["expected_start_time"].replace("Z", "+00:00"))
    assert due >= failed_at + timedelta(seconds=0.2)
    await comm.send_json_to({"type": "ack"})
    await comm.send_json_to({"type": "started", "id": str(run_id)})
    await comm.send_json_to({"type": "failed", "id": str(run_id)})
    await handled(comm)
    final = await record(run_id)
    assert (final.state_type, final.run_count) == ("FAILED", 2)
    await comm.disconnect()


async def test_an_outcome_before_the_ack_implies_it():
    r1, r2 = await create("k"), await create("k")
    comm = await subscribed(["k"], reports_outcomes=True)
    await receive_run(comm)
    await comm.send_json_to({"type": "started", "id": str(r1)})
    assert (await receive_run(comm))["id"] == str(r2)  # the slot was freed
    await comm.send_json_to({"type": "completed", "id": str(r1)})
    await handled(comm)
    assert (await record(r1)).state_type == "COMPLETED"
    await comm.disconnect()


async def test_an_outcome_for_a_run_of_an_earlier_connection_is_accepted():
    run_id = await create("k")
    first = await subscribed(["k"], client_id="w")
    await receive_run(first)
    await first.send_json_to({"type": "ack"})  # without reports_outcomes the ack hands it over
    await first.disconnect()
    assert (await record(run_id)).state_type == "PENDING"

    second = await subscribed(["k"], client_id="w")
    await second.send_json_to({"type": "started", "id": str(run_id)})
    await second.send_json_to({"type": "completed", "id": str(run_id), "result": 7})
    await quit_after(second)
    assert (await record(run_id)).state_type == "COMPLETED"
    assert (await record(run_id)).result == 7


async def test_an_outcome_needs_an_id():
    comm = await subscribed(["k"])
    await comm.send_json_to({"type": "completed"})
    assert await closed_with(comm) == (
        4001,
        "Protocol violation: 'completed' message needs an 'id'",
    )


async def test_a_run_settled_after_a_reconnect_is_not_delivered_again():
    # The worker's connection drops with a run unacked: it goes back to the queue. The worker
    # reconnects and reports it done anyway; the queued copy must not be run again.
    done = await create("k")
    first = await subscribed(["k"], client_id="w")
    await receive_run(first)
    await first.disconnect()
    assert await queued("k") == 1
    later = await create("k")

    back = await authed()
    await back.send_json_to({"type": "subscribe", "keys": ["other"], "client_id": "w"})
    await back.send_json_to({"type": "completed", "id": str(done), "result": "ok"})
    await quit_after(back)
    assert (await record(done)).state_type == "COMPLETED"

    fresh = await subscribed(["k"], client_id="fresh", prefetch=5)
    assert (await receive_run(fresh))["id"] == str(later)
    assert await fresh.receive_nothing(0.05)
    await fresh.disconnect()


# -- 6. quit and 7. faults ------------------------------------------------------------


async def test_quit_gives_runs_back_first_in_line_then_closes_1000():
    r1, r2, r3 = await create("k"), await create("k"), await create("k")
    comm = await subscribed(["k"], prefetch=2)
    await receive_run(comm)
    await receive_run(comm)
    await comm.send_json_to({"type": "quit"})
    code, _ = await closed_with(comm)
    assert code == 1000
    assert await get_queues().connections() == []
    nxt = await subscribed(["k"], client_id="next", prefetch=3)
    got = [(await receive_run(nxt))["id"] for _ in range(3)]
    assert got == [str(r1), str(r2), str(r3)]
    await nxt.disconnect()


async def test_a_dropped_connection_gives_unacked_runs_to_the_next_subscriber_first():
    r1, r2 = await create("k"), await create("k")
    comm = await subscribed(["k"])
    assert (await receive_run(comm))["id"] == str(r1)
    await comm.disconnect(code=1006)
    nxt = await subscribed(["k"], client_id="next", prefetch=2)
    assert [(await receive_run(nxt))["id"] for _ in range(2)] == [str(r1), str(r2)]
    assert (await record(r1)).state_type == "SCHEDULED"
    await nxt.disconnect()


async def test_without_reports_outcomes_an_acked_run_is_handed_over():
    run_id = await create("k")
    comm = await subscribed(["k"])
    await receive_run(comm)
    await comm.send_json_to({"type": "ack"})
    await handled(comm)
    await comm.disconnect()
    assert await queued("k") == 0
    assert (await record(run_id)).state_type == "PENDING"


async def test_with_reports_outcomes_a_vanished_worker_gives_back_or_crashes_its_runs():
    acked = await create("k")
    started = await create("k")
    retried = await create("k", empirical_policy={"retries": 1})
    comm = await subscribed(["k"], prefetch=3, reports_outcomes=True)
    for _ in range(3):
        await receive_run(comm)
    for run_id in (acked, started, retried):
        await comm.send_json_to({"type": "ack", "id": str(run_id)})
    await comm.send_json_to({"type": "started", "id": str(started)})
    await comm.send_json_to({"type": "started", "id": str(retried)})
    await handled(comm)
    await comm.disconnect(code=1006)

    assert (await record(acked)).state_type == "SCHEDULED"
    crashed = await record(started)
    assert crashed.state_type == "CRASHED"
    assert crashed.error["type"] == "taskqueue_app.errors.Crashed"
    again = await record(retried)
    assert (again.state_type, again.state_name) == ("SCHEDULED", "AwaitingRetry")
    nxt = await subscribed(["k"], client_id="next", prefetch=3)
    got = {(await receive_run(nxt))["id"] for _ in range(2)}
    assert got == {str(acked), str(retried)}
    assert await nxt.receive_nothing(0.05)
    await nxt.disconnect()


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", protocol.NOT_JSON),
        ("[1, 2]", protocol.NOT_JSON),
        ('{"type": "dance"}', "Protocol violation: unknown message type 'dance'"),
        ('{"id": "x"}', "Protocol violation: message has no 'type'"),
    ],
)
async def test_bad_frames_close_4001_and_give_runs_back(frame, reason):
    run_id = await create("k")
    comm = await subscribed(["k"])
    await receive_run(comm)
    await comm.send_to(text_data=frame)
    assert await closed_with(comm) == (4001, reason)
    assert await queued("k") == 1
    assert (await record(run_id)).state_type == "SCHEDULED"


async def test_binary_frames_holding_json_are_understood():
    await create("k")
    comm = await subscribed(["k"])
    await receive_run(comm)
    await comm.send_to(bytes_data=json.dumps({"type": "ack"}).encode())
    await handled(comm)
    assert await held_by("worker-1") == []
    await comm.disconnect()


@override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 100})
async def test_a_frame_over_the_size_limit_closes_1009():
    comm = await subscribed(["k"])
    await comm.send_json_to({"type": "completed", "id": str(uuid.uuid4()), "result": "x" * 200})
    code, reason = await closed_with(comm)
    assert code == 1009
    assert "the limit is 100" in reason


class SlowSocket(SubscriptionConsumer):
    """A socket whose sends of runs stall until released: a connection dying mid-send."""

    stalled: asyncio.Event
    release: asyncio.Event

    async def send(self, text_data=None, bytes_data=None, close=False):
        if text_data and text_data.startswith('{"id"'):
            type(self).stalled.set()
            await type(self).release.wait()
        await super().send(text_data, bytes_data, close)


async def test_a_run_claimed_but_not_yet_sent_goes_back_when_the_socket_dies():
    SlowSocket.stalled, SlowSocket.release = asyncio.Event(), asyncio.Event()
    slow_app = URLRouter([path(URL.lstrip("/"), SlowSocket.as_asgi())])
    run_id = await create("k")
    comm = await subscribed(["k"], app=slow_app)
    await asyncio.wait_for(SlowSocket.stalled.wait(), WAIT)
    assert [run.id for run in await held_by("worker-1")] == [run_id]
    await comm.disconnect(code=1006)
    assert await get_queues().connections() == []
    nxt = await subscribed(["k"], client_id="next")
    assert (await receive_run(nxt))["id"] == str(run_id)
    await nxt.disconnect()


# -- 9. shutdown ------------------------------------------------------------


async def test_shutdown_closes_every_subscription_with_1012_and_keeps_run_states():
    unacked, acked = await create("k"), await create("k")
    one = await subscribed(["k"], client_id="one", prefetch=2, reports_outcomes=True)
    await receive_run(one)
    await receive_run(one)
    await one.send_json_to({"type": "ack", "id": str(acked)})
    two = await authed()  # not subscribed yet: closed all the same
    await handled(one)
    assert live_subscriptions() == 2

    await server.shutdown()

    for comm in (one, two):
        assert await closed_with(comm) == (1012, protocol.SERVICE_RESTART)
    assert live_subscriptions() == 0
    assert (await record(unacked)).state_type == "SCHEDULED"  # restored at the next start
    assert (await record(acked)).state_type == "PENDING"  # its worker still has it
    await one.disconnect(code=1012)
    await two.disconnect(code=1012)
    assert (await record(acked)).state_type == "PENDING"

"""Guards of the subscription route: foreign browser origins, clients that never subscribe, and
a delivery that outlives its connection."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator

from project.asgi import application
from taskqueue_app import lifecycle, protocol
from taskqueue_app.consumers import live_subscriptions
from taskqueue_app.queues import get_queues
from taskqueue_app.testing import subscriber

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("serving")]

URL = "/api/task_runs/subscriptions/scheduled"
WAIT = 3


async def close_of(comm: WebsocketCommunicator) -> dict:
    message = await comm.receive_output(WAIT)
    assert message["type"] == "websocket.close", message
    return message


async def test_a_foreign_browser_origin_is_refused_before_accepting():
    comm = WebsocketCommunicator(
        application, URL, headers=[(b"origin", b"https://evil.example")], subprotocols=["prefect"]
    )
    await comm.send_input({"type": "websocket.connect"})
    assert await close_of(comm) == {
        "type": "websocket.close",
        "code": 1008,
        "reason": protocol.FOREIGN_ORIGIN,
    }
    assert live_subscriptions() == 0


async def test_the_sites_own_origin_is_accepted():
    comm = WebsocketCommunicator(
        application, URL, headers=[(b"origin", b"http://127.0.0.1:8000")], subprotocols=["prefect"]
    )
    assert await comm.connect(WAIT) == (True, "prefect")
    await comm.disconnect()


async def test_a_client_that_never_subscribes_is_closed(monkeypatch):
    monkeypatch.setattr(protocol, "HANDSHAKE_SECONDS", 0.05)
    comm = WebsocketCommunicator(application, URL, subprotocols=["prefect"])
    assert (await comm.connect(WAIT))[0]
    message = await close_of(comm)
    assert (message["code"], message["reason"]) == (1008, protocol.HANDSHAKE_TIMEOUT)
    assert live_subscriptions() == 0


async def test_a_subscribed_client_has_no_handshake_deadline(monkeypatch):
    monkeypatch.setattr(protocol, "HANDSHAKE_SECONDS", 0.05)
    comm = WebsocketCommunicator(application, URL, subprotocols=["prefect"])
    assert (await comm.connect(WAIT))[0]
    await comm.send_json_to({"type": "auth", "token": None})
    assert await comm.receive_json_from(WAIT) == {"type": "auth_success"}
    await comm.send_json_to({"type": "subscribe", "keys": ["k"], "client_id": "w"})
    # Well past the deadline: still open, nothing sent.
    assert await comm.receive_nothing(timeout=0.3)
    assert live_subscriptions() == 1
    await comm.disconnect()


async def test_a_delivery_that_outlives_its_connection_gives_its_run_back(monkeypatch):
    """A claim whose cancel is swallowed (a library's ``wait_for`` on Python 3.11) returns a run
    after its connection closed: the run goes back to the queue, not to a holder that is gone."""
    queues = get_queues()
    claim = queues.claim
    claiming = asyncio.Event()

    async def swallowing_claim(holder, keys):
        claiming.set()
        while True:
            try:
                return await claim(holder, keys)
            except asyncio.CancelledError:
                pass  # as the faulty library did: the caller goes on as if not cancelled

    monkeypatch.setattr(queues, "claim", swallowing_claim)
    gone = await subscriber(application, ["k"], "gone")
    await asyncio.wait_for(claiming.wait(), WAIT)
    await gone.disconnect()  # its delivery task, cancelled, still claims
    run, _ = await lifecycle.create({"task_key": "k"})
    monkeypatch.setattr(queues, "claim", claim)
    live = await subscriber(application, ["k"], "live")
    assert (await live.receive_json_from(WAIT))["id"] == str(run.id)
    assert live_subscriptions() == 1
    await live.disconnect()

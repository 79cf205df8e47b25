"""The worker's half of "nothing lost": it starts a run only on the server's go, keeps every
report until the server confirms it, sends it again after a reconnect, and recognises a run it
already ran instead of running it twice.

The server here is a real WebSocket server written in the test, speaking the protocol step by
step, so that each test can drop the connection exactly where a server crash would.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from websockets.asyncio.server import ServerConnection, serve

from taskqueue_app.worker import TaskWorker

pytestmark = pytest.mark.timeout(30)
WAIT = 5


class Script:
    """What the test server does on each connection: one coroutine per connection, in order."""

    def __init__(self, *steps) -> None:
        self.steps = list(steps)
        self.done = asyncio.Event()

    async def handle(self, ws: ServerConnection) -> None:
        assert json.loads(await ws.recv())["type"] == "auth"
        await ws.send(json.dumps({"type": "auth_success"}))
        subscribe = json.loads(await ws.recv())
        assert subscribe["type"] == "subscribe"
        step = self.steps.pop(0)
        await step(ws, subscribe)
        if not self.steps:
            self.done.set()


async def expect(ws: ServerConnection, kind: str, run_id: str) -> dict:
    message = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
    assert (message["type"], message.get("id")) == (kind, run_id), message
    return message


def run_frame(run_id: str, key: str, *args, run_count: int = 0) -> str:
    parameters = {"args": list(args), "kwargs": {}}
    return json.dumps(
        {"id": run_id, "task_key": key, "parameters": parameters, "run_count": run_count}
    )


def recorded(run_id: str, of: str) -> str:
    return json.dumps({"type": "recorded", "id": run_id, "of": of})


calls: list[str] = []


def note(value):
    """A task that notes each execution."""
    calls.append(value)
    return value


KEY = f"{note.__module__}.{note.__qualname__}"


async def serve_worker(script: Script, **options) -> TaskWorker:
    async with serve(script.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        worker = TaskWorker(f"http://127.0.0.1:{port}/api", {KEY: note}, max_backoff=0.2, **options)
        running = asyncio.ensure_future(worker.run())
        try:
            await asyncio.wait_for(script.done.wait(), WAIT * 3)
        finally:
            worker.stop(force=True)
            await asyncio.gather(running, return_exceptions=True)
    return worker


@pytest.fixture(autouse=True)
def _clear_calls():
    calls.clear()


async def test_an_unconfirmed_report_is_sent_again_and_a_run_sent_again_is_not_rerun():
    run_id = str(uuid.uuid4())

    async def first(ws, subscribe):
        assert subscribe["reports_outcomes"] is True and subscribe["limit"] == 2
        await ws.send(run_frame(run_id, KEY, "x"))
        await expect(ws, "started", run_id)  # a slot is free: the start acks it too
        assert calls == []  # not before the server's go
        await ws.send(recorded(run_id, "started"))
        completed = await expect(ws, "completed", run_id)
        assert completed["result"] == "x"
        await ws.close(1012)  # the server dies before the outcome is durable

    async def second(ws, subscribe):
        again = await expect(ws, "completed", run_id)  # sent again, unasked
        assert again["result"] == "x"
        # The restarted server lost the outcome and sends the same attempt once more.
        await ws.send(run_frame(run_id, KEY, "x"))
        await expect(ws, "ack", run_id)
        await expect(ws, "completed", run_id)
        await ws.send(recorded(run_id, "completed"))

    worker = await serve_worker(Script(first, second), limit=2)
    assert calls == ["x"]  # run once, reported three times
    assert worker.unconfirmed_reports == 0  # the confirmed report is let go


async def test_a_start_the_server_never_confirmed_is_asked_again_and_runs_once():
    run_id = str(uuid.uuid4())

    async def first(ws, subscribe):
        await ws.send(run_frame(run_id, KEY, "y"))
        await expect(ws, "started", run_id)  # a slot is free: the start acks it too
        await ws.close(1012)  # gone before RUNNING was durable

    async def second(ws, subscribe):
        await expect(ws, "started", run_id)  # asks again, after the reconnect
        assert calls == []
        await ws.send(recorded(run_id, "started"))
        await expect(ws, "completed", run_id)
        await ws.send(recorded(run_id, "completed"))

    await serve_worker(Script(first, second))
    assert calls == ["y"]


async def test_a_run_the_server_cancels_before_its_go_is_never_run():
    run_id = str(uuid.uuid4())

    async def only(ws, subscribe):
        await ws.send(run_frame(run_id, KEY, "z"))
        await expect(ws, "started", run_id)  # a slot is free: the start acks it too
        await ws.send(json.dumps({"type": "cancel", "id": run_id}))
        await expect(ws, "cancelled", run_id)
        await ws.send(recorded(run_id, "cancelled"))

    await serve_worker(Script(only))
    assert calls == []


async def test_a_cancel_after_the_run_finished_never_replaces_its_unrecorded_outcome():
    run_id = str(uuid.uuid4())

    async def first(ws, subscribe):
        await ws.send(run_frame(run_id, KEY, "done"))
        await expect(ws, "started", run_id)
        await ws.send(recorded(run_id, "started"))
        await expect(ws, "completed", run_id)
        # An operator's cancel crossed the outcome; then the connection drops before the
        # outcome is recorded.
        await ws.send(json.dumps({"type": "cancel", "id": run_id}))
        await ws.send(json.dumps({"type": "cancel", "id": run_id}))
        await ws.close(1012)

    async def second(ws, subscribe):
        again = await expect(ws, "completed", run_id)  # the outcome it ended with, still
        assert again["result"] == "done"
        await ws.send(recorded(run_id, "completed"))

    worker = await serve_worker(Script(first, second))
    assert calls == ["done"]
    assert worker.unconfirmed_reports == 0


async def test_a_retry_of_a_run_is_a_new_attempt_and_runs_again():
    run_id = str(uuid.uuid4())

    async def only(ws, subscribe):
        for attempt in range(2):
            await ws.send(run_frame(run_id, KEY, "again", run_count=attempt))
            await expect(ws, "started", run_id)
            await ws.send(recorded(run_id, "started"))
            await expect(ws, "completed", run_id)
            await ws.send(recorded(run_id, "completed"))

    await serve_worker(Script(only))
    assert calls == ["again", "again"]

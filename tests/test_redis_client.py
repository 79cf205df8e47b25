"""The Redis engine's client against a real redis-server: cancels honoured, send timeouts kept."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest

from taskqueue_app.queues.redis_client import client_for


@pytest.fixture
async def client(redis_server):
    client = client_for(redis_server.location + "?socket_timeout=0.3")
    yield client
    await client.aclose()


async def test_a_command_cancelled_before_it_is_done_ends_cancelled(client):
    """redis-py's ``wait_for`` around each send swallowed a cancel on Python 3.11 (the task went
    on with the answer); the cancel lands a different number of ticks in, in each trial."""
    key = f"t-{uuid.uuid4().hex}"
    await client.set(key, b"v")
    swallowed = []
    for trial in range(200):
        command = asyncio.ensure_future(client.get(key))
        for _ in range(trial % 10):
            await asyncio.sleep(0)
        if command.done():
            continue
        command.cancel()
        await asyncio.wait({command}, timeout=5)
        if not command.cancelled():
            swallowed.append(trial)
    assert swallowed == [], f"cancels swallowed in trials {swallowed}"
    assert await client.get(key) == b"v"  # and the pool still answers right


async def test_a_send_the_server_does_not_take_times_out_as_redis_py_says(client, redis_server):
    from redis.exceptions import TimeoutError as RedisTimeoutError

    assert await client.ping()
    os.kill(redis_server.process.pid, signal.SIGSTOP)  # reads nothing: the send fills the socket
    try:
        # Writing, or reading once redis-py's retry has connected again (the server is stopped).
        with pytest.raises(RedisTimeoutError, match="Timeout (writing to|reading from)"):
            await client.set(f"t-{uuid.uuid4().hex}", b"x" * (32 << 20))
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert await client.ping()  # on a new connection: the half-sent one was closed

"""The queue engines every contract test runs against (Django's ``SessionTestsMixin`` pattern).

A new engine joins by adding its dotted path here and, if it needs a server, a fixture that
starts one and skips with a reason where it is absent (and fails instead under CI).
"""

from __future__ import annotations

import uuid

import pytest

from taskqueue_app.queues import Queues, load_engine

ENGINE_PATHS = {
    "memory": "taskqueue_app.queues.memory.MemoryQueues",
    "redis": "taskqueue_app.queues.redis.RedisQueues",
}


def engine_config(name: str, request) -> dict:
    config = {"BACKEND": ENGINE_PATHS[name]}
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        # A prefix per test: tests never see each other's keys, whatever they leave behind.
        prefix = "{tq-" + uuid.uuid4().hex[:12] + "}"
        config.update(LOCATION=server.location, OPTIONS={"PREFIX": prefix, "WAIT": 1.0})
    return config


@pytest.fixture(params=sorted(ENGINE_PATHS))
async def engine(request) -> Queues:
    """A fresh engine of each kind, empty, in the test's event loop."""
    queues = load_engine(engine_config(request.param, request))
    await queues.reset()
    yield queues
    await queues.reset()
    close = getattr(queues, "close", None)
    if close is not None:
        await close()

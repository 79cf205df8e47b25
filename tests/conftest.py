"""Fixtures shared by the whole suite."""

import os

import pytest

from taskqueue_app import server, testing
from taskqueue_app.records import writer


@pytest.fixture(autouse=True)
def _reset_task_queues():
    """Every test starts with empty queues, no per-key configuration, no workers."""
    testing.reset()
    yield
    testing.reset()


@pytest.fixture
async def serving():
    """This test's loop is the server's: started as the server starts it (restore first), and
    the record writer done before the test's database is flushed."""
    await server.ensure_started()
    yield
    await writer.flush()


def require(available: bool, reason: str) -> None:
    """Skip with ``reason`` where a part is missing; under CI a missing part is a failure."""
    if available:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI must install it: see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server():
    """One throwaway redis-server for the session (a unix socket, no persistence)."""
    require(testing.RedisServer.available(), "redis-server is not installed (Debian: redis-server)")
    with testing.RedisServer() as server:
        yield server

"""Fixtures shared by the whole suite."""

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

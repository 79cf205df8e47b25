"""Fixtures shared by the whole suite."""

import pytest

from taskqueue_app.task_queue import TaskQueue


@pytest.fixture(autouse=True)
def _reset_task_queues():
    """Every test starts with an empty registry and no per-key configuration."""
    TaskQueue.reset()
    yield
    TaskQueue.reset()

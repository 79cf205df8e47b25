"""Fixtures shared by the whole suite."""

import pytest

from taskqueue_app import lifecycle
from taskqueue_app.workers import registry


@pytest.fixture(autouse=True)
def _reset_task_queues():
    """Every test starts with an empty registry, no per-key configuration, no workers."""
    lifecycle.reset()
    registry.clear()
    yield
    lifecycle.reset()
    registry.clear()

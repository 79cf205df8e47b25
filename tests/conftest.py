"""Fixtures shared by the whole suite."""

import pytest

from taskqueue_app import testing


@pytest.fixture(autouse=True)
def _reset_task_queues():
    """Every test starts with empty queues, no per-key configuration, no workers."""
    testing.reset()
    yield
    testing.reset()

"""The queue engines every contract test runs against (Django's ``SessionTestsMixin`` pattern).

A new engine joins by adding its dotted path here (and, if it needs a server, a fixture that
skips with a reason where that server is absent and fails under CI).
"""

from __future__ import annotations

import pytest

from taskqueue_app.queues import Queues, load_engine

ENGINE_PATHS = {"memory": "taskqueue_app.queues.memory.MemoryQueues"}


@pytest.fixture(params=sorted(ENGINE_PATHS))
async def engine(request) -> Queues:
    """A fresh engine of each kind, empty, in the test's event loop."""
    queues = load_engine({"BACKEND": ENGINE_PATHS[request.param]})
    await queues.reset()
    yield queues
    await queues.reset()

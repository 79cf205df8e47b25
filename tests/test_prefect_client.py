"""Prefect's own subscription client against our server: wire compatibility.

Prefect is not a dependency: ``make test-prefect`` (which CI runs) installs Prefect 3.9 and this
project's requirements into a virtualenv of their own and runs this module there. Elsewhere it
skips; with ``TASKQUEUE_REQUIRE_PREFECT=1`` (or under CI) a missing Prefect is a failure.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from project.servers import ProjectServer
from taskqueue_app.worker.http import post_run

if os.environ.get("TASKQUEUE_REQUIRE_PREFECT") == "1":
    import prefect  # noqa: F401  (required here: an ImportError fails the run)
else:
    prefect = pytest.importorskip(
        "prefect", reason="Prefect's client is not installed: run `make test-prefect`"
    )

from prefect.client.schemas.objects import StateType, TaskRun  # noqa: E402
from prefect.client.subscriptions import Subscription  # noqa: E402
from prefect.settings import (  # noqa: E402
    PREFECT_API_AUTH_STRING,
    PREFECT_API_URL,
    get_current_settings,
    temporary_settings,
)

pytestmark = pytest.mark.timeout(120)

TOKEN = "prefect-compat-token"
PATH = "/task_runs/subscriptions/scheduled"  # what Prefect's TaskWorker subscribes to
WAIT = 10


def subscription(keys: list[str]) -> Subscription[TaskRun]:
    """A subscription built the way Prefect's TaskWorker builds it: base URL from settings."""
    return Subscription(
        model=TaskRun,
        path=PATH,
        keys=keys,
        client_id=f"prefect-{uuid.uuid4().hex[:8]}",
        base_url=get_current_settings().api.url,
    )


def enqueue(server: ProjectServer, key: str, token: str | None = None, **fields) -> str:
    body = {"task_key": key, "id": str(uuid.uuid4()), **fields}
    return post_run(server.api_url, body, token, timeout=WAIT)["id"]


async def receive(sub: Subscription[TaskRun], count: int) -> list[TaskRun]:
    runs = []
    async for run in sub:
        runs.append(run)
        if len(runs) == count:
            return runs
    raise AssertionError("the subscription ended")


async def test_prefects_subscription_receives_runs_as_its_task_run():
    with ProjectServer() as server, temporary_settings({PREFECT_API_URL: server.api_url}):
        key = f"compat.{uuid.uuid4().hex[:8]}"
        ids = [
            await asyncio.to_thread(
                enqueue, server, key, parameters={"args": [i], "kwargs": {"x": i}}
            )
            for i in range(3)
        ]
        sub = subscription([key])
        runs = await asyncio.wait_for(receive(sub, 3), WAIT)
        await sub.websocket.close()

    assert all(isinstance(run, TaskRun) for run in runs)
    assert [str(run.id) for run in runs] == ids
    assert {run.task_key for run in runs} == {key}
    assert runs[0].state is not None and runs[0].state.type == StateType.SCHEDULED
    assert runs[0].state.state_details.deferred is True
    assert runs[0].empirical_policy.retries == 0


async def test_prefects_subscription_authenticates_with_its_auth_string():
    env = {"TASKQUEUE_AUTH_TOKEN": TOKEN}
    with ProjectServer(env=env) as server:
        key = f"compat.{uuid.uuid4().hex[:8]}"
        run_id = await asyncio.to_thread(enqueue, server, key, TOKEN)
        settings = {PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: TOKEN}
        with temporary_settings(settings):
            sub = subscription([key])
            (run,) = await asyncio.wait_for(receive(sub, 1), WAIT)
            await sub.websocket.close()
        assert str(run.id) == run_id

        wrong = {PREFECT_API_URL: server.api_url, PREFECT_API_AUTH_STRING: "wrong"}
        with temporary_settings(wrong), pytest.raises(Exception, match="Invalid token"):
            await asyncio.wait_for(receive(subscription([key]), 1), WAIT)

"""PostgreSQL: the records writer outlives a broken connection, and a real server restores its
runs and holds its one-server lock there.

The tests that break the writer's session for real, and the Daphne processes on a database of
their own in the session's PostgreSQL, run on the PostgreSQL leg (``make test-postgres``). A
commit whose answer was lost is simulated, so that one runs on SQLite too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError, connection, connections
from websockets.asyncio.client import connect

from project.servers import ProjectServer
from taskqueue_app import lifecycle, records
from taskqueue_app.middleware import EXIT_ENGINE_UNAVAILABLE
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.records import writer
from taskqueue_app.testing import queued
from tests.conftest import on_postgresql
from tests.worker_helpers import api, create_run, read_run

postgres_only = pytest.mark.skipif(
    not on_postgresql(), reason="on the PostgreSQL leg only: make test-postgres"
)
BROKE = "the records database connection broke"
FELL_BACK = "could not write a batch of run records"


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def terminate(pid: int) -> bool:
    """End the session ``pid`` as an operator (or a failover) would; waits until it is gone."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s, 10000)", [pid])
        return cursor.fetchone()[0]


def cut_underneath() -> None:
    """Close the writer's driver connection behind Django's back: the next transaction cannot
    even begin, and Django never replaces a connection it did not see fail."""
    connection.connection.close()


async def in_writer_thread(function):
    """Call ``function`` in the records writer's thread, on that thread's connection."""
    assert writer._executor is not None, "the writer has written nothing yet"
    return await asyncio.get_running_loop().run_in_executor(writer._executor, function)


async def start(run_id: uuid.UUID, holder: str = "c1") -> None:
    claimed = await get_queues().claim(holder, ["k"])
    assert claimed.id == run_id
    assert await lifecycle.start(holder, run_id, "w1") is not None


def writer_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "taskqueue_app.records"]


@pytest.fixture
def writer_log(caplog):
    with caplog.at_level(logging.WARNING, logger="taskqueue_app.records"):
        yield caplog


@postgres_only
@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("serving")
async def test_the_writer_replaces_a_killed_session_and_every_run_is_recorded(writer_log):
    runs = [(await lifecycle.create({"task_key": "k"}))[0] for _ in range(4)]
    for run in runs[:2]:
        await start(run.id)
    await writer.flush()
    killed = await in_writer_thread(backend_pid)
    assert await sync_to_async(terminate)(killed)

    # Mid-run: outcomes, starts and new runs, all handed to the writer after its session died.
    for run in runs[:2]:
        assert await lifecycle.complete("c1", run.id, {"of": str(run.id)}, "w1") is not None
    for run in runs[2:]:
        await start(run.id)
    created = await asyncio.gather(*(lifecycle.create({"task_key": "k"}) for _ in range(3)))
    assert [was_created for _, was_created in created] == [True] * 3
    assert await writer.durable(frozenset(run.id for run in runs)) is True

    states = {r.id: r async for r in TaskRunRecord.objects.all()}
    assert len(states) == 7  # nothing lost, nothing twice
    for run in runs[:2]:
        assert (states[run.id].state_type, states[run.id].result) == (
            "COMPLETED",
            {"of": str(run.id)},
        )
    assert [states[run.id].state_type for run in runs[2:]] == ["RUNNING", "RUNNING"]
    assert {states[run.id].state_type for run, _ in created} == {"SCHEDULED"}
    assert await queued("k") == 3  # each new run queued once
    # One batch written again on a new session; none fell back to writes one by one.
    assert sum(BROKE in m for m in writer_messages(writer_log)) == 1
    assert not any(FELL_BACK in m for m in writer_messages(writer_log))
    assert await in_writer_thread(backend_pid) != killed


@postgres_only
@pytest.mark.django_db(transaction=True)
async def test_a_connection_closed_behind_djangos_back_is_replaced(writer_log):
    """Before, every later batch failed on it ("the connection is closed") until a restart."""
    await lifecycle.create({"task_key": "k"})
    await in_writer_thread(cut_underneath)
    for _ in range(2):
        created = await asyncio.gather(*(lifecycle.create({"task_key": "k"}) for _ in range(3)))
        assert [was_created for _, was_created in created] == [True] * 3
    assert await TaskRunRecord.objects.acount() == 7
    assert sum(BROKE in m for m in writer_messages(writer_log)) == 1


@pytest.mark.django_db(transaction=True)
async def test_a_batch_whose_commit_answer_was_lost_is_neither_lost_nor_doubled(
    monkeypatch, writer_log
):
    """The connection dies after the database committed, before the answer came back: the batch
    is written again on a new connection, finds its own records and counts them as created (so
    each run is queued once), and a real duplicate still answers the run it duplicates."""
    existing, _ = await lifecycle.create({"task_key": "k", "dynamic_key": "once"})
    await start(existing.id)
    await writer.flush()
    real_commit, lost = records._commit, []

    def commit_then_lose_the_answer(creates, updates, again=False):
        results = real_commit(creates, updates, again)
        if creates and not lost:
            lost.append(len(creates))
            connections[connection.alias].close()
            raise OperationalError("server closed the connection unexpectedly")
        return results

    monkeypatch.setattr(records, "_commit", commit_then_lose_the_answer)
    assert await lifecycle.complete("c1", existing.id, "done", "w1") is not None
    answers = await asyncio.gather(
        *(lifecycle.create({"task_key": "k"}) for _ in range(4)),
        lifecycle.create({"task_key": "k", "dynamic_key": "once"}),
    )
    assert await writer.durable(frozenset({existing.id})) is True
    assert lost  # the answer of a batch with creates in it was lost
    assert [was_created for _, was_created in answers] == [True] * 4 + [False]
    assert answers[-1][0].id == existing.id
    assert await TaskRunRecord.objects.acount() == 5
    assert (await TaskRunRecord.objects.aget(pk=existing.id)).state_type == "COMPLETED"
    assert await queued("k") == 4
    assert sum(BROKE in m for m in writer_messages(writer_log)) == 1


# -- JSON that no JSON column takes --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity"])
async def test_a_result_with_nan_or_infinity_fails_the_run_instead_of_losing_its_outcome(text):
    """Python's json reads them from a foreign client's frame, and both SQLite's JSON_VALID
    check and PostgreSQL's jsonb refuse them: the run stayed RUNNING, its outcome given up."""
    run, _ = await lifecycle.create({"task_key": "k"})
    await start(run.id)
    result = json.loads(f'{{"score": {text}}}')
    failed = await lifecycle.complete("c1", run.id, result, "w1")
    assert (failed.state_type, failed.error["type"]) == ("FAILED", lifecycle.UNSTORABLE_RESULT)
    assert "NaN or Infinity" in failed.error["message"]
    assert await writer.durable(frozenset({run.id})) is True
    stored = await lifecycle.get(run.id)
    assert (stored.state_type, stored.result) == ("FAILED", None)


@pytest.mark.django_db(transaction=True)
async def test_an_error_report_with_nan_is_stored_with_it_spelled_out():
    run, _ = await lifecycle.create({"task_key": "k"})
    await start(run.id)
    error = json.loads('{"type": "builtins.ValueError", "message": "m", "values": [NaN, 1.5]}')
    await lifecycle.fail("c1", run.id, error, "w1")
    assert await writer.durable(frozenset({run.id})) is True
    stored = await lifecycle.get(run.id)
    assert stored.state_type == "FAILED"
    assert stored.error["values"] == ["nan", 1.5]


# -- a real server on PostgreSQL: restore after SIGKILL, and the advisory lock -------------------


@pytest.fixture
def site_env(postgres_server) -> dict[str, str]:
    """The environment of a server process on a new database of the session's PostgreSQL."""
    name = postgres_server.create_database(f"site_{uuid.uuid4().hex[:10]}")
    return postgres_server.environ(name)


def server_on(env: dict[str, str], migrated: bool = False) -> ProjectServer:
    server = ProjectServer(database_env=None, env=env)
    server._migrated = migrated  # noqa: SLF001 - one database, migrated once
    return server


async def read_in_order(server: ProjectServer, keys: list[str], count: int) -> list[str]:
    async with connect(server.ws_url, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "subscribe", "keys": keys, "client_id": "reader"}))
        ids = []
        for _ in range(count):
            run = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps({"type": "ack", "id": run["id"]}))
            ids.append(run["id"])
        return ids


def exit_code_of_a_second_server(env: dict[str, str]) -> tuple[int, str]:
    second = server_on(env, migrated=True)
    try:
        second.start(timeout=20)
    except RuntimeError as exc:  # it exited before it listened
        message = str(exc)
        assert "daphne exited with " in message, message
        return int(message.split("daphne exited with ")[1].split(":")[0]), second.log()
    code = second.process.wait(20)  # it listened for a moment, then refused to serve
    return code, second.log()


@postgres_only
@pytest.mark.timeout(120)
def test_a_server_on_postgresql_restores_its_runs_after_sigkill_and_serves_alone(site_env):
    with server_on(site_env) as server:
        plain = [create_run(server, "pg.a", i, dynamic_key=f"a{i}")["id"] for i in range(3)]
        urgent = create_run(server, "pg.a", "urgent", priority=5)["id"]
        other = create_run(server, "pg.b")["id"]

        code, log = exit_code_of_a_second_server(site_env)
        assert code == EXIT_ENGINE_UNAVAILABLE, log
        assert "another server process already serves the runs in database" in log, log
        assert "taskqueue_app.queues.redis.RedisQueues" in log, log
        assert server.process.poll() is None  # the first one still serves, alone

        server.kill()  # its session dies with it, and so does its advisory lock
        server.start()
        status, rows = api(server, "GET", "task_queues/")
        assert status == 200, rows
        sizes = {row["task_key"]: row["scheduled_size"] for row in rows}
        assert (sizes["pg.a"], sizes["pg.b"]) == (4, 1)
        order = asyncio.run(read_in_order(server, ["pg.a", "pg.b"], 5))
        assert order == [urgent, *plain, other]  # priority first, then oldest first
        assert {read_run(server, run_id)["state_type"] for run_id in order} == {"PENDING"}

"""One memory-engine server per database: a second one refuses to start and says why."""

from __future__ import annotations

import pytest

from project.servers import ProjectServer
from taskqueue_app.middleware import EXIT_ENGINE_UNAVAILABLE
from tests.worker_helpers import create_run, read_run

pytestmark = pytest.mark.timeout(90)


def exit_code_of_a_second_server(database) -> tuple[int, str]:
    """Start a second server on ``database``; its exit code and what it logged."""
    second = ProjectServer(database=database)
    try:
        second.start(timeout=20)
    except RuntimeError as exc:  # it exited before it listened
        message = str(exc)
        assert "daphne exited with " in message, message
        return int(message.split("daphne exited with ")[1].split(":")[0]), second.log()
    code = second.process.wait(20)  # it listened for a moment, then refused to serve
    return code, second.log()


def test_a_second_server_on_the_same_database_refuses_to_start_naming_the_redis_engine(tmp_path):
    with ProjectServer(database=tmp_path / "db.sqlite3") as first:
        run = create_run(first, "tests.lock.k")
        code, log = exit_code_of_a_second_server(first.database)
        assert code == EXIT_ENGINE_UNAVAILABLE, log
        assert "another server process (pid " in log, log
        assert "taskqueue_app.queues.redis.RedisQueues" in log, log
        # The first server still serves, alone: the run was restored by nobody else.
        assert read_run(first, run["id"])["state_type"] == "SCHEDULED"
        status = first.process.poll()
        assert status is None  # untouched by the refused one
    # Once the first has stopped, a new server serves the same database, and restores the run.
    with ProjectServer(database=tmp_path / "db.sqlite3") as again:
        assert read_run(again, run["id"])["state_type"] == "SCHEDULED"

"""Fixtures shared by the whole suite."""

import os

import pytest

from taskqueue_app import server, testing
from taskqueue_app.records import writer
from taskqueue_app.testing_postgres import PostgresServer


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


def on_postgresql() -> bool:
    """This is the PostgreSQL leg (``make test-postgres``: ``TASKQUEUE_DATABASE=postgres``)."""
    from django.conf import settings

    return settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL for the session (initdb into a temporary directory, a unix
    socket there, no TCP port)."""
    require(
        PostgresServer.available(),
        "PostgreSQL is not installed (initdb and pg_ctl; Debian: postgresql)",
    )
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, request):
    """On the PostgreSQL leg the test database is created in the session's own server."""
    if on_postgresql():
        from django.conf import settings

        database = settings.DATABASES["default"]
        database.update(request.getfixturevalue("postgres_server").settings(database["NAME"]))


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's, then: PostgreSQL drops no database that sessions still use (the records
    writer's thread, the server lock's connection), so those are ended first."""
    yield
    if on_postgresql():
        from django.db import connection

        with django_db_blocker.unblock(), connection._nodb_cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [connection.settings_dict["NAME"]],
            )

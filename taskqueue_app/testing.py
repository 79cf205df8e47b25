"""Public testing helpers: a real Daphne server in a subprocess, a free port to put it on, and a
reset of everything the app keeps in memory between tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    """Return once ``process`` listens on ``port`` of 127.0.0.1; raise if it exits or times out.

    The listener is another process, so there is no event to await: the socket is polled.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {port} in {timeout}s")


def end_process(
    process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0
) -> int | None:
    """Send ``sig`` and wait; SIGKILL if it has not exited within ``timeout``. The exit code."""
    if process is None:
        return None
    if process.poll() is not None:
        return process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


# The ASGI servers a ``DaphneServer`` can run the application under: module and its arguments.
SERVERS = {
    "daphne": lambda port: ["daphne", "-b", "127.0.0.1", "-p", str(port)],
    # uvicorn[standard]: httptools and the websockets library, the ASGI lifespan on.
    "uvicorn": lambda port: [
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "on",
        "--ws",
        "websockets",
        "--no-access-log",
    ],  # fmt: skip
}


class DaphneServer:
    """Runs ``daphne`` with a project's ASGI application in a subprocess, on a free loopback port.

    ``application`` is Daphne's ``module:attribute``; ``settings`` defaults to this process's
    ``DJANGO_SETTINGS_MODULE``. With ``database_env`` (the environment variable the settings
    read their SQLite file's path from) the server gets a database file of its own, migrated
    before start, so a test can kill it and start it again on the same records;
    ``server_url_env`` tells the settings the server's API base the same way. Use as a context
    manager, or call ``start()`` / ``stop()`` / ``kill()``.
    """

    def __init__(
        self,
        application: str,
        *,
        settings: str | None = None,
        database: str | os.PathLike | None = None,
        database_env: str | None = None,
        server_url_env: str | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
        cwd: str | os.PathLike | None = None,
        server: str = "daphne",
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"server must be one of {', '.join(SERVERS)}, not {server!r}")
        self.application = application
        self.server = server
        self.settings = settings or os.environ.get("DJANGO_SETTINGS_MODULE", "")
        self.database_env = database_env
        self.server_url_env = server_url_env
        self._tmp = None
        if database is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="taskqueue-daphne-")
            database = Path(self._tmp.name) / "db.sqlite3"
        self.database = Path(database)
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.process: subprocess.Popen | None = None
        self.log_path = self.database.with_suffix(".log")
        self._migrated = False

    @property
    def url(self) -> str:
        """The HTTP root, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The API base the app is mounted at: ``http://127.0.0.1:PORT/api``."""
        return f"{self.url}/api"

    @property
    def ws_url(self) -> str:
        """The WebSocket subscription address."""
        return f"ws://127.0.0.1:{self.port}/api/task_runs/subscriptions/scheduled"

    def environ(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"DJANGO_SETTINGS_MODULE": self.settings, "PYTHONUNBUFFERED": "1"})
        if self.database_env:
            env[self.database_env] = str(self.database)
        if self.server_url_env:
            env[self.server_url_env] = self.api_url
        env.update(self.extra_env)
        return env

    def migrate(self) -> None:
        """Create the tables in this server's database file."""
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"],
            env=self.environ(),
            cwd=self.cwd,
            check=True,
        )
        self._migrated = True

    def start(self, timeout: float = 30.0) -> DaphneServer:
        """Start the server and wait until it accepts connections."""
        if not self._migrated:
            self.migrate()
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen(
            [sys.executable, "-m", *SERVERS[self.server](self.port), self.application],
            env=self.environ(),
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_for_port(self.port, self.process, self.server, timeout)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            raise type(exc)(f"{exc}:\n{self.log()}") from None
        return self

    def log(self) -> str:
        """What the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL at once, as a crash or an OOM kill would."""
        return self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout: float) -> int | None:
        process, self.process = self.process, None
        return end_process(process, sig, timeout)

    def restart(self) -> DaphneServer:
        """Kill with SIGKILL and start again on the same port and database."""
        self.kill()
        return self.start()

    def __enter__(self) -> DaphneServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def reset() -> None:
    """Forget everything the app keeps in memory: the engine's runs, reservations, workers and
    configuration, the server loop and its hooks, pending record writes. The records stay.

    For tests, between cases; never in a running server.
    """
    from asgiref.sync import async_to_sync

    from . import actions, creating, server
    from .queues import get_queues
    from .records import writer

    actions.reset()
    creating.reset()
    server.reset()
    writer.reset()
    async_to_sync(get_queues().reset)()


# -- reading and draining the configured engine, for tests ---------------------------------------

EMPTY_ROW = {
    "scheduled_size": 0,
    "retry_size": 0,
    "held": 0,
    "running": 0,
    "backlog": 0,
    "deferred": 0,
    "workers": 0,
}


async def queue_row(task_key: str) -> dict[str, Any]:
    """The engine's snapshot row of ``task_key``; every count zero when it has none."""
    from .queues import get_queues

    for row in await get_queues().snapshot():
        if row["task_key"] == task_key:
            return row
    return {"task_key": task_key, **EMPTY_ROW}


async def queued(task_key: str) -> int:
    """Runs of ``task_key`` waiting in its lanes (scheduled and retry; not deferred or
    backlogged)."""
    row = await queue_row(task_key)
    return row["scheduled_size"] + row["retry_size"]


async def claim(task_key: str, holder: str = "test", timeout: float = 5.0) -> Any:
    """The next run of ``task_key``, waiting at most ``timeout``; held by ``holder`` after."""
    import asyncio

    from .queues import get_queues

    async with asyncio.timeout(timeout):
        return await get_queues().claim(holder, [task_key])


async def take(task_key: str, holder: str = "test", timeout: float = 5.0) -> Any:
    """The next run of ``task_key``, waiting for it; claimed and acked, so nobody holds it."""
    from .queues import get_queues

    run = await claim(task_key, holder, timeout)
    assert await get_queues().ack(holder, run.id) is not None
    return run


async def take_now(task_key: str) -> Any:
    """The next run waiting in a lane of ``task_key`` right now (retry lane first)."""
    assert await queued(task_key) > 0, f"no run of {task_key!r} is waiting in its lanes"
    return await take(task_key)


# -- a worker connection at the ASGI level, for tests of the consumer ------------------------------

SUBSCRIPTION_PATH = "/api/task_runs/subscriptions/scheduled"


async def subscriber(
    application: Any,
    keys: list[str] | tuple[str, ...],
    client_id: str = "worker-1",
    token: str | None = None,
    path: str = SUBSCRIPTION_PATH,
    timeout: float = 3.0,
    **subscribe: Any,
) -> Any:
    """A Channels ``WebsocketCommunicator`` on ``application`` that has authenticated and sent
    its ``subscribe`` (``subscribe`` adds fields: ``prefetch``, ``reports_outcomes``, ...)."""
    from channels.testing import WebsocketCommunicator

    comm = WebsocketCommunicator(application, path, subprotocols=["prefect"])
    connected, subprotocol = await comm.connect(timeout)
    assert connected, subprotocol
    await comm.send_json_to({"type": "auth", "token": token})
    assert await comm.receive_json_from(timeout) == {"type": "auth_success"}
    await comm.send_json_to(
        {"type": "subscribe", "keys": list(keys), "client_id": client_id, **subscribe}
    )
    return comm


# -- a throwaway Redis, for tests of the Redis engine ----------------------------------------------


class RedisServer:
    """Debian's ``redis-server`` on a unix socket in a temporary directory, with no persistence,
    stopped by its PID. ``location`` is the engine's ``LOCATION`` (``unix://...``).

    ``RedisServer.available()`` says whether ``redis-server`` is installed; use as a context
    manager, or call ``start()`` / ``stop()``.
    """

    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.process: subprocess.Popen | None = None
        self.socket: Path | None = None

    @staticmethod
    def available() -> bool:
        import shutil

        return shutil.which("redis-server") is not None

    @property
    def location(self) -> str:
        assert self.socket is not None, "the Redis server is not started"
        return f"unix://{self.socket}"

    def start(self, timeout: float = 20.0) -> RedisServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="taskqueue-redis-")
        self.socket = Path(self._tmp.name) / "redis.sock"
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._tmp.name,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("redis-server did not open its socket")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        end_process(process, signal.SIGTERM, 10.0)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

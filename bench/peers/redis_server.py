"""A throw-away ``redis-server`` for the Redis-backed peers (Celery, RQ): a free loopback port,
no persistence, stopped by the bench. Debian's package; when it is missing the peers are
skipped with the command that installs it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from bench.peers import venvs

INSTALL_HINT = "redis-server is not installed (`sudo apt-get install redis-server`)"


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Wait until ``process`` listens on ``port`` (it is another process: poll the socket)."""
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


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """``redis-server`` on a free port of 127.0.0.1 while the ``with`` block runs."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise venvs.PeerUnavailable(INSTALL_HINT)
        from taskqueue_app.testing import free_port

        self.executable, self.directory, self.port = executable, directory, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` address of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        """The server's process id (its CPU and memory are what the bench counts)."""
        assert self.process is not None
        return self.process.pid

    def __enter__(self) -> RedisServer:
        self.process = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process, "redis-server")
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)

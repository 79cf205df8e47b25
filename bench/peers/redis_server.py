"""A throw-away ``redis-server`` for the Redis-backed peers (Celery, RQ): a free loopback port,
no persistence, stopped by the bench. Debian's package; when it is missing the peers are
skipped with the command that installs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.peers import venvs
from taskqueue_app.testing import end_process, wait_for_port

INSTALL_HINT = "redis-server is not installed (`sudo apt-get install redis-server`)"


def stop(process: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL if it does not exit in 15 s."""
    end_process(process, timeout=15)


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
        wait_for_port(self.port, self.process, "redis-server", 60)
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)

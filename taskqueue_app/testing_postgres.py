"""A throwaway PostgreSQL for tests: ``initdb`` into a temporary directory, the server on a unix
socket in that directory (no TCP port), stopped and removed at the end. The PostgreSQL beside
``testing.RedisServer``."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer"]

# Debian's postgresql package keeps the server's programs here, off PATH.
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
# initdb and the server refuse to run as root: as root, the cluster runs as the first of these.
UNPRIVILEGED_USERS = ("postgres", "nobody")


def _shared_temp() -> str:
    """A temporary directory that another user can reach (every parent searchable by all),
    with a short path: a unix socket's path has room for about 100 bytes."""
    parent = Path(tempfile.gettempdir())
    reachable = all(path.stat().st_mode & 0o001 for path in (parent, *parent.parents))
    return str(parent) if reachable and len(str(parent)) < 40 else "/tmp"


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


class PostgresServer:
    """A PostgreSQL cluster of its own, for one test session.

    ``PostgresServer.available()`` says whether ``initdb`` and ``pg_ctl`` can be found (on PATH,
    or in Debian's ``/usr/lib/postgresql/<version>/bin``). As root the cluster is run by an
    unprivileged user (Debian's ``postgres``, else ``nobody``) through ``runuser``. The
    superuser ``user`` logs in over the socket without a password. ``settings()`` gives the
    keys of a Django ``DATABASES`` entry. Use as a context manager, or ``start()`` / ``stop()``.
    """

    port = 5432  # names the socket file only: the server listens on no TCP address
    user = "taskqueue"

    def __init__(self, **options: Any) -> None:
        # Safe for a throwaway cluster, and much faster: nothing waits for the disk.
        self.options = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            **{key: str(value) for key, value in options.items()},
        }
        self._tmp: str | None = None
        self.bin: Path | None = None
        self.run_as: str | None = None

    @staticmethod
    def binaries() -> Path | None:
        """The directory that holds ``initdb`` and ``pg_ctl``, or None."""
        found = shutil.which("initdb")
        if found and shutil.which("pg_ctl"):
            return Path(found).resolve().parent
        candidates = sorted(DEBIAN_BINARIES.glob("*/bin/initdb"), key=_version_key)
        for initdb in reversed(candidates):
            if (initdb.parent / "pg_ctl").exists():
                return initdb.parent
        return None

    @classmethod
    def available(cls) -> bool:
        return cls.binaries() is not None

    @property
    def directory(self) -> Path:
        assert self._tmp is not None, "the PostgreSQL server is not started"
        return Path(self._tmp)

    @property
    def host(self) -> str:
        """The socket's directory: libpq's (and Django's) ``HOST`` for a unix socket."""
        return str(self.directory)

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def settings(self, name: str = "postgres") -> dict[str, str]:
        """``HOST``, ``PORT``, ``USER`` and ``NAME`` of a Django ``DATABASES`` entry."""
        return {"HOST": self.host, "PORT": str(self.port), "USER": self.user, "NAME": name}

    def dsn(self, name: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={name}"

    def environ(self, name: str) -> dict[str, str]:
        """What the example project's settings read to use database ``name`` of this server
        (``project/settings.py``): for a server or a shell in another process."""
        return {
            "TASKQUEUE_DATABASE": "postgres",
            "TASKQUEUE_PG_NAME": name,
            "TASKQUEUE_PG_HOST": self.host,
            "TASKQUEUE_PG_PORT": str(self.port),
            "TASKQUEUE_PG_USER": self.user,
        }

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; returns the name."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def _command(self, *args: str) -> list[str]:
        assert self.bin is not None
        program = [str(self.bin / args[0]), *args[1:]]
        return ["runuser", "-u", self.run_as, "--", *program] if self.run_as else program

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            self._command(*args), cwd=self.directory, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} exited with {done.returncode}:\n{done.stdout}{done.stderr}{self.log()}"
            )

    def start(self, timeout: float = 60.0) -> PostgresServer:
        self.bin = self.binaries()
        if self.bin is None:
            raise RuntimeError("PostgreSQL's initdb and pg_ctl are not installed")
        if os.geteuid() == 0:
            self.run_as = self._unprivileged_user()
            self._tmp = tempfile.mkdtemp(prefix="taskqueue-postgres-", dir=_shared_temp())
            account = pwd.getpwnam(self.run_as)
            os.chown(self._tmp, account.pw_uid, account.pw_gid)
        else:
            self._tmp = tempfile.mkdtemp(prefix="taskqueue-postgres-")
        try:
            self._run(
                "initdb",
                "--pgdata",
                str(self.data),
                "--username",
                self.user,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            )
            settings = {
                "listen_addresses": "''",
                "unix_socket_directories": f"'{self.host}'",
                "port": str(self.port),
                **self.options,
            }
            server_options = " ".join(f"-c {key}={value}" for key, value in settings.items())
            self._run(
                "pg_ctl",
                "start",
                "--pgdata",
                str(self.data),
                "--log",
                str(self.log_path),
                "--wait",
                "--timeout",
                str(int(timeout)),
                "--options",
                server_options,
            )
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _unprivileged_user() -> str:
        for name in UNPRIVILEGED_USERS:
            try:
                pwd.getpwnam(name)
            except KeyError:
                continue
            return name
        raise RuntimeError(
            "initdb refuses to run as root, and there is no unprivileged user to run it as "
            f"(tried {', '.join(UNPRIVILEGED_USERS)})"
        )

    def log(self) -> str:
        """What the server logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, AssertionError):
            return ""

    def stop(self) -> None:
        """Stop the server (fast: sessions are ended) and remove the cluster."""
        if self._tmp is None:
            return
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                self._command("pg_ctl", "stop", "--pgdata", str(self.data), "--mode", "fast"),
                cwd=self.directory,
                capture_output=True,
            )
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

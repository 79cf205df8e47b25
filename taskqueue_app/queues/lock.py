"""One memory-engine server per database: a lock that dies with the process that holds it.

The memory engine keeps its queues in one process, so a second server process on the same
records would restore and deliver the same runs again. The lock is one the operating system or
the database drops by itself when its process dies (no heartbeat, no stale lock after a crash):
an exclusive ``flock`` on a file beside a SQLite database, a session advisory lock on
PostgreSQL. Other databases get a warning and no lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any

from django.db import connections

from ..errors import EngineUnavailable

logger = logging.getLogger(__name__)

__all__ = ["ServerLock"]

# pg_try_advisory_lock's key: "taskqueue" in ASCII, so that it is recognisable in pg_locks.
ADVISORY_KEY = 0x7461736B7175
ADVICE = (
    "the memory engine keeps its queues in one process: run one server process, or set "
    "TASKQUEUE['QUEUES'] to {'BACKEND': 'taskqueue_app.queues.redis.RedisQueues', ...} "
    "to serve from several"
)


class ServerLock:
    """The process's claim to serve one database's runs; acquired once, held until exit."""

    def __init__(self, alias: str = "default") -> None:
        self.alias = alias
        self._held: Any = None  # the open file or database connection that holds the lock

    @property
    def held(self) -> bool:
        return self._held is not None

    def acquire(self) -> None:
        """Take the lock, or raise ``EngineUnavailable`` naming who holds it."""
        if self._held is not None:
            return
        connection = connections[self.alias]
        vendor = connection.vendor
        if vendor == "sqlite":
            self._held = self._lock_file(connection.settings_dict["NAME"])
        elif vendor == "postgresql":
            self._held = self._lock_postgresql(connection)
        else:
            logger.warning(
                "cannot make sure that only one server serves the %s database %r: %s",
                vendor,
                self.alias,
                ADVICE,
            )

    def _lock_file(self, name: Any) -> Any:
        path = str(name)
        if path == ":memory:" or path.startswith("file:") or "mode=memory" in path:
            return True  # an in-memory database belongs to this process anyway
        lock_path = Path(path).with_name(Path(path).name + ".taskqueue-lock")
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise EngineUnavailable(
                f"another server process ({holder}) already serves the runs in {path}; {ADVICE}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        return handle

    def _lock_postgresql(self, connection: Any) -> Any:
        """The engine starts in the server's event loop, where Django refuses database I/O: the
        lock is taken in a thread of its own (a connect and one query, once per process)."""
        outcome: dict[str, Any] = {}

        def lock() -> None:
            try:
                outcome["held"] = self._lock_postgresql_now(connection)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=lock, name="taskqueue-server-lock")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["held"]

    def _lock_postgresql_now(self, connection: Any) -> Any:
        # A connection of its own, kept open: the lock lives exactly as long as it does.
        own = connection.get_new_connection(connection.get_connection_params())
        own.autocommit = True
        with own.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_KEY])
            (locked,) = cursor.fetchone()
        if not locked:
            own.close()
            name = connection.settings_dict.get("NAME")
            raise EngineUnavailable(
                f"another server process already serves the runs in database {name!r}; {ADVICE}"
            )
        return own

"""Which workers are connected, with which keys, and what each holds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import lifecycle
from .scheduler import scheduler
from .schemas import isoformat
from .task_queue import TaskQueue


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class WorkerConnection:
    """One subscribed WebSocket connection of a worker."""

    connection_id: str
    client_id: str
    task_keys: list[str]
    connected_since: datetime = field(default_factory=_now)
    last_activity: datetime = field(default_factory=_now)


class WorkerRegistry:
    """Process-wide record of subscribed connections, grouped by the worker's client id.

    A worker is listed from its first subscribed connection until its last one closes.
    """

    def __init__(self) -> None:
        self._connections: dict[str, WorkerConnection] = {}

    def connect(self, connection_id: str, client_id: str, task_keys: Iterable[str]) -> None:
        """Record a connection that has just subscribed."""
        self._connections[connection_id] = WorkerConnection(
            connection_id, client_id, list(dict.fromkeys(task_keys))
        )

    def touch(self, connection_id: str) -> None:
        """Note activity (a delivery, an ack, an outcome) on a connection."""
        connection = self._connections.get(connection_id)
        if connection is not None:
            connection.last_activity = _now()

    def disconnect(self, connection_id: str) -> None:
        """Forget a connection; its worker disappears with its last connection."""
        self._connections.pop(connection_id, None)

    def clear(self) -> None:
        """Forget every connection (a testing utility)."""
        self._connections.clear()

    def connections(self) -> list[WorkerConnection]:
        return list(self._connections.values())

    def counts_per_key(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for connection in self._connections.values():
            for key in connection.task_keys:
                counts[key] = counts.get(key, 0) + 1
        return counts

    def workers(self, task_keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One entry per client id, optionally only those serving any of ``task_keys``.

        ``identifier``, ``task_keys`` and ``timestamp`` are Prefect's fields; the rest is ours.
        """
        wanted = set(task_keys or ())
        grouped: dict[str, list[WorkerConnection]] = {}
        for connection in self._connections.values():
            grouped.setdefault(connection.client_id, []).append(connection)
        result = []
        for client_id, connections in grouped.items():
            keys = list(dict.fromkeys(k for c in connections for k in c.task_keys))
            if wanted and not wanted.intersection(keys):
                continue
            held = [run for c in connections for run in lifecycle.in_hand(c.connection_id)]
            last = max(c.last_activity for c in connections)
            result.append(
                {
                    "identifier": client_id,
                    "task_keys": keys,
                    "timestamp": isoformat(last),
                    "connections": len(connections),
                    "held": [str(run.id) for run in held],
                    "connected_since": isoformat(min(c.connected_since for c in connections)),
                    "last_activity": isoformat(last),
                }
            )
        return sorted(result, key=lambda w: w["identifier"])


registry = WorkerRegistry()


def queue_rows() -> list[dict[str, Any]]:
    """``TaskQueue.snapshot()`` with ``workers`` (connections subscribed to each key),
    ``backlog`` (accepted runs waiting for room in a full lane, after a large restore say), and
    ``held`` counting the runs workers have started too."""
    counts = registry.counts_per_key()
    backlogs = scheduler.backlog_sizes()
    running = lifecycle.running_per_key()
    rows = TaskQueue.snapshot()
    for row in rows:
        key = row["task_key"]
        row["workers"] = counts.get(key, 0)
        row["backlog"] = backlogs.get(key, 0)
        # In workers' hands: held by the queue (sent, or acked and watched) or started.
        row["held"] += running.get(key, 0)
    return rows

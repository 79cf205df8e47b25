"""The memory engine's record of subscribed worker connections."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

__all__ = ["WorkerConnection", "WorkerConnections"]


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


class WorkerConnections:
    """Subscribed connections by connection id (the ``holder`` of the runs it claims)."""

    def __init__(self) -> None:
        self._connections: dict[str, WorkerConnection] = {}

    def connect(self, connection_id: str, client_id: str, task_keys: Iterable[str]) -> None:
        self._connections[connection_id] = WorkerConnection(
            connection_id, client_id, list(dict.fromkeys(task_keys))
        )

    def touch(self, connection_id: str) -> None:
        connection = self._connections.get(connection_id)
        if connection is not None:
            connection.last_activity = _now()

    def disconnect(self, connection_id: str) -> None:
        self._connections.pop(connection_id, None)

    def clear(self) -> None:
        self._connections.clear()

    def all(self) -> list[WorkerConnection]:
        return list(self._connections.values())

    def counts_per_key(self) -> dict[str, int]:
        """Per key, how many connections subscribe to it."""
        counts: dict[str, int] = {}
        for connection in self._connections.values():
            for key in connection.task_keys:
                counts[key] = counts.get(key, 0) + 1
        return counts

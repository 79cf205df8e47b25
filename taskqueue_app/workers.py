"""Which workers are connected, with which keys and what each holds, read from the engine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .queues import Connection, get_queues
from .schemas import isoformat


async def workers(task_keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One entry per client id, optionally only those serving any of ``task_keys``.

    A worker is listed from its first subscribed connection until its last one closes.
    ``identifier``, ``task_keys`` and ``timestamp`` are Prefect's fields; the rest is ours.
    """
    wanted = set(task_keys or ())
    grouped: dict[str, list[Connection]] = {}
    for connection in await get_queues().connections():
        grouped.setdefault(connection.client_id, []).append(connection)
    result = []
    for client_id, connections in grouped.items():
        keys = list(dict.fromkeys(k for c in connections for k in c.task_keys))
        if wanted and not wanted.intersection(keys):
            continue
        last = max(c.last_activity for c in connections)
        result.append(
            {
                "identifier": client_id,
                "task_keys": keys,
                "timestamp": isoformat(last),
                "connections": len(connections),
                "held": [str(run.id) for c in connections for run in c.held],
                "connected_since": isoformat(min(c.connected_since for c in connections)),
                "last_activity": isoformat(last),
            }
        )
    return sorted(result, key=lambda w: w["identifier"])


async def queue_rows() -> list[dict[str, Any]]:
    """The engine's snapshot: per key the lane sizes and limits, whether configured, the
    workers subscribed, runs in workers' hands (``held``; ``running`` of them started), the
    ``backlog`` of accepted runs waiting for room in a full lane and the ``deferred`` ones."""
    return await get_queues().snapshot()

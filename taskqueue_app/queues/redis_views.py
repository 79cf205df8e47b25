"""What the Redis engine shows of the whole site: connected workers and per-key numbers, read
in a few pipelined round trips from any process. ``engine`` is the ``RedisQueues`` asking (not
imported here: it imports this module)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ..conf import taskqueue_settings
from ..states import StateType
from .base import Connection

__all__ = ["connections", "oldest", "snapshot", "text"]


def text(value: Any) -> str:
    """A Redis reply as ``str`` (replies are bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _when(value: Any) -> datetime:
    try:
        return datetime.fromisoformat(text(value))
    except (TypeError, ValueError):
        return datetime.now(UTC)


def _bounds(spec: Any) -> tuple[int | None, int | None]:
    if not spec:
        return None, None
    scheduled, _, retry = text(spec).partition(",")
    return (int(scheduled) if scheduled else None), (int(retry) if retry else None)


async def connections(engine: Any, client: Any) -> list[Connection]:
    """Every subscribed connection of every process, with what each holds."""
    conns = await client.hgetall(engine._key("conns"))
    activity = await client.hgetall(engine._key("act"))
    result = []
    for holder, raw in sorted(conns.items()):
        holder = text(holder)
        record = json.loads(raw)
        result.append(
            Connection(
                holder=holder,
                client_id=record["client_id"],
                task_keys=list(record["task_keys"]),
                connected_since=_when(record.get("since")),
                last_activity=_when(activity.get(holder.encode())),
                held=await engine.held(holder),
            )
        )
    return result


def _key_of(meta: Any) -> str | None:
    return text(meta).partition("|")[2] if meta else None


async def snapshot(engine: Any, client: Any) -> list[dict[str, Any]]:
    """The ``Queues.snapshot`` rows, site-wide."""
    key = engine._key
    async with client.pipeline(transaction=False) as pipe:
        pipe.smembers(key("keys"))
        pipe.hgetall(key("cfg"))
        pipe.hgetall(key("kcfg"))
        pipe.hgetall(key("holders"))
        pipe.hgetall(key("hstate"))
        pipe.zrange(key("deferred"), 0, -1)
        pipe.hgetall(key("conns"))
        known, cfg, kcfg, holders, states, deferred, conns = await pipe.execute()
    ids = list(holders) + list(deferred)
    metas = dict(zip(ids, await client.hmget(key("meta"), ids), strict=True)) if ids else {}
    held: dict[str, int] = {}
    running: dict[str, int] = {}
    for run_id in holders:
        task_key = _key_of(metas.get(run_id))
        if task_key is not None:
            held[task_key] = held.get(task_key, 0) + 1
            if text(states.get(run_id, b"")) == StateType.RUNNING:
                running[task_key] = running.get(task_key, 0) + 1
    waiting: dict[str, int] = {}
    for run_id in deferred:
        task_key = _key_of(metas.get(run_id))
        if task_key is not None:
            waiting[task_key] = waiting.get(task_key, 0) + 1
    workers: dict[str, int] = {}
    for raw in conns.values():
        for task_key in dict.fromkeys(json.loads(raw)["task_keys"]):
            workers[task_key] = workers.get(task_key, 0) + 1
    settings_keys = taskqueue_settings.KEYS if isinstance(taskqueue_settings.KEYS, dict) else {}
    cfg = {text(k): v for k, v in cfg.items()}
    kcfg = {text(k): v for k, v in kcfg.items()}
    names = sorted(
        {text(k) for k in known}
        | set(cfg)
        | set(settings_keys)
        | set(held)
        | set(waiting)
        | set(workers)
    )
    async with client.pipeline(transaction=False) as pipe:
        for name in names:
            for part in (("s", name), ("r", name), ("b", "s", name), ("b", "r", name)):
                (pipe.llen if part[0] == "b" else pipe.zcard)(key(*part))
        sizes = await pipe.execute()
    rows = []
    for index, name in enumerate(names):
        scheduled, retry, backlog_s, backlog_r = sizes[4 * index : 4 * index + 4]
        explicit, keyed = _bounds(cfg.get(name)), _bounds(kcfg.get(name))
        rows.append(
            {
                "task_key": name,
                "scheduled_size": scheduled,
                "scheduled_limit": explicit[0]
                or keyed[0]
                or taskqueue_settings.SCHEDULED_QUEUE_SIZE,
                "retry_size": retry,
                "retry_limit": explicit[1] or keyed[1] or taskqueue_settings.RETRY_QUEUE_SIZE,
                "configured": name in cfg or name in settings_keys,
                "held": held.get(name, 0),
                "running": running.get(name, 0),
                "backlog": backlog_s + backlog_r,
                "deferred": waiting.get(name, 0),
                "workers": workers.get(name, 0),
                "waiting_consumers": len(engine._events.get(name, ())),
            }
        )
    return rows


async def oldest(engine: Any, client: Any) -> dict[tuple[str, str], datetime]:
    """``Queues.oldest``, site-wide: one script walks each lane's priority levels."""
    keys = sorted(text(k) for k in await client.smembers(engine._key("keys")))
    if not keys:
        return {}
    dues = await engine._run("oldest", *keys)
    result = {}
    for index, key in enumerate(keys):
        for offset, lane in enumerate(("scheduled", "retry")):
            due = text(dues[2 * index + offset])
            if due:
                result[key, lane] = _when(due)
    return result

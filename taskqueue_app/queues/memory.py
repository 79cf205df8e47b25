"""The memory engine: every queue in this process's memory, built on ``task_queue``.

The embedded default: nothing to run beside the server, and one server process per database
(the queues live in that process). Not thread-safe, like the core: only the server's event loop
calls it; other threads hand their calls to that loop.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from ..states import StateType
from ..task_queue import MultiQueue, TaskQueue
from .base import (
    RETRY,
    SCHEDULED,
    WITHDRAWN_TTL,
    Connection,
    Held,
    QueueFull,
    Queues,
    check_lane,
)
from .connections import WorkerConnections
from .lock import ServerLock
from .scheduler import Scheduler

__all__ = ["MemoryQueues"]


def _waits(run: Any) -> Any:
    """``run``, without the JSON text it may carry: in a queue of this process's memory it
    would cost about 0.9 KB a run, and it is made again when the run is sent."""
    forget = getattr(run, "forget_json", None)
    if forget is not None:
        forget()
    return run


def _due_later(run: Any) -> bool:
    due = run.expected_start_time
    return due is not None and due > datetime.now(UTC)


# One lock per process, whatever number of engine instances (tests make many).
_server_lock: ServerLock | None = None


class MemoryQueues(Queues):
    """``Queues`` in one process: ``TaskQueue`` lanes, a scheduler for deferred and backlogged
    runs, reservations for creates in flight, and the connected workers.

    ``OPTIONS``: ``DATABASE``, the alias of the database whose runs this process serves alone
    (default ``"default"``); a second server process on it refuses to start.
    """

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self._reserved: dict[tuple[str, str], int] = {}
        self._scheduler = Scheduler()
        self._connections = WorkerConnections()
        # Runs cancelled before they arrived (a create still recording them), until when.
        self._withdrawn: dict[Any, float] = {}

    def _room(self, task_key: str, lane: str) -> int:
        queue = TaskQueue.for_key(task_key)
        room = queue.retry_room() if lane == RETRY else queue.scheduled_room()
        return room - self._reserved.get((task_key, lane), 0)

    async def start(self) -> None:
        global _server_lock
        alias = self.options.get("DATABASE", "default")
        if _server_lock is None or _server_lock.alias != alias:
            _server_lock = ServerLock(alias)
        _server_lock.acquire()

    # -- runs into lanes -------------------------------------------------------------------------

    async def enqueue(self, run: Any, lane: str = SCHEDULED) -> None:
        if _due_later(run):
            self._scheduler.schedule(_waits(run), check_lane(lane))
            return
        if self._room(run.task_key, check_lane(lane)) <= 0:
            raise QueueFull.of_lane(run.task_key, lane)
        self._scheduler.enqueue(_waits(run), lane)

    async def reserve(self, task_key: str, lane: str = SCHEDULED) -> None:
        if self._room(task_key, check_lane(lane)) <= 0:
            raise QueueFull.of_lane(task_key, lane)
        self._reserved[(task_key, lane)] = self._reserved.get((task_key, lane), 0) + 1

    async def unreserve(self, task_key: str, lane: str = SCHEDULED) -> None:
        self._unreserve(task_key, lane)

    def _unreserve(self, task_key: str, lane: str) -> None:
        count = self._reserved.get((task_key, lane), 0)
        if count > 1:
            self._reserved[(task_key, lane)] = count - 1
        else:
            self._reserved.pop((task_key, lane), None)

    async def admit(self, run: Any, lane: str = SCHEDULED, *, reserved: bool = False) -> bool:
        if reserved:
            self._unreserve(run.task_key, lane)
        if check_lane(lane) == SCHEDULED and self._withdrawn.pop(run.id, None) is not None:
            return False
        self._scheduler.schedule(_waits(run), lane)
        return True

    async def cancel(self, run_id: Any, *, keep_out: bool = False) -> Any | None:
        run = TaskQueue.remove(run_id) or self._scheduler.cancel(run_id)
        if keep_out and run is None and TaskQueue.holder_of(run_id) is None:
            moment = time.monotonic()
            self._withdrawn = {
                key: until for key, until in self._withdrawn.items() if until > moment
            }
            self._withdrawn[run_id] = moment + WITHDRAWN_TTL
        return run

    # -- delivery --------------------------------------------------------------------------------

    async def claim(self, holder: str, keys: list[str]) -> Any:
        return await MultiQueue(keys).claim(holder)

    async def hold(self, holder: str, run: Any) -> None:
        TaskQueue.hold(holder, run)

    async def ack(self, holder: str, run_id: Any) -> Any | None:
        return TaskQueue.ack(holder, run_id)

    async def swap(self, holder: str, expected: Any, new: Any | None) -> bool:
        current = TaskQueue.held_run(holder, expected.id)
        if current is None or (current is not expected and current.to_json() != expected.to_json()):
            return False
        if new is None:
            TaskQueue.ack(holder, expected.id)
        else:
            TaskQueue.hold(holder, new)
        return True

    async def release(self, holder: str) -> list[Any]:
        return TaskQueue.release(holder)

    async def held(self, holder: str) -> list[Any]:
        return TaskQueue.held(holder)

    async def find_held(self, run_id: Any) -> Held | None:
        holder = TaskQueue.holder_of(run_id)
        if holder is None:
            return None
        return Held(holder, TaskQueue.held_run(holder, run_id))

    # -- connected workers -----------------------------------------------------------------------

    async def connect(self, holder: str, client_id: str, task_keys: list[str]) -> None:
        self._connections.connect(holder, client_id, task_keys)

    async def touch(self, holder: str) -> None:
        self._connections.touch(holder)

    async def disconnect(self, holder: str) -> None:
        self._connections.disconnect(holder)

    async def connections(self) -> list[Connection]:
        return [
            Connection(
                holder=c.connection_id,
                client_id=c.client_id,
                task_keys=list(c.task_keys),
                connected_since=c.connected_since,
                last_activity=c.last_activity,
                held=TaskQueue.held(c.connection_id),
            )
            for c in self._connections.all()
        ]

    # -- the site --------------------------------------------------------------------------------

    async def configure(
        self, task_key: str, scheduled_size: int | None = None, retry_size: int | None = None
    ) -> None:
        TaskQueue.configure_task_key(task_key, scheduled_size, retry_size)

    async def snapshot(self) -> list[dict[str, Any]]:
        workers = self._connections.counts_per_key()
        backlog = self._scheduler.backlog_per_key()
        deferred = self._scheduler.deferred_per_key()
        running: dict[str, int] = {}
        for run in TaskQueue.held_runs():
            if getattr(run, "state_type", None) == StateType.RUNNING:
                running[run.task_key] = running.get(run.task_key, 0) + 1
        rows = TaskQueue.snapshot(also={*backlog, *deferred, *workers})
        for row in rows:
            key = row["task_key"]
            row["workers"] = workers.get(key, 0)
            row["running"] = running.get(key, 0)
            row["backlog"] = backlog.get(key, 0)
            row["deferred"] = deferred.get(key, 0)
        return rows

    async def oldest(self) -> dict[tuple[str, str], datetime]:
        result: dict[tuple[str, str], datetime] = {}
        for key, lane, run in TaskQueue.lane_heads():
            due = run.expected_start_time or run.created
            if (key, lane) not in result or due < result[key, lane]:
                result[key, lane] = due
        return result

    async def mark_restored(self) -> bool:
        # The seed's own flag: one restore per process, which is per site for this engine.
        if TaskQueue._scheduled_tasks_already_restored:
            return False
        TaskQueue._scheduled_tasks_already_restored = True
        return True

    async def reset(self) -> None:
        TaskQueue.reset()
        self._scheduler.reset()
        self._connections.clear()
        self._reserved.clear()
        self._withdrawn.clear()

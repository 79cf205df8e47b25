"""When an accepted run enters its lane in the memory engine: now, at its start time, or as room
frees up."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from datetime import UTC, datetime
from typing import Any

from ..task_queue import TaskQueue
from .base import RETRY

__all__ = ["Scheduler"]


def _now() -> float:
    return datetime.now(UTC).timestamp()


class Scheduler:
    """Puts accepted runs into their lanes without ever dropping one.

    A run due later waits in one heap behind a single timer (not a timer per run, not a polling
    thread). A run that finds its lane full waits in that lane's backlog, fed in FIFO order by
    one task per lane as room frees up. Lives in the server's event loop, like the queues.
    """

    def __init__(self) -> None:
        self._deferred: list[tuple[float, int, Any, str]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sequence = itertools.count()
        # Accepted runs waiting for room, per (key, lane), each fed by one task.
        self._backlogs: dict[tuple[str, str], deque[Any]] = {}
        self._feeders: dict[tuple[str, str], asyncio.Task] = {}

    def reset(self) -> None:
        """Cancel the timer and the feeders and forget every waiting run (a testing utility)."""
        if self._timer is not None:
            self._timer.cancel()
        for task in self._feeders.values():
            task.cancel()
        self.__init__()

    def schedule(self, run: Any, lane: str) -> None:
        """Into ``lane`` now, or at ``expected_start_time`` if that is in the future."""
        due = run.expected_start_time
        if due is None or due.timestamp() <= _now():
            self.enqueue(run, lane)
            return
        heapq.heappush(self._deferred, (due.timestamp(), next(self._sequence), run, lane))
        self._arm_timer()

    def enqueue(self, run: Any, lane: str) -> None:
        """Put a run into its lane now; if the lane is full, into its backlog."""
        backlog = self._backlogs.get((run.task_key, lane))
        if backlog is None:
            queue = TaskQueue.for_key(run.task_key)
            try:
                (queue.retry_nowait if lane == RETRY else queue.put_nowait)(run)
                return
            except asyncio.QueueFull:
                pass
            backlog = self._backlogs[(run.task_key, lane)] = deque()
            self._start_feeder(run.task_key, lane, backlog)
        backlog.append(run)

    def _start_feeder(self, key: str, lane: str, backlog: deque[Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._feed(key, lane, backlog))
        self._feeders[(key, lane)] = task
        task.add_done_callback(lambda done: self._forget_feeder(key, lane, done))

    def _forget_feeder(self, key: str, lane: str, task: asyncio.Task) -> None:
        if self._feeders.get((key, lane)) is task:  # not a newer feeder of the same lane
            del self._feeders[(key, lane)]

    async def _feed(self, key: str, lane: str, backlog: deque[Any]) -> None:
        queue = TaskQueue.for_key(key)
        try:
            while backlog:
                # Remove only once it is in: a cancelled feeder leaves the run in the backlog.
                await (queue.retry if lane == RETRY else queue.put)(backlog[0])
                backlog.popleft()
        finally:
            if self._backlogs.get((key, lane)) is backlog and not backlog:
                del self._backlogs[(key, lane)]

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._deferred:
            delay = max(0.0, self._deferred[0][0] - _now())
            self._timer = asyncio.get_running_loop().call_later(delay, self._release_due)

    def _release_due(self) -> None:
        self._timer = None
        moment = _now()
        while self._deferred and self._deferred[0][0] <= moment:
            _, _, run, lane = heapq.heappop(self._deferred)
            self.enqueue(run, lane)
        self._arm_timer()

    def cancel(self, run_id: Any) -> Any | None:
        """Take a deferred or backlogged run out; the run, or None."""
        for index, entry in enumerate(self._deferred):
            if entry[2].id == run_id:
                self._deferred.pop(index)
                heapq.heapify(self._deferred)
                self._arm_timer()
                return entry[2]
        for (key, lane), backlog in self._backlogs.items():
            for run in backlog:
                if run.id != run_id:
                    continue
                if run is backlog[0]:
                    # Its feeder is waiting for room to put it in: stop that feeder, then feed
                    # the rest (if any) with a new one.
                    feeder = self._feeders.pop((key, lane), None)
                    if feeder is not None:
                        feeder.cancel()
                backlog.remove(run)
                if backlog and (key, lane) not in self._feeders:
                    self._start_feeder(key, lane, backlog)
                elif not backlog:
                    del self._backlogs[(key, lane)]
                return run
        return None

    def deferred_per_key(self) -> dict[str, int]:
        """Per key, runs waiting for their start time."""
        counts: dict[str, int] = {}
        for entry in self._deferred:
            counts[entry[2].task_key] = counts.get(entry[2].task_key, 0) + 1
        return counts

    def backlog_per_key(self) -> dict[str, int]:
        """Per key, accepted runs waiting for room in a full lane (after a restore, say)."""
        sizes: dict[str, int] = {}
        for (key, _), backlog in self._backlogs.items():
            sizes[key] = sizes.get(key, 0) + len(backlog)
        return sizes

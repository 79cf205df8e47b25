"""When an accepted run enters its queue: now, at its start time, or as room frees up."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque

from .schemas import TaskRun, now
from .task_queue import TaskQueue


class Scheduler:
    """Puts accepted runs into their lanes without ever dropping one.

    A run due later waits in one heap behind a single timer (not a timer per run, not a polling
    thread). A run that finds its lane full waits in that lane's backlog, fed in FIFO order by
    one task per lane as room frees up. Lives in the server's event loop, like the queues.
    """

    def __init__(self) -> None:
        self._deferred: list[tuple[float, int, TaskRun]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sequence = itertools.count()
        # Accepted runs waiting for room, per (key, is_retry) lane, each fed by one task.
        self._backlogs: dict[tuple[str, bool], deque[TaskRun]] = {}
        self._feeders: set[asyncio.Task] = set()

    def reset(self) -> None:
        """Cancel the timer and the feeders and forget every waiting run (a testing utility)."""
        if self._timer is not None:
            self._timer.cancel()
        for task in self._feeders:
            task.cancel()
        self.__init__()

    def schedule(self, run: TaskRun) -> None:
        """Enqueue now, or at ``expected_start_time`` if that is in the future."""
        due = run.expected_start_time
        if due is None or due <= now():
            self.enqueue(run)
            return
        heapq.heappush(self._deferred, (due.timestamp(), next(self._sequence), run))
        self._arm_timer()

    def enqueue(self, run: TaskRun) -> None:
        """Put a run into its lane now; if the lane is full, into its backlog."""
        lane = (run.task_key, run.is_retry)
        backlog = self._backlogs.get(lane)
        if backlog is None:
            queue = TaskQueue.for_key(run.task_key)
            try:
                (queue.retry_nowait if run.is_retry else queue.put_nowait)(run)
                return
            except asyncio.QueueFull:
                pass
            backlog = self._backlogs[lane] = deque()
            task = asyncio.get_running_loop().create_task(self._feed(lane, backlog))
            self._feeders.add(task)
            task.add_done_callback(self._feeders.discard)
        backlog.append(run)

    async def _feed(self, lane: tuple[str, bool], backlog: deque[TaskRun]) -> None:
        key, is_retry = lane
        queue = TaskQueue.for_key(key)
        try:
            while backlog:
                # Remove only once it is in: a cancelled feeder leaves the run in the backlog.
                await (queue.retry if is_retry else queue.put)(backlog[0])
                backlog.popleft()
        finally:
            if self._backlogs.get(lane) is backlog and not backlog:
                del self._backlogs[lane]

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._deferred:
            delay = max(0.0, self._deferred[0][0] - now().timestamp())
            self._timer = asyncio.get_running_loop().call_later(delay, self._release_due)

    def _release_due(self) -> None:
        self._timer = None
        moment = now().timestamp()
        while self._deferred and self._deferred[0][0] <= moment:
            self.enqueue(heapq.heappop(self._deferred)[2])
        self._arm_timer()

    def deferred_runs(self) -> list[TaskRun]:
        """Runs waiting for their start time, soonest first."""
        return [item[2] for item in sorted(self._deferred)]

    def backlog_sizes(self) -> dict[str, int]:
        """Per key, accepted runs waiting for room in a full lane (after a restore, say)."""
        sizes: dict[str, int] = {}
        for (key, _), backlog in self._backlogs.items():
            sizes[key] = sizes.get(key, 0) + len(backlog)
        return sizes


scheduler = Scheduler()

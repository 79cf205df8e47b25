"""Prefect's in-memory task queue, rebuilt: per-key bounded queues whose waiters wake at once.

A process-wide registry holds one ``TaskQueue`` per task key. Each has a bounded *scheduled*
lane and a bounded *retry* lane that is always served first. ``MultiQueue`` serves several keys
in the order given. Unlike Prefect's seed it never polls: a waiting ``get()`` registers itself on
every queue it watches, and the next run put into any of them is handed straight to it.

Delivery is explicit: ``MultiQueue.claim(holder)`` records the run it returns as held by
``holder`` until ``TaskQueue.ack`` forgets it or ``TaskQueue.release`` puts it back, first in
line, so a run in a worker's hands never lives only in a local variable.

Pure asyncio, not thread-safe: everything here runs in the ASGI server's event loop. It reads
nothing from Django but ``conf``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

from .conf import taskqueue_settings

__all__ = ["MultiQueue", "TaskQueue", "QueuedRun"]


class QueuedRun(Protocol):
    """What the queues need of a run: its id and its key. Any object with both will do."""

    id: Any
    task_key: str


class _Lane:
    """One bounded FIFO of a key (scheduled or retry) and the producers waiting for room in it."""

    __slots__ = ("items", "putters")

    def __init__(self) -> None:
        self.items: deque[QueuedRun] = deque()
        self.putters: deque[asyncio.Future[None]] = deque()

    def wake_putter(self) -> None:
        """Let the longest-waiting producer try again; one slot freed wakes one producer."""
        while self.putters:
            putter = self.putters.popleft()
            if not putter.done():
                putter.set_result(None)
                return

    async def wait_for_room(self, is_full) -> None:
        """Sleep until ``is_full()`` is false, in FIFO order with other waiting producers."""
        loop = asyncio.get_running_loop()
        while is_full():
            putter = loop.create_future()
            self.putters.append(putter)
            try:
                await putter
            except asyncio.CancelledError:
                putter.cancel()
                try:
                    self.putters.remove(putter)
                except ValueError:
                    pass
                # We were woken for a free slot but will not use it: pass the turn on.
                if not is_full() and not putter.cancelled():
                    self.wake_putter()
                raise


class _Getter:
    """One waiting consumer: a future handed the next run put into any of its queues."""

    __slots__ = ("future", "queues")

    def __init__(self, future: asyncio.Future, queues: list[TaskQueue]) -> None:
        self.future = future
        self.queues = queues

    def unregister(self) -> None:
        for queue in self.queues:
            queue._getters.pop(self, None)


async def _get_from(queues: list[TaskQueue]) -> QueuedRun:
    """The next run of ``queues`` (in order, retry first), waiting while all are empty."""
    for queue in queues:
        run = queue._take()
        if run is not None:
            return run
    # Every queue is empty: register on all of them and sleep until one hands us a run.
    getter = _Getter(asyncio.get_running_loop().create_future(), queues)
    for queue in queues:
        queue._getters[getter] = None
    try:
        return await getter.future
    except asyncio.CancelledError:
        getter.unregister()
        if getter.future.done() and not getter.future.cancelled():
            # A run was handed over in the same tick we were cancelled: it is not lost, it goes
            # back to the front of its key's retry lane and on to the next waiter.
            run = getter.future.result()
            TaskQueue.for_key(run.task_key)._push_front([run])
        raise


class TaskQueue:
    """The scheduled and retry lanes of one task key, and the process-wide registry of them."""

    _task_queues: ClassVar[dict[str, TaskQueue]] = {}
    _queue_size_configs: ClassVar[dict[str, tuple[int | None, int | None]]] = {}
    _held: ClassVar[dict[str, dict[Any, QueuedRun]]] = {}
    _scheduled_tasks_already_restored: ClassVar[bool] = False

    task_key: str

    # -- the registry ---------------------------------------------------------------------

    @classmethod
    async def enqueue(cls, task_run: QueuedRun) -> None:
        """Put ``task_run`` into its key's scheduled lane, waiting for room."""
        await cls.for_key(task_run.task_key).put(task_run)

    @classmethod
    def configure_task_key(
        cls,
        task_key: str,
        scheduled_size: int | None = None,
        retry_size: int | None = None,
    ) -> None:
        """Set the bounds of ``task_key``'s lanes (falsy: default); applies to a live queue too."""
        sizes = (scheduled_size or None, retry_size or None)
        cls._queue_size_configs[task_key] = sizes
        queue = cls._task_queues.get(task_key)
        if queue is not None:
            queue._sizes = sizes
            queue._limits_cache = None
            queue._wake_putters()

    @classmethod
    def for_key(cls, task_key: str) -> TaskQueue:
        """The one queue of ``task_key`` in this process, created on first use."""
        queue = cls._task_queues.get(task_key)
        if queue is None:
            queue = cls._task_queues[task_key] = cls(task_key)
            queue._sizes = cls._queue_size_configs.get(task_key)
        return queue

    @classmethod
    def reset(cls) -> None:
        """A unit testing utility to reset the state of the task queues subsystem."""
        cls._task_queues.clear()
        cls._queue_size_configs.clear()
        cls._held.clear()
        cls._scheduled_tasks_already_restored = False

    # -- one queue --------------------------------------------------------------------------

    def __init__(
        self,
        task_key: str,
        scheduled_queue_size: int | None = None,
        retry_queue_size: int | None = None,
    ) -> None:
        self.task_key = task_key
        self._scheduled = _Lane()
        self._retry = _Lane()
        # Ordered set of waiting consumers; dict for O(1) removal when a getter is served elsewhere.
        self._getters: dict[_Getter, None] = {}
        explicit = (scheduled_queue_size, retry_queue_size)
        self._sizes: tuple[int | None, int | None] | None = explicit if any(explicit) else None
        self._limits_cache: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        return (
            f"<TaskQueue {self.task_key!r} scheduled={len(self._scheduled.items)}/"
            f"{self.scheduled_limit} retry={len(self._retry.items)}/{self.retry_limit}>"
        )

    def _limits(self) -> tuple[int, int]:
        # Resolved from settings at call time, cached until the settings or the config change.
        generation = taskqueue_settings.generation
        cache = self._limits_cache
        if cache is None or cache[0] != generation:
            # Each bound on its own: configured here, else in KEYS, else the default.
            explicit = self._sizes or (None, None)
            keyed = taskqueue_settings.key_sizes(self.task_key) or (None, None)
            cache = self._limits_cache = (
                generation,
                explicit[0] or keyed[0] or taskqueue_settings.SCHEDULED_QUEUE_SIZE,
                explicit[1] or keyed[1] or taskqueue_settings.RETRY_QUEUE_SIZE,
            )
        return cache[1], cache[2]

    @property
    def scheduled_limit(self) -> int:
        """How many runs the scheduled lane holds at most."""
        return self._limits()[0]

    @property
    def retry_limit(self) -> int:
        """How many runs the retry lane holds at most (``release`` may exceed it)."""
        return self._limits()[1]

    @property
    def configured(self) -> bool:
        """True when this key's bounds were set explicitly rather than taken from the defaults."""
        return self._sizes is not None or taskqueue_settings.key_sizes(self.task_key) is not None

    def scheduled_full(self) -> bool:
        return self.scheduled_room() <= 0

    def retry_full(self) -> bool:
        return self.retry_room() <= 0

    def scheduled_room(self) -> int:
        """Free slots in the scheduled lane (negative when a release overfilled it)."""
        return self.scheduled_limit - len(self._scheduled.items)

    def retry_room(self) -> int:
        """Free slots in the retry lane (negative when a release overfilled it)."""
        return self.retry_limit - len(self._retry.items)

    def qsize(self) -> int:
        """Runs waiting in both lanes."""
        return len(self._scheduled.items) + len(self._retry.items)

    def _take(self) -> QueuedRun | None:
        """The next run, retry lane first, or None; frees a slot for one waiting producer."""
        for lane in (self._retry, self._scheduled):
            if lane.items:
                run = lane.items.popleft()
                if lane.putters:
                    lane.wake_putter()
                return run
        return None

    def _hand_off(self, run: QueuedRun) -> bool:
        """Give ``run`` straight to the longest-waiting consumer, if there is one."""
        while self._getters:
            getter = next(iter(self._getters))
            getter.unregister()
            if not getter.future.done():
                getter.future.set_result(run)
                return True
        return False

    def _push_front(self, runs: list[QueuedRun]) -> None:
        """Put ``runs`` (in order) at the front of the retry lane, regardless of its bound."""
        self._retry.items.extendleft(reversed(runs))
        while self._getters and self._retry.items:
            run = self._retry.items.popleft()
            if not self._hand_off(run):
                self._retry.items.appendleft(run)
                break

    def _wake_putters(self) -> None:
        # After a resize: one waiting producer per slot that is now free.
        for lane, limit in (
            (self._scheduled, self.scheduled_limit),
            (self._retry, self.retry_limit),
        ):
            for _ in range(max(0, limit - len(lane.items))):
                if not lane.putters:
                    break
                lane.wake_putter()

    def put_nowait(self, task_run: QueuedRun) -> None:
        """Append to the scheduled lane, or raise ``asyncio.QueueFull``."""
        if self._getters and self._hand_off(task_run):
            return
        if len(self._scheduled.items) >= self.scheduled_limit:
            raise asyncio.QueueFull(f"scheduled queue of {self.task_key!r} is full")
        self._scheduled.items.append(task_run)

    def retry_nowait(self, task_run: QueuedRun) -> None:
        """Append to the retry lane, or raise ``asyncio.QueueFull``."""
        if self._getters and self._hand_off(task_run):
            return
        if len(self._retry.items) >= self.retry_limit:
            raise asyncio.QueueFull(f"retry queue of {self.task_key!r} is full")
        self._retry.items.append(task_run)

    async def put(self, task_run: QueuedRun) -> None:
        """Append to the scheduled lane, waiting for room."""
        if not self._getters:
            await self._scheduled.wait_for_room(self.scheduled_full)
        self.put_nowait(task_run)

    async def retry(self, task_run: QueuedRun) -> None:
        """Append to the retry lane, waiting for room."""
        if not self._getters:
            await self._retry.wait_for_room(self.retry_full)
        self.retry_nowait(task_run)

    async def get(self) -> QueuedRun:
        """The next run of this key, retry lane first, waiting until there is one."""
        return await _get_from([self])

    def get_nowait(self) -> QueuedRun:
        """The next run of this key, retry lane first, or raise ``asyncio.QueueEmpty``."""
        run = self._take()
        if run is None:
            raise asyncio.QueueEmpty
        return run

    # -- delivery bookkeeping ------------------------------------------------------------------

    @classmethod
    def ack(cls, holder: str, run_id: Any) -> QueuedRun | None:
        """Forget that ``holder`` holds ``run_id``; the run, or None if it held no such run."""
        held = cls._held.get(holder)
        if not held:
            return None
        run = held.pop(run_id, None)
        if not held:
            del cls._held[holder]
        return run

    @classmethod
    def release(cls, holder: str) -> list[QueuedRun]:
        """Put every run ``holder`` still holds back at the front of its key's retry lane."""
        runs = list(cls._held.pop(holder, {}).values())
        by_key: dict[str, list[QueuedRun]] = {}
        for run in runs:
            by_key.setdefault(run.task_key, []).append(run)
        for key, key_runs in by_key.items():
            cls.for_key(key)._push_front(key_runs)
        return runs

    @classmethod
    def held(cls, holder: str) -> list[QueuedRun]:
        """The runs ``holder`` holds, oldest claim first."""
        return list(cls._held.get(holder, {}).values())

    @classmethod
    def held_run(cls, holder: str, run_id: Any) -> QueuedRun | None:
        """The run ``holder`` holds under ``run_id``, or None."""
        return cls._held.get(holder, {}).get(run_id)

    @classmethod
    def holder_of(cls, run_id: Any) -> str | None:
        """The holder that holds ``run_id`` now, or None (a scan: for the rare, stale case)."""
        for holder, runs in cls._held.items():
            if run_id in runs:
                return holder
        return None

    @classmethod
    def hold(cls, holder: str, run: QueuedRun) -> None:
        """Record ``run`` as held by ``holder``; a run of the same id is replaced in place."""
        cls._held.setdefault(holder, {})[run.id] = run

    # -- dashboards ------------------------------------------------------------------------------

    @classmethod
    def snapshot(cls) -> list[dict[str, Any]]:
        """Per key, sorted: lane sizes, their limits, whether configured, runs held, waiters."""
        held_per_key: dict[str, int] = {}
        for runs in cls._held.values():
            for run in runs.values():
                held_per_key[run.task_key] = held_per_key.get(run.task_key, 0) + 1
        configured_keys = set(cls._queue_size_configs)
        if isinstance(taskqueue_settings.KEYS, dict):
            configured_keys.update(taskqueue_settings.KEYS)
        rows = []
        for key in sorted(set(cls._task_queues) | configured_keys | set(held_per_key)):
            # Peek without creating: a dashboard read must not grow the registry.
            queue = cls._task_queues.get(key) or cls._detached(key)
            rows.append(
                {
                    "task_key": key,
                    "scheduled_size": len(queue._scheduled.items),
                    "scheduled_limit": queue.scheduled_limit,
                    "retry_size": len(queue._retry.items),
                    "retry_limit": queue.retry_limit,
                    "configured": queue.configured,
                    "held": held_per_key.get(key, 0),
                    "waiting_consumers": len(queue._getters),
                }
            )
        return rows

    @classmethod
    def _detached(cls, key: str) -> TaskQueue:
        queue = cls(key)
        queue._sizes = cls._queue_size_configs.get(key)
        return queue


class MultiQueue:
    """A queue that can pull tasks from any of a number of task queues, without polling."""

    _queues: list[TaskQueue]

    def __init__(self, task_keys: Iterable[str]) -> None:
        keys = list(dict.fromkeys(task_keys))  # keep the given order, drop repeats
        self._queues = [TaskQueue.for_key(task_key) for task_key in keys]

    async def get(self) -> QueuedRun:
        """The next run from any of the keys: keys in order, retry before scheduled in each."""
        return await _get_from(self._queues)

    def get_nowait(self) -> QueuedRun:
        """Like ``get()`` without waiting; raises ``asyncio.QueueEmpty``."""
        for queue in self._queues:
            run = queue._take()
            if run is not None:
                return run
        raise asyncio.QueueEmpty

    async def claim(self, holder: str) -> QueuedRun:
        """Like ``get()``, and record the run as held by ``holder`` until acked or released."""
        run = await _get_from(self._queues)
        # No await between the hand-over and this line: the run is never unrecorded.
        TaskQueue.hold(holder, run)
        return run

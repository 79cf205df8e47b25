"""Prefect's in-memory task queue, rebuilt: per-key bounded queues whose waiters wake at once.

A process-wide registry holds one ``TaskQueue`` per task key. Each has a bounded *scheduled*
lane and a bounded *retry* lane that is always served first. ``MultiQueue`` serves several keys
in the order given. Unlike Prefect's seed it never polls: a waiting ``get()`` registers itself on
every queue it watches, and the next run put into any of them is handed straight to it.

Within a lane a run's ``priority`` (an int, default 0) orders it: higher first, FIFO among
equals, so runs of one priority keep the seed's order exactly.

Delivery is explicit: ``MultiQueue.claim(holder)`` records the run as held by ``holder`` in the
same step that hands it over, until ``TaskQueue.ack`` forgets it or ``TaskQueue.release`` puts
it back, first in line, so a run in a worker's hands never lives only in a future.

Pure asyncio, not thread-safe: everything runs in the server's event loop. It imports nothing
of the app but ``conf`` and ``lanes`` (its building block); the memory engine is built on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

from .conf import taskqueue_settings
from .lanes import Lane, QueuedRun, Waiter

__all__ = ["MultiQueue", "TaskQueue", "QueuedRun"]


def _take_first(queues: list[TaskQueue]) -> QueuedRun | None:
    for queue in queues:
        run = queue._take()
        if run is not None:
            return run
    return None


async def _get_from(queues: list[TaskQueue], holder: str | None = None) -> QueuedRun:
    """The next run of ``queues`` (in order, retry first), waiting while all are empty; with
    ``holder``, recorded as held by it in the step that takes it."""
    run = _take_first(queues)
    if run is not None:
        if holder is not None:
            TaskQueue.hold(holder, run)
        return run
    # Every queue is empty: register on all of them and sleep until one hands us a run.
    on_hand = None if holder is None else (lambda run: TaskQueue.hold(holder, run))
    getter = Waiter(asyncio.get_running_loop().create_future(), queues, on_hand)
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
            if holder is not None:
                TaskQueue.ack(holder, run.id)
            TaskQueue.for_key(run.task_key)._push_front([run])
        raise


class TaskQueue:
    """The scheduled and retry lanes of one task key, and the process-wide registry of them."""

    _task_queues: ClassVar[dict[str, TaskQueue]] = {}
    _queue_size_configs: ClassVar[dict[str, tuple[int | None, int | None]]] = {}
    _held: ClassVar[dict[str, dict[Any, QueuedRun]]] = {}
    _holders: ClassVar[dict[Any, str]] = {}  # run id -> its holder: no scan to find one
    _scheduled_tasks_already_restored: ClassVar[bool] = False

    task_key: str

    # -- the registry ---------------------------------------------------------------------

    @classmethod
    async def enqueue(cls, task_run: QueuedRun) -> None:
        """Put ``task_run`` into its key's scheduled lane, waiting for room."""
        await cls.for_key(task_run.task_key).put(task_run)

    @classmethod
    def configure_task_key(
        cls, task_key: str, scheduled_size: int | None = None, retry_size: int | None = None
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
        cls._holders.clear()
        cls._scheduled_tasks_already_restored = False

    # -- one queue --------------------------------------------------------------------------

    def __init__(
        self,
        task_key: str,
        scheduled_queue_size: int | None = None,
        retry_queue_size: int | None = None,
    ) -> None:
        self.task_key = task_key
        self._scheduled = Lane()
        self._retry = Lane()
        # Ordered set of waiting consumers; dict for O(1) removal when a getter is served elsewhere.
        self._getters: dict[Waiter, None] = {}
        explicit = (scheduled_queue_size, retry_queue_size)
        self._sizes: tuple[int | None, int | None] | None = explicit if any(explicit) else None
        self._limits_cache: tuple[int, int, int] | None = None

    def __repr__(self) -> str:
        sizes = f"{len(self._scheduled)}/{self.scheduled_limit} retry={len(self._retry)}"
        return f"<TaskQueue {self.task_key!r} scheduled={sizes}/{self.retry_limit}>"

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

    def scheduled_room(self) -> int:
        """Free slots in the scheduled lane (negative when a release overfilled it)."""
        return self.scheduled_limit - len(self._scheduled)

    def retry_room(self) -> int:
        """Free slots in the retry lane (negative when a release overfilled it)."""
        return self.retry_limit - len(self._retry)

    def qsize(self) -> int:
        """Runs waiting in both lanes."""
        return len(self._scheduled) + len(self._retry)

    def _take(self) -> QueuedRun | None:
        """The next run, retry lane first, or None; frees a slot for one waiting producer."""
        for lane in (self._retry, self._scheduled):
            if lane.size:
                run = lane.popleft()
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
                getter.hand(run)
                return True
        return False

    def _push_front(self, runs: list[QueuedRun]) -> None:
        """Put ``runs`` (in order) at the front of the retry lane, regardless of its bound."""
        for run in reversed(runs):
            self._retry.appendleft(run)
        while self._getters and self._retry.size:
            run = self._retry.popleft()
            if not self._hand_off(run):
                self._retry.appendleft(run)
                break

    def _wake_putters(self) -> None:
        # After a resize: one waiting producer per slot that is now free.
        for lane, limit in (
            (self._scheduled, self.scheduled_limit),
            (self._retry, self.retry_limit),
        ):
            for _ in range(max(0, limit - len(lane))):
                if not lane.putters:
                    break
                lane.wake_putter()

    def put_nowait(self, task_run: QueuedRun) -> None:
        """Append to the scheduled lane, or raise ``asyncio.QueueFull``."""
        if self._getters and self._hand_off(task_run):
            return
        if self._scheduled.size >= self.scheduled_limit:
            raise asyncio.QueueFull(f"scheduled queue of {self.task_key!r} is full")
        self._scheduled.append(task_run)

    def retry_nowait(self, task_run: QueuedRun) -> None:
        """Append to the retry lane, or raise ``asyncio.QueueFull``."""
        if self._getters and self._hand_off(task_run):
            return
        if self._retry.size >= self.retry_limit:
            raise asyncio.QueueFull(f"retry queue of {self.task_key!r} is full")
        self._retry.append(task_run)

    async def put(self, task_run: QueuedRun) -> None:
        """Append to the scheduled lane, waiting for room."""
        if not self._getters:
            await self._scheduled.wait_for_room(lambda: self.scheduled_room() <= 0)
        self.put_nowait(task_run)

    async def retry(self, task_run: QueuedRun) -> None:
        """Append to the retry lane, waiting for room."""
        if not self._getters:
            await self._retry.wait_for_room(lambda: self.retry_room() <= 0)
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
        if run is not None:
            del cls._holders[run_id]
        if not held:
            del cls._held[holder]
        return run

    @classmethod
    def release(cls, holder: str) -> list[QueuedRun]:
        """Put every run ``holder`` still holds back at the front of its key's retry lane."""
        runs = list(cls._held.pop(holder, {}).values())
        for run in runs:
            del cls._holders[run.id]
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
        """The holder that holds ``run_id`` now, or None."""
        return cls._holders.get(run_id)

    @classmethod
    def hold(cls, holder: str, run: QueuedRun) -> None:
        """Record ``run`` as held by ``holder``; a run of the same id is replaced in place.

        A run is held by one holder at a time: holding it moves it from any other.
        """
        previous = cls._holders.get(run.id)
        if previous is not None and previous != holder:
            cls.ack(previous, run.id)
        cls._held.setdefault(holder, {})[run.id] = run
        cls._holders[run.id] = holder

    @classmethod
    def held_runs(cls) -> list[QueuedRun]:
        """Every run any holder holds (for dashboards)."""
        return [run for runs in cls._held.values() for run in runs.values()]

    @classmethod
    def remove(cls, run_id: Any) -> QueuedRun | None:
        """Take a waiting run out of whichever lane holds it (a cancel); None if none does."""
        for queue in cls._task_queues.values():
            for lane in (queue._retry, queue._scheduled):
                run = lane.remove(run_id)
                if run is not None:
                    return run
        return None

    # -- dashboards ------------------------------------------------------------------------------

    @classmethod
    def lane_heads(cls) -> Iterator[tuple[str, str, QueuedRun]]:
        """(key, ``"scheduled"`` or ``"retry"``, run) for the first run of each priority."""
        for key, queue in cls._task_queues.items():
            for name, lane in (("scheduled", queue._scheduled), ("retry", queue._retry)):
                for run in lane.heads():
                    yield key, name, run

    @classmethod
    def snapshot(cls, also: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Per key (those in use, configured, held, and ``also``), sorted: lane sizes, their
        limits, whether configured, runs held, waiting consumers."""
        held_per_key: dict[str, int] = {}
        for run in cls.held_runs():
            held_per_key[run.task_key] = held_per_key.get(run.task_key, 0) + 1
        configured_keys = set(cls._queue_size_configs)
        if isinstance(taskqueue_settings.KEYS, dict):
            configured_keys.update(taskqueue_settings.KEYS)
        rows = []
        for key in sorted({*cls._task_queues, *configured_keys, *held_per_key, *also}):
            # Peek without creating: a dashboard read must not grow the registry.
            queue = cls._task_queues.get(key)
            if queue is None:
                queue = cls(key)
                queue._sizes = cls._queue_size_configs.get(key)
            rows.append(
                {
                    "task_key": key,
                    "scheduled_size": len(queue._scheduled),
                    "scheduled_limit": queue.scheduled_limit,
                    "retry_size": len(queue._retry),
                    "retry_limit": queue.retry_limit,
                    "configured": queue.configured,
                    "held": held_per_key.get(key, 0),
                    "waiting_consumers": len(queue._getters),
                }
            )
        return rows


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
        run = _take_first(self._queues)
        if run is None:
            raise asyncio.QueueEmpty
        return run

    async def claim(self, holder: str) -> QueuedRun:
        """Like ``get()``, and record the run as held by ``holder`` until acked or released;
        the record is made in the hand-over itself, before this coroutine resumes."""
        return await _get_from(self._queues, holder)

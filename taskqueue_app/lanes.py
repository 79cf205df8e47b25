"""The building block of the queue core: one bounded lane, FIFO per priority, highest first.

Pure asyncio and the standard library, nothing else; ``task_queue`` builds its queues from it.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

__all__ = ["Lane", "QueuedRun", "Waiter"]


class QueuedRun(Protocol):
    """What the queues need of a run: its id and its key. Any object with both will do."""

    id: Any
    task_key: str


class Lane:
    """One bounded lane of a key (scheduled or retry): FIFO per priority, highest priority
    first, and the producers waiting for room in it.

    Priority 0 (the default) has a FIFO of its own that always exists, so a lane whose runs
    all have the default priority costs what one deque costs.
    """

    __slots__ = ("default", "fifos", "levels", "size", "putters")

    def __init__(self) -> None:
        self.default: deque[QueuedRun] = deque()
        self.fifos: dict[int, deque[QueuedRun]] = {0: self.default}
        # Negated priorities with a FIFO, sorted, so the highest priority comes first; 0 stays.
        self.levels: list[int] = [0]
        self.size = 0
        self.putters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[QueuedRun]:
        for level in self.levels:
            yield from self.fifos[-level]

    def heads(self) -> Iterator[QueuedRun]:
        """The first run of each priority: the oldest waiting run is one of them."""
        return (fifo[0] for fifo in self.fifos.values() if fifo)

    def _fifo(self, priority: int) -> deque[QueuedRun]:
        fifo = self.fifos.get(priority)
        if fifo is None:
            fifo = self.fifos[priority] = deque()
            bisect.insort(self.levels, -priority)
        return fifo

    def append(self, run: QueuedRun) -> None:
        priority = getattr(run, "priority", 0)
        (self._fifo(priority) if priority else self.default).append(run)
        self.size += 1

    def appendleft(self, run: QueuedRun) -> None:
        """First among the runs of its priority (behind any of a higher one)."""
        priority = getattr(run, "priority", 0)
        (self._fifo(priority) if priority else self.default).appendleft(run)
        self.size += 1

    def popleft(self) -> QueuedRun:
        """The first run of the highest priority; the lane must not be empty."""
        self.size -= 1
        if len(self.levels) == 1:
            return self.default.popleft()
        for level in self.levels:
            fifo = self.fifos[-level]
            if fifo:
                run = fifo.popleft()
                if level and not fifo:
                    self._drop_level(level)
                return run
        raise IndexError("pop from an empty lane")

    def _drop_level(self, level: int) -> None:
        del self.fifos[-level]
        self.levels.remove(level)

    def remove(self, run_id: Any) -> QueuedRun | None:
        """Take out the run of ``run_id``, wherever it waits; None if it is not here."""
        for priority, fifo in self.fifos.items():
            for run in fifo:
                if run.id == run_id:
                    fifo.remove(run)
                    self.size -= 1
                    if priority and not fifo:
                        self._drop_level(-priority)
                    if self.putters:
                        self.wake_putter()
                    return run
        return None

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


class Waiter:
    """One waiting consumer: a future handed the next run put into any of its queues.

    ``on_hand`` runs in the hand-over itself, before the waiter resumes: a claim records the
    run as held there, so that it is never only in the future.
    """

    __slots__ = ("future", "queues", "on_hand")

    def __init__(
        self,
        future: asyncio.Future,
        queues: list[Any],
        on_hand: Callable[[QueuedRun], None] | None = None,
    ) -> None:
        self.future = future
        self.queues = queues  # each with a ``_getters`` dict this waiter is registered in
        self.on_hand = on_hand

    def hand(self, run: QueuedRun) -> None:
        if self.on_hand is not None:
            self.on_hand(run)
        self.future.set_result(run)

    def unregister(self) -> None:
        for queue in self.queues:
            queue._getters.pop(self, None)

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


def _priority(run: QueuedRun) -> int:
    return getattr(run, "priority", 0) or 0


class Lane:
    """One bounded lane of a key (scheduled or retry): FIFO per priority, highest priority
    first, and the producers waiting for room in it."""

    __slots__ = ("fifos", "levels", "size", "putters")

    def __init__(self) -> None:
        self.fifos: dict[int, deque[QueuedRun]] = {}
        self.levels: list[int] = []  # negated priorities that have runs, so [0] is the highest
        self.size = 0
        self.putters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[QueuedRun]:
        for level in self.levels:
            yield from self.fifos[-level]

    def _fifo(self, priority: int) -> deque[QueuedRun]:
        fifo = self.fifos.get(priority)
        if fifo is None:
            fifo = self.fifos[priority] = deque()
            bisect.insort(self.levels, -priority)
        return fifo

    def append(self, run: QueuedRun) -> None:
        self._fifo(_priority(run)).append(run)
        self.size += 1

    def appendleft(self, run: QueuedRun) -> None:
        """First among the runs of its priority (behind any of a higher one)."""
        self._fifo(_priority(run)).appendleft(run)
        self.size += 1

    def popleft(self) -> QueuedRun:
        priority = -self.levels[0]
        fifo = self.fifos[priority]
        run = fifo.popleft()
        self.size -= 1
        if not fifo:
            del self.fifos[priority]
            self.levels.pop(0)
        return run

    def remove(self, run_id: Any) -> QueuedRun | None:
        """Take out the run of ``run_id``, wherever it waits; None if it is not here."""
        for priority, fifo in self.fifos.items():
            for run in fifo:
                if run.id == run_id:
                    fifo.remove(run)
                    self.size -= 1
                    if not fifo:
                        del self.fifos[priority]
                        self.levels.remove(-priority)
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

"""Random interleavings of the queue core's calls: every accepted run comes out exactly once.

Each seed drives puts, retries, waiting gets and claims on overlapping keys, cancellations (some
in the very tick a run is handed over), acks and releases, yielding to the loop between steps.
Whatever the order, a run the queues accepted ends up in exactly one place: taken by a get,
acked by its holder, or still queued once everything is released and drained.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from dataclasses import dataclass, field

import pytest

from taskqueue_app.task_queue import MultiQueue, TaskQueue

KEYS = ["a", "b", "c"]
_ids = itertools.count()


@dataclass(frozen=True)
class Run:
    task_key: str
    id: int = field(default_factory=lambda: next(_ids))


@pytest.mark.parametrize("seed", range(25))
async def test_no_run_is_lost_or_duplicated(seed):
    rng = random.Random(seed)
    for key in KEYS:
        TaskQueue.configure_task_key(key, scheduled_size=4, retry_size=2)
    accepted: list[int] = []
    taken: list[int] = []  # by plain get() calls that returned
    acked: list[int] = []
    gets: list[asyncio.Task] = []
    claims: list[asyncio.Task] = []
    holders = [f"h{i}" for i in range(4)]

    def keys() -> list[str]:
        return rng.sample(KEYS, rng.randint(1, len(KEYS)))

    for _ in range(300):
        action = rng.random()
        if action < 0.25:
            run = Run(rng.choice(KEYS))
            queue = TaskQueue.for_key(run.task_key)
            try:
                (queue.put_nowait if rng.random() < 0.7 else queue.retry_nowait)(run)
                accepted.append(run.id)
            except asyncio.QueueFull:
                pass
        elif action < 0.4:
            gets.append(asyncio.create_task(MultiQueue(keys()).get()))
        elif action < 0.55:
            holder = rng.choice(holders)
            claims.append(asyncio.create_task(MultiQueue(keys()).claim(holder)))
        elif action < 0.65:
            pending = [t for t in gets + claims if not t.done()]
            if pending:
                rng.choice(pending).cancel()
        elif action < 0.78:
            holder = rng.choice(holders)
            held = TaskQueue.held(holder)
            if held:
                run = rng.choice(held)
                assert TaskQueue.ack(holder, run.id) is run
                acked.append(run.id)
        elif action < 0.85:
            TaskQueue.release(rng.choice(holders))
        # Let woken waiters run, sometimes not at all (a cancel may then hit a handed-over run).
        for _ in range(rng.randint(0, 2)):
            await asyncio.sleep(0)

    for task in gets + claims:
        task.cancel()
    await asyncio.gather(*gets, *claims, return_exceptions=True)
    taken.extend(t.result().id for t in gets if not t.cancelled() and t.exception() is None)
    for holder in holders:
        TaskQueue.release(holder)
    drained = []
    multi = MultiQueue(KEYS)
    while True:
        try:
            drained.append(multi.get_nowait().id)
        except asyncio.QueueEmpty:
            break

    assert sorted(taken + acked + drained) == sorted(accepted)
    assert all(not TaskQueue.for_key(key)._getters for key in KEYS)

"""Random interleavings through the engine interface: every accepted run comes out exactly once.

Each seed drives enqueues into both lanes, waiting claims on overlapping keys, cancellations of
claims (some in the very tick a run is handed over), acks, releases and cancels of queued runs,
yielding to the loop between steps. Whatever the order, a run an engine accepted ends in exactly
one place: acked by its holder, cancelled out of its queue, or still queued once every holder
has released and the queues are drained. Runs on every engine.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from taskqueue_app.queues import RETRY, SCHEDULED, QueueFull
from taskqueue_app.schemas import TaskRun
from tests.engines import engine  # noqa: F401

KEYS = ["a", "b", "c"]


@pytest.mark.parametrize("seed", range(25))
async def test_no_run_is_lost_or_duplicated(engine, seed):  # noqa: F811
    rng = random.Random(seed)
    for key in KEYS:
        await engine.configure(key, scheduled_size=4, retry_size=2)
    accepted: list[uuid.UUID] = []
    acked: list[uuid.UUID] = []
    cancelled: list[uuid.UUID] = []
    claims: list[asyncio.Task] = []
    holders = [f"h{i}" for i in range(4)]

    for _ in range(300):
        action = rng.random()
        if action < 0.3:
            key = rng.choice(KEYS)
            run = TaskRun(task_key=key, dynamic_key=uuid.uuid4().hex, name=key)
            run.priority = rng.choice((0, 0, 0, 1, -1))
            try:
                await engine.enqueue(run, SCHEDULED if rng.random() < 0.7 else RETRY)
                accepted.append(run.id)
            except QueueFull:
                continue
            pending = [task for task in claims if not task.done()]
            if pending and rng.random() < 0.3:
                # In the very tick of the enqueue: the run may have just been handed to it.
                rng.choice(pending).cancel()
        elif action < 0.5:
            keys = rng.sample(KEYS, rng.randint(1, len(KEYS)))
            claims.append(asyncio.ensure_future(engine.claim(rng.choice(holders), keys)))
        elif action < 0.6:
            pending = [task for task in claims if not task.done()]
            if pending:
                rng.choice(pending).cancel()
        elif action < 0.75:
            holder = rng.choice(holders)
            held = await engine.held(holder)
            if held:
                run = rng.choice(held)
                # Still held when acked, unless a cancelled claim gave it back meanwhile (an
                # engine across the network lets other tasks run between the two calls).
                taken = await engine.ack(holder, run.id)
                if taken is not None:
                    assert taken.id == run.id
                    acked.append(run.id)
        elif action < 0.82:
            await engine.release(rng.choice(holders))
        elif action < 0.88 and accepted:
            taken = await engine.cancel(rng.choice(accepted))
            if taken is not None:
                cancelled.append(taken.id)
        # Let woken claims run, sometimes not at all (a cancel may then hit a handed-over run).
        for _ in range(rng.randint(0, 2)):
            await asyncio.sleep(0)

    for task in claims:
        task.cancel()
    await asyncio.gather(*claims, return_exceptions=True)
    for holder in holders:
        await engine.release(holder)
    rows = await engine.snapshot()
    left = sum(r["scheduled_size"] + r["retry_size"] + r["backlog"] for r in rows)
    drained = []
    for _ in range(left):
        run = await asyncio.wait_for(engine.claim("drain", KEYS), 5)
        await engine.ack("drain", run.id)
        drained.append(run.id)
    assert all(
        r["scheduled_size"] + r["retry_size"] + r["held"] == 0 for r in await engine.snapshot()
    )

    out = acked + cancelled + drained
    assert len(out) == len(set(out)), "a run came out twice"
    assert sorted(out) == sorted(accepted), "a run was lost"

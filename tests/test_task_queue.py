"""The queue core: DESIGN §2, Prefect's registry without polling, with explicit delivery."""

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest
from django.test import override_settings

from taskqueue_app.task_queue import MultiQueue, TaskQueue

_ids = itertools.count(1)


@dataclass(frozen=True)
class Run:
    task_key: str
    id: int = field(default_factory=lambda: next(_ids))
    priority: int = 0


def timers(loop: asyncio.AbstractEventLoop) -> int:
    """How many timed callbacks the loop has pending (a polling waiter always has one)."""
    return len(loop._scheduled)  # noqa: SLF001 - the one way to see a poll


async def until_waiting(*keys: str) -> None:
    """Yield to the loop until some consumer is registered on every key (no timed sleep)."""
    for _ in range(100):
        waiting = {row["task_key"]: row["waiting_consumers"] for row in TaskQueue.snapshot()}
        if all(waiting.get(k) for k in keys):
            return
        await asyncio.sleep(0)
    raise AssertionError(f"no waiter registered on {keys}")


# -- the registry -------------------------------------------------------------------------


def test_for_key_returns_one_queue_per_key():
    assert TaskQueue.for_key("a") is TaskQueue.for_key("a")
    assert TaskQueue.for_key("a") is not TaskQueue.for_key("b")
    assert TaskQueue.for_key("a").task_key == "a"


def test_reset_empties_registry_and_configuration():
    TaskQueue.configure_task_key("a", scheduled_size=3)
    first = TaskQueue.for_key("a")
    first.put_nowait(Run("a"))
    TaskQueue.reset()
    again = TaskQueue.for_key("a")
    assert again is not first
    assert again.qsize() == 0
    assert again.scheduled_limit == 1000
    assert not again.configured


async def test_enqueue_puts_into_the_runs_key():
    run = Run("emails.send")
    await TaskQueue.enqueue(run)
    assert TaskQueue.for_key("emails.send").get_nowait() is run


# -- sizes ----------------------------------------------------------------------------------


def test_default_sizes():
    queue = TaskQueue.for_key("k")
    assert (queue.scheduled_limit, queue.retry_limit) == (1000, 100)
    assert not queue.configured


def test_sizes_come_from_settings_at_call_time():
    queue = TaskQueue.for_key("k")
    with override_settings(TASKQUEUE={"SCHEDULED_QUEUE_SIZE": 5, "RETRY_QUEUE_SIZE": 2}):
        assert (queue.scheduled_limit, queue.retry_limit) == (5, 2)
        assert not queue.configured
    assert (queue.scheduled_limit, queue.retry_limit) == (1000, 100)


def test_keys_setting_configures_a_key():
    with override_settings(
        TASKQUEUE={"KEYS": {"emails.send": {"scheduled_size": 50, "retry_size": 10}}}
    ):
        queue = TaskQueue.for_key("emails.send")
        assert (queue.scheduled_limit, queue.retry_limit) == (50, 10)
        assert queue.configured
        assert not TaskQueue.for_key("other").configured


def test_configure_task_key_sets_each_bound_over_keys_and_defaults():
    keys = {"KEYS": {"k": {"scheduled_size": 50, "retry_size": 10}}}
    with override_settings(TASKQUEUE=keys):
        TaskQueue.configure_task_key("k", scheduled_size=5)
        queue = TaskQueue.for_key("k")
        # The bound not given here still comes from KEYS, not from the global default.
        assert (queue.scheduled_limit, queue.retry_limit) == (5, 10)


def test_configure_task_key_before_first_use():
    TaskQueue.configure_task_key("k", scheduled_size=3, retry_size=2)
    queue = TaskQueue.for_key("k")
    assert (queue.scheduled_limit, queue.retry_limit) == (3, 2)
    assert queue.configured


def test_configure_task_key_falsy_size_means_default():
    TaskQueue.configure_task_key("k", scheduled_size=0, retry_size=None)
    queue = TaskQueue.for_key("k")
    assert (queue.scheduled_limit, queue.retry_limit) == (1000, 100)
    assert queue.configured


def test_configure_task_key_resizes_existing_queue_keeping_runs():
    queue = TaskQueue.for_key("k")
    runs = [Run("k") for _ in range(5)]
    for run in runs:
        queue.put_nowait(run)
    TaskQueue.configure_task_key("k", scheduled_size=3)
    assert TaskQueue.for_key("k") is queue
    assert queue.scheduled_limit == 3
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(Run("k"))
    assert [queue.get_nowait() for _ in range(5)] == runs


def test_put_nowait_raises_queue_full_at_exactly_the_configured_size():
    TaskQueue.configure_task_key("k", scheduled_size=3, retry_size=2)
    queue = TaskQueue.for_key("k")
    for _ in range(3):
        queue.put_nowait(Run("k"))
    with pytest.raises(asyncio.QueueFull):
        queue.put_nowait(Run("k"))
    for _ in range(2):
        queue.retry_nowait(Run("k"))
    with pytest.raises(asyncio.QueueFull):
        queue.retry_nowait(Run("k"))
    assert queue.qsize() == 5


# -- order ----------------------------------------------------------------------------------


def test_get_nowait_raises_queue_empty():
    with pytest.raises(asyncio.QueueEmpty):
        TaskQueue.for_key("k").get_nowait()
    with pytest.raises(asyncio.QueueEmpty):
        MultiQueue(["a", "b"]).get_nowait()


async def test_retry_is_served_before_scheduled():
    queue = TaskQueue.for_key("k")
    scheduled, retried = Run("k"), Run("k")
    await queue.put(scheduled)
    await queue.retry(retried)
    assert await queue.get() is retried
    assert await queue.get() is scheduled


async def test_fifo_within_a_lane():
    queue = TaskQueue.for_key("k")
    runs = [Run("k") for _ in range(10)]
    for run in runs:
        queue.put_nowait(run)
    assert [await queue.get() for _ in runs] == runs


async def test_multiqueue_serves_keys_in_the_order_given_retry_first():
    a1, a2, b1, b_retry = Run("a"), Run("a"), Run("b"), Run("b")
    for run in (b1, a1, a2):
        await TaskQueue.enqueue(run)
    await TaskQueue.for_key("b").retry(b_retry)
    multi = MultiQueue(["a", "b"])
    assert [await multi.get() for _ in range(4)] == [a1, a2, b_retry, b1]


async def test_multiqueue_only_serves_its_keys():
    await TaskQueue.enqueue(Run("other"))
    with pytest.raises(asyncio.QueueEmpty):
        MultiQueue(["a"]).get_nowait()
    assert TaskQueue.for_key("other").qsize() == 1


# -- waiting without polling ------------------------------------------------------------------


async def test_waiter_is_woken_by_a_put_without_polling():
    loop = asyncio.get_running_loop()
    idle_timers = timers(loop)
    waiter = asyncio.create_task(MultiQueue(["a", "b", "c"]).get())
    await until_waiting("a", "b", "c")
    # A polling waiter would keep a timer armed; ours only holds a future.
    assert timers(loop) == idle_timers
    run = Run("c")
    TaskQueue.for_key("c").put_nowait(run)
    await asyncio.sleep(0)  # one turn of the loop, not a timed wait
    assert waiter.done()
    assert waiter.result() is run
    assert TaskQueue.for_key("c").qsize() == 0


async def test_single_key_get_waits_for_a_retry_too():
    waiter = asyncio.create_task(TaskQueue.for_key("k").get())
    await until_waiting("k")
    run = Run("k")
    await TaskQueue.for_key("k").retry(run)
    assert await asyncio.wait_for(waiter, 1) is run


async def test_two_waiters_never_share_a_run():
    waiters = [asyncio.create_task(MultiQueue(keys).get()) for keys in (["a", "b"], ["b", "a"])]
    await until_waiting("a", "b")
    runs = [Run("a"), Run("b")]
    TaskQueue.for_key("a").put_nowait(runs[0])
    TaskQueue.for_key("b").put_nowait(runs[1])
    got = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert sorted(r.id for r in got) == sorted(r.id for r in runs)
    assert TaskQueue.for_key("a").qsize() == TaskQueue.for_key("b").qsize() == 0


async def test_many_waiters_overlapping_keys_each_run_once():
    keys = ["a", "b", "c"]
    waiters = [
        asyncio.create_task(MultiQueue(keys[i % 3 :] + keys[: i % 3]).get()) for i in range(30)
    ]
    await until_waiting(*keys)
    runs = [Run(keys[i % 3]) for i in range(30)]
    for run in runs:
        await TaskQueue.enqueue(run)
    got = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert sorted(r.id for r in got) == sorted(r.id for r in runs)


async def test_waiters_are_served_first_come_first_served():
    first = asyncio.create_task(TaskQueue.for_key("k").get())
    await until_waiting("k")
    second = asyncio.create_task(TaskQueue.for_key("k").get())
    await asyncio.sleep(0)
    run1, run2 = Run("k"), Run("k")
    TaskQueue.for_key("k").put_nowait(run1)
    TaskQueue.for_key("k").put_nowait(run2)
    assert await asyncio.wait_for(first, 1) is run1
    assert await asyncio.wait_for(second, 1) is run2


async def test_cancelled_get_loses_nothing():
    waiter = asyncio.create_task(MultiQueue(["k"]).get())
    await until_waiting("k")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    run = Run("k")
    TaskQueue.for_key("k").put_nowait(run)
    assert TaskQueue.for_key("k").get_nowait() is run
    assert [row["waiting_consumers"] for row in TaskQueue.snapshot()] == [0]


async def test_get_cancelled_after_the_hand_over_puts_the_run_back_first():
    waiter = asyncio.create_task(MultiQueue(["k"]).get())
    await until_waiting("k")
    later, handed = Run("k"), Run("k")
    TaskQueue.for_key("k").put_nowait(handed)  # handed to the waiter ...
    waiter.cancel()  # ... which is cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await waiter
    TaskQueue.for_key("k").put_nowait(later)
    assert TaskQueue.for_key("k").get_nowait() is handed
    assert TaskQueue.for_key("k").get_nowait() is later


async def test_cancelled_waiters_hand_over_goes_to_the_next_waiter():
    cancelled = asyncio.create_task(TaskQueue.for_key("k").get())
    await until_waiting("k")
    other = asyncio.create_task(TaskQueue.for_key("k").get())
    await asyncio.sleep(0)
    run = Run("k")
    TaskQueue.for_key("k").put_nowait(run)
    cancelled.cancel()
    assert await asyncio.wait_for(other, 1) is run


async def test_put_waits_for_room_and_is_woken_by_a_get():
    TaskQueue.configure_task_key("k", scheduled_size=1)
    queue = TaskQueue.for_key("k")
    first, second = Run("k"), Run("k")
    await queue.put(first)
    putter = asyncio.create_task(queue.put(second))
    await asyncio.sleep(0)
    assert not putter.done()
    assert await queue.get() is first
    await asyncio.wait_for(putter, 1)
    assert queue.get_nowait() is second


async def test_retry_waits_for_room_and_a_resize_frees_it():
    TaskQueue.configure_task_key("k", retry_size=1)
    queue = TaskQueue.for_key("k")
    await queue.retry(Run("k"))
    putter = asyncio.create_task(queue.retry(Run("k")))
    await asyncio.sleep(0)
    assert not putter.done()
    TaskQueue.configure_task_key("k", retry_size=2)
    await asyncio.wait_for(putter, 1)
    assert queue.qsize() == 2


async def test_cancelled_put_stores_nothing():
    TaskQueue.configure_task_key("k", scheduled_size=1)
    queue = TaskQueue.for_key("k")
    await queue.put(Run("k"))
    putter = asyncio.create_task(queue.put(Run("k")))
    await asyncio.sleep(0)
    putter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await putter
    assert queue.qsize() == 1
    # The cancelled producer left no turn behind: the next free slot goes to a new one at once.
    assert queue.get_nowait() is not None
    await asyncio.wait_for(queue.put(Run("k")), 1)
    assert queue.qsize() == 1


# -- explicit delivery: claim, ack, release ---------------------------------------------------


async def test_claim_records_the_holder_until_ack():
    run = Run("k")
    await TaskQueue.enqueue(run)
    assert await MultiQueue(["k"]).claim("conn-1") is run
    assert TaskQueue.held("conn-1") == [run]
    assert TaskQueue.ack("conn-1", run.id) is run
    assert TaskQueue.held("conn-1") == []
    assert TaskQueue.ack("conn-1", run.id) is None


async def test_claim_waiting_records_the_run_as_soon_as_it_is_handed_over():
    claimer = asyncio.create_task(MultiQueue(["k"]).claim("conn-1"))
    await until_waiting("k")
    run = Run("k")
    TaskQueue.for_key("k").put_nowait(run)
    assert await asyncio.wait_for(claimer, 1) is run
    assert TaskQueue.held("conn-1") == [run]


async def test_release_puts_held_runs_back_first_in_line_in_claim_order():
    TaskQueue.configure_task_key("k", retry_size=1)
    held = [Run("k"), Run("k")]
    for run in held:
        await TaskQueue.enqueue(run)
    multi = MultiQueue(["k"])
    for _ in held:
        await multi.claim("conn-1")
    waiting_retry, waiting_scheduled = Run("k"), Run("k")
    await TaskQueue.for_key("k").retry(waiting_retry)
    await TaskQueue.enqueue(waiting_scheduled)
    # Releasing may exceed the retry bound (1): an accepted run is never dropped.
    assert TaskQueue.release("conn-1") == held
    assert TaskQueue.held("conn-1") == []
    order = [multi.get_nowait() for _ in range(4)]
    assert order == [*held, waiting_retry, waiting_scheduled]


async def test_release_wakes_a_waiting_consumer():
    await TaskQueue.enqueue(run := Run("k"))
    await MultiQueue(["k"]).claim("dead")
    waiter = asyncio.create_task(MultiQueue(["k"]).claim("alive"))
    await until_waiting("k")
    TaskQueue.release("dead")
    assert await asyncio.wait_for(waiter, 1) is run
    assert TaskQueue.held("alive") == [run]


def test_release_of_unknown_holder_is_a_no_op():
    assert TaskQueue.release("nobody") == []


# -- snapshot ---------------------------------------------------------------------------------


async def test_snapshot_reports_sizes_limits_config_and_held():
    TaskQueue.configure_task_key("configured.only", scheduled_size=7)
    await TaskQueue.enqueue(Run("a"))
    await TaskQueue.enqueue(Run("a"))
    await TaskQueue.for_key("a").retry(Run("a"))
    await MultiQueue(["a"]).claim("conn")
    rows = {row["task_key"]: row for row in TaskQueue.snapshot()}
    assert rows["a"] == {
        "task_key": "a",
        "scheduled_size": 2,
        "scheduled_limit": 1000,
        "retry_size": 0,
        "retry_limit": 100,
        "configured": False,
        "held": 1,
        "waiting_consumers": 0,
    }
    assert rows["configured.only"]["scheduled_limit"] == 7
    assert rows["configured.only"]["configured"] is True
    # Reading the snapshot does not create queues (the registry is the core's own to inspect).
    assert "configured.only" not in TaskQueue._task_queues


# -- priority, atomic claims, removal ------------------------------------------------------------


def test_priority_orders_a_lane_higher_first_fifo_among_equals():
    queue = TaskQueue.for_key("k")
    runs = [Run("k", priority=p) for p in (0, 3, 0, -1, 3, 10)]
    for run in runs:
        queue.put_nowait(run)
    got = [queue.get_nowait() for _ in runs]
    assert got == sorted(runs, key=lambda run: -run.priority)


def test_a_run_without_a_priority_attribute_counts_as_zero():
    @dataclass(frozen=True)
    class Bare:
        task_key: str
        id: int

    queue = TaskQueue.for_key("k")
    bare, urgent = Bare("k", 1), Run("k", priority=1)
    queue.put_nowait(bare)
    queue.put_nowait(urgent)
    assert [queue.get_nowait(), queue.get_nowait()] == [urgent, bare]


async def test_a_released_run_goes_first_among_its_priority_behind_higher_ones():
    queue = TaskQueue.for_key("k")
    held = Run("k")
    queue.put_nowait(held)
    assert await MultiQueue(["k"]).claim("c1") is held
    urgent, plain = Run("k", priority=5), Run("k")
    queue.retry_nowait(urgent)
    queue.retry_nowait(plain)
    TaskQueue.release("c1")
    assert [queue.get_nowait() for _ in range(3)] == [urgent, held, plain]


async def test_a_waiting_claim_is_recorded_before_the_claimer_resumes():
    claim = asyncio.ensure_future(MultiQueue(["k"]).claim("c1"))
    await until_waiting("k")
    run = Run("k")
    TaskQueue.for_key("k").put_nowait(run)
    assert not claim.done()
    assert TaskQueue.held("c1") == [run]
    assert TaskQueue.holder_of(run.id) == "c1"
    assert await claim is run


async def test_holding_a_run_moves_it_from_its_previous_holder():
    run = Run("k")
    TaskQueue.hold("c1", run)
    TaskQueue.hold("c2", run)
    assert TaskQueue.held("c1") == []
    assert TaskQueue.holder_of(run.id) == "c2"
    assert TaskQueue.release("c2") == [run]
    assert TaskQueue.holder_of(run.id) is None


def test_remove_takes_a_waiting_run_out_and_frees_its_slot():
    TaskQueue.configure_task_key("k", scheduled_size=1)
    queue = TaskQueue.for_key("k")
    run = Run("k")
    queue.put_nowait(run)
    assert TaskQueue.remove(run.id) is run
    assert TaskQueue.remove(run.id) is None
    queue.put_nowait(Run("k"))  # the slot is free again
    assert queue.qsize() == 1

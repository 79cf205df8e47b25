"""The engine contract: every queue engine passes these, through the ``Queues`` interface alone."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import timedelta

import pytest

from taskqueue_app.queues import RETRY, SCHEDULED, QueueFull
from taskqueue_app.schemas import TaskRun, now
from taskqueue_app.states import StateType
from tests.engines import engine  # noqa: F401  (the fixture, one per engine)

WAIT = 5  # seconds an awaited event may take on a loaded machine before the test fails


def make_run(key: str = "k", priority: int = 0, due_in: float | None = None) -> TaskRun:
    run = TaskRun(task_key=key, dynamic_key=f"{key}-{uuid.uuid4().hex}", name=key)
    run.priority = priority
    if due_in is not None:
        run.expected_start_time = now() + timedelta(seconds=due_in)
    return run


async def claim(engine, keys, holder: str = "h") -> TaskRun:  # noqa: F811
    return await asyncio.wait_for(engine.claim(holder, list(keys)), WAIT)


async def drain(engine, keys, holder: str = "drain") -> list[TaskRun]:  # noqa: F811
    """Every run waiting in ``keys`` now, in delivery order (each acked at once); then none."""
    rows = {r["task_key"]: r for r in await engine.snapshot()}
    waiting = sum(
        rows[k]["scheduled_size"] + rows[k]["retry_size"] + rows[k]["backlog"]
        for k in keys
        if k in rows
    )
    runs = []
    for _ in range(waiting):
        run = await claim(engine, keys, holder)
        await engine.ack(holder, run.id)
        runs.append(run)
    rows = {r["task_key"]: r for r in await engine.snapshot()}
    assert all(rows[k]["scheduled_size"] + rows[k]["retry_size"] == 0 for k in keys if k in rows)
    return runs


async def row(engine, key: str) -> dict:  # noqa: F811
    (found,) = [r for r in await engine.snapshot() if r["task_key"] == key]
    return found


# -- bounds ---------------------------------------------------------------------------------------


async def test_enqueue_refuses_at_exactly_the_bound_of_each_lane(engine):  # noqa: F811
    await engine.configure("k", scheduled_size=2, retry_size=1)
    for _ in range(2):
        await engine.enqueue(make_run(), SCHEDULED)
    with pytest.raises(QueueFull, match="scheduled"):
        await engine.enqueue(make_run(), SCHEDULED)
    await engine.enqueue(make_run(), RETRY)
    with pytest.raises(QueueFull, match="retry"):
        await engine.enqueue(make_run(), RETRY)
    current = await row(engine, "k")
    assert (current["scheduled_size"], current["retry_size"]) == (2, 1)
    assert (current["scheduled_limit"], current["retry_limit"]) == (2, 1)
    assert current["configured"]


async def test_a_refused_run_is_not_stored(engine):  # noqa: F811
    await engine.configure("k", scheduled_size=1)
    kept = make_run()
    await engine.enqueue(kept)
    refused = make_run()
    with pytest.raises(QueueFull):
        await engine.enqueue(refused)
    assert [run.id for run in await drain(engine, ["k"])] == [kept.id]
    assert await engine.cancel(refused.id) is None


async def test_a_reservation_holds_a_slot_until_admitted_or_given_back(engine):  # noqa: F811
    await engine.configure("k", scheduled_size=1)
    await engine.reserve("k")
    with pytest.raises(QueueFull):
        await engine.enqueue(make_run())
    with pytest.raises(QueueFull):
        await engine.reserve("k")
    await engine.unreserve("k")
    await engine.reserve("k")
    run = make_run()
    await engine.admit(run, SCHEDULED, reserved=True)
    assert (await row(engine, "k"))["scheduled_size"] == 1
    with pytest.raises(QueueFull):
        await engine.reserve("k")
    assert (await claim(engine, ["k"])).id == run.id


async def test_configure_resizes_a_key_in_use_keeping_its_runs(engine):  # noqa: F811
    runs = [make_run() for _ in range(3)]
    for run in runs:
        await engine.enqueue(run)
    await engine.configure("k", scheduled_size=2)
    with pytest.raises(QueueFull):
        await engine.enqueue(make_run())
    assert [r.id for r in await drain(engine, ["k"])] == [r.id for r in runs]


async def test_admit_never_refuses_and_feeds_the_backlog_in_order(engine):  # noqa: F811
    await engine.configure("k", scheduled_size=2)
    runs = [make_run() for _ in range(5)]
    for run in runs:
        await engine.admit(run, SCHEDULED)
    current = await row(engine, "k")
    assert (current["scheduled_size"], current["backlog"]) == (2, 3)
    with pytest.raises(QueueFull):
        await engine.enqueue(make_run())  # the accepted runs come first
    got = [await claim(engine, ["k"], holder=f"h{i}") for i in range(5)]
    assert [run.id for run in got] == [run.id for run in runs]
    assert (await row(engine, "k"))["backlog"] == 0


# -- order ---------------------------------------------------------------------------------------


async def test_retry_before_scheduled_and_fifo_within_a_lane(engine):  # noqa: F811
    scheduled = [make_run() for _ in range(3)]
    retried = [make_run() for _ in range(2)]
    for run in scheduled:
        await engine.enqueue(run, SCHEDULED)
    for run in retried:
        await engine.enqueue(run, RETRY)
    assert [r.id for r in await drain(engine, ["k"])] == [r.id for r in retried + scheduled]


async def test_keys_in_the_order_given_each_retry_first(engine):  # noqa: F811
    a_scheduled, a_retry, b_scheduled, b_retry = (make_run(k) for k in "aabb")
    for run, lane in (
        (b_scheduled, SCHEDULED),
        (a_scheduled, SCHEDULED),
        (b_retry, RETRY),
        (a_retry, RETRY),
    ):
        await engine.enqueue(run, lane)
    order = [r.id for r in await drain(engine, ["b", "a"])]
    assert order == [b_retry.id, b_scheduled.id, a_retry.id, a_scheduled.id]


async def test_higher_priority_first_fifo_among_equals(engine):  # noqa: F811
    runs = [make_run(priority=p) for p in (0, 5, -3, 5, 0, 100, -100)]
    for run in runs:
        await engine.enqueue(run)
    got = await drain(engine, ["k"])
    expected = sorted(runs, key=lambda r: -r.priority)  # sorted() is stable: FIFO among equals
    assert [r.id for r in got] == [r.id for r in expected]


async def test_priority_orders_within_a_lane_never_across_lanes_or_keys(engine):  # noqa: F811
    urgent = make_run("a", priority=50)
    retry = make_run("a", priority=-50)
    first_key = make_run("b", priority=-100)
    await engine.enqueue(urgent, SCHEDULED)
    await engine.enqueue(retry, RETRY)
    await engine.enqueue(first_key, SCHEDULED)
    order = [r.id for r in await drain(engine, ["b", "a"])]
    assert order == [first_key.id, retry.id, urgent.id]


async def test_a_claim_serves_only_its_keys(engine):  # noqa: F811
    await engine.enqueue(make_run("other"))
    waiting = asyncio.ensure_future(engine.claim("h", ["k"]))
    done, _ = await asyncio.wait({waiting}, timeout=0.1)
    assert not done
    mine = make_run("k")
    await engine.enqueue(mine)
    assert (await asyncio.wait_for(waiting, WAIT)).id == mine.id
    assert (await row(engine, "other"))["scheduled_size"] == 1


# -- waiting and handing over --------------------------------------------------------------------


async def test_a_waiting_claim_wakes_when_a_run_arrives(engine):  # noqa: F811
    waiting = asyncio.ensure_future(engine.claim("h", ["a", "b"]))
    await asyncio.sleep(0)  # let it register as a waiter
    assert not waiting.done()
    run = make_run("b")
    await engine.enqueue(run)
    assert (await asyncio.wait_for(waiting, WAIT)).id == run.id
    assert [r.id for r in await engine.held("h")] == [run.id]


async def test_claim_records_the_holder_in_the_hand_over(engine):  # noqa: F811
    waiting = asyncio.ensure_future(engine.claim("h", ["k"]))
    await asyncio.sleep(0)
    run = make_run()
    await engine.enqueue(run)
    # Until the claim returns, the run is in its lane or already in the claimer's hands: never
    # in between (the lane is read first, so a move between the two reads is seen as held).
    while not waiting.done():
        in_lane = (await row(engine, "k"))["scheduled_size"]
        found = await engine.find_held(run.id)
        assert in_lane == 1 or (found is not None and found.holder == "h")
        await asyncio.sleep(0)
    assert (await waiting).id == run.id
    assert (await engine.find_held(run.id)).holder == "h"


async def test_two_claimers_never_share_a_run(engine):  # noqa: F811
    claims = [asyncio.ensure_future(engine.claim(f"h{i}", ["k"])) for i in range(4)]
    await asyncio.sleep(0)
    runs = [make_run() for _ in range(4)]
    for run in runs:
        await engine.enqueue(run)
    got = await asyncio.wait_for(asyncio.gather(*claims), WAIT)
    assert sorted(r.id for r in got) == sorted(r.id for r in runs)


async def test_claim_cancelled_in_the_tick_of_the_hand_over_puts_the_run_back_first(
    engine,  # noqa: F811
):
    waiting = asyncio.ensure_future(engine.claim("h", ["k"]))
    await asyncio.sleep(0)
    handed = make_run()
    await engine.enqueue(handed)  # on its way to the waiter, which has not resumed
    later = make_run()
    await engine.enqueue(later)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    if waiting.cancelled():
        # The cancelled claim took nothing for good: its run is first in line again.
        assert await engine.held("h") == []
        assert [r.id for r in await drain(engine, ["k"])] == [handed.id, later.id]
    else:
        # The claim had already returned (an engine across the network): it holds its run.
        assert waiting.result().id == handed.id
        assert [r.id for r in await engine.held("h")] == [handed.id]
        assert [r.id for r in await drain(engine, ["k"])] == [later.id]


async def test_a_claim_cancelled_as_a_wake_up_arrives_ends(engine):  # noqa: F811
    """A cancel in the tick a claim is woken is not swallowed (``wait_for`` did so on 3.11).

    Another holder may take the run the wake-up was for; the woken claim then waits again, and
    a cancel it had swallowed would leave it waiting forever. The cancel lands a different
    number of ticks after the enqueue in each trial, so some trial hits the tick of the wake-up.
    """
    for trial in range(60):
        first = asyncio.ensure_future(engine.claim("first", ["k"]))
        await asyncio.sleep(0)
        run = make_run()
        await engine.enqueue(run)
        second = asyncio.ensure_future(engine.claim("second", ["k"]))
        for _ in range(trial % 15):
            await asyncio.sleep(0)
        first.cancel()
        done, _ = await asyncio.wait({first}, timeout=WAIT)
        assert first in done, f"trial {trial}: a cancelled claim went on waiting"
        if not first.cancelled():
            await engine.ack("first", first.result().id)
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        if not second.cancelled():
            await engine.ack("second", second.result().id)
        taken = [c.result().id for c in (first, second) if not c.cancelled()]
        assert taken + [r.id for r in await drain(engine, ["k"])] == [run.id], f"trial {trial}"


# -- holding, acking, releasing ------------------------------------------------------------------


async def test_ack_forgets_the_run(engine):  # noqa: F811
    run = make_run()
    await engine.enqueue(run)
    await claim(engine, ["k"])
    assert (await engine.ack("h", run.id)).id == run.id
    assert await engine.held("h") == []
    assert await engine.find_held(run.id) is None
    assert await engine.ack("h", run.id) is None
    assert await engine.ack("nobody", uuid.uuid4()) is None


async def test_release_puts_held_runs_first_in_line_in_claim_order_past_the_bound(
    engine,  # noqa: F811
):
    await engine.configure("k", retry_size=1)
    held = [make_run() for _ in range(3)]
    for run in held:
        await engine.enqueue(run)
    for _ in held:
        await claim(engine, ["k"])
    waiting_retry = make_run()
    await engine.enqueue(waiting_retry, RETRY)
    released = await engine.release("h")
    assert [r.id for r in released] == [r.id for r in held]
    assert await engine.held("h") == []
    assert (await row(engine, "k"))["retry_size"] == 4  # past its bound of 1: nothing dropped
    order = [r.id for r in await drain(engine, ["k"])]
    assert order == [*(r.id for r in held), waiting_retry.id]
    assert await engine.release("nobody") == []


async def test_release_wakes_a_waiting_claim(engine):  # noqa: F811
    run = make_run()
    await engine.enqueue(run)
    await claim(engine, ["k"], holder="dead")
    waiting = asyncio.ensure_future(engine.claim("alive", ["k"]))
    await asyncio.sleep(0)
    await engine.release("dead")
    assert (await asyncio.wait_for(waiting, WAIT)).id == run.id
    assert [r.id for r in await engine.held("alive")] == [run.id]


async def test_hold_replaces_a_copy_in_place_and_moves_a_run_between_holders(
    engine,  # noqa: F811
):
    first, second = make_run(), make_run()
    await engine.enqueue(first)
    await engine.enqueue(second)
    await claim(engine, ["k"])
    await claim(engine, ["k"])
    pending = first.with_state(StateType.PENDING, "Pending")
    await engine.hold("h", pending)
    held = await engine.held("h")
    assert [r.id for r in held] == [first.id, second.id]  # still in claim order
    assert held[0].state_type == StateType.PENDING
    await engine.hold("other", second)
    assert [r.id for r in await engine.held("h")] == [first.id]
    assert (await engine.find_held(second.id)).holder == "other"


async def test_swap_replaces_or_forgets_only_the_copy_the_holder_still_holds(
    engine,  # noqa: F811
):
    first, second = make_run(), make_run()
    await engine.enqueue(first)
    await engine.enqueue(second)
    sent = await claim(engine, ["k"])
    pending = sent.with_state(StateType.PENDING, "Pending")
    assert await engine.swap("h", sent, pending)
    assert (await engine.find_held(first.id)).run.state_type == StateType.PENDING
    # The copy it was given is no longer the one held: nothing changes.
    running = sent.with_state(StateType.RUNNING, "Running")
    assert not await engine.swap("h", sent, running)
    assert not await engine.swap("other", pending, running)  # not the holder
    assert (await engine.find_held(first.id)).run.state_type == StateType.PENDING
    assert await engine.swap("h", pending, running)
    assert [r.state_type for r in await engine.held("h")] == [StateType.RUNNING]
    # Forgetting the hold, as ack does: the run is nowhere, and the lanes are untouched.
    assert await engine.swap("h", running, None)
    assert await engine.find_held(first.id) is None
    assert await engine.held("h") == []
    assert not await engine.swap("h", running, None)
    assert [r.id for r in await drain(engine, ["k"])] == [second.id]


async def test_swap_after_another_holder_took_the_run_changes_nothing(engine):  # noqa: F811
    run = make_run()
    await engine.enqueue(run)
    sent = await claim(engine, ["k"], holder="first")
    await engine.release("first")
    again = await claim(engine, ["k"], holder="second")
    assert not await engine.swap("first", sent, sent.with_state(StateType.PENDING, "Pending"))
    found = await engine.find_held(run.id)
    assert (found.holder, found.run.state_type) == ("second", StateType.SCHEDULED)
    assert await engine.swap("second", again, None)


async def test_snapshot_counts_held_and_running_runs(engine):  # noqa: F811
    runs = [make_run() for _ in range(3)]
    for run in runs:
        await engine.enqueue(run)
    await claim(engine, ["k"])
    started = await claim(engine, ["k"])
    await engine.hold("h", started.with_state(StateType.RUNNING, "Running"))
    current = await row(engine, "k")
    assert (current["scheduled_size"], current["held"], current["running"]) == (1, 2, 1)


# -- deferred runs and cancel --------------------------------------------------------------------


async def test_a_deferred_run_waits_for_its_time(engine):  # noqa: F811
    later = make_run(due_in=0.3)
    await engine.enqueue(later)
    current = await row(engine, "k")
    assert (current["scheduled_size"], current["deferred"]) == (0, 1)
    waiting = asyncio.ensure_future(engine.claim("h", ["k"]))
    done, _ = await asyncio.wait({waiting}, timeout=0.05)
    assert not done  # not before its time
    assert (await asyncio.wait_for(waiting, WAIT)).id == later.id
    assert (await row(engine, "k"))["deferred"] == 0


async def test_deferred_runs_do_not_take_slots_until_due(engine):  # noqa: F811
    await engine.configure("k", scheduled_size=1)
    await engine.enqueue(make_run(due_in=3600))
    await engine.enqueue(make_run())  # the slot is still free
    with pytest.raises(QueueFull):
        await engine.enqueue(make_run())


async def test_a_run_cancelled_before_it_arrives_is_kept_out_of_the_scheduled_lane(
    engine,  # noqa: F811
):
    await engine.configure("k", scheduled_size=1)
    early, later, other = make_run(), make_run(due_in=60), make_run()
    for run in (early, later):
        assert await engine.cancel(run.id, keep_out=True) is None  # a create is recording it
    await engine.reserve("k")
    assert await engine.admit(early, reserved=True) is False
    assert await engine.admit(later) is False  # deferred, kept out all the same
    current = await row(engine, "k")
    assert (current["scheduled_size"], current["deferred"]) == (0, 0)
    await engine.reserve("k")  # the reservation was given back: the one slot is free
    assert await engine.admit(other, reserved=True) is True
    assert [r.id for r in await drain(engine, ["k"])] == [other.id]
    # Kept out once; and a retry (an operator's, of a cancelled run) is never kept out.
    assert await engine.admit(early) is True
    retried = make_run()
    assert await engine.cancel(retried.id, keep_out=True) is None
    assert await engine.admit(retried, RETRY) is True
    # A cancel that only takes a waiting run out (the lifecycle's own) keeps nothing out.
    plain = make_run()
    assert await engine.cancel(plain.id) is None
    assert await engine.admit(plain) is True
    assert {r.id for r in await drain(engine, ["k"])} == {early.id, retried.id, plain.id}


async def test_a_cancel_in_another_process_keeps_out_a_run_this_one_is_creating(
    engine,  # noqa: F811
):
    if not engine.shared:
        pytest.skip("the memory engine serves one process")
    other = type(engine)({"LOCATION": engine.location, "OPTIONS": engine.options})
    try:
        run = make_run()
        await engine.reserve("k")  # this process's create: a slot first, then the record
        assert await other.cancel(run.id, keep_out=True) is None  # the other's, meanwhile
        assert await engine.admit(run, reserved=True) is False
        assert (await row(engine, "k"))["scheduled_size"] == 0
        assert await other.find_held(run.id) is None
    finally:
        await other.close()


async def test_the_unacked_runs_of_a_dead_process_go_back_and_are_reported(
    engine,  # noqa: F811
):
    if not engine.shared:
        pytest.skip("the memory engine serves one process")
    import redis.asyncio as aioredis

    dead = type(engine)({"LOCATION": engine.location, "OPTIONS": engine.options})
    run = make_run()
    await engine.enqueue(run)
    await dead.start()  # its heartbeat
    await dead.connect("h-dead", "w", ["k"])
    await claim(dead, ["k"], holder="h-dead")
    await dead.close()
    client = aioredis.from_url(engine.location)
    try:  # its heartbeat's key expires: the process is gone
        await client.delete(f"{engine.prefix}:alive:{dead.process}")
    finally:
        await client.aclose()
    heard: list = []
    engine.on_given_back = heard.extend
    assert await engine.reap() == 1
    assert [r.id for r in heard] == [run.id]
    assert [r.id for r in await drain(engine, ["k"])] == [run.id]


async def test_cancel_of_a_held_run_keeps_nothing_out(engine):  # noqa: F811
    run = make_run()
    await engine.enqueue(run)
    await claim(engine, ["k"])
    assert await engine.cancel(run.id) is None  # held: the caller's to settle
    await engine.ack("h", run.id)
    assert await engine.admit(run) is True  # restored later, say: it goes in
    assert [r.id for r in await drain(engine, ["k"])] == [run.id]


async def test_cancel_takes_a_queued_deferred_or_backlogged_run_out(engine):  # noqa: F811
    await engine.configure("k", scheduled_size=1)
    queued, deferred = make_run(), make_run(due_in=3600)
    backlogged_head, backlogged = make_run(), make_run()
    await engine.enqueue(queued)
    await engine.enqueue(deferred)
    await engine.admit(backlogged_head)
    await engine.admit(backlogged)
    for run in (queued, deferred, backlogged_head):
        assert (await engine.cancel(run.id)).id == run.id
        assert await engine.cancel(run.id) is None
    current = await row(engine, "k")
    assert current["deferred"] == 0
    assert [r.id for r in await drain(engine, ["k"])] == [backlogged.id]
    assert await engine.cancel(uuid.uuid4()) is None


async def test_cancel_leaves_a_held_run_alone(engine):  # noqa: F811
    run = make_run()
    await engine.enqueue(run)
    await claim(engine, ["k"])
    assert await engine.cancel(run.id) is None
    assert [r.id for r in await engine.held("h")] == [run.id]


# -- workers and the site ------------------------------------------------------------------------


async def test_connections_with_what_each_holds(engine):  # noqa: F811
    await engine.connect("c1", "worker-a", ["a", "b", "a"])
    await engine.connect("c2", "worker-b", ["b"])
    run = make_run("a")
    await engine.enqueue(run)
    await claim(engine, ["a"], holder="c1")
    before = {c.holder: c for c in await engine.connections()}
    await engine.touch("c1")
    after = {c.holder: c for c in await engine.connections()}
    assert after["c1"].task_keys == ["a", "b"]
    assert [r.id for r in after["c1"].held] == [run.id]
    assert after["c2"].client_id == "worker-b" and after["c2"].held == []
    assert after["c1"].last_activity >= before["c1"].last_activity
    assert {r["task_key"]: r["workers"] for r in await engine.snapshot()} == {"a": 1, "b": 2}
    await engine.disconnect("c1")
    assert [c.holder for c in await engine.connections()] == ["c2"]


async def test_mark_restored_is_true_exactly_once(engine):  # noqa: F811
    assert await engine.mark_restored() is True
    assert await engine.mark_restored() is False


async def test_reset_forgets_everything(engine):  # noqa: F811
    await engine.configure("k", scheduled_size=1)
    await engine.enqueue(make_run())
    await engine.connect("c1", "w", ["k"])
    await engine.mark_restored()
    await engine.reset()
    assert await engine.snapshot() == []
    assert await engine.connections() == []
    assert await engine.mark_restored() is True


async def test_claims_cancelled_at_random_moments_around_the_hand_over_lose_nothing(
    engine,  # noqa: F811
):
    """The race a blocking pop loses runs to: a waiter cancelled while its run is on its way."""
    rng = random.Random(7)
    for trial in range(150):
        waiting = asyncio.ensure_future(engine.claim("h", ["k"]))
        await asyncio.sleep(0)
        run = make_run()
        await engine.enqueue(run)
        await asyncio.sleep(rng.choice((0, 0, 0.0001, 0.0003, 0.001)))
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        held = await engine.held("h")
        if waiting.cancelled():
            assert held == [], f"trial {trial}: a cancelled claim kept its run"
        else:
            assert [r.id for r in held] == [waiting.result().id]
            await engine.ack("h", waiting.result().id)
        left = [r.id for r in await drain(engine, ["k"])]
        taken = [] if waiting.cancelled() else [waiting.result().id]
        assert taken + left == [run.id], f"trial {trial}: lost or doubled: {taken} {left}"


async def test_oldest_is_when_the_oldest_waiting_run_of_each_lane_became_due(engine):  # noqa: F811
    old, young, urgent = make_run(), make_run(), make_run(priority=50)
    old.created = now() - timedelta(seconds=30)
    young.created = now() - timedelta(seconds=10)
    urgent.created = now() - timedelta(seconds=1)
    retried = make_run()
    retried.expected_start_time = now() - timedelta(seconds=5)  # due 5 s ago, created long ago
    retried.created = now() - timedelta(hours=1)
    for run in (old, young, urgent):
        await engine.enqueue(run)
    await engine.enqueue(retried, RETRY)
    await engine.enqueue(make_run("later", due_in=3600))  # deferred: not waiting in a lane
    oldest = await engine.oldest()
    assert set(oldest) == {("k", SCHEDULED), ("k", RETRY)}
    # The high-priority run is served first, but the age is the oldest run's.
    assert abs((oldest["k", SCHEDULED] - old.created).total_seconds()) < 0.01
    assert abs((oldest["k", RETRY] - retried.expected_start_time).total_seconds()) < 0.01
    await drain(engine, ["k"])
    assert await engine.oldest() == {}


async def test_a_notice_reaches_the_connection_it_is_for(engine):  # noqa: F811
    await engine.connect("c1", "w", ["k"])
    await engine.connect("c2", "w", ["k"])
    heard: dict[str, list[str]] = {"c1": [], "c2": []}
    arrived = asyncio.Event()

    def hear(holder):
        def callback(message):
            heard[holder].append(message)
            arrived.set()

        return callback

    engine.listen("c1", hear("c1"))
    engine.listen("c2", hear("c2"))
    await engine.notify("c1", '{"type":"cancel","id":"x"}')
    await asyncio.wait_for(arrived.wait(), WAIT)
    assert heard == {"c1": ['{"type":"cancel","id":"x"}'], "c2": []}
    engine.unlisten("c1")
    arrived.clear()
    await engine.notify("c1", "gone")
    await engine.notify("c2", "here")
    await asyncio.wait_for(arrived.wait(), WAIT)  # notices arrive in order: c1's first
    assert heard == {"c1": ['{"type":"cancel","id":"x"}'], "c2": ["here"]}

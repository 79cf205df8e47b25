"""What an operator does to a run by hand: retry it, cancel it, give it back.

The HTTP API (``POST .../retry``, ``.../cancel``), the admin's actions and
``taskqueue_app.cancel()`` call these coroutines in the server's loop (or, with a shared engine,
in any process's producer loop). Each reads the record first, so that a run that finished
meanwhile is never overruled, and changes it through the same steps as the lifecycle.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from . import lifecycle, metrics, orphans, protocol
from .errors import AlreadyFinished, Orphaned, error_type
from .queues import RETRY, get_queues
from .records import transition, writer
from .schemas import TaskRun, now
from .states import CANCELLING, FINISHED_STATES, TERMINAL_STATES, StateType

__all__ = [
    "AlreadyFinished",
    "NotFinishedError",
    "NotStrandedError",
    "cancel",
    "give_back",
    "retry",
]

GIVEN_BACK_ERROR = {
    "type": error_type(Orphaned),
    "message": "given back by an operator: its worker was gone",
    "traceback": None,
}


class NotFinishedError(Exception):
    """A hand retry of a run that is not FAILED, CRASHED or CANCELLED."""


class NotStrandedError(Exception):
    """A give-back of a run that is not stranded: not PENDING or RUNNING, or a live worker
    holds it."""


class _Hands:
    """Process-local: one hand action at a time here; the record's state decides between
    processes."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()


_hands = _Hands()


def reset() -> None:
    """Forget the process-local lock (a testing utility: each test has its own loop)."""
    global _hands
    _hands = _Hands()


T = TypeVar("T")


def _completes(action: Callable[[uuid.UUID], Awaitable[T]]) -> Callable[[uuid.UUID], Awaitable[T]]:
    """Shield an operator's action: once begun, it completes even if its caller gives up (an
    HTTP client gone, the admin's call timing out), so no half-done change is left behind."""

    @functools.wraps(action)
    async def shielded(run_id: uuid.UUID) -> T:
        return await asyncio.shield(action(run_id))

    return shielded


async def _live_holders() -> set[str]:
    return {connection.holder for connection in await get_queues().connections()}


@_completes
async def retry(run_id: uuid.UUID) -> TaskRun | None:
    """Put a finished run into its key's retry lane now; None if there is no such run.

    Raises ``NotFinishedError`` unless it is FAILED, CRASHED or CANCELLED, and
    ``QueueFullError`` when the retry lane is full.
    """
    queues = get_queues()
    async with _hands.lock:
        run = await lifecycle.get(run_id)
        if run is None:
            return None
        if run.state_type not in FINISHED_STATES:
            if run.state_type == StateType.COMPLETED:
                why = "it succeeded; enqueue a new run to run it again"
            else:
                why = "it has not finished yet; cancel it first to run it again"
            raise NotFinishedError(
                f"run {run_id} is {run.state_type}: only FAILED, CRASHED or CANCELLED runs "
                f"can be retried, and {why}"
            )
        await queues.reserve(run.task_key, RETRY)
        again = run.with_state(
            StateType.SCHEDULED, "AwaitingRetry", finished=None, expected_start_time=now()
        )
        try:
            # Only over the record as read: a retry asked at once in another process wins or
            # loses here, never both.
            won = await transition(again, run, "finished", "expected_start_time")
        except BaseException:
            await queues.unreserve(run.task_key, RETRY)
            raise
        if not won:
            await queues.unreserve(run.task_key, RETRY)
            raise NotFinishedError(f"run {run_id} was retried meanwhile: it is queued already")
    await queues.admit(again, RETRY, reserved=True)
    metrics.retried(again, "manual")
    return again


def _finished(run_id: uuid.UUID, state: str) -> AlreadyFinished:
    return AlreadyFinished(
        f"run {run_id} is {state}: it has already finished, so there is nothing to cancel"
    )


async def _current(run_id: uuid.UUID) -> TaskRun | None:
    """The run as recorded; ``AlreadyFinished`` if it, or a change of it not yet written (an
    outcome that arrived while this action waited), is terminal."""
    run = await lifecycle.get(run_id)
    if run is None:
        return None
    state = writer.latest_state(run_id) or run.state_type
    if state in TERMINAL_STATES:
        raise _finished(run_id, state)
    return run


@_completes
async def cancel(run_id: uuid.UUID) -> TaskRun | None:
    """Cancel a run; None if there is no such run, ``AlreadyFinished`` if it finished.

    A run waiting (queued, deferred, backlogged), or in a worker's hands but not started, is
    CANCELLED at once (a worker that has it is told to drop it). A running one stays RUNNING,
    named ``Cancelling`` (``state_details.cancel_requested``), until its worker confirms; if the
    worker vanishes first, it ends CANCELLED rather than crashed and retried. A run no live
    connection holds (stranded, or handed over to a client that reports nothing) is CANCELLED.
    """
    queues = get_queues()
    async with _hands.lock:
        run = await _current(run_id)
        if run is None:
            return None
        if await queues.cancel(run_id, keep_out=True) is not None:
            return await _recorded(lifecycle.finish_cancelled(run))
        found = await queues.find_held(run_id)
        if found is None:
            # Being created, in any process (recorded, not yet queued: the engine's cancel
            # keeps it out of its queue now), handed over to a client that reports nothing, or
            # stranded. Read again: an outcome may have settled it meanwhile (the check and the
            # write below have no await between them).
            return await _cancel_as_recorded(run_id)
        held, holder = found.run, found.holder
        live = holder in await _live_holders()
        if live and held.state_type == StateType.RUNNING:
            asking = held.with_state(StateType.RUNNING, CANCELLING)
            # Only over the very copy looked at: an outcome that settled it meanwhile wins.
            if not await queues.swap(holder, held, asking):
                return await _cancel_as_recorded(run_id)
            writer.update(asking)
            # Durable before the worker hears of it: its answer may be recorded by another
            # process at once, and this older state, written after, would overwrite it.
            await _recorded(asking)
            await queues.notify(holder, protocol.cancel(run_id))
            return asking
        taken = await queues.ack(holder, run_id)
        if taken is None:  # settled by its worker meanwhile
            run = await _current(run_id)
            if run is None:
                return None
            taken = run
        done = lifecycle.finish_cancelled(taken)
        if live:
            await queues.notify(holder, protocol.cancel(run_id))  # drop it, do not start it
        return await _recorded(done)


async def _cancel_as_recorded(run_id: uuid.UUID) -> TaskRun | None:
    """Read the run again (``AlreadyFinished`` if an outcome settled it meanwhile) and record
    it CANCELLED; None if there is no such run."""
    run = await _current(run_id)
    if run is None:
        return None
    return await _recorded(lifecycle.finish_cancelled(run))


@_completes
async def give_back(run_id: uuid.UUID) -> TaskRun | None:
    """Give back a run stranded with a vanished worker without waiting for ``ORPHAN_TIMEOUT``:
    a RUNNING one crashes (retried if it may be), a PENDING one goes to the front of its retry
    lane. None if there is no such run; ``NotStrandedError`` unless it is PENDING or RUNNING
    with no live connection holding it, and not handed over to a client that reports nothing
    (``Delivered``: the orphan sweep leaves those alone too)."""
    queues = get_queues()
    async with _hands.lock:
        run = await lifecycle.get(run_id)
        if run is None:
            return None
        if run.state_type not in (StateType.PENDING, StateType.RUNNING):
            raise NotStrandedError(
                f"run {run_id} is {run.state_type}: only a PENDING or RUNNING run whose worker "
                "is gone can be given back"
            )
        if run.state_name == lifecycle.HANDED_OVER:
            raise NotStrandedError(
                f"run {run_id} was handed over to a client that reports no outcomes "
                f"({run.worker or 'unknown'}): it is that client's to run; cancel it instead"
            )
        found = await queues.find_held(run_id)
        if found is not None:
            if found.holder in await _live_holders():
                raise NotStrandedError(
                    f"run {run_id} is held by a connected worker ({run.worker or 'unknown'}); "
                    "cancel it instead"
                )
            await queues.ack(found.holder, run_id)  # a dead process's copy: ours to move on
        back = await orphans.give_back(run, GIVEN_BACK_ERROR)
        if back is None:
            raise NotStrandedError(f"run {run_id} was given back meanwhile (by another process)")
        return await _recorded(back)


async def _recorded(run: TaskRun) -> TaskRun:
    """``run``, once what this action wrote is in the database."""
    await writer.flush()
    return run

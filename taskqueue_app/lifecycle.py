"""Where a run changes state: created (``creating``, under this module's name), delivered,
acked, started, finished, crashed (an operator's retry, cancel and give-back are in ``actions``).

Views, the consumer and the Tasks backend call these coroutines, in the server's event loop, and
never change a state themselves. Each writes the run record (creates durably, state changes
behind, through ``records.writer``) and moves the run through the queue engine
(``queues.get_queues()``), which holds everything the server processes share: lanes, held runs,
reservations, connected workers.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from . import metrics
from .attempts import begun, ended
from .creating import create
from .errors import Crashed, UnstorableResult, error_type
from .queues import RETRY, QueueFull, get_queues
from .records import aread, transition, writer
from .restoring import restore
from .schemas import (
    TaskRun,
    ValidationError,
    check_storable,
    now,
    storable_copy,
)
from .states import CANCELLING, TERMINAL_STATES, StateType

logger = logging.getLogger(__name__)

__all__ = [
    "QueueFullError",
    "acknowledge",
    "cancelled",
    "complete",
    "crash",
    "create",
    "disconnect",
    "fail",
    "finish_cancelled",
    "get",
    "restore",
    "start",
]

# The engine's error under the name the views and the backend have always caught.
QueueFullError = QueueFull

# The state name of a run acked by a worker that reports no outcomes (a Prefect client).
HANDED_OVER = "Delivered"


# -- delivery ---------------------------------------------------------------------------------


async def acknowledge(
    holder: str,
    run_id: uuid.UUID,
    client_id: str,
    watch: bool,
    known: TaskRun | None = None,
) -> TaskRun | None:
    """A worker acked a run it holds: it becomes PENDING.

    Without ``watch`` the ack hands the run over (Prefect's rule): PENDING ``Delivered``, the
    worker's for good, never given back. With ``watch`` the run stays held by ``holder`` until
    the worker reports ``started``, so a vanished worker gives it back. ``known`` is the copy
    the connection was last handed, if it kept it: then one engine call checks and changes it.
    """
    queues = get_queues()
    name = "Pending" if watch else HANDED_OVER
    while True:
        if known is None:
            found = await queues.find_held(run_id)
            if found is None or found.holder != holder:
                return None  # settled elsewhere after this copy was sent: keep the record
            known = found.run
        pending = known.with_state(StateType.PENDING, name, worker=client_id)
        # With ``watch`` it replaces the SCHEDULED copy, in place.
        if await queues.swap(holder, known, pending if watch else None):
            break
        known = None  # changed meanwhile (an operator's cancel): look again
    writer.update(pending, "worker")
    return pending


async def _locate(
    holder: str, run_id: uuid.UUID, client_id: str | None = None, known: TaskRun | None = None
) -> tuple[TaskRun | None, str | None]:
    """The run an outcome of ``holder`` is about, and the connection that holds that copy: its
    own copy first (``known``, if the connection kept it: no lookup), else the record (and no
    holder).

    None when another worker's connection has acked or started it (it must not be overruled);
    a copy an earlier connection of the same worker (``client_id``) still holds is this one's.
    """
    if known is not None:
        return known, holder
    found = await get_queues().find_held(run_id)
    if found is not None:
        if found.holder == holder:
            return found.run, holder
        if client_id and found.run.worker == client_id:
            return found.run, found.holder
        if found.run.state_type != StateType.SCHEDULED:
            return None, None
    await writer.flush()  # the record must show the state changes still being written
    return await aread(run_id), None


async def _drop_waiting_copy(holder: str, run: TaskRun) -> None:
    """An outcome for a run recorded SCHEDULED that ``holder`` does not hold: it was given back
    when an earlier connection closed, and a copy waits in a queue or in another connection's
    unacked hands. That copy must not be run again: take it out."""
    if run.state_type != StateType.SCHEDULED:
        return
    queues = get_queues()
    if await queues.cancel(run.id) is not None:
        return
    found = await queues.find_held(run.id)
    if found is not None and found.holder != holder:
        await queues.ack(found.holder, run.id)  # its ack will then find nothing to change


async def _take_over(
    holder: str, run_id: uuid.UUID, client_id: str | None, known: TaskRun | None = None
) -> TaskRun | None:
    """The run an outcome is about, out of the worker's hands; None for a stale outcome.

    A run marked CRASHED when its worker's connection dropped still takes that worker's late
    outcome (it reports after reconnecting): the work was done, and CRASHED was our guess.
    """
    while True:
        run, held_by = await _locate(holder, run_id, client_id, known)
        if run is None:
            return None
        if run.state_type in TERMINAL_STATES and not (
            run.state_type == StateType.CRASHED and client_id and run.worker == client_id
        ):
            return None
        if held_by is None:  # a copy held is the only one: nothing waits elsewhere
            await _drop_waiting_copy(holder, run)
            await get_queues().ack(holder, run_id)
            return run
        if await get_queues().swap(held_by, run, None):
            return run
        known = None  # changed meanwhile (an operator's cancel): look again


async def start(
    holder: str, run_id: uuid.UUID, client_id: str, known: TaskRun | None = None
) -> TaskRun | None:
    """The worker starts the run: RUNNING, one more attempt counted; it stays held by the
    connection, which crashes it if it vanishes before an outcome.

    None when the worker must not run it (finished, or another live worker has it). A worker
    that reconnects and says ``started`` again for a run it is running resumes it: held by the
    new connection, no attempt counted twice.
    """
    queues = get_queues()
    while True:
        run, held_by = await _locate(holder, run_id, client_id, known)
        known = None
        if run is None or run.state_type in TERMINAL_STATES:
            return None
        if run.state_type == StateType.RUNNING and run.worker == client_id:
            await queues.hold(holder, run)  # moved from an earlier connection, if any
            return run
        if held_by is None:  # a copy held is the only one: nothing waits elsewhere
            await _drop_waiting_copy(holder, run)
        stamp = now()
        running = run.with_state(
            StateType.RUNNING,
            "Running",
            run_count=run.run_count + 1,
            started=stamp,
            worker=client_id,
            attempts=begun(run.attempts, client_id, stamp),
        )
        if held_by != holder:  # from the record, or from an earlier connection: taken over
            await queues.hold(holder, running)
            break
        if await queues.swap(holder, run, running):
            break
        # Changed meanwhile (an operator's cancel): look again.
    writer.update(running, "run_count", "started", "worker", "attempts")
    metrics.started(running)
    return running


async def complete(
    holder: str,
    run_id: uuid.UUID,
    result: Any,
    client_id: str | None = None,
    known: TaskRun | None = None,
) -> TaskRun | None:
    """The run finished: COMPLETED with its JSON result (FAILED if the database cannot store
    that result: a lone surrogate, a NUL)."""
    try:
        check_storable(result, "the result")
    except ValidationError as exc:
        error = {"type": UNSTORABLE_RESULT, "message": str(exc), "traceback": None}
        return await fail(holder, run_id, error, client_id, known)
    run = await _take_over(holder, run_id, client_id, known)
    if run is None:
        return None
    stamp = now()
    attempts = ended(run, stamp, None, client_id)
    done = run.with_state(
        StateType.COMPLETED, "Completed", result=result, finished=stamp, attempts=attempts
    )
    writer.update(done, "result", "finished", "run_count", "started", "worker", "attempts")
    metrics.finished(done)
    return done


async def _write(run: TaskRun, since: TaskRun | None, *fields: str) -> bool:
    """Record a change: behind, through the writer; or, with ``since``, now and only if the
    record is unchanged since it was read (``records.transition``)."""
    if since is None:
        writer.update(run, *fields)
        return True
    return await transition(run, since, *fields)


async def _retry_or_finish(
    run: TaskRun,
    state_type: str,
    state_name: str,
    error: Any,
    worker: str | None = None,
    since: TaskRun | None = None,
) -> TaskRun | None:
    """After a failed attempt: AwaitingRetry after the delay if retries are left, else final.
    With ``since``, None (nothing done) if another process changed the record first."""
    stamp = now()
    attempts = ended(run, stamp, error, worker)
    if max(run.run_count, 1) <= run.retries:
        due = stamp + timedelta(seconds=run.retry_delay_seconds)
        later = run.with_state(
            StateType.SCHEDULED,
            "AwaitingRetry",
            error=error,
            expected_start_time=due,
            attempts=attempts,
        )
        fields = ("error", "expected_start_time", "run_count", "started", "worker", "attempts")
        if not await _write(later, since, *fields):
            return None
        await get_queues().admit(later, RETRY)
        metrics.retried(later, state_type.lower())
        return later
    final = run.with_state(state_type, state_name, error=error, finished=stamp, attempts=attempts)
    fields = ("error", "finished", "run_count", "started", "worker", "attempts")
    if not await _write(final, since, *fields):
        return None
    metrics.finished(final)
    return final


async def fail(
    holder: str,
    run_id: uuid.UUID,
    error: Any,
    client_id: str | None = None,
    known: TaskRun | None = None,
) -> TaskRun | None:
    """The run raised: retried after ``retry_delay_seconds`` if retries are left, else FAILED."""
    run = await _take_over(holder, run_id, client_id, known)
    if run is None:
        return None
    if run.state_name == CANCELLING:
        return finish_cancelled(run, client_id)  # an operator's cancel is never retried
    error = storable_copy(error)
    return await _retry_or_finish(run, StateType.FAILED, "Failed", error, client_id)


async def cancelled(
    holder: str, run_id: uuid.UUID, client_id: str | None = None, known: TaskRun | None = None
) -> TaskRun | None:
    """The worker stopped (or never started) a run it was told to cancel: CANCELLED, unless it
    was no longer this worker's to cancel."""
    run = await _take_over(holder, run_id, client_id, known)
    if run is None:
        return None
    return finish_cancelled(run, client_id)


def finish_cancelled(run: TaskRun, worker: str | None = None) -> TaskRun:
    """Record ``run`` (out of every queue and hand already) CANCELLED; its attempt, if one
    was running, ends here. ``worker`` is the worker confirming it stopped the run: its attempt
    ends here even where the server had guessed a crash. An operator's cancel names none, so
    an earlier attempt keeps the error it ended with."""
    stamp = now()
    done = run.with_state(
        StateType.CANCELLED,
        "Cancelled",
        finished=stamp,
        attempts=ended(run, stamp, None, worker),
    )
    writer.update(done, "finished", "run_count", "started", "worker", "attempts")
    metrics.finished(done)
    return done


UNSTORABLE_RESULT = error_type(UnstorableResult)

CRASH_ERROR = {
    "type": error_type(Crashed),
    "message": "the worker's connection closed while the run was running",
    "traceback": None,
}


async def disconnect(holder: str) -> None:
    """A connection closed: unacked (and acked, unstarted) runs go back first in line; runs it
    had started crash, and are retried if retries are left."""
    queues = get_queues()
    crashed = []
    for run in await queues.held(holder):
        if run.state_type == StateType.RUNNING:
            # None: settled meanwhile by another process (an operator's cancel, say).
            if await queues.ack(holder, run.id) is not None:
                crashed.append(run)
        elif run.state_type != StateType.SCHEDULED:
            # Acked but never started: SCHEDULED again, in its place in the holder's claim order.
            back = run.with_state(StateType.SCHEDULED, "Scheduled")
            await queues.hold(holder, back)
            writer.update(back)
    metrics.redelivered(await queues.release(holder))
    for run in crashed:
        await crash(run, CRASH_ERROR)


async def crash(
    run: TaskRun, error: dict[str, Any], since: TaskRun | None = None
) -> TaskRun | None:
    """A started run whose worker is gone: CRASHED, retried if it has retries left; CANCELLED
    if an operator had asked to cancel it (its worker can no longer confirm). With ``since``
    (the record as read), None if another process changed that record first."""
    if run.state_name == CANCELLING:
        return finish_cancelled(run)
    return await _retry_or_finish(run, StateType.CRASHED, "Crashed", error, since=since)


# -- by hand ------------------------------------------------------------------------------------


async def get(run_id: uuid.UUID) -> TaskRun | None:
    """The run as recorded (after any pending writes), or None."""
    await writer.flush()
    return await aread(run_id)

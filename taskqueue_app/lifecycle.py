"""The one place where a run changes state: create, defer, deliver, ack, start, finish, retry.

Views, the consumer and the Tasks backend call these coroutines, in the server's event loop, and
never change a state themselves. Each writes the run record (creates durably, state changes
behind, through ``records.writer``) and moves the run between queues.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async

from .conf import taskqueue_settings
from .models import FINISHED_STATES, TERMINAL_STATES, StateType, TaskRunRecord
from .records import aread, writer
from .scheduler import scheduler
from .schemas import TaskRun, now, run_from_request
from .task_queue import TaskQueue

logger = logging.getLogger(__name__)

__all__ = [
    "QueueFullError",
    "NotFinishedError",
    "create",
    "acknowledge",
    "start",
    "complete",
    "fail",
    "disconnect",
    "retry",
    "get",
    "restore",
    "ensure_started",
    "shutdown",
]


class QueueFullError(Exception):
    """The key's lane has no room: nothing was stored; the caller should try again later."""

    retry_after = 1


class NotFinishedError(Exception):
    """A hand retry of a run that is not FAILED, CRASHED or CANCELLED."""


class _State:
    """The lifecycle's process-wide memory, in one object so that tests can reset it."""

    def __init__(self) -> None:
        # Slots promised to creates whose insert is still in flight, per key.
        self.reserved: dict[str, int] = {}
        # Runs a watching worker has started, per connection: crashed if it vanishes.
        self.running: dict[str, dict[uuid.UUID, TaskRun]] = {}
        self.started: asyncio.Future | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutdown_callbacks: list = []
        # Hand retries one at a time: two racing requests must not both see the run FAILED.
        self.retry_lock = asyncio.Lock()
        # Runs settled by an outcome while a copy of them still waited in a queue (given back
        # when an earlier connection closed): that copy is dropped at delivery, not run again.
        self.settled: dict[uuid.UUID, None] = {}


_state = _State()


def reset() -> None:
    """Forget everything in memory (a testing utility; the records stay)."""
    global _state
    _state = _State()
    scheduler.reset()
    writer.reset()
    TaskQueue.reset()


def in_hand(holder: str) -> list[TaskRun]:
    """Every run a connection has: sent and not yet acked, acked, or started (oldest first)."""
    return [*TaskQueue.held(holder), *_state.running.get(holder, {}).values()]


def running_per_key() -> dict[str, int]:
    """Per key, runs that watching workers have started and not yet finished."""
    counts: dict[str, int] = {}
    for runs in _state.running.values():
        for run in runs.values():
            counts[run.task_key] = counts.get(run.task_key, 0) + 1
    return counts


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """The server's loop while it is running in this process, else None (another process)."""
    loop = _state.loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return None
    return loop


def in_serving_loop() -> bool:
    """True in the server loop's own thread, where blocking on it would deadlock."""
    loop = serving_loop()
    if loop is None:
        return False
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# -- create -------------------------------------------------------------------------------------


async def _find_existing(run: TaskRun) -> TaskRun | None:
    record = await TaskRunRecord.objects.filter(
        task_key=run.task_key, dynamic_key=run.dynamic_key
    ).afirst()
    return TaskRun.from_record(record) if record is not None else None


async def create(data: Any) -> tuple[TaskRun, bool]:
    """Validate, record durably, and queue a new run; returns (run, created).

    An existing (task_key, dynamic_key) returns that run and False, queued once. A full
    scheduled lane raises ``QueueFullError`` with nothing stored. Raises ``ValidationError``
    (``TooLargeError`` when the run's JSON would exceed ``MAX_MESSAGE_BYTES``).
    """
    run = run_from_request(data, taskqueue_settings.MAX_MESSAGE_BYTES)
    key = run.task_key
    immediate = run.expected_start_time is None or run.expected_start_time <= now()
    if immediate:
        if TaskQueue.for_key(key).scheduled_room() - _state.reserved.get(key, 0) <= 0:
            existing = await _find_existing(run)
            if existing is not None:
                return existing, False
            raise QueueFullError(f"the scheduled queue of {key!r} is full")
        _state.reserved[key] = _state.reserved.get(key, 0) + 1

    def settle(write: asyncio.Future) -> None:
        # Runs when the insert commits, even if the caller was cancelled meanwhile (a producer
        # that hung up): a stored run must reach its queue, or it would wait for a restart.
        if immediate:
            _state.reserved[key] -= 1
        if not write.cancelled() and write.exception() is None:
            stored, created = write.result()
            if created:
                scheduler.schedule(stored)

    write = writer.submit(run)  # a future, not a task: nothing extra per create
    write.add_done_callback(settle)
    return await asyncio.shield(write)


# -- delivery ---------------------------------------------------------------------------------


async def acknowledge(
    holder: str, run_id: uuid.UUID, client_id: str, watch: bool
) -> TaskRun | None:
    """A worker acked a run it holds: it becomes PENDING.

    Without ``watch`` the ack hands the run over (Prefect's rule). With ``watch`` the run stays
    held by ``holder`` until the worker reports ``started``, so a vanished worker gives it back.
    """
    run = TaskQueue.held_run(holder, run_id)
    if run is None:
        return None
    if take_settled(run_id):
        # Finished on another connection after this copy was sent: keep the record as it is.
        TaskQueue.ack(holder, run_id)
        return None
    pending = run.with_state(StateType.PENDING, "Pending", worker=client_id)
    if watch:
        TaskQueue.hold(holder, pending)  # replaces the SCHEDULED copy, in place
    else:
        TaskQueue.ack(holder, run_id)
    writer.update(pending, "worker")
    return pending


async def _locate(holder: str, run_id: uuid.UUID) -> TaskRun | None:
    """The run an outcome of ``holder`` is about: its own copy first, else the record.

    None when another live connection has acked or started it: an outcome from an earlier
    connection must not overrule the worker that has the run now (no run in two live hands).
    """
    running = _state.running.get(holder, {})
    if run_id in running:
        return running[run_id]
    held = TaskQueue.held_run(holder, run_id)
    if held is not None:
        return held
    if any(run_id in runs for runs in _state.running.values()):
        return None
    other = TaskQueue.holder_of(run_id)
    if other is not None and TaskQueue.held_run(other, run_id).state_type != StateType.SCHEDULED:
        return None  # acked by another worker; an unacked copy in flight is dropped at its ack
    await writer.flush()  # the record must show the state changes still being written
    return await aread(run_id)


async def _take_over(holder: str, run_id: uuid.UUID, client_id: str | None) -> TaskRun | None:
    """The run an outcome is about, out of the worker's hands; None for a stale outcome.

    A run marked CRASHED when its worker's connection dropped still takes that worker's late
    outcome (it reports after reconnecting): the work was done, and CRASHED was our guess.
    """
    run = await _locate(holder, run_id)
    if run is None:
        return None
    if run.state_type in TERMINAL_STATES and not (
        run.state_type == StateType.CRASHED and client_id and run.worker == client_id
    ):
        return None
    _note_queued_copy(holder, run)
    _forget(holder, run_id)
    return run


async def start(holder: str, run_id: uuid.UUID, client_id: str) -> TaskRun | None:
    """The worker started the run: RUNNING, one more attempt counted."""
    run = await _locate(holder, run_id)
    if run is None or run.state_type in TERMINAL_STATES:
        return None
    _note_queued_copy(holder, run)
    TaskQueue.ack(holder, run_id)
    running = run.with_state(
        StateType.RUNNING,
        "Running",
        run_count=run.run_count + 1,
        started=now(),
        worker=client_id,
    )
    _state.running.setdefault(holder, {})[run_id] = running
    writer.update(running, "run_count", "started", "worker")
    return running


SETTLED_MEMORY = 10_000  # bounds the memory of settled runs whose queued copy is never delivered


def _note_queued_copy(holder: str, run: TaskRun) -> None:
    """An outcome for a run recorded SCHEDULED that ``holder`` does not hold: it was given back
    when an earlier connection closed and a copy waits in a queue; delivery must drop it."""
    if run.state_type == StateType.SCHEDULED and TaskQueue.held_run(holder, run.id) is None:
        settled = _state.settled
        settled[run.id] = None
        if len(settled) > SETTLED_MEMORY:
            del settled[next(iter(settled))]


def take_settled(run_id: uuid.UUID) -> bool:
    """True, once, when a queued copy of ``run_id`` must not be delivered (see ``start``)."""
    settled = _state.settled
    if settled and run_id in settled:
        del settled[run_id]
        return True
    return False


def _forget(holder: str, run_id: uuid.UUID) -> None:
    TaskQueue.ack(holder, run_id)
    running = _state.running.get(holder)
    if running is not None:
        running.pop(run_id, None)
        if not running:
            del _state.running[holder]


async def complete(
    holder: str, run_id: uuid.UUID, result: Any, client_id: str | None = None
) -> TaskRun | None:
    """The run finished: COMPLETED with its JSON result."""
    run = await _take_over(holder, run_id, client_id)
    if run is None:
        return None
    done = run.with_state(StateType.COMPLETED, "Completed", result=result, finished=now())
    writer.update(done, "result", "finished", "run_count", "started", "worker")
    return done


def _retry_or_finish(run: TaskRun, state_type: str, state_name: str, error: Any) -> TaskRun:
    """After a failed attempt: AwaitingRetry after the delay if retries are left, else final."""
    attempts = max(run.run_count, 1)
    if attempts <= run.retries:
        due = now() + timedelta(seconds=run.retry_delay_seconds)
        later = run.with_state(
            StateType.SCHEDULED, "AwaitingRetry", error=error, expected_start_time=due
        )
        writer.update(later, "error", "expected_start_time", "run_count", "started", "worker")
        scheduler.schedule(later)
        return later
    final = run.with_state(state_type, state_name, error=error, finished=now())
    writer.update(final, "error", "finished", "run_count", "started", "worker")
    return final


async def fail(
    holder: str, run_id: uuid.UUID, error: Any, client_id: str | None = None
) -> TaskRun | None:
    """The run raised: retried after ``retry_delay_seconds`` if retries are left, else FAILED."""
    run = await _take_over(holder, run_id, client_id)
    if run is None:
        return None
    return _retry_or_finish(run, StateType.FAILED, "Failed", error)


async def disconnect(holder: str) -> None:
    """A connection closed: unacked (and acked, unstarted) runs go back first in line; runs it
    had started crash, and are retried if retries are left."""
    for run in TaskQueue.held(holder):
        if run.state_type != StateType.SCHEDULED:
            # Acked but never started: SCHEDULED again, in its place in the holder's claim order.
            back = run.with_state(StateType.SCHEDULED, "Scheduled")
            TaskQueue.hold(holder, back)
            writer.update(back)
    TaskQueue.release(holder)
    error = {
        "type": "Crashed",
        "message": "the worker's connection closed while the run was running",
        "traceback": None,
    }
    for run in _state.running.pop(holder, {}).values():
        _retry_or_finish(run, StateType.CRASHED, "Crashed", error)


# -- by hand ------------------------------------------------------------------------------------


async def get(run_id: uuid.UUID) -> TaskRun | None:
    """The run as recorded (after any pending writes), or None."""
    await writer.flush()
    return await aread(run_id)


async def retry(run_id: uuid.UUID) -> TaskRun | None:
    """Put a finished run into its key's retry lane now; None if there is no such run.

    Raises ``NotFinishedError`` unless it is FAILED, CRASHED or CANCELLED, and
    ``QueueFullError`` when the retry lane is full.
    """
    async with _state.retry_lock:
        run = await get(run_id)
        if run is None:
            return None
        if run.state_type not in FINISHED_STATES:
            raise NotFinishedError(f"run {run_id} is {run.state_type}, not finished")
        if TaskQueue.for_key(run.task_key).retry_full():
            raise QueueFullError(f"the retry queue of {run.task_key!r} is full")
        again = run.with_state(
            StateType.SCHEDULED, "AwaitingRetry", finished=None, expected_start_time=now()
        )
        writer.update(again, "finished", "expected_start_time")
        await writer.flush()
    scheduler.enqueue(again)
    return again


# -- the server process ---------------------------------------------------------------------------


async def restore() -> int:
    """Put runs recorded SCHEDULED back into their queues, oldest first; once per process."""
    if TaskQueue._scheduled_tasks_already_restored:
        return 0
    records = await sync_to_async(list)(
        TaskRunRecord.objects.filter(state_type=StateType.SCHEDULED).order_by("created")
    )
    # Only now: a failed read ("database is locked" at start-up) must be tried again. Nothing
    # awaits between here and the last schedule(), so no second restore can interleave.
    if TaskQueue._scheduled_tasks_already_restored:
        return 0
    TaskQueue._scheduled_tasks_already_restored = True
    for record in records:
        scheduler.schedule(TaskRun.from_record(record))
    if records:
        logger.info("restored %d scheduled runs", len(records))
    return len(records)


async def ensure_started() -> None:
    """Once per process, in the server's loop: note the loop and restore recorded runs."""
    started = _state.started
    if started is None:
        loop = asyncio.get_running_loop()
        started = _state.started = loop.create_future()
        _state.loop = loop
        try:
            await restore()
        except BaseException as exc:
            _state.started = None
            started.set_exception(exc)
            raise
        started.set_result(None)
    elif not started.done():
        await asyncio.shield(started)


def on_shutdown(callback) -> None:
    """Call ``callback()`` (a coroutine function) when the server stops; once however often
    it is registered."""
    if callback not in _state.shutdown_callbacks:
        _state.shutdown_callbacks.append(callback)


async def shutdown() -> None:
    """The server is stopping: run the shutdown callbacks, then commit every pending write."""
    for callback in list(_state.shutdown_callbacks):
        try:
            await callback()
        except Exception:
            logger.exception("shutdown callback %r failed", callback)
    await writer.flush()

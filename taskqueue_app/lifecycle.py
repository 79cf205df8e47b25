"""The one place where a run changes state: create, defer, deliver, ack, start, finish, retry.

Views, the consumer and the Tasks backend call these coroutines, in the server's event loop, and
never change a state themselves. Each writes the run record (creates durably, state changes
behind, through ``records.writer``) and moves the run between queues.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import uuid
from collections import deque
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async

from .conf import taskqueue_settings
from .models import FINISHED_STATES, TERMINAL_STATES, StateType, TaskRunRecord
from .records import writer
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
        self.deferred: list[tuple[float, int, TaskRun]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.sequence = itertools.count()
        self.feeders: set[asyncio.Task] = set()
        # Accepted runs waiting for room, per (key, is_retry) lane, each fed by one task.
        self.backlogs: dict[tuple[str, bool], deque[TaskRun]] = {}
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
    if _state.timer is not None:
        _state.timer.cancel()
    for task in _state.feeders:
        task.cancel()
    _state = _State()
    writer.reset()
    TaskQueue.reset()


def server_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop the queues live in, once the server has started serving."""
    return _state.loop


# -- moving runs into queues -----------------------------------------------------------------


def _enqueue(run: TaskRun) -> None:
    """Put an accepted run into its lane; if it is full, feed it in as room frees up."""
    lane = (run.task_key, run.is_retry)
    backlog = _state.backlogs.get(lane)
    if backlog is None:
        queue = TaskQueue.for_key(run.task_key)
        try:
            (queue.retry_nowait if run.is_retry else queue.put_nowait)(run)
            return
        except asyncio.QueueFull:
            pass
        # Accepted runs are never dropped: one feeder per lane waits for room, in FIFO order.
        backlog = _state.backlogs[lane] = deque()
        task = asyncio.get_running_loop().create_task(_feed(lane, backlog))
        _state.feeders.add(task)
        task.add_done_callback(_state.feeders.discard)
    backlog.append(run)


async def _feed(lane: tuple[str, bool], backlog: deque[TaskRun]) -> None:
    key, is_retry = lane
    queue = TaskQueue.for_key(key)
    try:
        while backlog:
            await (queue.retry if is_retry else queue.put)(backlog[0])
            backlog.popleft()
    finally:
        if _state.backlogs.get(lane) is backlog and not backlog:
            del _state.backlogs[lane]


def backlog_sizes() -> dict[str, int]:
    """Per key, accepted runs waiting for room in a full lane (after a restore or a deferral)."""
    sizes: dict[str, int] = {}
    for (key, _), backlog in _state.backlogs.items():
        sizes[key] = sizes.get(key, 0) + len(backlog)
    return sizes


def _schedule(run: TaskRun) -> None:
    """Enqueue now, or at ``expected_start_time`` if that is in the future (one timer for all)."""
    due = run.expected_start_time
    if due is None or due <= now():
        _enqueue(run)
        return
    heapq.heappush(_state.deferred, (due.timestamp(), next(_state.sequence), run))
    _arm_timer()


def _arm_timer() -> None:
    if _state.timer is not None:
        _state.timer.cancel()
        _state.timer = None
    if _state.deferred:
        loop = asyncio.get_running_loop()
        delay = max(0.0, _state.deferred[0][0] - now().timestamp())
        _state.timer = loop.call_later(delay, _release_due)


def _release_due() -> None:
    _state.timer = None
    moment = now().timestamp()
    while _state.deferred and _state.deferred[0][0] <= moment:
        _enqueue(heapq.heappop(_state.deferred)[2])
    _arm_timer()


def deferred_runs() -> list[TaskRun]:
    """Runs waiting for their start time, soonest first."""
    return [item[2] for item in sorted(_state.deferred)]


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
    try:
        stored, created = await writer.create(run)
    finally:
        if immediate:
            _state.reserved[key] -= 1
    if created:
        _schedule(stored)
    return stored, created


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
    _state.settled.pop(run_id, None)  # this is the copy in a worker's hands now
    pending = run.with_state(StateType.PENDING, "Pending", worker=client_id)
    if watch:
        TaskQueue.hold(holder, pending)  # replaces the SCHEDULED copy, in place
    else:
        TaskQueue.ack(holder, run_id)
    writer.update(pending, "worker")
    return pending


async def _locate(holder: str, run_id: uuid.UUID) -> TaskRun | None:
    """The run in a worker's hands: this connection's first, else its record."""
    running = _state.running.get(holder, {})
    if run_id in running:
        return running[run_id]
    held = TaskQueue.held_run(holder, run_id)
    if held is not None:
        return held
    await writer.flush()  # the record must show the state changes still being written
    record = await TaskRunRecord.objects.filter(pk=run_id).afirst()
    return TaskRun.from_record(record) if record is not None else None


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


async def complete(holder: str, run_id: uuid.UUID, result: Any) -> TaskRun | None:
    """The run finished: COMPLETED with its JSON result."""
    run = await _locate(holder, run_id)
    if run is None or run.state_type in TERMINAL_STATES:
        return None
    _note_queued_copy(holder, run)
    _forget(holder, run_id)
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
        _schedule(later)
        return later
    final = run.with_state(state_type, state_name, error=error, finished=now())
    writer.update(final, "error", "finished", "run_count", "started", "worker")
    return final


async def fail(holder: str, run_id: uuid.UUID, error: Any) -> TaskRun | None:
    """The run raised: retried after ``retry_delay_seconds`` if retries are left, else FAILED."""
    run = await _locate(holder, run_id)
    if run is None or run.state_type in TERMINAL_STATES:
        return None
    _note_queued_copy(holder, run)
    _forget(holder, run_id)
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
    record = await TaskRunRecord.objects.filter(pk=run_id).afirst()
    return TaskRun.from_record(record) if record is not None else None


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
    _enqueue(again)
    return again


# -- the server process ---------------------------------------------------------------------------


async def restore() -> int:
    """Put runs recorded SCHEDULED back into their queues, oldest first; once per process."""
    if TaskQueue._scheduled_tasks_already_restored:
        return 0
    TaskQueue._scheduled_tasks_already_restored = True
    records = await sync_to_async(list)(
        TaskRunRecord.objects.filter(state_type=StateType.SCHEDULED).order_by("created")
    )
    for record in records:
        _schedule(TaskRun.from_record(record))
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

"""Run records written in batches from one thread: creates durable before they return,
state changes written behind."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    router,
    transaction,
)

from .models import TaskRunRecord
from .schemas import RECORD_FIELDS, TaskRun, now

logger = logging.getLogger(__name__)

# A state change the database refuses is tried again with later batches, this many times.
MAX_UPDATE_ATTEMPTS = 5
RETRY_DELAY = 0.2

# A batch's fallback lookup binds one parameter per create; stay far below SQLite's limit.
MAX_CREATES_PER_BATCH = 200


class RecordWriter:
    """Group-commits run records: whatever piled up while the last transaction ran goes in the
    next one. One writer thread means one SQLite connection and no "database is locked" between
    our own writers; producers still hear back only after their run is committed.
    """

    def __init__(self) -> None:
        self._creates: list[tuple[TaskRun, asyncio.Future]] = []
        self._updates: dict[uuid.UUID, dict[str, Any]] = {}
        self._writing: dict[uuid.UUID, dict[str, Any]] = {}  # the batch being committed
        self._idle: list[asyncio.Future] = []
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Failed attempts per run whose state change could not be written yet.
        self._attempts: dict[uuid.UUID, int] = {}
        # Batches started and committed, and who waits for which (see ``durable``).
        self._batches = 0
        self._committed = 0
        self._barriers: list[tuple[int, frozenset[uuid.UUID], asyncio.Future[bool]]] = []

    def reset(self) -> None:
        """Drop whatever is pending (a testing utility: each test has its own event loop)."""
        self._creates, self._updates, self._idle, self._task = [], {}, [], None
        self._writing = {}
        self._attempts = {}
        self._batches = self._committed = 0
        self._barriers = []

    def submit(self, run: TaskRun) -> asyncio.Future[tuple[TaskRun, bool]]:
        """Queue the insert of ``run``; the future resolves as ``create`` returns, once committed.

        The write goes ahead even if nobody awaits the future any more.
        """
        future = asyncio.get_running_loop().create_future()
        self._creates.append((run, future))
        self._kick()
        return future

    async def create(self, run: TaskRun) -> tuple[TaskRun, bool]:
        """Insert ``run``; or return the run with its (task_key, dynamic_key) or id, and False."""
        return await self.submit(run)

    def update(self, run: TaskRun, *fields: str) -> None:
        """Write ``fields`` of ``run`` (and its state) soon, without waiting; later writes win."""
        self._updates.setdefault(run.id, {}).update(_changes(run, fields))
        self._kick()

    def latest_state(self, run_id: uuid.UUID) -> str | None:
        """The state type of ``run_id``'s newest change not yet committed (pending or in the
        batch being written), or None: what a read of its record does not show yet."""
        for values in (self._updates.get(run_id), self._writing.get(run_id)):
            if values is not None:
                return values.get("state_type")
        return None

    def durable(self, run_ids: frozenset[uuid.UUID] = frozenset()) -> asyncio.Future[bool]:
        """A future that resolves once every write handed over so far is committed, under
        sustained load too (unlike ``flush``, it does not wait for the writer to go idle).

        True when the state changes of ``run_ids`` are in the database; False when the
        database refused one of them for good (its producer is told nothing was recorded).
        """
        future = asyncio.get_running_loop().create_future()
        if self._creates or self._updates:
            self._barriers.append((self._batches + 1, run_ids, future))
            self._kick()
        elif self._busy():
            self._barriers.append((self._batches, run_ids, future))
        else:
            future.set_result(not (run_ids & self._attempts.keys()))
        return future

    def _release_barriers(self, given_up: set[uuid.UUID]) -> None:
        waiting = []
        for target, run_ids, future in self._barriers:
            if target > self._committed:
                waiting.append((target, run_ids, future))
            elif run_ids & self._attempts.keys():
                # A change of these runs failed and waits for a later batch: wait for that one.
                waiting.append((self._batches + 1, run_ids, future))
            elif not future.done():
                future.set_result(not (run_ids & given_up))
        self._barriers = waiting

    async def flush(self) -> None:
        """Wait until everything handed to the writer so far is committed."""
        if not self._creates and not self._updates and not self._busy():
            return
        future = asyncio.get_running_loop().create_future()
        self._idle.append(future)
        self._kick()
        await future

    def _busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _kick(self) -> None:
        if not self._busy():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _commit_apart(
        self,
        creates: list[tuple[TaskRun, asyncio.Future]],
        updates: dict[uuid.UUID, dict[str, Any]],
    ) -> set[uuid.UUID]:
        """After a failed batch: one bad write must not take the others with it."""
        loop = asyncio.get_running_loop()
        for run, future in creates:
            try:
                (result,) = await loop.run_in_executor(
                    self._executor, _commit_safely, [run], {}, True
                )
            except Exception as exc:  # the database refused this one: its producer hears why
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)
        failed = False
        given_up: set[uuid.UUID] = set()
        for run_id, values in updates.items():
            try:
                await loop.run_in_executor(self._executor, _commit_safely, [], {run_id: values})
                self._attempts.pop(run_id, None)
            except Exception:
                failed = True
                attempts = self._attempts[run_id] = self._attempts.get(run_id, 0) + 1
                if attempts >= MAX_UPDATE_ATTEMPTS:
                    self._attempts.pop(run_id)
                    given_up.add(run_id)
                    logger.exception("gave up on a state change of run %s: %r", run_id, values)
                    continue
                # A locked or briefly unavailable database: try again with the next batch, under
                # any newer change of the same run (later writes win).
                self._updates[run_id] = {**values, **self._updates.get(run_id, {})}
        if failed:
            await asyncio.sleep(RETRY_DELAY)  # back off before the next batch tries again
        return given_up

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="taskqueue-records")
        while self._creates or self._updates:
            creates = self._creates[:MAX_CREATES_PER_BATCH]
            del self._creates[:MAX_CREATES_PER_BATCH]
            updates, self._updates = self._updates, {}
            self._writing = updates
            runs = [run for run, _ in creates]
            self._batches += 1
            try:
                results = await loop.run_in_executor(self._executor, _commit_safely, runs, updates)
            except Exception:
                logger.exception("could not write a batch of run records; writing them one by one")
                given_up = await self._commit_apart(creates, updates)
                self._writing = {}
                self._committed = self._batches
                self._release_barriers(given_up)
                continue
            self._writing = {}
            self._committed = self._batches
            if self._attempts:
                for run_id in updates:
                    self._attempts.pop(run_id, None)
            for (_, future), result in zip(creates, results, strict=True):
                if not future.done():
                    future.set_result(result)
            if self._barriers:
                self._release_barriers(set())
        self._committed = self._batches
        if self._barriers:
            self._release_barriers(set())
        idle, self._idle = self._idle, []
        for future in idle:
            if not future.done():
                future.set_result(None)


def _commit_safely(
    creates: list[TaskRun], updates: dict[uuid.UUID, dict[str, Any]], again: bool = False
) -> list[tuple[TaskRun, bool]]:
    """``_commit`` on a working connection. The writer's thread is no request: Django never
    checks its connection, so one that broke (a database restart, a killed session, an idle
    connection cut) is closed here and the batch is written once more on a new one.

    ``again``: the batch may have landed already (an earlier attempt failed, perhaps after its
    commit): its own records found in the database then count as created, not as duplicates.
    """
    connection = connections[router.db_for_write(TaskRunRecord)]
    before = connection.connection
    try:
        return _commit(creates, updates, again)
    except (OperationalError, InterfaceError):
        if not _close_if_broken(connection, before):
            raise  # the connection works: the database refused the write (a lock, say)
    logger.warning("the records database connection broke; writing the batch on a new one")
    return _commit(creates, updates, True)


def _close_if_broken(connection: Any, before: Any) -> bool:
    """True if the connection the failed attempt used (``before``) broke; closed then, so that
    the next query opens a new one. Django drops a connection whose rollback failed by itself
    (and may have opened the next one already)."""
    current = connection.connection
    if current is None or (before is not None and current is not before):
        return True
    if connection.is_usable():
        return False
    connection.close()
    return True


def _commit(
    creates: list[TaskRun], updates: dict[uuid.UUID, dict[str, Any]], again: bool = False
) -> list[tuple[TaskRun, bool]]:
    """One transaction: the new records (minus those that exist), then the state changes."""
    with transaction.atomic():
        results = _insert(creates, again) if creates else []
        if updates:
            _write_updates(updates)
    return results


def _is_this_write(known: TaskRun, run: TaskRun) -> bool:
    """The record is ``run`` itself, committed by an attempt whose answer was lost: same id,
    key and creation time (the server stamps each new run with its own microsecond)."""
    return (known.id, known.task_key, known.dynamic_key, known.created) == (
        run.id,
        run.task_key,
        run.dynamic_key,
        run.created,
    )


def _insert(creates: list[TaskRun], again: bool = False) -> list[tuple[TaskRun, bool]]:
    """Insert the batch; where a run's (task_key, dynamic_key) or id exists, answer that run
    (with ``again``: unless the record is this very write, landed by an earlier attempt)."""
    try:
        # Optimistic: server-made ids and dynamic keys never collide, so the common case is one
        # INSERT with no lookup. The savepoint undoes only this statement if one does collide.
        with transaction.atomic():
            _insert_rows(creates)
        return [(run, True) for run in creates]
    except IntegrityError:
        pass
    dynamic_keys: dict[str, list[str]] = {}
    for run in creates:
        dynamic_keys.setdefault(run.task_key, []).append(run.dynamic_key)
    existing = list(TaskRunRecord.objects.filter(pk__in=[run.id for run in creates]))
    for task_key, keys in dynamic_keys.items():
        existing += TaskRunRecord.objects.filter(task_key=task_key, dynamic_key__in=keys)
    by_key = {(r.task_key, r.dynamic_key): TaskRun.from_record(r) for r in existing}
    by_id = {r.id: by_key[(r.task_key, r.dynamic_key)] for r in existing}
    new, results = [], []
    for run in creates:
        known = by_key.get((run.task_key, run.dynamic_key)) or by_id.get(run.id)
        if known is not None:
            mine = again and known is not run and _is_this_write(known, run)
            results.append((run, True) if mine else (known, False))
            continue
        by_key[(run.task_key, run.dynamic_key)] = by_id[run.id] = run
        new.append(TaskRunRecord(**run.record_fields()))
        results.append((run, True))
    TaskRunRecord.objects.bulk_create(new)
    return results


def _insert_rows(runs: list[TaskRun]) -> None:
    """One ``executemany`` INSERT of the runs' records: ``bulk_create`` builds model instances
    and compiles its SQL for every batch, which costs a third of a one-run batch's time here.
    Values are prepared by the model's fields, as the ORM would send them."""
    connection = connections[router.db_for_write(TaskRunRecord)]
    meta, quote = TaskRunRecord._meta, connection.ops.quote_name
    fields = [meta.get_field(name) for name in RECORD_FIELDS]
    columns = ", ".join(quote(field.column) for field in fields)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"
    )
    rows = []
    for run in runs:
        values = run.record_fields()
        rows.append([field.get_db_prep_save(values[field.name], connection) for field in fields])
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _write_updates(updates: dict[uuid.UUID, dict[str, Any]]) -> None:
    """One ``executemany`` per set of changed fields: an ORM ``update()`` per row costs about
    0.3 ms of CPU to build its SQL, three times per run, and that capped end-to-end throughput.
    Values are still prepared by the model's fields, so every database gets what the ORM sends."""
    connection = connections[router.db_for_write(TaskRunRecord)]
    meta, quote = TaskRunRecord._meta, connection.ops.quote_name
    groups: dict[tuple[str, ...], list[tuple[uuid.UUID, dict[str, Any]]]] = {}
    for run_id, values in updates.items():
        groups.setdefault(tuple(values), []).append((run_id, values))
    with connection.cursor() as cursor:
        for names, rows in groups.items():
            fields = [meta.get_field(name) for name in names]
            assignments = ", ".join(f"{quote(field.column)} = %s" for field in fields)
            sql = (
                f"UPDATE {quote(meta.db_table)} SET {assignments} "
                f"WHERE {quote(meta.pk.column)} = %s"
            )
            cursor.executemany(
                sql,
                [
                    [field.get_db_prep_save(values[field.name], connection) for field in fields]
                    + [meta.pk.get_db_prep_value(run_id, connection)]
                    for run_id, values in rows
                ],
            )


def _changes(run: TaskRun, fields: tuple[str, ...]) -> dict[str, Any]:
    names = ("state_type", "state_name", "state_timestamp", *fields)
    return {**{name: getattr(run, name) for name in names}, "updated": run.updated or now()}


async def transition(run: TaskRun, since: TaskRun, *fields: str) -> bool:
    """Write ``run``'s state and ``fields`` now, only if its record is unchanged since ``since``
    was read from it (the same state and ``updated``); True if so. Of processes racing to make
    one change (an operator's retry asked twice, two sweeps giving back one orphan), one wins,
    where ``writer.update`` would let every one of them."""
    await writer.flush()  # after every change handed over so far
    records = TaskRunRecord.objects.filter(
        pk=run.id, state_type=since.state_type, updated=since.updated
    )
    return await records.aupdate(**_changes(run, fields)) == 1


def read(run_id: uuid.UUID) -> TaskRun | None:
    """The run as recorded (committed writes only), or None."""
    record = TaskRunRecord.objects.filter(pk=run_id).first()
    return TaskRun.from_record(record) if record is not None else None


async def aread(run_id: uuid.UUID) -> TaskRun | None:
    """``read`` for async code."""
    record = await TaskRunRecord.objects.filter(pk=run_id).afirst()
    return TaskRun.from_record(record) if record is not None else None


writer = RecordWriter()

# A forked child (a test's live-server process, a pre-fork server) inherits the executor but not
# its thread: work handed to it would wait forever. The child starts a writer thread of its own.
os.register_at_fork(after_in_child=lambda: setattr(writer, "_executor", None))

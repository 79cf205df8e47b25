"""The records writer: group commits, idempotent creates, and a bad write isolated from the rest."""

import asyncio
import logging

import pytest
from asgiref.sync import sync_to_async

from taskqueue_app.models import TaskRunRecord
from taskqueue_app.records import MAX_UPDATE_ATTEMPTS, writer
from taskqueue_app.schemas import TaskRun

pytestmark = pytest.mark.django_db(transaction=True)


def new_run(key: str = "k", dynamic_key: str | None = None) -> TaskRun:
    run = TaskRun(task_key=key, dynamic_key=dynamic_key or "", name="n")
    run.dynamic_key = dynamic_key or f"{key}-{run.id.hex}"
    return run


async def test_concurrent_creates_share_one_batch_and_all_land():
    runs = [new_run() for _ in range(50)]
    results = await asyncio.gather(*(writer.create(run) for run in runs))
    assert [created for _, created in results] == [True] * 50
    assert await TaskRunRecord.objects.acount() == 50


async def test_same_dynamic_key_in_one_batch_is_created_once():
    first, second = new_run(dynamic_key="same"), new_run(dynamic_key="same")
    (a, a_created), (b, b_created) = await asyncio.gather(
        writer.create(first), writer.create(second)
    )
    assert (a_created, b_created) == (True, False)
    assert b.id == a.id == first.id
    assert await TaskRunRecord.objects.acount() == 1


async def test_existing_dynamic_key_or_id_answers_the_stored_run():
    stored, _ = await writer.create(new_run(dynamic_key="once"))
    again, created = await writer.create(new_run(dynamic_key="once"))
    assert not created and again.id == stored.id
    same_id = new_run(dynamic_key="other")
    same_id.id = stored.id
    by_id, created = await writer.create(same_id)
    assert not created and by_id.dynamic_key == "once"
    assert await TaskRunRecord.objects.acount() == 1


async def test_a_refused_create_fails_alone_and_the_batch_still_lands():
    good = [new_run() for _ in range(3)]
    bad = new_run()
    bad.state_timestamp = None  # NOT NULL: the database refuses this one row
    outcomes = await asyncio.gather(
        *(writer.create(run) for run in [good[0], bad, *good[1:]]), return_exceptions=True
    )
    assert isinstance(outcomes[1], Exception)
    assert all(created for _, created in (outcomes[0], *outcomes[2:]))
    ids = {r.id async for r in TaskRunRecord.objects.all()}
    assert ids == {run.id for run in good}


async def test_state_changes_are_written_behind_and_merged():
    run, _ = await writer.create(new_run())
    writer.update(run.with_state("PENDING", "Pending", worker="w1"), "worker")
    writer.update(run.with_state("RUNNING", "Running", run_count=1), "run_count")
    await writer.flush()
    record = await TaskRunRecord.objects.aget(pk=run.id)
    assert (record.state_type, record.worker, record.run_count) == ("RUNNING", "w1", 1)


def _rename_table(old: str, new: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{old}" RENAME TO "{new}"')


class WriterLog(logging.Handler):
    """The records writer's log lines, as they come: a test waits for one instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._new = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._loop.call_soon_threadsafe(self._new.set)

    def count(self, text: str) -> int:
        return sum(text in message for message in self.messages)

    async def wait_for(self, text: str, times: int = 1, timeout: float = 5.0) -> None:
        """Until ``text`` has been logged ``times`` times; fails after ``timeout`` seconds."""
        deadline = self._loop.time() + timeout
        while True:
            self._new.clear()
            if self.count(text) >= times:
                return
            remaining = deadline - self._loop.time()
            assert remaining > 0, f"{text!r} not logged {times} times: {self.messages}"
            try:
                await asyncio.wait_for(self._new.wait(), remaining)
            except TimeoutError:
                pass


@pytest.fixture
async def writer_log():
    handler = WriterLog()
    logger = logging.getLogger("taskqueue_app.records")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


BATCH_REFUSED = "could not write a batch of run records"


async def test_a_state_change_the_database_refuses_is_tried_again(writer_log):
    run, _ = await writer.create(new_run())
    table = TaskRunRecord._meta.db_table
    gave_up = f"gave up on a state change of run {run.id}"
    await sync_to_async(_rename_table)(table, "away")  # the database refuses every write
    try:
        writer.update(run.with_state("COMPLETED", "Completed", result=5), "result")
        # Refused in its batch and then on its own, the change must go into a later batch: a
        # second refused batch is that retry (a change dropped after its first refusal leaves
        # nothing to write, so no second batch would ever come).
        await writer_log.wait_for(BATCH_REFUSED, times=2)
    finally:
        await sync_to_async(_rename_table)("away", table)
    await writer.flush()
    assert writer_log.count(gave_up) == 0
    record = await TaskRunRecord.objects.aget(pk=run.id)
    assert (record.state_type, record.result) == ("COMPLETED", 5)

    # Written at last, its refusals are forgotten: a later change of the same run that the
    # database refuses gets all MAX_UPDATE_ATTEMPTS tries again before the writer gives up on it
    # (and says so), and the record keeps what was written before.
    refused_before = writer_log.count(BATCH_REFUSED)
    await sync_to_async(_rename_table)(table, "away")
    try:
        writer.update(run.with_state("FAILED", "Failed"))
        await writer_log.wait_for(gave_up)
    finally:
        await sync_to_async(_rename_table)("away", table)
    assert writer_log.count(BATCH_REFUSED) - refused_before == MAX_UPDATE_ATTEMPTS
    await writer.flush()
    record = await TaskRunRecord.objects.aget(pk=run.id)
    assert (record.state_type, record.result) == ("COMPLETED", 5)

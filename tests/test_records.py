"""The records writer: group commits, idempotent creates, and a bad write isolated from the rest."""

import asyncio

import pytest

from taskqueue_app.models import TaskRunRecord
from taskqueue_app.records import writer
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


async def test_a_state_change_the_database_refuses_is_tried_again():
    from asgiref.sync import sync_to_async

    run, _ = await writer.create(new_run())
    table = TaskRunRecord._meta.db_table
    await sync_to_async(_rename_table)(table, "away")  # the database refuses every write
    try:
        writer.update(run.with_state("COMPLETED", "Completed", result=5), "result")
        for _ in range(400):  # until the writer has failed once (it runs in its own thread)
            if writer._attempts:
                break
            await asyncio.sleep(0.005)
        assert writer._attempts == {run.id: 1}
    finally:
        await sync_to_async(_rename_table)("away", table)
    await writer.flush()
    record = await TaskRunRecord.objects.aget(pk=run.id)
    assert (record.state_type, record.result) == ("COMPLETED", 5)
    assert writer._attempts == {}

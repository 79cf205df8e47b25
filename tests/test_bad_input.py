"""Input that JSON carries but a database cannot store is a 400 (never a 5xx), and backpressure
is a warning, not an error that would email the site's admins."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from django.test import AsyncClient

from taskqueue_app import lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import get_queues
from taskqueue_app.schemas import TaskRun
from taskqueue_app.testing import queue_row

RUNS = "/api/task_runs/"
pytestmark = pytest.mark.django_db(transaction=True)

# Raw JSON text: a lone surrogate and a NUL are both valid JSON escapes.
LONE_SURROGATE = '"\\ud800"'
NUL = '"a\\u0000b"'


async def post_raw(body: str):
    return await AsyncClient().post(RUNS, body, content_type="application/json")


@pytest.mark.parametrize("text", [LONE_SURROGATE, NUL], ids=["lone-surrogate", "nul"])
@pytest.mark.parametrize(
    ("template", "field"),
    [
        ('{"task_key": %s}', "task_key"),
        ('{"task_key": "k", "dynamic_key": %s}', "dynamic_key"),
        ('{"task_key": "k", "name": %s}', "name"),
        ('{"task_key": "k", "parameters": {"args": [%s]}}', "parameters"),
        ('{"task_key": "k", "parameters": {"kwargs": {%s: 1}}}', "parameters"),
    ],
    ids=["task_key", "dynamic_key", "name", "parameter", "parameter-name"],
)
async def test_unstorable_strings_are_400_naming_the_field_and_store_nothing(template, field, text):
    response = await post_raw(template % text)
    assert response.status_code == 400, response.content
    message = response.json()["error"]
    assert ("lone surrogate" in message) or ("NUL character" in message), message
    assert message.startswith(field), message
    assert await TaskRunRecord.objects.acount() == 0
    assert sum(r["scheduled_size"] for r in await get_queues().snapshot()) == 0


async def test_a_valid_astral_character_and_an_escaped_backslash_u0000_are_stored():
    body = {"task_key": "k", "parameters": {"args": ["😀", "\\u0000 as text"]}}
    response = await post_raw(json.dumps(body))
    assert response.status_code == 201, response.content
    record = await TaskRunRecord.objects.aget(pk=uuid.UUID(response.json()["id"]))
    assert record.parameters["args"] == ["😀", "\\u0000 as text"]


async def test_an_unstorable_result_fails_the_run_instead_of_losing_its_outcome():
    run, _ = await lifecycle.create({"task_key": "k"})
    claimed = await get_queues().claim("c1", ["k"])
    await lifecycle.start("c1", claimed.id, "w1")
    result = json.loads('{"text": "\\ud800"}')
    failed = await lifecycle.complete("c1", run.id, result, "w1")
    assert (failed.state_type, failed.error["type"]) == ("FAILED", lifecycle.UNSTORABLE_RESULT)
    assert "lone surrogate" in failed.error["message"]
    stored = await lifecycle.get(run.id)
    assert stored.state_type == "FAILED" and stored.result is None


async def test_an_error_report_with_unstorable_text_is_stored_with_it_replaced():
    run, _ = await lifecycle.create({"task_key": "k"})
    claimed = await get_queues().claim("c1", ["k"])
    await lifecycle.start("c1", claimed.id, "w1")
    error = {"type": "builtins.ValueError", "message": "bad\x00byte", "traceback": "\udc80"}
    await lifecycle.fail("c1", run.id, error, "w1")
    stored = await lifecycle.get(run.id)
    assert stored.state_type == "FAILED"
    assert stored.error["message"] == "bad\ufffdbyte"
    assert stored.error["traceback"] == "\ufffd"


async def test_a_full_queue_503_is_logged_as_a_warning_not_an_error(caplog):
    await get_queues().configure("k", scheduled_size=1)
    await get_queues().enqueue(TaskRun(task_key="k", dynamic_key="filler", name="k"))
    with caplog.at_level(logging.WARNING):
        response = await post_raw('{"task_key": "k"}')
    assert response.status_code == 503
    ours = [r for r in caplog.records if r.name == "taskqueue_app.views"]
    assert [r.levelno for r in ours] == [logging.WARNING]
    assert "503" in ours[0].getMessage() and "is full" in ours[0].getMessage()
    django_errors = [r for r in caplog.records if r.name == "django.request"]
    assert django_errors == []  # Django's ERROR would mail ADMINS for each refused producer
    assert (await queue_row("k"))["scheduled_size"] == 1

"""The run history's operator actions in the admin: retry, cancel and give back, from a run's
page and on a selection, for staff with their permission only, with CSRF.

The admin's views are sync and hand each action to the server's loop (``server.call``); here that
loop is the test's (``serving``), and the test client runs in another thread, as Daphne runs a
sync view, so the hop is the real one.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.test import Client

from taskqueue_app import admin_actions, lifecycle
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.queues import RETRY, get_queues
from taskqueue_app.schemas import TaskRun
from taskqueue_app.testing import claim, queued
from taskqueue_app.testing import queue_row as row
from tests.lifecycle_helpers import BOOM, make, recorded, running

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("serving")]

RUNS = "/admin/taskqueue_app/taskrunrecord/"


def page(run_id: uuid.UUID) -> str:
    return f"{RUNS}{run_id}/change/"


def button(run_id: uuid.UUID, operation: str) -> str:
    return f"{RUNS}{run_id}/operate/{operation}/"


def staff_client(django_user_model, name: str, *codenames: str, csrf: bool = False) -> Client:
    user = django_user_model.objects.create_user(name, password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(user)
    return client


@pytest.fixture
def operator(django_user_model) -> Client:
    """Staff who may view the runs and operate on them."""
    return staff_client(
        django_user_model, "operator", "view_taskrunrecord", "operate_taskrunrecord"
    )


@pytest.fixture
def viewer(django_user_model) -> Client:
    """Staff who may only view the runs."""
    return staff_client(django_user_model, "viewer", "view_taskrunrecord")


async def post(client: Client, path: str, data: dict | None = None, **extra):
    """POST from another thread (a sync view must not run in the server's loop), following
    the redirect to the page that shows the messages."""
    return await asyncio.to_thread(client.post, path, data or {}, follow=True, **extra)


async def get(client: Client, path: str, **params):
    return await asyncio.to_thread(client.get, path, params)


def said(response) -> list[tuple[str, str]]:
    """The (level, text) of every message the page shows."""
    return [(m.level_tag, m.message) for m in response.context["messages"]]


def bulk(action: str, *run_ids: uuid.UUID) -> dict:
    """The list's action form, as the browser sends it."""
    return {"action": action, "index": "0", "_selected_action": [str(i) for i in run_ids]}


async def failed(key: str = "k") -> TaskRun:
    run = await make(key)
    await claim(key, "c1")
    await lifecycle.start("c1", run.id, "w1")
    return await lifecycle.fail("c1", run.id, BOOM)


# -- retry ------------------------------------------------------------------------------------


async def test_retry_button_puts_a_failed_run_into_the_retry_lane(operator):
    run = await failed()
    response = await post(operator, button(run.id, "retry"))
    assert response.redirect_chain == [(page(run.id), 302)]
    assert said(response) == [("success", "Retried 1 run (now Scheduled (AwaitingRetry): 1).")]
    record = await recorded(run.id)
    assert (record.state_type, record.state_name) == ("SCHEDULED", "AwaitingRetry")
    assert (await row("k"))["retry_size"] == 1
    # The run's history says who did it.
    entry = await LogEntry.objects.select_related("user").aget(object_id=str(run.id))
    assert (entry.user.username, entry.get_change_message()) == (
        "operator",
        "Retried by an operator.",
    )


async def test_retry_of_a_run_that_has_not_finished_is_refused_with_the_reason(operator):
    run = await make()
    response = await post(operator, button(run.id, "retry"))
    [(level, text)] = said(response)
    assert level == "warning"
    assert text.startswith(f"Not retried: run {run.id} is SCHEDULED: only FAILED, CRASHED")
    assert (await recorded(run.id)).state_type == "SCHEDULED"
    assert not await LogEntry.objects.aexists()


async def test_retry_into_a_full_retry_lane_is_refused_and_the_run_stays_failed(operator):
    run = await failed("full")
    await get_queues().configure("full", retry_size=1)
    await get_queues().enqueue(TaskRun(task_key="full", dynamic_key="filler", name="f"), RETRY)
    response = await post(operator, button(run.id, "retry"))
    assert said(response) == [
        ("warning", f"Not retried: run {run.id}: the retry queue of 'full' is full")
    ]
    assert (await recorded(run.id)).state_type == "FAILED"


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_button_takes_a_queued_run_out_of_its_lane(operator):
    run = await make()
    other = await make()
    response = await post(operator, button(run.id, "cancel"))
    assert said(response) == [("success", "Cancelled 1 run (now Cancelled: 1).")]
    assert (await recorded(run.id)).state_type == "CANCELLED"
    assert (await recorded(other.id)).state_type == "SCHEDULED"
    assert await queued("k") == 1


async def test_cancel_of_a_running_run_tells_its_worker_and_says_it_waits_for_it(operator):
    run, heard = await running()
    response = await post(operator, button(run.id, "cancel"))
    [(level, text)] = said(response)
    assert level == "success"
    assert text == (
        "Cancelled 1 run (now Running (Cancelling): 1). "
        "A running run stays Cancelling until its worker confirms."
    )
    assert [json.loads(notice) for notice in heard] == [{"type": "cancel", "id": str(run.id)}]
    assert (await recorded(run.id)).state_name == "Cancelling"


async def test_cancel_of_a_finished_run_is_refused_with_the_reason(operator):
    run = await failed()
    response = await post(operator, button(run.id, "cancel"))
    assert said(response) == [
        (
            "warning",
            f"Not cancelled: run {run.id} is FAILED: it has already finished, so there is "
            "nothing to cancel",
        )
    ]
    assert (await recorded(run.id)).state_type == "FAILED"


# -- give back --------------------------------------------------------------------------------


async def test_give_back_of_a_run_whose_worker_vanished_crashes_it(operator):
    run, _ = await running()
    await get_queues().disconnect("c1")  # its process died: the copy is held, nobody listens
    response = await post(operator, button(run.id, "give_back"))
    assert said(response) == [("success", "Given back 1 run (now Crashed: 1).")]
    record = await recorded(run.id)
    assert record.state_type == "CRASHED"
    assert record.error["message"] == "given back by an operator: its worker was gone"
    assert await get_queues().find_held(run.id) is None


async def test_give_back_of_a_run_a_live_worker_holds_is_refused(operator):
    run, heard = await running()
    response = await post(operator, button(run.id, "give_back"))
    [(level, text)] = said(response)
    assert level == "warning"
    assert text == (
        f"Not given back: run {run.id} is held by a connected worker (w1); cancel it instead"
    )
    assert (await recorded(run.id)).state_type == "RUNNING" and heard == []


async def test_an_action_on_a_run_that_does_not_exist_says_so(operator):
    gone = uuid.uuid4()
    response = await post(operator, button(gone, "cancel"))
    assert response.redirect_chain == [(RUNS, 302)]
    assert said(response) == [("warning", f"Not cancelled: run {gone} no longer exists")]


# -- the buttons and the list's actions ---------------------------------------------------------


def buttons_on(html: str) -> list[str]:
    return re.findall(r'class="tq-operate tq-operate-(\w+)"', html)


async def test_a_run_page_offers_what_its_state_allows(operator):
    finished = await failed("a")
    waiting = await make("b")
    started, _ = await running("c")
    offered = {}
    for run in (finished, waiting, started):
        response = await get(operator, page(run.id))
        assert response.status_code == 200
        offered[run.state_type] = buttons_on(response.content.decode())
    assert offered == {
        "FAILED": ["retry"],
        "SCHEDULED": ["cancel"],
        "RUNNING": ["cancel", "give_back"],
    }
    html = (await get(operator, page(started.id))).content.decode()
    form = re.search(
        r'<form method="post" action="([^"]+)" class="tq-operate-form">(.*?)</form>', html
    )
    assert form.group(1) == button(started.id, "cancel")
    assert 'name="csrfmiddlewaretoken"' in form.group(2)


async def test_bulk_cancel_reports_successes_and_each_refusal(operator):
    first, second = await make(), await make()
    done = await failed("other")
    response = await post(operator, RUNS, bulk("cancel_runs", first.id, second.id, done.id))
    assert response.redirect_chain == [(RUNS, 302)]
    messages = said(response)
    assert messages[0] == ("success", "Cancelled 2 runs (now Cancelled: 2).")
    assert messages[1][0] == "warning" and len(messages) == 2
    assert messages[1][1].startswith(f"Not cancelled: run {done.id} is FAILED")
    states = {r.pk: r.state_type async for r in TaskRunRecord.objects.all()}
    assert states == {first.id: "CANCELLED", second.id: "CANCELLED", done.id: "FAILED"}
    assert await LogEntry.objects.acount() == 2


async def test_bulk_retry_and_give_back(operator):
    one, two = await failed("a"), await failed("b")
    response = await post(operator, RUNS, bulk("retry_runs", one.id, two.id))
    assert said(response) == [("success", "Retried 2 runs (now Scheduled (AwaitingRetry): 2).")]
    assert (await row("a"))["retry_size"] == (await row("b"))["retry_size"] == 1
    stranded, _ = await running("c")
    await get_queues().disconnect("c1")
    response = await post(operator, RUNS, bulk("give_back_runs", stranded.id))
    assert said(response) == [("success", "Given back 1 run (now Crashed: 1).")]


async def test_a_selection_over_the_limit_changes_nothing(operator, monkeypatch):
    monkeypatch.setattr(admin_actions, "MAX_SELECTED", 2)
    runs = [await make() for _ in range(3)]
    response = await post(operator, RUNS, bulk("cancel_runs", *(r.id for r in runs)))
    assert said(response) == [("error", "Select at most 2 runs at a time: nothing was cancelled.")]
    assert await queued("k") == 3


async def test_refusals_past_ten_are_counted_not_listed(operator):
    runs = [await failed(f"k{i}") for i in range(12)]
    response = await post(operator, RUNS, bulk("cancel_runs", *(r.id for r in runs)))
    messages = said(response)
    assert len(messages) == 11
    assert all(text.startswith("Not cancelled: run ") for _, text in messages[:10])
    assert messages[10] == ("warning", "2 more runs not cancelled.")


async def test_only_the_operator_actions_may_post(operator):
    run = await failed()
    for data in (bulk("delete_selected", run.id), {"name": "changed"}):
        response = await asyncio.to_thread(operator.post, RUNS, data)
        assert response.status_code == 405
    assert (await asyncio.to_thread(operator.get, button(run.id, "retry"))).status_code == 405
    assert (await asyncio.to_thread(operator.post, button(run.id, "delete"))).status_code == 404
    assert await TaskRunRecord.objects.filter(pk=run.id).aexists()
    assert (await recorded(run.id)).state_type == "FAILED"


# -- who may ----------------------------------------------------------------------------------


async def test_staff_without_the_permission_see_no_actions_and_get_403(viewer, operator):
    run, heard = await running()
    listing = (await get(viewer, RUNS)).content.decode()
    assert str(run.id).split("-")[0] in listing  # the run is listed...
    assert 'name="action"' not in listing and "action-checkbox" not in listing  # ...no actions
    assert buttons_on((await get(viewer, page(run.id))).content.decode()) == []
    for path, data in ((button(run.id, "cancel"), {}), (RUNS, bulk("cancel_runs", run.id))):
        response = await asyncio.to_thread(viewer.post, path, data)
        assert response.status_code == 403, path
    assert (await recorded(run.id)).state_name == "Running" and heard == []
    # The operator sees both.
    listing = (await get(operator, RUNS)).content.decode()
    assert '<option value="cancel_runs">Cancel selected task runs</option>' in listing
    assert buttons_on((await get(operator, page(run.id))).content.decode()) == [
        "cancel",
        "give_back",
    ]


async def test_the_permission_without_the_view_permission_is_not_enough(django_user_model):
    client = await asyncio.to_thread(
        staff_client, django_user_model, "blind", "operate_taskrunrecord"
    )
    run = await make()
    assert (await asyncio.to_thread(client.post, button(run.id, "cancel"))).status_code == 403
    assert (await recorded(run.id)).state_type == "SCHEDULED"


async def test_anonymous_posts_go_to_the_login_page(client):
    run = await make()
    for path, data in ((button(run.id, "cancel"), {}), (RUNS, bulk("cancel_runs", run.id))):
        response = await asyncio.to_thread(client.post, path, data)
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")
    assert (await recorded(run.id)).state_type == "SCHEDULED"


async def test_csrf_is_required(django_user_model):
    client = await asyncio.to_thread(
        staff_client,
        django_user_model,
        "careful",
        "view_taskrunrecord",
        "operate_taskrunrecord",
        csrf=True,
    )
    one, two = await make(), await make()
    for path, data in ((button(one.id, "cancel"), {}), (RUNS, bulk("cancel_runs", two.id))):
        response = await asyncio.to_thread(client.post, path, data)
        assert response.status_code == 403, path
        assert b"CSRF" in response.content
    assert await queued("k") == 2
    # With the token the page's form carries, the same POSTs go through.
    html = (await get(client, page(one.id))).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    response = await post(client, button(one.id, "cancel"), {"csrfmiddlewaretoken": token})
    assert said(response) == [("success", "Cancelled 1 run (now Cancelled: 1).")]
    data = {**bulk("cancel_runs", two.id), "csrfmiddlewaretoken": token}
    response = await post(client, RUNS, data)
    assert said(response) == [("success", "Cancelled 1 run (now Cancelled: 1).")]
    assert await queued("k") == 0

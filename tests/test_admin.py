"""The admin: dashboard permissions, read-only URLs, its numbers, and the run-record list."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import Permission
from django.urls import NoReverseMatch, reverse
from django.utils import formats, timezone

from taskqueue_app import dashboard, metrics, server
from taskqueue_app.admin import TaskKeyFilter
from taskqueue_app.models import StateType, TaskRunRecord
from taskqueue_app.queues import RETRY, SCHEDULED, get_queues
from taskqueue_app.schemas import TaskRun, now

pytestmark = pytest.mark.django_db

DASHBOARD = "/admin/taskqueue_app/queuedashboard/"
DATA = DASHBOARD + "data.json"
RUNS = "/admin/taskqueue_app/taskrunrecord/"


def make_run(key: str) -> TaskRun:
    return TaskRun(task_key=key, dynamic_key=f"{key}-{uuid.uuid4().hex}", name=key)


@pytest.fixture
def staff(django_user_model):
    """A staff user with no permission at all."""
    return django_user_model.objects.create_user("staff", password="pw", is_staff=True)


@pytest.fixture
def viewer(django_user_model):
    """A staff user allowed to view the dashboard (and nothing else)."""
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_queuedashboard"))
    return user


async def seed_queues() -> None:
    engine = get_queues()
    await engine.configure("emails.send", scheduled_size=50, retry_size=10)
    for _ in range(3):
        await engine.enqueue(make_run("emails.send"), SCHEDULED)
    await engine.enqueue(make_run("emails.send"), RETRY)
    for _ in range(2):
        await engine.enqueue(make_run("reports.build"), SCHEDULED)
    await engine.connect("conn-1", "worker-a", ["emails.send", "reports.build"])
    await engine.connect("conn-2", "worker-a", ["emails.send"])
    await engine.claim("conn-1", ["reports.build"])  # held by conn-1 from here on


@pytest.fixture
def queues():
    """Two keys with runs in both lanes, one configured, a worker holding one run."""
    async_to_sync(seed_queues)()


def workers_per_key() -> dict[str, int]:
    """Per key, the engine's connections subscribed to it, counted from the connections."""
    counts: dict[str, int] = {}
    for connection in async_to_sync(get_queues().connections)():
        for key in connection.task_keys:
            counts[key] = counts.get(key, 0) + 1
    return counts


# -- the admin index and permissions --------------------------------------------------------------


def test_index_links_to_the_dashboard_and_the_runs(admin_client):
    response = admin_client.get("/admin/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="{DASHBOARD}"' in html
    assert "Queue dashboard" in html
    assert f'href="{RUNS}"' in html
    # Read-only: no "Add" link for either model.
    assert f"{DASHBOARD}add/" not in html
    assert f"{RUNS}add/" not in html


@pytest.mark.parametrize("url", [DASHBOARD, DATA, RUNS])
def test_anonymous_users_go_to_the_login_page(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=")


@pytest.mark.parametrize("url", [DASHBOARD, DATA, RUNS])
def test_staff_without_the_permission_get_403(client, staff, url):
    client.force_login(staff)
    assert client.get(url).status_code == 403


def test_staff_with_the_view_permission_see_the_dashboard(client, viewer):
    client.force_login(viewer)
    assert client.get(DASHBOARD).status_code == 200
    assert client.get(DATA).status_code == 200
    # The dashboard permission does not open the run records.
    assert client.get(RUNS).status_code == 403


def test_superuser_sees_everything(admin_client):
    for url in (DASHBOARD, DATA, RUNS):
        assert admin_client.get(url).status_code == 200, url


# -- read-only ------------------------------------------------------------------------------------


def test_dashboard_has_no_add_change_or_delete(admin_client):
    for name in ("add", "change", "delete", "history"):
        with pytest.raises(NoReverseMatch):
            reverse(f"admin:taskqueue_app_queuedashboard_{name}", args=[] if name == "add" else [1])
    for url in (DASHBOARD + "add/", DASHBOARD + "1/change/", DASHBOARD + "1/delete/"):
        assert admin_client.get(url).status_code == 404, url
        assert admin_client.post(url).status_code == 404, url


@pytest.mark.parametrize("url", [DASHBOARD, DATA])
def test_posts_to_the_dashboard_are_refused(admin_client, url):
    response = admin_client.post(url, {"q": "x"})
    assert response.status_code == 405
    assert set(response["Allow"].split(", ")) == {"GET", "HEAD"}


def test_run_records_cannot_be_added_changed_or_deleted(admin_client):
    record = TaskRunRecord.objects.create(
        task_key="emails.send",
        dynamic_key="d1",
        name="send",
        state_timestamp=now(),
        created=now(),
        updated=now(),
    )
    change = f"{RUNS}{record.pk}/change/"
    delete = f"{RUNS}{record.pk}/delete/"
    assert admin_client.get(RUNS + "add/").status_code == 403
    assert admin_client.get(delete).status_code == 403
    for url in (RUNS, RUNS + "add/", change, delete, f"{RUNS}{record.pk}/history/"):
        assert admin_client.post(url, {"name": "changed"}).status_code == 405, url
    # The bulk delete action is not offered either.
    assert admin_client.post(
        RUNS, {"action": "delete_selected", "_selected_action": [record.pk]}
    ).status_code == (405)
    record.refresh_from_db()
    assert record.name == "send"
    page = admin_client.get(change)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="_save"' not in html
    assert "deletelink" not in html


# -- the numbers ----------------------------------------------------------------------------------


def test_json_numbers_equal_the_snapshot_and_the_connections(admin_client, queues):
    data = admin_client.get(DATA).json()
    snapshot = async_to_sync(get_queues().snapshot)()
    counts = workers_per_key()
    assert [row["task_key"] for row in data["queues"]] == [row["task_key"] for row in snapshot]
    for row, expected in zip(data["queues"], snapshot, strict=True):
        for field, value in expected.items():
            assert row[field] == value, (row["task_key"], field)
        assert row["workers"] == counts.get(row["task_key"], 0)
    emails, reports = data["queues"]
    assert (emails["scheduled_size"], emails["scheduled_limit"]) == (3, 50)
    assert (emails["retry_size"], emails["retry_limit"]) == (1, 10)
    assert emails["configured"] is True and emails["workers"] == 2
    assert emails["scheduled_pct"] == 6 and emails["retry_pct"] == 10
    assert (reports["scheduled_size"], reports["scheduled_limit"]) == (1, 1000)
    assert reports["configured"] is False and reports["held"] == 1 and reports["workers"] == 1
    assert data["totals"] == {
        "keys": 2,
        "scheduled_size": 4,
        "scheduled_limit": 1050,
        "retry_size": 1,
        "retry_limit": 110,
        "deferred": 0,
        "backlog": 0,
        "held": 1,
        "waiting": 1,  # claimed, not started
        "running": 0,
        "unserved": 0,
        "workers": 1,
        "connections": 2,
    }
    [worker] = data["workers"]
    assert worker["identifier"] == "worker-a"
    assert worker["task_keys"] == ["emails.send", "reports.build"]
    assert worker["connections"] == 2 and worker["held_count"] == 1
    (held,) = async_to_sync(get_queues().held)("conn-1")
    assert held.task_key == "reports.build"
    assert worker["held"] == [str(held.id)]


def test_page_shows_the_same_numbers(admin_client, queues):
    response = admin_client.get(DASHBOARD)
    assert response.status_code == 200
    assert [t.name for t in response.templates][0] == "admin/taskqueue_app/dashboard.html"
    html = response.content.decode()
    assert '<tr data-key="emails.send">' in html
    assert '<span class="tq-count">3 / 50</span>' in html
    assert '<span class="tq-count">1 / 10</span>' in html
    assert 'title="scheduled: 3 of 50 (6%)"' in html
    assert '<span class="tq-count">1 / 1000</span>' in html
    assert "<strong>configured</strong>" in html
    assert '<tr data-worker="worker-a">' in html
    assert 'data-total="waiting">1<' in html and 'data-total="running">0<' in html
    assert 'data-total="connections">2<' in html
    # Native admin page: breadcrumbs, the admin's stylesheet, no asset from elsewhere.
    assert '<div class="breadcrumbs">' in html
    assert "admin/css/base.css" in html
    assert "http://" not in html.replace('xmlns="http://', "") and "https://" not in html
    assert "taskqueue_app/dashboard.js" in html


def test_same_numbers_as_the_task_queues_api(admin_client, queues):
    # Both read the engine's snapshot, so comparing one with the other proves nothing: each is
    # held against what seed_queues put there, counted by hand.
    seeded = [
        {
            "task_key": "emails.send",
            "scheduled_size": 3,
            "scheduled_limit": 50,  # configured
            "retry_size": 1,
            "retry_limit": 10,
            "configured": True,
            "held": 0,
            "workers": 2,  # conn-1 and conn-2
        },
        {
            "task_key": "reports.build",
            "scheduled_size": 1,  # 2 enqueued, 1 claimed by conn-1
            "scheduled_limit": 1000,  # the defaults
            "retry_size": 0,
            "retry_limit": 100,
            "configured": False,
            "held": 1,
            "workers": 1,  # conn-1
        },
    ]
    fields = list(seeded[0])
    response = admin_client.get(reverse("taskqueue_app:task_queues"))
    assert response.status_code == 200
    api_rows = [{f: row[f] for f in fields} for row in response.json()]
    page_rows = [{f: row[f] for f in fields} for row in admin_client.get(DATA).json()["queues"]]
    assert api_rows == seeded
    assert page_rows == seeded


async def seed_every_place() -> None:
    """A run in every place a run can be: queued, deferred, backlogged, in a worker's hands
    (sent, not started), running; and a key with queued runs that no worker serves."""
    engine = get_queues()
    await engine.configure("emails.send", scheduled_size=1)
    await engine.connect("conn-1", "worker-a", ["emails.send"])
    for _ in range(3):
        await engine.admit(make_run("emails.send"), SCHEDULED)  # 1 in the lane, 2 in the backlog
    later = make_run("emails.send")
    later.expected_start_time = now() + timedelta(hours=1)
    await engine.admit(later, SCHEDULED)
    sent = await engine.claim("conn-1", ["emails.send"])  # the backlog moves one run in
    running = await engine.claim("conn-1", ["emails.send"])
    await engine.hold("conn-1", running.with_state(StateType.RUNNING, "Running"))
    assert sent.id != running.id
    for _ in range(2):
        await engine.enqueue(make_run("orphans.key"), RETRY)


def test_every_run_has_a_place_and_unserved_keys_are_marked(admin_client):
    async_to_sync(seed_every_place)()
    data = admin_client.get(DATA).json()
    emails, orphans = data["queues"]
    assert {f: emails[f] for f in ("scheduled_size", "backlog", "deferred", "held")} == {
        "scheduled_size": 1,
        "backlog": 0,
        "deferred": 1,
        "held": 2,
    }
    assert (emails["waiting"], emails["running"], emails["unserved"]) == (1, 1, False)
    assert (orphans["retry_size"], orphans["workers"], orphans["unserved"]) == (2, 0, True)
    totals = data["totals"]
    assert (totals["waiting"], totals["running"], totals["unserved"]) == (1, 1, 1)
    html = admin_client.get(DASHBOARD).content.decode()
    assert '<tr data-key="orphans.key" class="tq-unserved">' in html
    assert '<tr data-key="emails.send">' in html  # served: no mark
    assert html.count(">no worker</span>") == 1
    assert '<td class="tq-deferred">1</td>' in html
    assert '<td class="tq-waiting">1</td>' in html and '<td class="tq-running">1</td>' in html
    assert 'id="tq-unserved" class="tq-alert"' in html


def test_the_backlog_is_shown_while_a_full_lane_has_no_room(admin_client):
    async def seed():
        engine = get_queues()
        await engine.configure("tiny", scheduled_size=1)
        for _ in range(3):
            await engine.admit(make_run("tiny"), SCHEDULED)

    async_to_sync(seed)()
    [row] = admin_client.get(DATA).json()["queues"]
    assert (row["scheduled_size"], row["backlog"], row["unserved"]) == (1, 2, True)
    assert '<td class="tq-backlog">2</td>' in admin_client.get(DASHBOARD).content.decode()


def test_the_document_carries_this_process_counters_for_the_chart(admin_client):
    first = admin_client.get(DATA).json()["counters"]
    assert set(first) == {"time", "process", "enqueued", "finished"}
    metrics.enqueued(make_run("chart.key"))
    metrics.enqueued(make_run("chart.key"))
    metrics.finished(make_run("chart.key").with_state(StateType.COMPLETED, "Completed"))
    second = admin_client.get(DATA).json()["counters"]
    assert second["process"] == first["process"]
    assert second["time"] > first["time"]
    assert second["enqueued"] - first["enqueued"] == 2
    assert second["finished"] - first["finished"] == 1
    # The page embeds the counters it was rendered with: the script's first baseline.
    html = admin_client.get(DASHBOARD).content.decode()
    assert '<script id="tq-counters" type="application/json">' in html
    assert '<svg id="tq-chart"' in html


async def seed_a_thousand_keys() -> None:
    """Keys configured (so the empty ones are listed too), each with ``i % 7`` runs queued."""
    engine = get_queues()
    for i in range(1000):
        key = f"key-{i:04d}"
        await engine.configure(key)
        for _ in range(i % 7):
            await engine.enqueue(make_run(key), SCHEDULED)


def test_a_thousand_keys_are_paged_sorted_and_filtered(admin_client):
    async_to_sync(seed_a_thousand_keys)()
    data = admin_client.get(DATA).json()
    assert data["page"] == {"number": 1, "num_pages": 10, "per_page": 100, "count": 1000}
    assert data["totals"]["keys"] == 1000
    assert [row["task_key"] for row in data["queues"]][:2] == ["key-0000", "key-0001"]
    last = admin_client.get(DATA, {"p": 10}).json()
    assert last["queues"][-1]["task_key"] == "key-0999"
    deepest = admin_client.get(DATA, {"o": "-scheduled"}).json()["queues"]
    assert deepest[0]["task_key"] == "key-0006" and deepest[0]["scheduled_size"] == 6
    assert all(
        a["scheduled_size"] >= b["scheduled_size"]
        for a, b in zip(deepest, deepest[1:], strict=False)
    )
    by_fill = admin_client.get(DATA, {"o": "fill"}).json()["queues"]
    assert by_fill[0]["fill"] == 0.0
    filtered = admin_client.get(DATA, {"q": "KEY-099"}).json()
    assert [row["task_key"] for row in filtered["queues"]] == [
        f"key-{i:04d}" for i in range(990, 1000)
    ]
    assert filtered["page"]["count"] == 10 and filtered["totals"]["keys"] == 1000
    # The page itself renders one page of rows, with links to sort and to the next page.
    html = admin_client.get(DASHBOARD, {"o": "-fill"}).content.decode()
    assert html.count("<tr data-key=") == 100
    assert 'href="?o=-fill&amp;p=2"' in html
    assert 'href="?o=fill"' in html  # the sorted column flips direction


@pytest.mark.parametrize(
    "params, message",
    [
        ({"o": "depth"}, "o must be one of"),
        ({"p": "x"}, "p must be a page number"),
        ({"p": "0"}, "p must be 1 or more"),
    ],
)
def test_bad_query_parameters_are_named(admin_client, params, message):
    response = admin_client.get(DATA, params)
    assert response.status_code == 400
    assert message in response.json()["error"]
    page = admin_client.get(DASHBOARD, params)
    assert page.status_code == 400
    assert message in page.content.decode()


def test_a_page_past_the_end_shows_the_last_page(admin_client, queues):
    data = admin_client.get(DATA, {"p": 5}).json()
    assert data["page"]["number"] == 1 and len(data["queues"]) == 2


@pytest.mark.django_db(transaction=True)
async def test_state_is_read_in_the_server_loop_from_another_thread(monkeypatch):
    """A sync admin view runs in a worker thread: the copy must be taken in the loop's thread."""
    await server.ensure_started()
    await get_queues().enqueue(make_run("emails.send"), SCHEDULED)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    collect = dashboard.collect

    async def recording_collect():
        seen.append(threading.get_ident())
        return await collect()

    monkeypatch.setattr(dashboard, "collect", recording_collect)
    state = await asyncio.to_thread(dashboard.read_state)
    assert seen == [loop_thread]
    assert state["queues"][0]["scheduled_size"] == 1
    # Called from the loop's own thread it refuses: waiting there would block the server.
    with pytest.raises(RuntimeError, match="would block the server's event loop"):
        dashboard.read_state()
    assert seen == [loop_thread]


# -- run records ----------------------------------------------------------------------------------


def _records(count: int, **overrides) -> list[TaskRunRecord]:
    start = now() - timedelta(hours=1)
    states = list(StateType)
    records = []
    for i in range(count):
        stamp = start + timedelta(seconds=i)
        fields = {
            "task_key": f"key-{i % 20:02d}",
            "dynamic_key": f"d-{i}",
            "name": f"job-{i}",
            "parameters": {"args": [i], "kwargs": {}},
            "state_type": states[i % len(states)],
            "state_name": states[i % len(states)].label,
            "state_timestamp": stamp,
            "created": stamp,
            "updated": stamp,
            **overrides,
        }
        records.append(TaskRunRecord(**fields))
    return TaskRunRecord.objects.bulk_create(records)


def test_run_list_is_a_constant_number_of_queries(admin_client, django_assert_max_num_queries):
    _records(2000)
    admin_client.get(RUNS)  # warm the session and content types caches
    with django_assert_max_num_queries(8):
        response = admin_client.get(RUNS)
    assert response.status_code == 200
    html = response.content.decode()
    # A superuser may operate on runs: the selection column is there (one box a row).
    assert html.count('<tr><td class="action-checkbox">') == 100
    assert html.count("job-") >= 100
    # Newest first.
    assert html.index("job-1999") < html.index("job-1998")
    with django_assert_max_num_queries(8):
        filtered = admin_client.get(RUNS, {"state_type__exact": "FAILED", "task_key": "key-04"})
    assert filtered.status_code == 200
    assert filtered.context["cl"].result_count == 15  # i = 4 (mod 140): FAILED and key-04
    assert "job-1964" in filtered.content.decode()
    with django_assert_max_num_queries(8):
        searched = admin_client.get(RUNS, {"q": "job-1234"})
    assert "job-1234" in searched.content.decode()


def test_task_key_filter_offers_distinct_keys(admin_client):
    _records(60)
    response = admin_client.get(RUNS)
    filter_spec = [
        spec for spec in response.context["cl"].filter_specs if isinstance(spec, TaskKeyFilter)
    ][0]
    assert [value for value, _ in filter_spec.lookup_choices] == [f"key-{i:02d}" for i in range(20)]
    only = admin_client.get(RUNS, {"task_key": "key-03"})
    assert only.context["cl"].result_count == 3


def test_search_by_id(admin_client):
    [record, *_] = _records(3)
    response = admin_client.get(RUNS, {"q": str(record.pk)})
    assert response.context["cl"].result_count == 1


def test_run_detail_shows_json_and_the_traceback(admin_client):
    [record] = _records(
        1,
        state_type=StateType.FAILED,
        state_name="Failed",
        parameters={"args": [1, 2], "kwargs": {"to": "a@example.com"}},
        result={"answer": 42},
        error={"type": "ValueError", "message": "bad <input>", "traceback": "Traceback:\n  x < y"},
        run_count=2,
        retries=1,
    )
    response = admin_client.get(f"{RUNS}{record.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<pre class="tq-json">{\n  &quot;args&quot;: [\n    1,\n    2\n  ],' in html
    assert "&quot;answer&quot;: 42" in html
    assert "ValueError: bad &lt;input&gt;" in html
    assert '<pre class="tq-traceback">Traceback:\n  x &lt; y</pre>' in html
    assert "taskqueue_app/dashboard.css" in html


def test_run_list_shows_the_state_once_and_worker_ids_cut_short(admin_client):
    worker = "build-host-17.example.com-4242-0f0e0d0c0b0a"
    [plain] = _records(1, state_type=StateType.FAILED, state_name="Failed", worker=worker)
    [named] = _records(
        1, dynamic_key="d-named", state_type=StateType.RUNNING, state_name="Cancelling"
    )
    html = admin_client.get(RUNS).content.decode()
    # One state column: no separate state_name column any more.
    assert "column-state_name" not in html and "column-state_type" not in html
    assert '<span class="tq-state tq-state-failed">Failed</span>' in html
    assert (
        '<span class="tq-state tq-state-running">Running '
        '<span class="tq-state-name">(Cancelling)</span></span>'
    ) in html
    # The whole id is the title; the cell shows its start and its end (pid, random part).
    assert f'<span class="tq-worker" title="{worker}">build-h…0d0c0b0a</span>' in html
    assert plain.pk != named.pk


def test_run_page_shows_the_expected_start_time_the_api_gives(admin_client):
    [record] = _records(1)  # created without an expected start time: due when created
    assert record.expected_start_time is None
    html = admin_client.get(f"{RUNS}{record.pk}/change/").content.decode()
    shown = re.search(r'field-expected_start.*?<div class="readonly">([^<]+)</div>', html, re.S)
    created = re.search(r'field-created.*?<div class="readonly">([^<]+)</div>', html, re.S)
    assert shown and created and shown.group(1) == created.group(1) != "-"
    api = admin_client.get(reverse("taskqueue_app:task_run_detail", args=[record.pk])).json()
    assert api["expected_start_time"] == api["created"]
    # Deferred: its own time, not the creation.
    later = record.created + timedelta(days=3)
    TaskRunRecord.objects.filter(pk=record.pk).update(expected_start_time=later)
    html = admin_client.get(f"{RUNS}{record.pk}/change/").content.decode()
    shown = re.search(r'field-expected_start.*?<div class="readonly">([^<]+)</div>', html, re.S)
    assert shown.group(1) == formats.localize(timezone.template_localtime(later))

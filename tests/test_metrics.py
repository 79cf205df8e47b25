"""``GET /api/metrics`` (DESIGN §12): Prometheus text, read back with prometheus_client's own
parser. Counters are process-wide, so each test compares readings before and after."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from django.test import AsyncClient, override_settings
from prometheus_client.parser import text_string_to_metric_families

from project.asgi import application
from taskqueue_app import actions, lifecycle
from taskqueue_app.queues import get_queues
from taskqueue_app.schemas import now
from taskqueue_app.testing import claim, subscriber
from tests.lifecycle_helpers import BOOM, make
from tests.test_views import logged_in

pytestmark = pytest.mark.django_db(transaction=True)

METRICS = "/api/metrics"
TOKEN = "metrics-token"
WAIT = 3


async def scrape(client: AsyncClient | None = None, **headers) -> dict[tuple, float]:
    """Every sample as ``(name, ((label, value), ...)) -> value``."""
    response = await (client or AsyncClient()).get(METRICS, headers=headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@override_settings(TASKQUEUE={"KEYS": {"configured.key": {"scheduled_size": 7, "retry_size": 2}}})
async def test_every_configured_key_has_its_series_at_zero():
    samples = await scrape()
    key = {"key": "configured.key"}
    assert value(samples, "taskqueue_queue_capacity", lane="scheduled", **key) == 7
    assert value(samples, "taskqueue_queue_capacity", lane="retry", **key) == 2
    for name, labels in [
        ("taskqueue_queue_depth", {"lane": "scheduled"}),
        ("taskqueue_queue_oldest_age_seconds", {"lane": "retry"}),
        ("taskqueue_deferred_runs", {}),
        ("taskqueue_runs_in_flight", {"state": "running"}),
        ("taskqueue_runs_enqueued_total", {}),
        ("taskqueue_runs_finished_total", {"state": "failed"}),
        ("taskqueue_runs_rejected_total", {"reason": "queue_full"}),
    ]:
        assert (name, tuple(sorted({**key, **labels}.items()))) in samples, name
        assert value(samples, name, **key, **labels) == 0
    assert value(samples, "taskqueue_build_info", version="0.1.0", queue_backend="memory") == 1


async def test_gauges_show_depth_age_deferred_in_flight_and_workers():
    old = await make("g")
    await make("g")
    await make("g", expected_start_time=(now() + timedelta(hours=1)).isoformat())
    queues = get_queues()
    await queues.connect("c1", "w1", ["g"])
    sent = await claim("g", "c1")
    samples = await scrape()
    g = {"key": "g"}
    assert value(samples, "taskqueue_queue_depth", lane="scheduled", **g) == 1
    assert value(samples, "taskqueue_deferred_runs", **g) == 1
    assert value(samples, "taskqueue_runs_in_flight", state="sent", **g) == 1
    assert value(samples, "taskqueue_runs_in_flight", state="running", **g) == 0
    assert value(samples, "taskqueue_worker_subscriptions", **g) == 1
    assert value(samples, "taskqueue_workers_connected") == 1
    age = value(samples, "taskqueue_queue_oldest_age_seconds", lane="scheduled", **g)
    assert 0 < age < (now() - old.created).total_seconds() + 1
    await lifecycle.start("c1", sent.id, "w1")
    samples = await scrape()
    assert value(samples, "taskqueue_runs_in_flight", state="running", **g) == 1
    assert value(samples, "taskqueue_runs_in_flight", state="sent", **g) == 0


async def test_counters_and_histograms_follow_a_run_through_its_life():
    before = await scrape()
    run = await make("life", empirical_policy={"retries": 1})
    await claim("life", "c1")
    await lifecycle.start("c1", run.id, "w1")
    await lifecycle.fail("c1", run.id, BOOM)  # retried
    await claim("life", "c2")
    await lifecycle.start("c2", run.id, "w1")
    await lifecycle.complete("c2", run.id, 1)
    other = await make("life")
    await actions.cancel(other.id)
    after = await scrape()
    life = {"key": "life"}
    assert delta(before, after, "taskqueue_runs_enqueued_total", **life) == 2
    assert delta(before, after, "taskqueue_runs_started_total", **life) == 2
    assert delta(before, after, "taskqueue_runs_retried_total", reason="failed", **life) == 1
    assert delta(before, after, "taskqueue_runs_finished_total", state="completed", **life) == 1
    assert delta(before, after, "taskqueue_runs_finished_total", state="cancelled", **life) == 1
    assert delta(before, after, "taskqueue_run_queue_wait_seconds_count", **life) == 2
    # A wait of a few milliseconds lands in the sub-second buckets.
    assert delta(before, after, "taskqueue_run_queue_wait_seconds_bucket", le="1.0", **life) == 2
    assert (
        delta(before, after, "taskqueue_run_duration_seconds_count", state="completed", **life) == 1
    )


async def test_a_worker_that_disconnects_redelivers_and_a_hand_retry_counts_as_manual():
    before = await scrape()
    await make("gone")
    await claim("gone", "c1")
    await lifecycle.disconnect("c1")
    failed = await make("gone2")
    await claim("gone2", "c2")
    await lifecycle.start("c2", failed.id, "w")
    await lifecycle.fail("c2", failed.id, BOOM)
    await actions.retry(failed.id)
    after = await scrape()
    assert delta(before, after, "taskqueue_runs_redelivered_total", key="gone") == 1
    assert delta(before, after, "taskqueue_runs_retried_total", key="gone2", reason="manual") == 1
    assert delta(before, after, "taskqueue_runs_finished_total", key="gone2", state="failed") == 1


async def test_refused_creates_are_counted_by_reason():
    client = AsyncClient()
    before = await scrape()
    await get_queues().configure("tight", scheduled_size=1)
    body = json.dumps({"task_key": "tight"})
    assert (
        await client.post("/api/task_runs/", body, content_type="application/json")
    ).status_code == 201
    assert (
        await client.post("/api/task_runs/", body, content_type="application/json")
    ).status_code == 503
    bad = await client.post("/api/task_runs/", "{nope", content_type="application/json")
    assert bad.status_code == 400
    with override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 300}):
        huge = json.dumps({"task_key": "k", "parameters": {"x": "y" * 400}})
        assert (
            await client.post("/api/task_runs/", huge, content_type="application/json")
        ).status_code == 413
    # A batch refused as a whole: not a list, and over its bound.
    batch = "/api/task_runs/batch"
    assert (await client.post(batch, "{}", content_type="application/json")).status_code == 400
    many = json.dumps([{"task_key": "k"}] * 1001)
    assert (await client.post(batch, many, content_type="application/json")).status_code == 413
    after = await scrape()
    assert (
        delta(before, after, "taskqueue_runs_rejected_total", key="tight", reason="queue_full") == 1
    )
    assert delta(before, after, "taskqueue_runs_rejected_total", key="", reason="invalid") == 2
    assert delta(before, after, "taskqueue_runs_rejected_total", key="", reason="too_large") == 2


@pytest.mark.usefixtures("serving")
async def test_the_delivery_to_ack_time_is_observed_per_key():
    before = await scrape()
    run, other = await make("acked"), await make("acked")
    comm = await subscriber(application, ["acked"], "w1", reports_outcomes=True, prefetch=2)
    assert {(await comm.receive_json_from(WAIT))["id"] for _ in range(2)} == {
        str(run.id),
        str(other.id),
    }
    await comm.send_json_to({"type": "ack", "id": str(run.id)})
    await comm.send_json_to({"type": "started", "id": str(run.id)})
    assert (await comm.receive_json_from(WAIT))["of"] == "started"  # the ack is handled first
    await comm.send_json_to({"type": "started", "id": str(other.id)})  # acks it too
    assert (await comm.receive_json_from(WAIT))["of"] == "started"
    after = await scrape()
    assert delta(before, after, "taskqueue_delivery_ack_seconds_count", key="acked") == 2
    await comm.disconnect()


@override_settings(TASKQUEUE={"AUTH_TOKEN": TOKEN})
async def test_metrics_ask_for_the_token_or_a_staff_session_with_the_dashboard_permission():
    anonymous = await AsyncClient().get(METRICS)
    assert anonymous.status_code == 401
    wrong = await AsyncClient().get(METRICS, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    samples = await scrape(Authorization=f"Bearer {TOKEN}")
    assert value(samples, "taskqueue_runs_rejected_total", key="", reason="unauthorized") >= 2
    staff = await logged_in(True, "view_queuedashboard")
    assert "taskqueue_workers_connected" in {name for name, _ in await scrape(staff)}
    no_permission = await logged_in(True)
    assert (await no_permission.get(METRICS)).status_code == 401
    assert (
        await AsyncClient().post(METRICS, headers={"Authorization": f"Bearer {TOKEN}"})
    ).status_code == 405


async def test_no_label_is_a_run_or_worker_id():
    run = await make("ids")
    await claim("ids", "c1")
    await lifecycle.start("c1", run.id, "worker-with-a-name")
    for (_, labels), _value in (await scrape()).items():
        for _label, text in labels:
            assert str(run.id) not in text and "worker-with-a-name" not in text
            with pytest.raises(ValueError):
                uuid.UUID(text)

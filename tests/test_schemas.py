"""The run value object, its JSON form, and validation of producer input."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from taskqueue_app.inputs import run_from_request
from taskqueue_app.models import StateType, TaskRunRecord
from taskqueue_app.schemas import (
    TaskRun,
    ValidationError,
    isoformat,
    parse_datetime,
    parse_uuid,
)


def test_defaults_of_a_minimal_request():
    run = run_from_request({"task_key": "emails.send"})
    assert isinstance(run.id, uuid.UUID)
    assert run.dynamic_key.startswith("emails.send-")
    assert len(run.dynamic_key) == len("emails.send-") + 32
    assert run.name == "send"
    assert run.parameters == {}
    assert (run.state_type, run.state_name) == ("SCHEDULED", "Scheduled")
    assert (run.run_count, run.retries, run.retry_delay_seconds) == (0, 0, 0.0)
    assert run.expected_start_time is None
    assert not run.is_retry


def test_given_fields_are_kept():
    run_id = uuid.uuid4()
    run = run_from_request(
        {
            "id": str(run_id),
            "task_key": "k",
            "dynamic_key": "d",
            "name": "nice name",
            "parameters": {"args": [1, "two"], "kwargs": {"x": None}},
            "state": {"type": "SCHEDULED", "name": "Scheduled"},
            "empirical_policy": {"retries": 3, "retry_delay_seconds": 1.5},
            "expected_start_time": "2030-01-02T03:04:05+02:00",
        }
    )
    assert (run.id, run.dynamic_key, run.name) == (run_id, "d", "nice name")
    assert run.parameters == {"args": [1, "two"], "kwargs": {"x": None}}
    assert (run.retries, run.retry_delay_seconds) == (3, 1.5)
    assert run.expected_start_time == datetime(2030, 1, 2, 1, 4, 5, tzinfo=UTC)


def test_json_form_has_the_design_fields_with_utc_z_datetimes():
    run = run_from_request({"task_key": "a.b", "empirical_policy": {"retries": 1}})
    data = json.loads(run.to_json())
    for field in (
        "id",
        "task_key",
        "dynamic_key",
        "name",
        "parameters",
        "state",
        "state_type",
        "state_name",
        "run_count",
        "empirical_policy",
        "created",
        "expected_start_time",
    ):
        assert field in data, field
    assert data["id"] == str(run.id)
    assert data["state"]["type"] == data["state_type"] == "SCHEDULED"
    assert data["state"]["name"] == data["state_name"] == "Scheduled"
    assert data["state"]["state_details"] == {"deferred": True}
    assert data["empirical_policy"] == {"retries": 1, "retry_delay_seconds": 0.0}
    assert data["created"].endswith("Z") and "+00:00" not in data["created"]
    # No start time given: the run is due at its creation.
    assert data["expected_start_time"] == data["created"]
    assert data == run.to_dict()


def test_record_round_trip_keeps_every_field():
    run = run_from_request(
        {
            "task_key": "k",
            "parameters": {"a": [1, {"b": 2}]},
            "expected_start_time": "2031-05-06T07:08:09Z",
        }
    )
    back = TaskRun.from_record(TaskRunRecord(**run.record_fields()))
    assert back.to_dict() == run.to_dict()


def test_with_state_is_a_stamped_copy():
    run = run_from_request({"task_key": "k"})
    pending = run.with_state(StateType.PENDING, "Pending", worker="w1")
    assert (run.state_type, run.worker) == ("SCHEDULED", "")
    assert (pending.state_type, pending.state_name, pending.worker) == ("PENDING", "Pending", "w1")
    assert pending.id == run.id
    assert pending.updated is not None and pending.state_timestamp >= run.state_timestamp
    retry = run.with_state(StateType.SCHEDULED, "AwaitingRetry")
    assert retry.is_retry and not pending.is_retry


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("k", "the request body must be a JSON object"),
        ({"name": "x"}, "task_key is required"),
        ({"task_key": None}, "task_key must be a non-empty string of at most 200 characters"),
        ({"task_key": "k", "dynamic_key": ""}, "dynamic_key must be a non-empty string"),
        ({"task_key": "k", "name": 5}, "name must be a non-empty string of at most 255"),
        ({"task_key": "k", "parameters": None}, "parameters must be a JSON object"),
        ({"task_key": "k", "empirical_policy": []}, "empirical_policy must be a JSON object"),
        (
            {"task_key": "k", "empirical_policy": {"retries": 1, "backoff": 2}},
            "empirical_policy has unknown field(s): backoff",
        ),
        ({"task_key": "k", "empirical_policy": {"retries": 1.5}}, "empirical_policy.retries"),
        ({"task_key": "k", "empirical_policy": {"retries": True}}, "empirical_policy.retries"),
        (
            {"task_key": "k", "empirical_policy": {"retries": 3_000_000_000}},
            "empirical_policy.retries must be at most 2147483647, not 3000000000",
        ),
        (
            {"task_key": "k", "expected_start_time": "9999-12-31T23:59:59-05:00"},
            "expected_start_time is out of range: '9999-12-31T23:59:59-05:00'",
        ),
        (
            {"task_key": "k", "expected_start_time": "0001-01-01T00:00:00+05:00"},
            "expected_start_time is out of range",
        ),
        (
            {"task_key": "k", "empirical_policy": {"retry_delay_seconds": -1}},
            "empirical_policy.retry_delay_seconds must be a non-negative number",
        ),
        (
            {"task_key": "k", "empirical_policy": {"retry_delay_seconds": float("inf")}},
            "empirical_policy.retry_delay_seconds must be a finite number",
        ),
        ({"task_key": "k", "state": "SCHEDULED"}, "state must be a JSON object"),
        ({"task_key": "k", "state": {"type": "PENDING"}}, "state.type must be SCHEDULED"),
        ({"task_key": "k", "expected_start_time": 5}, "expected_start_time must be an ISO-8601"),
        ({"task_key": "k", "id": 5}, "id must be a UUID string"),
        ({"task_key": "k", "flow_run": 1, "tags": []}, "unknown field(s): flow_run, tags"),
        (
            {"task_key": "k", "parameters": {"when": datetime(2030, 1, 1)}},
            "parameters must be JSON-serializable",
        ),
        (
            {"task_key": "k", "parameters": {"x": float("nan")}},
            "parameters must be JSON-serializable",
        ),
    ],
)
def test_each_problem_has_one_clear_message(data, message):
    with pytest.raises(ValidationError) as caught:
        run_from_request(data)
    assert message in str(caught.value)


def test_parse_uuid():
    value = uuid.uuid4()
    assert parse_uuid(str(value)) == value
    assert parse_uuid(value) is value
    with pytest.raises(ValidationError, match="run_id must be a UUID string, not 'x'"):
        parse_uuid("x", "run_id")


def test_datetimes_are_utc_and_written_with_z():
    assert parse_datetime("2030-01-01T00:00:00", "t") == datetime(2030, 1, 1, tzinfo=UTC)
    assert parse_datetime("2030-01-01T01:00:00+01:00", "t") == datetime(2030, 1, 1, tzinfo=UTC)
    moment = datetime(2030, 1, 1, 12, tzinfo=timezone(timedelta(hours=-5)))
    assert isoformat(moment) == "2030-01-01T17:00:00Z"
    assert isoformat(None) is None

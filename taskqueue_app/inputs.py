"""What producers send, checked field by field and made into a ``TaskRun``: every refusal is a
``ValidationError`` whose message names the field and says what is wrong."""

from __future__ import annotations

import math
import uuid
from typing import Any

from .errors import TooLargeError, ValidationError
from .schemas import (
    BACKEND_MAX,
    DEFAULT_QUEUE,
    DYNAMIC_KEY_MAX,
    NAME_MAX,
    QUEUE_NAME_MAX,
    TASK_KEY_MAX,
    TaskRun,
    now,
    parse_datetime,
    parse_uuid,
)
from .states import StateType
from .storable import check_storable

__all__ = ["CREATE_FIELDS", "INT_MAX", "check_encodable", "run_from_request"]

# Fields a producer may send when creating a run; anything else is refused by name.
CREATE_FIELDS = frozenset(
    {
        "id",
        "task_key",
        "dynamic_key",
        "name",
        "parameters",
        "state",
        "empirical_policy",
        "expected_start_time",
        "priority",
        # What the Tasks framework knows of the run's task, kept and returned as sent.
        "queue_name",
        "backend",
        "run_after",
    }
)
PRIORITY_MIN, PRIORITY_MAX = -100, 100
POLICY_FIELDS = frozenset({"retries", "retry_delay_seconds"})


def _require_object(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise ValidationError(f"{name} must be a JSON object")
    return value


# The largest integer every database stores in an integer column (PostgreSQL's ``integer``).
INT_MAX = 2**31 - 1


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(f"{name} must be a non-negative integer")
    if value > INT_MAX:
        raise ValidationError(f"{name} must be at most {INT_MAX}, not {value}")
    return value


def _non_negative_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValidationError(f"{name} must be a non-negative number")
    if not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number")
    return float(value)


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"priority must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(
            f"priority must be from {PRIORITY_MIN} to {PRIORITY_MAX}, not {value}"
        )
    return value


def _bounded_string(value: Any, name: str, maximum: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= maximum:
        raise ValidationError(f"{name} must be a non-empty string of at most {maximum} characters")
    return value


def check_encodable(run: TaskRun, max_bytes: int | None = None) -> None:
    """Raise unless ``run`` has a JSON form (Python callers may pass any parameters) of at most
    ``max_bytes``; a run accepted but too large to send would bounce off every worker."""
    try:
        encoded = run.to_json(allow_nan=False)  # kept: the run is never encoded twice
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"parameters must be JSON-serializable: {exc}") from None
    # ensure_ascii (the default) makes the length of the text its length in bytes.
    if max_bytes is not None and len(encoded) > max_bytes:
        raise TooLargeError(
            f"the run's JSON would be {len(encoded)} bytes, over MAX_MESSAGE_BYTES ({max_bytes})"
        )
    for name in ("task_key", "dynamic_key", "name", "parameters", "queue_name", "backend"):
        check_storable(getattr(run, name), name)


def run_from_request(data: Any, max_bytes: int | None = None) -> TaskRun:
    """Validate a producer's create request and build the new run; one message per problem.

    With ``max_bytes``, a run whose JSON form would be larger raises ``TooLargeError``.
    """
    data = _require_object(data, "the request body")
    unknown = sorted(set(data) - CREATE_FIELDS)
    if unknown:
        raise ValidationError(
            f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(CREATE_FIELDS))}"
        )
    if "task_key" not in data:
        raise ValidationError("task_key is required")
    task_key = _bounded_string(data["task_key"], "task_key", TASK_KEY_MAX)
    run_id = parse_uuid(data["id"]) if data.get("id") is not None else uuid.uuid4()
    dynamic_key = (
        _bounded_string(data["dynamic_key"], "dynamic_key", DYNAMIC_KEY_MAX)
        if data.get("dynamic_key") is not None
        else f"{task_key}-{uuid.uuid4().hex}"
    )
    name = (
        _bounded_string(data["name"], "name", NAME_MAX)
        if data.get("name") is not None
        else task_key.rsplit(".", 1)[-1][:NAME_MAX]
    )
    parameters = _require_object(data.get("parameters", {}), "parameters")
    # Only null means "absent": a falsy value of the wrong type ([], "", 0) is still wrong.
    policy = data.get("empirical_policy")
    policy = _require_object({} if policy is None else policy, "empirical_policy")
    unknown_policy = sorted(set(policy) - POLICY_FIELDS)
    if unknown_policy:
        raise ValidationError(f"empirical_policy has unknown field(s): {', '.join(unknown_policy)}")
    retries = policy.get("retries")
    retries = _non_negative_int(0 if retries is None else retries, "empirical_policy.retries")
    delay = policy.get("retry_delay_seconds")
    delay = _non_negative_number(
        0 if delay is None else delay, "empirical_policy.retry_delay_seconds"
    )
    if data.get("state") is not None:
        state = _require_object(data["state"], "state")
        state_type = state.get("type", StateType.SCHEDULED.value)
        if state_type not in set(StateType):
            raise ValidationError(
                f"state.type {state_type!r} is not a state; one of: {', '.join(StateType)}"
            )
        if state_type != StateType.SCHEDULED:
            raise ValidationError("state.type must be SCHEDULED for a new run")
    priority = data.get("priority")
    priority = 0 if priority is None else _priority(priority)
    queue_name = data.get("queue_name")
    if queue_name is not None:
        queue_name = _bounded_string(queue_name, "queue_name", QUEUE_NAME_MAX)
    backend = data.get("backend")
    backend = "" if backend is None else _bounded_string(backend, "backend", BACKEND_MAX)
    run_after = data.get("run_after")
    run_after = parse_datetime(run_after, "run_after") if run_after is not None else None
    # A run_after alone defers the run too: it is the earliest the run may start.
    expected = data.get("expected_start_time")
    expected = parse_datetime(expected, "expected_start_time") if expected is not None else None
    created = now()
    run = TaskRun(
        id=run_id,
        task_key=task_key,
        dynamic_key=dynamic_key,
        name=name,
        parameters=parameters,
        priority=priority,
        retries=retries,
        retry_delay_seconds=delay,
        created=created,
        updated=created,
        state_timestamp=created,
        expected_start_time=run_after if expected is None else expected,
        queue_name=queue_name or DEFAULT_QUEUE,
        backend=backend,
        run_after=run_after,
    )
    check_encodable(run, max_bytes)
    return run

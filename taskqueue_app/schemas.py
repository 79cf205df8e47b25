"""The task-run value object and its JSON form (what producers send is checked in ``inputs``)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from .errors import TooLargeError, ValidationError
from .states import CANCELLING, StateType
from .storable import check_storable, storable_copy

__all__ = [
    "DEFAULT_QUEUE",
    "RECORD_FIELDS",
    "TaskRun",
    "TooLargeError",
    "ValidationError",
    "check_storable",
    "isoformat",
    "now",
    "parse_datetime",
    "parse_uuid",
    "storable_copy",
]

TASK_KEY_MAX = 200
DYNAMIC_KEY_MAX = 255
NAME_MAX = 255
QUEUE_NAME_MAX = BACKEND_MAX = 100
DEFAULT_QUEUE = "default"  # the Tasks framework's DEFAULT_TASK_QUEUE_NAME


def now() -> datetime:
    return datetime.now(UTC)


def isoformat(value: datetime | None) -> str | None:
    """ISO-8601 in UTC with a ``Z``, as Prefect writes it."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_datetime(value: Any, name: str) -> datetime:
    """An aware UTC datetime from an ISO-8601 string; naive input is taken as UTC."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be an ISO-8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"{name} must be an ISO-8601 date-time string, not {value!r}"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59-05:00 is past the last date Python can hold
        raise ValidationError(f"{name} is out of range: {value!r}") from None


def parse_uuid(value: Any, name: str = "id") -> uuid.UUID:
    """A UUID from its string form, or a ``ValidationError`` naming the field."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a UUID string")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ValidationError(f"{name} must be a UUID string, not {value!r}") from None


@dataclass(slots=True, eq=False)
class TaskRun:
    """One task run as it travels through the queues and over the wire."""

    task_key: str
    dynamic_key: str
    name: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    parameters: dict[str, Any] = field(default_factory=dict)
    state_type: str = StateType.SCHEDULED.value
    state_name: str = "Scheduled"
    state_timestamp: datetime = field(default_factory=now)
    run_count: int = 0
    priority: int = 0
    retries: int = 0
    retry_delay_seconds: float = 0.0
    created: datetime = field(default_factory=now)
    updated: datetime | None = None
    expected_start_time: datetime | None = None
    started: datetime | None = None
    finished: datetime | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    worker: str = ""
    # The Tasks framework's view: the queue and backend alias it was enqueued for, and its
    # run_after (kept as sent; ``expected_start_time`` moves on with each retry).
    queue_name: str = DEFAULT_QUEUE
    backend: str = ""
    run_after: datetime | None = None
    # One entry per attempt a worker started: worker, started, finished, error (see attempts.py).
    attempts: list[dict[str, Any]] = field(default_factory=list)
    # The JSON form, made once: the answer to a create and the frame sent to a worker are the
    # same text. A run is never changed in place once encoded (``with_state`` makes a copy,
    # which starts without it).
    _json: str | None = field(default=None, init=False, repr=False)

    @property
    def is_retry(self) -> bool:
        """True for a run waiting for a retry: it belongs in the retry lane."""
        return self.state_type == StateType.SCHEDULED and self.state_name == "AwaitingRetry"

    def with_state(self, state_type: str, state_name: str, **changes: Any) -> TaskRun:
        """A copy in a new state, stamped now; the queues keep values, never mutated records."""
        stamp = now()
        return replace(
            self,
            state_type=state_type,
            state_name=state_name,
            state_timestamp=stamp,
            updated=stamp,
            **changes,
        )

    @property
    def state_details(self) -> dict[str, Any]:
        """Prefect's ``state_details`` (``deferred``: served by a task worker), and
        ``cancel_requested`` while an operator's cancel waits for the worker."""
        if self.state_name == CANCELLING:
            return {"deferred": True, "cancel_requested": True}
        return {"deferred": True}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: DESIGN §4's fields plus those Prefect's client ``TaskRun`` expects."""
        created = isoformat(self.created)
        return {
            "id": str(self.id),
            "created": created,
            "updated": isoformat(self.updated) or created,
            "name": self.name,
            "task_key": self.task_key,
            "dynamic_key": self.dynamic_key,
            "parameters": self.parameters,
            "state": {
                "type": self.state_type,
                "name": self.state_name,
                "timestamp": isoformat(self.state_timestamp),
                "message": None,
                "state_details": self.state_details,
            },
            "state_type": self.state_type,
            "state_name": self.state_name,
            "run_count": self.run_count,
            "priority": self.priority,
            "empirical_policy": {
                "retries": self.retries,
                "retry_delay_seconds": self.retry_delay_seconds,
            },
            "expected_start_time": isoformat(self.expected_start_time) or created,
            "start_time": isoformat(self.started),
            "end_time": isoformat(self.finished),
            "result": self.result,
            "error": self.error,
            "worker": self.worker or None,
            "queue_name": self.queue_name,
            "backend": self.backend or None,
            "run_after": isoformat(self.run_after),
            "attempts": self.attempts,
            "flow_run_id": None,
            "tags": [],
            "labels": {},
            "task_inputs": {},
        }

    def to_json(self, allow_nan: bool = True) -> str:
        """The JSON form (``to_dict``), compact; encoded once per run object.

        ``allow_nan=False`` encodes again, refusing NaN and infinities (``ValueError``): the
        check of a new run, whose text is then the one every later call returns.
        """
        if self._json is None or not allow_nan:
            self._json = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=allow_nan)
        return self._json

    def forget_json(self) -> None:
        """Drop the kept JSON text (a run about to wait in memory, where 0.9 KB a run counts;
        ``to_json`` makes it again, the same, when the run is sent)."""
        self._json = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskRun:
        """The run of its JSON form (``to_dict``), as the HTTP API returns it or a worker
        receives it; fields a Prefect client leaves out take their defaults."""

        policy = data.get("empirical_policy") or {}
        state = data.get("state") or {}

        def when(name: str, source: dict[str, Any] = data) -> datetime | None:
            value = source.get(name)
            return parse_datetime(value, name) if value else None

        created = when("created") or now()
        return cls(
            id=parse_uuid(str(data["id"])),
            task_key=data["task_key"],
            dynamic_key=data.get("dynamic_key") or data["task_key"],
            name=data.get("name") or data["task_key"],
            parameters=data.get("parameters") or {},
            state_type=data.get("state_type") or state.get("type") or StateType.SCHEDULED,
            state_name=data.get("state_name") or state.get("name") or "Scheduled",
            state_timestamp=when("timestamp", state) or created,
            run_count=data.get("run_count") or 0,
            priority=data.get("priority") or 0,
            retries=policy.get("retries") or 0,
            retry_delay_seconds=policy.get("retry_delay_seconds") or 0,
            created=created,
            updated=when("updated"),
            expected_start_time=when("expected_start_time"),
            started=when("start_time"),
            finished=when("end_time"),
            result=data.get("result"),
            error=data.get("error"),
            worker=data.get("worker") or "",
            queue_name=data.get("queue_name") or DEFAULT_QUEUE,
            backend=data.get("backend") or "",
            run_after=when("run_after"),
            attempts=list(data.get("attempts") or []),
        )

    # -- records ---------------------------------------------------------------------------------

    @classmethod
    def from_record(cls, record: Any) -> TaskRun:
        """The value object of a ``TaskRunRecord``."""
        return cls(**{name: getattr(record, name) for name in RECORD_FIELDS})

    def record_fields(self) -> dict[str, Any]:
        """Keyword arguments for a ``TaskRunRecord`` holding this run."""
        values = {name: getattr(self, name) for name in RECORD_FIELDS}
        values["updated"] = self.updated or self.created
        return values


RECORD_FIELDS = tuple(name for name in TaskRun.__dataclass_fields__ if name != "_json")

"""Prometheus metrics (DESIGN §12): counters and histograms fed as runs move, and gauges read
from the queue engine at each scrape.

Counters and histograms count what happened in this process: with several server processes,
each is its own scrape target, and Prometheus sums them (``sum by (key)``). The gauges come from
the engine, so with the Redis engine every process reports the whole site's queues (take
``max by (key, lane)``, not the sum). Labels are ``key`` (the task key, bounded by code, never a
dynamic key), ``lane``, ``state`` and ``reason``; never a run or worker id.

The feeding functions never raise: a metric must not fail the run it counts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import __version__
from .conf import taskqueue_settings
from .queues import get_queues
from .schemas import now
from .states import StateType

__all__ = ["CONTENT_TYPE_LATEST", "REGISTRY", "exposition", "site_totals"]

REGISTRY = CollectorRegistry()

# Sub-millisecond buckets first: a run waits about a millisecond when a worker is free.
WAIT_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800,
)  # fmt: skip
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
    30, 60, 300, 900, 3600,
)  # fmt: skip
REJECT_REASONS = ("queue_full", "too_large", "invalid", "unauthorized")
FINISHED = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)

ENQUEUED = Counter("taskqueue_runs_enqueued", "Runs accepted.", ["key"], registry=REGISTRY)
REJECTED = Counter(
    "taskqueue_runs_rejected",
    "Refused: creates for a full queue (503), too large (413), invalid (400); any API request "
    "or connection with no or a wrong token (unauthorized, key empty).",
    ["key", "reason"],
    registry=REGISTRY,
)
STARTED = Counter(
    "taskqueue_runs_started", "Attempts a worker started.", ["key"], registry=REGISTRY
)
FINISHED_RUNS = Counter(
    "taskqueue_runs_finished", "Runs that ended, by state.", ["key", "state"], registry=REGISTRY
)
RETRIED = Counter(
    "taskqueue_runs_retried",
    "Runs put into the retry lane: after a failure, a crash, or by hand (manual).",
    ["key", "reason"],
    registry=REGISTRY,
)
REDELIVERED = Counter(
    "taskqueue_runs_redelivered",
    "Runs given back, unstarted, by a worker that disconnected or vanished.",
    ["key"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "taskqueue_run_queue_wait_seconds",
    "From when a run became due (its start time, not its creation if deferred) to its start.",
    ["key"],
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)
DURATION = Histogram(
    "taskqueue_run_duration_seconds",
    "From a run's start to its end, by final state.",
    ["key", "state"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
DELIVERY_ACK = Histogram(
    "taskqueue_delivery_ack_seconds",
    "From sending a run to a worker to its ack.",
    ["key"],
    buckets=WAIT_BUCKETS,
    registry=REGISTRY,
)


def _seconds(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else max(0.0, (end - start).total_seconds())


# -- fed by the lifecycle, the views and the consumer ---------------------------------------------


def enqueued(run: Any) -> None:
    """A run was accepted (recorded and queued)."""
    ENQUEUED.labels(run.task_key).inc()


def rejected(reason: str, key: str = "") -> None:
    """A create was refused; ``key`` only when the request named a valid one."""
    REJECTED.labels(key, reason).inc()


def started(run: Any) -> None:
    """A new attempt of ``run`` started (``run.started`` is its start)."""
    STARTED.labels(run.task_key).inc()
    waited = _seconds(run.expected_start_time or run.created, run.started or now())
    if waited is not None:
        QUEUE_WAIT.labels(run.task_key).observe(waited)


def finished(run: Any) -> None:
    """``run`` ended in its (final) state."""
    state = str(run.state_type).lower()
    FINISHED_RUNS.labels(run.task_key, state).inc()
    took = _seconds(run.started, run.finished or now())
    if took is not None:
        DURATION.labels(run.task_key, state).observe(took)


def retried(run: Any, reason: str) -> None:
    """``run`` went into its retry lane: ``failed``, ``crashed`` or ``manual``."""
    RETRIED.labels(run.task_key, reason).inc()


def redelivered(runs: Iterable[Any]) -> None:
    """Unstarted runs went back to their queues from a worker that is gone."""
    for run in runs:
        REDELIVERED.labels(run.task_key).inc()


def acked(task_key: str, sent_at: float) -> None:
    """A run sent at ``sent_at`` (``time.monotonic()``) was acked now."""
    DELIVERY_ACK.labels(task_key).observe(max(0.0, time.monotonic() - sent_at))


def site_totals() -> dict[str, float]:
    """This process's runs enqueued and finished so far (the dashboard's chart)."""
    return {
        "enqueued": _total(ENQUEUED),
        "finished": _total(FINISHED_RUNS),
    }


def _total(counter: Counter) -> float:
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


# -- read at each scrape ---------------------------------------------------------------------

IN_FLIGHT = {StateType.SCHEDULED: "sent", StateType.PENDING: "acked", StateType.RUNNING: "running"}


class QueueCollector:
    """The engine's gauges, from the copy ``exposition`` took just before rendering (a
    collector's ``collect()`` is sync, the engine async)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.state is None:
            return
        rows, connections, oldest = (self.state[n] for n in ("rows", "connections", "oldest"))
        depth = GaugeMetricFamily(
            "taskqueue_queue_depth", "Runs waiting in the lane now.", labels=["key", "lane"]
        )
        capacity = GaugeMetricFamily(
            "taskqueue_queue_capacity", "The lane's bound.", labels=["key", "lane"]
        )
        age = GaugeMetricFamily(
            "taskqueue_queue_oldest_age_seconds",
            "Age of the oldest run waiting in the lane, from when it became due (0: none).",
            labels=["key", "lane"],
        )
        backlog = GaugeMetricFamily(
            "taskqueue_queue_backlog",
            "Accepted runs (restored, retried) waiting for room in a full lane.",
            labels=["key"],
        )
        deferred = GaugeMetricFamily(
            "taskqueue_deferred_runs", "Runs held for a future start time.", labels=["key"]
        )
        flight = GaugeMetricFamily(
            "taskqueue_runs_in_flight",
            "Runs in workers' hands: sent (not acked), acked (not started), running.",
            labels=["key", "state"],
        )
        subscriptions = GaugeMetricFamily(
            "taskqueue_worker_subscriptions", "Worker connections subscribed to the key.",
            labels=["key"],
        )  # fmt: skip
        in_hand: dict[tuple[str, str], int] = {}
        for connection in connections:
            for run in connection.held:
                state = IN_FLIGHT.get(run.state_type, "sent")
                in_hand[run.task_key, state] = in_hand.get((run.task_key, state), 0) + 1
        moment = now()
        for row in rows:
            key = row["task_key"]
            for lane in ("scheduled", "retry"):
                depth.add_metric([key, lane], row[f"{lane}_size"])
                capacity.add_metric([key, lane], row[f"{lane}_limit"])
                due = oldest.get((key, lane))
                age.add_metric([key, lane], _seconds(due, moment) or 0.0)
            backlog.add_metric([key], row.get("backlog", 0))
            deferred.add_metric([key], row.get("deferred", 0))
            subscriptions.add_metric([key], row.get("workers", 0))
            for state in IN_FLIGHT.values():
                flight.add_metric([key, state], in_hand.get((key, state), 0))
        workers = GaugeMetricFamily("taskqueue_workers_connected", "Open worker connections.")
        workers.add_metric([], len(connections))
        info = GaugeMetricFamily(
            "taskqueue_build_info", "The app's version and queue engine.",
            labels=["version", "queue_backend"],
        )  # fmt: skip
        info.add_metric([__version__, self.state["engine"]], 1)
        yield from (depth, capacity, age, backlog, deferred, flight, subscriptions, workers, info)


COLLECTOR = QueueCollector()
REGISTRY.register(COLLECTOR)


def _engine_name() -> str:
    name = type(get_queues()).__name__.lower()
    return name.removesuffix("queues") or name


def _zero_configured(keys: Iterable[str]) -> None:
    """Make every counter of a configured key exist at 0: alerts and autoscalers break on a
    series that is missing until its first event."""
    for key in keys:
        ENQUEUED.labels(key)
        STARTED.labels(key)
        REDELIVERED.labels(key)
        REJECTED.labels(key, "queue_full")
        for state in FINISHED:
            FINISHED_RUNS.labels(key, state.lower())


async def collect() -> dict[str, Any]:
    """The engine's state for one scrape, where the queues live."""
    queues = get_queues()
    return {
        "rows": await queues.snapshot(),
        "connections": await queues.connections(),
        "oldest": await queues.oldest(),
        "engine": _engine_name(),
    }


def exposition(state: dict[str, Any]) -> bytes:
    """The Prometheus text of every metric, with the gauges of ``state`` (from ``collect``)."""
    configured = taskqueue_settings.KEYS if isinstance(taskqueue_settings.KEYS, dict) else {}
    _zero_configured(
        {*configured, *(row["task_key"] for row in state["rows"] if row["configured"])}
    )
    COLLECTOR.state = state
    try:
        return generate_latest(REGISTRY)
    finally:
        COLLECTOR.state = None

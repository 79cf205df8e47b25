"""The Celery peer of the end-to-end benchmark: a Redis broker and result backend, one no-op task.

Imported by the Celery worker and by ``celery_run`` in the Celery venv (never the project's).
"""

from __future__ import annotations

import os
import time

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.noop")
def noop(sent_at: float) -> float:
    """Returns how long after its enqueue (wall clock, seconds) the task body started."""
    return time.time() - sent_at

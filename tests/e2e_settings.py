"""Settings of the backend's end-to-end tests: the example project plus test-only views that
enqueue from a sync and from an async view, a tiny queue that fills up, and the Tasks queues and
second backend alias that tests/test_tasks_api.py walks (its tasks are tests/tasks.py, which a
worker with these settings discovers as the settings package's ``tasks`` module)."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.e2e_urls"

TASKQUEUE = {
    **TASKQUEUE,  # noqa: F405
    # No worker serves it: the second run finds its queue full.
    "KEYS": {"tests.e2e_urls.never_run": {"scheduled_size": 1}},
}

TASKS = {
    "default": {
        "BACKEND": "taskqueue_app.backend.TaskQueueBackend",
        # "idle": no worker of the tests serves it; "burst": one started late, with --queue.
        "QUEUES": ["default", "queue-1", "idle", "burst"],
        "OPTIONS": {"retries": 0, "retry_delay_seconds": 0},
    },
    "other": {
        "BACKEND": "taskqueue_app.backend.TaskQueueBackend",
        "QUEUES": ["default", "queue-1"],
    },
}

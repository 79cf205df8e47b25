"""Settings of the backend's end-to-end tests: the example project plus test-only views that
enqueue from a sync and from an async view, and a tiny queue that fills up."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "tests.e2e_urls"

TASKQUEUE = {
    **TASKQUEUE,  # noqa: F405
    # No worker serves it: the second run finds its queue full.
    "KEYS": {"tests.e2e_urls.never_run": {"scheduled_size": 1}},
}

"""Settings of the benchmark server: the example project plus the bench-only ceiling view."""

from project.settings import *  # noqa: F403
from project.settings import MIDDLEWARE, TASKQUEUE

ROOT_URLCONF = "bench.urls"
DEBUG = False
# No static files are served in a measurement (nor collected): WhiteNoise would only warn.
MIDDLEWARE = [name for name in MIDDLEWARE if not name.startswith("whitenoise.")]
# Every accepted run stays queued during a measurement (no worker drains them): room for all.
TASKQUEUE = {**TASKQUEUE, "SCHEDULED_QUEUE_SIZE": 1_000_000}
# Warnings only (4xx/5xx are counted by the load generator, not logged per request).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"django.request": {"level": "ERROR"}},
}

"""Settings of the example project that serves taskqueue_app with Daphne.

Environment variables let tests and deployments run the same project against another database
file or with a token: ``TASKQUEUE_DB``, ``TASKQUEUE_AUTH_TOKEN``, ``TASKQUEUE_SERVER_URL``,
``TASKQUEUE_ORPHAN_TIMEOUT``; ``TASKQUEUE_REDIS_URL`` (and ``_PREFIX``, ``_HEARTBEAT``,
``_ALIVE_TTL``) choose the Redis engine. ``DJANGO_DEBUG=0`` runs in production mode (static files
from ``STATIC_ROOT`` through WhiteNoise, after ``collectstatic``), with ``DJANGO_SECRET_KEY``,
``DJANGO_ALLOWED_HOSTS`` (comma-separated, added to the loopback names) and
``DJANGO_STATIC_ROOT``.
"""

import os
import tempfile
from pathlib import Path

import django

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-project-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"] + [
    host.strip() for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if host.strip()
]

INSTALLED_APPS = [
    "daphne",  # first, so that runserver is Daphne's ASGI server
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "taskqueue_app",
]
if django.VERSION < (6, 0):
    # Django 5.2 takes the Tasks framework from the django-tasks backport.
    INSTALLED_APPS.append("django_tasks")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
if not DEBUG:
    # With DEBUG off, WhiteNoise serves the files `collectstatic` put in STATIC_ROOT (the admin's,
    # the dashboard's), so the admin is styled under plain Daphne too. It is sync-only middleware:
    # Django adapts it under ASGI. In DEBUG, asgi.py serves them from the apps' folders instead.
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("TASKQUEUE_DB", BASE_DIR / "db.sqlite3"),
        "OPTIONS": {
            # WAL lets readers run beside the one writer; IMMEDIATE takes the write lock when a
            # transaction starts, so concurrent writers wait (up to `timeout`) instead of failing
            # with "database is locked" halfway through.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # A real file (not :memory:) so that other threads and processes (the records writer,
        # live-server tests) see the same database; one per test process so runs never collide.
        "TEST": {
            "NAME": os.environ.get("TASKQUEUE_TEST_DB")
            or Path(tempfile.gettempdir()) / f"taskqueue-test-{os.getpid()}.sqlite3"
        },
    }
}
# TASKQUEUE_DATABASE=postgres: PostgreSQL instead (docs/postgresql.md), the server named by
# TASKQUEUE_PG_NAME, _HOST (a socket's directory or a host name), _PORT, _USER, _PASSWORD; empty
# ones are libpq's (PGHOST, ...). `make test-postgres` sets it alone: the tests start a server of
# their own and fill in the rest (tests/conftest.py). A process given a SQLite file of its own
# (TASKQUEUE_DB: the tests' Daphne subprocesses) keeps that file.
if os.environ.get("TASKQUEUE_DATABASE") == "postgres" and not os.environ.get("TASKQUEUE_DB"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("TASKQUEUE_PG_NAME", "taskqueue"),
            "HOST": os.environ.get("TASKQUEUE_PG_HOST", ""),
            "PORT": os.environ.get("TASKQUEUE_PG_PORT", ""),
            "USER": os.environ.get("TASKQUEUE_PG_USER", ""),
            "PASSWORD": os.environ.get("TASKQUEUE_PG_PASSWORD", ""),
            # Under ASGI, Django's persistent connections are per thread and outlive nothing
            # useful: a connection per request, checked before reuse where one is kept.
            "CONN_MAX_AGE": 0,
            "CONN_HEALTH_CHECKS": True,
        }
    }
    # Named, not derived: a live-server test's forked child derives it from NAME once more.
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}"}

TASKQUEUE = {
    "AUTH_TOKEN": os.environ.get("TASKQUEUE_AUTH_TOKEN") or None,
    "SERVER_URL": os.environ.get("TASKQUEUE_SERVER_URL", "http://127.0.0.1:8000/api"),
    "ORPHAN_TIMEOUT": float(os.environ.get("TASKQUEUE_ORPHAN_TIMEOUT", 60)),
}
if os.environ.get("TASKQUEUE_REDIS_URL"):
    # Several server processes on one Redis (make run-redis; the multi-process tests).
    TASKQUEUE["QUEUES"] = {
        "BACKEND": "taskqueue_app.queues.redis.RedisQueues",
        "LOCATION": os.environ["TASKQUEUE_REDIS_URL"],
        "OPTIONS": {
            "PREFIX": os.environ.get("TASKQUEUE_REDIS_PREFIX", "{taskqueue}"),
            "HEARTBEAT": float(os.environ.get("TASKQUEUE_REDIS_HEARTBEAT", 2)),
            "ALIVE_TTL": float(os.environ.get("TASKQUEUE_REDIS_ALIVE_TTL", 10)),
        },
    }

# The Django Tasks framework (django.tasks on Django 6, the django-tasks backport on 5.2) hands
# task runs to taskqueue_app; `manage.py taskworker` runs them.
TASKS = {
    "default": {
        "BACKEND": "taskqueue_app.backend.TaskQueueBackend",
        "OPTIONS": {"retries": 0, "retry_delay_seconds": 0},
    }
}

AUTH_PASSWORD_VALIDATORS = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
# Where `collectstatic` (which `make run` runs) gathers them: gitignored, with the rest of build/.
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "build" / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# One handler, on the root logger: every record is printed once, by it. A handler of a logger of
# its own as well (on "taskqueue_app", say) would print each line twice wherever the root has one
# too, as it does under Daphne (which calls logging.basicConfig before loading the project) and in
# `python -m taskqueue_app.worker`. Django's own "django" logger keeps only its mail to ADMINS.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {"require_debug_false": {"()": "django.utils.log.RequireDebugFalse"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "line"},
        "mail_admins": {
            "level": "ERROR",
            "filters": ["require_debug_false"],
            "class": "django.utils.log.AdminEmailHandler",
        },
    },
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {
        "django": {"handlers": ["mail_admins"], "level": "INFO"},
        # The worker logs one line per run itself. The Tasks framework's own lines would repeat
        # it: a start and an end line per run, and a traceback for every failed attempt, even one
        # that is retried.
        "django.tasks": {"level": "CRITICAL"},
        "django_tasks": {"level": "CRITICAL"},
    },
}

"""System checks for the ``TASKQUEUE`` setting: wrong values are reported before anything runs."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS

KEY_FIELDS = ("scheduled_size", "retry_size")


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _error(msg: str, hint: str, number: int) -> Error:
    return Error(msg, hint=hint, obj="settings.TASKQUEUE", id=f"taskqueue_app.E{number:03d}")


@register(Tags.compatibility)
def check_settings(app_configs=None, **kwargs: Any) -> list:
    """Report every wrong value in ``settings.TASKQUEUE``, each with a hint."""
    user = getattr(settings, "TASKQUEUE", {})
    if user is None:
        user = {}
    if not isinstance(user, dict):
        return [_error("TASKQUEUE must be a dict.", "Set TASKQUEUE = {...} or remove it.", 1)]
    errors: list = []
    unknown = sorted(set(user) - set(DEFAULTS))
    if unknown:
        errors.append(
            _error(
                f"TASKQUEUE has unknown keys: {', '.join(map(repr, unknown))}.",
                f"Valid keys are {', '.join(sorted(DEFAULTS))}.",
                2,
            )
        )
    for number, name in (
        (3, "SCHEDULED_QUEUE_SIZE"),
        (4, "RETRY_QUEUE_SIZE"),
        (5, "MAX_MESSAGE_BYTES"),
    ):
        if name in user and not _is_size(user[name]):
            errors.append(
                _error(
                    f"TASKQUEUE['{name}'] must be a positive integer, not {user[name]!r}.",
                    f"Remove it to use the default, {DEFAULTS[name]!r}.",
                    number,
                )
            )
    errors.extend(_check_keys(user.get("KEYS", {})))
    token = user.get("AUTH_TOKEN")
    if token is not None and (not isinstance(token, str) or not token):
        errors.append(
            _error(
                "TASKQUEUE['AUTH_TOKEN'] must be a non-empty string or None.",
                "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'.",
                7,
            )
        )
    url = user.get("SERVER_URL")
    if url is not None and not (
        isinstance(url, str) and urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc
    ):
        errors.append(
            _error(
                f"TASKQUEUE['SERVER_URL'] must be an http(s) URL or None, not {url!r}.",
                "Give the API base, e.g. 'http://127.0.0.1:8000/api'.",
                8,
            )
        )
    if "QUEUES" in user:
        errors.extend(_check_queues(user["QUEUES"]))
    timeout = user.get("ORPHAN_TIMEOUT", DEFAULTS["ORPHAN_TIMEOUT"])
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 1e7:
        errors.append(
            _error(
                "TASKQUEUE['ORPHAN_TIMEOUT'] must be a positive number of seconds, "
                f"not {timeout!r}.",
                "Seconds a run held by a vanished worker waits for it; the default is 60.",
                11,
            )
        )
    if not settings.DEBUG and not (isinstance(token, str) and token):
        errors.append(
            Warning(
                "TASKQUEUE['AUTH_TOKEN'] is not set while DEBUG is False: anyone who can reach "
                "the server can enqueue runs and receive them as a worker.",
                hint="Set TASKQUEUE['AUTH_TOKEN'] to a long random secret shared with workers.",
                obj="settings.TASKQUEUE",
                id="taskqueue_app.W001",
            )
        )
    return errors


def _check_keys(keys: Any) -> list:
    if not isinstance(keys, dict):
        return [
            _error(
                f"TASKQUEUE['KEYS'] must be a dict of key to bounds, not {type(keys).__name__}.",
                "Example: {'emails.send': {'scheduled_size': 50, 'retry_size': 10}}.",
                6,
            )
        ]
    errors = []
    for key, bounds in keys.items():
        if not isinstance(key, str) or not 0 < len(key) <= 200:
            problem = f"TASKQUEUE['KEYS'] has an invalid task key {key!r}."
        elif not isinstance(bounds, dict):
            problem = f"TASKQUEUE['KEYS'][{key!r}] must be a dict, not {type(bounds).__name__}."
        elif set(bounds) - set(KEY_FIELDS):
            extra = ", ".join(map(repr, sorted(map(str, set(bounds) - set(KEY_FIELDS)))))
            problem = f"TASKQUEUE['KEYS'][{key!r}] has unknown fields: {extra}."
        elif any(bounds.get(f) is not None and not _is_size(bounds[f]) for f in KEY_FIELDS):
            problem = f"TASKQUEUE['KEYS'][{key!r}] sizes must be positive integers or None."
        else:
            continue
        errors.append(
            _error(
                problem,
                "Each entry is 'task.key': {'scheduled_size': int, 'retry_size': int}; "
                "a missing or None size takes the default.",
                6,
            )
        )
    return errors


QUEUES_FIELDS = ("BACKEND", "LOCATION", "OPTIONS")


def _check_queues(config: Any) -> list:
    """E009 for the shape of ``QUEUES``, E010 for a ``BACKEND`` that is not an engine."""
    from django.core.exceptions import ImproperlyConfigured

    from .queues import DEFAULT_BACKEND, load_engine

    hint = (
        f"Use {{'BACKEND': '{DEFAULT_BACKEND}'}} (one process) or "
        "{'BACKEND': 'taskqueue_app.queues.redis.RedisQueues', 'LOCATION': 'redis://...'}."
    )
    if not isinstance(config, dict) or not isinstance(config.get("BACKEND"), str):
        return [_error("TASKQUEUE['QUEUES'] must be a dict with a 'BACKEND' dotted path.", hint, 9)]
    unknown = sorted(map(str, set(config) - set(QUEUES_FIELDS)))
    if unknown:
        return [
            _error(
                f"TASKQUEUE['QUEUES'] has unknown keys: {', '.join(map(repr, unknown))}.",
                f"Valid keys are {', '.join(QUEUES_FIELDS)}. {hint}",
                9,
            )
        ]
    if not isinstance(config.get("OPTIONS", {}), dict):
        return [_error("TASKQUEUE['QUEUES']['OPTIONS'] must be a dict.", hint, 9)]
    try:
        load_engine(config)
    except ImproperlyConfigured as exc:
        return [_error(f"{exc}.", hint, 10)]
    return []

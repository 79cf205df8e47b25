"""The queue engines behind one async interface; ``get_queues()`` returns the one configured.

``TASKQUEUE["QUEUES"]`` names it in the shape of Django's ``CACHES``::

    {"BACKEND": "taskqueue_app.queues.memory.MemoryQueues"}            # one process (default)
    {"BACKEND": "taskqueue_app.queues.redis.RedisQueues", "LOCATION": "redis://...", "OPTIONS": {}}
"""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string

from ..conf import taskqueue_settings
from .base import LANES, RETRY, SCHEDULED, Connection, Held, QueueFull, Queues

__all__ = [
    "LANES",
    "RETRY",
    "SCHEDULED",
    "Connection",
    "Held",
    "QueueFull",
    "Queues",
    "get_queues",
    "load_engine",
]

DEFAULT_BACKEND = "taskqueue_app.queues.memory.MemoryQueues"

_engine: Queues | None = None
_engine_config: Any = None
_engine_generation = -1


def load_engine(config: Any) -> Queues:
    """A new engine from a ``QUEUES`` dict; ``ImproperlyConfigured`` explains a wrong one."""
    from django.core.exceptions import ImproperlyConfigured

    if not isinstance(config, dict) or not isinstance(config.get("BACKEND"), str):
        raise ImproperlyConfigured(
            'TASKQUEUE["QUEUES"] must be a dict with a "BACKEND" dotted path, e.g. '
            f'{{"BACKEND": "{DEFAULT_BACKEND}"}}'
        )
    try:
        engine_class = import_string(config["BACKEND"])
    except ImportError as exc:
        raise ImproperlyConfigured(
            f'TASKQUEUE["QUEUES"]["BACKEND"] {config["BACKEND"]!r} cannot be imported: {exc}'
        ) from exc
    if not (isinstance(engine_class, type) and issubclass(engine_class, Queues)):
        raise ImproperlyConfigured(
            f'TASKQUEUE["QUEUES"]["BACKEND"] {config["BACKEND"]!r} is not a subclass of '
            "taskqueue_app.queues.base.Queues"
        )
    return engine_class(config)


def get_queues() -> Queues:
    """The engine ``TASKQUEUE["QUEUES"]`` names, one instance per process.

    Made on first use, not at import; made anew only when the setting itself changes (an
    ``override_settings`` of other keys keeps the engine and what it holds).
    """
    global _engine, _engine_config, _engine_generation
    generation = taskqueue_settings.generation
    if _engine is not None and generation == _engine_generation:
        return _engine
    config = taskqueue_settings.QUEUES
    if _engine is None or config != _engine_config:
        _engine = load_engine(config)
        _engine_config = config
    _engine_generation = generation
    return _engine

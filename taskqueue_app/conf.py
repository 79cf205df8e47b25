"""The one lazy accessor for the ``TASKQUEUE`` setting, with defaults."""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    "SCHEDULED_QUEUE_SIZE": 1000,
    "RETRY_QUEUE_SIZE": 100,
    "KEYS": {},
    "AUTH_TOKEN": None,
    "MAX_MESSAGE_BYTES": 1_048_576,
    "SERVER_URL": None,
    "QUEUES": {"BACKEND": "taskqueue_app.queues.memory.MemoryQueues"},
    "ORPHAN_TIMEOUT": 60,
}


class TaskQueueSettings:
    """Attribute access to ``settings.TASKQUEUE`` over ``DEFAULTS``, read on first use and cached.

    Nothing is read at import time, and the cache is dropped whenever ``TASKQUEUE`` changes
    (``override_settings`` in tests), so every read reflects the settings in force.
    """

    def __init__(self) -> None:
        self._cache: dict[str, Any] | None = None
        # Bumped on every reload so that values derived from settings know they are stale.
        self.generation = 0

    def _values(self) -> dict[str, Any]:
        values = self._cache
        if values is None:
            from django.conf import settings

            user = getattr(settings, "TASKQUEUE", None) or {}
            values = dict(DEFAULTS)
            if isinstance(user, dict):
                values.update(user)
            self._cache = values
        return values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values()[name]
        except KeyError:
            raise AttributeError(f"TASKQUEUE has no setting {name!r}") from None

    def key_sizes(self, task_key: str) -> tuple[int | None, int | None] | None:
        """The (scheduled_size, retry_size) set for ``task_key`` in ``KEYS``, or None."""
        entry = (self.KEYS or {}).get(task_key) if isinstance(self.KEYS, dict) else None
        if not isinstance(entry, dict):
            return None
        return entry.get("scheduled_size"), entry.get("retry_size")

    def reload(self) -> None:
        """Forget the cached values; the next read takes them from settings again."""
        self._cache = None
        self.generation += 1


taskqueue_settings = TaskQueueSettings()


@receiver(setting_changed)
def _reload_on_change(*, setting: str, **kwargs: Any) -> None:
    # override_settings fires this; without it a test's TASKQUEUE would be ignored.
    if setting == "TASKQUEUE":
        taskqueue_settings.reload()

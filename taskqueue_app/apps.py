"""App configuration of taskqueue_app."""

from django.apps import AppConfig


class TaskQueueConfig(AppConfig):
    """Registers the system checks; the queues themselves start empty and fill on first use."""

    name = "taskqueue_app"
    verbose_name = "Task queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)

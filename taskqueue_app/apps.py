"""App configuration of taskqueue_app."""

from __future__ import annotations

import copyreg
import types
from typing import Any

from django.apps import AppConfig


def _reduce_method(twisted_reduce: Any, method: types.MethodType) -> Any:
    if isinstance(method.__self__, type):
        # A classmethod bound to its class: Python's own reduction (``getattr(cls, name)``).
        return getattr, (method.__self__, method.__func__.__name__)
    return twisted_reduce(method)


def repair_method_pickling() -> bool:
    """Undo what Twisted's ``copyreg`` hook breaks; True if it had to.

    Importing ``twisted.persisted.styles`` (``import daphne.server`` does, so every process with
    ``daphne`` in ``INSTALLED_APPS``) registers a reducer for every bound method in the process.
    For a method bound to a class (a classmethod) it records the class's class, ``type``, as
    where to look the method up, so unpickling fails with ``type object 'type' has no attribute
    ...``. Django 6.1's ``Task.__reduce__`` returns such a method (``cls._reconstruct``), so no
    ``Task`` or ``TaskResult`` could be unpickled. Classmethods get Python's own reduction back;
    every other method keeps Twisted's. Nothing changes where Twisted's hook is not installed.
    """
    reducer = copyreg.dispatch_table.get(types.MethodType)
    if getattr(reducer, "__module__", None) != "twisted.persisted.styles":
        return False
    copyreg.pickle(types.MethodType, lambda method: _reduce_method(reducer, method))
    return True


class TaskQueueConfig(AppConfig):
    """Registers the system checks; the queues themselves start empty and fill on first use."""

    name = "taskqueue_app"
    verbose_name = "Task queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the checks)

        # Daphne's app (listed before ours, as Daphne asks) has imported Twisted by now.
        repair_method_pickling()

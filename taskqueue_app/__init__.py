"""taskqueue: background task runs for Django, delivered to workers over WebSocket."""

__version__ = "0.1.0"


def cancel(result_id: str, backend: str = "default"):  # -> TaskResult
    """Cancel the run of a ``TaskResult`` (the Tasks framework has no cancel of its own): the
    result as it is now. A waiting run is cancelled at once; a running one when its worker
    confirms (``refresh()`` the result to see it). Raises ``TaskResultDoesNotExist`` for an
    unknown id and ``taskqueue_app.errors.AlreadyFinished`` for a finished run.

    ``backend`` is the alias in ``TASKS`` of a ``TaskQueueBackend``.
    """
    return _backend(backend).cancel(result_id)


async def acancel(result_id: str, backend: str = "default"):  # -> TaskResult
    """``cancel`` for async code."""
    return await _backend(backend).acancel(result_id)


def _backend(alias: str):
    # Imported here, not at the top: the worker side imports this package without Django.
    from .backend import TaskQueueBackend
    from .tasks_compat import task_backends

    found = task_backends[alias]
    if not isinstance(found, TaskQueueBackend):
        raise TypeError(f"TASKS[{alias!r}] is {type(found).__name__}, not a TaskQueueBackend")
    return found

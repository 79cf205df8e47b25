"""Errors that both sides meet: the server's engines raise them, producers anywhere catch them,
and the failures the app itself decides are recorded under these classes' dotted paths.

No import: the worker side and out-of-process producers read these without the server's code.
"""

from __future__ import annotations

__all__ = [
    "AlreadyFinished",
    "Crashed",
    "EngineUnavailable",
    "NotJSONSerializable",
    "Orphaned",
    "QueueFull",
    "ResultTooLarge",
    "TooLargeError",
    "UnknownTaskKey",
    "UnstorableResult",
    "ValidationError",
    "error_type",
]


def error_type(kind: type[BaseException]) -> str:
    """The dotted path a run's ``error.type`` records for ``kind``: importable, so that the
    Tasks framework's ``TaskError.exception_class`` gives the class back."""
    return f"{kind.__module__}.{kind.__qualname__}"


class ValidationError(ValueError):
    """Producer input that cannot become a run; ``str()`` says what is wrong, naming the field."""


class TooLargeError(ValidationError):
    """A run whose JSON form would exceed the size limit: no worker could ever receive it."""


class QueueFull(Exception):
    """The lane has no room: nothing was taken in; the caller should try again later."""

    retry_after = 1

    @classmethod
    def of_lane(cls, task_key: str, lane: str) -> QueueFull:
        """The error every engine raises for a full ``lane`` of ``task_key``."""
        return cls(f"the {lane} queue of {task_key!r} is full")


class AlreadyFinished(Exception):
    """A cancel of a run that has already finished (COMPLETED, FAILED, CRASHED, CANCELLED)."""


class EngineUnavailable(Exception):
    """The queue engine cannot serve from this process (another one serves the site, say): the
    server must not start; ``str()`` says why and what to do."""


# -- what ended a run, when it was not the task's own exception ---------------------------------


class Orphaned(Exception):
    """What ended a run whose worker vanished and did not come back within ORPHAN_TIMEOUT."""


class Crashed(Exception):
    """What ended a run whose worker's connection closed while it was running it."""


class NotJSONSerializable(TypeError):
    """The task returned a value that is not JSON (the run fails; nothing is stored)."""


class ResultTooLarge(ValueError):
    """The task's return value, as JSON, is over the server's message size limit."""


class UnknownTaskKey(LookupError):
    """A worker was sent a run of a key it does not serve."""


class UnstorableResult(ValueError):
    """The database cannot store the task's return value as it is (a lone surrogate, a NUL)."""

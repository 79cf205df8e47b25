"""A run's attempts (DESIGN §4 ``attempts``): one entry per delivery a worker started, with the
worker, when it started and finished, and the error that ended it.

The Tasks framework reads them back as ``worker_ids`` (one per attempt), ``errors`` (one per
failed attempt), ``started_at`` (the first attempt's) and ``last_attempted_at`` (the last one's).
Pure functions on values: ``lifecycle`` records what they return. Shared by the server and the
worker side (which adds the attempt it starts to the ``TaskResult`` it hands the task).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .errors import Crashed, Orphaned, error_type
from .schemas import TaskRun, ValidationError, isoformat, parse_datetime

__all__ = ["begun", "ended", "errors_of", "started_of", "workers_of"]

# An attempt's error keeps the end of its traceback (where the exception is) up to this many
# characters, and the latest DETAILED attempts keep theirs at all: every attempt travels with
# the run to its next worker, so their size must stay bounded whatever the retry policy.
MAX_TRACEBACK = 8_000
MAX_MESSAGE = 2_000
DETAILED = 10
# Errors that are the server's guess: a late outcome of that attempt from its worker replaces it.
GUESSES = frozenset({error_type(Crashed), error_type(Orphaned)})


def begun(attempts: list[dict[str, Any]], worker: str, started: datetime) -> list[dict[str, Any]]:
    """``attempts`` and a new one that ``worker`` starts at ``started``."""
    entry = {"worker": worker, "started": isoformat(started), "finished": None, "error": None}
    return [*attempts, entry]


def _kept(error: Any) -> Any:
    if not isinstance(error, dict):
        return error
    kept = dict(error)
    message, traceback = kept.get("message"), kept.get("traceback")
    if isinstance(message, str) and len(message) > MAX_MESSAGE:
        kept["message"] = message[:MAX_MESSAGE] + "..."
    if isinstance(traceback, str) and len(traceback) > MAX_TRACEBACK:
        kept["traceback"] = "...\n" + traceback[-MAX_TRACEBACK:]
    return kept


def ended(
    run: TaskRun, finished: datetime, error: Any, worker: str | None = None
) -> list[dict[str, Any]]:
    """The run's attempts with the one an outcome is about closed: finished, with ``error``.

    That is the latest attempt while it is open, or when it ended in a guess of the server's
    (``Crashed``, ``Orphaned``) and its own worker reports after all. An outcome for a run no
    attempt of which is open (a failure reported before the start) leaves them as they are.
    """
    if not run.attempts:
        return run.attempts
    last = run.attempts[-1]
    guessed = isinstance(last.get("error"), dict) and last["error"].get("type") in GUESSES
    if last.get("finished") is not None and not (guessed and worker and last["worker"] == worker):
        return run.attempts
    closed = {**last, "finished": isoformat(finished), "error": _kept(error)}
    older = [
        {**entry, "error": {**entry["error"], "traceback": None}}
        if index < len(run.attempts) - DETAILED and isinstance(entry.get("error"), dict)
        else entry
        for index, entry in enumerate(run.attempts[:-1])
    ]
    return [*older, closed]


# -- reading them back ----------------------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    try:
        return parse_datetime(value, "started") if value else None
    except ValidationError:
        return None


def started_of(run: TaskRun) -> tuple[datetime | None, datetime | None]:
    """When the first attempt and the latest one started (a record from before attempts were
    kept has only its latest start)."""
    if not run.attempts:
        return run.started, run.started
    return _when(run.attempts[0].get("started")), _when(run.attempts[-1].get("started"))


def workers_of(run: TaskRun) -> list[str]:
    """The worker of each attempt, in order (attempts counted before they were kept, in a
    record from an earlier version, are the run's last worker's)."""
    workers = [str(entry.get("worker") or "unknown") for entry in run.attempts]
    missing = run.run_count - len(workers)
    return [run.worker or "unknown"] * missing + workers if missing > 0 else workers


def errors_of(run: TaskRun) -> list[dict[str, Any]]:
    """One error per failed attempt, oldest first; and the run's own error if no attempt has
    it (a failure reported before any attempt started, as for a key the worker does not serve)."""
    errors = [entry["error"] for entry in run.attempts if isinstance(entry.get("error"), dict)]
    if isinstance(run.error, dict) and not any(
        (e.get("type"), e.get("message")) == (run.error.get("type"), run.error.get("message"))
        for e in errors
    ):
        errors.append(run.error)
    return errors

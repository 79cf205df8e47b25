"""Example tasks of the example project, run by ``manage.py taskworker`` (see the README).

Enqueue from anywhere in the project (a view, ``manage.py shell``, a cron job)::

    from project.tasks import add
    result = add.enqueue(2, 3)
    result.refresh(); result.status, result.return_value
"""

from __future__ import annotations

import logging
import time

from taskqueue_app.tasks_compat import TaskContext, task

logger = logging.getLogger(__name__)


@task()
def add(a: float, b: float) -> float:
    """The smallest useful task: returns ``a + b``."""
    return a + b


@task()
def count_slowly(steps: int = 5, seconds_per_step: float = 1.0) -> dict:
    """A long task that logs its progress, one line per step, in the worker's log."""
    started = time.monotonic()
    for step in range(1, steps + 1):
        time.sleep(seconds_per_step)  # stands in for real work (a download, a report, ...)
        logger.info("count_slowly: step %d of %d", step, steps)
    return {"steps": steps, "seconds": round(time.monotonic() - started, 3)}


@task(takes_context=True, retries=2, retry_delay_seconds=1)
def flaky_greeting(context: TaskContext, name: str) -> str:
    """Fails on its first attempt and succeeds on the retry: shows the retry policy at work.

    ``retries=2`` lets the server re-queue it (as ``AwaitingRetry``) after a failed attempt;
    ``context.attempt`` counts the attempts, the first being 1.
    """
    if context.attempt < 2:
        raise ConnectionError(f"attempt {context.attempt}: the greeting service is down")
    return f"Hello, {name}! (attempt {context.attempt})"


@task()
async def wait_then_echo(value: object, seconds: float = 0.5) -> object:
    """An async task: runs in the worker's event loop, not in its thread pool."""
    import asyncio

    await asyncio.sleep(seconds)
    return value

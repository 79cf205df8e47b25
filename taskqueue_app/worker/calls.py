"""What the worker client needs besides its connection: addresses, keys, calling tasks, errors.

Imports nothing from Django.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import signal
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Executor
from functools import partial
from inspect import iscoroutinefunction
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from websockets.exceptions import InvalidStatus

from ..errors import NotJSONSerializable, ResultTooLarge, error_type

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "OutcomeError",
    "TaskCalls",
    "WorkerAuthError",
    "backoff_delay",
    "check_auth_reply",
    "describe_failure",
    "install_signal_handlers",
    "error_of",
    "subscription_url",
    "task_key_of",
    "unwrap_task",
]

SUBSCRIPTION_PATH = "task_runs/subscriptions/scheduled"
DEFAULT_MAX_MESSAGE_BYTES = 1_048_576  # the server's default MAX_MESSAGE_BYTES


def backoff_delay(attempt: int, maximum: float) -> float:
    """Capped exponential back-off with jitter: half fixed, half random, so that workers
    restarted together do not reconnect together."""
    ceiling = min(maximum, 0.25 * 2**attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def describe_failure(exc: BaseException) -> str:
    """A one-line account of why a connection attempt failed."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} on the WebSocket upgrade"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def install_signal_handlers(loop: asyncio.AbstractEventLoop, callback: Callable) -> list[int]:
    """Make SIGINT and SIGTERM call ``callback``; the signals installed (none off the main
    thread, where only ``stop()`` can end the worker)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not on this platform or loop
            pass
    return installed


class WorkerAuthError(Exception):
    """The server refused the worker's token: retrying cannot help, so the worker stops."""


def subscription_url(api_url: str) -> str:
    """The WebSocket subscription address of an API base URL (``https`` gives ``wss``)."""
    parts = urlsplit(api_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"the server URL must be http(s)://host[:port]/api, not {api_url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/" + SUBSCRIPTION_PATH):
        return urlunsplit((scheme, parts.netloc, path, "", ""))
    return urlunsplit((scheme, parts.netloc, f"{path}/{SUBSCRIPTION_PATH}", "", ""))


def unwrap_task(target: Any) -> Callable:
    """The function behind ``target``: a Tasks-framework ``Task`` gives its ``func``."""
    func = getattr(target, "func", None)
    if callable(func) and hasattr(target, "module_path"):
        return func
    if not callable(target):
        raise TypeError(f"{target!r} is not callable")
    return target


def task_key_of(target: Any) -> str:
    """The task key a callable is served under: ``module.qualname`` (a Task's ``module_path``)."""
    func = unwrap_task(target)
    return f"{func.__module__}.{func.__qualname__}"


# Frames of the worker's own machinery: a task's traceback starts below them, at the task.
_MACHINERY = tuple(
    os.path.dirname(module.__file__) + os.sep
    for module in (asyncio, concurrent.futures)
    if module.__file__
) + (os.path.dirname(os.path.abspath(__file__)) + os.sep,)


def _from_the_task(tb: Any) -> Any:
    while tb is not None and tb.tb_next is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_MACHINERY):
            break
        tb = tb.tb_next
    return tb


def error_of(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of a ``failed`` message: type (a dotted path), message, traceback
    (from the task's own frames on, as the Tasks framework records it)."""
    kind = type(exc)
    lines = traceback.format_exception(kind, exc, _from_the_task(exc.__traceback__))
    return {
        "type": f"{kind.__module__}.{kind.__qualname__}",
        "message": str(exc),
        "traceback": "".join(lines),
    }


def check_auth_reply(raw: str | bytes) -> None:
    """Accept the server's answer to ``auth``: ``auth_success``, or raise why not.

    Not JSON (a proxy answering, say) is a ``ConnectionError``: reconnect and try again.
    """
    try:
        reply = json.loads(raw)
    except ValueError:
        raise ConnectionError(f"the reply to auth is not JSON: {raw!r:.200}") from None
    if not isinstance(reply, dict) or reply.get("type") != "auth_success":
        raise WorkerAuthError(f"unexpected reply to auth: {reply!r}")


class OutcomeError(Exception):
    """A run's outcome decided by the worker itself (bad result, unknown key), not by the task;
    recorded under the dotted path of ``kind``, one of ``taskqueue_app.errors``' classes."""

    def __init__(self, kind: type[BaseException], message: str) -> None:
        super().__init__(message)
        self.error = {"type": error_type(kind), "message": message, "traceback": None}


class TaskCalls:
    """How a worker calls a task and checks what it returns; ``TaskWorker`` mixes it in, and
    subclasses override ``call_sync`` / ``call_async`` to wrap calls (context, signals)."""

    functions: dict[str, Callable]
    max_message_bytes: int
    _executor: Executor | None

    async def invoke(self, key: str, run: dict[str, Any]) -> Any:
        """Call the task of ``key`` with the run's parameters (sync ones in the pool)."""
        func = self.functions[key]
        parameters = run.get("parameters") or {}
        args = parameters.get("args") or []
        kwargs = parameters.get("kwargs") or {}
        if iscoroutinefunction(func):
            return await self.call_async(key, func, run, args, kwargs)
        call = partial(self.call_sync, key, func, run, args, kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def call_sync(
        self, key: str, func: Callable, run: dict[str, Any], args: list, kwargs: dict
    ) -> Any:
        """Call a sync task (in a pool thread)."""
        return func(*args, **kwargs)

    async def call_async(
        self, key: str, func: Callable, run: dict[str, Any], args: list, kwargs: dict
    ) -> Any:
        """Await an async task (in the worker's loop)."""
        return await func(*args, **kwargs)

    def result_json(self, key: str, result: Any) -> str:
        """The return value as JSON text; ``OutcomeError`` if it is not JSON or too large."""
        try:
            text = json.dumps(result, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise OutcomeError(
                NotJSONSerializable,
                f"the return value of {key} is not JSON: {exc} (return JSON types: "
                f"dict, list, str, int, float, bool, None)",
            ) from None
        if len(text) > self.max_message_bytes:
            raise OutcomeError(
                ResultTooLarge,
                f"the return value of {key} is {len(text):,} bytes of JSON, over the "
                f"{self.max_message_bytes:,}-byte message limit",
            )
        return text

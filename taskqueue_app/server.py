"""The server process: its event loop, start-up (restore) and shutdown, and calls into that loop
from the process's other threads (sync views, the Tasks backend)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from asgiref.sync import async_to_sync

from . import lifecycle, metrics
from .orphans import Sweeper
from .queues import get_queues
from .records import writer

logger = logging.getLogger(__name__)

__all__ = [
    "LoopTimeout",
    "call",
    "acall",
    "ensure_started",
    "in_serving_loop",
    "on_shutdown",
    "producer_loop",
    "queues_here",
    "serving_loop",
    "shutdown",
]

T = TypeVar("T")

# How long a thread of the server process waits for the server's loop by default.
LOOP_TIMEOUT_S = 30.0


class LoopTimeout(TimeoutError):
    """The server's loop did not finish a call in time (it may still finish it)."""


class _Loop:
    """This process's server loop, once it runs, and what to do when it stops."""

    def __init__(self) -> None:
        self.started: asyncio.Future | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.shutdown_callbacks: list[Callable[[], Awaitable[Any]]] = []
        self.sweeper = Sweeper()


_state = _Loop()


def reset() -> None:
    """Forget the loop and the hooks (a testing utility: each test has its own loop)."""
    global _state
    _state.sweeper.stop()
    _state = _Loop()


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """The server's loop while it is running in this process, else None (another process)."""
    loop = _state.loop
    if loop is None or loop.is_closed() or not loop.is_running():
        return None
    return loop


def in_serving_loop() -> bool:
    """True in the server loop's own thread, where blocking on it would deadlock."""
    loop = serving_loop()
    if loop is None:
        return False
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_producer_lock = threading.Lock()
_producer: asyncio.AbstractEventLoop | None = None


def producer_loop() -> asyncio.AbstractEventLoop:
    """A loop of this process's own, in a daemon thread, for a process that serves nothing but
    talks to a shared engine (a WSGI site, a shell, a cron job with the Redis engine): its
    creates run there, with one engine client and one records writer for the process's life."""
    global _producer
    with _producer_lock:
        if _producer is None or _producer.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="taskqueue-producer", daemon=True
            )
            thread.start()
            _producer = loop
        return _producer


def queues_here() -> bool:
    """True where runs can be created and read in this process: the server's, or any process
    when the engine is shared by every process (Redis), with no HTTP hop."""
    return serving_loop() is not None or get_queues().shared


def _loop_for_calls() -> asyncio.AbstractEventLoop | None:
    """Where the queues of this process live: the server's loop, or with a shared engine and
    no server here the producer loop; None when neither (then a call runs in a loop of its own)."""
    if not queues_here():
        return None
    return serving_loop() or producer_loop()


def _submit(coro: Awaitable[T], loop: asyncio.AbstractEventLoop) -> Future:
    # A fresh context: a sync view's context carries its request's thread-sensitive executor,
    # and ORM calls of ``coro`` would queue behind the very thread that waits for it.
    return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, loop)


def call(function: Callable[..., Awaitable[T]], *args: Any, timeout: float = LOOP_TIMEOUT_S) -> T:
    """``function(*args)`` where the queues live, from sync code of any thread.

    In the server's loop when it runs in this process (another thread waits for it, at most
    ``timeout``, then ``LoopTimeout``); with no server loop here (a management command, a
    test), in a loop of its own. Refused in the loop's own thread, where waiting would block
    the server.
    """
    loop = _loop_for_calls()
    if loop is None:
        return async_to_sync(function)(*args)
    if in_serving_loop():
        raise RuntimeError(
            f"{getattr(function, '__name__', function)}() would block the server's event loop: "
            "call its async form with 'await' in async code"
        )
    future = _submit(function(*args), loop)
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise LoopTimeout(f"the server's event loop did not answer within {timeout} s") from None


async def acall(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``function(*args)`` where the queues live, from async code of any loop."""
    loop = _loop_for_calls()
    if loop is None or in_serving_loop() or asyncio.get_running_loop() is loop:
        return await function(*args)
    return await asyncio.wrap_future(_submit(function(*args), loop))


async def ensure_started() -> None:
    """Once per process, in the server's loop: start the engine, restore recorded runs, and
    begin sweeping orphans. Raises ``EngineUnavailable`` when the engine cannot serve here."""
    started = _state.started
    if started is None:
        loop = asyncio.get_running_loop()
        started = _state.started = loop.create_future()
        _state.loop = loop
        try:
            queues = get_queues()
            queues.on_given_back = metrics.redelivered  # counted like any other give-back
            await queues.start()
            await lifecycle.restore()
            _state.sweeper.start()
        except BaseException as exc:
            _state.started = None
            started.set_exception(exc)
            raise
        started.set_result(None)
    elif not started.done():
        await asyncio.shield(started)


def on_shutdown(callback: Callable[[], Awaitable[Any]]) -> None:
    """Call ``callback()`` (a coroutine function) when the server stops; once however often
    it is registered."""
    if callback not in _state.shutdown_callbacks:
        _state.shutdown_callbacks.append(callback)


async def shutdown() -> None:
    """The server is stopping: run the shutdown callbacks, then commit every pending write."""
    _state.sweeper.stop()
    for callback in list(_state.shutdown_callbacks):
        try:
            await callback()
        except Exception:
            logger.exception("shutdown callback %r failed", callback)
    await writer.flush()

"""ASGI middleware that starts the task queue in the server's event loop and stops it cleanly."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from . import server
from .errors import EngineUnavailable

logger = logging.getLogger(__name__)

# The exit code of a server process that must not serve (another one serves its database).
EXIT_ENGINE_UNAVAILABLE = 3

_twisted_hooked = False


def _hook_twisted_reactor() -> None:
    """Under Daphne: restore runs as soon as the reactor runs, flush writes before it stops.

    Daphne speaks no ASGI lifespan, so without this a restart would restore nothing until the
    first request arrived, and writes still pending at shutdown would be lost.
    """
    global _twisted_hooked
    reactor = sys.modules.get("twisted.internet.reactor")
    if _twisted_hooked or reactor is None or not hasattr(reactor, "_asyncioEventloop"):
        return
    from twisted.internet.defer import Deferred

    _twisted_hooked = True
    reactor.callWhenRunning(_start_or_exit)
    reactor.addSystemEventTrigger(
        "before",
        "shutdown",
        lambda: Deferred.fromFuture(asyncio.ensure_future(server.shutdown())),
    )


def _start_or_exit() -> None:
    asyncio.ensure_future(server.ensure_started()).add_done_callback(_exit_if_refused)


def _exit_if_refused(started: asyncio.Future) -> None:
    """A server whose engine cannot serve here must not run at all: say why, and exit."""
    if started.cancelled() or not isinstance(started.exception(), EngineUnavailable):
        return
    logger.critical("taskqueue cannot start: %s", started.exception())
    sys.stderr.flush()
    os._exit(EXIT_ENGINE_UNAVAILABLE)  # Daphne's reactor would otherwise keep serving


class TaskQueueMiddleware:
    """Wraps the project's ASGI application (outermost) so that the queues start in its loop.

    Handles ASGI lifespan where the server sends it, hooks Daphne's reactor where it does not,
    and as a last resort starts on the first request or connection.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        _hook_twisted_reactor()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await server.ensure_started()
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await server.ensure_started()
                except EngineUnavailable as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await server.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

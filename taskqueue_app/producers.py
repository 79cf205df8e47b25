"""The producer stream: creates over one kept-open WebSocket, many in flight (DESIGN §5b).

For producers outside the server (a WSGI site, a shell, a cron job) on the memory engine,
where an HTTP request per run costs more than the run. Route
``api/task_runs/stream``, subprotocol ``taskqueue.producer``:

1. ``{"type": "auth", "token": T}`` -> ``{"type": "auth_success"}`` (the subscription's rule:
   with a token set, a missing or wrong one closes with 1008; with none, any token passes).
2. ``{"type": "create", "ref": R, "run": {...}}``, as many as the producer likes without
   waiting -> one answer each, once its record is durable, in the order they are done:
   ``{"ref": R, "status": 201 or 200, "run": {...}}`` or ``{"ref": R, "status": 400/409/413/503,
   "error": "...", "retry_after": 1}`` (the statuses of ``POST /api/task_runs/``).

A producer that loses the connection sends its unanswered creates again on a new one: each
carries its run's id and dynamic key, so a create that did land answers 200 with that run.
A frame that is not such a message closes the stream with 4001 and the reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from . import metrics, protocol
from .conf import taskqueue_settings
from .protocol import ProtocolError
from .sockets import DirectWebsocketConsumer
from .views import create_answer

logger = logging.getLogger(__name__)

__all__ = ["SUBPROTOCOL", "ProducerConsumer"]

SUBPROTOCOL = "taskqueue.producer"
# Creates one connection may have in flight; beyond, the stream stops reading (TCP pushes back).
IN_FLIGHT = 512
# A create frame's envelope beyond its run: room for the type and the ref.
ENVELOPE_BYTES = 1024
FRAME_FACTOR = 4


class ProducerConsumer(DirectWebsocketConsumer):
    """One producer connection: authenticate, then create runs and answer each."""

    async def connect(self) -> None:
        if not protocol.origin_allowed(self.scope):
            await self.close(code=protocol.CLOSE_POLICY_VIOLATION, reason=protocol.FOREIGN_ORIGIN)
            return
        if SUBPROTOCOL not in (self.scope.get("subprotocols") or ()):
            await self.close(
                code=protocol.CLOSE_POLICY_VIOLATION,
                reason=f"offer the {SUBPROTOCOL!r} subprotocol",
            )
            return
        self.authenticated = False
        self.slots = asyncio.Semaphore(IN_FLIGHT)
        self.creates: set[asyncio.Task] = set()
        await self.accept(SUBPROTOCOL)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """An ``auth`` first, then ``create`` messages."""
        try:
            # Room for a run somewhat over the limit, so that it is answered 413 (its ref known)
            # rather than closing the stream, which its producer would only send again into.
            limit = FRAME_FACTOR * taskqueue_settings.MAX_MESSAGE_BYTES + ENVELOPE_BYTES
            message = protocol.decode(text_data, bytes_data, limit)
            if not self.authenticated:
                try:
                    protocol.check_auth(message)
                except ProtocolError:
                    metrics.rejected("unauthorized")
                    raise
                self.authenticated = True
                await self.send(text_data=protocol.AUTH_SUCCESS)
                return
            if message.get("type") != "create":
                raise protocol.unknown_type(message)
            ref = message.get("ref")
            if not isinstance(ref, int | str) or isinstance(ref, bool):
                raise protocol.violation("Protocol violation: 'create' needs a 'ref' (int or str)")
        except ProtocolError as error:
            await self.close(code=error.code, reason=error.reason)
            return
        await self.slots.acquire()  # holds this connection's reading while IN_FLIGHT are open
        task = asyncio.get_running_loop().create_task(self._create(ref, message.get("run")))
        self.creates.add(task)
        task.add_done_callback(self.creates.discard)

    async def _create(self, ref: Any, run: Any) -> None:
        head = f'"ref":{json.dumps(ref)},'
        try:
            try:
                answer = await create_answer(run, head)
            except Exception as exc:  # not a refusal the API knows (the engine down, say)
                logger.exception("create %r failed", ref)
                refusal = {"status": 503, "error": f"the run could not be created ({exc})"}
                answer = "{" + head + json.dumps({**refusal, "retry_after": 1})[1:]
            await self.send(text_data=answer)
        except Exception:
            # The create itself is complete or refused; only the answer is lost. The producer
            # sends it again after reconnecting and gets the run (200).
            logger.exception("could not answer create %r", ref)
        finally:
            self.slots.release()

    async def disconnect(self, code: int) -> None:
        """Creates in flight finish on their own: a recorded run reaches its queue."""

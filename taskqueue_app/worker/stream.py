"""Creating runs from another process over the server's producer stream: one kept-open
WebSocket per process, many creates in flight, each answered once its record is durable.

``ProducerStream.create`` may be called from any thread (a sync view under gunicorn, a shell);
the connection lives in a daemon thread of its own with an event loop. A dropped connection is
opened again and every unanswered create sent again: each carries its run's id and dynamic
key, so the server answers a create that had landed with that run instead of a second one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import threading
from typing import Any
from urllib.parse import urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidMessage,
    InvalidStatus,
    WebSocketException,
)
from websockets.typing import Subprotocol

from .http import EnqueueError, run_or_raise, split_api_url

__all__ = ["ProducerStream", "stream_for"]

SUBPROTOCOL = Subprotocol("taskqueue.producer")
_streams: dict[tuple[str, str | None, int], ProducerStream] = {}
_streams_lock = threading.Lock()


def stream_for(base: str, token: str | None, timeout: float) -> ProducerStream:
    """This process's stream to the API at ``base`` (made on first use; a forked child makes
    its own, since threads do not survive a fork)."""
    key = (base, token, os.getpid())
    with _streams_lock:
        stream = _streams.get(key)
        if stream is None:
            stream = _streams[key] = ProducerStream(base, token, timeout)
        return stream


def stream_url(base: str) -> str:
    """The producer stream's WebSocket URL under the API base ``base`` (http -> ws)."""
    parts = split_api_url(base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + "/task_runs/stream"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


class ProducerStream:
    """Creates over one WebSocket, from any thread; see the module's docstring."""

    def __init__(self, base: str, token: str | None, timeout: float = 10.0) -> None:
        self.base = base
        self.url = stream_url(base)
        self.token = token
        self.timeout = timeout
        self._refs = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock = threading.Lock()
        # Everything below lives in the stream's loop.
        self._pending: dict[int, tuple[str, asyncio.Future]] = {}
        self._ws: ClientConnection | None = None
        self._opening: asyncio.Task | None = None

    # -- from any thread ---------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict:
        """Create the run ``body`` describes; the created (or existing) run.

        Raises ``QueueFull`` (503), ``ValidationError`` (400, 413) or ``EnqueueError``.
        """
        future = asyncio.run_coroutine_threadsafe(self._create(body), self._running_loop())
        try:
            status, data = future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise self._no_answer(body) from None
        return run_or_raise(status, data)

    async def acreate(self, body: dict[str, Any]) -> dict:
        """``create`` for async code (of any loop but the stream's own)."""
        future = asyncio.run_coroutine_threadsafe(self._create(body), self._running_loop())
        try:
            async with asyncio.timeout(self.timeout):
                status, data = await asyncio.wrap_future(future)
        except TimeoutError:
            raise self._no_answer(body) from None
        return run_or_raise(status, data)

    def open(self) -> None:
        """Connect now rather than at the first create (a producer about to send a burst)."""
        asyncio.run_coroutine_threadsafe(self._connection(), self._running_loop()).result(
            self.timeout
        )

    def _no_answer(self, body: dict[str, Any]) -> EnqueueError:
        return EnqueueError(
            f"the task server did not answer within {self.timeout} s; run {body.get('id')} "
            "may still be created: check its result before enqueueing it again"
        )

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(
                    target=self._loop.run_forever, name="taskqueue-producer-stream", daemon=True
                ).start()
            return self._loop

    # -- in the stream's loop ----------------------------------------------------------------

    async def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        ref = next(self._refs)
        frame = json.dumps({"type": "create", "ref": ref, "run": body}, separators=(",", ":"))
        answer = asyncio.get_running_loop().create_future()
        self._pending[ref] = (frame, answer)
        try:
            ws = await self._connection()
            try:
                await ws.send(frame)
            except ConnectionClosed:
                # A connection that dropped under us: its reader, which sees the close too,
                # opens a new one and sends every pending create again, this one included (it
                # was pending before the send), or fails them all if none can be opened.
                pass
            return await answer
        finally:
            self._pending.pop(ref, None)

    async def _connection(self) -> ClientConnection:
        """The open connection, or a new one (one opening at a time, shared by every create)."""
        if self._ws is not None:
            return self._ws
        if self._opening is None or self._opening.done():
            self._opening = asyncio.get_running_loop().create_task(self._open())
        return await asyncio.shield(self._opening)

    async def _open(self) -> ClientConnection:
        """Connect and authenticate; a server that cannot be reached (restarting, say) is tried
        again until ``timeout`` has passed, a refusal is final."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.timeout, 0.05
        while True:
            try:
                ws = await connect(
                    self.url, subprotocols=[SUBPROTOCOL], open_timeout=self.timeout, max_size=None
                )
                break
            except (OSError, TimeoutError, InvalidMessage, InvalidStatus) as exc:
                refused = isinstance(exc, InvalidStatus) and exc.response.status_code < 500
                if refused:
                    raise EnqueueError(
                        f"the task server refused the producer stream: {exc}"
                    ) from exc
                # Not answering yet, or half-way through a restart: try again shortly.
                if loop.time() + pause > deadline:
                    raise EnqueueError(
                        f"cannot reach the task server at {self.base} (its producer stream): {exc}"
                    ) from exc
                await asyncio.sleep(pause)  # a backoff between attempts, not a synchronisation
                pause = min(pause * 2, 1.0)
            except WebSocketException as exc:
                raise EnqueueError(f"the task server refused the producer stream: {exc}") from exc
        try:
            await ws.send(json.dumps({"type": "auth", "token": self.token}))
            async with asyncio.timeout(self.timeout):
                reply = json.loads(await ws.recv())
        except ConnectionClosed as exc:
            reason = exc.rcvd.reason if exc.rcvd else "closed"
            raise EnqueueError(f"the task server refused the producer stream: {reason}") from exc
        except (OSError, TimeoutError, ValueError) as exc:
            raise EnqueueError(
                f"cannot reach the task server at {self.base} (its producer stream): {exc}"
            ) from exc
        if reply != {"type": "auth_success"}:
            await ws.close()
            raise EnqueueError(f"the task server answered the producer stream with {reply!r:.200}")
        self._ws = ws
        asyncio.get_running_loop().create_task(self._read(ws))
        return ws

    async def _read(self, ws: ClientConnection) -> None:
        """Hand each answer to its create; after a drop, reconnect and send the rest again."""
        try:
            async for message in ws:
                answer = json.loads(message)
                pending = self._pending.get(answer.get("ref"))
                if pending is not None and not pending[1].done():
                    data = answer.get("run") if "run" in answer else answer
                    pending[1].set_result((answer.get("status"), data))
        except ConnectionClosed:
            pass
        finally:
            if self._ws is ws:
                self._ws = None
        if not self._pending:
            return
        try:
            fresh = await self._connection()
            for frame, answer in list(self._pending.values()):
                if not answer.done():
                    await fresh.send(frame)
        except ConnectionClosed:
            pass  # the fresh connection dropped too: its own reader starts over
        except EnqueueError as error:  # no connection could be opened in time
            for _, answer in list(self._pending.values()):
                if not answer.done():
                    answer.set_exception(error)

    def close(self) -> None:
        """Close the connection and stop the stream's thread (tests; a process exits anyway)."""
        loop = self._loop
        if loop is None:
            return

        async def shut() -> None:
            if self._ws is not None:
                await self._ws.close()

        asyncio.run_coroutine_threadsafe(shut(), loop).result(self.timeout)
        loop.call_soon_threadsafe(loop.stop)
        self._loop = None

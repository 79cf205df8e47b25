"""The worker client: dials out to the server over WebSocket, runs delivered runs, reports outcomes.

Usable without a Django project: it imports nothing from Django, and ``python -m
taskqueue_app.worker --url URL dotted.path ...`` runs one (see ``worker.cli``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from .calls import (
    DEFAULT_MAX_MESSAGE_BYTES,
    WorkerAuthError,
    backoff_delay,
    check_auth_reply,
    describe_failure,
    install_signal_handlers,
    subscription_url,
    task_key_of,
    unwrap_task,
)
from .runs import RunBook

logger = logging.getLogger(__name__)

__all__ = ["TaskWorker", "WorkerAuthError", "subscription_url", "task_key_of", "unwrap_task"]

MAX_PREFETCH = 100  # the server's bound on ``prefetch`` (DESIGN §6.3)
AUTH_CLOSE_CODE = 1008


class TaskWorker(RunBook):
    """Runs task runs delivered by a taskqueue server; one instance per process is the norm.

    ``tasks`` maps task keys to callables (or is an iterable of callables, each served under
    ``task_key_of``). Async functions run in the worker's loop, sync ones in a thread pool of
    ``limit``; at most ``limit`` runs at once. Call ``run()`` (a coroutine) or ``run_forever()``.
    """

    def __init__(
        self,
        url: str,
        tasks: Mapping[str, Callable] | Iterable[Callable],
        token: str | None = None,
        limit: int = 10,
        client_id: str | None = None,
        *,
        max_backoff: float = 10.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if isinstance(tasks, Mapping):
            pairs = list(tasks.items())
        else:
            pairs = [(task_key_of(target), target) for target in tasks]
        if not pairs:
            raise ValueError("a worker needs at least one task to serve")
        if not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        self.url = url
        self.ws_url = subscription_url(url)
        self.tasks: dict[str, Any] = dict(pairs)
        self.functions = {key: unwrap_task(target) for key, target in pairs}
        self.token = token
        self.limit = limit
        self.client_id = client_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.max_backoff = max_backoff
        self.max_message_bytes = max_message_bytes
        self.completed = 0  # runs reported, whatever their outcome (for tests and stats)
        self._ws: ClientConnection | None = None
        self._init_runs()
        self._stopping = False
        self._forced = False
        self._quit_sent = False
        self._stop_event: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set while subscribed; other threads (tests, an embedding program) may wait on it.
        self.connected = threading.Event()

    # -- public -------------------------------------------------------------------------------

    @property
    def keys(self) -> list[str]:
        """The task keys this worker subscribes to, in the order given."""
        return list(self.tasks)

    @property
    def forced(self) -> bool:
        """True when a second stop request cut running runs short."""
        return self._forced

    def run_forever(self) -> None:
        """Run until stopped (SIGINT/SIGTERM in the main thread); blocks."""
        asyncio.run(self.run())

    async def run(self) -> None:
        """Connect, serve, reconnect on any disconnect, until ``stop()`` or a signal.

        Raises ``WorkerAuthError`` when the server refuses the token.
        """
        loop = self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.limit, thread_name_prefix="taskworker")
        signals = install_signal_handlers(loop, self.stop)
        attempt = 0
        try:
            while not self._finished():
                try:
                    if await self._serve_connection():
                        attempt = 0  # it was up and subscribed: start the back-off again
                except WorkerAuthError as exc:
                    logger.error("authentication failed, stopping: %s", exc)
                    self._forced = True
                    raise
                except (OSError, TimeoutError, WebSocketException) as exc:
                    logger.warning("cannot reach %s: %s", self.ws_url, describe_failure(exc))
                if self._finished():
                    break
                delay = backoff_delay(attempt, self.max_backoff)
                attempt += 1
                logger.info("reconnecting in %.2f s", delay)
                try:
                    async with asyncio.timeout(delay):  # wait_for could swallow a cancel (3.11)
                        await self._stop_event.wait()
                    self._stop_event.clear()
                except TimeoutError:
                    pass
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            for task in list(self._running.values()):
                task.cancel()
            self._executor.shutdown(wait=False, cancel_futures=True)
            logger.info("worker %s stopped", self.client_id)

    def stop(self, force: bool = False) -> None:
        """Stop taking runs and finish those running; ``force``: hand them back and exit now.

        A second call without ``force`` counts as forced (a second Ctrl-C). Thread-safe.
        """
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                in_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                in_loop = False
            if not in_loop:
                loop.call_soon_threadsafe(self.stop, force)
                return
        if self._stopping and not force:
            force = True  # a second request means "now"
        if force:
            self._forced = True
            logger.warning(
                "stopping now: %d running run(s) cancelled; the server records them CRASHED "
                "and retries those with retries left",
                len(self._running),
            )
            for task in list(self._running.values()):
                task.cancel()
        elif not self._stopping:
            logger.info(
                "stopping: finishing %d running run(s); a second signal stops at once",
                len(self._running),
            )
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        self._maybe_quit()

    # -- connection ---------------------------------------------------------------------------

    def _finished(self) -> bool:
        if self._forced:
            return True
        return self._stopping and not self._running and not self._unconfirmed

    async def _serve_connection(self) -> bool:
        """One connection's life; True if it got as far as subscribing."""
        try:
            ws = await connect(
                self.ws_url,
                subprotocols=[Subprotocol("prefect")],
                max_size=self.max_message_bytes * 2,
                compression=None,  # small JSON frames: deflate costs more CPU than it saves
                open_timeout=10,
                user_agent_header="taskqueue-worker",
            )
        except InvalidStatus as exc:
            if exc.response.status_code in (401, 403):
                raise WorkerAuthError(
                    f"the server refused the WebSocket upgrade with HTTP {exc.response.status_code}"
                ) from exc
            raise
        subscribed = False
        closed: ConnectionClosed | None = None
        async with ws:
            try:
                await self._handshake(ws)
                subscribed = True
                self._ws, self._quit_sent = ws, False
                self.connected.set()
                logger.info(
                    "connected to %s as %s, serving %s", self.ws_url, self.client_id, self.keys
                )
                await self._reannounce()
                self._maybe_quit()
                async for message in ws:
                    self._on_message(message)
            except ConnectionClosed as exc:
                closed = exc
            finally:
                self._ws = None
                self.connected.clear()
                # Runs delivered but not acked go back to the server's retry queue on close.
                self._waiting.clear()
        code = closed.rcvd.code if closed is not None and closed.rcvd else ws.close_code
        if code == AUTH_CLOSE_CODE:
            reason = ws.close_reason or "the server refused the token (close code 1008)"
            raise WorkerAuthError(reason)
        if not self._quit_sent:
            logger.warning(
                "connection closed (code %s), will reconnect", code if code is not None else 1006
            )
        return subscribed

    async def _handshake(self, ws: ClientConnection) -> None:
        """Authenticate (token may be null when the server asks none), then subscribe."""
        await ws.send(json.dumps({"type": "auth", "token": self.token}))
        check_auth_reply(await ws.recv())
        prefetch = max(1, min(MAX_PREFETCH, self.limit - len(self._running)))
        subscribe = {"type": "subscribe", "keys": self.keys, "client_id": self.client_id}
        # ``limit``: the server sends a run only while we hold fewer than that in any state, so
        # a busy worker is never sent one it cannot start while another worker could.
        outcomes = {"reports_outcomes": True, "limit": self.limit}
        await ws.send(json.dumps({**subscribe, "prefetch": prefetch, **outcomes}))

    def _on_idle(self) -> None:
        if self._stopping and self._stop_event is not None:
            self._stop_event.set()
        self._maybe_quit()

    def _maybe_quit(self) -> None:
        """Once stopping and idle: ask the server to take back unacked runs and close."""
        ws = self._ws
        if ws is None or self._quit_sent or not self._finished():
            return
        self._quit_sent = True
        asyncio.get_running_loop().create_task(self._quit(ws))

    async def _quit(self, ws: ClientConnection) -> None:
        try:
            await ws.send(json.dumps({"type": "quit"}))
            async with asyncio.timeout(5):
                await ws.wait_closed()
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            await ws.close()

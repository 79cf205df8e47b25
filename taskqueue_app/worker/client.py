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
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
from websockets.typing import Subprotocol

from .calls import (
    DEFAULT_MAX_MESSAGE_BYTES,
    OutcomeError,
    TaskCalls,
    WorkerAuthError,
    backoff_delay,
    check_auth_reply,
    describe_failure,
    error_of,
    install_signal_handlers,
    subscription_url,
    task_key_of,
    unwrap_task,
)

logger = logging.getLogger(__name__)

__all__ = ["TaskWorker", "WorkerAuthError", "subscription_url", "task_key_of", "unwrap_task"]

MAX_PREFETCH = 100  # the server's bound on ``prefetch`` (DESIGN §6.3)
AUTH_CLOSE_CODE = 1008


class TaskWorker(TaskCalls):
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
        self._waiting: deque[dict[str, Any]] = deque()  # delivered, not acked: no free slot yet
        self._running: dict[str, asyncio.Task] = {}
        self._outbox: list[str] = []  # outcomes the connection dropped before sending
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
                    await asyncio.wait_for(self._stop_event.wait(), delay)
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
        return self._stopping and not self._running and not self._outbox

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
                await self._flush_outbox()
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
        await ws.send(json.dumps({**subscribe, "prefetch": prefetch, "reports_outcomes": True}))

    async def _flush_outbox(self) -> None:
        """Report outcomes of runs that finished while the connection was down."""
        while self._outbox and self._ws is not None:
            await self._ws.send(self._outbox[0])
            self._outbox.pop(0)
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
            await asyncio.wait_for(ws.wait_closed(), 5)
        except (ConnectionClosed, TimeoutError):
            pass
        finally:
            await ws.close()

    # -- runs ---------------------------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        """A frame from the server: a run to take (when a slot is free) or to keep for later."""
        try:
            run = json.loads(message)
        except ValueError:
            logger.warning("ignoring a frame that is not JSON: %.200r", message)
            return
        if not isinstance(run, dict) or "id" not in run or "task_key" not in run:
            logger.warning("ignoring a frame that is not a task run: %.200r", message)
            return
        if self._stopping:
            return  # not acked: handed back to the server by our quit
        if len(self._running) < self.limit:
            self._take(run)
        else:
            self._waiting.append(run)

    def _take(self, run: dict[str, Any]) -> None:
        """Ack it, report it started, and run it; the slot was checked by the caller."""
        run_id = str(run["id"])
        ws = self._ws
        if ws is None or run_id in self._running:
            return
        task = asyncio.get_running_loop().create_task(self._execute(ws, run))
        self._running[run_id] = task
        task.add_done_callback(partial(self._on_done, run_id))

    def _on_done(self, run_id: str, task: asyncio.Task) -> None:
        self._running.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("run %s: worker error", run_id, exc_info=task.exception())
        while self._waiting and len(self._running) < self.limit and not self._stopping:
            self._take(self._waiting.popleft())
        if self._stopping and self._stop_event is not None:
            self._stop_event.set()
        self._maybe_quit()

    async def _execute(self, ws: ClientConnection, run: dict[str, Any]) -> None:
        run_id, key = str(run["id"]), str(run["task_key"])
        if key not in self.functions:
            # Not ours: the server only sends subscribed keys, so this is a server's mistake.
            # Report it failed (retried elsewhere if it has retries left) rather than crash.
            message = f"no task registered for key {key!r} on worker {self.client_id}"
            try:
                await ws.send(json.dumps({"type": "ack", "id": run_id}))
            except ConnectionClosed:
                return  # not acked: the server already has it back
            await self._report(run, 0.0, error=OutcomeError("UnknownTaskKey", message).error)
            return
        try:
            # A slot is free: ack the run (the protocol's step 4), then report it started (step
            # 5). Both state writes usually merge into one in the server's records batch.
            quoted = json.dumps(run_id)
            await ws.send(f'{{"type":"ack","id":{quoted}}}')
            await ws.send(f'{{"type":"started","id":{quoted}}}')
        except ConnectionClosed:
            return  # never started here: the server gives it to the next worker
        started = time.perf_counter()
        try:
            text = self.result_json(key, await self.invoke(key, run))
        except asyncio.CancelledError:
            logger.warning("run %s %s cancelled (worker stopping)", key, run_id)
            raise
        except OutcomeError as exc:
            await self._report(run, started, error=exc.error)
        except Exception as exc:
            await self._report(run, started, error=error_of(exc))
        else:
            await self._report(run, started, result_json=text)

    async def _report(
        self,
        run: dict[str, Any],
        started: float,
        result_json: str = "null",
        error: dict[str, Any] | None = None,
    ) -> None:
        run_id, key = str(run["id"]), run["task_key"]
        elapsed_ms = (time.perf_counter() - started) * 1000 if started else 0.0
        if error is None:
            # The result is JSON already (checked, and sized, once): splice it in.
            message = f'{{"type":"completed","id":{json.dumps(run_id)},"result":{result_json}}}'
            logger.info("run %s %s completed in %.1f ms", key, run_id, elapsed_ms)
        else:
            message = json.dumps({"type": "failed", "id": run_id, "error": error})
            logger.info(
                "run %s %s failed in %.1f ms: %s: %s",
                key,
                run_id,
                elapsed_ms,
                error["type"],
                error["message"],
            )
        self.completed += 1
        await self._send(self._ws, message)

    async def _send(self, ws: ClientConnection | None, message: str) -> None:
        """Send now if connected, else keep it for the next connection (outcomes are not lost)."""
        if ws is not None and ws is self._ws:
            try:
                await ws.send(message)
                return
            except ConnectionClosed:
                pass
        self._outbox.append(message)

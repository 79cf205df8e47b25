"""What a worker does with the runs it is sent, and what it tells the server about them.

A run is started only once the server has recorded who runs it (its ``recorded`` answer to
``started``), so two living workers never run the same run, even across a server restart.
Every report stays in hand until the server confirms it durable, and is sent again after a
reconnect. A run sent again (a server restarted before our reports were durable) is recognised:
the worker says what it knows of it instead of running it twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from functools import partial
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..errors import UnknownTaskKey
from .calls import OutcomeError, TaskCalls, error_of

logger = logging.getLogger("taskqueue_app.worker.client")

__all__ = ["RunBook"]

# How many finished runs a worker remembers, to recognise one the server sends again.
FINISHED_MEMORY = 10_000
GO, CANCELLED = "go", "cancelled"


def _message(kind: str, run_id: str) -> str:
    return f'{{"type":"{kind}","id":{json.dumps(run_id)}}}'


def _one_line(text: str, limit: int = 500) -> str:
    """``text`` fit for one log line: line breaks shown as ``\\n``, at most ``limit`` chars."""
    flat = text.replace("\r", "\\r").replace("\n", "\\n")
    return flat if len(flat) <= limit else f"{flat[: limit - 1]}…"


class RunBook(TaskCalls):
    """The run side of ``TaskWorker``: runs waiting for a slot, waiting for the server's go,
    running, and finished with a report the server has not confirmed yet."""

    client_id: str
    limit: int
    _ws: ClientConnection | None
    _stopping: bool

    def _init_runs(self) -> None:
        self._waiting: deque[dict[str, Any]] = deque()  # delivered, no free slot yet
        self._running: dict[str, asyncio.Task] = {}  # waiting for the go, or running
        self._gates: dict[str, asyncio.Future[str]] = {}  # the server's go (or cancel)
        self._cancelled: set[str] = set()  # runs the server told us to cancel
        self._unconfirmed: dict[str, tuple[str, str]] = {}  # id -> (kind, report) unconfirmed
        # id -> (attempt, kind, report) of runs finished here, oldest first, to recognise an
        # attempt sent again; a retry is a later attempt (its run_count counts ours) and runs.
        self._reports: OrderedDict[str, tuple[int, str, str]] = OrderedDict()
        self._attempts: dict[str, int] = {}  # id -> the attempt a run in hand is
        self._background: set[asyncio.Task] = set()

    @property
    def unconfirmed_reports(self) -> int:
        """Reports (outcomes) sent or waiting to be sent that the server has not confirmed."""
        return len(self._unconfirmed)

    # -- frames from the server ---------------------------------------------------------------

    def _on_message(self, message: str | bytes) -> None:
        """A run to take (when a slot is free) or to keep, or the server's word on a run."""
        try:
            data = json.loads(message)
        except ValueError:
            logger.warning("ignoring a frame that is not JSON: %.200r", message)
            return
        if not isinstance(data, dict) or "id" not in data:
            logger.warning("ignoring a frame that is not a task run: %.200r", message)
            return
        kind = data.get("type")
        if kind == "recorded":
            self._on_recorded(str(data["id"]), str(data.get("of") or ""))
        elif kind == "cancel":
            self._on_cancel(str(data["id"]))
        elif "task_key" not in data:
            logger.warning("ignoring a frame that is not a task run: %.200r", message)
        else:
            self._on_run(data)

    def _on_run(self, run: dict[str, Any]) -> None:
        run_id = str(run["id"])
        attempt = int(run.get("run_count") or 0) + 1
        known = self._reports.get(run_id)
        if run_id in self._running or (known is not None and attempt <= known[0]):
            # This attempt, sent again (the server lost our reports in a restart): say what we
            # know of it instead of running it twice.
            self._spawn(self._recognise(run_id))
            return
        self._attempts[run_id] = attempt
        if self._stopping:
            return  # not acked: handed back to the server by our quit
        if len(self._running) < self.limit:
            self._take(run)
        else:
            self._waiting.append(run)

    async def _recognise(self, run_id: str) -> None:
        await self._send(_message("ack", run_id))
        if run_id in self._running:
            await self._send(_message("started", run_id))
        else:
            _, kind, message = self._reports[run_id]
            await self._report_again(run_id, kind, message)

    def _on_recorded(self, run_id: str, of: str) -> None:
        if of == "started":
            gate = self._gates.get(run_id)
            if gate is not None and not gate.done():
                gate.set_result(GO)
            return
        pending = self._unconfirmed.get(run_id)
        if pending is not None and pending[0] == of:
            del self._unconfirmed[run_id]
            self._maybe_quit()

    def _on_cancel(self, run_id: str) -> None:
        """Do not run it, or stop running it: an async task is cancelled, a sync one abandoned
        (its thread runs on to its end, and what it returns is dropped)."""
        self._cancelled.add(run_id)
        gate = self._gates.get(run_id)
        task = self._running.get(run_id)
        if gate is not None and not gate.done():
            gate.set_result(CANCELLED)
        elif task is not None:
            task.cancel()
        else:
            waiting = [run for run in self._waiting if str(run["id"]) == run_id]
            for run in waiting:
                self._waiting.remove(run)
            if not waiting and run_id in self._unconfirmed:
                # It finished here and its outcome is not recorded yet: that report stands
                # (it may be in flight, or lost with the connection and sent again), never
                # replaced by a cancelled the run did not end with.
                return
            self._spawn(self._report_cancelled(run_id))

    # -- running --------------------------------------------------------------------------------

    def _take(self, run: dict[str, Any]) -> None:
        """Ack it, ask to start it, and run it on the server's go; the caller checked the slot."""
        run_id = str(run["id"])
        task = asyncio.get_running_loop().create_task(self._execute(run))
        self._running[run_id] = task
        task.add_done_callback(partial(self._on_done, run_id))

    def _on_done(self, run_id: str, task: asyncio.Task) -> None:
        self._running.pop(run_id, None)
        self._gates.pop(run_id, None)
        self._attempts.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            logger.error("run %s: worker error", run_id, exc_info=task.exception())
        while self._waiting and len(self._running) < self.limit and not self._stopping:
            self._take(self._waiting.popleft())
        self._on_idle()

    async def _execute(self, run: dict[str, Any]) -> None:
        run_id, key = str(run["id"]), str(run["task_key"])
        if key not in self.functions:
            # Not ours: the server only sends subscribed keys, so this is a server's mistake.
            # Report it failed (retried elsewhere if it has retries left) rather than crash.
            message = f"no task registered for key {key!r} on worker {self.client_id}"
            await self._send(_message("ack", run_id))
            await self._report(run, 0.0, error=OutcomeError(UnknownTaskKey, message).error)
            return
        gate = self._gates[run_id] = asyncio.get_running_loop().create_future()
        # A slot is free: ask to start the run (step 5), which acks it too (step 4), and wait
        # for the server's go: it answers once RUNNING is durable, or cancels. A separate ack
        # first cost the Redis engine a round trip and a record write per run (a fifth of its
        # throughput in the scale_out stage); the memory engine showed no difference.
        await self._send(_message("started", run_id))
        if await gate == CANCELLED:
            logger.info("run %s %s not started: the server cancelled it", key, run_id)
            await self._report_cancelled(run_id)
            return
        started = time.perf_counter()
        try:
            text = self.result_json(key, await self.invoke(key, run))
        except asyncio.CancelledError:
            if run_id not in self._cancelled:
                logger.warning("run %s %s cancelled (worker stopping)", key, run_id)
                raise
            logger.info("run %s %s cancelled by the server", key, run_id)
            await self._report_cancelled(run_id)
        except OutcomeError as exc:
            await self._report(run, started, error=exc.error)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and the like fail the run only
            await self._report(run, started, error=error_of(exc))
        else:
            await self._report(run, started, result_json=text)

    # -- reports ----------------------------------------------------------------------------------

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
            kind = "completed"
            message = f'{{"type":"completed","id":{json.dumps(run_id)},"result":{result_json}}}'
            logger.info("run %s %s completed in %.1f ms", key, run_id, elapsed_ms)
        else:
            kind = "failed"
            message = json.dumps({"type": "failed", "id": run_id, "error": error})
            self._log_failure(run, elapsed_ms, error, started=bool(started))
        self.completed += 1
        await self._report_again(run_id, kind, message)

    def _log_failure(
        self, run: dict[str, Any], elapsed_ms: float, error: dict[str, Any], started: bool
    ) -> None:
        """One line for an attempt the server will retry; for a final failure, that line with
        the task's traceback under it (the record keeps every attempt's traceback anyway)."""
        run_id, key = str(run["id"]), run["task_key"]
        policy = run.get("empirical_policy") or {}
        retries = int(policy.get("retries") or 0)
        # The server's rule (lifecycle): retried while the attempts so far, counting this one
        # once it has started, are no more than the retries allowed.
        delivered = int(run.get("run_count") or 0)
        attempt = delivered + 1 if started else max(delivered, 1)
        what = f"{error['type']}: {_one_line(str(error['message']))}"
        head = f"run {key} {run_id} failed in {elapsed_ms:.1f} ms: {what}"
        if attempt <= retries:
            delay = float(policy.get("retry_delay_seconds") or 0)
            logger.warning("%s; retry %d of %d in %g s", head, attempt, retries, delay)
            return
        if retries:
            head += f"; no retries left ({retries} used)"
        trace = (error.get("traceback") or "").rstrip()
        if trace:
            head += "\n" + trace
        logger.error("%s", head)

    async def _report_cancelled(self, run_id: str) -> None:
        await self._report_again(run_id, "cancelled", _message("cancelled", run_id))

    async def _report_again(self, run_id: str, kind: str, message: str) -> None:
        """Send a report and keep it until the server confirms it (``recorded``)."""
        self._unconfirmed[run_id] = (kind, message)
        attempt = self._attempts.get(run_id) or self._reports.get(run_id, (0,))[0]
        self._reports[run_id] = (attempt, kind, message)
        self._reports.move_to_end(run_id)
        if len(self._reports) > FINISHED_MEMORY:
            self._reports.popitem(last=False)
        await self._send(message)

    async def _reannounce(self) -> None:
        """After a reconnect: ask again to start (or resume) every run in hand, and send every
        report the server has not confirmed."""
        for run_id in list(self._running):
            await self._send(_message("started", run_id))
        for _, message in list(self._unconfirmed.values()):
            await self._send(message)

    async def _send(self, message: str) -> None:
        """Send now if connected; a report is kept anyway and sent again after a reconnect."""
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(message)
            except ConnectionClosed:
                pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_idle(self) -> None:
        """Hook of the connection side: a run ended or a report was confirmed."""

    def _maybe_quit(self) -> None:
        """Hook of the connection side: once stopping and idle, quit."""

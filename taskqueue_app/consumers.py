"""The WebSocket subscription consumer: streams a key's runs to workers, one ack per run (§6)."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
import weakref
from typing import Any

from . import auth, daphne_close, lifecycle, metrics, protocol, server
from .conf import taskqueue_settings
from .protocol import ProtocolError, Subscription
from .queues import Queues, get_queues
from .records import writer
from .schemas import TaskRun
from .sockets import DirectWebsocketConsumer
from .states import CANCELLING

logger = logging.getLogger(__name__)

__all__ = ["SubscriptionConsumer", "close_all_subscriptions", "live_subscriptions"]

# Over Daphne, let 1008/1012/4001 and their reasons reach the client (see daphne_close).
daphne_close.install()

# Every live connection, so that a stopping server can tell each worker to reconnect.
_live: weakref.WeakSet[SubscriptionConsumer] = weakref.WeakSet()
_closers: set[asyncio.Task] = set()  # tasks of ``_spawn``
FLUSH_TURNS = 3


def _spawn(work: Any) -> None:
    """Run ``work`` in a task of its own (from a callback, or to outlive the caller's task)."""
    task = asyncio.get_running_loop().create_task(work)
    _closers.add(task)  # a task nobody references may be collected before it runs
    task.add_done_callback(_closers.discard)


class Phase(enum.Enum):
    """Where a connection is in the protocol."""

    CONNECTING = "connecting"
    AUTH = "auth"
    SUBSCRIBE = "subscribe"
    SUBSCRIBED = "subscribed"
    CLOSED = "closed"


def live_subscriptions() -> int:
    """How many connections are open in this process."""
    return sum(consumer.phase is not Phase.CLOSED for consumer in list(_live))


async def close_all_subscriptions() -> int:
    """The server is stopping: close every connection with 1012 so that its worker reconnects.

    Never 1000/1001, which Prefect's client takes as final. Run states are left as recorded:
    unacked runs are SCHEDULED and restored at the next start; runs a worker took stay with it
    and it reports their outcome after reconnecting.
    """
    consumers = [consumer for consumer in list(_live) if consumer.phase is not Phase.CLOSED]
    for consumer in consumers:
        await consumer.stop_for_restart()
    if consumers:
        logger.info("closed %d subscriptions for a server restart (1012)", len(consumers))
        # The close frames sit in the transports' buffers until the loop polls the sockets;
        # Daphne drops every connection, unflushed, as soon as the shutdown hooks finish. A few
        # turns of the loop let them go out (no timer: a writable socket is flushed at once).
        for _ in range(FLUSH_TURNS):
            await asyncio.sleep(0)
    return len(consumers)


class SubscriptionConsumer(DirectWebsocketConsumer):
    """One worker connection: auth, subscribe, then runs out and acks/outcomes in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn_id = uuid.uuid4().hex  # the "holder" of the runs this connection claims
        self.phase = Phase.CONNECTING
        self.subscription: Subscription | None = None
        # Runs sent and not yet acked, oldest first, with when each was sent (monotonic).
        self.unacked: dict[uuid.UUID, float] = {}
        # Runs in the worker's hands in any state (sent, acked, started), for ``limit``.
        self.holding: set[uuid.UUID] = set()
        # The copy of each run this connection last put in the engine's hands: an ack or an
        # outcome then checks and changes it in one engine call (``Queues.swap``), no lookup.
        self.copies: dict[uuid.UUID, TaskRun] = {}
        # Reports to confirm with ``recorded`` once their writes are durable, and the task that
        # sends those confirmations (one per connection, a batch per commit).
        self.to_confirm: list[tuple[uuid.UUID, str]] = []
        self.confirmer: asyncio.Task | None = None
        self.credits = 0
        self.credit_available = asyncio.Event()
        self.delivery: asyncio.Task | None = None
        self.restarting = False
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.queues: Queues = get_queues()

    async def finished(self) -> None:
        # Normally the disconnect handler has cleaned up; this covers a consumer cancelled or
        # crashed mid-way, so that its runs never stay held by a dead connection.
        if self.phase is not Phase.CLOSED:
            await self._end(give_back=not self.restarting)

    # -- the protocol -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Step 1: the ``prefect`` subprotocol means auth follows; none is legacy mode."""
        if not protocol.origin_allowed(self.scope):
            self.phase = Phase.CLOSED
            await self.close(code=protocol.CLOSE_POLICY_VIOLATION, reason=protocol.FOREIGN_ORIGIN)
            return
        if protocol.SUBPROTOCOL in (self.scope.get("subprotocols") or ()):
            self.phase = Phase.AUTH
            await self.accept(protocol.SUBPROTOCOL)
        elif auth.token_required():
            # Refused before accepting: the server answers the upgrade with HTTP 403.
            self.phase = Phase.CLOSED
            await self.close(code=protocol.CLOSE_POLICY_VIOLATION, reason=protocol.LEGACY_REFUSED)
            return
        else:
            self.phase = Phase.SUBSCRIBE
            await self.accept()
        _live.add(self)
        server.on_shutdown(close_all_subscriptions)
        # A client that never authenticates or subscribes must not hold a socket forever.
        self.handshake_timer = asyncio.get_running_loop().call_later(
            protocol.HANDSHAKE_SECONDS, self._handshake_expired
        )

    def _handshake_expired(self) -> None:
        if self.phase in (Phase.AUTH, Phase.SUBSCRIBE):
            _spawn(self._close(protocol.CLOSE_POLICY_VIOLATION, protocol.HANDSHAKE_TIMEOUT))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Every frame from the worker, routed by the phase the connection is in."""
        if self.phase is Phase.CLOSED:
            return
        try:
            message = protocol.decode(text_data, bytes_data, taskqueue_settings.MAX_MESSAGE_BYTES)
            if self.phase is Phase.SUBSCRIBED:
                await self._on_message(message)
            elif self.phase is Phase.AUTH:
                try:
                    protocol.check_auth(message)
                except ProtocolError:
                    metrics.rejected("unauthorized")
                    raise
                self.phase = Phase.SUBSCRIBE
                await self.send(text_data=protocol.AUTH_SUCCESS)
            else:
                await self._subscribe(protocol.parse_subscribe(message))
        except ProtocolError as error:
            await self._close(error.code, error.reason)

    async def _subscribe(self, subscription: Subscription) -> None:
        """Step 3: register the worker and start delivering, ``prefetch`` runs at a time."""
        self.subscription = subscription
        self.phase = Phase.SUBSCRIBED
        self._cancel_handshake_timer()
        await self.queues.connect(self.conn_id, subscription.client_id, subscription.keys)
        self.queues.listen(self.conn_id, self._on_notice)
        self._add_credits(subscription.prefetch)
        self.delivery = asyncio.get_running_loop().create_task(
            self._deliver(list(subscription.keys)),
            name=f"taskqueue-delivery-{self.conn_id}",
        )

    async def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ack":
            await self._ack(protocol.run_id_of(message, required=False))
        elif kind in protocol.OUTCOMES:
            await self._outcome(kind, protocol.run_id_of(message, required=True), message)
        elif kind == "quit":
            await self._close(protocol.CLOSE_NORMAL, None)
            return
        else:
            raise protocol.unknown_type(message)
        await self.queues.touch(self.conn_id)

    async def _ack(self, run_id: uuid.UUID | None) -> None:
        """Step 4: the named run, or the oldest unacked one, becomes PENDING; one more credit."""
        if run_id is None:
            if not self.unacked:
                return  # nothing to ack: a stray ack changes nothing
            run_id = next(iter(self.unacked))
        elif run_id not in self.unacked:
            return  # not a run this connection is waiting on (acked already, or never sent)
        sent_at = self.unacked.pop(run_id)
        assert self.subscription is not None
        watch = self.subscription.reports_outcomes
        pending = await lifecycle.acknowledge(
            self.conn_id, run_id, self.subscription.client_id, watch, self.copies.pop(run_id, None)
        )
        if pending is not None:
            metrics.acked(pending.task_key, sent_at)
            if watch:
                self.copies[run_id] = pending
        if not watch:
            self.holding.discard(run_id)  # handed over: no longer ours to count
        self._add_credits(1)

    async def _outcome(self, kind: str, run_id: uuid.UUID, message: dict[str, Any]) -> None:
        """Step 5: started / completed / failed, for a run of this or an earlier connection."""
        assert self.subscription is not None
        # An outcome before the ack implies the ack (our worker starts a run it can run at
        # once with ``started`` alone): the slot is free again.
        sent_at = self.unacked.pop(run_id, None)
        if sent_at is not None:
            self._add_credits(1)
        client_id = self.subscription.client_id
        known = self.copies.pop(run_id, None)
        if kind == "started":
            running = await lifecycle.start(self.conn_id, run_id, client_id, known)
            if running is None:
                # Finished already, or another live worker has it: this one must not run it.
                self.holding.discard(run_id)
                self._add_credits(0)
                await self.send(text_data=protocol.cancel(run_id))
                return
            if sent_at is not None:
                metrics.acked(running.task_key, sent_at)
            self.holding.add(run_id)  # a run resumed after a reconnect counts here too
            self.copies[run_id] = running
            if running.state_name == CANCELLING:
                # Resumed after its cancel was asked on a connection that is gone: ask again.
                await self.send(text_data=protocol.cancel(run_id))
        else:
            if kind == "completed":
                result = message.get("result")
                await lifecycle.complete(self.conn_id, run_id, result, client_id, known)
            elif kind == "failed":
                error = protocol.error_of(message)
                await lifecycle.fail(self.conn_id, run_id, error, client_id, known)
            else:
                await lifecycle.cancelled(self.conn_id, run_id, client_id, known)
            if run_id in self.holding:
                self.holding.discard(run_id)
                self._add_credits(0)  # a slot under ``limit`` is free again
        self._confirm(run_id, kind)

    def _confirm(self, run_id: uuid.UUID, kind: str) -> None:
        """Send ``recorded`` for this report once what it changed is durable (DESIGN §6.5)."""
        self.to_confirm.append((run_id, kind))
        if self.confirmer is None or self.confirmer.done():
            self.confirmer = asyncio.get_running_loop().create_task(self._send_confirmations())

    async def _send_confirmations(self) -> None:
        while self.to_confirm and self.phase is Phase.SUBSCRIBED:
            batch, self.to_confirm = self.to_confirm, []
            if not await writer.durable(frozenset(run_id for run_id, _ in batch)):
                # The database refused a write for good: say nothing, the worker sends again.
                logger.error("could not record reports of runs %s", [str(r) for r, _ in batch])
                continue
            for run_id, kind in batch:
                if self.phase is not Phase.SUBSCRIBED:
                    return
                await self.send(text_data=protocol.recorded(run_id, kind))

    def _on_notice(self, message: str) -> None:
        """A notice for this connection's worker (an operator's cancel), from any process.

        Only a worker that reports outcomes knows the frame: a Prefect client would take it
        for a malformed run.
        """
        if self.phase is Phase.SUBSCRIBED and self.subscription.reports_outcomes:
            _spawn(self.send(text_data=message))

    # -- delivery -------------------------------------------------------------------------------

    def _add_credits(self, count: int) -> None:
        self.credits += count
        self.credit_available.set()

    async def _deliver(self, keys: list[str]) -> None:
        """Claim and send runs while the worker has credit; sleep on an event otherwise."""
        queues = self.queues
        try:
            limit = self.subscription.limit if self.subscription else None
            while True:
                while self.credits <= 0 or (limit is not None and len(self.holding) >= limit):
                    self.credit_available.clear()
                    await self.credit_available.wait()
                # The claim records the run as held by this connection as it hands it over: if
                # the socket dies before the send, closing the connection gives it back, first
                # in line.
                run = await queues.claim(self.conn_id, keys)
                if self.phase is Phase.CLOSED:
                    # Closed while the claim was under way, and the cancel that should have
                    # stopped it was swallowed (redis-py's sends did so on Python 3.11): the
                    # run is treated as the connection's others were when it closed (given
                    # back, first in line; left held at a restart).
                    if not self.restarting:
                        await lifecycle.disconnect(self.conn_id)
                    return
                self.unacked[run.id] = time.monotonic()
                self.holding.add(run.id)
                self.copies[run.id] = run
                self.credits -= 1
                await self.send(text_data=run.to_json())
                await queues.touch(self.conn_id)
        except Exception:
            # Never leave a connection open that no longer delivers: close it (its runs go back)
            # from another task, since closing cancels this one.
            logger.exception("delivery to connection %s failed", self.conn_id)
            _spawn(self._close(protocol.CLOSE_INTERNAL_ERROR, "Internal server error"))

    def _cancel_handshake_timer(self) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None

    # -- closing ----------------------------------------------------------------------------------

    async def _close(self, code: int, reason: str | None) -> None:
        """Close from our side: give the runs back first (step 6/7), then send the close."""
        if self.phase is Phase.CLOSED:
            return
        await self._end(give_back=True)
        await self.close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        """The socket closed (cleanly or not): its runs go back (step 7)."""
        await self._end(give_back=not self.restarting)

    async def stop_for_restart(self) -> None:
        """Close with 1012 for a server restart, leaving the runs' states as recorded (step 9)."""
        if self.phase is Phase.CLOSED:
            return
        self.restarting = True
        # No await before the close frame is out: the server cancels every connection's task
        # right after its shutdown hooks start, and this must win that race.
        await self._end(give_back=False)
        await self.close(code=protocol.CLOSE_SERVICE_RESTART, reason=protocol.SERVICE_RESTART)

    async def _end(self, give_back: bool) -> None:
        """Stop delivering and forget the connection; with ``give_back`` its runs return too."""
        if self.phase is Phase.CLOSED:
            return
        self.phase = Phase.CLOSED
        self._cancel_handshake_timer()
        _live.discard(self)
        if self.delivery is not None:
            # Cancelling is enough: a run handed over in the same tick goes back to its queue
            # inside claim(), and one already claimed is held by conn_id and released below.
            self.delivery.cancel()
            self.delivery = None
        if self.confirmer is not None:
            self.confirmer.cancel()  # unconfirmed reports are sent again after a reconnect
            self.confirmer = None
        self.queues.unlisten(self.conn_id)
        await self.queues.disconnect(self.conn_id)
        self.unacked.clear()
        self.holding.clear()
        self.copies.clear()
        if give_back:
            await lifecycle.disconnect(self.conn_id)

"""The queue engine interface: where runs wait, who holds them, and what every server process
shares. Every method is a coroutine, because one engine talks to Redis over the network.

Runs are any objects with ``id``, ``task_key``, ``priority``, ``expected_start_time`` and
``state_type`` (``schemas.TaskRun`` in the app); an engine keeps them as given and never changes
their state: that is the lifecycle's job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from ..errors import QueueFull

logger = logging.getLogger(__name__)

__all__ = [
    "LANES",
    "RETRY",
    "SCHEDULED",
    "Connection",
    "Held",
    "QueueFull",
    "Queues",
    "check_lane",
]

# How long a cancel of a run an engine does not have yet keeps that run out (``cancel``): far
# longer than a create takes to record its run and admit it.
WITHDRAWN_TTL = 300.0

SCHEDULED = "scheduled"
RETRY = "retry"
LANES = (SCHEDULED, RETRY)


def check_lane(lane: str) -> str:
    """``lane``, or ``ValueError`` when it is not one of ``LANES``."""
    if lane not in LANES:
        raise ValueError(f"lane must be one of {', '.join(LANES)}, not {lane!r}")
    return lane


class Held(NamedTuple):
    """A run in a connection's hands, and which connection (the ``holder``) has it."""

    holder: str
    run: Any


@dataclass
class Connection:
    """One subscribed worker connection, as every server process sees it."""

    holder: str
    client_id: str
    task_keys: list[str]
    connected_since: datetime
    last_activity: datetime
    held: list[Any] = field(default_factory=list)


class Queues:
    """Base class of the engines, chosen by ``TASKQUEUE["QUEUES"]["BACKEND"]``.

    ``params`` is that dict (``BACKEND``, ``LOCATION``, ``OPTIONS``), as Django's ``CACHES``.
    """

    #: True when every process that names the same engine sees the same queues (Redis): then
    #: any process may create runs directly, not only the server process.
    shared = False

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        params = params or {}
        self.location: str | None = params.get("LOCATION")
        self.options: dict[str, Any] = dict(params.get("OPTIONS") or {})
        self._listeners: dict[str, Callable[[str], None]] = {}
        #: Called with the runs the engine gave back on its own, not at a caller's request
        #: (Redis: a dead server process's unacked runs, by any other process's reaper).
        self.on_given_back: Callable[[list[Any]], None] | None = None

    async def start(self) -> None:
        """Called once when a server process starts, before it restores anything. An engine
        that cannot serve from this process raises ``EngineUnavailable``."""

    # -- runs into lanes -------------------------------------------------------------------------

    async def enqueue(self, run: Any, lane: str = SCHEDULED) -> None:
        """Append a new run to its key's ``lane``; ``QueueFull`` at once when the lane is full.

        A run whose ``expected_start_time`` is in the future waits, deferred, until then.
        """
        raise NotImplementedError

    async def reserve(self, task_key: str, lane: str = SCHEDULED) -> None:
        """Promise one slot of ``lane`` to a run being recorded, or raise ``QueueFull``.

        The slot counts against the bound until ``admit(..., reserved=True)`` fills it or
        ``unreserve`` gives it back, so a create that is refused stores nothing.
        """
        raise NotImplementedError

    async def unreserve(self, task_key: str, lane: str = SCHEDULED) -> None:
        """Give back a slot ``reserve`` promised (the record was not written)."""
        raise NotImplementedError

    async def admit(self, run: Any, lane: str = SCHEDULED, *, reserved: bool = False) -> bool:
        """Take in a run already accepted (recorded, restored, retried): it is never refused.

        Deferred until ``expected_start_time``, then into the lane, or, while the lane is full,
        into the lane's backlog, fed in FIFO order as room frees up. ``reserved`` fills a slot
        ``reserve`` promised. True; False, taking nothing in (and giving back the reservation),
        for a run into the scheduled lane that ``cancel`` was asked for before it arrived.
        """
        raise NotImplementedError

    async def cancel(self, run_id: Any, *, keep_out: bool = False) -> Any | None:
        """Take a waiting (queued, deferred or backlogged) run out; the run, or None.

        With ``keep_out`` (an operator's cancel), a run the engine has nowhere, neither waiting
        nor held (one a create, in any process, is still recording), is kept out for
        ``WITHDRAWN_TTL`` seconds: its ``admit`` into the scheduled lane takes nothing in. Both
        steps are atomic, so a cancel and a create that race end with the run out of its queue
        whichever comes first.
        """
        raise NotImplementedError

    # -- delivery --------------------------------------------------------------------------------

    async def claim(self, holder: str, keys: list[str]) -> Any:
        """Wait, without polling, for the next run of ``keys`` and record it as held by
        ``holder`` in the same step: keys in the order given, retry before scheduled, within a
        lane higher ``priority`` first and FIFO among equals.

        A claim cancelled while a run was being handed to it puts that run back, first in line.
        """
        raise NotImplementedError

    async def hold(self, holder: str, run: Any) -> None:
        """Record ``run`` as held by ``holder`` (replacing the copy it holds, e.g. once acked
        or started); a run is held by one holder at a time."""
        raise NotImplementedError

    async def ack(self, holder: str, run_id: Any) -> Any | None:
        """Forget that ``holder`` holds ``run_id``; the run it held, or None."""
        raise NotImplementedError

    async def swap(self, holder: str, expected: Any, new: Any | None) -> bool:
        """If ``holder`` still holds ``expected`` unchanged (the copy it was handed or last
        held), replace it with ``new`` in one step, or with ``new=None`` forget the hold as
        ``ack`` does; True if so. False, changing nothing, when that copy changed or went to
        another holder meanwhile: the caller looks again with ``find_held``.

        One round trip where a lookup and a ``hold`` would take two, and no change made in
        between is overwritten.
        """
        raise NotImplementedError

    async def release(self, holder: str) -> list[Any]:
        """Put every run ``holder`` still holds back at the front of its key's retry lane (past
        the bound if need be), in claim order; the runs."""
        raise NotImplementedError

    async def held(self, holder: str) -> list[Any]:
        """The runs ``holder`` holds (sent, acked or started), oldest claim first."""
        raise NotImplementedError

    async def find_held(self, run_id: Any) -> Held | None:
        """Which holder holds ``run_id`` now, and its copy; None if nobody does."""
        raise NotImplementedError

    # -- connected workers -----------------------------------------------------------------------

    async def connect(self, holder: str, client_id: str, task_keys: list[str]) -> None:
        """Record a worker connection that has just subscribed to ``task_keys``."""
        raise NotImplementedError

    async def touch(self, holder: str) -> None:
        """Note activity (a delivery, an ack, an outcome) on a connection."""
        raise NotImplementedError

    async def disconnect(self, holder: str) -> None:
        """Forget a connection (its runs are the lifecycle's to give back)."""
        raise NotImplementedError

    async def connections(self) -> list[Connection]:
        """Every subscribed connection, with the runs each holds."""
        raise NotImplementedError

    # -- notices to connections ------------------------------------------------------------------

    def listen(self, holder: str, callback: Callable[[str], None]) -> None:
        """Call ``callback`` with every notice for ``holder``, a connection of this process."""
        self._listeners[holder] = callback

    def unlisten(self, holder: str) -> None:
        """Stop passing notices to ``holder`` (its connection closed)."""
        self._listeners.pop(holder, None)

    async def notify(self, holder: str, message: str) -> None:
        """Pass ``message`` (e.g. a cancel frame) to the connection ``holder``, in whichever
        process serves it; nothing happens if no process does any more."""
        self._hear(holder, message)

    def _hear(self, holder: str, message: str) -> None:
        callback = self._listeners.get(holder)
        if callback is not None:
            try:
                callback(message)
            except Exception:  # one connection's trouble must not stop the notices of others
                logger.exception("a notice for connection %s failed", holder)

    # -- the site --------------------------------------------------------------------------------

    async def configure(
        self, task_key: str, scheduled_size: int | None = None, retry_size: int | None = None
    ) -> None:
        """Set the bounds of ``task_key``'s lanes (falsy: the default); applies at once."""
        raise NotImplementedError

    async def snapshot(self) -> list[dict[str, Any]]:
        """One row per key, sorted by key, for dashboards and ``GET /api/task_queues/``:

        ``task_key``, ``scheduled_size``, ``scheduled_limit``, ``retry_size``, ``retry_limit``,
        ``configured``, ``workers`` (connections subscribed), ``held`` (runs in workers' hands),
        ``running`` (of those, started), ``backlog`` (accepted runs waiting for room),
        ``deferred`` (runs waiting for their start time), ``waiting_consumers``.
        """
        raise NotImplementedError

    async def oldest(self) -> dict[tuple[str, str], datetime]:
        """When the oldest run waiting in each lane became due (its ``expected_start_time``,
        else its ``created``), by ``(task_key, lane)``; lanes with no run are left out."""
        raise NotImplementedError

    async def mark_restored(self) -> bool:
        """True exactly once, for the caller that is to restore the recorded runs."""
        raise NotImplementedError

    async def reset(self) -> None:
        """Forget every run, reservation, connection and configuration (a testing utility)."""
        raise NotImplementedError

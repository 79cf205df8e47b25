"""The Redis engine: the same queues for any number of server processes, on any number of
machines, in one Redis.

Every state change is one Lua script (``redis_scripts``), atomic across processes: bounds are
checked where runs are counted, a claim pops a run and records its holder in one step, a claim
cancelled while its answer was in flight gives its run back. Waiters do not poll: a script that
puts a run into a lane publishes a hint on ``<prefix>:wake:<key>``, one Pub/Sub connection per
process wakes the local waiters of that key, and they claim again (a lost hint costs at most
``WAIT`` seconds). Each server process keeps a heartbeat; any process gives back the unacked runs
of one whose heartbeat stopped (SIGKILL, a lost machine), within ``ALIVE_TTL`` plus a heartbeat.

``TASKQUEUE["QUEUES"] = {"BACKEND": "taskqueue_app.queues.redis.RedisQueues", "LOCATION":
"redis://127.0.0.1:6379/0" (or "unix:///path/redis.sock"), "OPTIONS": {...}}``; ``OPTIONS``:
``PREFIX`` (the hash tag every key lives under, default ``"{taskqueue}"``), ``HEARTBEAT``
(seconds, 2), ``ALIVE_TTL`` (10), ``WAIT`` (5), ``RESERVATION_TTL`` (30).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from ..conf import taskqueue_settings
from ..errors import QueueFull
from ..schemas import TaskRun
from . import redis_views
from .base import RETRY, SCHEDULED, WITHDRAWN_TTL, Connection, Held, Queues, check_lane
from .redis_client import client_for
from .redis_scripts import PRELUDE, SCRIPTS
from .redis_views import text as _text

logger = logging.getLogger(__name__)

__all__ = ["RedisQueues"]

LANE_CODE = {SCHEDULED: "s", RETRY: "r"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _code(lane: str) -> str:
    return LANE_CODE[check_lane(lane)]


def _load(payload: Any) -> TaskRun:
    run = TaskRun.from_dict(json.loads(payload))
    # The very text stored: sent to workers as it is, and what ``swap`` compares.
    run._json = _text(payload)
    return run


class RedisQueues(Queues):
    """``Queues`` shared by every process that names the same Redis and prefix."""

    shared = True

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.prefix = str(self.options.get("PREFIX", "{taskqueue}"))
        self.heartbeat = float(self.options.get("HEARTBEAT", 2.0))
        self.alive_ttl = float(self.options.get("ALIVE_TTL", 10.0))
        self.wait = float(self.options.get("WAIT", 5.0))
        self.reservation_ttl = float(self.options.get("RESERVATION_TTL", 30.0))
        self.process = uuid.uuid4().hex  # this server process, for heartbeats and the reaper
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._listener: asyncio.Task | None = None
        self._keeper: asyncio.Task | None = None
        self._events: dict[str, set[asyncio.Event]] = {}
        self._subscribed = asyncio.Event()  # the listener hears wake-ups and notices
        self._touched: dict[str, float] = {}

    # -- the connection ---------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def _ready(self) -> Any:
        """The client of the running loop (made on first use there; a new loop gets its own)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        if not self.location:
            raise ValueError('TASKQUEUE["QUEUES"]["LOCATION"] must name the Redis server')
        self._loop, self._events, self._subscribed = loop, {}, asyncio.Event()
        self._client = client_for(self.location)
        self._scripts = {
            name: self._client.register_script(PRELUDE + body) for name, body in SCRIPTS.items()
        }
        keys = taskqueue_settings.KEYS if isinstance(taskqueue_settings.KEYS, dict) else {}
        if keys:
            specs = {
                key: self._spec(sizes.get("scheduled_size"), sizes.get("retry_size"))
                for key, sizes in keys.items()
                if isinstance(sizes, dict)
            }
            await self._client.hset(self._key("kcfg"), mapping=specs)
        self._listener = loop.create_task(self._listen(), name="taskqueue-redis-wake")
        return self._client

    @staticmethod
    def _spec(scheduled: int | None, retry: int | None) -> str:
        return f"{scheduled or ''},{retry or ''}"

    async def _run(self, name: str, *args: Any) -> Any:
        await self._ready()
        defaults = (taskqueue_settings.SCHEDULED_QUEUE_SIZE, taskqueue_settings.RETRY_QUEUE_SIZE)
        return await self._scripts[name](
            keys=[self._key("runs")], args=[self.prefix, *defaults, *args]
        )

    async def _listen(self) -> None:
        """Wake the local waiters of a key when any process puts a run into one of its lanes."""
        channel = self._key("wake", "")
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.psubscribe(channel + "*")
                await pubsub.subscribe(self._key("notice"))
                self._subscribed.set()
                # Hints may have been missed while (re)subscribing: every waiter looks again.
                self._wake_all()
                async for message in pubsub.listen():
                    kind = message.get("type")
                    if kind == "pmessage":
                        for event in self._events.get(
                            _text(message["channel"])[len(channel) :], ()
                        ):
                            event.set()
                    elif kind == "message":  # a notice: "<holder> <message>"
                        holder, _, notice = _text(message["data"]).partition(" ")
                        self._hear(holder, notice)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped connection: subscribe again shortly
                self._subscribed.clear()
                logger.warning("redis wake-up channel lost (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()

    def _wake_all(self) -> None:
        for events in self._events.values():
            for event in events:
                event.set()

    async def notify(self, holder: str, message: str) -> None:
        # To every process (a cancel is rare): the one serving ``holder`` passes it on.
        client = await self._ready()
        await client.publish(self._key("notice"), f"{holder} {message}")

    # -- runs into lanes -------------------------------------------------------------------------

    async def enqueue(self, run: Any, lane: str = SCHEDULED) -> None:
        await self._put(run, lane, "new")

    async def admit(self, run: Any, lane: str = SCHEDULED, *, reserved: bool = False) -> bool:
        return await self._put(run, lane, "reserved" if reserved else "accepted")

    async def _put(self, run: Any, lane: str, mode: str) -> bool:
        """Into the lane (or deferred): True; False if kept out (cancelled before it came)."""
        code = _code(lane)
        common = (str(run.id), run.task_key, code, int(run.priority or 0), run.to_json())
        due = run.expected_start_time
        if due is not None and due > datetime.now(UTC):
            due_ms = int(due.timestamp() * 1000)
            reserved, admitted = "1" if mode == "reserved" else "0", "0" if mode == "new" else "1"
            return await self._run("defer", *common, due_ms, reserved, admitted) == 1
        taken = await self._run("enqueue", *common, _now_ms(), mode)
        if not taken:
            raise QueueFull.of_lane(run.task_key, lane)
        return taken == 1

    async def reserve(self, task_key: str, lane: str = SCHEDULED) -> None:
        now = _now_ms()
        expiry = now + int(self.reservation_ttl * 1000)
        if not await self._run("reserve", task_key, _code(lane), uuid.uuid4().hex, expiry, now):
            raise QueueFull.of_lane(task_key, lane)

    async def unreserve(self, task_key: str, lane: str = SCHEDULED) -> None:
        client = await self._ready()
        await client.zpopmin(self._key("rz", _code(lane), task_key))

    async def cancel(self, run_id: Any, *, keep_out: bool = False) -> Any | None:
        keep_ms = int(WITHDRAWN_TTL * 1000) if keep_out else 0
        payload = await self._run("cancel", str(run_id), keep_ms)
        return _load(payload) if payload else None

    # -- delivery --------------------------------------------------------------------------------

    async def claim(self, holder: str, keys: list[str]) -> Any:
        await self._ready()
        keys = list(dict.fromkeys(keys))
        event = asyncio.Event()
        for key in keys:
            self._events.setdefault(key, set()).add(event)
        try:
            while True:
                event.clear()
                token = uuid.uuid4().hex
                try:
                    run_id, payload = await self._run("claim", holder, _now_ms(), token, *keys)
                except asyncio.CancelledError:
                    # The script may have run: what it took goes back, first in line.
                    await asyncio.shield(self._run("unclaim", holder, token))
                    raise
                if run_id:
                    return _load(payload)
                timeout = self.wait
                if payload:  # the next deferred run's due time
                    timeout = min(timeout, max(0.0, (float(payload) - _now_ms()) / 1000))
                # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancel that
                # arrives in the tick the event is set, and this claim would then wait forever.
                try:
                    async with asyncio.timeout(timeout):
                        await event.wait()
                except TimeoutError:
                    pass
        finally:
            for key in keys:
                waiting = self._events.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._events[key]

    async def hold(self, holder: str, run: Any) -> None:
        await self._run(
            "hold",
            holder,
            str(run.id),
            run.to_json(),
            str(run.state_type),
            int(run.priority or 0),
            run.task_key,
        )

    async def ack(self, holder: str, run_id: Any) -> Any | None:
        payload = await self._run("ack", holder, str(run_id))
        return _load(payload) if payload else None

    async def swap(self, holder: str, expected: Any, new: Any | None) -> bool:
        replacement, state = ("", "") if new is None else (new.to_json(), str(new.state_type))
        swapped = await self._run(
            "swap", holder, str(expected.id), expected.to_json(), replacement, state
        )
        return bool(swapped)

    async def release(self, holder: str) -> list[Any]:
        return [_load(payload) for payload in await self._run("release", holder)]

    async def held(self, holder: str) -> list[Any]:
        client = await self._ready()
        ids = await client.zrange(self._key("hz", holder), 0, -1)
        if not ids:
            return []
        payloads = await client.hmget(self._key("hj", holder), ids)
        return [_load(payload) for payload in payloads if payload]

    async def find_held(self, run_id: Any) -> Held | None:
        found = await self._run("find", str(run_id))
        if not found or not found[1]:
            return None
        return Held(_text(found[0]), _load(found[1]))

    # -- connected workers -----------------------------------------------------------------------

    async def connect(self, holder: str, client_id: str, task_keys: list[str]) -> None:
        client = await self._ready()
        # A connection every process sees must hear the notices sent to it (an operator's
        # cancel): listening first. If Pub/Sub is down, connect anyway; wake-ups fall back
        # to ``WAIT``.
        try:
            async with asyncio.timeout(self.wait):
                await self._subscribed.wait()
        except TimeoutError:
            logger.warning("redis Pub/Sub is not listening; connecting %s anyway", holder)
        now = datetime.now(UTC).isoformat()
        record = {"client_id": client_id, "task_keys": list(dict.fromkeys(task_keys)), "since": now}
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(self._key("conns"), holder, json.dumps(record))
            pipe.hset(self._key("act"), holder, now)
            pipe.sadd(self._key("ph", self.process), holder)
            await pipe.execute()
        self._touched[holder] = time.monotonic()

    async def touch(self, holder: str) -> None:
        # At most once a second per connection: activity is for people, not a clock.
        moment = time.monotonic()
        if moment - self._touched.get(holder, 0.0) < 1.0:
            return
        self._touched[holder] = moment
        client = await self._ready()
        await client.hset(self._key("act"), holder, datetime.now(UTC).isoformat())

    async def disconnect(self, holder: str) -> None:
        self._touched.pop(holder, None)
        client = await self._ready()
        async with client.pipeline(transaction=True) as pipe:
            pipe.hdel(self._key("conns"), holder)
            pipe.hdel(self._key("act"), holder)
            pipe.srem(self._key("ph", self.process), holder)
            await pipe.execute()

    async def connections(self) -> list[Connection]:
        return await redis_views.connections(self, await self._ready())

    # -- the site --------------------------------------------------------------------------------

    async def configure(
        self, task_key: str, scheduled_size: int | None = None, retry_size: int | None = None
    ) -> None:
        await self._run("configure", task_key, self._spec(scheduled_size, retry_size))

    async def snapshot(self) -> list[dict[str, Any]]:
        return await redis_views.snapshot(self, await self._ready())

    async def oldest(self) -> dict[tuple[str, str], datetime]:
        return await redis_views.oldest(self, await self._ready())

    async def mark_restored(self) -> bool:
        client = await self._ready()
        return bool(await client.set(self._key("restored"), self.process, nx=True))

    async def start(self) -> None:
        await self._ready()
        await self._beat()
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(
                self._keep_alive(), name="taskqueue-redis-heartbeat"
            )

    async def _beat(self) -> None:
        client = await self._ready()
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(self._key("alive", self.process), "1", px=int(self.alive_ttl * 1000))
            pipe.sadd(self._key("procs"), self.process)
            await pipe.execute()

    async def _keep_alive(self) -> None:
        """Beat, and give back the unacked runs of every process whose heartbeat stopped."""
        while True:
            try:
                await self._beat()
                await self.reap()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("redis heartbeat failed; trying again")
            await asyncio.sleep(self.heartbeat)

    async def reap(self) -> int:
        """Give back the runs of dead processes' connections; how many went back."""
        client = await self._ready()
        back = 0
        for proc in await client.smembers(self._key("procs")):
            proc = _text(proc)
            if proc == self.process or await client.exists(self._key("alive", proc)):
                continue
            runs = [_load(payload) for payload in await self._run("reap", proc)]
            back += len(runs)
            gone = "server process %s is gone: %d unacked run(s) given back"
            logger.warning(gone, proc, len(runs))
            if runs and self.on_given_back is not None:
                self.on_given_back(runs)
        return back

    async def reset(self) -> None:
        client = await self._ready()
        async for key in client.scan_iter(match=f"{self.prefix}:*", count=500):
            await client.delete(key)
        self._touched.clear()

    async def close(self) -> None:
        """Stop the heartbeat and the wake-up listener and close the client (tests, shutdown)."""
        for task in (self._keeper, self._listener):
            if task is not None:
                task.cancel()
        self._keeper = self._listener = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

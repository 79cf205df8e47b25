"""The Redis client of an engine: redis-py's, with sends that honour a cancel on Python 3.11.

redis-py sends each command under ``asyncio.wait_for`` when a socket timeout is set (its default
is 5 s). On Python 3.11, ``wait_for`` swallows a cancel that arrives in the tick its inner call
finishes (CPython gh-86296, fixed in 3.12): the cancelled task goes on as if nothing happened.
A claim cancelled while it sent its script then waited for runs forever, and a consumer's
delivery loop cancelled at a disconnect could claim a run for a connection already gone. So on
3.11 each connection sends under ``asyncio.timeout`` instead, with the same timeout and error.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any

__all__ = ["client_for"]


def client_for(location: str) -> Any:
    """A ``redis.asyncio.Redis`` for ``location`` (a ``redis://``, ``rediss://`` or ``unix://``
    URL), owning its own pool, answering bytes."""
    import redis.asyncio as aioredis

    pool = aioredis.ConnectionPool.from_url(location, decode_responses=False)
    if sys.version_info < (3, 12):
        pool.connection_class = _honouring_cancel(pool.connection_class)
    return aioredis.Redis.from_pool(pool)


@functools.cache
def _honouring_cancel(base: type) -> type:
    """``base`` (redis-py's TCP, TLS or unix-socket connection) with ``CancellableSend``."""
    return type(f"Cancellable{base.__name__}", (CancellableSend, base), {})


class CancellableSend:
    """A connection mixin: send under ``asyncio.timeout`` rather than redis-py's ``wait_for``."""

    socket_timeout: float | None

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        timeout = self.socket_timeout
        if not timeout:
            return await super().send_packed_command(command, check_health)
        from redis.exceptions import TimeoutError as RedisTimeoutError

        # Without a socket timeout the base class writes directly, under our timeout instead.
        # The connection serves one command at a time, so nothing else reads it meanwhile.
        self.socket_timeout = None
        try:
            async with asyncio.timeout(timeout):
                await super().send_packed_command(command, check_health)
        except TimeoutError:
            # As redis-py says it (the base class has closed the connection on the cancel).
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = timeout

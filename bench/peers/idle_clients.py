"""Idle workers of the peers, for the idle-CPU measurement (run in a peer's venv).

``python -m bench.peers.idle_clients redis URL QUEUE TIMEOUT N``: N connections, each in a
thread, blocking on ``BRPOP QUEUE TIMEOUT`` in a loop, as an idle Celery worker's consumer
(kombu: ``BRPOP`` with a 1 s timeout) or RQ worker (``BLPOP``, 405 s) waits on Redis.
``python -m bench.peers.idle_clients prefect N``: N Prefect task-worker subscriptions (its own
``Subscription`` client, as ``serve`` opens it) to the server at ``PREFECT_API_URL``.

Prints ``READY <connected>`` once every client is connected (or gave up), then waits until its
stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import threading


def redis_clients(url: str, queue: str, timeout: int, count: int) -> None:
    from redis import Redis

    def wait(connection: Redis) -> None:
        while True:
            connection.brpop([queue], timeout=timeout)

    connections = [Redis.from_url(url) for _ in range(count)]
    for connection in connections:
        connection.ping()  # connected before READY
        threading.Thread(target=wait, args=(connection,), daemon=True).start()
    print(f"READY {count}", flush=True)
    sys.stdin.read()


async def prefect_clients(count: int) -> None:
    from prefect.client.schemas.objects import TaskRun
    from prefect.client.subscriptions import Subscription
    from prefect.settings import get_current_settings

    base_url = get_current_settings().api.url
    subscriptions = [
        Subscription(
            model=TaskRun,
            path="/task_runs/subscriptions/scheduled",
            keys=["bench.idle"],
            client_id=f"bench-idle-{index}",
            base_url=base_url,
        )
        for index in range(count)
    ]
    connected = []
    for subscription in subscriptions:
        # Authenticated and subscribed before READY. Each subscriber makes Prefect's server poll
        # every 10 ms, so late handshakes can time out on a busy server: a few tries each.
        for _ in range(3):
            try:
                await subscription._ensure_connected()
            except Exception:  # the client's own reconnect loop would retry too
                subscription._websocket = None
                continue
            connected.append(subscription)
            break
    tasks = [asyncio.create_task(subscription.__anext__()) for subscription in connected]
    print(f"READY {len(connected)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for task in tasks:
        task.cancel()


def main() -> None:
    if sys.argv[1] == "redis":
        url, queue, timeout, count = sys.argv[2:6]
        redis_clients(url, queue, int(timeout), int(count))
    else:
        asyncio.run(prefect_clients(int(sys.argv[2])))


if __name__ == "__main__":
    main()

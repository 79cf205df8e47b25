"""The consumer benchmark's ceiling: a bare asyncio + ``websockets`` server doing what the
subscription consumer does (queue, send, ack) and nothing more.

No Django, no database, no validation beyond ``json.loads``: runs arrive as WebSocket frames on
``/bench/produce`` (each answered with ``{"id": ...}``, as the Daphne server's bench route does),
wait in an ``asyncio.Queue`` per key, and go out on ``/api/task_runs/subscriptions/scheduled`` to
workers that authenticate, subscribe with a ``prefetch`` and ack each run, as with ours. A run
carries the same fields as ours on the wire, so frames are the same size.

``python -m bench.ws_ceiling --port N`` serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from collections import deque
from datetime import UTC, datetime
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve

SUBSCRIBE_PATH = "/api/task_runs/subscriptions/scheduled"
PRODUCE_PATH = "/bench/produce"

_queues: dict[str, asyncio.Queue] = {}


def _queue(key: str) -> asyncio.Queue:
    queue = _queues.get(key)
    if queue is None:
        queue = _queues[key] = asyncio.Queue()
    return queue


def _run(data: dict[str, Any]) -> dict[str, Any]:
    """A run with the fields ours has on the wire (so that frames weigh the same)."""
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    key = data["task_key"]
    return {
        "id": data.get("id") or str(uuid.uuid4()),
        "created": stamp,
        "updated": stamp,
        "name": key.rsplit(".", 1)[-1],
        "task_key": key,
        "dynamic_key": f"{key}-{uuid.uuid4().hex}",
        "parameters": data.get("parameters", {}),
        "state": {
            "type": "SCHEDULED",
            "name": "Scheduled",
            "timestamp": stamp,
            "message": None,
            "state_details": {"deferred": True},
        },
        "state_type": "SCHEDULED",
        "state_name": "Scheduled",
        "run_count": 0,
        "empirical_policy": {"retries": 0, "retry_delay_seconds": 0.0},
        "expected_start_time": stamp,
        "start_time": None,
        "end_time": None,
        "result": None,
        "error": None,
        "worker": None,
        "flow_run_id": None,
        "tags": [],
        "labels": {},
        "task_inputs": {},
    }


async def _produce(ws: ServerConnection) -> None:
    async for frame in ws:
        run = _run(json.loads(frame))
        _queue(run["task_key"]).put_nowait(run)
        await ws.send(json.dumps({"id": run["id"]}))


async def _subscribe(ws: ServerConnection) -> None:
    auth = json.loads(await ws.recv())
    if auth.get("type") != "auth":
        await ws.close(1008, "Expected 'auth' message")
        return
    await ws.send(json.dumps({"type": "auth_success"}))
    subscription = json.loads(await ws.recv())
    keys, credits = subscription["keys"], subscription.get("prefetch", 1)
    queue = _queue(keys[0])  # the benchmark subscribes each worker to one key
    unacked: deque[dict] = deque()
    credit = asyncio.Event()
    credit.set()

    async def deliver() -> None:
        nonlocal credits
        while True:
            while credits <= 0:
                credit.clear()
                await credit.wait()
            run = await queue.get()
            unacked.append(run)
            credits -= 1
            await ws.send(json.dumps(run, separators=(",", ":")))

    delivery = asyncio.create_task(deliver())
    try:
        async for frame in ws:
            message = json.loads(frame)
            if message.get("type") == "ack" and unacked:
                unacked.popleft()
                credits += 1
                credit.set()
            elif message.get("type") == "quit":
                break
    except websockets.ConnectionClosed:
        pass
    finally:
        delivery.cancel()
        for run in unacked:  # unacked runs go back, as with ours
            queue.put_nowait(run)


async def _handler(ws: ServerConnection) -> None:
    if ws.request.path == PRODUCE_PATH:
        await _produce(ws)
    elif ws.request.path == SUBSCRIBE_PATH:
        await _subscribe(ws)
    else:
        await ws.close(1008, "no such route")


async def serve_until_stopped(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        _handler, "127.0.0.1", port, select_subprotocol=_select, compression=None, close_timeout=1
    ):
        await stop


def _select(connection: ServerConnection, offered: list[str]) -> str | None:
    """``prefect`` when offered (workers), none otherwise (producers)."""
    return "prefect" if "prefect" in offered else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ws_ceiling", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve_until_stopped(parser.parse_args(argv).port))


if __name__ == "__main__":
    main()

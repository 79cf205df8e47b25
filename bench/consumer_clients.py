"""The consumer benchmark's clients: producers (HTTP POST or WebSocket frames) and acking workers.

Both the Daphne server and the bare ceiling speak to them the same way (see ``bench.consumer``).
"""

from __future__ import annotations

import asyncio
import json
import time

import websockets

SUBSCRIBE_PATH = "/api/task_runs/subscriptions/scheduled"
ACK = json.dumps({"type": "ack"})


def request_body(key: str, run_id: str) -> bytes:
    """A create request for ``run_id`` on ``key``, as producers send it."""
    return json.dumps(
        {"task_key": key, "id": run_id, "parameters": {"args": [1, "two"], "kwargs": {"x": 3}}},
        separators=(",", ":"),
    ).encode()


# -- producers ----------------------------------------------------------------------------------


class HttpProducer:
    """``POST /api/task_runs/`` over one keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def create(self, key: str, run_id: str) -> None:
        body = request_body(key, run_id)
        self.writer.write(
            b"POST /api/task_runs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)
        if status not in (200, 201):
            raise RuntimeError(f"POST answered {status}")

    async def close(self) -> None:
        self.writer.close()


class WsProducer:
    """Runs sent as frames to ``/bench/produce``, each answered with its id."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.ws = await websockets.connect(
            f"ws://127.0.0.1:{self.port}/bench/produce", compression=None
        )

    async def create(self, key: str, run_id: str) -> None:
        await self.ws.send(request_body(key, run_id).decode())
        answer = json.loads(await self.ws.recv())
        if "id" not in answer:
            raise RuntimeError(f"produce answered {answer}")

    async def close(self) -> None:
        await self.ws.close()


# -- workers --------------------------------------------------------------------------------------


class Workers:
    """``count`` subscribed connections on one key (or a list of keys) that ack every run as
    it arrives."""

    def __init__(self, port: int, key: str | list[str], count: int, prefetch: int) -> None:
        self.port, self.count, self.prefetch = port, count, prefetch
        self.keys = [key] if isinstance(key, str) else list(key)
        self.received: dict[str, float] = {}
        self.expected = 0
        self.all_in = asyncio.Event()
        self.sockets: list = []
        self.tasks: list[asyncio.Task] = []

    async def open(self) -> None:
        for index in range(self.count):
            ws = await websockets.connect(
                f"ws://127.0.0.1:{self.port}{SUBSCRIBE_PATH}",
                subprotocols=["prefect"],
                compression=None,
                max_size=None,
            )
            await ws.send(json.dumps({"type": "auth", "token": None}))
            await ws.recv()
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "keys": self.keys,
                        "client_id": f"bench-{index}",
                        "prefetch": self.prefetch,
                    }
                )
            )
            self.sockets.append(ws)
            self.tasks.append(asyncio.create_task(self._serve(ws)))

    def expect(self, count: int) -> None:
        """Wait for ``count`` more runs (see ``all_in``)."""
        self.received = {}
        self.expected = count
        self.all_in.clear()

    async def _serve(self, ws) -> None:
        try:
            async for frame in ws:
                # Both servers put the id first: '{"id":"<36 characters>"...'
                self.received[frame[7:43]] = time.perf_counter()
                await ws.send(ACK)
                if len(self.received) >= self.expected:
                    self.all_in.set()
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)

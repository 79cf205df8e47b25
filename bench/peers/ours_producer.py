"""A producer process of the scale_out and producers stages (``python -m
bench.peers.ours_producer``): ``task.enqueue()`` with no server in this process, straight into
Redis and the database (the Redis engine), or to the server's producer stream or its HTTP API
(the memory engine, ``TASKQUEUE_SERVER_URL`` set; ``BENCH_TRANSPORT`` picks).

``paced COUNT RATE``: enqueue COUNT runs at RATE per second, print their ids (one JSON line,
``{"ids": [...], "cpu_s": 0}``). ``burst COUNT``: connect, print ``ready``, wait for ``go`` on
stdin, enqueue COUNT runs as fast as it can, print their ids and the CPU seconds that took.
Each run's argument is its enqueue time (the no-op returns its delay).
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    import django

    django.setup()
    from bench.peers.ours import noop
    from taskqueue_app import server
    from taskqueue_app.backend import QueueTask
    from taskqueue_app.queues import get_queues

    task = QueueTask(func=noop)
    # Connected before the clock starts: to Redis, or to the server's producer stream.
    if get_queues().shared:
        server.call(get_queues().snapshot)
    elif task.get_backend().transport == "websocket":
        from taskqueue_app.conf import taskqueue_settings
        from taskqueue_app.worker.stream import stream_for

        backend = task.get_backend()
        url, token = taskqueue_settings.SERVER_URL, taskqueue_settings.AUTH_TOKEN
        stream_for(url, token, backend.timeout).open()
    mode, count = sys.argv[1], int(sys.argv[2])
    cpu = 0.0
    if mode == "paced":
        rate, ids = float(sys.argv[3]), []
        start = time.perf_counter()
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)  # pacing the load, not waiting for a result
            ids.append(task.enqueue(time.time()).id)
    else:
        print("ready", flush=True)
        sys.stdin.readline()
        cpu = time.process_time()
        ids = [task.enqueue(time.time()).id for _ in range(count)]
        cpu = time.process_time() - cpu
    print(json.dumps({"ids": ids, "cpu_s": cpu}), flush=True)


if __name__ == "__main__":
    main()

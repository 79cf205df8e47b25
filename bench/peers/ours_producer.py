"""A producer process of the scale-out stage: ``task.enqueue()`` straight into Redis and the
database, no server in this process and no HTTP (``python -m bench.peers.ours_producer``).

``paced COUNT RATE``: enqueue COUNT runs at RATE per second, print their ids (one JSON line).
``burst COUNT``: connect, print ``ready``, wait for ``go`` on stdin, enqueue COUNT runs as fast as
it can, print their ids. Each run's argument is its enqueue time (the no-op returns its delay).
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
    server.call(get_queues().snapshot)  # connected before the clock starts
    mode, count = sys.argv[1], int(sys.argv[2])
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
        ids = [task.enqueue(time.time()).id for _ in range(count)]
    print(json.dumps(ids), flush=True)


if __name__ == "__main__":
    main()

"""``make run-redis``: the example project as two Daphne processes on one Redis, on one machine.

Starts a redis-server of its own (a unix socket in a temporary directory, no persistence),
migrates, and serves the project on two ports (``PORT`` and ``PORT + 1``) with the Redis
engine; Ctrl-C stops all three. Production runs Redis as a service of its own (see README).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from taskqueue_app.testing import RedisServer, end_process


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    if not RedisServer.available():
        print(
            "redis-server is not installed (Debian: apt-get install redis-server)", file=sys.stderr
        )
        return 1
    with RedisServer() as redis:
        env = {**os.environ, "TASKQUEUE_REDIS_URL": redis.location}
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=env, check=True)
        servers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "daphne",
                    "-b",
                    host,
                    "-p",
                    str(p),
                    "project.asgi:application",
                ],
                env=env,
            )
            for p in (port, port + 1)
        ]
        print(
            f"two server processes on one Redis ({redis.location}): http://{host}:{port}/admin/ "
            f"and http://{host}:{port + 1}/admin/ serve the same queues; Ctrl-C stops them",
            flush=True,
        )
        try:
            while all(server.poll() is None for server in servers):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            for server in servers:
                end_process(server, signal.SIGTERM, 15.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

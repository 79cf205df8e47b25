"""ASGI entry point of the benchmark server: the project's application on ``bench.settings``.

With ``TASKQUEUE_BENCH_PROFILE=<file>`` in the environment the server's main thread (the event
loop: views, queues, lifecycle) runs under cProfile, and the statistics are written to that
file when the process exits (stop it with SIGTERM, not SIGKILL).
"""

import atexit
import cProfile
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

_profile_path = os.environ.get("TASKQUEUE_BENCH_PROFILE")
if _profile_path:
    _profiler = cProfile.Profile()
    _profiler.enable()
    atexit.register(lambda: (_profiler.disable(), _profiler.dump_stats(_profile_path)))

from project.asgi import application  # noqa: E402

__all__ = ["application"]

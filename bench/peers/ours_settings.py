"""Settings of our server in the end-to-end benchmark: ``bench.settings`` plus a producer view."""

from bench.settings import *  # noqa: F403

ROOT_URLCONF = "bench.peers.ours_urls"

import os  # noqa: E402

from project.settings import TASKS  # noqa: E402

# The producers stage measures both ways a process reaches the server: the producer stream
# (the default) and one HTTP request per run.
if os.environ.get("BENCH_TRANSPORT"):
    _default = TASKS["default"]
    TASKS = {
        **TASKS,
        "default": {
            **_default,
            "OPTIONS": {**_default.get("OPTIONS", {}), "transport": os.environ["BENCH_TRANSPORT"]},
        },
    }

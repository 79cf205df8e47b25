"""The Prefect peer: a local Prefect 3.9 server (SQLite), one task worker (``serve``, limit 10)
and a producer calling ``task.delay``, all in the Prefect venv. Its "server" is the process tree
of ``prefect server start``: the CPU counted is all of it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.peers import procs, venvs
from bench.peers.common import ROOT, drive_beside_worker, peer_python
from bench.peers.redis_server import stop

REQUIREMENTS = ["prefect==3.9.*"]
PROBE = "import prefect; assert prefect.__version__.startswith('3.9')"
START_TIMEOUT_S = 120
QUICK_REASON = "not run in quick mode (its server takes ~15 s to start; run without QUICK=1)"


def prefect_python(quick: bool) -> Path:
    """The Prefect venv's interpreter (created on first use); skipped in quick mode."""
    if quick:
        raise venvs.PeerUnavailable(QUICK_REASON)
    return peer_python("Prefect", REQUIREMENTS, PROBE)


class PrefectServer:
    """``prefect server start`` on a free port while the ``with`` block runs."""

    def __init__(self, python: Path, tmp: Path) -> None:
        from taskqueue_app.testing import free_port

        self.python, self.tmp, self.port = python, tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        home = tmp / "prefect"
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
            "PYTHONPATH": str(ROOT),
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": self.url,
            "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        }
        self.process: subprocess.Popen | None = None

    def pids(self) -> list[int]:
        """The server's process tree (the CLI and the API server it runs)."""
        assert self.process is not None
        return [process.pid for process in procs.tree(self.process.pid)]

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Prefect server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)  # waiting for another process to come up
        raise TimeoutError("the Prefect server did not become healthy")

    def __enter__(self) -> PrefectServer:
        with open(self.tmp / "prefect-server.log", "wb") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
                + ["--port", str(self.port)],
                cwd=self.tmp,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_healthy()
        except BaseException:
            stop(self.process)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.process)


def measure_prefect(config: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Prefect 3.9 background tasks, ``prefect_runs`` per burst."""
    python = prefect_python(config["quick"])
    with PrefectServer(python, tmp) as server:
        return drive_beside_worker(
            [python, "-m", "bench.peers.prefect_run", "worker"],
            tmp / "prefect-worker.log",
            server.env,
            f"end_to_end: Prefect, {config['repeats']} bursts of {config['prefect_runs']}",
            python,
            "bench.peers.prefect_run",
            ["drive", json.dumps({**config, "server_pids": server.pids()})],
            "Prefect",
        )

"""Helpers of the end-to-end worker tests: worker subprocesses whose log lines can be awaited,
and the run API of a real server read over HTTP."""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from project.servers import ProjectServer
from taskqueue_app.testing import end_process

ROOT = Path(__file__).resolve().parent.parent
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class WorkerProcess:
    """A worker in a subprocess; its log (stderr and stdout) is read line by line in a thread,
    so that a test can wait for a line instead of sleeping."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.process = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._seen = 0

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)
        self._new.put(None)  # end of output: the process exited

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match:
        """The first line after the last match that matches ``pattern``; fails on timeout/exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.lines):
                line = self.lines[self._seen]
                self._seen += 1
                match = regex.search(line)
                if match:
                    return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s:\n{self.log}")
            try:
                item = self._new.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None and self._seen >= len(self.lines):
                raise AssertionError(f"worker exited before {pattern!r}:\n{self.log}")

    def count(self, pattern: str) -> int:
        """How many log lines so far match ``pattern``."""
        regex = re.compile(pattern)
        return sum(bool(regex.search(line)) for line in self.lines)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        """Wait for the exit code; the reader thread has then seen every line."""
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        """Make sure the process is gone (SIGKILL if it does not exit on SIGTERM)."""
        end_process(self.process)
        self._reader.join(5)


class Received:
    """What a signal sends in this process while connected (a context manager)."""

    def __init__(self, signal) -> None:
        self.signal, self.results = signal, []

    def __call__(self, sender, task_result, **kwargs) -> None:
        self.results.append((sender, task_result.status, task_result))

    def __enter__(self) -> Received:
        self.signal.connect(self, weak=False)
        return self

    def __exit__(self, *exc) -> None:
        self.signal.disconnect(self)


def shell_result(server: ProjectServer, code: str, **env: str) -> dict:
    """Run ``code`` in ``manage.py shell`` (another process) with the server's settings and
    ``env`` on top; the JSON it printed on its ``RESULT `` line."""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**server.environ(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def worker_env(server: ProjectServer, **extra: str) -> dict[str, str]:
    """The environment of a process that talks to ``server`` (and shares its database)."""
    env = server.environ()
    env.update(extra)
    return env


def start_cli_worker(
    server: ProjectServer, *paths: str, limit: int = 10, token: str | None = None
) -> WorkerProcess:
    """``python -m taskqueue_app.worker`` without Django, once it has subscribed."""
    env = worker_env(server)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    args = [sys.executable, "-m", "taskqueue_app.worker", "--url", server.api_url]
    args += ["--limit", str(limit)]
    if token is not None:
        args += ["--token", token]
    worker = WorkerProcess([*args, *paths], env)
    return worker


def start_django_worker(server: ProjectServer, *paths: str, limit: int = 10) -> WorkerProcess:
    """``manage.py taskworker`` with the server's settings and database."""
    args = [sys.executable, "manage.py", "taskworker", "--limit", str(limit), *paths]
    return WorkerProcess(args, worker_env(server))


def api(server: ProjectServer, method: str, path: str, body: Any = None, token: str | None = None):
    """(status, JSON) of one API request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.api_url}/{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def create_run(server: ProjectServer, task_key: str, *args: Any, token: str | None = None, **extra):
    """Create a run over HTTP; its JSON."""
    body = {"task_key": task_key, "parameters": {"args": list(args), "kwargs": {}}, **extra}
    status, data = api(server, "POST", "task_runs/", body, token)
    assert status == 201, (status, data)
    return data


def read_run(server: ProjectServer, run_id: str, token: str | None = None) -> dict[str, Any]:
    status, data = api(server, "GET", f"task_runs/{run_id}", token=token)
    assert status == 200, (status, data)
    return data


def wait_for_state(
    server: ProjectServer,
    run_id: str,
    states: set[str] | str = FINAL_STATES,
    timeout: float = 20.0,
    token: str | None = None,
) -> dict[str, Any]:
    """Poll the run (another process's state: polling with a deadline) until it is in ``states``."""
    wanted = {states} if isinstance(states, str) else set(states)
    deadline = time.monotonic() + timeout
    while True:
        run = read_run(server, run_id, token)
        if run["state_type"] in wanted:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {run['state_type']}, not {wanted}: {run}")
        time.sleep(0.05)


def wait_until_held(server: ProjectServer, run_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """Poll the workers list until some worker holds ``run_id``; that worker's entry."""
    deadline = time.monotonic() + timeout
    while True:
        status, workers = api(server, "POST", "task_workers/filter", {})
        assert status == 200, workers
        for worker in workers:
            if run_id in worker["held"]:
                return worker
        assert time.monotonic() < deadline, f"no worker holds {run_id}: {workers}"
        time.sleep(0.05)


def wait_for_queue_row(
    server: ProjectServer, task_key: str, timeout: float = 10.0, **expected: int
) -> dict[str, Any]:
    """Poll the queues list until ``task_key``'s row has the ``expected`` values; the row.

    Besides the row's own fields (``scheduled_size``, ``retry_size``, ``held``...), ``waiting``
    is the runs in either lane: a run handed back goes to the front of the retry lane.
    """
    deadline = time.monotonic() + timeout
    while True:
        status, rows = api(server, "GET", "task_queues/")
        assert status == 200, rows
        row = next((row for row in rows if row["task_key"] == task_key), None)
        if row is not None:
            row = {**row, "waiting": row["scheduled_size"] + row["retry_size"]}
            if all(row[name] == value for name, value in expected.items()):
                return row
        assert time.monotonic() < deadline, f"{task_key}: not {expected} in {timeout}s: {row}"
        time.sleep(0.05)


def terminate_gently(worker: WorkerProcess) -> None:
    """SIGTERM and wait (the worker finishes what it runs)."""
    if worker.process.poll() is None:
        worker.signal(signal.SIGTERM)
    worker.wait(20)


__all__ = [
    "shell_result",
    "Received",
    "FINAL_STATES",
    "WorkerProcess",
    "api",
    "create_run",
    "read_run",
    "start_cli_worker",
    "start_django_worker",
    "terminate_gently",
    "wait_for_state",
    "wait_for_queue_row",
    "wait_until_held",
    "worker_env",
]

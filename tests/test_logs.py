"""Logs a person can read, from real processes: the worker logs one line per run (an attempt
that is retried in one line, a final failure with its traceback once), no line is printed twice
(worker, `manage.py taskworker`, the server), and `make run` says first where the admin is."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request

import pytest

from project.servers import ProjectServer
from taskqueue_app.testing import end_process, free_port, wait_for_port
from taskqueue_app.worker.cli import configure_logging
from tests.worker_helpers import (
    ROOT,
    WorkerProcess,
    api,
    create_run,
    read_run,
    start_django_worker,
    terminate_gently,
    wait_for_state,
    worker_env,
)

pytestmark = pytest.mark.timeout(90)

ECHO, BOOM = "tests.worker_tasks.echo", "tests.worker_tasks.boom"
TRACEBACK = "Traceback (most recent call last):"


@pytest.fixture(scope="module")
def server():
    with ProjectServer() as running:
        yield running


def cli_worker(server: ProjectServer, *paths: str, django: bool) -> WorkerProcess:
    """``python -m taskqueue_app.worker``, with the project's settings (Django set up, its
    LOGGING applied) or without Django."""
    env = worker_env(server)
    if not django:
        env.pop("DJANGO_SETTINGS_MODULE", None)
    args = [sys.executable, "-m", "taskqueue_app.worker", "--url", server.api_url, *paths]
    return WorkerProcess(args, env)


def lines_of(worker: WorkerProcess, run_id: str) -> list[str]:
    return [line for line in worker.lines if run_id in line]


@pytest.mark.parametrize("django", [False, True], ids=["plain", "with-django-settings"])
def test_one_line_per_run_a_retry_in_one_line_and_the_traceback_once(server, django):
    worker = cli_worker(server, ECHO, BOOM, django=django)
    try:
        worker.wait_for("connected to ")
        done = create_run(server, ECHO, "fine")
        policy = {"retries": 1, "retry_delay_seconds": 0}
        failing = create_run(server, BOOM, "it broke", empirical_policy=policy)
        assert wait_for_state(server, done["id"])["state_type"] == "COMPLETED"
        assert wait_for_state(server, failing["id"])["state_type"] == "FAILED"
        worker.wait_for(rf"run {BOOM} {failing['id']} failed .*no retries left")
    finally:
        terminate_gently(worker)
    assert worker.process.returncode == 0
    log = worker.log
    assert worker.count("connected to ") == 1, log
    assert worker.count("stopped") == 1, log

    (completed,) = lines_of(worker, done["id"])
    assert re.search(rf"INFO .*run {ECHO} {done['id']} completed in [\d.]+ ms$", completed)

    retried, final = lines_of(worker, failing["id"])
    assert re.search(
        rf"WARNING .*run {BOOM} {failing['id']} failed in [\d.]+ ms: "
        r"builtins\.ValueError: it broke; retry 1 of 1 in 0 s$",
        retried,
    ), log
    assert re.search(
        r"ERROR .*: builtins\.ValueError: it broke; no retries left \(1 used\)$", final
    )
    # The traceback once, right under the final failure's line, as the record keeps it.
    assert worker.count(re.escape(TRACEBACK)) == 1, log
    start = worker.lines.index(final) + 1
    assert worker.lines[start] == TRACEBACK
    recorded = read_run(server, failing["id"])["error"]["traceback"].rstrip().splitlines()
    assert worker.lines[start : start + len(recorded)] == recorded
    assert worker.count(r"^ValueError: it broke$") == 1, log


def test_the_django_worker_logs_each_run_once_and_no_framework_lines(server):
    worker = start_django_worker(server, "project.tasks.add", "project.tasks.flaky_greeting")
    try:
        worker.wait_for("connected to ")
        added = create_run(server, "project.tasks.add", 2, 3)
        policy = {"retries": 2, "retry_delay_seconds": 0}
        flaky = create_run(server, "project.tasks.flaky_greeting", "Ada", empirical_policy=policy)
        assert wait_for_state(server, added["id"])["result"] == 5
        assert wait_for_state(server, flaky["id"])["result"] == "Hello, Ada! (attempt 2)"
        worker.wait_for(rf"run project\.tasks\.flaky_greeting {flaky['id']} completed")
    finally:
        terminate_gently(worker)
    log = worker.log
    assert worker.count("connected to ") == 1, log
    (completed,) = lines_of(worker, added["id"])
    assert "completed in" in completed
    retried, completed = lines_of(worker, flaky["id"])
    assert re.search(
        r"WARNING .* failed in [\d.]+ ms: builtins\.ConnectionError: attempt 1: the greeting "
        r"service is down; retry 1 of 2 in 0 s$",
        retried,
    ), log
    assert "completed in" in completed
    # A retried attempt carries no traceback, and the Tasks framework's own start and finish
    # lines (with a traceback for every failed attempt) do not repeat ours.
    assert worker.count(re.escape(TRACEBACK)) == 0, log
    assert worker.count("Task id=") == 0, log


def test_the_server_logs_restored_runs_and_django_requests_once():
    with ProjectServer() as server:
        waiting = create_run(server, "tests.nobody_serves_this")
        server.restart()  # SIGKILL and start again: the SCHEDULED run is restored
        # Any request waits for the start-up (restore included) before it is served.
        status, rows = api(server, "GET", "task_queues/")
        assert status == 200
        assert any(row["task_key"] == "tests.nobody_serves_this" for row in rows), rows
        status, _ = api(server, "GET", "no_such_endpoint")
        assert status == 404
        log = server.log()
    assert waiting["state_type"] == "SCHEDULED"
    restored = [line for line in log.splitlines() if "restored 1 scheduled runs" in line]
    assert len(restored) == 1, log
    assert "taskqueue_app.lifecycle" in restored[0]
    not_found = [line for line in log.splitlines() if "Not Found: /api/no_such_endpoint" in line]
    assert len(not_found) == 1, log


@pytest.fixture
def app_logger():
    """The ``taskqueue_app`` logger, its level and handlers put back after the test."""
    logger = logging.getLogger("taskqueue_app")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_the_worker_adds_no_handler_where_one_prints_its_lines_and_keeps_a_set_level(app_logger):
    own = logging.StreamHandler()
    app_logger.addHandler(own)
    app_logger.setLevel(logging.WARNING)  # as a project's LOGGING may set it
    root_handlers = list(logging.getLogger().handlers)
    configure_logging(None)
    assert app_logger.level == logging.WARNING
    assert (app_logger.handlers, logging.getLogger().handlers) == ([own], root_handlers)
    configure_logging("debug")  # asked for: the command line wins
    assert app_logger.level == logging.DEBUG
    app_logger.setLevel(logging.NOTSET)
    configure_logging(None)
    assert app_logger.level == logging.INFO
    assert logging.getLogger().handlers == root_handlers


def test_make_run_says_first_where_the_admin_is_and_serves_it_styled_with_debug_off():
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="taskqueue-make-run-") as tmp:
        env = {
            **os.environ,
            "TASKQUEUE_DB": os.path.join(tmp, "db.sqlite3"),
            "DJANGO_STATIC_ROOT": os.path.join(tmp, "static"),
            "DJANGO_DEBUG": "0",  # production mode: make run's collectstatic makes it work
        }
        env.pop("MAKEFLAGS", None)
        env.pop("MAKELEVEL", None)
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run", "HOST=127.0.0.1", f"PORT={port}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: make, and the Daphne it starts
        )
        try:
            assert make.stdout is not None
            first = make.stdout.readline().rstrip("\n")
            wait_for_port(port, make, "make run", timeout=60)
            root = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(f"{root}/admin/login/", timeout=10) as response:
                assert response.status == 200
            with urllib.request.urlopen(f"{root}/static/admin/css/base.css", timeout=10) as css:
                assert (css.status, css.headers.get_content_type()) == (200, "text/css")
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGTERM)
            end_process(make)
    assert first == (
        f"The admin will be at http://127.0.0.1:{port}/admin/ "
        "(create a user with .venv/bin/python manage.py createsuperuser)"
    )

"""The worker client: addresses and keys, then end to end against a real Daphne server with
``python -m taskqueue_app.worker`` subprocesses (runs, failures, unknown keys, auth, restarts,
SIGTERM)."""

from __future__ import annotations

import signal
import threading

import pytest

from project.servers import ProjectServer
from taskqueue_app.worker import TaskWorker, subscription_url, task_key_of
from taskqueue_app.worker.cli import build_tasks, import_target
from tests import worker_tasks
from tests.worker_helpers import (
    create_run,
    read_run,
    start_cli_worker,
    terminate_gently,
    wait_for_queue_row,
    wait_for_state,
    wait_until_held,
)

E2E = pytest.mark.timeout(90)
ECHO, DOUBLE, BOOM, NOT_JSON, SLOW = (
    f"tests.worker_tasks.{name}" for name in ("echo", "double", "boom", "not_json", "slow")
)


@pytest.fixture(scope="module")
def server():
    """One server for the tests that do not stop it; each test uses keys of its own runs."""
    with ProjectServer() as running:
        yield running


# -- without a server -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        ("http://127.0.0.1:8000/api", "ws://127.0.0.1:8000/api/task_runs/subscriptions/scheduled"),
        ("http://h:1/api/", "ws://h:1/api/task_runs/subscriptions/scheduled"),
        (
            "https://example.com/sub/api",
            "wss://example.com/sub/api/task_runs/subscriptions/scheduled",
        ),
        (
            "ws://h/api/task_runs/subscriptions/scheduled",
            "ws://h/api/task_runs/subscriptions/scheduled",
        ),
    ],
)
def test_subscription_url_is_derived_from_the_api_base(api, expected):
    assert subscription_url(api) == expected


def test_a_url_that_is_not_http_is_refused_by_name():
    with pytest.raises(ValueError, match="ftp://x/api"):
        subscription_url("ftp://x/api")


def test_keys_are_module_paths_as_the_tasks_framework_names_them():
    from project.tasks import add

    assert task_key_of(worker_tasks.echo) == ECHO
    assert task_key_of(add) == add.module_path == "project.tasks.add"
    worker = TaskWorker("http://h/api", [worker_tasks.echo, add])
    assert worker.keys == [ECHO, "project.tasks.add"]
    assert worker.functions["project.tasks.add"] is add.func


def test_bad_worker_arguments_are_refused():
    with pytest.raises(ValueError, match="at least one task"):
        TaskWorker("http://h/api", {})
    with pytest.raises(ValueError, match="limit"):
        TaskWorker("http://h/api", [worker_tasks.echo], limit=0)


def test_dotted_paths_and_custom_keys():
    assert build_tasks([ECHO, "my.key=tests.worker_tasks.double"]) == {
        ECHO: worker_tasks.echo,
        "my.key": worker_tasks.double,
    }
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        import_target("tests.worker_tasks.nope")
    with pytest.raises(ValueError, match="cannot import 'no_such_module'"):
        import_target("no_such_module.f")


# -- end to end -------------------------------------------------------------------------------


@E2E
def test_runs_sync_and_async_functions_and_logs_one_line_each(server):
    worker = start_cli_worker(server, ECHO, DOUBLE)
    try:
        worker.wait_for("connected to ")
        echo = create_run(server, ECHO, {"a": [1, "x"]})
        double = create_run(server, DOUBLE, 21)
        assert wait_for_state(server, echo["id"])["result"] == {"a": [1, "x"]}
        done = wait_for_state(server, double["id"])
        assert (done["state_type"], done["result"], done["run_count"]) == ("COMPLETED", 42, 1)
        worker.wait_for(rf"run {ECHO} {echo['id']} completed in [\d.]+ ms")
        worker.wait_for(rf"run {DOUBLE} {double['id']} completed in [\d.]+ ms")
    finally:
        terminate_gently(worker)
    assert worker.process.returncode == 0
    assert worker.count(echo["id"]) == 1  # one log line per run


@E2E
def test_failures_are_reported_with_type_message_and_traceback_and_the_worker_goes_on(server):
    worker = start_cli_worker(server, BOOM, NOT_JSON, ECHO)
    try:
        worker.wait_for("connected to ")
        boom = create_run(server, BOOM, "it broke")
        bad = create_run(server, NOT_JSON)
        failed = wait_for_state(server, boom["id"])
        assert failed["state_type"] == "FAILED"
        assert failed["error"]["type"] == "builtins.ValueError"
        assert failed["error"]["message"] == "it broke"
        assert "worker_tasks.py" in failed["error"]["traceback"]
        refused = wait_for_state(server, bad["id"])
        assert refused["state_type"] == "FAILED"
        assert refused["error"]["type"] == "taskqueue_app.errors.NotJSONSerializable"
        assert (
            "return value of tests.worker_tasks.not_json is not JSON"
            in (refused["error"]["message"])
        )
        after = create_run(server, ECHO, "still here")
        assert wait_for_state(server, after["id"])["result"] == "still here"
        worker.wait_for(rf"run {BOOM} {boom['id']} failed in .* ms: builtins.ValueError: it broke")
    finally:
        terminate_gently(worker)
    assert worker.process.returncode == 0


@E2E
def test_a_run_for_a_key_the_worker_does_not_serve_is_reported_not_fatal(server):
    # The server sends only subscribed keys; a worker whose task went missing after it
    # subscribed (the one way to get such a run) fails it with a clear error and goes on.
    worker = TaskWorker(server.api_url, [worker_tasks.echo, worker_tasks.double], limit=2)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:
        assert worker.connected.wait(20)
        del worker.functions[DOUBLE]
        nobody = create_run(server, "tests.no_worker_serves_this")
        lost = create_run(server, DOUBLE, 1)
        failed = wait_for_state(server, lost["id"])
        assert failed["state_type"] == "FAILED"
        assert failed["error"]["type"] == "taskqueue_app.errors.UnknownTaskKey"
        assert f"no task registered for key {DOUBLE!r}" in failed["error"]["message"]
        assert wait_for_state(server, create_run(server, ECHO, 7)["id"])["result"] == 7
        # A key nobody serves waits in its queue; nothing crashed, nothing was lost.
        assert read_run(server, nobody["id"])["state_type"] == "SCHEDULED"
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()


@E2E
def test_the_token_is_sent_and_a_wrong_one_stops_the_worker_with_a_clear_line():
    with ProjectServer(env={"TASKQUEUE_AUTH_TOKEN": "s3cret"}) as server:
        good = start_cli_worker(server, ECHO, token="s3cret")
        bad = start_cli_worker(server, ECHO, token="wrong")
        try:
            good.wait_for("connected to ")
            run = create_run(server, ECHO, "authorised", token="s3cret")
            assert wait_for_state(server, run["id"], token="s3cret")["result"] == "authorised"
            assert bad.wait(20) == 2
            assert bad.count("authentication failed, stopping") == 1
            assert bad.count("connected to ") == 0
        finally:
            terminate_gently(good)
            bad.stop()


@E2E
def test_the_worker_survives_a_server_restart_and_reports_what_it_was_running():
    with ProjectServer() as server:
        worker = start_cli_worker(server, SLOW, ECHO)
        try:
            worker.wait_for("connected to ")
            run = create_run(server, SLOW, "through-restart", 1.5)
            worker.wait_for("slow-started through-restart")
            wait_for_state(server, run["id"], "RUNNING")  # recorded before the crash
            server.restart()  # SIGKILL and start again on the same port and database
            worker.wait_for(r"connection closed \(code \d+\), will reconnect")
            worker.wait_for("connected to ")
            done = wait_for_state(server, run["id"])
            assert (done["state_type"], done["result"]) == ("COMPLETED", "through-restart")
            after = create_run(server, ECHO, "after restart")
            assert wait_for_state(server, after["id"])["result"] == "after restart"
        finally:
            terminate_gently(worker)
        assert worker.process.returncode == 0


@E2E
def test_sigterm_finishes_the_running_run_and_leaves_the_waiting_one_to_the_next_worker(server):
    worker = start_cli_worker(server, SLOW, limit=1)
    try:
        worker.wait_for("connected to ")
        first = create_run(server, SLOW, "first", 1.5)
        second = create_run(server, SLOW, "second", 0.1)
        worker.wait_for("slow-started first")
        # Where the second run is when the signal comes: in the server's queue. The worker
        # subscribed with limit=1, and a worker at its limit is sent nothing it could not start.
        holder = wait_until_held(server, first["id"])
        assert holder["held"] == [first["id"]]
        wait_for_queue_row(server, SLOW, scheduled_size=1, retry_size=0, held=1)
        assert read_run(server, second["id"])["state_type"] == "SCHEDULED"
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0
    finally:
        worker.stop()
    assert worker.count("stopping: finishing 1 running run") == 1
    assert read_run(server, first["id"])["state_type"] == "COMPLETED"
    # The stopping worker took nothing more: once the first run's slot was free the server may
    # have sent it the second, which it then handed back unstarted (to the front of the retry
    # lane) instead of running it. Either way the run waits in a lane, held by no one.
    wait_for_queue_row(server, SLOW, waiting=1, held=0)
    waiting = read_run(server, second["id"])
    assert (waiting["state_type"], waiting["run_count"]) == ("SCHEDULED", 0)
    assert worker.count("slow-started second") == 0
    # Not lost: the next worker runs it, as its first attempt.
    other = start_cli_worker(server, SLOW, limit=1)
    try:
        done = wait_for_state(server, second["id"])
        assert (done["state_type"], done["result"], done["run_count"]) == ("COMPLETED", "second", 1)
        other.wait_for("slow-started second")
    finally:
        terminate_gently(other)


@E2E
def test_a_second_signal_hands_the_running_run_back_and_exits_at_once(server):
    # A key of its own: no later worker of this module may pick up the 60-second run.
    worker = start_cli_worker(server, "slow.interrupted=tests.worker_tasks.slow", limit=1)
    try:
        worker.wait_for("connected to ")
        run = create_run(
            server, "slow.interrupted", "interrupted", 60, empirical_policy={"retries": 1}
        )
        worker.wait_for("slow-started interrupted")
        wait_for_state(server, run["id"], "RUNNING")
        worker.signal(signal.SIGTERM)
        worker.wait_for("stopping: finishing 1 running run")
        worker.signal(signal.SIGTERM)
        assert worker.wait(15) == 1
    finally:
        worker.stop()
    assert worker.count("stopping now: 1 running run") == 1
    # Its connection closed while it ran: crashed, and back in the queue since a retry is left.
    back = wait_for_state(server, run["id"], "SCHEDULED")
    assert back["state_name"] == "AwaitingRetry"
    assert back["error"]["type"] == "taskqueue_app.errors.Crashed"

"""Crash recovery end to end: a worker killed with SIGKILL while it holds runs loses none of them,
and none completes twice."""

from __future__ import annotations

import signal

import pytest

from project.servers import ProjectServer
from tests.worker_helpers import (
    create_run,
    read_run,
    start_cli_worker,
    terminate_gently,
    wait_for_queue_row,
    wait_for_state,
    wait_until_held,
)

pytestmark = pytest.mark.timeout(90)
SLOW = "tests.worker_tasks.slow"


@pytest.fixture
def server():
    with ProjectServer() as running:
        yield running


def test_a_run_started_by_a_killed_worker_is_retried_elsewhere_and_completes_once(server):
    doomed = start_cli_worker(server, SLOW, limit=1)
    rescuer = None
    try:
        doomed.wait_for("connected to ")
        run = create_run(server, SLOW, "survivor", 1.0, empirical_policy={"retries": 1})
        doomed.wait_for("slow-started survivor")
        wait_for_state(server, run["id"], "RUNNING")
        rescuer = start_cli_worker(server, SLOW, limit=1)
        rescuer.wait_for("connected to ")
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        done = wait_for_state(server, run["id"])
        assert (done["state_type"], done["result"]) == ("COMPLETED", "survivor")
        assert done["run_count"] == 2  # the killed attempt and the one that finished
        # What ended the first attempt.
        assert done["error"]["type"] == "taskqueue_app.errors.Crashed"
        rescuer.wait_for(rf"run {SLOW} {run['id']} completed")
    finally:
        doomed.stop()
        if rescuer is not None:
            terminate_gently(rescuer)
    assert doomed.count(rf"{run['id']} completed") == 0
    assert rescuer.count(rf"{run['id']} completed") == 1
    assert rescuer.count("slow-started survivor") == 1


def test_a_killed_worker_s_started_run_crashes_and_the_run_waiting_behind_it_is_not_lost(server):
    # limit=1: while "held" runs, the server sends this worker nothing more ('limit' in its
    # subscribe), so "waiting" stays in the server's queue, out of the doomed worker's hands.
    doomed = start_cli_worker(server, SLOW, limit=1)
    rescuer = None
    try:
        doomed.wait_for("connected to ")
        held = create_run(server, SLOW, "held", 30)  # no retries: it stays crashed
        waiting = create_run(server, SLOW, "waiting", 0.1)
        doomed.wait_for("slow-started held")
        wait_for_state(server, held["id"], "RUNNING")
        holder = wait_until_held(server, held["id"])
        assert holder["held"] == [held["id"]]
        wait_for_queue_row(server, SLOW, scheduled_size=1, retry_size=0, held=1)
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        crashed = wait_for_state(server, held["id"], "CRASHED")
        assert crashed["error"]["type"] == "taskqueue_app.errors.Crashed"
        assert crashed["run_count"] == 1
        # The record alone cannot tell a run waiting in its queue from one stuck with a dead
        # connection (both read SCHEDULED, run_count 0): the queue shows it waiting, before any
        # other worker connects, and the dead connection holding nothing any more.
        wait_for_queue_row(server, SLOW, waiting=1, held=0)
        back = read_run(server, waiting["id"])
        assert (back["state_type"], back["run_count"]) == ("SCHEDULED", 0)
        rescuer = start_cli_worker(server, SLOW, limit=1)
        done = wait_for_state(server, waiting["id"])
        assert (done["state_type"], done["result"], done["run_count"]) == (
            "COMPLETED",
            "waiting",
            1,
        )
    finally:
        doomed.stop()
        if rescuer is not None:
            terminate_gently(rescuer)
    assert doomed.count("slow-started waiting") == 0
    assert read_run(server, held["id"])["state_type"] == "CRASHED"  # not re-run by anyone

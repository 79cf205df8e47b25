"""Crash recovery end to end: a worker killed with SIGKILL while it holds runs loses none of them,
and none completes twice."""

from __future__ import annotations

import signal
import time

import pytest

from project.servers import ProjectServer
from tests.worker_helpers import (
    api,
    create_run,
    read_run,
    start_cli_worker,
    terminate_gently,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(90)
SLOW = "tests.worker_tasks.slow"


def wait_until_held(server: ProjectServer, run_id: str, timeout: float = 10.0) -> None:
    """Poll the workers list until some worker holds ``run_id`` unacked."""
    deadline = time.monotonic() + timeout
    while True:
        status, workers = api(server, "POST", "task_workers/filter", {})
        assert status == 200, workers
        if any(run_id in worker["held"] for worker in workers):
            return
        assert time.monotonic() < deadline, f"no worker holds {run_id}: {workers}"
        time.sleep(0.05)


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
        assert done["error"]["type"] == "Crashed"  # what ended the first attempt
        rescuer.wait_for(rf"run {SLOW} {run['id']} completed")
    finally:
        doomed.stop()
        if rescuer is not None:
            terminate_gently(rescuer)
    assert doomed.count(rf"{run['id']} completed") == 0
    assert rescuer.count(rf"{run['id']} completed") == 1
    assert rescuer.count("slow-started survivor") == 1


def test_a_killed_worker_s_unstarted_runs_go_back_at_once_and_started_ones_crash(server):
    # limit=1: the worker runs "held" and keeps "waiting" delivered but unacked (prefetch).
    doomed = start_cli_worker(server, SLOW, limit=1)
    rescuer = None
    try:
        doomed.wait_for("connected to ")
        held = create_run(server, SLOW, "held", 30)  # no retries: it stays crashed
        waiting = create_run(server, SLOW, "waiting", 0.1)
        doomed.wait_for("slow-started held")
        wait_for_state(server, held["id"], "RUNNING")
        wait_until_held(server, waiting["id"])  # delivered to it, not acked
        doomed.signal(signal.SIGKILL)
        doomed.wait()
        crashed = wait_for_state(server, held["id"], "CRASHED")
        assert crashed["error"]["type"] == "Crashed"
        assert crashed["run_count"] == 1
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

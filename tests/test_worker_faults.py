"""The worker against faults of its tasks and its own business: tasks that raise BaseException
fail their run and the worker lives on; a busy worker is not sent a run it cannot start."""

from __future__ import annotations

import signal

import pytest

from project.servers import ProjectServer
from tests.worker_helpers import (
    api,
    create_run,
    start_cli_worker,
    terminate_gently,
    wait_for_state,
)

pytestmark = pytest.mark.timeout(120)

T = "tests.worker_tasks."
ECHO, SLOW = T + "echo", T + "slow"


@pytest.fixture(scope="module")
def server():
    with ProjectServer() as running:
        yield running


@pytest.mark.parametrize(
    ("task", "args", "kind"),
    [
        ("exits", [3], "builtins.SystemExit"),
        ("interrupts", [], "builtins.KeyboardInterrupt"),
        ("exits_async", [], "builtins.SystemExit"),
        ("leaks_generator_exit", [], "builtins.GeneratorExit"),
    ],
)
def test_a_task_raising_base_exception_fails_its_run_and_the_worker_lives_on(
    server, task, args, kind
):
    worker = start_cli_worker(server, T + task, ECHO)
    try:
        worker.wait_for("connected to ")
        run = create_run(server, T + task, *args)
        failed = wait_for_state(server, run["id"])
        assert (failed["state_type"], failed["error"]["type"]) == ("FAILED", kind)
        assert 'worker_tasks.py", line' in failed["error"]["traceback"]
        after = create_run(server, ECHO, "still serving")
        assert wait_for_state(server, after["id"])["result"] == "still serving"
        assert worker.process.poll() is None
    finally:
        terminate_gently(worker)
    assert worker.process.returncode == 0


def test_a_second_sigint_still_stops_the_worker_at_once(server):
    worker = start_cli_worker(server, SLOW, limit=1)
    try:
        worker.wait_for("connected to ")
        create_run(server, SLOW, "long", 30)
        worker.wait_for("slow-started long")
        worker.signal(signal.SIGINT)
        worker.wait_for("finishing 1 running run")
        worker.signal(signal.SIGINT)
        assert worker.wait(20) != 0  # forced: it did not wait 30 s for the run
    finally:
        worker.stop()


def held_by_workers(server: ProjectServer) -> dict[str, list[str]]:
    status, workers = api(server, "POST", "task_workers/filter", {})
    assert status == 200, workers
    return {worker["identifier"]: worker["held"] for worker in workers}


def test_a_busy_worker_is_not_sent_a_run_another_worker_can_start(server):
    busy = start_cli_worker(server, SLOW, limit=1)
    idle = None
    try:
        busy.wait_for("connected to ")
        long = create_run(server, SLOW, "long", 30)
        busy.wait_for("slow-started long")
        idle = start_cli_worker(server, SLOW, limit=1)
        idle.wait_for("connected to ")
        short = create_run(server, SLOW, "short", 0)
        # The short run goes to the idle worker and finishes while the long one still runs:
        # nothing waits in the busy worker's hands.
        done = wait_for_state(server, short["id"])
        assert (done["state_type"], done["result"]) == ("COMPLETED", "short")
        assert busy.count("slow-started short") == 0
        assert api(server, "GET", f"task_runs/{long['id']}")[1]["state_type"] == "RUNNING"
        (held,) = [ids for ids in held_by_workers(server).values() if long["id"] in ids]
        assert held == [long["id"]]  # the busy worker holds its one run, nothing more
    finally:
        busy.stop()
        if idle is not None:
            terminate_gently(idle)


def test_a_worker_holds_at_most_its_limit_of_runs(server):
    worker = start_cli_worker(server, SLOW, limit=3)
    try:
        worker.wait_for("connected to ")
        runs = [create_run(server, SLOW, f"r{i}", 30) for i in range(8)]
        for i in range(3):
            worker.wait_for(f"slow-started r{i}")
        (held,) = held_by_workers(server).values()
        assert sorted(held) == sorted(run["id"] for run in runs[:3])
        status, rows = api(server, "GET", "task_queues/")
        (row,) = [r for r in rows if r["task_key"] == SLOW]
        assert (row["scheduled_size"], row["held"], row["running"]) == (5, 3, 3)
    finally:
        worker.stop()

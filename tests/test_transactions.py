"""``task.enqueue()`` inside ``transaction.atomic()`` on SQLite: no stall, no false error.

With WAL and IMMEDIATE transactions, an open ``atomic()`` block holds the database's one write
lock, which the server's records writer needs to create the run. Inside a transaction the run is
therefore created when it commits, and not at all when it rolls back; these tests hold the lock
for real, in a view of the server process and in another process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

import pytest

from project.servers import ProjectServer
from tests.worker_helpers import ROOT, api

pytestmark = pytest.mark.timeout(90)


def view(server: ProjectServer, path: str) -> dict:
    with urllib.request.urlopen(f"{server.url}/test/{path}", timeout=20) as response:
        assert response.status == 200
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server():
    with ProjectServer(settings="tests.e2e_settings") as running:
        yield running


def test_enqueue_in_an_atomic_view_creates_the_run_when_it_commits(server):
    answer = view(server, "enqueue-atomic")
    assert answer["status"] == "READY"
    status, run = api(server, "GET", f"task_runs/{answer['id']}")
    assert (status, run["state_type"]) == (200, "SCHEDULED")
    assert run["parameters"] == {"args": [5, 6], "kwargs": {}}


def test_enqueue_in_an_atomic_view_that_rolls_back_creates_nothing(server):
    answer = view(server, "enqueue-atomic?rollback=1")
    status, error = api(server, "GET", f"task_runs/{answer['id']}")
    assert status == 404, error


SHELL = """
import sys
from django.db import transaction
from project.tasks import add
from taskqueue_app.models import TaskRunRecord

class RolledBack(Exception):
    pass

try:
    with transaction.atomic():
        TaskRunRecord.objects.filter(task_key="nothing").update(name="x")  # hold the lock
        result = add.enqueue(7, 8)
        print("inside", result.id, result.status, flush=True)
        if sys.argv[-1] == "rollback":
            raise RolledBack
except RolledBack:
    pass
print("after", add.get_result(result.id).status if sys.argv[-1] != "rollback" else "-")
"""


def run_producer(server: ProjectServer, mode: str) -> list[str]:
    """A producer process on the server's database, holding its write lock while it enqueues."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "TASKQUEUE_DB": str(server.database),
        "TASKQUEUE_SERVER_URL": server.api_url,
    }
    code = "import django; django.setup()\n" + textwrap.dedent(SHELL)
    done = subprocess.run(
        [sys.executable, "-c", code, mode],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_enqueue_in_an_atomic_block_of_another_process_is_sent_when_it_commits(server):
    words = run_producer(server, "commit")
    assert words[0] == "inside" and words[2] == "READY"
    assert words[3:] == ["after", "READY"]
    status, run = api(server, "GET", f"task_runs/{words[1]}")
    assert (status, run["state_type"], run["parameters"]["args"]) == (200, "SCHEDULED", [7, 8])


def test_a_rolled_back_atomic_block_of_another_process_enqueues_nothing(server):
    words = run_producer(server, "rollback")
    status, error = api(server, "GET", f"task_runs/{words[1]}")
    assert status == 404, error

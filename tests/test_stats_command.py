"""``manage.py taskqueue_stats`` against a real Daphne server: table, JSON, refresh, errors."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import urllib.request
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from project.servers import ProjectServer
from taskqueue_app.management.commands.taskqueue_stats import CLEAR_SCREEN
from taskqueue_app.testing import free_port

pytestmark = pytest.mark.timeout(120)

TOKEN = "stats-s3cret"
ROOT = Path(__file__).resolve().parent.parent


def api(server: ProjectServer, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"{server.api_url}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server():
    """One server for the module, with a token, two keys holding runs."""
    with ProjectServer(env={"TASKQUEUE_AUTH_TOKEN": TOKEN}) as running:
        for key, count in (("emails.send", 3), ("reports.build", 1)):
            for _ in range(count):
                api(running, "/task_runs/", {"task_key": key})
        yield running


def stats(*args: str) -> str:
    out = StringIO()
    call_command("taskqueue_stats", *args, stdout=out)
    return out.getvalue()


def test_json_is_what_the_api_says(server):
    document = json.loads(stats("--url", server.api_url, "--token", TOKEN, "--json"))
    assert document["task_queues"] == api(server, "/task_queues/")
    assert document["task_workers"] == []
    sizes = {q["task_key"]: q["scheduled_size"] for q in document["task_queues"]}
    assert sizes == {"emails.send": 3, "reports.build": 1}


def test_table_shows_each_key_against_its_limits(server):
    text = stats("--url", server.api_url + "/", "--token", TOKEN)
    lines = text.splitlines()
    assert lines[0] == f"Task queues at {server.api_url}"
    header = lines[2].split()
    assert header == ["KEY", "SCHEDULED", "RETRY", "BOUNDS", "WORKERS"]
    emails = next(line for line in lines if line.startswith("emails.send"))
    assert emails.split() == ["emails.send", "3/1000", "[#.........]", "0/100", "[..........]"] + [
        "default",
        "0",
    ]
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert total.split() == ["TOTAL", "(2", "keys)", "4/2000", "0/200", "0"]
    assert "No worker is connected." in text
    assert CLEAR_SCREEN not in text


def test_defaults_come_from_the_settings(server):
    with override_settings(TASKQUEUE={"SERVER_URL": server.api_url, "AUTH_TOKEN": TOKEN}):
        document = json.loads(stats("--json"))
    assert len(document["task_queues"]) == 2


def test_missing_token_is_a_clear_401(server):
    with pytest.raises(CommandError, match=r"asks for a token \(401.*--token"):
        stats("--url", server.api_url, "--token", "")


def test_wrong_token_is_a_clear_403(server):
    with pytest.raises(CommandError, match=r"refused the token \(403"):
        stats("--url", server.api_url, "--token", "wrong")


def test_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}/api"
    with pytest.raises(CommandError, match=rf"cannot reach the task queue server at {url}"):
        stats("--url", url)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--url", "ftp://x/api"], "--url must be an http"),
        (["--url", "http://x/api", "--interval", "0"], "--interval must be a positive"),
    ],
)
def test_bad_options_are_named(args, message):
    with pytest.raises(CommandError, match=message):
        stats(*args)


def _command(server: ProjectServer, *args: str) -> list[str]:
    url_args = ["--url", server.api_url, "--token", TOKEN]
    return [sys.executable, "manage.py", "taskqueue_stats", *url_args, *args]


def test_interval_json_prints_one_document_per_refresh(server):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"}
    process = subprocess.Popen(
        _command(server, "--json", "--interval", "0.1"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        documents = [json.loads(process.stdout.readline()) for _ in range(2)]
    finally:
        process.terminate()
        process.wait(10)
    assert documents[0] == documents[1]
    assert {q["task_key"] for q in documents[0]["task_queues"]} == {"emails.send", "reports.build"}


def test_interval_clears_the_screen_only_on_a_terminal(server):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"}
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        _command(server, "--interval", "0.1"), cwd=ROOT, env=env, stdout=follower
    )
    os.close(follower)
    received = b""
    try:
        # Two frames, each starting with the clear-screen sequence, prove the refresh.
        while received.count(CLEAR_SCREEN.encode()) < 2:
            chunk = os.read(leader, 4096)
            assert chunk, "the command closed its terminal early"
            received += chunk
    finally:
        process.terminate()
        process.wait(10)
        os.close(leader)
    assert b"emails.send" in received

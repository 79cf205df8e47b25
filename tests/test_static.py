"""Static files with DEBUG off: the example project under a real Daphne, after `collectstatic`,
serves the admin's and the app's files through WhiteNoise, so the admin is styled in production
mode too, and the API still answers through the same middleware stack."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import django.contrib.admin
import pytest

import taskqueue_app
from project.servers import production_server
from tests.worker_helpers import api

ADMIN_STATIC = Path(django.contrib.admin.__file__).parent / "static"
APP_STATIC = Path(taskqueue_app.__file__).parent / "static"
DASHBOARD = "/admin/taskqueue_app/queuedashboard/"

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def production():
    """The project with DJANGO_DEBUG=0, its files collected into a STATIC_ROOT of its own, and a
    superuser in its database."""
    with production_server() as server:
        yield server


def fetch(url: str, opener: urllib.request.OpenerDirector | None = None):
    """(status, Content-Type, body) of a GET."""
    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def linked_files(page: str) -> list[str]:
    """The stylesheets and scripts a page links to, as paths."""
    stylesheets = re.findall(r'<link[^>]+rel="stylesheet"[^>]+href="([^"]+)"', page)
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', page)
    return [urllib.parse.urlsplit(url).path for url in stylesheets + scripts]


@pytest.mark.parametrize(
    ("path", "source", "content_type"),
    [
        ("admin/css/base.css", ADMIN_STATIC / "admin/css/base.css", "text/css"),
        ("admin/js/core.js", ADMIN_STATIC / "admin/js/core.js", "text/javascript"),
        (
            "taskqueue_app/dashboard.css",
            APP_STATIC / "taskqueue_app/dashboard.css",
            "text/css",
        ),
        (
            "taskqueue_app/dashboard.js",
            APP_STATIC / "taskqueue_app/dashboard.js",
            "text/javascript",
        ),
    ],
)
def test_collected_files_are_served_with_their_type(production, path, source, content_type):
    status, served_type, body = fetch(f"{production.url}/static/{path}")
    assert status == 200, body[:300]
    assert served_type.split(";")[0] == content_type
    assert body == source.read_bytes()


def test_a_file_that_was_not_collected_is_a_404(production):
    status, _, _ = fetch(f"{production.url}/static/admin/css/no-such-file.css")
    assert status == 404


def test_the_admin_is_styled_every_file_its_pages_link_is_served(production):
    login_page = fetch(f"{production.url}/admin/login/")[2].decode()
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    status, _, page = fetch(f"{production.url}/admin/login/", opener)
    assert status == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.decode()).group(1)
    form = {"username": "admin", "password": "pw", "csrfmiddlewaretoken": token}
    form["next"] = DASHBOARD
    login = urllib.request.Request(
        f"{production.url}/admin/login/?next={DASHBOARD}",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Referer": f"{production.url}/admin/login/"},
    )
    with opener.open(login, timeout=10) as response:
        assert urllib.parse.urlsplit(response.url).path == DASHBOARD
        dashboard = response.read().decode()
    links = linked_files(login_page) + linked_files(dashboard)
    assert "/static/admin/css/base.css" in links
    assert "/static/taskqueue_app/dashboard.css" in links
    assert "/static/taskqueue_app/dashboard.js" in links
    for path in links:
        status, content_type, _ = fetch(f"{production.url}{path}")
        assert status == 200, path
        assert content_type.startswith(("text/css", "text/javascript")), (path, content_type)


def test_the_api_answers_through_the_same_middleware(production):
    status, run = api(production, "POST", "task_runs/", {"task_key": "static.check"})
    assert status == 201, run
    assert api(production, "GET", f"task_runs/{run['id']}") == (200, run)

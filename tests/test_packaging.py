"""The wheel a user installs: it carries the app's migrations, templates and static files, and its
declared dependencies are enough to run it on Python 3.12 with Django 5.2 (where the Tasks
framework comes from the django-tasks backport, not from Django)."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "taskqueue_app"
DJANGO_52 = "Django==5.2.19"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once for this module."""
    outdir = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with the venv's pinned setuptools instead of fetching one.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", outdir, ROOT],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = outdir.glob("django_taskqueue-*.whl")
    return built


@pytest.mark.timeout(300)
def test_wheel_contains_migrations_templates_and_static(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for folder in ("migrations", "templates", "static")
        for path in (APP / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert "taskqueue_app/migrations/0001_initial.py" in expected
    assert expected <= names, sorted(expected - names)
    assert "taskqueue_app/task_queue.py" in names
    assert not any(name.startswith(("tests/", "project/", "bench/")) for name in names)


def python312() -> str | None:
    """A Python 3.12+ interpreter, found as the Makefile finds the Django 6 leg's (``PYTHON312``
    overrides); None when there is none."""
    try:
        found = subprocess.run(
            ["make", "-s", "--no-print-directory", "print-python312"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        found = ""
    return found or None


MINIMAL_SETTINGS = """
    import django

    SECRET_KEY = "packaging-test"
    INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "taskqueue_app"]
    if django.VERSION < (6, 0):
        INSTALLED_APPS.append("django_tasks")  # as the README says for Django 5.2
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    TASKS = {"default": {"BACKEND": "taskqueue_app.backend.TaskQueueBackend"}}
    USE_TZ = True
"""

PROBE = """
    import json, sys
    import django
    django.setup()
    import taskqueue_app
    import taskqueue_app.backend
    from taskqueue_app.tasks_compat import BaseTaskBackend, task_backends
    backend = task_backends["default"]
    print("PROBE " + json.dumps({
        "python": list(sys.version_info[:2]),
        "django": list(django.VERSION[:2]),
        "app": taskqueue_app.__file__,
        "tasks_framework": BaseTaskBackend.__module__,
        "backend": type(backend).__module__ + "." + type(backend).__qualname__,
    }))
"""


@pytest.mark.timeout(600)
def test_the_wheel_runs_on_python_312_with_django_52(wheel, tmp_path):
    interpreter = python312()
    if interpreter is None:
        message = "no Python 3.12+ interpreter on this machine (see `make print-python312`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    venv = tmp_path / "venv"
    subprocess.run([interpreter, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    # This venv's pip installs into the new one (--python): no pip bootstrap, and no cache kept
    # outside tmp_path. The wheel brings its own dependencies; only Django is chosen here.
    env = {**os.environ, "PIP_CACHE_DIR": str(tmp_path / "pip-cache")}
    env.pop("PYTHONPATH", None)
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", DJANGO_52, wheel],
        capture_output=True,
        text=True,
        env=env,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    site = tmp_path / "site"
    site.mkdir()
    (site / "minimal_settings.py").write_text(textwrap.dedent(MINIMAL_SETTINGS))
    # Run from tmp_path, so that the installed package is imported, not this checkout's.
    env.update({"PYTHONPATH": str(site), "DJANGO_SETTINGS_MODULE": "minimal_settings"})
    probe = subprocess.run(
        [python, "-c", textwrap.dedent(PROBE)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    line = next(line for line in probe.stdout.splitlines() if line.startswith("PROBE "))
    facts = json.loads(line.removeprefix("PROBE "))
    assert facts["python"] >= [3, 12]
    assert facts["django"] == [5, 2]
    assert Path(facts["app"]).is_relative_to(venv), facts["app"]
    assert facts["tasks_framework"].startswith("django_tasks."), facts
    assert facts["backend"] == "taskqueue_app.backend.TaskQueueBackend"

"""The wheel a user installs carries the app's migrations, templates and static files."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "taskqueue_app"


@pytest.mark.timeout(300)
def test_wheel_contains_migrations_templates_and_static(tmp_path):
    # --no-isolation: build with the venv's pinned setuptools instead of fetching one.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("django_taskqueue-*.whl")
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

"""The example project under a real Daphne, for its tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from taskqueue_app.testing import DaphneServer

__all__ = ["ProjectServer", "production_server"]

ROOT = Path(__file__).resolve().parent.parent


class ProjectServer(DaphneServer):
    """``project.asgi`` under Daphne, on a SQLite file of its own (``TASKQUEUE_DB``), with
    ``TASKQUEUE_SERVER_URL`` pointing at itself."""

    def __init__(self, application: str = "project.asgi:application", **kwargs: Any) -> None:
        kwargs.setdefault("settings", "project.settings")
        kwargs.setdefault("database_env", "TASKQUEUE_DB")
        kwargs.setdefault("server_url_env", "TASKQUEUE_SERVER_URL")
        super().__init__(application, **kwargs)


@contextmanager
def production_server(**kwargs: Any) -> Iterator[ProjectServer]:
    """The project as in production (``DJANGO_DEBUG=0``: WhiteNoise serves what
    ``collectstatic`` gathered into a ``STATIC_ROOT`` of its own), started, with a superuser
    ``admin`` (password ``pw``) in its database."""
    with tempfile.TemporaryDirectory(prefix="taskqueue-static-") as static_root:
        env = {"DJANGO_DEBUG": "0", "DJANGO_STATIC_ROOT": static_root, **kwargs.pop("env", {})}
        server = ProjectServer(env=env, **kwargs)
        environ = server.environ()
        collect = [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"]
        subprocess.run(collect, cwd=ROOT, env=environ, check=True, timeout=60)
        server.migrate()
        create_user = (
            "from django.contrib.auth.models import User; "
            "User.objects.create_superuser('admin', 'admin@example.com', 'pw')"
        )
        shell = [sys.executable, "manage.py", "shell", "-c", create_user]
        subprocess.run(shell, cwd=ROOT, env=environ, check=True, timeout=60)
        with server:
            yield server

"""The example project under a real Daphne, for its tests and benchmarks."""

from __future__ import annotations

from typing import Any

from taskqueue_app.testing import DaphneServer

__all__ = ["ProjectServer"]


class ProjectServer(DaphneServer):
    """``project.asgi`` under Daphne, on a SQLite file of its own (``TASKQUEUE_DB``), with
    ``TASKQUEUE_SERVER_URL`` pointing at itself."""

    def __init__(self, application: str = "project.asgi:application", **kwargs: Any) -> None:
        kwargs.setdefault("settings", "project.settings")
        kwargs.setdefault("database_env", "TASKQUEUE_DB")
        kwargs.setdefault("server_url_env", "TASKQUEUE_SERVER_URL")
        super().__init__(application, **kwargs)

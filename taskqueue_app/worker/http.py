"""Creating runs from another process: ``POST /api/task_runs/`` over a kept-alive connection."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

from ..errors import QueueFull
from ..schemas import ValidationError

__all__ = ["EnqueueError", "post_run"]

_local = threading.local()


class EnqueueError(Exception):
    """The task server could not be reached or refused the request (not a validation error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _connection(base: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """This thread's kept-alive connection to ``base`` and the path of the create endpoint."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnqueueError(f"TASKQUEUE['SERVER_URL'] must be an http(s) URL, not {base!r}")
    connections = getattr(_local, "connections", None)
    if connections is None:
        connections = _local.connections = {}
    connection = connections.get(base)
    if connection is None:
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connections[base] = kind(parts.hostname, parts.port, timeout=timeout)
    return connection, parts.path.rstrip("/") + "/task_runs/"


def _drop(base: str) -> None:
    connection = getattr(_local, "connections", {}).pop(base, None)
    if connection is not None:
        connection.close()


def post_run(base: str, body: dict[str, Any], token: str | None, timeout: float) -> dict:
    """Create a run at the server whose API base is ``base``; the created (or existing) run.

    Raises ``QueueFull`` (503), ``ValidationError`` (400, 413) or ``EnqueueError``.
    The body carries its own id and dynamic key, so resending it after a dropped kept-alive
    connection cannot create a second run.
    """
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in (1, 2):
        connection, path = _connection(base, timeout)
        try:
            connection.request("POST", path, payload, headers)
            response = connection.getresponse()
            text = response.read()
            if response.will_close:
                _drop(base)
            break
        except (http.client.HTTPException, ConnectionError) as exc:
            _drop(base)
            if attempt == 2:
                raise EnqueueError(f"cannot reach the task server at {base}: {exc}") from exc
        except OSError as exc:  # refused, timed out, unreachable: not worth a second try
            _drop(base)
            raise EnqueueError(f"cannot reach the task server at {base}: {exc}") from exc
    try:
        data = json.loads(text)
    except ValueError:
        data = {"error": text[:200].decode(errors="replace")}
    status = response.status
    if status in (200, 201):
        return data
    message = data.get("error") if isinstance(data, dict) else None
    message = message or f"HTTP {status}"
    if status == 503:
        raise QueueFull(message)
    if status in (400, 413):
        raise ValidationError(message)
    if status in (401, 403):
        raise EnqueueError(f"the task server refused the token (HTTP {status}): {message}", status)
    raise EnqueueError(f"the task server answered HTTP {status}: {message}", status)

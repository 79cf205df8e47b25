"""The API from another process, over a kept-alive connection: ``POST /api/task_runs/`` to
create a run, ``POST /api/task_runs/<id>/cancel`` to cancel one."""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import SplitResult, urlsplit

from ..errors import AlreadyFinished, QueueFull
from ..schemas import ValidationError

__all__ = ["EnqueueError", "cancel_run", "post_run", "run_or_raise"]

_local = threading.local()


class EnqueueError(Exception):
    """The task server could not be reached or refused the request (not a validation error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def split_api_url(base: str) -> SplitResult:
    """The parts of the API base ``base`` (``SERVER_URL``); ``EnqueueError`` unless http(s)."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EnqueueError(f"TASKQUEUE['SERVER_URL'] must be an http(s) URL, not {base!r}")
    return parts


def _connection(base: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """This thread's kept-alive connection to ``base`` and the API's base path."""
    parts = split_api_url(base)
    connections = getattr(_local, "connections", None)
    if connections is None:
        connections = _local.connections = {}
    connection = connections.get(base)
    if connection is None:
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        connection = connections[base] = kind(parts.hostname, parts.port, timeout=timeout)
    return connection, parts.path.rstrip("/")


def _drop(base: str) -> None:
    connection = getattr(_local, "connections", {}).pop(base, None)
    if connection is not None:
        connection.close()


def _post(
    base: str, endpoint: str, body: dict[str, Any] | None, token: str | None, timeout: float
) -> tuple[int, Any]:
    """POST ``body`` as JSON to ``endpoint`` under the API ``base``: (status, decoded answer).

    Sent again once over a fresh connection when a kept-alive one turns out dropped: every
    POST of the API is safe to repeat (a create carries its own id and dynamic key).
    """
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in (1, 2):
        connection, path = _connection(base, timeout)
        try:
            connection.request("POST", path + endpoint, payload, headers)
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
    return response.status, data


def _message(status: int, data: Any) -> str:
    message = data.get("error") if isinstance(data, dict) else None
    return message or f"HTTP {status}"


def _refused(status: int, data: Any) -> EnqueueError:
    message = _message(status, data)
    if status in (401, 403):
        return EnqueueError(f"the task server refused the token (HTTP {status}): {message}", status)
    return EnqueueError(f"the task server answered HTTP {status}: {message}", status)


def post_run(base: str, body: dict[str, Any], token: str | None, timeout: float) -> dict:
    """Create a run at the server whose API base is ``base``; the created (or existing) run.

    Raises ``QueueFull`` (503), ``ValidationError`` (400, 413) or ``EnqueueError``.
    """
    status, data = _post(base, "/task_runs/", body, token, timeout)
    return run_or_raise(status, data)


def run_or_raise(status: int, data: Any) -> dict:
    """The run of a create's answer (``status`` 200 or 201), or the error it means: ``QueueFull``
    (503), ``ValidationError`` (400, 413) or ``EnqueueError``."""
    if status in (200, 201):
        return data
    if status == 503:
        raise QueueFull(_message(status, data))
    if status in (400, 413):
        raise ValidationError(_message(status, data))
    raise _refused(status, data)


def cancel_run(base: str, run_id: str, token: str | None, timeout: float) -> dict | None:
    """Cancel a run at the server whose API base is ``base``: the run as it is now (CANCELLED,
    or RUNNING until its worker confirms); None when the server has no such run.

    Raises ``AlreadyFinished`` (409) or ``EnqueueError``.
    """
    status, data = _post(base, f"/task_runs/{run_id}/cancel", None, token, timeout)
    if status == 200:
        return data
    if status == 404:
        return None
    if status == 409:
        raise AlreadyFinished(_message(status, data))
    raise _refused(status, data)

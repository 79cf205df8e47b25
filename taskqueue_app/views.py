"""The HTTP API (DESIGN §5): async views that run in the server's loop and call ``lifecycle``.

Views never change a run's state themselves; they read and check the request, hand it to
``lifecycle`` and turn its answer (or its exception) into a status code and JSON.

Choices where DESIGN is silent:

- A run id in the path that is not a UUID is a 400 (``id must be a UUID string, not '...'``):
  the request is malformed, which says more than a 404 would.
- A POST body must be ``application/json`` (any parameters, e.g. ``charset=utf-8``); a body
  with another ``Content-Type``, or none, is a 415: a browser sends a cross-site body without a
  preflight only as a "simple" type, so even with no token set a foreign page cannot enqueue.
  A POST without a body declares nothing to check.
- The size limit (``MAX_MESSAGE_BYTES``) is judged from ``Content-Length`` before the body is
  read, and from the bytes actually read (at most one over the limit) before parsing.
  A body that fits but whose run (with the fields the server adds) would not is a 413 too.
- A create whose ``id`` is taken by a run of another (task_key, dynamic_key) is a 409.
- A database that refuses the insert is a 503 with ``Retry-After``: the run was not accepted.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from . import actions, lifecycle, metrics, server
from .auth import token_auth
from .conf import taskqueue_settings
from .schemas import TaskRun, TooLargeError, ValidationError, parse_uuid
from .workers import queue_rows, workers

JSON_TYPE = "application/json"
logger = logging.getLogger(__name__)

View = Callable[..., Awaitable[HttpResponse]]


class HttpError(Exception):
    """A request the API refuses: status, message, and any extra headers of the answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(data: Any, status: int = 200) -> HttpResponse:
    """``data`` as compact JSON."""
    return HttpResponse(
        json.dumps(data, separators=(",", ":")), status=status, content_type=JSON_TYPE
    )


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> HttpResponse:
    """The API's error form: ``{"error": message}`` with ``status``."""
    response = json_response({"error": message}, status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _run_response(run: TaskRun, status: int = 200) -> HttpResponse:
    return HttpResponse(run.to_json(), status=status, content_type=JSON_TYPE)


def api_view(*methods: str, permission: str | None = None) -> Callable[[View], View]:
    """Allow only ``methods`` (405 with ``Allow`` otherwise), ask for the token (or, for reads,
    a staff session with ``permission``), answer ``HttpError`` as JSON; CSRF-exempt (see
    ``auth.token_auth``)."""
    allowed = ", ".join(methods)

    def decorate(view: View) -> View:
        protected = token_auth(view, permission)

        @functools.wraps(view)
        async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            # The method first: a wrong method is wrong whoever asks.
            if request.method not in methods:
                return error_response(
                    405,
                    f"method {request.method} is not allowed here; use {allowed}",
                    {"Allow": allowed},
                )
            try:
                return await protected(request, *args, **kwargs)
            except HttpError as exc:
                response = error_response(exc.status, exc.message, exc.headers)
                if exc.status == 503:
                    # Backpressure, not a fault: a warning here, and not Django's ERROR (which
                    # would email ADMINS once for every producer told to come back later).
                    logger.warning("%s %s: 503 %s", request.method, request.path, exc.message)
                    response._has_been_logged = True
                return response

        return csrf_exempt(wrapped)

    return decorate


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def read_json(request: HttpRequest, *, required: bool) -> Any:
    """The request's JSON body (None when empty and not ``required``), size and type checked
    before parsing; raises ``HttpError`` (400, 413, 415)."""
    limit = taskqueue_settings.MAX_MESSAGE_BYTES
    declared = request.META.get("CONTENT_LENGTH") or "0"
    try:
        length = int(declared)
    except ValueError:
        raise HttpError(400, f"Content-Length must be an integer, not {declared!r}") from None
    too_large = f"the request body is larger than MAX_MESSAGE_BYTES ({limit} bytes)"
    if length > limit:
        raise HttpError(413, too_large)
    # read() rather than .body: it reads at most one byte over our limit and is not subject to
    # DATA_UPLOAD_MAX_MEMORY_SIZE, which would answer 400 for a body our setting allows.
    body = request.read(limit + 1)
    if len(body) > limit:
        raise HttpError(413, too_large)
    if not body:
        if required:
            raise HttpError(400, "the request body is empty; send a JSON object")
        return None
    # Only JSON: a browser sends a cross-site body without a preflight only as a "simple"
    # type (none, text/plain, a form), so with no token set a foreign page still cannot enqueue.
    content_type = (request.content_type or "").lower()
    if content_type != JSON_TYPE:
        sent = f"not {request.content_type!r}" if request.content_type else "none was sent"
        raise HttpError(415, f"Content-Type must be {JSON_TYPE}; {sent}")
    try:
        # NaN and Infinity are not JSON: accepting them would store runs we cannot send.
        return json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HttpError(400, "the request body is nested too deeply") from None


def _run_id(value: str) -> Any:
    try:
        return parse_uuid(value, "id")
    except ValidationError as exc:
        raise HttpError(400, str(exc)) from None


def _busy(message: str, retry_after: int) -> HttpError:
    return HttpError(503, message, {"Retry-After": str(retry_after)})


# -- endpoints ----------------------------------------------------------------------------------


@api_view("POST")
async def task_runs(request: HttpRequest) -> HttpResponse:
    """Create a run: 201 + run, or 200 + the run that has this (task_key, dynamic_key)."""
    try:
        data = read_json(request, required=True)
    except HttpError as exc:
        metrics.rejected("too_large" if exc.status == 413 else "invalid")
        raise
    run, status = await create_run(data)
    return _run_response(run, status)


BATCH_MAX = 1000


@api_view("POST")
async def task_runs_batch(request: HttpRequest) -> HttpResponse:
    """Create many runs in one request: a JSON list of runs in, one answer per run out, in
    order: ``{"status": 201 or 200, "run": ...}`` or ``{"status": 4xx/503, "error": ...}``.

    The runs are created together (one group commit), each on its own: a refused run does not
    refuse the others, and the request as a whole answers 200.
    """
    try:
        data = read_json(request, required=True)
    except HttpError as exc:
        metrics.rejected("too_large" if exc.status == 413 else "invalid")
        raise
    if not isinstance(data, list) or not data:
        metrics.rejected("invalid")
        raise HttpError(400, "the request body must be a non-empty JSON list of runs")
    if len(data) > BATCH_MAX:
        metrics.rejected("too_large")
        raise HttpError(413, f"a batch holds at most {BATCH_MAX} runs, not {len(data)}")
    answers = await asyncio.gather(*(create_answer(item) for item in data))
    return HttpResponse("[" + ",".join(answers) + "]", status=200, content_type=JSON_TYPE)


async def create_answer(data: Any, head: str = "") -> str:
    """One create's answer as a JSON object, ``{"status", "run"}`` or ``{"status", "error"}``,
    for a batch or the producer stream; ``head`` is JSON members to put first (``"ref":1,``)."""
    try:
        run, status = await create_run(data)
    except HttpError as exc:
        refusal = {"status": exc.status, "error": exc.message}
        if "Retry-After" in exc.headers:
            refusal["retry_after"] = int(exc.headers["Retry-After"])
        return f"{{{head}{json.dumps(refusal, separators=(',', ':'))[1:]}"
    return f'{{{head}"status":{status},"run":{run.to_json()}}}'


async def create_run(data: Any) -> tuple[TaskRun, int]:
    """Create a run from a producer's JSON: (run, 201) or (the existing run, 200); raises
    ``HttpError`` (400, 409, 413, 503) with what is wrong. The HTTP API and the producer
    stream answer alike."""
    try:
        # In the server's loop here; in a process that serves nothing (a WSGI site with the
        # Redis engine), in that process's producer loop.
        run, created = await server.acall(lifecycle.create, data)
    except TooLargeError as exc:
        raise HttpError(413, str(exc)) from None
    except ValidationError as exc:
        raise HttpError(400, str(exc)) from None
    except lifecycle.QueueFullError as exc:
        raise _busy(f"{exc}; try again later", exc.retry_after) from None
    except DatabaseError as exc:
        # Not recorded, so not accepted: the producer must try again (nothing is lost).
        raise _busy(f"the run could not be recorded ({exc}); try again later", 1) from None
    if not created and _other_run(run, data):
        raise HttpError(
            409,
            f"id {run.id} belongs to another run "
            f"(task_key {run.task_key!r}, dynamic_key {run.dynamic_key!r})",
        )
    return run, 201 if created else 200


def _other_run(existing: TaskRun, data: dict) -> bool:
    """True when the run found for a create is not the one asked for: only its id matched.

    The same (task_key, dynamic_key) is the same run (200); the same id with another key is a
    collision the producer must hear about, not a silent answer about somebody else's run.
    """
    dynamic_key = data.get("dynamic_key")
    return existing.task_key != data.get("task_key") or (
        dynamic_key is not None and existing.dynamic_key != dynamic_key
    )


@api_view("GET", permission="taskqueue_app.view_taskrunrecord")
async def task_run_detail(request: HttpRequest, run_id: str) -> HttpResponse:
    """One run as recorded, with its state, result or error."""
    return _found(await lifecycle.get(_run_id(run_id)), run_id)


@api_view("POST")
async def task_run_retry(request: HttpRequest, run_id: str) -> HttpResponse:
    """Put a FAILED, CRASHED or CANCELLED run into its key's retry queue."""
    run_uuid = _run_id(run_id)
    read_json(request, required=False)  # no fields yet, but a body must still be sound
    try:
        run = await server.acall(actions.retry, run_uuid)
    except actions.NotFinishedError as exc:
        raise HttpError(409, str(exc)) from None
    except lifecycle.QueueFullError as exc:
        raise _busy(f"{exc}; try again later", exc.retry_after) from None
    return _found(run, run_id)


@api_view("POST")
async def task_run_cancel(request: HttpRequest, run_id: str) -> HttpResponse:
    """Cancel a run: CANCELLED at once, or RUNNING with ``cancel_requested`` until its worker
    confirms."""
    run_uuid = _run_id(run_id)
    read_json(request, required=False)
    try:
        run = await server.acall(actions.cancel, run_uuid)
    except actions.AlreadyFinished as exc:
        raise HttpError(409, str(exc)) from None
    return _found(run, run_id)


def _found(run: TaskRun | None, run_id: str) -> HttpResponse:
    if run is None:
        raise HttpError(404, f"no task run with id {run_id}")
    return _run_response(run)


@csrf_exempt
async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Any other path under the API: a JSON 404 that says where to look, never an HTML page."""
    hint = ""
    if request.path.endswith("/"):
        hint = " (the paths of runs and workers have no trailing slash)"
    elif any(request.path.endswith(name) for name in ("/task_runs", "/task_queues")):
        hint = " (this path ends with a slash)"
    return error_response(404, f"no API endpoint at {request.path}{hint}; see the API docs")


@api_view("GET", permission="taskqueue_app.view_queuedashboard")
async def task_queues(request: HttpRequest) -> HttpResponse:
    """Per key: lane sizes and limits, whether configured, and how many workers subscribe."""
    return json_response(await queue_rows())


@api_view("GET", permission="taskqueue_app.view_queuedashboard")
async def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus' text exposition of the queues, the runs and the workers (DESIGN §12)."""
    state = await server.acall(metrics.collect)
    return HttpResponse(metrics.exposition(state), content_type=metrics.CONTENT_TYPE_LATEST)


def _task_keys_filter(data: Any) -> list[str] | None:
    """The ``task_keys`` of Prefect's ``{"task_worker_filter": {"task_keys": [...]}}``."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise HttpError(400, "the request body must be a JSON object")
    unknown = sorted(set(data) - {"task_worker_filter"})
    if unknown:
        raise HttpError(400, f"unknown field(s): {', '.join(unknown)}; allowed: task_worker_filter")
    worker_filter = data.get("task_worker_filter")
    if worker_filter is None:
        return None
    if not isinstance(worker_filter, dict):
        raise HttpError(400, "task_worker_filter must be a JSON object")
    unknown = sorted(set(worker_filter) - {"task_keys"})
    if unknown:
        raise HttpError(
            400,
            f"task_worker_filter has unknown field(s): {', '.join(unknown)}; allowed: task_keys",
        )
    keys = worker_filter.get("task_keys")
    if keys is None:
        return None
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise HttpError(400, "task_worker_filter.task_keys must be a list of strings")
    return keys


@api_view("POST")
async def task_workers_filter(request: HttpRequest) -> HttpResponse:
    """Connected workers as Prefect lists them; those serving any of ``task_keys``, or all."""
    keys = _task_keys_filter(read_json(request, required=False))
    return json_response(await workers(keys))

"""Test-only views that use the Tasks backend inside the server: from a sync view (a thread of
the server process) and from an async view (the server's event loop). They enqueue
``add_when_served``, a key no worker of the module's server serves, so that what they read back
right after the enqueue is determined: the run waits, READY, until a test starts a worker."""

from __future__ import annotations

import threading

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import path

from project.tasks import add
from project.urls import urlpatterns as project_urlpatterns
from taskqueue_app.tasks_compat import task, task_backends
from tests.tasks import describe


@task()
def never_run() -> None:
    """Its queue holds one run and no worker serves it."""


@task()
def add_when_served(a: float, b: float) -> float:
    """``a + b`` under a key of its own: a test starts the worker that serves it."""
    return a + b


def _answer(result, read_back, in_thread: str) -> JsonResponse:
    return JsonResponse(
        {
            "id": result.id,
            "status": result.status,
            "task": result.task.module_path,
            "read_back": read_back.status,
            "thread": in_thread,
        }
    )


def enqueue_sync(request: HttpRequest) -> JsonResponse:
    """A sync view: Daphne runs it in a thread, so the backend hands the create to the loop."""
    result = add_when_served.enqueue(int(request.GET["a"]), int(request.GET["b"]))
    read_back = add_when_served.get_result(result.id)
    return _answer(result, read_back, threading.current_thread().name)


async def enqueue_async(request: HttpRequest) -> JsonResponse:
    """An async view: runs in the server's loop, where the backend awaits the create."""
    result = await add_when_served.aenqueue(int(request.GET["a"]), b=int(request.GET["b"]))
    read_back = await add_when_served.aget_result(result.id)
    return _answer(result, read_back, threading.current_thread().name)


def result_sync(request: HttpRequest, result_id: str) -> JsonResponse:
    """get_result from a sync view: status, value, attempts."""
    result = add_when_served.get_result(result_id)
    body = {"status": result.status, "attempts": result.attempts}
    if result.is_finished and result.status == "SUCCESSFUL":
        body["return_value"] = result.return_value
    return JsonResponse(body)


class RolledBack(Exception):
    """Raised inside the atomic block to roll it back."""


def enqueue_atomic(request: HttpRequest) -> JsonResponse:
    """``enqueue`` inside ``transaction.atomic()`` (a write lock on SQLite), committed or not."""
    rollback = request.GET.get("rollback") == "1"
    try:
        with transaction.atomic():
            result = add.enqueue(5, 6)
            if rollback:
                raise RolledBack
    except RolledBack:
        pass
    return JsonResponse({"id": result.id, "status": result.status})


def result_details(request: HttpRequest, result_id: str) -> JsonResponse:
    """get_result of any run through the backend alias ``?backend=`` (default ``default``), from
    a sync view: the TaskResult as tests.tasks.describe puts it."""
    backend = task_backends[request.GET.get("backend", "default")]
    return JsonResponse(describe(backend.get_result(result_id)))


async def aresult_details(request: HttpRequest, result_id: str) -> JsonResponse:
    """The same with aget_result, from an async view (the server's loop)."""
    backend = task_backends[request.GET.get("backend", "default")]
    return JsonResponse(describe(await backend.aget_result(result_id)))


urlpatterns = [
    *project_urlpatterns,
    path("test/enqueue-sync", enqueue_sync),
    path("test/enqueue-async", enqueue_async),
    path("test/result/<str:result_id>", result_sync),
    path("test/enqueue-atomic", enqueue_atomic),
    path("test/details/<str:result_id>", result_details),
    path("test/adetails/<str:result_id>", aresult_details),
]

"""``manage.py taskworker [--url URL] [--token T] [--limit N] [--queue NAME ...] [path ...]``."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import autodiscover_modules

from taskqueue_app.backend import TaskQueueBackend
from taskqueue_app.conf import taskqueue_settings
from taskqueue_app.results import queue_key
from taskqueue_app.schemas import DEFAULT_QUEUE
from taskqueue_app.tasks_compat import Task, task_backends
from taskqueue_app.worker.cli import build_tasks, configure_logging, serve
from taskqueue_app.worker.django_worker import DjangoTaskWorker

logger = logging.getLogger("taskqueue_app.worker.client")


def _import_project_tasks() -> None:
    """The project package (the one holding the settings module) may have a ``tasks`` module
    too, though it is rarely an installed app."""
    package = (getattr(settings, "SETTINGS_MODULE", None) or "").rpartition(".")[0]
    if not package:
        return
    name = f"{package}.tasks"
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise


def discover_tasks() -> dict[str, Task]:
    """Every Task defined for a ``TaskQueueBackend``, by key (its module path).

    The Tasks framework keeps no registry, so: import each installed app's ``tasks`` module
    and the project's, then collect the Task objects defined in any imported module.
    """
    autodiscover_modules("tasks")
    _import_project_tasks()
    found: dict[str, Task] = {}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for value in list(namespace.values()):
            if not isinstance(value, Task) or value.func.__module__ != module.__name__:
                continue  # defined elsewhere (imported here), or not a Task
            try:
                backend = value.get_backend()
            except Exception:  # an alias not configured in TASKS: not ours
                continue
            if isinstance(backend, TaskQueueBackend):
                found[value.module_path] = value
    return dict(sorted(found.items()))


def configured_queues() -> tuple[list[str], bool]:
    """The queues in the ``QUEUES`` of every ``TaskQueueBackend`` in ``TASKS``, in the order
    given, and whether one of those backends takes any queue name (``QUEUES: []``)."""
    names: dict[str, None] = {}
    any_name = False
    for alias, params in task_backends.settings.items():
        try:
            backend = task_backends[alias]
        except Exception:  # a backend that cannot be loaded here: not ours to serve
            continue
        if isinstance(backend, TaskQueueBackend):
            names.update(dict.fromkeys(params.get("QUEUES", [DEFAULT_QUEUE])))
            any_name = any_name or not backend.queues
    return list(names), any_name


def select_queues(requested: list[str] | None) -> list[str]:
    """The queues to serve, in order of preference: those named (each must be in a backend's
    ``QUEUES``), else every queue of the backends."""
    names, any_name = configured_queues()
    if not requested:
        return names or [DEFAULT_QUEUE]
    unknown = [name for name in requested if name not in names]
    if unknown and not any_name:
        raise CommandError(
            f"no TaskQueueBackend in TASKS has the queue(s) {', '.join(map(repr, unknown))} in "
            f"its QUEUES ({', '.join(names)})"
        )
    return list(dict.fromkeys(requested))


def keys_for(tasks: dict[str, Any], queues: list[str]) -> dict[str, Any]:
    """Task key -> target for each task on each queue (a queue's runs have keys of their own),
    queue by queue: a worker takes the runs of its first queue first."""
    return {queue_key(path, queue): target for queue in queues for path, target in tasks.items()}


class Command(BaseCommand):
    """Run a TaskWorker for this project's tasks (django-tasks' db_worker, for taskqueue)."""

    help = (
        "Run task runs delivered by the taskqueue server over WebSocket. With no paths, serve "
        "every task defined with the Tasks framework for the TaskQueueBackend."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "paths", nargs="*", metavar="dotted.task.path", help="tasks or functions to serve"
        )
        parser.add_argument(
            "--url", help="the server's API base (default: TASKQUEUE['SERVER_URL'])"
        )
        parser.add_argument("--token", help="the token (default: TASKQUEUE['AUTH_TOKEN'])")
        parser.add_argument("--limit", type=int, default=10, help="runs at once (default 10)")
        parser.add_argument("--client-id", help="this worker's name (default: host-pid-random)")
        parser.add_argument(
            "--queue",
            action="append",
            metavar="NAME",
            help="serve only this queue (repeatable; default: every queue in the QUEUES of the "
            "TaskQueueBackends in TASKS)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        url = options["url"] or taskqueue_settings.SERVER_URL
        if not url:
            raise CommandError("no server URL: pass --url or set TASKQUEUE['SERVER_URL']")
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        try:
            tasks = build_tasks(options["paths"]) if options["paths"] else discover_tasks()
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if not tasks:
            raise CommandError(
                "no tasks to serve: none is defined for the TaskQueueBackend in the installed "
                "apps' (or the project's) tasks modules; name them as dotted paths"
            )
        queues = select_queues(options["queue"])
        if not logging.getLogger().handlers and not logging.getLogger("taskqueue_app").handlers:
            configure_logging("INFO")
        for path, target in tasks.items():
            if not isinstance(target, Task):
                logger.warning(
                    "%s is not a task (defined with @task): each of its runs fails "
                    "(SuspiciousOperation) and it is never called",
                    path,
                )
        worker = DjangoTaskWorker(
            tasks=keys_for(tasks, queues),
            url=url,
            token=options["token"] or taskqueue_settings.AUTH_TOKEN,
            limit=options["limit"],
            client_id=options["client_id"],
            tasks_only=True,
        )
        code = serve(worker)
        if code:
            sys.exit(code)

"""``python -m taskqueue_app.worker --url URL [--token T] [--limit N] dotted.path ...``.

Each path names a function (served under ``module.qualname``) or a Tasks-framework ``Task``
(served under its ``module_path``); ``KEY=dotted.path`` serves a function under another key.
No Django project is needed for plain functions; with ``DJANGO_SETTINGS_MODULE`` set, Django is
set up first and ``Task`` objects get their context and signals.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
from typing import Any

from .client import TaskWorker, WorkerAuthError, task_key_of

__all__ = ["import_target", "build_tasks", "make_worker", "main", "serve"]

EXIT_AUTH = 2
EXIT_FORCED = 1


def import_target(path: str) -> Any:
    """The object a dotted path (``pkg.module.func`` or ``pkg.module:func``) names."""
    module_name, _, attribute = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"{path!r} is not a dotted path to a function (module.function)")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        # ``pkg.module.Class.method``: walk back while the missing module is the one we asked
        # for (an ImportError raised inside an existing module is reported as it is).
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == module_name
        if not missing or "." not in module_name or ":" in path:
            raise ValueError(f"cannot import {module_name!r} for {path!r}: {exc}") from exc
        parent, _, first = module_name.rpartition(".")
        target = import_target(f"{parent}.{first}")
    for name in attribute.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise ValueError(f"{path!r}: {target!r} has no attribute {name!r}") from None
    return target


def _is_framework_task(target: Any) -> bool:
    return hasattr(target, "module_path") and hasattr(target, "get_backend")


def build_tasks(paths: list[str]) -> dict[str, Any]:
    """Task key -> target for each path; ``KEY=path`` chooses the key."""
    tasks: dict[str, Any] = {}
    for spec in paths:
        key, _, path = spec.rpartition("=")
        target = import_target(path)
        if not callable(target) and not _is_framework_task(target):
            raise ValueError(f"{path!r} names {type(target).__name__}, not a function or Task")
        tasks[key or task_key_of(target)] = target
    return tasks


def make_worker(tasks: dict[str, Any], **options: Any) -> TaskWorker:
    """A ``DjangoTaskWorker`` when any target is a Tasks-framework Task, else a ``TaskWorker``."""
    if any(_is_framework_task(target) for target in tasks.values()):
        from .django_worker import DjangoTaskWorker

        return DjangoTaskWorker(tasks=tasks, **options)
    return TaskWorker(tasks=tasks, **options)


def serve(worker: TaskWorker) -> int:
    """Run ``worker`` until it stops; the process exit code."""
    try:
        worker.run_forever()
    except WorkerAuthError:
        return EXIT_AUTH
    if worker.forced:
        busy = [t for t in threading.enumerate() if t.name.startswith("taskworker")]
        if busy:
            # Sync tasks cannot be interrupted; the server has them back already (their
            # connection closed), so leave without waiting for the threads.
            logging.shutdown()
            os._exit(EXIT_FORCED)
        return EXIT_FORCED
    return 0


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | None = None) -> None:
    """One line per event on stderr, with a timestamp, each printed once.

    A handler is added (on the root logger) only where none would print the worker's lines yet:
    a Django project's ``LOGGING`` may have put one on the root or on ``taskqueue_app``, and a
    second handler on the way would print every line twice. ``level`` (INFO when not given) is
    the app's loggers' level; without one, a level the project's ``LOGGING`` set is kept.
    """
    number = getattr(logging, (level or "INFO").upper(), logging.INFO)
    app = logging.getLogger("taskqueue_app")
    if level is not None or app.level == logging.NOTSET:
        app.setLevel(number)
    if not logging.getLogger("taskqueue_app.worker.client").hasHandlers():
        logging.basicConfig(level=number, format=LOG_FORMAT, stream=sys.stderr)


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m taskqueue_app.worker``."""
    cli = argparse.ArgumentParser(
        prog="python -m taskqueue_app.worker",
        description="Run task runs delivered by a taskqueue server.",
    )
    cli.add_argument(
        "--url",
        default=os.environ.get("TASKQUEUE_SERVER_URL"),
        help="the server's API base, e.g. http://127.0.0.1:8000/api "
        "(default: $TASKQUEUE_SERVER_URL)",
    )
    cli.add_argument(
        "--token",
        default=os.environ.get("TASKQUEUE_AUTH_TOKEN") or None,
        help="the server's AUTH_TOKEN (default: $TASKQUEUE_AUTH_TOKEN)",
    )
    cli.add_argument("--limit", type=int, default=10, help="runs at once (default 10)")
    cli.add_argument("--client-id", help="this worker's name (default: host-pid-random)")
    cli.add_argument(
        "--log-level", help="DEBUG, INFO, WARNING... (default INFO, or the project's LOGGING)"
    )
    cli.add_argument("paths", nargs="+", metavar="dotted.path", help="functions or Tasks to serve")
    return cli


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    cli = parser()
    args = cli.parse_args(argv)
    if not args.url:
        cli.error("--url is required (or set TASKQUEUE_SERVER_URL)")
    if args.limit < 1:
        cli.error("--limit must be at least 1")
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        import django

        django.setup()  # its LOGGING first: our handler only where it leaves none
    configure_logging(args.log_level)
    try:
        tasks = build_tasks(args.paths)
        worker = make_worker(
            tasks, url=args.url, token=args.token, limit=args.limit, client_id=args.client_id
        )
    except ValueError as exc:
        cli.error(str(exc))
    return serve(worker)

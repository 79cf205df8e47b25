"""``manage.py taskqueue_stats``: per-key queue numbers and workers of a running server."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from taskqueue_app.conf import taskqueue_settings

CLEAR_SCREEN = "\033[2J\033[H"
BAR_WIDTH = 10


def fetch_json(url: str, token: str | None, body: Any = None, timeout: float = 10.0) -> Any:
    """GET ``url`` (or POST ``body`` as JSON) and decode the answer; ``CommandError`` if not."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = _error_detail(exc)
        if exc.code == 401:
            raise CommandError(
                f"{url} asks for a token (401{detail}): pass --token or set TASKQUEUE['AUTH_TOKEN']"
            ) from None
        if exc.code == 403:
            raise CommandError(f"{url} refused the token (403{detail})") from None
        raise CommandError(f"{url} answered {exc.code}{detail}") from None
    except urllib.error.URLError as exc:
        raise CommandError(f"cannot reach the task queue server at {url}: {exc.reason}") from None
    except (TimeoutError, ConnectionError) as exc:
        raise CommandError(f"cannot reach the task queue server at {url}: {exc}") from None
    except ValueError:
        raise CommandError(f"{url} did not answer JSON: is --url the API base?") from None


def _error_detail(exc: urllib.error.HTTPError) -> str:
    # The API answers {"error": "..."}; show it when there is one.
    try:
        message = json.loads(exc.read()).get("error")
    except (ValueError, AttributeError, OSError):
        return ""
    return f": {message}" if message else ""


def _bar(size: int, limit: int) -> str:
    filled = min(BAR_WIDTH, round(BAR_WIDTH * size / limit)) if limit > 0 else BAR_WIDTH
    if size > 0:
        filled = max(filled, 1)  # a lane with runs in it never looks empty
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(cell).rjust(width) if i in right else str(cell).ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), line(["-" * width for width in widths]), *map(line, rows)]


def render(queues: list[dict[str, Any]], workers: list[dict[str, Any]], url: str) -> str:
    """The text table: one row per key with fill bars, totals, then the connected workers."""
    rows = [
        [
            q["task_key"],
            f"{q['scheduled_size']}/{q['scheduled_limit']}",
            _bar(q["scheduled_size"], q["scheduled_limit"]),
            f"{q['retry_size']}/{q['retry_limit']}",
            _bar(q["retry_size"], q["retry_limit"]),
            "configured" if q["configured"] else "default",
            str(q["workers"]),
        ]
        for q in queues
    ]
    rows.append(
        [
            f"TOTAL ({len(queues)} keys)",
            f"{sum(q['scheduled_size'] for q in queues)}/"
            f"{sum(q['scheduled_limit'] for q in queues)}",
            "",
            f"{sum(q['retry_size'] for q in queues)}/{sum(q['retry_limit'] for q in queues)}",
            "",
            "",
            str(len(workers)),
        ]
    )
    headers = ["KEY", "SCHEDULED", "", "RETRY", "", "BOUNDS", "WORKERS"]
    out = [f"Task queues at {url}", "", *_table(headers, rows, right={1, 3, 6}), ""]
    if workers:
        worker_rows = [
            [w["identifier"], ", ".join(w["task_keys"]), w.get("last_activity") or w["timestamp"]]
            for w in workers
        ]
        out += _table(["WORKER", "KEYS", "LAST ACTIVITY"], worker_rows, right=set())
    else:
        out.append("No worker is connected.")
    return "\n".join(out) + "\n"


class Command(BaseCommand):
    """Print per-key queue depth against limits, and the connected workers, once or every N s."""

    help = (
        "Show each task key's scheduled and retry queue sizes against their limits, and the "
        "connected workers, read from a running server's API."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            help="API base of the server, e.g. http://127.0.0.1:8000/api "
            "(default: TASKQUEUE['SERVER_URL'])",
        )
        parser.add_argument(
            "--token", help="bearer token (default: TASKQUEUE['AUTH_TOKEN'])", default=None
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="refresh every SECONDS until interrupted (default: print once)",
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="print a JSON document {task_queues, task_workers} (one per line with --interval)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        url = (options["url"] or taskqueue_settings.SERVER_URL or "").rstrip("/")
        if not url:
            raise CommandError("no server to ask: pass --url or set TASKQUEUE['SERVER_URL']")
        if not url.startswith(("http://", "https://")):
            raise CommandError(f"--url must be an http:// or https:// URL, not {url!r}")
        interval = options["interval"]
        if interval is not None and interval <= 0:
            raise CommandError(f"--interval must be a positive number of seconds, not {interval}")
        token = options["token"] if options["token"] is not None else taskqueue_settings.AUTH_TOKEN
        # Clearing the screen only makes sense on a terminal; piped output gets plain frames.
        clear = interval is not None and not options["json"] and self._isatty()
        try:
            while True:
                try:
                    self._show(url, token, options["json"], clear)
                except CommandError as exc:
                    if interval is None:
                        raise
                    # Refreshing: a server restart is no reason to stop watching.
                    self.stderr.write(f"{exc} (retrying in {interval:g} s)")
                if interval is None:
                    return
                time.sleep(interval)  # the refresh period itself, not synchronisation
        except KeyboardInterrupt:
            return

    def _show(self, url: str, token: str | None, as_json: bool, clear: bool) -> None:
        queues = fetch_json(f"{url}/task_queues/", token)
        workers = fetch_json(
            f"{url}/task_workers/filter", token, {"task_worker_filter": {"task_keys": []}}
        )
        if as_json:
            document = {"task_queues": queues, "task_workers": workers}
            self.stdout.write(json.dumps(document, sort_keys=True))
        else:
            self.stdout.write((CLEAR_SCREEN if clear else "") + render(queues, workers, url))
        self.stdout.flush()

    def _isatty(self) -> bool:
        stream = getattr(self.stdout, "_out", sys.stdout)
        return bool(getattr(stream, "isatty", lambda: False)())

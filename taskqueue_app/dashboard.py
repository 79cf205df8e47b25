"""The admin dashboard's data: per-key queue numbers and workers, read safely from the server loop,
and this process's counters of runs enqueued and finished (the page's chart differences them).

The queue engine lives in the ASGI server's event loop and is not thread-safe, while admin views
are sync views that Daphne runs in a worker thread. So ``read_state()`` hops into that loop
(``server.call``) to take its copy, and only plain lists and dicts cross back. Sorting,
filtering, pagination and totals then work on that copy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.core.paginator import Paginator

from . import metrics, server
from .schemas import isoformat, now
from .workers import queue_rows, workers

PER_PAGE = 100
# How long a view waits for the server loop to answer before giving up with a 503.
LOOP_TIMEOUT = 5.0
SORTS = {
    "key": lambda row: row["task_key"],
    "scheduled": lambda row: row["scheduled_size"],
    "retry": lambda row: row["retry_size"],
    "fill": lambda row: row["fill"],
    "deferred": lambda row: row["deferred"],
    "backlog": lambda row: row["backlog"],
    "waiting": lambda row: row["waiting"],
    "running": lambda row: row["running"],
    "workers": lambda row: row["workers"],
}
SORT_CHOICES = tuple(name for sort in SORTS for name in (sort, f"-{sort}"))
# Which process's counters a poll read: the chart starts its differences again when the page's
# polls land on another server process (each counts only its own runs) or a restarted one.
PROCESS = uuid.uuid4().hex[:12]


class QueryError(ValueError):
    """A dashboard query parameter that cannot be used; ``str()`` names it."""


class LoopUnavailable(RuntimeError):
    """The server loop did not hand over the queue state in time."""


def _fill(size: int, limit: int) -> float:
    return round(size / limit, 4) if limit > 0 else 0.0


def _percent(fill: float) -> int:
    # Bars are capped at 100%: a release may overfill a retry lane beyond its bound.
    return min(100, round(fill * 100))


async def collect() -> dict[str, list[dict[str, Any]]]:
    """Copy the queue and worker state, with fill ratios; in the loop that owns the engine."""
    queues = []
    for row in await queue_rows():
        row["scheduled_fill"] = _fill(row["scheduled_size"], row["scheduled_limit"])
        row["retry_fill"] = _fill(row["retry_size"], row["retry_limit"])
        row["fill"] = max(row["scheduled_fill"], row["retry_fill"])
        # Held runs are either running or waiting in a worker's hands (sent or acked, not
        # started yet): a busy worker shows the second grow.
        row["waiting"] = max(0, row["held"] - row["running"])
        # Runs ready to go and nobody to take them: the first thing an operator must see.
        queued = row["scheduled_size"] + row["retry_size"] + row["backlog"]
        row["unserved"] = queued > 0 and row["workers"] == 0
        queues.append(row)
    return {"queues": queues, "workers": await workers()}


def read_state(timeout: float = LOOP_TIMEOUT) -> dict[str, list[dict[str, Any]]]:
    """The queues (the engine's snapshot rows plus fill ratios) and the workers.

    From sync code of any thread but the loop's own: the copy is taken in the server's loop.
    """
    try:
        return server.call(collect, timeout=timeout)
    except server.LoopTimeout:
        raise LoopUnavailable(f"the task queue's event loop did not answer in {timeout}s") from None


@dataclass(frozen=True)
class Query:
    """What the dashboard shows: a key filter, a sort order and a page number."""

    q: str = ""
    o: str = "key"
    page: int = 1

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Query:
        """Parse ``q``, ``o`` and ``p`` from a request's GET parameters; raises ``QueryError``."""
        q = (params.get("q") or "").strip()
        o = params.get("o") or "key"
        if o not in SORT_CHOICES:
            raise QueryError(f"o must be one of {', '.join(SORT_CHOICES)}, not {o!r}")
        raw_page = params.get("p") or "1"
        try:
            page = int(raw_page)
        except ValueError:
            raise QueryError(f"p must be a page number, not {raw_page!r}") from None
        if page < 1:
            raise QueryError(f"p must be 1 or more, not {page}")
        return cls(q=q, o=o, page=page)

    def params(self, **changes: Any) -> str:
        """This query as a URL query string, with ``changes`` (``q``, ``o``, ``p``) applied."""
        values = {"q": self.q, "o": self.o, "p": self.page, **changes}
        # Leave out defaults so that links stay short: /dashboard/?o=-fill rather than ?q=&o=..&p=1
        defaults = {"q": "", "o": "key", "p": 1}
        encoded = urlencode({k: v for k, v in values.items() if v != defaults[k]})
        return f"?{encoded}" if encoded else ""


# Column headers: (label, sort name or None, the direction a first click sorts in, what it
# counts, shown as the header's title).
COLUMNS = (
    ("Task key", "key", "", ""),
    ("Scheduled", "scheduled", "-", "Runs waiting in the scheduled queue, of its bound"),
    ("Retry", "retry", "-", "Runs waiting in the retry queue (served first), of its bound"),
    ("Fill", "fill", "-", "The fuller of the two queues"),
    ("Deferred", "deferred", "-", "Runs held back until their start time"),
    ("Backlog", "backlog", "-", "Accepted runs waiting for room in a full queue"),
    ("In a worker", "waiting", "-", "Runs sent to a worker that has not started them yet"),
    ("Running", "running", "-", "Runs a worker is running now"),
    ("Workers", "workers", "-", "Worker connections subscribed to the key"),
    ("Bounds", None, "", "Queue bounds set for this key, or the defaults"),
)


def headers(query: Query) -> list[dict[str, Any]]:
    """The table's column headers for ``query``: labels, titles, sort links and which is sorted."""
    result = []
    current = query.o.lstrip("-")
    for label, sort, first, title in COLUMNS:
        header: dict[str, Any] = {"label": label, "sort": sort, "url": None, "sorted": ""}
        header["title"] = title
        if sort is not None:
            if sort == current:
                header["sorted"] = "descending" if query.o.startswith("-") else "ascending"
                flipped = sort if query.o.startswith("-") else f"-{sort}"
                header["url"] = query.params(o=flipped, p=1)
            else:
                header["url"] = query.params(o=f"{first}{sort}", p=1)
        result.append(header)
    return result


def page_links(query: Query, page: dict[str, int]) -> dict[str, str | None]:
    """The query strings of the previous and the next page of keys, where there is one."""
    number = page["number"]
    return {
        "previous_url": query.params(p=number - 1) if number > 1 else None,
        "next_url": query.params(p=number + 1) if number < page["num_pages"] else None,
    }


# The per-key counts the totals add up, over every key (not only the page's).
TOTALLED = (
    "scheduled_size",
    "scheduled_limit",
    "retry_size",
    "retry_limit",
    "deferred",
    "backlog",
    "held",
    "waiting",
    "running",
    "unserved",
)


def _totals(queues: list[dict[str, Any]], workers: list[dict[str, Any]]) -> dict[str, int]:
    totals = {"keys": len(queues)}
    for name in TOTALLED:
        totals[name] = sum(int(row[name]) for row in queues)
    totals["workers"] = len(workers)
    totals["connections"] = sum(worker["connections"] for worker in workers)
    return totals


def _worker_row(worker: dict[str, Any]) -> dict[str, Any]:
    row = dict(worker)
    row["held_count"] = len(worker["held"])
    return row


def decorate(row: dict[str, Any]) -> dict[str, Any]:
    """A queue row with the percentages its bars are drawn with (template and script alike)."""
    return {
        **row,
        # Where a narrow column may break the key: after its dots only.
        "key_parts": row["task_key"].split("."),
        "scheduled_pct": _percent(row["scheduled_fill"]),
        "retry_pct": _percent(row["retry_fill"]),
        "fill_pct": round(row["fill"] * 100),
    }


def counters() -> dict[str, Any]:
    """This process's runs enqueued and finished so far, when read, and which process read them:
    the page's chart takes the difference of two polls over their time apart."""
    return {"time": time.time(), "process": PROCESS, **metrics.site_totals()}


def build(query: Query, state: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The dashboard document for ``query``: one page of keys, totals over all keys, workers,
    and the counters of the chart."""
    state = read_state() if state is None else state
    queues, workers = state["queues"], state["workers"]
    needle = query.q.lower()
    matching = [row for row in queues if needle in row["task_key"].lower()]
    sort_name = query.o.lstrip("-")
    descending = query.o.startswith("-")
    # Ties broken by key (always ascending) so that rows do not jump between refreshes.
    matching.sort(key=lambda row: row["task_key"])
    if sort_name != "key" or descending:
        matching.sort(key=SORTS[sort_name], reverse=descending)
    paginator = Paginator(matching, PER_PAGE, allow_empty_first_page=True)
    page = paginator.get_page(query.page)
    if needle:
        workers = [
            w
            for w in workers
            if needle in w["identifier"].lower() or any(needle in k.lower() for k in w["task_keys"])
        ]
    return {
        "generated": isoformat(now()),
        "query": {"q": query.q, "o": query.o, "p": page.number},
        "page": {
            "number": page.number,
            "num_pages": paginator.num_pages,
            "per_page": PER_PAGE,
            "count": paginator.count,
        },
        "totals": _totals(queues, state["workers"]),
        "queues": [decorate(row) for row in page.object_list],
        "workers": [_worker_row(worker) for worker in workers],
        "counters": counters(),
    }

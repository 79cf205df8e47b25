"""The admin dashboard's data: per-key queue numbers and workers, read safely from the server loop.

The queue engine lives in the ASGI server's event loop and is not thread-safe, while admin views
are sync views that Daphne runs in a worker thread. So ``read_state()`` hops into that loop
(``server.call``) to take its copy, and only plain lists and dicts cross back. Sorting,
filtering, pagination and totals then work on that copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.core.paginator import Paginator

from . import server
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
    "workers": lambda row: row["workers"],
}
SORT_CHOICES = tuple(name for sort in SORTS for name in (sort, f"-{sort}"))


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


def _totals(queues: list[dict[str, Any]], workers: list[dict[str, Any]]) -> dict[str, int]:
    totals = {"keys": len(queues)}
    for name in ("scheduled_size", "scheduled_limit", "retry_size", "retry_limit", "held"):
        totals[name] = sum(row[name] for row in queues)
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
        "scheduled_pct": _percent(row["scheduled_fill"]),
        "retry_pct": _percent(row["retry_fill"]),
        "fill_pct": round(row["fill"] * 100),
    }


def build(query: Query, state: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The dashboard document for ``query``: one page of keys, totals over all keys, workers."""
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
    }

"""URLs of our server in the end-to-end benchmark: the bench's, plus an in-server producer.

``POST /bench/e2e/enqueue?count=K`` enqueues K no-op runs with ``await task.aenqueue()`` inside
the server, as a Django view that starts background work does; the benchmark calls it to drive
that path from its own process (HTTP only carries the trigger, K runs per request).
"""

from __future__ import annotations

import asyncio
import json
import time

from django.http import HttpRequest, HttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from bench.peers.ours import noop
from bench.urls import urlpatterns as bench_urlpatterns
from taskqueue_app.backend import QueueTask

task = QueueTask(func=noop)


@csrf_exempt
async def enqueue(request: HttpRequest) -> HttpResponse:
    """Enqueue ``count`` runs concurrently (one group commit); answers their ids."""
    count = int(request.GET.get("count", "1"))
    results = await asyncio.gather(*(task.aenqueue(time.time()) for _ in range(count)))
    return HttpResponse(
        json.dumps([result.id for result in results]), content_type="application/json"
    )


urlpatterns = [*bench_urlpatterns, path("bench/e2e/enqueue", enqueue)]

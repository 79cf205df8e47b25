"""The worker side: ``TaskWorker`` and what runs it, with or without a Django project.

Nothing here imports the server side (lifecycle, records, consumers, views, models, engines): a
worker on a GPU box needs no database and pulls none in. ``python -m taskqueue_app.worker``
runs one from the command line (``worker/__main__.py``); ``manage.py taskworker`` inside a
project (``worker/django_worker.py``); ``worker/http.py`` is the HTTP producer that other
processes enqueue through.
"""

from __future__ import annotations

from .calls import WorkerAuthError, subscription_url, task_key_of, unwrap_task
from .client import TaskWorker

__all__ = ["TaskWorker", "WorkerAuthError", "subscription_url", "task_key_of", "unwrap_task"]

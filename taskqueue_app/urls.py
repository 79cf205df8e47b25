"""HTTP API of taskqueue_app; the project mounts it at ``api/``."""

from django.urls import path, re_path

from . import views

app_name = "taskqueue_app"

urlpatterns = [
    path("task_runs/", views.task_runs, name="task_runs"),
    path("task_runs/batch", views.task_runs_batch, name="task_runs_batch"),
    # <str:...> rather than <uuid:...>: a malformed id gets a 400 that says so, not a bare 404.
    path("task_runs/<str:run_id>", views.task_run_detail, name="task_run_detail"),
    path("task_runs/<str:run_id>/retry", views.task_run_retry, name="task_run_retry"),
    path("task_runs/<str:run_id>/cancel", views.task_run_cancel, name="task_run_cancel"),
    path("task_queues/", views.task_queues, name="task_queues"),
    path("task_workers/filter", views.task_workers_filter, name="task_workers_filter"),
    path("metrics", views.metrics_view, name="metrics"),
    # Last: every other path under the API answers JSON, a near miss (a trailing slash) too.
    re_path(r"^(?P<path>.*)$", views.not_found),
]

"""The read-only admin: the live queue dashboard and the list of run records."""

from __future__ import annotations

import json
from functools import wraps
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotAllowed,
    JsonResponse,
)
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from . import dashboard
from .auth import SESSION_METHODS
from .models import QueueDashboard, TaskRunRecord


def _safe_only(view):
    """Refuse anything but GET and HEAD with 405: every admin page of this app only reads."""

    @wraps(view)
    def wrapper(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in SESSION_METHODS:
            return HttpResponseNotAllowed(sorted(SESSION_METHODS))
        return view(self, request, *args, **kwargs)

    return wrapper


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete, no actions, no POST: a view permission is all there is."""

    actions = None

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @_safe_only
    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The list page, GET only."""
        return super().changelist_view(request, extra_context)

    @_safe_only
    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """The (read-only) detail page, GET only."""
        return super().changeform_view(request, *args, **kwargs)

    @_safe_only
    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Refused: with no delete permission Django answers 403, and POST gets 405 here."""
        return super().delete_view(request, *args, **kwargs)

    @_safe_only
    def history_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """The history page, GET only."""
        return super().history_view(request, *args, **kwargs)


# -- the dashboard ------------------------------------------------------------------------------

# Column headers: (label, sort name or None, the direction a first click sorts in).
COLUMNS = (
    ("Task key", "key", ""),
    ("Scheduled", "scheduled", "-"),
    ("Retry", "retry", "-"),
    ("Fill", "fill", "-"),
    ("Bounds", None, ""),
    ("Workers", "workers", "-"),
    ("Held", None, ""),
)


@admin.register(QueueDashboard)
class QueueDashboardAdmin(ReadOnlyAdmin):
    """The dashboard page (django-rq's pattern): an unmanaged model whose list is the dashboard."""

    def get_urls(self) -> list:
        # Only the dashboard and its JSON twin: the model has no table, so no add/change/delete.
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name=f"{prefix}_changelist"),
            path("data.json", wrap(self.data_view), name=f"{prefix}_data"),
        ]

    def _check(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied

    def _headers(self, query: dashboard.Query) -> list[dict[str, Any]]:
        headers = []
        current = query.o.lstrip("-")
        for label, sort, first in COLUMNS:
            header: dict[str, Any] = {"label": label, "sort": sort, "url": None, "sorted": ""}
            if sort is not None:
                if sort == current:
                    header["sorted"] = "descending" if query.o.startswith("-") else "ascending"
                    flipped = sort if query.o.startswith("-") else f"-{sort}"
                    header["url"] = query.params(o=flipped, p=1)
                else:
                    header["url"] = query.params(o=f"{first}{sort}", p=1)
            headers.append(header)
        return headers

    @_safe_only
    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The dashboard page: one row per key, totals, workers; refreshed by its script."""
        self._check(request)
        try:
            query = dashboard.Query.from_params(request.GET)
        except dashboard.QueryError as exc:
            return HttpResponseBadRequest(str(exc), content_type="text/plain")
        try:
            data = dashboard.build(query)
        except dashboard.LoopUnavailable as exc:
            return HttpResponse(str(exc), status=503, content_type="text/plain")
        page = data["page"]
        context = {
            **self.admin_site.each_context(request),
            "title": "Queue dashboard",
            "subtitle": None,
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "has_view_permission": True,
            "data": data,
            "query": query,
            "headers": self._headers(query),
            "data_url": reverse(f"{self.admin_site.name}:taskqueue_app_queuedashboard_data")
            + query.params(),
            "previous_url": query.params(p=page["number"] - 1) if page["number"] > 1 else None,
            "next_url": (
                query.params(p=page["number"] + 1) if page["number"] < page["num_pages"] else None
            ),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/taskqueue_app/dashboard.html", context)

    @_safe_only
    def data_view(self, request: HttpRequest) -> HttpResponse:
        """The same numbers as JSON, polled by the page every second."""
        self._check(request)
        try:
            query = dashboard.Query.from_params(request.GET)
        except dashboard.QueryError as exc:
            return JsonResponse({"error": str(exc)}, status=400)
        try:
            return JsonResponse(dashboard.build(query))
        except dashboard.LoopUnavailable as exc:
            return JsonResponse({"error": str(exc)}, status=503)


# -- run records --------------------------------------------------------------------------------


class TaskKeyFilter(admin.SimpleListFilter):
    """Filter by key, offering the distinct keys (one indexed query), never loading the rows."""

    title = "task key"
    parameter_name = "task_key"
    # Beyond this many keys the sidebar would be a wall of links: search by key instead.
    LIMIT = 100

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple]:
        # Served by the (task_key, dynamic_key) unique index: a scan of the index, not the table.
        keys = list(
            TaskRunRecord.objects.order_by("task_key")
            .values_list("task_key", flat=True)
            .distinct()[: self.LIMIT]
        )
        selected = self.value()
        if selected and selected not in keys:
            keys.append(selected)
        return [(key, key) for key in keys]

    def queryset(self, request: HttpRequest, queryset):
        value = self.value()
        return queryset.filter(task_key=value) if value else queryset


class RunChangeList(ChangeList):
    """The run list without the JSON columns, which can be large and are not shown there."""

    def get_queryset(self, request: HttpRequest, *args: Any, **kwargs: Any):
        queryset = super().get_queryset(request, *args, **kwargs)
        return queryset.defer("parameters", "result", "error", "attempts")


def _pretty(value: Any) -> str:
    return format_html(
        '<pre class="tq-json">{}</pre>', json.dumps(value, indent=2, sort_keys=True, default=str)
    )


def _attempt_error(error: Any) -> str:
    if not isinstance(error, dict):
        return "-"
    summary = f"{error.get('type') or 'Error'}: {error.get('message') or ''}".rstrip(": ")
    if not error.get("traceback"):
        return summary
    return format_html(
        '{}<details><summary>traceback</summary><pre class="tq-traceback">{}</pre></details>',
        summary,
        error["traceback"],
    )


@admin.register(TaskRunRecord)
class TaskRunRecordAdmin(ReadOnlyAdmin):
    """The run history: newest first, filter by state and key, search by id, name and key."""

    list_display = (
        "short_id",
        "name",
        "task_key",
        "state_type",
        "state_name",
        "run_count",
        "retries",
        "worker",
        "created",
        "finished",
    )
    list_display_links = ("short_id",)
    list_filter = ("state_type", TaskKeyFilter)
    search_fields = ("id", "name", "task_key")
    ordering = ("-created",)
    list_per_page = 100
    # The unfiltered count would be a second COUNT(*) over every record on each page.
    show_full_result_count = False
    fieldsets = (
        ("Run", {"fields": ("id", "name", "task_key", "dynamic_key", "worker")}),
        (
            "State",
            {
                "fields": (
                    "state_type",
                    "state_name",
                    "state_timestamp",
                    "run_count",
                    "retries",
                    "retry_delay_seconds",
                )
            },
        ),
        (
            "Timestamps",
            {"fields": ("created", "updated", "expected_start_time", "started", "finished")},
        ),
        ("Tasks framework", {"fields": ("queue_name", "backend", "priority", "run_after")}),
        ("Attempts", {"fields": ("attempts_table",)}),
        ("Data", {"fields": ("parameters_json", "result_json", "error_summary", "traceback")}),
    )
    readonly_fields = (
        "parameters_json",
        "result_json",
        "error_summary",
        "traceback",
        "attempts_table",
    )

    class Media:
        css = {"all": ("taskqueue_app/dashboard.css",)}

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return RunChangeList

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: TaskRunRecord) -> str:
        """The first block of the UUID: enough to tell runs apart in a list."""
        return str(obj.id).split("-")[0]

    @admin.display(description="parameters")
    def parameters_json(self, obj: TaskRunRecord) -> str:
        """Parameters as indented JSON."""
        return _pretty(obj.parameters)

    @admin.display(description="result")
    def result_json(self, obj: TaskRunRecord) -> str:
        """Result as indented JSON."""
        return _pretty(obj.result)

    @admin.display(description="error")
    def error_summary(self, obj: TaskRunRecord) -> str:
        """``Type: message`` of the error, if the run failed."""
        error = obj.error
        if not error:
            return "-"
        if not isinstance(error, dict):
            return str(error)
        return f"{error.get('type') or 'Error'}: {error.get('message') or ''}".rstrip(": ")

    @admin.display(description="attempts")
    def attempts_table(self, obj: TaskRunRecord) -> str:
        """One row per attempt: its worker, when it started and finished, the error that ended
        it (with its traceback, folded)."""
        attempts = obj.attempts if isinstance(obj.attempts, list) else []
        if not attempts:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    number,
                    entry.get("worker") or "-",
                    entry.get("started") or "-",
                    entry.get("finished") or "-",
                    _attempt_error(entry.get("error")),
                )
                for number, entry in enumerate(attempts, 1)
                if isinstance(entry, dict)
            ),
        )
        return format_html(
            '<table class="tq-attempts"><thead><tr><th>#</th><th>worker</th><th>started</th>'
            "<th>finished</th><th>error</th></tr></thead><tbody>{}</tbody></table>",
            rows,
        )

    @admin.display(description="traceback")
    def traceback(self, obj: TaskRunRecord) -> str:
        """The error traceback, verbatim."""
        error = obj.error if isinstance(obj.error, dict) else {}
        text = error.get("traceback")
        if not text:
            return "-"
        return format_html('<pre class="tq-traceback">{}</pre>', text)

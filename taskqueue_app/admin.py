"""The admin: the live queue dashboard and the run records, read-only but for the run history's
operator actions (``admin_actions``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import display_for_value
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from . import dashboard
from .admin_actions import OperatorActions, ReadOnlyAdmin, safe_only
from .models import QueueDashboard, StateType, TaskRunRecord

# Characters of a worker's id shown in the run list (the whole id is its title).
WORKER_CHARS = 16


# -- the dashboard ------------------------------------------------------------------------------


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

    @safe_only
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
        context = {
            **self.admin_site.each_context(request),
            "title": "Queue dashboard",
            "subtitle": None,
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "has_view_permission": True,
            "data": data,
            "query": query,
            "headers": dashboard.headers(query),
            "data_url": reverse(f"{self.admin_site.name}:taskqueue_app_queuedashboard_data")
            + query.params(),
            **dashboard.page_links(query, data["page"]),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/taskqueue_app/dashboard.html", context)

    @safe_only
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


def _summary(error: dict) -> str:
    """``Type: message`` of a recorded error."""
    return f"{error.get('type') or 'Error'}: {error.get('message') or ''}".rstrip(": ")


def _attempt_error(error: Any) -> str:
    if not isinstance(error, dict):
        return "-"
    summary = _summary(error)
    if not error.get("traceback"):
        return summary
    return format_html(
        '{}<details><summary>traceback</summary><pre class="tq-traceback">{}</pre></details>',
        summary,
        error["traceback"],
    )


def _when(value: datetime | None) -> str:
    """A time in the list: the clock alone today, the day and the minute before; in full (as
    the run's page writes it) in its title."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    short = formats.date_format(
        local, "H:i:s" if local.date() == timezone.localdate() else "M j, H:i"
    )
    full = display_for_value(value, "-")
    return format_html('<time datetime="{}" title="{}">{}</time>', value.isoformat(), full, short)


@admin.register(TaskRunRecord)
class TaskRunRecordAdmin(OperatorActions, ReadOnlyAdmin):
    """The run history: newest first, filter by state and key, search by id, name and key; the
    operator actions for staff with the permission."""

    # Narrow columns, so that the list fits beside the admin's sidebars on a 1400 px screen (the
    # name, by default the key's last part, is on the run's page and found by the search).
    list_display = (
        "short_id",
        "key",
        "state",
        "runs",
        "worker_id",
        "created_at",
        "finished_at",
    )
    list_display_links = ("short_id",)
    list_filter = ("state_type", TaskKeyFilter)
    search_fields = ("id", "name", "task_key")
    ordering = ("-created",)
    list_per_page = 100
    # The unfiltered count would be a second COUNT(*) over every record on each page.
    show_full_result_count = False
    change_form_template = "admin/taskqueue_app/run_change_form.html"
    fieldsets = (
        ("Run", {"fields": ("id", "name", "task_key", "dynamic_key", "worker")}),
        (
            "State",
            {"fields": ("state", "state_timestamp", "run_count", "retries", "retry_delay_seconds")},
        ),
        (
            "Timestamps",
            {"fields": ("created", "updated", "expected_start", "started", "finished")},
        ),
        ("Tasks framework", {"fields": ("queue_name", "backend", "priority", "run_after")}),
        ("Attempts", {"fields": ("attempts_table",)}),
        ("Data", {"fields": ("parameters_json", "result_json", "error_summary", "traceback")}),
    )
    readonly_fields = (
        "state",
        "expected_start",
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

    @admin.display(description="task key", ordering="task_key")
    def key(self, obj: TaskRunRecord) -> str:
        """The task key, which a narrow column may break after its dots only."""
        dot = mark_safe(".<wbr>")  # a constant: the parts between are escaped
        return format_html_join(dot, "{}", ((part,) for part in obj.task_key.split(".")))

    @admin.display(description="state", ordering="state_type")
    def state(self, obj: TaskRunRecord) -> str:
        """The state once: its type ("Running"), and its name only where that says more
        ("Running (Cancelling)", "Scheduled (AwaitingRetry)")."""
        try:
            label = StateType(obj.state_type).label
        except ValueError:
            label = obj.state_type
        css = f"tq-state tq-state-{str(obj.state_type).lower()}"
        if not obj.state_name or obj.state_name.lower() == label.lower():
            return format_html('<span class="{}">{}</span>', css, label)
        return format_html(
            '<span class="{}">{} <span class="tq-state-name">({})</span></span>',
            css,
            label,
            obj.state_name,
        )

    @admin.display(description="worker", ordering="worker")
    def worker_id(self, obj: TaskRunRecord) -> str:
        """The worker's client id, cut short (whole in its title): an id of host, pid and a
        random part would otherwise make the column wider than the rest of the row."""
        worker = obj.worker
        if not worker:
            return "-"
        short = worker
        if len(worker) > WORKER_CHARS:
            # Cut the middle: the default id ends in the pid and a random part that tell two
            # workers on one host apart.
            head = (WORKER_CHARS - 1) // 2
            short = f"{worker[:head]}…{worker[head + 1 - WORKER_CHARS :]}"
        return format_html('<span class="tq-worker" title="{}">{}</span>', worker, short)

    @admin.display(description="runs", ordering="run_count")
    def runs(self, obj: TaskRunRecord) -> str:
        """Deliveries that reached a worker; the retries allowed in its title."""
        return format_html('<span title="{} retries allowed">{}</span>', obj.retries, obj.run_count)

    @admin.display(description="created", ordering="created")
    def created_at(self, obj: TaskRunRecord) -> str:
        """When the run was created, short."""
        return _when(obj.created)

    @admin.display(description="finished", ordering="finished")
    def finished_at(self, obj: TaskRunRecord) -> str:
        """When the run finished, short."""
        return _when(obj.finished)

    @admin.display(description="expected start time")
    def expected_start(self, obj: TaskRunRecord) -> str:
        """When the run is due, as the API says it: its creation unless deferred (written as
        the admin writes the other times: a computed field's value is otherwise ``str()``)."""
        return display_for_value(obj.expected_start_time or obj.created, "-")

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
        return _summary(error) if isinstance(error, dict) else str(error)

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

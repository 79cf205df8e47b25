"""What the app's admin pages may change: nothing (``ReadOnlyAdmin``, GET only), but for the run
history's operator actions (``OperatorActions``): retry, cancel and give back runs, on a
selection in the list or with a button on a run's page, for staff with the permission
``taskqueue_app.operate_taskrunrecord``.

The actions are coroutines of ``actions`` that must run where the queues live; admin views are
sync views in a worker thread, so each run is handed to the server's loop with ``server.call``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.text import capfirst

from . import actions, server
from .auth import SESSION_METHODS
from .errors import AlreadyFinished, QueueFull
from .schemas import TaskRun
from .states import CANCELLING, FINISHED_STATES, StateType

__all__ = [
    "MAX_SELECTED",
    "OPERATIONS",
    "Operation",
    "OperatorActions",
    "Outcome",
    "ReadOnlyAdmin",
    "perform",
    "safe_only",
]

# A bulk action runs one loop call per run inside the request: past this many, ask for a
# narrower selection rather than hold the request (and the operator) for minutes.
MAX_SELECTED = 1000
# Refusals listed one by one; beyond this, a count (a page of warnings helps nobody).
MAX_LISTED = 10
# What the actions raise when they refuse a run; ``str()`` of each says why.
REFUSALS = (actions.NotFinishedError, actions.NotStrandedError, AlreadyFinished, QueueFull)


# -- read-only -----------------------------------------------------------------------------------


def safe_only(view):
    """Refuse anything but GET and HEAD with 405: every admin page of this app only reads."""

    @wraps(view)
    def wrapper(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in SESSION_METHODS:
            return HttpResponseNotAllowed(sorted(SESSION_METHODS))
        return view(self, request, *args, **kwargs)

    return wrapper


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete, no actions, no POST: a view permission is all there is (a
    subclass may take the POSTs of its own actions: ``accepts_post``)."""

    actions = None

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def accepts_post(self, request: HttpRequest) -> bool:
        """Whether a POST to the list is one this admin takes: none here (see the run history's
        operator actions)."""
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        """The list page, GET only but for the POSTs ``accepts_post`` lets through."""
        if request.method not in SESSION_METHODS and not self.accepts_post(request):
            return HttpResponseNotAllowed(sorted(SESSION_METHODS))
        return super().changelist_view(request, extra_context)

    @safe_only
    def changeform_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """The (read-only) detail page, GET only."""
        return super().changeform_view(request, *args, **kwargs)

    @safe_only
    def delete_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """Refused: with no delete permission Django answers 403, and POST gets 405 here."""
        return super().delete_view(request, *args, **kwargs)

    @safe_only
    def history_view(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        """The history page, GET only."""
        return super().history_view(request, *args, **kwargs)


# -- the run history's operator actions -----------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One operator action: its coroutine, its words, and the states whose runs offer it."""

    name: str
    label: str
    done: str
    function: Callable[[uuid.UUID], Awaitable[TaskRun | None]]
    offered: frozenset[str]
    help: str


OPERATIONS = {
    op.name: op
    for op in (
        Operation(
            "retry",
            "Retry",
            "retried",
            actions.retry,
            frozenset(FINISHED_STATES),
            "Put this finished run into its key's retry queue now.",
        ),
        Operation(
            "cancel",
            "Cancel",
            "cancelled",
            actions.cancel,
            frozenset({StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING}),
            "Take it out of its queue, or tell the worker running it to stop.",
        ),
        Operation(
            "give_back",
            "Give back",
            "given back",
            actions.give_back,
            frozenset({StateType.PENDING, StateType.RUNNING}),
            "Its worker is gone: crash it (retried if it may be) or requeue it if it never "
            "started, without waiting for the orphan timeout.",
        ),
    )
}


@dataclass
class Outcome:
    """What one operation did to each run it was given."""

    done: list[TaskRun] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def states(self) -> str:
        """The states the done runs are in now, e.g. ``Cancelled: 2, Running (Cancelling): 1``."""
        counts = Counter(_state_label(run) for run in self.done)
        return ", ".join(f"{label}: {count}" for label, count in sorted(counts.items()))


def _state_label(run: TaskRun) -> str:
    label = StateType(run.state_type).label
    return label if run.state_name.lower() == label.lower() else f"{label} ({run.state_name})"


def _reason(run_id: uuid.UUID, exc: BaseException) -> str:
    # Most refusals name the run already ("run <id> is FAILED: ..."); a full queue does not.
    text = str(exc)
    return text if str(run_id) in text else f"run {run_id}: {text}"


def perform(operation: Operation, run_ids: Iterable[uuid.UUID]) -> Outcome:
    """Apply ``operation`` to each run, one loop call each, from sync code (an admin view)."""
    outcome = Outcome()
    for run_id in run_ids:
        try:
            run = server.call(operation.function, run_id)
        except REFUSALS as exc:
            outcome.refused.append(_reason(run_id, exc))
        except server.LoopTimeout as exc:
            # It may still happen: say so rather than claim either way.
            outcome.refused.append(f"run {run_id}: no answer in time ({exc}); reload to see")
        else:
            if run is None:
                outcome.refused.append(f"run {run_id} no longer exists")
            else:
                outcome.done.append(run)
    return outcome


def report(model_admin: admin.ModelAdmin, request: HttpRequest, op: Operation, out: Outcome):
    """One success message with the count (and the states the runs are in now), one warning per
    refused run with the reason its action gave."""
    if out.done:
        count = len(out.done)
        noun = "run" if count == 1 else "runs"
        text = f"{capfirst(op.done)} {count} {noun} (now {out.states()})."
        if any(run.state_name == CANCELLING for run in out.done):
            text += " A running run stays Cancelling until its worker confirms."
        model_admin.message_user(request, text, messages.SUCCESS)
    for reason in out.refused[:MAX_LISTED]:
        model_admin.message_user(request, f"Not {op.done}: {reason}", messages.WARNING)
    if len(out.refused) > MAX_LISTED:
        more = len(out.refused) - MAX_LISTED
        model_admin.message_user(request, f"{more} more runs not {op.done}.", messages.WARNING)


def _bulk(name: str) -> Callable:
    op = OPERATIONS[name]

    @admin.action(permissions=["operate"], description=f"{op.label} selected task runs")
    def action(model_admin: OperatorActions, request: HttpRequest, queryset) -> None:
        model_admin.operate(request, op, queryset)

    action.__name__ = f"{name}_runs"
    return action


class OperatorActions:
    """A ModelAdmin mixin for the run records: the bulk actions, the buttons' URL and view, and
    the permission both need. POSTs reach only these; the admin stays read-only otherwise."""

    actions = [_bulk(name) for name in OPERATIONS]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Staff with ``operate_taskrunrecord`` (or superusers) may retry, cancel, give back."""
        codename = get_permission_codename("operate", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def accepts_post(self, request: HttpRequest) -> bool:
        """A POST to the list is taken only if it is one of these bulk actions (Django's action
        form), and then refused with 403 without the permission."""
        names = {f"{name}_runs" for name in OPERATIONS}
        if request.method != "POST" or request.POST.get("action") not in names:
            return False
        self.check_operator(request)
        return True

    def check_operator(self, request: HttpRequest) -> None:
        """403 unless the user may both see the runs and operate on them."""
        if not (self.has_view_permission(request) and self.has_operate_permission(request)):
            raise PermissionDenied

    def operate(self, request: HttpRequest, op: Operation, queryset) -> None:
        """Apply ``op`` to the selected records (at most ``MAX_SELECTED``)."""
        self.check_operator(request)
        records = list(queryset.only("id", "name", "state_name")[: MAX_SELECTED + 1])
        if len(records) > MAX_SELECTED:
            text = f"Select at most {MAX_SELECTED} runs at a time: nothing was {op.done}."
            self.message_user(request, text, messages.ERROR)
            return
        self.apply(request, op, [record.pk for record in records], records)

    def apply(self, request: HttpRequest, op: Operation, run_ids: list, records: list) -> None:
        """Apply ``op`` to ``run_ids``, log the changes to ``records``, report the results."""
        outcome = perform(op, run_ids)
        self._log(request, op, outcome, {record.pk: record for record in records})
        report(self, request, op, outcome)

    def _log(self, request: HttpRequest, op: Operation, outcome: Outcome, records: dict) -> None:
        # The run's admin history says who retried, cancelled or gave it back, and when.
        for run in outcome.done:
            record = records.get(run.id)
            if record is not None:
                self.log_change(request, record, f"{capfirst(op.done)} by an operator.")

    def get_urls(self) -> list:
        # Before the defaults: their "<path:object_id>/" catch-all would take these first.
        name = f"{self.opts.app_label}_{self.opts.model_name}_operate"
        view = self.admin_site.admin_view(self.operate_view)
        urls = [path("<uuid:object_id>/operate/<slug:operation>/", view, name=name)]
        return urls + super().get_urls()

    def operate_view(
        self, request: HttpRequest, object_id: uuid.UUID, operation: str
    ) -> HttpResponse:
        """A button of the run's page: POST only, then back to the run's page."""
        op = OPERATIONS.get(operation)
        if op is None:
            raise Http404(f"no operator action {operation!r}")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        self.check_operator(request)
        # The id, not the record: the action itself says when there is no such run.
        records = list(
            self.model._default_manager.filter(pk=object_id).only("id", "name", "state_name")
        )
        self.apply(request, op, [object_id], records)
        prefix = f"admin:{self.opts.app_label}_{self.opts.model_name}"
        if not records:
            return redirect(reverse(f"{prefix}_changelist", current_app=self.admin_site.name))
        return redirect(
            reverse(f"{prefix}_change", args=[object_id], current_app=self.admin_site.name)
        )

    def buttons(self, request: HttpRequest, obj: Any) -> list[dict[str, str]]:
        """The operations a run's page offers for ``obj`` (its state's), if the user may."""
        if obj is None or not self.has_operate_permission(request):
            return []
        name = f"admin:{self.opts.app_label}_{self.opts.model_name}_operate"
        return [
            {
                "name": op.name,
                "label": op.label,
                "help": op.help,
                "url": reverse(name, args=[obj.pk, op.name], current_app=self.admin_site.name),
            }
            for op in OPERATIONS.values()
            if obj.state_type in op.offered
        ]

    def render_change_form(
        self, request: HttpRequest, context: dict, add=False, change=False, form_url="", obj=None
    ) -> HttpResponse:
        """The run's page, with its operator buttons."""
        context["operations"] = self.buttons(request, obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

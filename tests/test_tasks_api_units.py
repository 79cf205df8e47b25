"""The Tasks API without a live server: what the backend refuses (every ``supports_*`` flag's
error and our own), the error classes the app records, attempts through the lifecycle, the
task as enqueued, ``get_result``'s ways to a run, the worker command's queues, the admin's
attempts, and pickling (Django 6.1) in a process that has Twisted's copyreg hook."""

from __future__ import annotations

import copyreg
import pickle
import types
import uuid
from datetime import datetime, timedelta

import django
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.test import override_settings
from django.utils import timezone

from project.tasks import add
from taskqueue_app import backend as backend_module
from taskqueue_app import lifecycle, orphans
from taskqueue_app.attempts import DETAILED, MAX_TRACEBACK, ended
from taskqueue_app.backend import EnqueueError, TaskQueueBackend
from taskqueue_app.errors import (
    Crashed,
    NotJSONSerializable,
    Orphaned,
    ResultTooLarge,
    UnknownTaskKey,
    UnstorableResult,
    error_type,
)
from taskqueue_app.inputs import run_from_request
from taskqueue_app.management.commands.taskworker import keys_for, select_queues
from taskqueue_app.models import TaskRunRecord
from taskqueue_app.results import queue_key, task_path_of
from taskqueue_app.schemas import TaskRun, ValidationError
from taskqueue_app.tasks_compat import (
    InvalidTaskError,
    TaskError,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task,
    task_backends,
)
from taskqueue_app.testing import claim
from taskqueue_app.worker.calls import OutcomeError
from tests import tasks as t

BACKEND = "taskqueue_app.backend.TaskQueueBackend"
QUEUES = {"default": {"BACKEND": BACKEND, "QUEUES": ["default", "queue-1"]}}


class NoFeatures(TaskQueueBackend):
    """Our backend with every optional feature off: the framework's refusals of each flag."""

    supports_defer = supports_async_task = supports_priority = supports_get_result = False


def test_the_backend_declares_every_feature_and_keeps_its_options():
    with override_settings(TASKS={"default": {"BACKEND": BACKEND, "OPTIONS": {"retries": 2}}}):
        backend = task_backends["default"]
        assert (backend.alias, backend.options, backend.queues) == (
            "default",
            {"retries": 2},
            {"default"},
        )
        flags = (
            "supports_defer",
            "supports_async_task",
            "supports_get_result",
            "supports_priority",
        )
        assert all(getattr(backend, flag) is True for flag in flags)


def test_every_supports_flag_refuses_what_it_does_not_support():
    no_features = {"default": {"BACKEND": "tests.test_tasks_api_units.NoFeatures"}}
    with override_settings(TASKS=no_features):
        with pytest.raises(InvalidTaskError, match="Backend does not support run_after."):
            add.using(run_after=timezone.now())
        with pytest.raises(InvalidTaskError, match="(?i)Backend does not support async tasks."):
            task()(t.noop_task_async.func)
        with pytest.raises(InvalidTaskError, match="does not support setting priority of tasks."):
            add.using(priority=1)
        with pytest.raises(NotImplementedError, match="does not support retrieving"):
            # NoFeatures inherits our get_result; the framework's own answer is this one.
            super(TaskQueueBackend, task_backends["default"]).get_result("x")


def test_what_the_backend_refuses_with_every_feature_on(monkeypatch):
    with override_settings(TASKS=QUEUES):
        with pytest.raises(InvalidTaskError, match="run_after must be an aware datetime."):
            add.using(run_after=datetime.now())  # noqa: DTZ005
        for priority in (-101, 101, 3.1):
            with pytest.raises(InvalidTaskError, match="priority must be a whole number between"):
                add.using(priority=priority)
        for priority in (-100, 0, 100):
            assert add.using(priority=priority).priority == priority
        with pytest.raises(InvalidTaskError, match="Queue 'queue-2' is not valid for backend."):
            add.using(queue_name="queue-2")
        with pytest.raises(InvalidTaskError, match="must be defined at a module level."):
            task()(lambda: None)
        with pytest.raises(InvalidTaskError, match="first argument of 'context'"):
            task(takes_context=True)(t.calculate_meaning_of_life.func)
        # Django 6.1 says so in words; the backport's decorator passes run_after twice.
        with pytest.raises(TypeError, match="run_after"):
            task(run_after=timezone.now())(t.calculate_meaning_of_life.func)
        with pytest.raises(TypeError, match="Unsupported type"):
            add.enqueue(datetime.now(), 1)  # noqa: DTZ005
    names = ["q" * 101, "", "queue-1"]
    with override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": names}}):
        for name in names[:2]:
            with pytest.raises(InvalidTaskError, match="queue_name must be a non-empty string"):
                add.using(queue_name=name)
        with monkeypatch.context() as patch:
            patch.setattr(backend_module, "TASK_KEY_MAX", 20)  # a long path, in effect
            with pytest.raises(InvalidTaskError, match="'project.tasks.add@queue-1' is over 20"):
                add.using(queue_name="queue-1")
    # Validation is bypassed when the backend's QUEUES is empty: any name makes a key.
    with override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": []}}):
        assert add.using(queue_name="anything").queue_name == "anything"


# -- the failures the app decides, as importable classes --------------------------------------


@pytest.mark.parametrize(
    "kind",
    [Crashed, Orphaned, NotJSONSerializable, ResultTooLarge, UnknownTaskKey, UnstorableResult],
)
def test_our_own_failures_are_importable_exception_classes(kind):
    error = TaskError(exception_class_path=error_type(kind), traceback="")
    assert error.exception_class is kind


def test_every_error_type_the_app_records_names_its_class():
    assert lifecycle.CRASH_ERROR["type"] == "taskqueue_app.errors.Crashed"
    assert orphans.ORPHAN_ERROR["type"] == error_type(Orphaned)
    assert lifecycle.UNSTORABLE_RESULT == "taskqueue_app.errors.UnstorableResult"
    assert OutcomeError(UnknownTaskKey, "m").error["type"] == "taskqueue_app.errors.UnknownTaskKey"
    assert issubclass(NotJSONSerializable, TypeError)  # as Django's backends report it


# -- attempts ------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_a_crashed_attempt_and_its_retry_each_keep_their_worker_and_error(serving):
    with override_settings(TASKS={"default": {"BACKEND": BACKEND, "OPTIONS": {"retries": 1}}}):
        backend = task_backends["default"]
        run, _ = await lifecycle.create(backend.create_request(add, [1, 2], {}))
        await claim(add.module_path, "c1")
        first = await lifecycle.start("c1", run.id, "w1")
        await lifecycle.disconnect("c1")  # the worker vanished: CRASHED, retried
        await claim(add.module_path, "c2")
        second = await lifecycle.start("c2", run.id, "w2")
        await lifecycle.complete("c2", run.id, 3, "w2")
        result = backend.result_of(await lifecycle.get(run.id))
    assert (result.status, result.return_value, result.worker_ids) == (
        "SUCCESSFUL",
        3,
        ["w1", "w2"],
    )
    (error,) = result.errors
    assert error.exception_class is Crashed
    assert error.traceback == (
        "taskqueue_app.errors.Crashed: the worker's connection closed while the run was running\n"
    )
    assert (result.started_at, result.last_attempted_at) == (first.started, second.started)
    assert result.finished_at >= result.last_attempted_at
    record = await TaskRunRecord.objects.aget(pk=run.id)
    assert [entry["worker"] for entry in record.attempts] == ["w1", "w2"]


def test_attempts_stay_bounded_whatever_the_retry_policy():
    run = TaskRun(task_key="k", dynamic_key="d", name="n")
    error = {"type": "builtins.ValueError", "message": "m", "traceback": "x" * (MAX_TRACEBACK * 2)}
    for number in range(DETAILED + 5):
        run.attempts = ended(
            TaskRun(
                **{**run.record_fields(), "attempts": [*run.attempts, {"worker": f"w{number}"}]}
            ),
            timezone.now(),
            error,
        )
    kept = [entry["error"]["traceback"] for entry in run.attempts]
    assert len(kept) == DETAILED + 5
    assert kept[:5] == [None] * 5  # the oldest lose their traceback
    assert all(len(text) <= MAX_TRACEBACK + 4 and text.endswith("x") for text in kept[5:])


def test_a_late_outcome_replaces_the_servers_guess_only_from_the_same_worker():
    run = TaskRun(task_key="k", dynamic_key="d", name="n")
    crashed = {"type": error_type(Crashed), "message": "", "traceback": None}
    run.attempts = [{"worker": "w1", "started": "x", "finished": "y", "error": crashed}]
    assert ended(run, timezone.now(), None, "w2") == run.attempts
    assert ended(run, timezone.now(), None, "w1")[0]["error"] is None


# -- runs carry the task as enqueued ---------------------------------------------------------


def test_runs_carry_queue_backend_and_run_after_and_validate_them():
    due = timezone.now() + timedelta(minutes=5)
    run = run_from_request(
        {"task_key": "a.b@q", "queue_name": "q", "backend": "other", "run_after": due.isoformat()}
    )
    assert (run.queue_name, run.backend, run.run_after) == ("q", "other", due)
    assert run.expected_start_time == due  # run_after alone defers the run
    assert task_path_of(run) == "a.b" and queue_key("a.b", "q") == "a.b@q"
    assert queue_key("a.b", "default") == "a.b"
    again = TaskRun.from_dict(run.to_dict())
    assert (again.queue_name, again.backend, again.run_after) == ("q", "other", due)
    back = TaskRun.from_record(TaskRunRecord(**run.record_fields()))
    assert back.to_dict() == run.to_dict()
    for field, value in (("queue_name", ""), ("backend", 3), ("run_after", "soon")):
        with pytest.raises(ValidationError, match=field):
            run_from_request({"task_key": "k", field: value})


# -- get_result: the records, else the server over HTTP --------------------------------------


@pytest.mark.django_db
def test_get_result_asks_the_server_for_a_run_its_records_do_not_have(monkeypatch):
    run = TaskRun(task_key=add.module_path, dynamic_key="d", name="add", parameters={})
    asked = []

    def get_run(url, token, timeout):
        asked.append(url)
        return run.to_dict()

    monkeypatch.setattr(backend_module, "get_run", get_run)
    with override_settings(TASKQUEUE={"SERVER_URL": "http://server:1/api/"}):
        assert add.get_result(str(run.id)).status == TaskResultStatus.READY
        assert asked == [f"http://server:1/api/task_runs/{run.id}"]

        def no_table(run_id):
            raise OperationalError("no such table: taskqueue_app_taskrunrecord")

        monkeypatch.setattr(backend_module.records, "read", no_table)
        assert add.get_result(str(run.id)).id == str(run.id)  # a database without the tables
    with override_settings(TASKQUEUE={"SERVER_URL": None}):
        with pytest.raises(OperationalError):
            add.get_result(str(run.id))  # no server to ask: the database's error stands


@pytest.mark.django_db
def test_get_result_says_why_when_the_server_cannot_be_asked(monkeypatch):
    def unreachable(url, token, timeout):
        raise EnqueueError("cannot reach the task server at x: refused")

    def refused(url, token, timeout):
        raise EnqueueError("the task server answered HTTP 403", 403)

    with override_settings(TASKQUEUE={"SERVER_URL": "http://server:1/api"}):
        monkeypatch.setattr(backend_module, "get_run", unreachable)
        with pytest.raises(TaskResultDoesNotExist, match="server could not be asked: cannot"):
            add.get_result(str(uuid.uuid4()))
        monkeypatch.setattr(backend_module, "get_run", refused)
        with pytest.raises(EnqueueError, match="HTTP 403"):
            add.get_result(str(uuid.uuid4()))


# -- manage.py taskworker: queues --------------------------------------------------------------


def test_taskworker_serves_the_queues_of_the_backends_or_those_named():
    two = {**QUEUES, "other": {"BACKEND": BACKEND, "QUEUES": ["queue-1", "queue-2"]}}
    with override_settings(TASKS=two):
        assert select_queues(None) == ["default", "queue-1", "queue-2"]
        assert select_queues(["queue-2", "queue-2", "default"]) == ["queue-2", "default"]
        with pytest.raises(CommandError, match=r"'nope'.* in its QUEUES"):
            select_queues(["nope"])
        with pytest.raises(CommandError, match="'nope'"):
            call_command("taskworker", "--queue", "nope", url="http://127.0.0.1:1/api")
    with override_settings(TASKS={"default": {"BACKEND": BACKEND, "QUEUES": []}}):
        assert select_queues(["anything"]) == ["anything"]
    keys = keys_for({"a.f": 1, "a.g": 2}, ["default", "q"])
    assert list(keys) == ["a.f", "a.g", "a.f@q", "a.g@q"]  # its first queue's runs first


# -- the admin's run page ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_run_page_shows_each_attempt_with_its_error(admin_client):
    error = {"type": "builtins.ValueError", "message": "bad <x>", "traceback": "Trace <here>"}
    run = TaskRun(task_key="k@q", dynamic_key="d", name="n", queue_name="q", backend="other")
    run.attempts = [
        {"worker": "w1", "started": "2026-01-01T00:00:00Z", "finished": "f1", "error": error},
        {"worker": "w2", "started": "2026-01-01T00:00:05Z", "finished": None, "error": None},
    ]
    TaskRunRecord.objects.create(**run.record_fields())
    html = admin_client.get(f"/admin/taskqueue_app/taskrunrecord/{run.id}/change/").content.decode()
    assert "<td>1</td><td>w1</td><td>2026-01-01T00:00:00Z</td><td>f1</td>" in html
    assert "builtins.ValueError: bad &lt;x&gt;<details>" in html
    assert '<pre class="tq-traceback">Trace &lt;here&gt;</pre>' in html
    assert "<td>2</td><td>w2</td>" in html
    assert ">other<" in html  # the backend alias, in the Tasks framework's fields


# -- pickling (new in Django 6.1) ----------------------------------------------------------------

needs_61 = pytest.mark.skipif(django.VERSION < (6, 1), reason="Task pickling is new in 6.1")


@needs_61
def test_tasks_and_results_pickle_in_a_process_with_twisted():
    import twisted.persisted.styles  # noqa: F401  (daphne in INSTALLED_APPS imported it already)

    assert copyreg.dispatch_table[types.MethodType].__module__ == "taskqueue_app.apps"
    with override_settings(TASKS=QUEUES):
        for original in (add, add.using(priority=5, queue_name="queue-1")):
            assert pickle.loads(pickle.dumps(original)) == original
        result = add.get_backend().result_of(
            TaskRun(task_key=add.module_path, dynamic_key="d", name="add", parameters={"args": []})
        )
        assert pickle.loads(pickle.dumps(result)) == result


def test_the_repair_leaves_other_methods_to_twisted():
    import twisted.persisted.styles as styles

    class Holder:
        def method(self) -> int:
            return 1

        @classmethod
        def make(cls) -> Holder:
            return cls()

    reduce = copyreg.dispatch_table[types.MethodType]
    assert reduce(Holder().method)[0] is styles.unpickleMethod  # an instance's: Twisted's
    assert reduce(Holder.make) == (getattr, (Holder, "make"))  # a class's: Python's own


def test_the_transport_option_is_the_producer_stream_by_default_or_http():
    assert TaskQueueBackend("default", {"OPTIONS": {}}).transport == "websocket"
    assert TaskQueueBackend("b", {"OPTIONS": {"transport": "http"}}).transport == "http"
    with pytest.raises(ImproperlyConfigured, match=r"\['OPTIONS'\]\['transport'\] must be one of"):
        TaskQueueBackend("b", {"OPTIONS": {"transport": "carrier-pigeon"}})

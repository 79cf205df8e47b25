"""System checks on ``TASKQUEUE``: each wrong value gives its id and a hint."""

import pytest
from django.core.checks import Error, Warning
from django.test import override_settings

from taskqueue_app.checks import check_settings


def ids(messages):
    return [m.id for m in messages]


def test_defaults_pass():
    with override_settings(TASKQUEUE={}, DEBUG=True):
        assert check_settings() == []


def test_good_full_configuration_passes():
    good = {
        "SCHEDULED_QUEUE_SIZE": 10,
        "RETRY_QUEUE_SIZE": 5,
        "KEYS": {"emails.send": {"scheduled_size": 50, "retry_size": None}},
        "AUTH_TOKEN": "t0ken",
        "MAX_MESSAGE_BYTES": 2048,
        "SERVER_URL": "https://example.com/api",
    }
    with override_settings(TASKQUEUE=good, DEBUG=False):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], "taskqueue_app.E001"),
        ({"SCHEDULE_SIZE": 1}, "taskqueue_app.E002"),
        ({"SCHEDULED_QUEUE_SIZE": -1}, "taskqueue_app.E003"),
        ({"SCHEDULED_QUEUE_SIZE": "10"}, "taskqueue_app.E003"),
        ({"SCHEDULED_QUEUE_SIZE": True}, "taskqueue_app.E003"),
        ({"RETRY_QUEUE_SIZE": 0}, "taskqueue_app.E004"),
        ({"MAX_MESSAGE_BYTES": 1.5}, "taskqueue_app.E005"),
        ({"KEYS": ["a"]}, "taskqueue_app.E006"),
        ({"KEYS": {"a": 5}}, "taskqueue_app.E006"),
        ({"KEYS": {"a": {"size": 5}}}, "taskqueue_app.E006"),
        ({"KEYS": {"a": {"retry_size": -2}}}, "taskqueue_app.E006"),
        ({"KEYS": {"": {"retry_size": 2}}}, "taskqueue_app.E006"),
        ({"AUTH_TOKEN": ""}, "taskqueue_app.E007"),
        ({"AUTH_TOKEN": 123}, "taskqueue_app.E007"),
        ({"SERVER_URL": "127.0.0.1:8000"}, "taskqueue_app.E008"),
        ({"SERVER_URL": "ftp://host/api"}, "taskqueue_app.E008"),
    ],
)
def test_wrong_values_are_errors_with_hints(value, expected):
    with override_settings(TASKQUEUE=value, DEBUG=True):
        messages = check_settings()
    assert ids(messages) == [expected]
    assert isinstance(messages[0], Error)
    assert messages[0].hint


def test_no_token_without_debug_is_a_warning():
    with override_settings(TASKQUEUE={}, DEBUG=False):
        messages = check_settings()
    assert ids(messages) == ["taskqueue_app.W001"]
    assert isinstance(messages[0], Warning)
    assert "AUTH_TOKEN" in messages[0].hint


def test_check_is_registered_with_django():
    from django.core import checks

    with override_settings(TASKQUEUE={"RETRY_QUEUE_SIZE": -5}):
        messages = checks.run_checks(tags=[checks.Tags.compatibility])
    assert "taskqueue_app.E004" in ids(messages)


@pytest.mark.parametrize(
    ("queues", "expected", "words"),
    [
        ("memory", "taskqueue_app.E009", "must be a dict with a 'BACKEND'"),
        ({"LOCATION": "redis://x"}, "taskqueue_app.E009", "must be a dict with a 'BACKEND'"),
        ({"BACKEND": "x.Y", "TIMEOUT": 3}, "taskqueue_app.E009", "unknown keys: 'TIMEOUT'"),
        ({"BACKEND": "taskqueue_app.queues.memory.MemoryQueues", "OPTIONS": []}, "E009", "dict"),
        ({"BACKEND": "nowhere.Queues"}, "taskqueue_app.E010", "cannot be imported"),
        ({"BACKEND": "taskqueue_app.task_queue.TaskQueue"}, "E010", "not a subclass"),
    ],
)
def test_a_wrong_queues_engine_is_an_error_with_a_hint(queues, expected, words):
    with override_settings(TASKQUEUE={"QUEUES": queues}, DEBUG=True):
        (message,) = check_settings()
    assert message.id.endswith(expected)
    assert words in message.msg
    assert "MemoryQueues" in message.hint


def test_the_memory_engine_named_explicitly_passes():
    engine = {"BACKEND": "taskqueue_app.queues.memory.MemoryQueues", "OPTIONS": {}}
    with override_settings(TASKQUEUE={"QUEUES": engine}, DEBUG=True):
        assert check_settings() == []

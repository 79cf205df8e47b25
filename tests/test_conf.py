"""The lazy ``TASKQUEUE`` accessor: defaults, overrides, cache dropped on change."""

import os
import subprocess
import sys

import pytest
from django.test import override_settings

from taskqueue_app.conf import DEFAULTS, taskqueue_settings


@override_settings(TASKQUEUE={})
def test_defaults():
    for name, value in DEFAULTS.items():
        assert getattr(taskqueue_settings, name) == value


def test_user_values_override_defaults_and_keep_the_rest():
    with override_settings(TASKQUEUE={"AUTH_TOKEN": "s3cret", "RETRY_QUEUE_SIZE": 7}):
        assert taskqueue_settings.AUTH_TOKEN == "s3cret"
        assert taskqueue_settings.RETRY_QUEUE_SIZE == 7
        assert taskqueue_settings.SCHEDULED_QUEUE_SIZE == 1000
    assert taskqueue_settings.AUTH_TOKEN is None


def test_values_are_cached_until_the_setting_changes():
    first = taskqueue_settings._values()
    assert taskqueue_settings._values() is first
    generation = taskqueue_settings.generation
    with override_settings(TASKQUEUE={"MAX_MESSAGE_BYTES": 10}):
        assert taskqueue_settings._values() is not first
        assert taskqueue_settings.generation > generation


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="NOPE"):
        taskqueue_settings.NOPE  # noqa: B018


def test_key_sizes():
    with override_settings(TASKQUEUE={"KEYS": {"a": {"scheduled_size": 5}}}):
        assert taskqueue_settings.key_sizes("a") == (5, None)
        assert taskqueue_settings.key_sizes("b") is None


def test_nothing_is_read_at_import():
    # Importing the app's modules without configured settings must not touch settings.
    code = (
        "import taskqueue_app.conf, taskqueue_app.task_queue, taskqueue_app.checks;"
        "from django.conf import settings; assert not settings.configured"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

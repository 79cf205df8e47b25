"""Durable run records, and the unmanaged model that anchors the admin dashboard."""

from __future__ import annotations

import uuid

from django.db import models

from .states import FINISHED_STATES, TERMINAL_STATES, StateType

__all__ = ["FINISHED_STATES", "TERMINAL_STATES", "QueueDashboard", "StateType", "TaskRunRecord"]


class TaskRunRecord(models.Model):
    """One task run as stored: written when created and at every state change."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    task_key = models.CharField(max_length=200)
    dynamic_key = models.CharField(max_length=255)
    name = models.CharField(max_length=255)
    parameters = models.JSONField(default=dict)
    state_type = models.CharField(
        max_length=16, choices=StateType.choices(), default=StateType.SCHEDULED
    )
    state_name = models.CharField(max_length=32, default="Scheduled")
    state_timestamp = models.DateTimeField()
    run_count = models.PositiveIntegerField(default=0)
    priority = models.SmallIntegerField(default=0)
    retries = models.PositiveIntegerField(default=0)
    retry_delay_seconds = models.FloatField(default=0)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True, default="")
    created = models.DateTimeField()
    updated = models.DateTimeField()
    started = models.DateTimeField(null=True, blank=True)
    finished = models.DateTimeField(null=True, blank=True)
    expected_start_time = models.DateTimeField(null=True, blank=True)
    # The Tasks framework's view of the run's task, and one entry per attempt (DESIGN §4).
    queue_name = models.CharField(max_length=100, default="default")
    backend = models.CharField(max_length=100, blank=True, default="")
    run_after = models.DateTimeField(null=True, blank=True)
    attempts = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = "task run"
        verbose_name_plural = "task runs"
        # The admin's operator actions (DESIGN §9): apart from viewing, so that seeing the history
        # does not let anyone requeue or stop runs.
        permissions = [("operate_taskrunrecord", "Can retry, cancel and give back task runs")]
        constraints = [
            models.UniqueConstraint(
                fields=["task_key", "dynamic_key"], name="taskqueue_unique_dynamic_key"
            ),
        ]
        indexes = [
            # Restore at start-up: the SCHEDULED runs of every key, oldest first.
            models.Index(fields=["state_type", "task_key", "created"], name="taskqueue_state_key"),
            # The admin's run list, newest first.
            models.Index(fields=["-created"], name="taskqueue_created"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state_name}) {self.id}"


class QueueDashboard(models.Model):
    """No table: gives the dashboard an entry on the admin index and a view permission."""

    class Meta:
        managed = False
        verbose_name = "queue dashboard"
        verbose_name_plural = "queue dashboard"
        default_permissions = ("view",)

    def __str__(self) -> str:
        return "queue dashboard"

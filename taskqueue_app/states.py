"""The states a task run goes through, readable by the server and the worker side alike.

No Django import: a worker on a machine without a database reads these names too. The model
builds its field choices from them.
"""

from __future__ import annotations

import enum

__all__ = ["CANCELLING", "FINISHED_STATES", "TERMINAL_STATES", "StateType"]


class StateType(enum.StrEnum):
    """Prefect's state types that a task run goes through here."""

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"

    @property
    def label(self) -> str:
        """The human name Prefect gives the state ("Scheduled")."""
        return self.value.capitalize()

    @classmethod
    def choices(cls) -> list[tuple[str, str]]:
        """``(value, label)`` pairs for a model field."""
        return [(state.value, state.label) for state in cls]


FINISHED_STATES = frozenset({StateType.FAILED, StateType.CRASHED, StateType.CANCELLED})
TERMINAL_STATES = FINISHED_STATES | {StateType.COMPLETED}

# The state name of a RUNNING run an operator asked to cancel, until its worker confirms: its
# JSON shows ``state_details.cancel_requested``, and a crash of it ends CANCELLED, not retried.
CANCELLING = "Cancelling"

"""Errors that both sides meet: the server's engines raise them, producers anywhere catch them.

No import: the worker side and out-of-process producers read these without the server's code.
"""

from __future__ import annotations

__all__ = ["EngineUnavailable", "Orphaned", "QueueFull"]


class QueueFull(Exception):
    """The lane has no room: nothing was taken in; the caller should try again later."""

    retry_after = 1


class EngineUnavailable(Exception):
    """The queue engine cannot serve from this process (another one serves the site, say): the
    server must not start; ``str()`` says why and what to do."""


class Orphaned(Exception):
    """What ended a run whose worker vanished and did not come back within ORPHAN_TIMEOUT."""

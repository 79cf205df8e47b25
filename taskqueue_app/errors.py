"""Errors that both sides meet: the server's engines raise them, producers anywhere catch them.

No import: the worker side and out-of-process producers read these without the server's code.
"""

from __future__ import annotations

__all__ = ["QueueFull"]


class QueueFull(Exception):
    """The lane has no room: nothing was taken in; the caller should try again later."""

    retry_after = 1

"""Token checks shared by the HTTP views and the WebSocket consumer."""

from __future__ import annotations

import hmac

from .conf import taskqueue_settings


def token_required() -> bool:
    """True when ``TASKQUEUE["AUTH_TOKEN"]`` is set: producers and workers must present it."""
    return bool(taskqueue_settings.AUTH_TOKEN)


def token_matches(candidate: object) -> bool:
    """Constant-time comparison of ``candidate`` with the configured token.

    With no token configured every candidate matches; a non-string never does when one is.
    """
    expected = taskqueue_settings.AUTH_TOKEN
    if not expected:
        return True
    if not isinstance(candidate, str):
        return False
    return hmac.compare_digest(candidate.encode(), expected.encode())

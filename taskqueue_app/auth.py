"""Token checks shared by the HTTP views and the WebSocket consumer."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import metrics
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


# -- HTTP -----------------------------------------------------------------------------------------

# Methods that only read: a logged-in staff user's session is accepted for them (the admin
# dashboard polls them); anything that changes state needs the token, so CSRF cannot apply.
SESSION_METHODS = frozenset({"GET", "HEAD"})


def bearer_token(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when there is none."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _auth_error(status: int, message: str) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


async def _staff_with(request: HttpRequest, permission: str | None) -> bool:
    """True for a logged-in, active staff user who has ``permission`` (when one is named)."""
    # Projects without the auth middleware have no ``auser``: then there is no session to accept.
    auser = getattr(request, "auser", None)
    if auser is None:
        return False
    user = await auser()
    if not (user.is_authenticated and user.is_active and user.is_staff):
        return False
    return permission is None or await user.ahas_perm(permission)


async def http_auth_error(
    request: HttpRequest, permission: str | None = None
) -> JsonResponse | None:
    """None if ``request`` may proceed, else the 401/403 JSON response to send.

    With ``AUTH_TOKEN`` set: a matching bearer token passes, a wrong one is 403 (even with a
    session), none at all is 401 unless a read request comes with the session of a staff user
    who has ``permission``.
    """
    if not token_required():
        return None
    token = bearer_token(request)
    if token is not None:
        if token_matches(token):
            return None
        return _auth_error(403, "invalid token")
    if request.method in SESSION_METHODS and await _staff_with(request, permission):
        return None
    if "Authorization" in request.headers:
        return _auth_error(401, "Authorization header must be 'Bearer <token>'")
    return _auth_error(401, "authentication required: send 'Authorization: Bearer <token>'")


def token_auth(
    view: Callable[..., Awaitable[HttpResponse]], permission: str | None = None
) -> Callable[..., Awaitable[Any]]:
    """Decorate an async view so that it runs only for requests ``http_auth_error`` lets pass.

    The view is also exempt from CSRF: its POSTs are authorised by the token alone, which a
    browser never sends on its own, and sessions are accepted only for reads.
    """

    @functools.wraps(view)
    async def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        error = await http_auth_error(request, permission)
        if error is not None:
            metrics.rejected("unauthorized")
            return error
        return await view(request, *args, **kwargs)

    return csrf_exempt(wrapped)

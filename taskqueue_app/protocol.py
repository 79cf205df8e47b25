"""The subscription protocol's wire vocabulary: close codes, their reasons, and message parsing.

Everything a worker can send is checked here; a message that breaks the protocol raises
``ProtocolError`` carrying the close code and the reason the consumer closes with (DESIGN §6).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from . import auth
from .schemas import TASK_KEY_MAX

SUBPROTOCOL = "prefect"

# Close codes.
CLOSE_NORMAL = 1000
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_PROTOCOL_VIOLATION = 4001

# Reasons of DESIGN §6.2 and §6.3, word for word: Prefect's client and our tests match them.
EXPECTED_AUTH = "Expected 'auth' message"
NO_TOKEN = "Auth required but no token provided"
INVALID_TOKEN = "Invalid token"
EXPECTED_SUBSCRIBE = "Protocol violation: expected 'subscribe' message"
EXPECTED_KEYS = "Protocol violation: expected 'keys' in subscribe message"
EXPECTED_CLIENT_ID = "Protocol violation: expected 'client_id' in subscribe message"
# Our own additions, in the same style.
BAD_KEYS = (
    "Protocol violation: 'keys' must be a list of task keys "
    f"(strings of 1 to {TASK_KEY_MAX} characters)"
)
BAD_CLIENT_ID = "Protocol violation: 'client_id' must be a string of 1 to 200 characters"
BAD_PREFETCH = "Protocol violation: prefetch must be an integer from 1 to 100"
BAD_REPORTS_OUTCOMES = "Protocol violation: reports_outcomes must be true or false"
BAD_LIMIT = "Protocol violation: limit must be an integer from 1 to 10000"
LIMIT_WITHOUT_OUTCOMES = "Protocol violation: limit needs reports_outcomes: true"
NOT_JSON = "Protocol violation: expected a JSON object"
LEGACY_REFUSED = "Auth required: offer the 'prefect' subprotocol and send an 'auth' message"
SERVICE_RESTART = "Server restarting: reconnect"
FOREIGN_ORIGIN = "Origin not allowed: workers send no Origin header"
HANDSHAKE_TIMEOUT = "Handshake timed out: expected 'auth' and 'subscribe' messages"

# Seconds a new connection has to authenticate and subscribe; after that no timer runs.
HANDSHAKE_SECONDS = 10.0

PREFETCH_MIN, PREFETCH_MAX = 1, 100
CLIENT_ID_MAX = 200
LIMIT_MAX = 10_000
# What a worker reports of a run; the server confirms each with ``recorded`` once durable.
OUTCOMES = frozenset({"started", "completed", "failed", "cancelled"})
AUTH_SUCCESS = json.dumps({"type": "auth_success"})


class ProtocolError(Exception):
    """A message that breaks the protocol: the connection closes with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def origin_allowed(scope: dict[str, Any]) -> bool:
    """True without an ``Origin`` header (a worker), or with one whose host is allowed.

    A browser always sends ``Origin``: with no token set, this keeps foreign web pages from
    subscribing. The same hosts as ``ALLOWED_HOSTS`` are allowed (the admin's own pages).
    """
    origin = next((value for name, value in scope.get("headers", ()) if name == b"origin"), None)
    if origin is None:
        return True
    host, _port = split_domain_port(urlsplit(origin.decode("latin-1")).netloc)
    allowed = settings.ALLOWED_HOSTS or (
        [".localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else []
    )
    return bool(host) and validate_host(host, allowed)


def violation(reason: str) -> ProtocolError:
    """A 4001 close with ``reason``."""
    return ProtocolError(CLOSE_PROTOCOL_VIOLATION, reason)


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a worker asked for in its ``subscribe`` message."""

    keys: tuple[str, ...]
    client_id: str
    prefetch: int = 1
    reports_outcomes: bool = False
    # The most runs the worker holds in any state (sent, acked, running); None: no such bound.
    limit: int | None = None


def decode(text_data: str | None, bytes_data: bytes | None, limit: int) -> dict[str, Any]:
    """The JSON object of one frame (text, or UTF-8 bytes); ``limit`` caps its size in bytes."""
    data: str | bytes = text_data if text_data is not None else (bytes_data or b"")
    # A str is at most 4 bytes per character: encode only when its length leaves a doubt.
    size = len(data) if isinstance(data, bytes) or len(data) * 4 <= limit else len(data.encode())
    if size > limit:
        raise ProtocolError(CLOSE_TOO_BIG, f"Message too big: {size} bytes, the limit is {limit}")
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise violation(NOT_JSON) from None
    if not isinstance(message, dict):
        raise violation(NOT_JSON)
    return message


def check_auth(message: dict[str, Any]) -> None:
    """Accept an ``auth`` message, or raise the 1008 close of DESIGN §6.2.

    With no token configured any token is accepted, including the ``null`` that Prefect's client
    sends when it has none.
    """
    if message.get("type") != "auth":
        raise ProtocolError(CLOSE_POLICY_VIOLATION, EXPECTED_AUTH)
    if not auth.token_required():
        return
    token = message.get("token")
    if not token:
        raise ProtocolError(CLOSE_POLICY_VIOLATION, NO_TOKEN)
    if not auth.token_matches(token):
        raise ProtocolError(CLOSE_POLICY_VIOLATION, INVALID_TOKEN)


def parse_subscribe(message: dict[str, Any]) -> Subscription:
    """The ``subscribe`` message's fields, or the 4001 close naming what is wrong."""
    if message.get("type") != "subscribe":
        raise violation(EXPECTED_SUBSCRIBE)
    keys = message.get("keys")
    if not keys:
        raise violation(EXPECTED_KEYS)
    if not isinstance(keys, list) or not all(
        isinstance(key, str) and 0 < len(key) <= TASK_KEY_MAX for key in keys
    ):
        raise violation(BAD_KEYS)
    client_id = message.get("client_id")
    if client_id is None or client_id == "":
        raise violation(EXPECTED_CLIENT_ID)
    if not isinstance(client_id, str) or len(client_id) > CLIENT_ID_MAX:
        raise violation(BAD_CLIENT_ID)
    prefetch = message.get("prefetch", 1)
    if (
        isinstance(prefetch, bool)
        or not isinstance(prefetch, int)
        or not PREFETCH_MIN <= prefetch <= PREFETCH_MAX
    ):
        raise violation(BAD_PREFETCH)
    reports_outcomes = message.get("reports_outcomes", False)
    if not isinstance(reports_outcomes, bool):
        raise violation(BAD_REPORTS_OUTCOMES)
    limit = message.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIMIT_MAX:
            raise violation(BAD_LIMIT)
        if not reports_outcomes:
            raise violation(LIMIT_WITHOUT_OUTCOMES)
    keys = tuple(dict.fromkeys(keys))
    return Subscription(keys, client_id, prefetch, reports_outcomes, limit)


def recorded(run_id: uuid.UUID, kind: str) -> str:
    """The server's confirmation that a worker's ``kind`` message about a run is durable."""
    return f'{{"type":"recorded","id":"{run_id}","of":"{kind}"}}'


def cancel(run_id: uuid.UUID) -> str:
    """The server's word that a worker must not run (or must stop running) a run."""
    return f'{{"type":"cancel","id":"{run_id}"}}'


def run_id_of(message: dict[str, Any], required: bool) -> uuid.UUID | None:
    """The run ``id`` a message names (None when absent and not ``required``), or a 4001 close."""
    value = message.get("id")
    if value is None:
        if required:
            raise violation(f"Protocol violation: '{message.get('type')}' message needs an 'id'")
        return None
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    except (TypeError, ValueError, AttributeError):
        raise violation(
            f"Protocol violation: 'id' must be a run id (a UUID string), not {value!r:.60}"
        ) from None


def error_of(message: dict[str, Any]) -> dict[str, Any]:
    """A ``failed`` message's error as ``{"type", "message", "traceback"}``, whatever was sent."""
    error = message.get("error")
    if isinstance(error, dict):
        return {
            "type": str(error.get("type") or "Error"),
            "message": str(error.get("message") or ""),
            "traceback": error.get("traceback"),
        }
    # A worker that sent a bare string (or nothing) still gets its failure recorded.
    return {"type": "Error", "message": "" if error is None else str(error), "traceback": None}


def unknown_type(message: dict[str, Any]) -> ProtocolError:
    """The 4001 close for a message type the subscribed phase does not know."""
    kind = message.get("type")
    if kind is None:
        return violation("Protocol violation: message has no 'type'")
    return violation(f"Protocol violation: unknown message type {kind!r:.60}")

"""Let a WebSocket close code and reason chosen by the application reach the client over Daphne.

Daphne 4.2 closes an open socket with autobahn's ``sendClose(code)``, which refuses every code
but 1000 and 3000-4999 (so 1008, 1009, 1011 and 1012 raise inside the application's ``send``
and the client sees 1011 instead) and never passes the ASGI close ``reason`` on
(django/daphne#374). ``install()`` makes Daphne's protocol send the close frame itself, with
any code a server may send (RFC 6455 §7.4) and the reason, trimmed to the frame's 123 bytes.
Without Daphne installed it does nothing.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# Codes an endpoint may put in a close frame (1004-1006 and 1015 are reserved; RFC 6455 §7.4).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
_REASON_MAX_BYTES = 123  # a control frame carries 125 bytes, two of them the code

_installed = False


def sendable(code: Any) -> bool:
    """True for a close code a server may send."""
    return isinstance(code, int) and (code in _SENDABLE or 3000 <= code <= 4999)


def reason_bytes(reason: Any) -> bytes | None:
    """The reason as UTF-8, cut at a character boundary to fit a close frame; None if empty."""
    if not reason or not isinstance(reason, str):
        return None
    data = reason.encode()[:_REASON_MAX_BYTES]
    return data.decode(errors="ignore").encode()


def install() -> bool:
    """Patch Daphne's WebSocket protocol once (idempotent); True when Daphne is present."""
    global _installed
    if _installed:
        return True
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:
        return False
    original = WebSocketProtocol.handle_reply

    def handle_reply(self: Any, message: dict) -> None:
        if (
            message.get("type") == "websocket.close"
            and self.state == self.STATE_OPEN
            and sendable(message.get("code", 1000))
        ):
            self.sendCloseFrame(
                code=message.get("code", 1000), reasonUtf8=reason_bytes(message.get("reason"))
            )
            return
        original(self, message)

    handle_reply.__wrapped__ = original  # type: ignore[attr-defined]
    WebSocketProtocol.handle_reply = handle_reply
    _installed = True
    return True

"""Client-side helpers for the end-to-end tests (not a test module): the
third-party ``websockets`` library (its synchronous client), wrapped by a
few helpers that wait on conditions with deadlines. For what a
well-behaved library will not do (never read, never answer a ping, send a
malformed frame), use ``rawws.RawWebSocket``.
"""

from __future__ import annotations

import inspect
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

__all__ = [
    "ConnectionClosed",
    "barrier",
    "open_ws",
    "produce",
    "recv_json",
    "recv_until",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# websockets >= 17 warns unless a directly returned connection is asked for.
_LEGACY: dict[str, Any] = (
    {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}
)


# --- the ``websockets`` library ----------------------------------------------


def open_ws(
    url: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **kwargs: Any,
) -> ClientConnection:
    """Connect with ``websockets``; ``token`` goes in an ``auth`` message."""
    ws = connect(
        url,
        additional_headers=headers,
        ssl=ssl_context,
        open_timeout=10,
        close_timeout=3,
        max_size=None,
        **_LEGACY,
        **kwargs,
    )
    if token is not None:
        ws.send(json.dumps({"type": "auth", "token": token}))
    return ws


def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next message, decoded; ``TimeoutError`` past ``timeout``."""
    raw = ws.recv(timeout=timeout)
    message: dict[str, Any] = json.loads(raw)
    return message


def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read until ``predicate`` holds; returns (that message, those before it)."""
    deadline = time.monotonic() + timeout
    before: list[dict[str, Any]] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching message within {timeout}s; got {before[-5:]}")
        message = recv_json(ws, timeout=remaining)
        if predicate(message):
            return message, before
        before.append(message)


def barrier(ws: ClientConnection, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Ping the server and return every message that arrived before the pong.

    The server handles one connection's messages in order and fans out
    synchronously, so everything queued for this client before the ping
    was read comes back in this list.
    """
    ws.send('{"type":"ping"}')
    _, before = recv_until(ws, lambda m: m.get("type") == "pong", timeout)
    return before


def produce(ws: ClientConnection, session: str, *messages: str, level: str = "info") -> None:
    """Publish ``log`` entries, then wait until the server has handled them."""
    for text in messages:
        ws.send(json.dumps({"type": "log", "sessionId": session, "level": level, "message": text}))
    errors = [m for m in barrier(ws) if m.get("type") == "error"]
    assert not errors, errors

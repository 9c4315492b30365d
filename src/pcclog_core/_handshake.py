"""The opening handshake and plain HTTP answers, as pure functions.

``check_upgrade`` is RFC 6455 §4.2.1's list of what a server must verify in
a client's opening handshake, plus pcclog's ``Origin`` allowlist (a refusal
is an HTTP answer before any upgrade: 403, SPEC §3); ``format_response``
writes an HTTP/1.1 response head for the ``Connection``, which always
closes after a plain request (no keep-alive: less state per connection).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from collections.abc import Sequence

__all__ = ["HEAD_END", "REASONS", "Refusal", "check_upgrade", "format_response", "header"]

REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

# The blank line that ends a request head, as h11 finds it: it accepts lines
# ending in a bare LF (RFC 9112 §2.2), so "\r\n\r\n" alone misses some.
HEAD_END = re.compile(rb"\n\r?\n")


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Refusal:
    """An upgrade refused: the HTTP status, the text, extra headers."""

    status: int
    text: str
    headers: tuple[tuple[str, str], ...] = ()


def header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The first value of ``name`` (lower case) in decoded, lower-cased headers."""
    for key, value in headers:
        if key == name:
            return value
    return None


def check_upgrade(
    method: str,
    headers: tuple[tuple[str, str], ...],
    allowed_origins: frozenset[str] | None,
) -> str | Refusal:
    """The ``Sec-WebSocket-Key`` of a valid upgrade request, or why not."""
    if method != "GET":
        return Refusal(status=405, text="a WebSocket upgrade must use GET")
    tokens = [t.strip().lower() for t in (header(headers, "connection") or "").split(",")]
    if "upgrade" not in tokens:
        return Refusal(status=400, text="missing 'Connection: Upgrade'")
    if header(headers, "sec-websocket-version") != "13":
        return Refusal(
            status=426,
            text="unsupported WebSocket version (only 13)",
            headers=(("Sec-WebSocket-Version", "13"),),
        )
    key = header(headers, "sec-websocket-key")
    try:
        valid = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid or key is None:
        return Refusal(status=400, text="missing or invalid Sec-WebSocket-Key")
    origin = header(headers, "origin")
    if allowed_origins is not None and origin is not None and origin not in allowed_origins:
        return Refusal(status=403, text="origin not allowed")
    return key


def format_response(
    status: int, headers: Sequence[tuple[str, str]], body: bytes, *, head_request: bool
) -> bytes:
    """An HTTP/1.1 response that closes the connection. A ``Content-Type``
    and ``Content-Length`` are added unless given; a response to ``HEAD``
    keeps the ``Content-Length`` of ``body`` but not the body (RFC 9110
    §9.3.2)."""
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}"]
    names = set()
    for name, value in headers:
        names.add(name.lower())
        head.append(f"{name}: {value}")
    if "content-type" not in names:
        head.append("Content-Type: text/plain; charset=utf-8")
    if "content-length" not in names:
        head.append(f"Content-Length: {len(body)}")
    head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if head_request else body)

"""The opening handshake and plain HTTP answers, as pure functions.

``check_upgrade`` is RFC 6455 §4.2.1's list of what a server must verify in
a client's opening handshake, then ``check_browser``; ``check_browser`` is
the one decision "may this request's ``Host`` and ``Origin`` reach us", for
the upgrade and the plain HTTP routes alike (a refusal is an HTTP answer
before any upgrade: 403, SPEC §2 ``ALLOWED_HOSTS``/``ALLOWED_ORIGINS``, §3),
under a ``BrowserPolicy`` the runtime builds once; ``format_response``
writes an HTTP/1.1 response head for the ``Connection``, which always
closes after a plain request (no keep-alive: less state per connection).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import re
from collections.abc import Sequence

__all__ = [
    "HEAD_END",
    "OPEN_PATHS",
    "REASONS",
    "BrowserPolicy",
    "Refusal",
    "check_browser",
    "check_upgrade",
    "format_response",
    "header",
    "is_loopback",
    "split_authority",
]

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


# Plain requests any Host and Origin may make: liveness and readiness for load
# balancers and orchestrators, which name the server by an address of their own.
# They answer nothing a page could use.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


def split_authority(value: str) -> tuple[str, int | None] | None:
    """``(host, port)`` of a ``Host`` value (``name``, ``name:port``,
    ``[v6]:port``), lower case without a trailing dot; ``None`` if malformed."""
    text = value.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[1:end], text[end + 1 :]
    elif text.count(":") > 1:  # a bare IPv6 address (a listen address, not a Host)
        name, rest = text, ""
    else:
        name, colon, digits = text.partition(":")
        rest = colon + digits
    port: int | None = None
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
            return None
        port = int(rest[1:])
    name = name.rstrip(".")
    if not name or any(c in name for c in "/?#@ \t"):
        return None
    return name, port


def is_loopback(name: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ``::1`` (``0.0.0.0`` is not)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BrowserPolicy:
    """What ``check_browser`` needs to know of the server, built once.

    ``listen_host``/``listen_port``: where pcclog listens (``HOST``, the bound
    port); ``tls``: it serves ``https``/``wss`` itself; ``allowed_hosts``:
    ``ALLOWED_HOSTS`` (``name`` or ``name:port``; ``*`` accepts any);
    ``allowed_origins``: ``ALLOWED_ORIGINS``, exact match. The defaults
    check nothing (a policy that only has ``allowed_origins``)."""

    listen_host: str = ""
    listen_port: int | None = None
    tls: bool = False
    auth_disabled: bool = False
    allowed_hosts: frozenset[str] | None = None
    allowed_origins: frozenset[str] | None = None

    @property
    def loopback(self) -> bool:
        parsed = split_authority(self.listen_host)
        return parsed is not None and is_loopback(parsed[0])

    @property
    def guards_host(self) -> bool:
        """Whether ``Host`` is checked at all (SPEC §2 ``ALLOWED_HOSTS``)."""
        return self.allowed_hosts is not None or self.auth_disabled or self.loopback


def _host_allowed(host: str | None, policy: BrowserPolicy) -> bool:
    if host is None or not policy.guards_host:
        # No Host: not a browser (a browser always sends one), so no rebinding.
        return True
    parsed = split_authority(host)
    if parsed is None:
        return False
    name, port = parsed
    listen = split_authority(policy.listen_host)
    if is_loopback(name) or (listen is not None and name == listen[0]):
        return True
    allowed = policy.allowed_hosts
    if allowed is not None:
        return "*" in allowed or name in allowed or f"{name}:{port}" in allowed
    if policy.auth_disabled:
        return False
    # A loopback listener with auth on and no ALLOWED_HOSTS: a proxy in front
    # (the nginx deployment forwards ``Host $host``, without a port) passes.
    # A browser that reaches this port itself names this port in Host (or
    # none, when it is its scheme's default), so a Host naming another port
    # did not come from a page talking to us directly.
    effective = port if port is not None else (443 if policy.tls else 80)
    return policy.listen_port is not None and effective != policy.listen_port


def _same_origin(
    origin: str, host: str | None, headers: tuple[tuple[str, str], ...], policy: BrowserPolicy
) -> bool:
    """``Origin`` is the scheme and ``Host`` this request came to (the scheme
    is pcclog's own, or a TLS-terminating proxy's ``X-Forwarded-Proto``: a
    page cannot set that header on a WebSocket or a simple request)."""
    scheme, sep, authority = origin.partition("://")
    if host is None or not sep or scheme not in ("http", "https"):
        return False
    schemes = {"https" if policy.tls else "http"}
    forwarded = header(headers, "x-forwarded-proto")
    if forwarded:
        schemes.add(forwarded.split(",")[0].strip().lower())
    came, went = split_authority(authority), split_authority(host)
    if scheme not in schemes or came is None or went is None:
        return False
    default = 443 if scheme == "https" else 80
    return (came[0], came[1] or default) == (went[0], went[1] or default)


def check_browser(
    headers: tuple[tuple[str, str], ...], policy: BrowserPolicy, *, path: str | None = None
) -> Refusal | None:
    """Why this request's ``Host``/``Origin`` may not reach pcclog (403), or
    ``None``. ``path`` is a plain request's path (``OPEN_PATHS`` pass), or
    ``None`` for an upgrade (on any path).

    * ``Host`` (DNS rebinding): see ``BrowserPolicy.guards_host``; when
      guarded it must be ``localhost``, a loopback address, the listen
      address or in ``ALLOWED_HOSTS``; a loopback listener with auth on
      and no ``ALLOWED_HOSTS`` also passes a proxy's Host (another port).
    * ``Origin`` (sent by browsers only): with ``ALLOWED_ORIGINS``, on the
      list; else with auth disabled, same-origin; else any.
    """
    if path is not None and path in OPEN_PATHS:
        return None
    host = header(headers, "host")
    if not _host_allowed(host, policy):
        return Refusal(
            status=403,
            text="host not allowed (DNS-rebinding guard): add it to ALLOWED_HOSTS",
        )
    origin = header(headers, "origin")
    if origin is None:
        return None
    if policy.allowed_origins is not None:
        if origin in policy.allowed_origins:
            return None
        return Refusal(status=403, text="origin not allowed")
    if policy.auth_disabled and not _same_origin(origin, host, headers, policy):
        return Refusal(
            status=403,
            text="origin not allowed: with AUTH_DISABLED only same-origin browser requests "
            "are accepted (or set ALLOWED_ORIGINS)",
        )
    return None


def check_upgrade(
    method: str,
    headers: tuple[tuple[str, str], ...],
    policy: BrowserPolicy,
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
    refused = check_browser(headers, policy)
    return key if refused is None else refused


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

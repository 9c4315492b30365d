"""Plain HTTP on the WebSocket port (SPEC §5): the routes, apart from the
drivers that move their bytes.

The core's ``Connection`` parses the request and writes the response
(``Connection: close``, and no body for ``HEAD``: it keeps the
``Content-Length`` of the body given, RFC 9110 §9.3.2); here each route only
decides status, headers and body. Bearer tokens are resolved by the core's
one decision (``authorize_request``), the same the WebSocket upgrade uses;
``Host`` and ``Origin`` by the core's ``check_browser``, under the one
``BrowserPolicy`` this module builds for the server (``browser_policy``),
which the server also hands every ``Connection`` for its upgrades.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcclog_core import AuthError, HTTPRequest, Role, authorize_request, bearer_token, encode
from pcclog_core._handshake import BrowserPolicy, check_browser, split_authority
from pcclog_core._levels import levels_json
from pcclog_core._messages import Sessions

from ._metrics import render_metrics

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["HTTPRoutes", "Response"]

Response = tuple[int, list[tuple[str, str]], bytes]

_STATIC = Path(__file__).parent / "static"
_LEVELS = levels_json()
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}
_JSON = ("Content-Type", "application/json")
_CSP = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)


class HTTPRoutes:
    """The answers of one server's plain HTTP requests."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.metrics_registry: Any = None
        self._browser: BrowserPolicy | None = None

    @property
    def browser_policy(self) -> BrowserPolicy:
        """Host/Origin rules (SPEC §2), built once the listen port is known."""
        policy = self._browser
        port = self.server.port or None
        if policy is None or policy.listen_port != port:
            config = self.server.config
            hosts = None
            if config.allowed_hosts is not None:
                hosts = frozenset(_host_entry(h) for h in config.allowed_hosts)
            policy = self._browser = BrowserPolicy(
                listen_host=config.host,
                listen_port=port,
                tls=self.server.ssl_context is not None,
                auth_disabled=config.auth_disabled,
                allowed_hosts=hosts,
                allowed_origins=(
                    frozenset(config.allowed_origins) if config.allowed_origins else None
                ),
            )
        return policy

    def answer(self, request: HTTPRequest) -> Response:
        refused = check_browser(request.headers, self.browser_policy, path=request.path)
        if refused is not None:
            return refused.status, list(refused.headers), (refused.text + "\n").encode()
        if request.method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD")], b"method not allowed\n"
        route = _ROUTES.get(request.path)
        if route is not None:
            return route(self, request)
        if request.path.startswith("/static/"):
            return _static(request.path[len("/static/") :])
        return 404, [], b"not found\n"

    def healthz(self, request: HTTPRequest) -> Response:
        return 200, [], b"ok\n"

    def readyz(self, request: HTTPRequest) -> Response:
        server = self.server
        if server.stopping:
            return 503, [], b"shutting down\n"
        waiting = [s.name for s in server.sources if not s.ready]
        if waiting:
            return 503, [], ("not ready: " + ", ".join(waiting) + "\n").encode()
        return 200, [], b"ready\n"

    def metrics(self, request: HTTPRequest) -> Response:
        content_type, body = render_metrics(self.server, self)
        return 200, [("Content-Type", content_type)], body

    def api_sessions(self, request: HTTPRequest) -> Response:
        hub = self.server.hub
        try:
            grant = authorize_request(
                hub.authenticator,
                bearer_token(request.header("authorization")),
                wall=time.time(),
                role=Role.VIEW,
            )
        except AuthError as exc:
            hub.counters.auth_failures += 1
            body = encode({"error": "UNAUTHORIZED", "message": f"authentication failed: {exc}"})
            headers = [_JSON] if exc.status == 403 else [_JSON, ("WWW-Authenticate", "Bearer")]
            return exc.status, headers, body
        return 200, [_JSON], encode(Sessions(sessions=hub.list_sessions(grant)))

    def levels(self, request: HTTPRequest) -> Response:
        """The core's level table, so the viewer uses it instead of a copy."""
        return 200, [_JSON, ("Cache-Control", "no-cache")], _LEVELS

    def index(self, request: HTTPRequest) -> Response:
        return _static("index.html")


def _host_entry(entry: str) -> str:
    """An ``ALLOWED_HOSTS`` entry as ``check_browser`` compares it."""
    parsed = split_authority(entry)
    if parsed is None or entry.strip() == "*":
        return entry.strip()
    name, port = parsed
    return name if port is None else f"{name}:{port}"


def _static(name: str) -> Response:
    if "/" in name or name.startswith(".") or not name:
        return 404, [], b"not found\n"
    path = _STATIC / name
    try:
        body = path.read_bytes()
    except OSError:
        return 404, [], b"not found\n"
    return (
        200,
        [
            ("Content-Type", _CONTENT_TYPES.get(path.suffix, "application/octet-stream")),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", _CSP),
        ],
        body,
    )


_ROUTES: dict[str, Callable[[HTTPRoutes, HTTPRequest], Response]] = {
    "/healthz": HTTPRoutes.healthz,
    "/readyz": HTTPRoutes.readyz,
    "/metrics": HTTPRoutes.metrics,
    "/api/sessions": HTTPRoutes.api_sessions,
    "/levels.json": HTTPRoutes.levels,
    "/": HTTPRoutes.index,
    "/index.html": HTTPRoutes.index,
}

"""Browser safety (issue 13 item 6, SPEC §2 ``ALLOWED_HOSTS``/``ALLOWED_ORIGINS``):
DNS rebinding and cross-origin pages against a real server, plus the one
pure decision (``check_browser``) table by table."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from conftest import ServerProcess
from rawws import RawWebSocket, handshake_request

from pcclog_core._handshake import BrowserPolicy, check_browser

TOKEN = "test-token"


def http_get(
    port: int, path: str, host: str, headers: tuple[tuple[str, str], ...] = ()
) -> tuple[int, bytes]:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {TOKEN}"]
    lines += [f"{k}: {v}" for k, v in headers]
    with RawWebSocket.open(port) as ws:
        ws.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        response = ws.read_response()
        return response.status, ws.read_to_eof()


def upgrade(port: int, host: str, origin: str | None = None, token: str | None = TOKEN) -> int:
    with RawWebSocket.open(port) as ws:
        ws.send(handshake_request("/", host=host, token=token, origin=origin))
        return ws.read_response().status


@pytest.mark.parametrize("env", [{}, {"ALLOWED_ORIGINS": "https://good.example"}])
def test_dns_rebinding_refused_on_loopback(
    start_server: Callable[..., ServerProcess], env: dict[str, str]
) -> None:
    server = start_server(env=env)
    foreign = f"evil.example:{server.port}"
    status, body = http_get(server.port, "/api/sessions", foreign)
    assert status == 403 and b"ALLOWED_HOSTS" in body, body
    assert upgrade(server.port, foreign) == 403
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", f"[::1]:{server.port}"):
        assert http_get(server.port, "/api/sessions", host)[0] == 200, host
        assert upgrade(server.port, host) == 101, host
    # Liveness stays open to any Host (load balancers).
    assert http_get(server.port, "/healthz", foreign)[0] == 200


def test_allowed_hosts_admits_a_name(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={"ALLOWED_HOSTS": "logs.internal"})
    assert http_get(server.port, "/api/sessions", f"logs.internal:{server.port}")[0] == 200
    assert upgrade(server.port, f"logs.internal:{server.port}") == 101
    assert http_get(server.port, "/api/sessions", f"evil.example:{server.port}")[0] == 403


def test_auth_disabled_same_origin_only(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={"AUTH_DISABLED": "true"}, token=None)
    here = f"127.0.0.1:{server.port}"
    assert upgrade(server.port, here, origin="https://evil.example", token=None) == 403
    assert upgrade(server.port, here, origin=f"http://localhost:{server.port}", token=None) == 403
    assert upgrade(server.port, here, origin=f"http://{here}", token=None) == 101
    assert upgrade(server.port, here, origin=None, token=None) == 101
    status, _ = http_get(server.port, "/api/sessions", here, (("Origin", "https://evil.example"),))
    assert status == 403
    # Auth disabled guards Host even without a proxy-style exemption.
    assert http_get(server.port, "/api/sessions", "evil.example")[0] == 403


def test_allowed_origins_applies_to_http_routes(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"ALLOWED_ORIGINS": "https://good.example"})
    here = f"127.0.0.1:{server.port}"
    status, body = http_get(
        server.port, "/api/sessions", here, (("Origin", "https://evil.example"),)
    )
    assert status == 403 and b"origin not allowed" in body
    assert (
        http_get(server.port, "/api/sessions", here, (("Origin", "https://good.example"),))[0]
        == 200
    )
    assert http_get(server.port, "/api/sessions", here)[0] == 200


def test_public_listener_behind_proxy(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--host", "0.0.0.0")
    assert http_get(server.port, "/api/sessions", "logs.example.com")[0] == 200
    assert upgrade(server.port, f"anything.example:{server.port}") == 101
    guarded = start_server("--host", "0.0.0.0", env={"ALLOWED_HOSTS": "logs.example.com"})
    assert http_get(guarded.port, "/api/sessions", "logs.example.com")[0] == 200
    assert http_get(guarded.port, "/api/sessions", "other.example")[0] == 403
    assert upgrade(guarded.port, "other.example") == 403


def test_loopback_listener_behind_nginx_passes_a_portless_host(
    start_server: Callable[..., ServerProcess],
) -> None:
    # nginx forwards ``Host $host`` (no port): not a page talking to this port.
    server = start_server()
    assert http_get(server.port, "/api/sessions", "logs.example.com")[0] == 200
    assert upgrade(server.port, "logs.example.com") == 101


LOOP = BrowserPolicy(listen_host="127.0.0.1", listen_port=8080)
OPEN = BrowserPolicy(listen_host="0.0.0.0", listen_port=8080)
NOAUTH = BrowserPolicy(listen_host="0.0.0.0", listen_port=8080, auth_disabled=True)
HOSTS = BrowserPolicy(
    listen_host="0.0.0.0", listen_port=8080, allowed_hosts=frozenset({"a.test", "b.test:9"})
)
ORIGINS = BrowserPolicy(
    listen_host="127.0.0.1", listen_port=8080, allowed_origins=frozenset({"https://ok.test"})
)
TLS_NOAUTH = BrowserPolicy(listen_host="::1", listen_port=8443, tls=True, auth_disabled=True)

CASES = [
    # policy, host, origin, path, allowed
    (LOOP, "127.0.0.1:8080", None, None, True),
    (LOOP, "127.9.9.9:8080", None, None, True),
    (LOOP, "localhost:8080", None, None, True),
    (LOOP, "LOCALHOST.:8080", None, None, True),
    (LOOP, "[::1]:8080", None, None, True),
    (LOOP, "evil.test:8080", None, None, False),
    (LOOP, "evil.test:8080", None, "/api/sessions", False),
    (LOOP, "evil.test:8080", None, "/healthz", True),
    (LOOP, "evil.test:8080", None, "/readyz", True),
    (LOOP, "logs.example.com", None, None, True),  # a proxy's Host $host
    (LOOP, "bad host", None, None, False),
    (LOOP, None, None, None, True),  # no Host: not a browser
    (LOOP, "evil.test:8080", "https://evil.test", None, False),
    (LOOP, "127.0.0.1:8080", "https://any.test", None, True),  # auth on, no allowlist
    (OPEN, "anything.test:8080", None, None, True),
    (OPEN, "0.0.0.0:8080", None, None, True),
    (NOAUTH, "evil.test:8080", None, None, False),
    (NOAUTH, "evil.test", None, None, False),
    (NOAUTH, "localhost:8080", "http://localhost:8080", None, True),
    (NOAUTH, "localhost:8080", "http://localhost:3000", None, False),
    (NOAUTH, "localhost:8080", "https://localhost:8080", None, False),
    (NOAUTH, "localhost", "http://localhost:80", None, True),
    (NOAUTH, "localhost:8080", "null", None, False),
    (NOAUTH, "localhost:8080", None, None, True),
    (TLS_NOAUTH, "[::1]:8443", "https://[::1]:8443", None, True),
    (TLS_NOAUTH, "[::1]:8443", "http://[::1]:8443", None, False),
    (HOSTS, "a.test", None, None, True),
    (HOSTS, "a.test:1234", None, None, True),
    (HOSTS, "b.test:9", None, None, True),
    (HOSTS, "b.test:10", None, None, False),
    (HOSTS, "c.test", None, None, False),
    (HOSTS, "127.0.0.1:8080", None, None, True),
    (ORIGINS, "127.0.0.1:8080", "https://ok.test", None, True),
    (ORIGINS, "127.0.0.1:8080", "https://OK.test", None, False),
    (ORIGINS, "127.0.0.1:8080", "https://evil.test", "/api/sessions", False),
    (ORIGINS, "127.0.0.1:8080", "http://127.0.0.1:8080", None, False),  # exact list
]


@pytest.mark.parametrize(("policy", "host", "origin", "path", "allowed"), CASES)
def test_check_browser_table(
    policy: BrowserPolicy, host: str | None, origin: str | None, path: str | None, allowed: bool
) -> None:
    headers = tuple((k, v) for k, v in (("host", host), ("origin", origin)) if v is not None)
    refused = check_browser(headers, policy, path=path)
    assert (refused is None) == allowed, refused
    if refused is not None:
        assert refused.status == 403


def test_forwarded_proto_counts_as_the_scheme() -> None:
    policy = BrowserPolicy(
        listen_host="0.0.0.0",
        listen_port=8080,
        auth_disabled=True,
        allowed_hosts=frozenset({"logs.test"}),
    )
    headers = (("host", "logs.test"), ("origin", "https://logs.test"))
    assert check_browser(headers, policy) is not None
    assert check_browser((*headers, ("x-forwarded-proto", "https")), policy) is None

"""``Connection`` against a wsproto client, bytes exchanged in memory.

A fake network pair: the client side is ``wsproto.WSConnection(CLIENT)``,
the server side ``pcclog_core.Connection``; nothing opens a socket and the
clock is an argument. Frames the wsproto client refuses to write (unmasked,
reserved bits, bad opcodes…) are written byte by byte here.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState as WSState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from pcclog_core import (
    Authenticator,
    Connection,
    ConnectionClosed,
    ConnectionState,
    HTTPRequest,
    Hub,
    Limits,
    LocalProtocolError,
    WebSocketAccepted,
    parse_static_tokens,
)

# An open hub: these tests are not about authentication.
OPEN = Authenticator(disabled=True)

T0 = 500.0
WALL = 1_700_000_000.0


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    length: int | None = None,
) -> bytes:
    """A client frame, any way we like it (RFC 6455 §5.2)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = b"\x37\xfa\x21\x3d"  # RFC 6455 §5.7's key: fixed, so runs repeat exactly
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


HANDSHAKE = (
    b"GET / HTTP/1.1\r\n"
    b"Host: localhost\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def request(
    target: str = "/", *, method: str = "GET", headers: list[tuple[str, str]] | None = None
) -> bytes:
    base = [
        ("Host", "localhost"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ]
    names = {k.lower() for k, _ in headers or []}
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{k}: {v}" for k, v in base if k.lower() not in names]
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Pair:
    """A wsproto client and a pcclog Connection, wired in memory."""

    def __init__(
        self,
        hub: Hub | None = None,
        *,
        allowed_origins: list[str] | None = None,
        now: float = T0,
    ) -> None:
        self.hub = hub or Hub(authenticator=OPEN)
        self.now = now
        self.conn = Connection(self.hub, now=now, allowed_origins=allowed_origins)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.server_events: list[Any] = []

    def open(
        self,
        target: str = "/",
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        **kwargs: Any,
    ) -> list[Event]:
        data = self.ws.send(
            Request(host="localhost", target=target, extra_headers=extra_headers or [], **kwargs)
        )
        return self.to_server(data)

    def to_server(self, data: bytes) -> list[Event]:
        self.conn.receive_data(data, now=self.now, wall=WALL)
        return self.pump()

    def send(self, message: dict[str, Any] | str) -> list[Event]:
        text = message if isinstance(message, str) else json.dumps(message)
        return self.to_server(self.ws.send(TextMessage(data=text)))

    def tick(self, now: float) -> list[Event]:
        self.now = now
        self.conn.handle_timeout(now=now, wall=WALL)
        return self.pump()

    def pump(self) -> list[Event]:
        """Move the server's output to the client (a write the runtime then
        confirms); the client's events."""
        data = self.conn.data_to_send()
        self.conn.bytes_sent(len(data))
        if self.conn.holds_input and self.conn.wants_read:
            self.conn.continue_reading(now=self.now, wall=WALL)
            more = self.conn.data_to_send()
            self.conn.bytes_sent(len(more))
            data += more
        while (event := self.conn.next_event()) is not None:
            self.server_events.append(event)
        if data:
            self.ws.receive_data(data)
        events = list(self.ws.events())
        if self.conn.closed and self.ws.state is not WSState.CLOSED:
            self.ws.receive_data(None)  # the server closed the socket
            events += self.ws.events()
        return events

    def messages(self, events: list[Event]) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in events if isinstance(e, TextMessage)]

    def closed_event(self) -> ConnectionClosed:
        [event] = [e for e in self.server_events if isinstance(e, ConnectionClosed)]
        return event


def close_of(events: list[Event]) -> CloseConnection:
    """The close frame the server sent (wsproto adds a 1006 at EOF after it)."""
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert closes, events
    return closes[0]


def http_status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def auth_hub(tokens: str, **limits: Any) -> Hub:
    return Hub(Limits(**limits), Authenticator(static_tokens=parse_static_tokens(tokens)))


# --- handshake ---------------------------------------------------------------------------


def test_handshake_101() -> None:
    pair = Pair()
    assert pair.conn.state is ConnectionState.HANDSHAKE
    events = pair.open("/ws/path?x=1")
    assert [type(e) for e in events] == [AcceptConnection]
    assert pair.conn.state is ConnectionState.OPEN
    assert pair.server_events == [WebSocketAccepted(path="/ws/path", authenticated=True)]
    events = pair.send({"type": "ping"})
    assert pair.messages(events) == [{"type": "pong"}]


def test_handshake_response_bytes() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(HANDSHAKE, now=T0, wall=WALL)
    data = conn.data_to_send()
    assert data.startswith(b"HTTP/1.1 101 ")
    # RFC 6455 §1.3's worked example
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in data
    assert b"\r\nUpgrade: websocket\r\n" in data


def test_frames_in_the_same_packet_as_the_handshake() -> None:
    hub = Hub(authenticator=OPEN)
    conn = Connection(hub, now=T0)
    ping = raw_frame(0x1, b'{"type":"ping"}')
    conn.receive_data(HANDSHAKE + ping + ping, now=T0, wall=WALL)
    data = conn.data_to_send()
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames == b'\x81\x0f{"type":"pong"}' * 2


def test_handshake_split_across_reads() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    for i in range(len(HANDSHAKE)):
        assert conn.state is ConnectionState.HANDSHAKE
        conn.receive_data(HANDSHAKE[i : i + 1], now=T0, wall=WALL)
    assert conn.state is ConnectionState.OPEN
    assert conn.data_to_send().startswith(b"HTTP/1.1 101")


def test_origin_not_allowed_403() -> None:
    pair = Pair(allowed_origins=["https://ok.example"])
    events = pair.open(extra_headers=[(b"Origin", b"https://evil.example")])
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == 403
    assert pair.conn.closed
    assert pair.conn.client is None
    assert pair.hub.clients == {}
    assert pair.closed_event() == ConnectionClosed(code=403, reason="", by_peer=False)
    body = b"".join(e.data for e in events if isinstance(e, RejectData))
    assert b"origin not allowed" in body


def test_origin_allowed_and_absent() -> None:
    pair = Pair(allowed_origins=["https://ok.example"])
    events = pair.open(extra_headers=[(b"Origin", b"https://ok.example")])
    assert isinstance(events[0], AcceptConnection)
    # a non-browser client sends no Origin: nothing to check
    pair = Pair(allowed_origins=["https://ok.example"])
    assert isinstance(pair.open()[0], AcceptConnection)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/?token=bad", []),
        ("/", [(b"Authorization", b"Bearer bad")]),
        ("/?token=good", [(b"Authorization", b"Bearer bad")]),  # the header wins
    ],
)
def test_bad_token_401(target: str, headers: list[tuple[bytes, bytes]]) -> None:
    pair = Pair(auth_hub("good"))
    events = pair.open(target, extra_headers=headers)
    assert isinstance(events[0], RejectConnection)
    assert events[0].status_code == 401
    body = b"".join(e.data for e in events if isinstance(e, RejectData))
    assert b"authentication failed: invalid token" in body
    assert b"bad" not in body
    assert pair.conn.closed
    assert pair.hub.counters.auth_failures == 1


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/?token=good", []),
        ("/", [(b"Authorization", b"Bearer good")]),
        ("/", [(b"Authorization", b"bearer   good")]),
    ],
)
def test_valid_token_authenticates(target: str, headers: list[tuple[bytes, bytes]]) -> None:
    hub = auth_hub("good:view:*")
    hub.publish_log("s", level="info", message="m", timestamp="t", now=T0)
    pair = Pair(hub)
    assert isinstance(pair.open(target, extra_headers=headers)[0], AcceptConnection)
    assert pair.server_events == [WebSocketAccepted(path="/", authenticated=True)]
    got = pair.messages(pair.send({"type": "subscribe", "sessionId": "s"}))
    assert [m["type"] for m in got] == ["status", "log"]


def test_no_token_opens_unauthenticated_then_auth_message() -> None:
    pair = Pair(auth_hub("good"))
    pair.open()
    assert pair.server_events == [WebSocketAccepted(path="/", authenticated=False)]
    got = pair.messages(pair.send({"type": "list"}))
    assert got[0]["code"] == "UNAUTHORIZED"
    assert pair.messages(pair.send({"type": "auth", "token": "good"})) == []
    assert pair.messages(pair.send({"type": "list"})) == [{"type": "sessions", "sessions": []}]


def test_container_id_dialect() -> None:
    hub = auth_hub("prod:produce:*,view:view:*")
    viewer = Pair(hub)
    viewer.open("/?token=view")
    viewer.send({"type": "subscribe", "sessionId": "C1"})
    wrapper = Pair(hub)
    assert isinstance(wrapper.open("/?token=prod&containerID=C1")[0], AcceptConnection)
    envelope = {
        "type": "LOG",
        "timestamp": "2024-01-26T13:45:30.123Z",
        "data": {"level": "info", "message": "hello", "metadata": {"step": 1}},
    }
    assert wrapper.messages(wrapper.send(envelope)) == []
    got = viewer.messages(viewer.pump())
    assert got[-1] == {
        "type": "log",
        "sessionId": "C1",
        "timestamp": "2024-01-26T13:45:30.123Z",
        "level": "info",
        "message": "hello",
        "data": {"step": 1},
        "seq": 1,
    }
    [beat] = wrapper.messages(wrapper.send({"type": "HEARTBEAT", "data": {}}))
    assert beat["type"] == "HEARTBEAT" and beat["containerID"] == "C1"


def test_plain_get_is_an_http_request() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(
        b"GET /healthz?verbose=1&x=2 HTTP/1.1\r\nHost: h\r\nX-Thing: Yes\r\n\r\n", now=T0, wall=WALL
    )
    assert conn.state is ConnectionState.HTTP_RESPONSE
    assert conn.data_to_send() == b""
    event = conn.next_event()
    assert isinstance(event, HTTPRequest)
    assert (event.method, event.target, event.path) == ("GET", "/healthz?verbose=1&x=2", "/healthz")
    assert event.query == {"verbose": ["1"], "x": ["2"]}
    assert event.header("X-THING") == "Yes"
    assert event.header("missing") is None
    assert conn.next_event() is None
    conn.send_response(200, [("Content-Type", "application/json")], b'{"ok":true}')
    data = conn.data_to_send()
    assert data == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
        b'Connection: close\r\n\r\n{"ok":true}'
    )
    assert conn.closed
    assert conn.next_event() == ConnectionClosed(code=200, reason="", by_peer=False)
    with pytest.raises(LocalProtocolError):
        conn.send_response(200, [], b"")
    conn.receive_data(b"more", now=T0, wall=WALL)
    assert conn.data_to_send() == b""


def test_head_request_gets_no_body() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(b"HEAD /healthz HTTP/1.1\r\nHost: h\r\n\r\n", now=T0, wall=WALL)
    event = conn.next_event()
    assert isinstance(event, HTTPRequest) and event.method == "HEAD"
    conn.send_response(200, [], b"ok\n")
    data = conn.data_to_send()
    # the length a GET would get, and no body (RFC 9110 §9.3.2)
    assert data.endswith(b"Content-Length: 3\r\nConnection: close\r\n\r\n")


def test_a_content_length_from_the_runtime_is_not_repeated() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n", now=T0, wall=WALL)
    conn.next_event()
    conn.send_response(200, [("Content-Length", "42")], b"")
    data = conn.data_to_send()
    assert data.count(b"Content-Length") == 1
    assert b"Content-Length: 42\r\n" in data and data.endswith(b"\r\n\r\n")


def test_refused_head_upgrade_gets_no_body() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(request(method="HEAD"), now=T0, wall=WALL)
    data = conn.data_to_send()
    assert http_status(data) == 405
    assert data.endswith(b"\r\n\r\n")
    assert b"Content-Length: %d\r\n" % len(b"a WebSocket upgrade must use GET\n") in data


def test_head_refused_for_its_headers_gets_no_body() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    headers = "".join(f"X-H{i}: v\r\n" for i in range(130))
    conn.receive_data(f"HEAD / HTTP/1.1\r\nHost: h\r\n{headers}\r\n".encode(), now=T0, wall=WALL)
    data = conn.data_to_send()
    assert http_status(data) == 431
    assert data.endswith(b"\r\n\r\n")


@pytest.mark.parametrize(
    "data",
    [
        b"GET /healthz HTTP/1.1\nHost: h\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: h\n\r\n",
        b"HEAD /healthz HTTP/1.1\r\nHost: h\n\r\n",
    ],
)
def test_bare_lf_line_endings_are_accepted(data: bytes) -> None:
    """h11 accepts lines ending in a bare LF (RFC 9112 §2.2 allows it); the
    head-size bound must find the end of such a head too."""
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(data, now=T0, wall=WALL)
    assert conn.state is ConnectionState.HTTP_RESPONSE
    assert isinstance(conn.next_event(), HTTPRequest)
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(HANDSHAKE.replace(b"\r\n", b"\n"), now=T0, wall=WALL)
    assert conn.state is ConnectionState.OPEN


def test_send_response_before_a_request_is_a_local_error() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    with pytest.raises(LocalProtocolError):
        conn.send_response(200, [], b"")


def test_peer_gone_before_the_response() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", now=T0, wall=WALL)
    conn.receive_data(b"", now=T0, wall=WALL)
    assert conn.closed
    events = [conn.next_event(), conn.next_event()]
    assert isinstance(events[0], HTTPRequest)
    assert isinstance(events[1], ConnectionClosed) and events[1].by_peer


@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        (request(method="POST", headers=[("Content-Length", "0")]), 405, b"must use GET"),
        (request(headers=[("Sec-WebSocket-Version", "8")]), 426, b"only 13"),
        (request(headers=[("Connection", "keep-alive")]), 400, b"Connection: Upgrade"),
        (request(headers=[("Sec-WebSocket-Key", "short")]), 400, b"Sec-WebSocket-Key"),
        (request(headers=[("Sec-WebSocket-Key", "!!!notbase64!!!!!!!!!!==")]), 400, b"Key"),
        (b"GARBAGE\r\n\r\n", 400, b"malformed request"),
        (request("http://[x/"), 400, b"malformed request target"),  # urlsplit raises
        (b"GET http://[::1/x HTTP/1.1\r\nHost: h\r\n\r\n", 400, b"malformed request target"),
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400, b"malformed request"),
    ],
)
def test_refused_upgrades(data: bytes, status: int, needle: bytes) -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(data, now=T0, wall=WALL)
    out = conn.data_to_send()
    assert http_status(out) == status
    assert needle in out
    assert b"Connection: close\r\n" in out
    assert conn.closed
    assert conn.client is None
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in out


def test_head_over_16k_is_431() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ", now=T0, wall=WALL)
    assert conn.state is ConnectionState.HANDSHAKE
    conn.receive_data(b"a" * 17_000, now=T0, wall=WALL)
    out = conn.data_to_send()
    assert http_status(out) == 431
    assert conn.closed


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_whole_head_over_16k_is_431(method: bytes) -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    data = method + b" / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 17_000 + b"\r\n\r\n"
    conn.receive_data(data, now=T0, wall=WALL)
    out = conn.data_to_send()
    assert http_status(out) == 431
    assert conn.closed
    assert out.endswith(b"\r\n\r\n") is (method == b"HEAD")


def test_head_just_under_16k_is_fine() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    pad = 16_384 - len(HANDSHAKE) - len("X-Pad: \r\n") - 64
    data = HANDSHAKE[:-2] + b"X-Pad: " + b"a" * pad + b"\r\n\r\n"
    conn.receive_data(data, now=T0, wall=WALL)
    assert conn.state is ConnectionState.OPEN


def test_more_than_128_headers_is_431() -> None:
    headers = [(f"X-H{i}", "v") for i in range(130)]
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(request(headers=headers), now=T0, wall=WALL)
    out = conn.data_to_send()
    assert http_status(out) == 431
    assert b"more than 128 header fields" in out
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(request(headers=headers[:120]), now=T0, wall=WALL)
    assert conn.state is ConnectionState.OPEN


def test_open_timeout_closes_a_trickled_handshake() -> None:
    conn = Connection(Hub(Limits(open_timeout=10), authenticator=OPEN), now=T0)
    assert conn.next_deadline() == T0 + 10
    for i in range(20):
        conn.receive_data(HANDSHAKE[i : i + 1], now=T0 + i * 0.5, wall=WALL)
        conn.handle_timeout(now=T0 + i * 0.5, wall=WALL)
    assert conn.state is ConnectionState.HANDSHAKE
    conn.handle_timeout(now=T0 + 10, wall=WALL)
    assert conn.closed
    assert conn.next_deadline() is None
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed)
    assert event.code == 1006 and "open timeout" in event.reason


def test_eof_during_handshake() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.receive_data(HANDSHAKE[:10], now=T0, wall=WALL)
    conn.receive_data(b"", now=T0, wall=WALL)
    assert conn.closed
    event = conn.next_event()
    assert isinstance(event, ConnectionClosed) and event.by_peer


# --- keepalive --------------------------------------------------------------------------


def test_keepalive_ping_pong_and_timeout() -> None:
    pair = Pair(Hub(Limits(ping_interval=30, ping_timeout=5), authenticator=OPEN))
    pair.open()
    assert pair.conn.next_deadline() == T0 + 30
    assert pair.tick(T0 + 29.9) == []
    events = pair.tick(T0 + 30)
    [ping] = [e for e in events if isinstance(e, Ping)]
    assert pair.conn.next_deadline() == T0 + 35
    # the pong arrives in time: the next ping is an interval later
    pair.now = T0 + 31
    pair.to_server(pair.ws.send(ping.response()))
    assert pair.conn.next_deadline() == T0 + 61
    assert pair.tick(T0 + 40) == []
    # a pong with another payload does not count
    events = pair.tick(T0 + 61)
    [ping] = [e for e in events if isinstance(e, Ping)]
    pair.to_server(pair.ws.send(Pong(payload=b"not it")))
    assert pair.conn.next_deadline() == T0 + 66
    assert pair.conn.state is ConnectionState.OPEN
    # no pong within ping_timeout: close 1011
    events = pair.tick(T0 + 66)
    assert close_of(events).code == 1011
    assert pair.conn.closed
    assert pair.hub.counters.ping_timeouts == 1
    assert pair.closed_event().code == 1011
    assert pair.hub.clients == {}


def test_keepalive_disabled() -> None:
    pair = Pair(Hub(Limits(ping_interval=0), authenticator=OPEN))
    pair.open()
    assert pair.conn.next_deadline() is None
    assert pair.tick(T0 + 10_000) == []


def test_client_ping_is_answered() -> None:
    pair = Pair()
    pair.open()
    events = pair.to_server(pair.ws.send(Ping(payload=b"abc")))
    assert events == [Pong(payload=b"abc")]


# --- closing -----------------------------------------------------------------------------


def test_peer_close_is_echoed() -> None:
    pair = Pair()
    pair.open()
    events = pair.to_server(pair.ws.send(CloseConnection(code=1000, reason="bye")))
    assert close_of(events).code == 1000
    assert pair.conn.closed
    assert pair.closed_event() == ConnectionClosed(code=1000, reason="bye", by_peer=True)
    assert pair.ws.state is WSState.CLOSED
    assert pair.hub.clients == {}


def test_peer_close_with_a_custom_code_is_echoed() -> None:
    pair = Pair()
    pair.open()
    events = pair.to_server(pair.ws.send(CloseConnection(code=4001, reason="")))
    assert close_of(events).code == 4001


def test_server_close_1001_waits_for_the_echo() -> None:
    pair = Pair()
    pair.open()
    pair.conn.close(now=T0)
    events = pair.pump()
    close = close_of(events)
    assert close.code == 1001 and close.reason == "server shutting down"
    assert pair.conn.state is ConnectionState.CLOSING
    # wsproto answers the close; the echo finishes it
    pair.to_server(pair.ws.send(close.response()))
    assert pair.conn.closed
    assert pair.closed_event() == ConnectionClosed(
        code=1001, reason="server shutting down", by_peer=False
    )


def test_server_close_without_an_echo_times_out() -> None:
    pair = Pair(Hub(Limits(ping_timeout=5), authenticator=OPEN))
    pair.open()
    pair.conn.close(now=T0)
    pair.conn.data_to_send()
    assert pair.conn.next_deadline() == T0 + 5
    pair.conn.handle_timeout(now=T0 + 5, wall=WALL)
    assert pair.conn.closed


def test_close_before_the_handshake_just_closes() -> None:
    conn = Connection(Hub(authenticator=OPEN), now=T0)
    conn.close()
    assert conn.closed
    assert conn.data_to_send() == b""


def test_eof_without_a_close_frame() -> None:
    pair = Pair()
    pair.open()
    pair.to_server(b"")
    assert pair.conn.closed
    event = pair.closed_event()
    assert event.code == 1006 and event.by_peer
    assert pair.hub.clients == {}


def test_abort_releases_the_client() -> None:
    hub = Hub(authenticator=OPEN)
    pair = Pair(hub)
    pair.open()
    pair.send({"type": "subscribe", "sessionId": "*"})
    pair.conn.abort()
    assert pair.conn.closed
    assert hub.clients == {}
    assert hub._wildcard == {}


def test_client_close_request_becomes_a_close_frame() -> None:
    hub = Hub(Limits(rate_limit=1, rate_burst=1, abuse_limit=2), authenticator=OPEN)
    pair = Pair(hub)
    pair.open()
    events: list[Event] = []
    for _ in range(4):
        events += pair.send({"type": "ping"})
    close = close_of(events)
    assert close.code == 1008
    assert "rejected messages" in close.reason


def test_slow_consumer_disconnect_through_the_connection() -> None:
    hub = Hub(Limits(connection_buffer=200, slow_consumer="disconnect"), authenticator=OPEN)
    pair = Pair(hub)
    pair.open()
    pair.send({"type": "subscribe", "sessionId": "*"})
    for _ in range(10):
        hub.publish_log("s", level="info", message="x" * 50, timestamp="t", now=T0)
    events = pair.pump()
    # what was queued goes first, then the close; a slow consumer is not
    # waited for: the connection is closed at once
    assert isinstance(events[0], TextMessage)
    assert close_of(events).code == 1013
    assert pair.conn.closed
    assert pair.closed_event().code == 1013
    assert hub.clients == {}


def test_auth_deadline_through_the_connection() -> None:
    pair = Pair(auth_hub("good", auth_timeout=10, ping_interval=30))
    pair.open()
    assert pair.conn.next_deadline() == T0 + 10
    events = pair.tick(T0 + 10)
    close = close_of(events)
    assert close.code == 1008 and close.reason == "authentication deadline passed"


# --- frame-level protocol errors -----------------------------------------------------------


def _opened(hub: Hub | None = None) -> Pair:
    pair = Pair(hub)
    pair.open()
    return pair


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (raw_frame(0x1, b'{"type":"ping"}', mask=False), 1002),  # unmasked client frame
        (raw_frame(0x1, b'{"type":"ping"}', rsv=0b100), 1002),  # RSV1 without extension
        (raw_frame(0x1, b'{"type":"ping"}', rsv=0b001), 1002),  # RSV3
        (raw_frame(0x3, b"x"), 1002),  # reserved non-control opcode
        (raw_frame(0xB, b"x"), 1002),  # reserved control opcode
        (raw_frame(0x9, b"x" * 126), 1002),  # control frame > 125 bytes
        (raw_frame(0x9, b"x", fin=False), 1002),  # fragmented ping
        (raw_frame(0x0, b"x"), 1002),  # continuation with nothing to continue
        (raw_frame(0x1, b"a", fin=False) + raw_frame(0x1, b"b"), 1002),  # new message mid-way
        (raw_frame(0x8, b"\x03"), 1002),  # close with a one-byte payload
        (raw_frame(0x8, struct.pack("!H", 999)), 1002),  # close with an invalid code
        (raw_frame(0x1, b"\xff\xfe"), 1007),  # invalid UTF-8
        (raw_frame(0x1, b'{"a":"\xc3"}'), 1007),  # truncated UTF-8 sequence
        (raw_frame(0x1, b'"\xc3', fin=False) + raw_frame(0x0, b'\x28"'), 1007),
        (raw_frame(0x1, b"", length=2**63 - 1)[:10], 1009),  # header only: 1009 at once
        (raw_frame(0x1, b"", length=2**63)[:10], 1002),  # MSB set (RFC 6455 §5.2)
    ],
)
def test_protocol_errors_close(frame: bytes, code: int) -> None:
    pair = _viewer()
    events = pair.to_server(frame)
    assert close_of(events).code == code
    assert pair.conn.closed
    assert pair.closed_event().code == code
    assert pair.hub.clients == {}


def _viewer(**limits: Any) -> Pair:
    """An open connection authenticated with a view-only token."""
    pair = Pair(auth_hub("view:view:*", **limits))
    pair.open(target="/?token=view")
    return pair


def test_message_too_big_1009_with_an_error() -> None:
    pair = _viewer(max_message_size=1000)
    events = pair.to_server(raw_frame(0x1, b"", length=1001)[:8])
    assert close_of(events).code == 1009
    [error] = pair.messages(events)
    assert error["code"] == "MESSAGE_TOO_LARGE"
    assert "(1000 bytes)" in error["message"]


def test_a_producers_oversized_message_is_skipped_and_it_goes_on() -> None:
    """SPEC §6: a producer's message over MAX_MESSAGE_SIZE is answered with
    MESSAGE_TOO_LARGE and skipped; its next message (its exit status above
    all) still arrives. The payload streams past unkept, trickled or whole,
    whole frame or fragments."""
    for chunk in (1, 7, 100_000):
        pair = Pair(auth_hub("prod:produce:*", max_message_size=1000))
        pair.open(target="/?token=prod")
        big = json.dumps({"type": "log", "sessionId": "s", "message": "x" * 5000}).encode()
        data = raw_frame(0x1, big)
        data += raw_frame(0x1, big[:600], fin=False) + raw_frame(0x0, big[600:])
        data += raw_frame(0x1, b'{"type":"status","sessionId":"s","status":"stopped"}')
        events: list[Event] = []
        for i in range(0, len(data), chunk):
            events += pair.to_server(data[i : i + chunk])
            assert pair.conn.state is ConnectionState.OPEN
            client = pair.conn.client
            assert client is not None and len("".join(pair.conn._parts)) <= 1000
        errors = [m for m in pair.messages(events) if m["type"] == "error"]
        assert [e["code"] for e in errors] == ["MESSAGE_TOO_LARGE"] * 2
        assert "skipped" in errors[0]["message"]
        session = pair.hub.sessions["s"]
        assert session.status == "stopped" and session.seq == 1


def test_fragments_adding_up_past_the_limit_1009() -> None:
    pair = _viewer(max_message_size=1000)
    events = pair.to_server(raw_frame(0x1, b"x" * 400, fin=False))
    events += pair.to_server(raw_frame(0x0, b"x" * 400, fin=False))
    assert pair.conn.state is ConnectionState.OPEN
    # a ping between fragments does not count
    events += pair.to_server(raw_frame(0x9, b"p" * 100))
    assert pair.conn.state is ConnectionState.OPEN
    events += pair.to_server(raw_frame(0x0, b"x" * 201)[:8])
    assert close_of(events).code == 1009


def test_fragments_up_to_the_limit_are_fine_even_trickled() -> None:
    """A fragmented message exactly at the limit, fed one byte at a time:
    every frame header is seen several times while its mask key trickles in,
    and must still be counted once."""
    pair = _opened(Hub(Limits(max_message_size=1000), authenticator=OPEN))
    text = '{"type":"ping","pad":"' + "x" * (1000 - 24) + '"}'
    assert len(text) == 1000
    data = raw_frame(0x1, text[:300].encode(), fin=False)
    data += raw_frame(0x9, b"keepalive")
    data += raw_frame(0x0, text[300:600].encode(), fin=False)
    data += raw_frame(0x0, text[600:].encode())
    events: list[Event] = []
    for i in range(len(data)):
        events += pair.to_server(data[i : i + 1])
    assert pair.conn.state is ConnectionState.OPEN
    assert pair.messages(events) == [{"type": "pong"}]


def test_fragmented_text_is_joined() -> None:
    pair = _opened()
    events = pair.to_server(raw_frame(0x1, b'{"type":', fin=False))
    events += pair.to_server(raw_frame(0x0, b'"pi', fin=False))
    events += pair.to_server(raw_frame(0x0, b'ng"}'))
    assert pair.messages(events) == [{"type": "pong"}]


def test_binary_frame_is_an_invalid_message() -> None:
    pair = _opened()
    events = pair.to_server(pair.ws.send(BytesMessage(data=b'{"type":"ping"}')))
    [error] = pair.messages(events)
    assert error["code"] == "INVALID_MESSAGE"
    assert "binary messages are not supported" in error["message"]
    assert pair.conn.state is ConnectionState.OPEN
    assert pair.messages(pair.send({"type": "ping"})) == [{"type": "pong"}]


def test_live_entries_reach_the_client_as_text_frames() -> None:
    hub = Hub(authenticator=OPEN)
    pair = _opened(hub)
    pair.send({"type": "subscribe", "sessionId": "*"})
    for i in range(3):
        hub.publish_log("s", level="info", message=f"m{i}", timestamp="t", now=T0)
    events = pair.pump()
    assert all(isinstance(e, TextMessage) and e.message_finished for e in events)
    got = pair.messages(events)
    assert [m.get("seq") for m in got] == [None, 1, 2, 3]


def test_large_entry_uses_the_64_bit_length() -> None:
    hub = Hub(authenticator=OPEN)
    pair = _opened(hub)
    pair.send({"type": "subscribe", "sessionId": "*"})
    hub.publish_log("s", level="info", message="y" * 70_000, timestamp="t", now=T0)
    got = pair.messages(pair.pump())
    assert got[-1]["message"] == "y" * 70_000


# --- byte-level fuzz -------------------------------------------------------------------------

_VALID_MESSAGES = [
    '{"type":"ping"}',
    '{"type":"subscribe","sessionId":"*"}',
    '{"type":"subscribe","sessionId":"s","since":0}',
    '{"type":"log","sessionId":"s","message":"hello","data":{"a":1}}',
    '{"type":"status","sessionId":"s","status":"stopped"}',
    '{"type":"list"}',
    '{"type":"LOG","data":{"message":"x"}}',
    '{"type":"HEARTBEAT"}',
    '{"type":"unsubscribe","sessionId":"s"}',
    "not json",
]


def _valid_stream(choices: list[int], close: bool) -> bytes:
    data = HANDSHAKE.replace(b"GET / ", b"GET /?containerID=c ")
    for choice in choices:
        if choice == len(_VALID_MESSAGES):
            data += raw_frame(0x9, b"x")
        elif choice == len(_VALID_MESSAGES) + 1:
            data += raw_frame(0x2, b"\x00\x01")
        elif choice == len(_VALID_MESSAGES) + 2:
            data += raw_frame(0x1, b'{"type":', fin=False)
            data += raw_frame(0xA, b"pong")
            data += raw_frame(0x0, b'"ping"}')
        else:
            data += raw_frame(0x1, _VALID_MESSAGES[choice].encode())
    if close:
        data += raw_frame(0x8, struct.pack("!H", 1000) + b"bye")
    return data


def _mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in edits:
        if not out:
            out.append(value)
            continue
        i = position % len(out)
        if kind == 0:
            out[i] = value
        elif kind == 1:
            out.insert(i, value)
        elif kind == 2:
            del out[i]
        elif kind == 3:
            out[i] ^= 1 << (value % 8)
        else:
            del out[i:]
    return bytes(out)


_OUTPUT_BOUND = 256 * 1024
_END_STATES = {
    ConnectionState.HANDSHAKE,
    ConnectionState.HTTP_RESPONSE,
    ConnectionState.OPEN,
    ConnectionState.CLOSING,
    ConnectionState.CLOSED,
}


def _drive(data: bytes, chunk: int) -> None:
    hub = Hub(
        Limits(max_message_size=4096, ping_interval=1.0, ping_timeout=1.0), authenticator=OPEN
    )
    conn = Connection(hub, now=T0)
    now = T0
    closed_events = 0
    for i in range(0, len(data), chunk):
        now += 0.01
        conn.receive_data(data[i : i + chunk], now=now, wall=WALL)
        if i % 7 == 0:
            conn.handle_timeout(now=now, wall=WALL)
        out = conn.data_to_send()
        assert len(out) <= _OUTPUT_BOUND
        if conn.client is not None:
            assert conn.client.outbox.held <= _OUTPUT_BOUND
        conn.bytes_sent(len(out))
        while (event := conn.next_event()) is not None:
            closed_events += isinstance(event, ConnectionClosed)
            if isinstance(event, HTTPRequest):
                conn.send_response(404, [], b"not found")
        assert conn.state in _END_STATES
    # EOF, then every deadline: always ends CLOSED, with one close event
    conn.receive_data(b"", now=now, wall=WALL)
    conn.handle_timeout(now=now + 100, wall=WALL)
    assert len(conn.data_to_send()) <= _OUTPUT_BOUND
    while (event := conn.next_event()) is not None:
        closed_events += isinstance(event, ConnectionClosed)
    assert conn.state is ConnectionState.CLOSED
    assert conn.closed
    assert conn.next_deadline() is None
    assert closed_events == 1
    assert conn.data_to_send() == b""
    assert hub.clients == {}
    assert hub.queued_bytes == 0


_choices = st.lists(st.integers(0, len(_VALID_MESSAGES) + 2), max_size=8)
_edits = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 10_000), st.integers(0, 255)), max_size=4
)


@settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(_choices, st.booleans(), _edits)
def test_fuzz_mutated_streams_whole(choices: list[int], close: bool, edits: Any) -> None:
    _drive(_mutate(_valid_stream(choices, close), edits), chunk=1 << 30)


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(_choices, st.booleans(), _edits)
def test_fuzz_mutated_streams_byte_by_byte(choices: list[int], close: bool, edits: Any) -> None:
    _drive(_mutate(_valid_stream(choices, close), edits), chunk=1)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=512), st.integers(1, 64))
def test_fuzz_random_bytes(data: bytes, chunk: int) -> None:
    _drive(data, chunk=chunk)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=256), st.integers(1, 16))
def test_fuzz_random_bytes_after_a_valid_handshake(data: bytes, chunk: int) -> None:
    _drive(HANDSHAKE + data, chunk=chunk)


_target_chars = st.sampled_from(
    [*"/?&=#[]:@%.+-_~!$'()*,;azAZ09", "%ff", "%", "::1", "//", "http://", "ws://h"]
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(_target_chars, max_size=30).map("".join), st.booleans())
def test_fuzz_request_targets(target: str, upgrade: bool) -> None:
    """Request targets ``urlsplit`` may choke on: refused with 400, never a crash."""
    if upgrade:
        data = request(target or "/")
    else:
        data = f"GET {target} HTTP/1.1\r\nHost: h\r\n\r\n".encode()
    _drive(data, chunk=1 << 30)


def test_an_original_style_viewer_gets_the_wrappers_envelopes() -> None:
    """SPEC §3: a view token with ``containerID`` (no produce role) follows
    that session and receives its entries as the original server sent them,
    replay and live alike; replies stay pcclog's."""
    hub = auth_hub("prod:produce:*,watch:view:*")
    producer = Pair(hub)
    producer.open(target="/?token=prod")
    producer.send({"type": "status", "sessionId": "c1", "status": "running"})
    producer.send(
        {"type": "log", "sessionId": "c1", "level": "warn", "message": "early", "data": {"k": 1}}
    )
    viewer = Pair(hub)
    events = viewer.open(target="/?token=watch&containerID=c1")
    replayed = viewer.messages(events)
    producer.send({"type": "log", "sessionId": "c1", "message": "live"})
    producer.send(
        {"type": "status", "sessionId": "c1", "status": "error", "metadata": {"exitCode": 2}}
    )
    live = viewer.messages(viewer.pump())
    assert replayed == [  # the snapshot, then history
        {"type": "STATUS", "containerID": "c1", "data": {"status": "running"}},
        {"type": "STATUS", "containerID": "c1", "data": {"status": "running"}},
        {
            "type": "LOG",
            "containerID": "c1",
            "timestamp": replayed[2]["timestamp"],
            "data": {"level": "warn", "message": "early", "metadata": {"k": 1}},
        },
    ]
    assert [m["type"] for m in live] == ["LOG", "COMPLETE"]
    assert live[0]["data"] == {"level": "info", "message": "live"}
    assert live[1] == {"type": "COMPLETE", "containerID": "c1", "data": {"exitCode": 2}}
    assert viewer.messages(viewer.send({"type": "ping"})) == [{"type": "pong"}]
    # A producer token with a containerID stays a producer, not a viewer.
    assert producer.conn.client is not None and not producer.conn.client.envelopes

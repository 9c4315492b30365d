"""Hardening: hostile, broken and slow peers against the real ``pcclog serve``.

Each test drives the real server process (``start_server``) over loopback
with ``rawws`` (a raw-socket client that can send any bytes) and checks the
contract of SPEC §3 (HTTP refusals, close codes, error codes) and §6 (a bad
or slow peer never crashes the server, never leaks memory and never costs
another client a message). Waits are conditions with deadlines; the only
timed pauses pace a deliberate trickle, a producer's rate or the soak's churn.

Tests named after a bug they found say so in their docstring; the failing
inputs the fuzzer found are replayed by ``test_fuzz_server.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import psutil
import pytest
from conftest import ServerProcess, wait_for
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from rawws import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeRefused,
    RawWebSocket,
    close_payload,
    connect_socket,
    encode_frame,
    handshake_request,
    reset,
)
from websockets.asyncio.client import connect as ws_async_connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

TOKEN = "test-token"
FULL = os.environ.get("PCCLOG_FULL_SIZE") == "1"
MiB = 1024 * 1024
PING = b'{"type":"ping"}'


# --- helpers --------------------------------------------------------------------------


def metric(server: ServerProcess, name: str) -> float:
    """One unlabelled sample of ``/metrics`` (``pcclog_connections`` is the gauge)."""
    status, body = server.get("/metrics")
    assert status == 200, (status, body)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def rss(server: ServerProcess) -> int:
    return int(psutil.Process(server.proc.pid).memory_info().rss)


def num_fds(server: ServerProcess) -> int:
    return int(psutil.Process(server.proc.pid).num_fds())


def no_connections(server: ServerProcess, timeout: float = 5.0) -> None:
    wait_for(
        lambda: metric(server, "pcclog_connections") == 0,
        timeout=timeout,
        what="the pcclog_connections gauge to return to 0",
    )


def healthy(server: ServerProcess) -> None:
    assert server.proc.poll() is None, f"server exited:\n{server.logs()[-3000:]}"
    assert server.get("/healthz") == (200, b"ok\n")


def internal_errors(server: ServerProcess) -> list[dict[str, Any]]:
    """Records the server logs when a connection task raised (a bug)."""
    return [r for r in server.records() if r.get("level") in ("error", "fatal")]


def log_frame(session: str, message: str, **extra: Any) -> bytes:
    body = {"type": "log", "sessionId": session, "level": "info", "message": message, **extra}
    return encode_frame(OP_TEXT, json.dumps(body).encode())


def viewer(server: ServerProcess, *sessions: str, token: str = TOKEN, **kw: Any) -> RawWebSocket:
    """A connected raw viewer subscribed to ``sessions`` (each must exist)."""
    ws = RawWebSocket.connect(server.port, token=token, auto_pong=True, **kw)
    for session in sessions:
        ws.send_json({"type": "subscribe", "sessionId": session, "tail": 0})
    before = ws.barrier()
    errors = [m for m in before if m["type"] == "error"]
    assert not errors, errors
    return ws


def producer(server: ServerProcess, *sessions: str, token: str = TOKEN) -> RawWebSocket:
    """A connected raw producer; each session is created with a ``running`` status."""
    ws = RawWebSocket.connect(server.port, token=token, auto_pong=True)
    for session in sessions:
        ws.send_json({"type": "status", "sessionId": session, "status": "running"})
    errors = [m for m in ws.barrier() if m["type"] == "error"]
    assert not errors, errors
    return ws


def collect_until_seq(
    ws: RawWebSocket,
    session: str,
    last: int,
    timeout: float = 30.0,
    progress: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Every message of ``session`` until its entry (or a gap ending at)
    ``last``; ``progress[0]`` follows the highest seq seen."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        message = ws.recv_message(max(1e-3, deadline - time.monotonic()))
        if message.get("sessionId") != session:
            assert message["type"] != "error", message
            continue
        out.append(message)
        seq = message.get("toSeq", message.get("seq", 0))
        if progress is not None:
            progress[0] = seq
        if seq >= last:
            return out


def assert_contiguous(messages: list[dict[str, Any]], first: int, last: int) -> int:
    """Logs and gaps cover ``first..last`` exactly once, in order; returns
    how many entries the gaps covered."""
    expected = first
    skipped = 0
    for message in messages:
        if message["type"] in ("log", "status") and "seq" in message:
            assert message["seq"] == expected, (expected, message)
            expected += 1
        elif message["type"] == "gap":
            assert message["fromSeq"] == expected, (expected, message)
            assert message["toSeq"] >= message["fromSeq"], message
            assert message["reason"] == "slow_consumer", message
            skipped += message["toSeq"] - message["fromSeq"] + 1
            expected = message["toSeq"] + 1
    assert expected == last + 1, (expected, last)
    return skipped


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_jwt(header: dict[str, Any], claims: dict[str, Any], hmac_key: bytes | None) -> str:
    """A JWT assembled by hand: unsigned (``hmac_key=None``) or HMAC-SHA256."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    if hmac_key is None:
        return signing_input + "."
    mac = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(mac)


# --- 1. Origin ---------------------------------------------------------------------------


def test_origin_not_on_the_allowlist_is_refused_403_without_upgrade(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"ALLOWED_ORIGINS": "https://good.example,http://localhost:3000"})
    refused = [
        "https://evil.example",
        "https://GOOD.example",  # exact match, not case-folded
        "https://good.example.evil.example",
        "https://good.example/",
        "http://good.example",
        "null",
    ]
    for origin in refused:
        with RawWebSocket.open(server.port) as ws:
            ws.send(handshake_request("/", token=TOKEN, origin=origin))
            response = ws.read_response()
            assert response.status == 403, (origin, response)
            assert "sec-websocket-accept" not in response.headers
            assert response.header("upgrade") is None
            body = ws.read_to_eof()  # the body, then the server closes: no frames
            assert b"origin not allowed" in body, body
    for origin in ("https://good.example", "http://localhost:3000", None):
        with RawWebSocket.connect(server.port, token=TOKEN, origin=origin) as ws:
            assert ws.barrier() == []
    healthy(server)


# --- 2. Oversized and slow request heads ------------------------------------------------


def _handshake_with_headers(total: int) -> bytes:
    """An otherwise valid upgrade request with exactly ``total`` header fields."""
    base = handshake_request("/", token=TOKEN)
    present = base.count(b"\r\n") - 2  # minus the request line's and the blank line's
    extra = [(f"X-Filler-{i}", "x") for i in range(total - present)]
    request = handshake_request("/", token=TOKEN, headers=extra)
    assert request.count(b"\r\n") - 2 == total
    return request


OVERSIZED_HEADS = {
    "request line over 16 KiB": (
        b"GET /" + b"a" * 17_000 + b" HTTP/1.1\r\n" + handshake_request("/").split(b"\r\n", 1)[1]
    ),
    "header over 16 KiB": handshake_request("/", token=TOKEN, headers=[("X-Big", "b" * 17_000)]),
    "129 header fields": _handshake_with_headers(129),
    "endless request line": b"GET /" + b"c" * 40_000,
    "endless header": b"GET / HTTP/1.1\r\nX-Endless: " + b"d" * 40_000,
    "plain GET over 16 KiB": b"GET /healthz HTTP/1.1\r\nX-Big: " + b"e" * 17_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", OVERSIZED_HEADS.values(), ids=OVERSIZED_HEADS.keys())
def test_oversized_request_head_is_refused_and_closed(
    start_server: Callable[..., ServerProcess], request_bytes: bytes
) -> None:
    server = start_server()
    with RawWebSocket.open(server.port) as ws:
        try:
            ws.send(request_bytes)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before we finished: the response is still readable
        response = ws.read_response()
        assert response.status in (431, 400), response
        ws.read_to_eof()
    assert not internal_errors(server)
    healthy(server)


def test_limits_are_inclusive_128_headers_and_a_15_kib_head_are_accepted(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    for request in (
        _handshake_with_headers(128),
        handshake_request("/", token=TOKEN, headers=[("X-Big", "f" * 15_000)]),
    ):
        with RawWebSocket.open(server.port) as ws:
            ws.send(request)
            assert ws.read_response().status == 101
            assert ws.barrier() == []


def test_request_target_that_urlsplit_rejects_gets_400(
    start_server: Callable[..., ServerProcess],
) -> None:
    """``GET http://[x/`` is a valid h11 request target, but ``urlsplit``
    raises ``ValueError("Invalid IPv6 URL")`` on it: that must be a 400,
    not an internal error that drops the connection without a response."""
    server = start_server()
    for request in (
        handshake_request("http://[x/", token=TOKEN),
        b"GET http://[x/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET //]/ HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        with RawWebSocket.open(server.port) as ws:
            ws.send(request)
            response = ws.read_response()
            assert response.status == 400, response
            ws.read_to_eof()
    assert not internal_errors(server), internal_errors(server)
    healthy(server)


def test_head_response_has_one_content_length(start_server: Callable[..., ServerProcess]) -> None:
    """``HEAD /healthz`` must not carry two conflicting Content-Length fields
    (RFC 9110 §8.6; h11 and most proxies reject such a response)."""
    server = start_server()
    with RawWebSocket.open(server.port) as ws:
        ws.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = ws.read_response()
        assert response.status == 200
        lengths = [
            line
            for line in response.raw_head.split(b"\r\n")[1:]
            if line.lower().startswith(b"content-length:")
        ]
        assert len(lengths) == 1, response.raw_head
        assert ws.read_to_eof() == b""


def test_head_with_bare_lf_line_endings_is_not_called_too_large(
    start_server: Callable[..., ServerProcess],
) -> None:
    """h11 accepts a lone LF as a line ending (RFC 9112 §2.2 allows it); a
    40-byte head must then be answered, or refused as malformed, but not
    with "431 request head exceeds 16384 bytes" (found by the fuzzer:
    tests/fuzz_corpus/2f85fef1073cc839.bin)."""
    server = start_server()
    for request in (
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\n\r\n",
        b"HEAD /healthz HTTP/1.1\nHost: x\n\n",
    ):
        with RawWebSocket.open(server.port) as ws:
            ws.send(request)
            response = ws.read_response()
            assert response.status in (200, 400), (request, response)
            rest = ws.read_to_eof()
            if request.startswith(b"HEAD"):
                assert rest == b"", rest  # no body in a response to HEAD
    healthy(server)


PARTIAL_HEADS = [
    b"G",
    b"GET / HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
    handshake_request("/", token=TOKEN)[:-2],  # all but the final CRLF
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
]


def test_partial_request_head_is_closed_at_the_open_timeout(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Fast variant: incomplete heads are dropped ~10 s (the core's
    ``open_timeout``) after the accept, while other clients are served."""
    server = start_server()
    socks = []
    started = time.monotonic()
    for head in PARTIAL_HEADS:
        sock = connect_socket(server.port)
        sock.sendall(head)
        socks.append(sock)
    healthy(server)  # the stalled ones cost nobody anything
    with RawWebSocket.connect(server.port, token=TOKEN) as ws:
        assert ws.barrier() == []
    for sock in socks:
        sock.settimeout(max(0.1, started + 13.0 - time.monotonic()))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        sock.close()
    elapsed = time.monotonic() - started
    assert 9.0 <= elapsed <= 13.0, elapsed
    assert not internal_errors(server)
    healthy(server)


@pytest.mark.slow
def test_trickled_handshake_is_closed_at_the_open_timeout(
    start_server: Callable[..., ServerProcess],
) -> None:
    """One byte every 0.5 s: the open timeout counts from the accept, not
    from the last byte, so a slowloris cannot hold the connection."""
    server = start_server()
    request = handshake_request("/", token=TOKEN)
    sock = connect_socket(server.port)
    started = time.monotonic()
    closed_at = None
    for i in range(60):  # 30 s at most; the server must close long before
        try:
            sock.send(request[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed_at = time.monotonic()
            break
        sock.settimeout(0.5)  # the pace of the trickle, and the close check
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            data = b""
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data
        closed_at = time.monotonic()
        break
    sock.close()
    assert closed_at is not None, "the server kept a trickled handshake open for 30 s"
    assert 9.0 <= closed_at - started <= 12.0, closed_at - started
    healthy(server)


# --- 3. Protocol errors: close 1002 ------------------------------------------------------


PROTOCOL_ERRORS = {
    "unmasked text frame": encode_frame(OP_TEXT, PING, mask=False),
    "unmasked ping": encode_frame(OP_PING, b"", mask=False),
    "rsv1": encode_frame(OP_TEXT, PING, rsv=0b100),
    "rsv2": encode_frame(OP_TEXT, PING, rsv=0b010),
    "rsv3": encode_frame(OP_TEXT, PING, rsv=0b001),
    "rsv1 on a ping": encode_frame(OP_PING, b"", rsv=0b100),
    "opcode 0x3": encode_frame(0x3, b"x"),
    "opcode 0x7": encode_frame(0x7, b""),
    "opcode 0xb": encode_frame(0xB, b""),
    "opcode 0xf": encode_frame(0xF, b"x"),
    "ping of 126 bytes": encode_frame(OP_PING, b"p" * 126),
    "pong of 126 bytes": encode_frame(OP_PONG, b"p" * 126),
    "close of 126 bytes": encode_frame(OP_CLOSE, close_payload(1000, "r" * 124)),
    "control frame announcing 64 KiB": encode_frame(OP_PING, b"", length=65_536),
    "fragmented ping": encode_frame(OP_PING, b"a", fin=False) + encode_frame(OP_CONT, b"b"),
    "fragmented close": encode_frame(OP_CLOSE, close_payload(1000), fin=False),
    "continuation without a start": encode_frame(OP_CONT, PING),
    "new text inside a fragmented text": (
        encode_frame(OP_TEXT, b'{"type"', fin=False) + encode_frame(OP_TEXT, b':"ping"}')
    ),
    "16-bit length for 15 bytes": encode_frame(OP_TEXT, PING, length_form=16),
    "64-bit length for 15 bytes": encode_frame(OP_TEXT, PING, length_form=64),
    "64-bit length with the MSB set": encode_frame(OP_TEXT, b"", length=1 << 63, length_form=64),
    "close with a 1-byte payload": encode_frame(OP_CLOSE, b"\x03"),
    "close with code 1005": encode_frame(OP_CLOSE, close_payload(1005)),
    "close with code 999": encode_frame(OP_CLOSE, close_payload(999)),
    "close with reserved code 2000": encode_frame(OP_CLOSE, close_payload(2000)),
}


@pytest.mark.parametrize("frames", PROTOCOL_ERRORS.values(), ids=PROTOCOL_ERRORS.keys())
def test_protocol_violation_closes_1002(
    start_server: Callable[..., ServerProcess], frames: bytes
) -> None:
    server = start_server()
    with RawWebSocket.connect(server.port, token=TOKEN) as ws:
        assert ws.barrier() == []
        ws.send(frames)
        code, before = ws.expect_close()
        assert code == 1002, (code, before)
        assert all(f.opcode != OP_TEXT or f.json()["type"] != "pong" for f in before), before
        ws.wait_eof()
    no_connections(server)
    assert not internal_errors(server)
    healthy(server)


# --- 4. Oversized messages: 1009 ----------------------------------------------------------


VIEWER_TOKENS = f"{TOKEN},watch-token-0123:view:*"


def test_frame_announcing_2_63_minus_1_bytes_closes_1009_without_allocating(
    start_server: Callable[..., ServerProcess],
) -> None:
    # A viewer's (or an unauthenticated client's) oversized message closes
    # it; a producer's is skipped (test_a_producers_oversized_messages_...).
    server = start_server(token=VIEWER_TOKENS)
    with RawWebSocket.connect(server.port, token="watch-token-0123") as ws:
        assert ws.barrier() == []
        before = rss(server)
        header = encode_frame(OP_TEXT, b"", length=(1 << 63) - 1, length_form=64)
        try:
            ws.send(header + os.urandom(256 * 1024))
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, frames = ws.expect_close()
        assert code == 1009, (code, frames)
        errors = [f.json() for f in frames if f.opcode == OP_TEXT]
        assert [e["code"] for e in errors] == ["MESSAGE_TOO_LARGE"], errors
        assert rss(server) - before < 8 * MiB
    no_connections(server)
    healthy(server)


FRAGMENTED_TOO_BIG = {
    "two halves past the limit": (
        encode_frame(OP_TEXT, b" " * 600, fin=False) + encode_frame(OP_CONT, b" " * 600)
    ),
    "1025 one-byte fragments": (
        encode_frame(OP_TEXT, b" ", fin=False)
        + encode_frame(OP_CONT, b" ", fin=False) * 1023
        + encode_frame(OP_CONT, b" ")
    ),
    "a continuation announcing 2^62": (
        encode_frame(OP_TEXT, b" " * 1000, fin=False)
        + encode_frame(OP_CONT, b"", length=1 << 62, length_form=64)
    ),
    "one frame of limit + 1": encode_frame(OP_TEXT, b" " * 1025),
    "binary past the limit": encode_frame(OP_BINARY, b"\0" * 1025),
}


@pytest.mark.parametrize("frames", FRAGMENTED_TOO_BIG.values(), ids=FRAGMENTED_TOO_BIG.keys())
@pytest.mark.parametrize("who", ["viewer", "unauthenticated"])
def test_message_past_max_message_size_closes_1009(
    start_server: Callable[..., ServerProcess], frames: bytes, who: str
) -> None:
    server = start_server(env={"MAX_MESSAGE_SIZE": "1024"}, token=VIEWER_TOKENS)
    token = "watch-token-0123" if who == "viewer" else None
    with RawWebSocket.connect(server.port, token=token) as ws:
        before = rss(server)
        ws.send(frames)
        code, received = ws.expect_close()
        assert code == 1009, (code, received)
        assert [f.json()["code"] for f in received if f.opcode == OP_TEXT] == ["MESSAGE_TOO_LARGE"]
        assert rss(server) - before < 8 * MiB
    healthy(server)


SKIPPABLE = {k: v for k, v in FRAGMENTED_TOO_BIG.items() if "2^62" not in k}


@pytest.mark.parametrize("frames", SKIPPABLE.values(), ids=SKIPPABLE.keys())
def test_a_producers_oversized_messages_are_skipped_and_its_next_ones_arrive(
    start_server: Callable[..., ServerProcess], frames: bytes
) -> None:
    """SPEC §6: answered with MESSAGE_TOO_LARGE (binary: INVALID_MESSAGE, as
    any binary message) and skipped; the connection stays open and its exit
    status still arrives."""
    server = start_server(env={"MAX_MESSAGE_SIZE": "1024"})
    with RawWebSocket.connect(server.port, token=TOKEN) as ws:
        before = rss(server)
        ws.send(frames + log_frame("job", "after"))
        ws.send_json({"type": "status", "sessionId": "job", "status": "stopped"})
        replies = ws.barrier()
        codes = [m["code"] for m in replies if m["type"] == "error"]
        assert codes in (["MESSAGE_TOO_LARGE"], ["INVALID_MESSAGE"]), replies
        assert rss(server) - before < 8 * MiB
    with RawWebSocket.connect(server.port, token=TOKEN) as check:
        check.send_json({"type": "subscribe", "sessionId": "job", "since": 0})
        got = [m for m in check.barrier() if "seq" in m]
        assert [m.get("message", m.get("status")) for m in got] == ["after", "stopped"]
    healthy(server)


def test_message_at_max_message_size_is_read_and_control_frames_do_not_count(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"MAX_MESSAGE_SIZE": "1024"})
    padded = b'{"type":"ping","pad":"' + b"x" * (1024 - 24) + b'"}'
    assert len(padded) == 1024
    with RawWebSocket.connect(server.port, token=TOKEN) as ws:
        ws.send_text(padded)
        assert ws.recv_message() == {"type": "pong"}
        # Exactly the limit again, fragmented, with a 100-byte ping in between.
        ws.send(
            encode_frame(OP_TEXT, padded[:500], fin=False)
            + encode_frame(OP_PING, b"p" * 100)
            + encode_frame(OP_CONT, padded[500:1000], fin=False)
            + encode_frame(OP_CONT, padded[1000:])
        )
        pong = ws.recv_frame()
        assert pong is not None and (pong.opcode, pong.payload) == (OP_PONG, b"p" * 100)
        assert ws.recv_message() == {"type": "pong"}


# --- 5. Invalid UTF-8, binary ---------------------------------------------------------------


INVALID_UTF8 = {
    "0xff byte": encode_frame(OP_TEXT, b'{"type":"ping","x":"\xff"}'),
    "overlong slash": encode_frame(OP_TEXT, b'{"type":"ping","x":"\xc0\xaf"}'),
    "UTF-16 surrogate": encode_frame(OP_TEXT, b'{"type":"ping","x":"\xed\xa0\x80"}'),
    "past U+10FFFF": encode_frame(OP_TEXT, b"\xf4\x90\x80\x80"),
    "truncated at the end": encode_frame(OP_TEXT, b'{"type":"ping"}\xe2\x82'),
    "split across fragments": (
        encode_frame(OP_TEXT, b'{"x":"\xe2\x82', fin=False) + encode_frame(OP_CONT, b'("}')
    ),
    "invalid close reason": encode_frame(OP_CLOSE, close_payload(1000) + b"\xff\xfe"),
}


@pytest.mark.parametrize("frames", INVALID_UTF8.values(), ids=INVALID_UTF8.keys())
def test_invalid_utf8_closes_1007(
    start_server: Callable[..., ServerProcess], frames: bytes
) -> None:
    server = start_server()
    with RawWebSocket.connect(server.port, token=TOKEN) as ws:
        ws.send(frames)
        code, before = ws.expect_close()
        assert code == 1007, (code, before)
    healthy(server)


def test_binary_message_gets_invalid_message_and_the_connection_stays(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    with RawWebSocket.connect(server.port, token=TOKEN) as ws:
        ws.send_frame(OP_BINARY, PING)
        ws.send(encode_frame(OP_BINARY, b"\x00\x01", fin=False) + encode_frame(OP_CONT, b"\x02"))
        before = ws.barrier()
        assert [m["code"] for m in before] == ["INVALID_MESSAGE", "INVALID_MESSAGE"], before
        assert "binary" in before[0]["message"]


# --- 6. Authentication --------------------------------------------------------------------


def test_no_auth_before_the_deadline_closes_1008(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"AUTH_TIMEOUT": "300"})
    started = time.monotonic()
    with (
        RawWebSocket.connect(server.port) as silent,
        RawWebSocket.connect(server.port) as chatty,  # talks, but never authenticates
        RawWebSocket.connect(server.port, token=TOKEN, auto_pong=True) as authenticated,
        RawWebSocket.connect(server.port, auto_pong=True) as late,
    ):
        late.send_json({"type": "auth", "token": TOKEN})
        chatty.send_json({"type": "subscribe", "sessionId": "s"})
        assert chatty.recv_message()["code"] == "UNAUTHORIZED"
        code, _ = silent.expect_close(timeout=3)
        assert code == 1008
        assert time.monotonic() - started >= 0.29
        assert chatty.expect_close(timeout=3)[0] == 1008
        # Past the deadline, the authenticated ones are still served.
        assert authenticated.barrier() == []
        assert late.barrier() == []
    assert metric(server, "pcclog_auth_failures_total") >= 2


JWT_SECRET = "hardening-hs256-secret-that-is-long-enough!"


@pytest.fixture(scope="module")
def rsa_key() -> tuple[Any, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, pem


def _refused_jwts(sign: Callable[[dict[str, Any]], str], now: int) -> dict[str, str]:
    good = {"exp": now + 600, "roles": ["view"], "sessions": ["*"]}
    return {
        "alg none": forged_jwt({"alg": "none", "typ": "JWT"}, good, None),
        "alg None": forged_jwt({"alg": "None", "typ": "JWT"}, good, None),
        "no exp": sign({"roles": ["view"]}),
        "expired": sign({**good, "exp": now - 30}),
        "future nbf": sign({**good, "nbf": now + 600}),
        "exp not a number": sign({**good, "exp": "9999999999"}),
        "tampered payload": (lambda t: t[: t.index(".") + 2] + "A" + t[t.index(".") + 3 :])(
            sign(good)
        ),
    }


def _assert_refused(server: ServerProcess, token: str, what: str) -> None:
    # As an auth message: an UNAUTHORIZED error, and still not authenticated.
    with RawWebSocket.connect(server.port) as ws:
        ws.send_json({"type": "auth", "token": token})
        reply = ws.recv_message()
        assert reply["type"] == "error" and reply["code"] == "UNAUTHORIZED", (what, reply)
        assert token not in reply["message"]
        ws.send_json({"type": "list"})
        assert ws.recv_message()["code"] == "UNAUTHORIZED", what
    # On the handshake: refused with 401 before the upgrade.
    with pytest.raises(HandshakeRefused) as refused:
        RawWebSocket.connect(server.port, token=token)
    assert refused.value.response.status == 401, what


def _assert_accepted(server: ServerProcess, token: str) -> None:
    with RawWebSocket.connect(server.port) as ws:
        ws.send_json({"type": "auth", "token": token})
        ws.send_json({"type": "list"})
        assert ws.recv_message()["type"] == "sessions"


def test_hs256_server_refuses_forged_and_out_of_date_jwts(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"AUTH_JWT_SECRET": JWT_SECRET})
    now = int(time.time())
    cases = _refused_jwts(lambda claims: jwt.encode(claims, JWT_SECRET, "HS256"), now)
    cases["wrong secret"] = jwt.encode({"exp": now + 600}, JWT_SECRET + "x", "HS256")
    for what, token in cases.items():
        _assert_refused(server, token, what)
    _assert_accepted(
        server, jwt.encode({"exp": now + 600, "roles": ["view"], "sessions": ["*"]}, JWT_SECRET)
    )
    healthy(server)


def test_rs256_server_refuses_hs256_signed_with_its_public_key(
    start_server: Callable[..., ServerProcess], rsa_key: tuple[Any, str]
) -> None:
    key, pem = rsa_key
    server = start_server(env={"AUTH_JWT_PUBLIC_KEY": pem})
    now = int(time.time())
    cases = _refused_jwts(lambda claims: jwt.encode(claims, key, "RS256"), now)
    good = {"exp": now + 600, "roles": ["view"], "sessions": ["*"]}
    cases["HS256 keyed with the public PEM"] = forged_jwt(
        {"alg": "HS256", "typ": "JWT"}, good, pem.encode()
    )
    cases["HS256 keyed with the PEM body"] = forged_jwt(
        {"alg": "HS256", "typ": "JWT"}, good, "".join(pem.splitlines()[1:-1]).encode()
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases["RS256 by another key"] = jwt.encode(good, other, "RS256")
    for what, token in cases.items():
        _assert_refused(server, token, what)
    _assert_accepted(server, jwt.encode(good, key, "RS256"))
    healthy(server)


def test_token_expiring_mid_stream_closes_1008(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"AUTH_JWT_SECRET": JWT_SECRET})
    token = jwt.encode(
        {"exp": int(time.time()) + 2, "roles": ["view"], "sessions": ["*"]}, JWT_SECRET
    )
    source = producer(server, "expiring")
    started = time.monotonic()
    with RawWebSocket.connect(server.port, token=token, auto_pong=True) as ws:
        ws.send_json({"type": "subscribe", "sessionId": "expiring", "tail": 0})
        assert [m["type"] for m in ws.barrier()] == ["status"]
        source.send(log_frame("expiring", "while valid"))
        assert ws.recv_message()["message"] == "while valid"
        code, _ = ws.expect_close(timeout=5)
        assert code == 1008
        assert 0.5 <= time.monotonic() - started <= 4.0
        ws.send_close(1008)  # the echo; then the server closes the TCP connection
        ws.wait_eof(timeout=2)
    source.close()
    healthy(server)


def test_tokens_never_appear_in_the_server_log(
    start_server: Callable[..., ServerProcess],
) -> None:
    valid = "url-valid-Zq81xvT3"
    invalid = "url-invalid-Kw55pbN7"
    jwt_like = "eyJhbGciOiJub25lIn0.eyJleHAiOjF9.c2lnLWJ5dGVz"
    server = start_server(env={"LOG_LEVEL": "debug"}, token=f"{TOKEN},{valid}")
    secrets_ = [valid, invalid, jwt_like]
    for secret in secrets_:
        for path in (f"/?token={secret}", f"/ws?token={secret}&containerID=c1"):
            try:
                with RawWebSocket.connect(server.port, path) as ws:
                    ws.barrier()
            except HandshakeRefused as exc:
                assert exc.response.status == 401
        try:
            with RawWebSocket.connect(server.port, token=secret) as ws:
                ws.barrier()
        except HandshakeRefused:
            pass
        with RawWebSocket.connect(server.port) as ws:
            ws.send_json({"type": "auth", "token": secret})
            ws.send_json({"type": "subscribe", "sessionId": "s", "auth": {"token": secret}})
            for message in ws.barrier():
                assert secret not in json.dumps(message)
        for path in (f"/healthz?token={secret}", f"/api/sessions?token={secret}", f"/x?t={secret}"):
            server.get(path, headers={"Authorization": f"Bearer {secret}"})
    assert server.stop() == 0
    logs = server.logs()
    assert "connection open" in logs and '"http"' in logs  # debug logging was on
    for secret in secrets_:
        assert secret not in logs, f"{secret} leaked into the log"


# --- 7. Authorization: subscriptions and producers -------------------------------------------


def test_subscriptions_beyond_max_subscriptions_are_refused(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"MAX_SUBSCRIPTIONS": "3"})
    with producer(server, "a", "b", "c", "d") as source, viewer(server, "a", "b", "c") as ws:
        for session in ("d", "*"):
            ws.send_json({"type": "subscribe", "sessionId": session})
            reply = ws.recv_message()
            assert reply["code"] == "TOO_MANY_SUBSCRIPTIONS", reply
            assert reply["sessionId"] == session
        # Re-subscribing to one it has is not a new subscription.
        ws.send_json({"type": "subscribe", "sessionId": "a", "tail": 0})
        assert ws.recv_message()["type"] == "status"
        source.send(log_frame("d", "not for this viewer"))
        source.barrier()
        assert ws.barrier() == []
        ws.send_json({"type": "unsubscribe", "sessionId": "a"})
        ws.send_json({"type": "subscribe", "sessionId": "d", "tail": 1})
        replay = ws.barrier()
        assert [m["type"] for m in replay] == ["status", "log"], replay


def test_viewer_cannot_subscribe_outside_its_globs(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=f"{TOKEN},viewer:view:team-*")
    with (
        producer(server, "team-1", "other-1") as source,
        RawWebSocket.connect(server.port, token="viewer", auto_pong=True) as ws,
    ):
        ws.send_json({"type": "subscribe", "sessionId": "other-1"})
        reply = ws.recv_message()
        assert (reply["type"], reply["code"], reply["sessionId"]) == (
            "error",
            "UNAUTHORIZED",
            "other-1",
        )
        ws.send_json({"type": "subscribe", "sessionId": "*", "tail": 0})
        snapshots = ws.barrier()
        assert [m["sessionId"] for m in snapshots] == ["team-1"], snapshots
        source.send(log_frame("other-1", "secret") + log_frame("team-1", "public"))
        source.send(encode_frame(OP_TEXT, json.dumps({"type": "list"}).encode()))
        source.barrier()
        message, before = ws.recv_until(lambda m: m["type"] == "log")
        assert message["sessionId"] == "team-1" and not before
        ws.send_json({"type": "list"})
        listed = ws.recv_message()
        assert [s["sessionId"] for s in listed["sessions"]] == ["team-1"]
        assert ws.barrier() == []  # "secret" never arrived
        ws.send_json({"type": "log", "sessionId": "team-1", "message": "viewers cannot write"})
        assert ws.recv_message()["code"] == "UNAUTHORIZED"


def test_producer_cannot_write_outside_its_globs(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=f"{TOKEN},prod:produce:team-*")
    with (
        viewer(server) as watcher,
        RawWebSocket.connect(server.port, token="prod", auto_pong=True) as prod,
        RawWebSocket.connect(
            server.port, "/?token=prod&containerID=other-2", auto_pong=True
        ) as wrapper,
    ):
        watcher.send_json({"type": "subscribe", "sessionId": "*", "tail": 0})
        watcher.send_json({"type": "subscribe", "sessionId": "other-1"})  # not created yet
        assert watcher.recv_message()["code"] == "SESSION_NOT_FOUND"
        prod.send(log_frame("other-1", "forged"))
        prod.send_json({"type": "status", "sessionId": "other-1", "status": "error"})
        for reply in prod.barrier():
            assert (reply["code"], reply["sessionId"]) == ("UNAUTHORIZED", "other-1")
        wrapper.send_json(
            {"type": "LOG", "data": {"level": "info", "message": "forged", "metadata": {}}}
        )
        wrapper.send_json({"type": "COMPLETE", "data": {"exitCode": 0}})
        assert [m["code"] for m in wrapper.barrier()] == ["UNAUTHORIZED", "UNAUTHORIZED"]
        # Nothing was published: the session does not exist, and the first
        # entry a viewer of it gets is the first legitimate one.
        assert watcher.barrier() == []
        assert (
            json.loads(server.get("/api/sessions", {"Authorization": f"Bearer {TOKEN}"})[1])[
                "sessions"
            ]
            == []
        )
        prod.send(log_frame("team-1", "allowed"))
        assert prod.barrier() == []
        with producer(server) as admin:
            admin.send(log_frame("other-1", "legit"))
            admin.barrier()
        got = watcher.barrier()
        logs = [(m["sessionId"], m["seq"], m["message"]) for m in got if m["type"] == "log"]
        assert logs == [("team-1", 1, "allowed"), ("other-1", 1, "legit")], got


# --- 8. Floods -----------------------------------------------------------------------------


def _flood(port: int, count: int) -> tuple[int, int, int | None]:
    """``count`` pings as fast as possible; returns (pongs, RATE_LIMITED, close code)."""
    ws = RawWebSocket.connect(port, token=TOKEN)
    try:
        try:
            ws.send(encode_frame(OP_TEXT, PING) * count)
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, frames = ws.expect_close(timeout=20)
        replies = [f.json() for f in frames if f.opcode == OP_TEXT]
        pongs = sum(1 for m in replies if m["type"] == "pong")
        limited = sum(1 for m in replies if m.get("code") == "RATE_LIMITED")
        assert pongs + limited == len(replies), [m for m in replies if m["type"] != "pong"][:3]
        return pongs, limited, code
    finally:
        ws.close()


def test_message_flood_is_rate_limited_then_closed_and_costs_others_nothing(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    entries = 3000
    with (
        producer(server, "steady") as source,
        viewer(server, "steady") as watcher,
        ThreadPoolExecutor(6) as pool,
    ):
        floods = [pool.submit(_flood, server.port, 5000) for _ in range(4)]
        reading = pool.submit(collect_until_seq, watcher, "steady", entries + 1)
        for i in range(entries):
            source.send(log_frame("steady", f"entry {i}"))
        assert source.barrier() == []
        for flood in floods:
            pongs, limited, code = flood.result(timeout=30)
            assert code == 1008, (pongs, limited, code)
            assert limited >= 1 and pongs >= 300, (pongs, limited)
            assert pongs + limited < 5000  # it was cut off, not served
        got = reading.result(timeout=30)
    assert assert_contiguous(got, 2, entries + 1) == 0
    assert [m["message"] for m in got] == [f"entry {i}" for i in range(entries)]
    assert metric(server, "pcclog_rate_limited_total") >= 4
    no_connections(server)
    healthy(server)


# --- 10. Slow consumers ------------------------------------------------------------------


def _publish(
    source: RawWebSocket,
    session: str,
    count: int,
    size: int,
    *,
    progress: list[int] | None = None,
    first_seq: int = 2,
    window: int = 500,
) -> None:
    """``count`` entries of ``size`` bytes, in batches as fast as the socket
    takes them. With ``progress`` (a keeping-up viewer's last seq), stay at
    most ``window`` entries ahead of it, so that viewer is never the slow one."""
    pad = "p" * size
    batch: list[bytes] = []
    for i in range(count):
        batch.append(log_frame(session, f"{i} {pad}"))
        if len(batch) == 500 or i == count - 1:
            if progress is not None:
                ahead = first_seq + i - len(batch) - window
                wait_for(
                    lambda ahead=ahead: progress[0] >= ahead, timeout=30, what="the fast viewer"
                )
            source.send(b"".join(batch))
            batch.clear()


def test_viewer_that_stops_reading_gets_a_gap_and_costs_others_nothing(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"CONNECTION_BUFFER": "1048576", "HISTORY_LINES": "1000"})
    entries, size = 40_000, 1000
    with (
        producer(server, "firehose") as source,
        viewer(server, "firehose") as fast,
        viewer(server, "firehose", rcvbuf=4096) as slow,
    ):
        baseline = rss(server)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], rss(server))

        with ThreadPoolExecutor(2) as pool:
            sampler = pool.submit(sample)
            progress = [0]
            reading = pool.submit(collect_until_seq, fast, "firehose", entries + 1, 60.0, progress)
            _publish(source, "firehose", entries, size, progress=progress)
            assert source.barrier(timeout=30) == []  # the producer was never held up
            got = reading.result(timeout=60)
            done.set()
            sampler.result()
        assert assert_contiguous(got, 2, entries + 1) == 0
        # ~42 MB went through; the server holds at most CONNECTION_BUFFER per
        # viewer (and HISTORY_LINES entries), not the stream.
        assert peak[0] - baseline < 16 * MiB, (peak[0] - baseline) / MiB
        # The slow viewer reads again: what it missed is one gap (or a few),
        # and entries plus gaps cover every seq exactly once.
        late = collect_until_seq(slow, "firehose", entries + 1, timeout=60)
        skipped = assert_contiguous(late, 2, entries + 1)
        assert skipped > entries // 2, skipped
        assert slow.barrier() == []
    assert metric(server, "pcclog_slow_consumer_drops_total") == skipped
    no_connections(server)
    healthy(server)


def test_disconnect_policy_closes_the_slow_viewer_1013(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"CONNECTION_BUFFER": "1048576", "SLOW_CONSUMER": "disconnect"})
    with (
        producer(server, "firehose") as source,
        viewer(server, "firehose") as fast,
        viewer(server, "firehose", rcvbuf=4096) as slow,
    ):
        with ThreadPoolExecutor(1) as pool:
            progress = [0]
            reading = pool.submit(collect_until_seq, fast, "firehose", 10_001, 60.0, progress)
            _publish(source, "firehose", 10_000, 1000, progress=progress)
            assert source.barrier(timeout=30) == []
            assert assert_contiguous(reading.result(timeout=60), 2, 10_001) == 0
        code, _ = slow.expect_close(timeout=30)
        assert code == 1013
    assert metric(server, "pcclog_slow_consumer_disconnects_total") == 1
    no_connections(server)


# --- 11. A peer that vanishes ------------------------------------------------------------


def test_silent_peer_is_closed_by_the_keepalive_and_released(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"WS_PING_INTERVAL": "300", "WS_PING_TIMEOUT": "300"})
    # A library client answers pings from its own thread.
    with ws_connect(
        server.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}
    ) as answering:
        assert metric(server, "pcclog_connections") == 1
        started = time.monotonic()
        # Never reads, never answers a ping, never sends a FIN.
        silent = RawWebSocket.connect(server.port, token=TOKEN)
        wait_for(
            lambda: metric(server, "pcclog_connections") == 1,
            timeout=5,
            what="the silent peer to be dropped",
            interval=0.02,
        )
        elapsed = time.monotonic() - started
        assert elapsed <= 0.3 + 0.3 + 1.5, elapsed
        assert metric(server, "pcclog_ping_timeouts_total") == 1
        # What the silent peer would have read: pings, then the close 1011.
        code, frames = silent.expect_close(timeout=2)
        assert code == 1011, (code, frames)
        assert all(f.opcode == OP_PING for f in frames)
        silent.close()
        # The answering peer survives ping round after ping round.
        answering.send(PING.decode())
        assert json.loads(answering.recv(timeout=5)) == {"type": "pong"}
        wait_for(lambda: time.monotonic() - started > 1.5, timeout=5)
        assert metric(server, "pcclog_connections") == 1
        answering.send(PING.decode())
        assert json.loads(answering.recv(timeout=5)) == {"type": "pong"}
        assert metric(server, "pcclog_ping_timeouts_total") == 1
    no_connections(server)


# --- 12. Connect-and-abort churn -----------------------------------------------------------


def test_thousand_connect_and_abort_cycles_release_everything(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    full = handshake_request("/", token=TOKEN)

    def cycle(batch: int) -> None:
        socks = []
        for i in range(batch):
            sock = connect_socket(server.port)
            if i % 2:
                sock.sendall(full[: 1 + (i * 37) % (len(full) - 2)])  # mid-handshake
            else:
                sock.sendall(full + encode_frame(OP_TEXT, PING))
            socks.append(sock)
        for i, sock in enumerate(socks):
            if not i % 2:
                got = b""
                while b"\r\n\r\n" not in got:  # wait for the 101 before the reset
                    chunk = sock.recv(4096)
                    assert chunk, got
                    got += chunk
                assert got.startswith(b"HTTP/1.1 101"), got
            reset(sock)

    cycle(20)  # warm-up: first allocations, lazily imported code
    no_connections(server)
    fds_before, rss_before = num_fds(server), rss(server)
    for _ in range(20):
        cycle(50)
    no_connections(server, timeout=10)
    wait_for(lambda: num_fds(server) <= fds_before, timeout=10, what="the fds to be closed")
    assert rss(server) - rss_before < 8 * MiB, (rss(server) - rss_before) / MiB
    assert metric(server, "pcclog_connections_total") >= 1020
    assert not internal_errors(server), internal_errors(server)[:3]
    healthy(server)


# --- shutdown with hostile peers attached --------------------------------------------------


def test_sigterm_with_stalled_and_slow_peers_exits_promptly(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"CONNECTION_BUFFER": "65536"})
    with producer(server, "s") as source:
        stalled = connect_socket(server.port)
        stalled.sendall(b"GET / HTTP/1.1\r\n")
        slow = viewer(server, "s", rcvbuf=4096)
        _publish(source, "s", 3000, 1000)
        source.barrier(timeout=30)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - started < 5.0
        stalled.close()
        slow.close()


# --- amplification: small input, large server memory ---------------------------------------


def test_replay_to_a_viewer_that_does_not_read_is_bounded(
    start_server: Callable[..., ServerProcess],
) -> None:
    """SPEC §6: memory per connection is bounded by CONNECTION_BUFFER. A
    view-only client that never reads and asks for the same history again
    and again (well within the rate limit) must not make the server hold a
    copy of the history per request."""
    server = start_server(env={"HISTORY_LINES": "4000"})
    with producer(server) as source:
        for session in ("h1", "h2"):
            _publish(source, session, 4000, 100)
        assert source.barrier(timeout=30) == []
        greedy = RawWebSocket.connect(server.port, token=TOKEN, rcvbuf=4096)
        baseline = rss(server)
        request = encode_frame(OP_TEXT, b'{"type":"subscribe","sessionId":"*","since":0}')
        greedy.send(request * 60)  # ~3 KB in; 60 x 8000 entries of ~200 B asked back
        assert source.barrier() == []

        def settled() -> bool:
            # All 60 handled (1 + 8000 + 1 from the producer before, 1 after),
            # or the greedy viewer closed.
            return (
                metric(server, "pcclog_messages_in_total") >= 8000 + 60 + 3
                or metric(server, "pcclog_connections") < 2
            )

        try:
            wait_for(settled, timeout=5)
        except AssertionError:
            pass  # a server that stopped reading the greedy viewer is bounded too
        growth = rss(server) - baseline
        greedy.abort()
    assert growth < 24 * MiB, f"RSS grew {growth / MiB:.0f} MiB for a 3 KB request burst"
    healthy(server)


def test_status_metadata_cannot_amplify_memory(
    start_server: Callable[..., ServerProcess],
) -> None:
    """Status metadata is merged into the session's; each status entry (kept
    in history) carries the merged whole. 100 statuses of 20 KB each, every
    one a new key, must not cost the server 100 x the input."""
    server = start_server(env={"HISTORY_LINES": "1000"})
    with producer(server) as source:
        baseline = rss(server)
        for k in range(100):
            source.send_json(
                {
                    "type": "status",
                    "sessionId": "m",
                    "status": "running",
                    "metadata": {f"k{k}": "v" * 20_000},
                }
            )
        source.send_json({"type": "ping"})
        replies, code = _replies_until_pong(source)
        growth = rss(server) - baseline
    # Refusing the statuses is fine, and so is closing for repeated abuse.
    assert all(m["type"] == "error" for m in replies), replies[:1]
    assert code in (None, 1008), (code, replies[-1:])
    assert growth < 32 * MiB, f"RSS grew {growth / MiB:.0f} MiB for 2 MB of status messages"
    healthy(server)


def _replies_until_pong(
    ws: RawWebSocket, timeout: float = 60.0
) -> tuple[list[dict[str, Any]], int | None]:
    """Messages before the pong, and ``None``; or, if the server closes
    first, the messages and its close code (1006: no close frame)."""
    deadline = time.monotonic() + timeout
    messages: list[dict[str, Any]] = []
    while True:
        frame = ws.recv_frame(max(1e-3, deadline - time.monotonic()))
        if frame is None:
            return messages, 1006
        if frame.opcode == OP_CLOSE:
            return messages, frame.close_code
        if frame.opcode == OP_TEXT:
            message = frame.json()
            if message["type"] == "pong":
                return messages, None
            messages.append(message)


TIMESTAMPS = {
    "1969-12-31T23:59:59.5Z": "1969-12-31T23:59:59.500Z",
    "1969-12-31T23:59:59.500+00:00": "1969-12-31T23:59:59.500Z",
    "1960-06-15T12:00:00.250+00:00": "1960-06-15T12:00:00.250Z",
    "0001-01-01T00:00:00+14:00": None,  # before year 1 in UTC
    "9999-12-31T23:59:59-14:00": None,  # after year 9999 in UTC
}


@pytest.mark.parametrize(("given", "expected"), TIMESTAMPS.items(), ids=TIMESTAMPS.keys())
def test_producer_timestamps_come_out_canonical_or_are_refused(
    start_server: Callable[..., ServerProcess], given: str, expected: str | None
) -> None:
    """SPEC §3: ``timestamp`` is ISO 8601 UTC with milliseconds and ``Z``.
    ``None``: either refused with INVALID_MESSAGE or canonical and 4-digit."""
    server = start_server()
    with producer(server, "t") as source, viewer(server, "t") as watcher:
        source.send(log_frame("t", "m", timestamp=given))
        replies = source.barrier()
        if replies:
            assert expected is None and replies[0]["code"] == "INVALID_MESSAGE", replies
            return
        [entry] = watcher.barrier()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["timestamp"]), entry
        if expected is not None:
            assert entry["timestamp"] == expected


# --- 16. Soak -------------------------------------------------------------------------------


class _SoakViewer:
    """A fast viewer: reads everything at once, churns its subscriptions,
    checks every session's stream is gap-free and in order across resumes."""

    def __init__(self, ws: Any, rng: random.Random, sessions: list[str], problems: list[str]):
        self.ws = ws
        self.rng = rng
        self.sessions = sessions
        self.problems = problems
        self.subscribed: set[str] = set()
        self.last: dict[str, int] = {}
        self.pong = asyncio.Event()
        self.received = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                self.handle(json.loads(raw))
        except ConnectionClosed as exc:
            if exc.rcvd is None or exc.rcvd.code != 1000:
                self.problem(f"viewer connection closed: {exc!r}")

    def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "pong":
            self.pong.set()
        elif kind in ("log", "status") and "seq" in message:
            session, seq = message["sessionId"], message["seq"]
            if session not in self.subscribed:
                self.problem(f"{session} seq {seq} after the unsubscribe was confirmed")
            previous = self.last.get(session)
            if previous is not None and seq != previous + 1:
                self.problem(f"{session}: seq {seq} after {previous}")
            self.last[session] = seq
            self.received += 1
        elif kind == "gap" and message["reason"] == "evicted":
            # Away longer than the history: told exactly what it missed.
            if message["fromSeq"] != self.last.get(message["sessionId"], -1) + 1:
                self.problem(f"evicted gap not contiguous: {message}")
            self.last[message["sessionId"]] = message["toSeq"]
        elif kind != "status":  # a status without seq is the subscribe snapshot
            self.problem(f"unexpected message {message}")

    async def barrier(self) -> None:
        self.pong.clear()
        await self.ws.send('{"type":"ping"}')
        await asyncio.wait_for(self.pong.wait(), 30)

    async def subscribe(self, session: str) -> None:
        self.subscribed.add(session)
        message: dict[str, Any] = {"type": "subscribe", "sessionId": session, "tail": 0}
        if session in self.last:
            message = {"type": "subscribe", "sessionId": session, "since": self.last[session]}
        await self.ws.send(json.dumps(message))

    async def unsubscribe(self, session: str) -> None:
        await self.ws.send(json.dumps({"type": "unsubscribe", "sessionId": session}))
        await self.barrier()  # entries queued before the unsubscribe arrive first
        self.subscribed.discard(session)

    async def churn(self, stop: asyncio.Event) -> None:
        for session in self.rng.sample(self.sessions, 3):
            await self.subscribe(session)
        while not stop.is_set():
            try:  # the pace of the churn
                await asyncio.wait_for(stop.wait(), self.rng.uniform(0.3, 1.5))
            except TimeoutError:
                pass
            if stop.is_set():
                break
            if self.subscribed and self.rng.random() < 0.5:
                await self.unsubscribe(self.rng.choice(sorted(self.subscribed)))
            others = [s for s in self.sessions if s not in self.subscribed]
            if others and (len(self.subscribed) < 2 or self.rng.random() < 0.5):
                await self.subscribe(self.rng.choice(others))


async def _soak_clients(
    server: ServerProcess,
    duration: float,
    *,
    seed: int,
    sessions: list[str],
    viewers: int,
    rate: float,
    problems: list[str],
    samples: list[tuple[float, int]],
) -> tuple[dict[str, int], list[_SoakViewer]]:
    rng = random.Random(seed)
    options: dict[str, Any] = {
        "additional_headers": {"Authorization": f"Bearer {TOKEN}"},
        "max_size": None,
        "compression": None,
        "ping_interval": None,
        "proxy": None,
        "open_timeout": 30,
    }
    stop = asyncio.Event()
    final: dict[str, int] = {}
    loop = asyncio.get_running_loop()

    async def produce(session: str) -> None:
        async with ws_async_connect(server.url, **options) as ws:
            count = 0
            next_at = loop.time()
            while not stop.is_set():
                entry = {"type": "log", "sessionId": session, "message": f"{count}", "data": {}}
                await ws.send(json.dumps(entry))
                count += 1
                next_at += 1 / rate
                try:  # the producer's pace
                    await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
                except TimeoutError:
                    pass
            await ws.send('{"type":"ping"}')
            async for raw in ws:
                reply = json.loads(raw)
                if reply["type"] == "pong":
                    break
                problems.append(f"producer got {reply}")
            final[session] = 1 + count  # seq 1 is the status that created it

    async def sample() -> None:
        while not stop.is_set():
            samples.append((loop.time(), rss(server)))
            try:
                await asyncio.wait_for(stop.wait(), 0.25)
            except TimeoutError:
                pass

    connections = await asyncio.gather(
        *(ws_async_connect(server.url, **options) for _ in range(viewers))
    )
    fleet = [_SoakViewer(ws, random.Random(rng.random()), sessions, problems) for ws in connections]
    readers = [asyncio.create_task(v.read()) for v in fleet]
    tasks = [asyncio.create_task(v.churn(stop)) for v in fleet]
    tasks += [asyncio.create_task(produce(s)) for s in sessions]
    sampler = asyncio.create_task(sample())
    try:
        await asyncio.wait_for(stop.wait(), duration)
    except TimeoutError:
        pass
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks, sampler), 60)
    # Every producer's entries are fanned out: a viewer's pong comes after them.
    await asyncio.wait_for(asyncio.gather(*(v.barrier() for v in fleet)), 60)
    for v in fleet:
        for session in v.subscribed:
            # (None: subscribed after the last entry; it got the snapshot only.)
            if v.last.get(session, final[session]) != final[session]:
                problems.append(
                    f"{session}: viewer ended at {v.last.get(session)}, not {final[session]}"
                )
        await v.ws.close()
    await asyncio.wait_for(asyncio.gather(*readers), 30)
    return final, fleet


def _soak(start_server: Callable[..., ServerProcess], duration: float) -> None:
    server = start_server(
        env={
            "CONNECTION_BUFFER": "65536",
            "HISTORY_LINES": "500",
            "WS_PING_INTERVAL": "600000",  # slow viewers never read: no keepalive here
        }
    )
    sessions = [f"soak-{i}" for i in range(10)]
    creator = producer(server, *sessions, "burst")
    slow = [viewer(server, "*", rcvbuf=4096) for _ in range(5)]
    # Fill the slow viewers' buffers (kernel and CONNECTION_BUFFER) first, so
    # every entry of the soak takes their drop path.
    _publish(creator, "burst", 4000, 1000)
    assert creator.barrier(timeout=60) == []
    problems: list[str] = []
    samples: list[tuple[float, int]] = []
    final, fleet = asyncio.run(
        _soak_clients(
            server,
            duration,
            seed=16,
            sessions=sessions,
            viewers=95,
            rate=20.0,
            problems=problems,
            samples=samples,
        )
    )
    assert not problems, problems[:10]
    assert sum(v.received for v in fleet) > 95 * 2 * 20 * duration * 0.5
    # The slow viewers read at last: entries plus gaps cover every seq once.
    for ws in slow:
        streams: dict[str, list[dict[str, Any]]] = {s: [] for s in [*sessions, "burst"]}
        final["burst"] = 4001
        for message in ws.barrier(timeout=60):
            if message["type"] in ("log", "gap"):
                streams[message["sessionId"]].append(message)
        for session, stream in streams.items():
            assert_contiguous(stream, 2, final[session])
        ws.close()
    assert metric(server, "pcclog_slow_consumer_drops_total") > 0  # they were slow
    creator.close()
    no_connections(server, timeout=10)
    # RSS flat after the warm-up (the first 40 %).
    start = samples[0][0]
    settled = [value for t, value in samples if t - start >= 0.4 * duration]
    assert max(settled) - settled[0] < 8 * MiB, [v // MiB for _, v in samples]
    assert not internal_errors(server)
    healthy(server)


def test_soak_short(start_server: Callable[..., ServerProcess]) -> None:
    _soak(start_server, 10.0)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="full size only with PCCLOG_FULL_SIZE=1 (make soak)")
def test_soak_full(start_server: Callable[..., ServerProcess]) -> None:
    _soak(start_server, 60.0)

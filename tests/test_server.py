"""End-to-end tests of ``pcclog serve``: the real process, real sockets, real
third-party clients (``websockets``, ``urllib``, ``ssl``) and hand-written
raw-socket clients for misbehaviour. Every wait has a deadline."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ServerProcess, wait_for
from rawws import RawWebSocket
from websockets.exceptions import InvalidStatus
from wsclient import (
    ConnectionClosed,
    barrier,
    open_ws,
    produce,
    recv_json,
)

TOKEN = "test-token"
Start = Callable[..., ServerProcess]


def _subscribe(ws: Any, session: str, **extra: Any) -> None:
    ws.send(json.dumps({"type": "subscribe", "sessionId": session, **extra}))


def _raw_http(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` on a fresh socket; return everything until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


# --- fan-out: order, seq, replay, resume, wildcard, list ---------------------------


def test_producer_and_viewers(start_server: Start) -> None:
    server = start_server()
    with (
        open_ws(server.url, token=TOKEN) as producer,
        open_ws(server.url, token=TOKEN) as tail3,
        open_ws(server.url, token=TOKEN) as everything,
        open_ws(server.url, token=TOKEN) as wildcard,
    ):
        produce(producer, "alpha", *(f"a{i}" for i in range(1, 11)))

        # Replay: the snapshot (no seq), then the last N entries in seq order.
        _subscribe(tail3, "alpha", tail=3)
        _subscribe(everything, "alpha")  # default SUBSCRIBE_TAIL (100)
        _subscribe(wildcard, "*")
        for viewer, first in ((tail3, 8), (everything, 1), (wildcard, 1)):
            received = barrier(viewer)
            snapshot = received[0]
            assert snapshot["type"] == "status" and snapshot["status"] == "running"
            assert "seq" not in snapshot
            assert [m["seq"] for m in received[1:]] == list(range(first, 11))
            assert [m["message"] for m in received[1:]] == [f"a{i}" for i in range(first, 11)]

        # Live: every viewer gets every entry once, in order; a session that
        # starts later reaches the "*" subscriber (snapshot, then entries).
        produce(producer, "alpha", *(f"a{i}" for i in range(11, 31)))
        produce(producer, "beta", "b1", "b2", "b3")
        producer.send(
            json.dumps(
                {
                    "type": "status",
                    "sessionId": "alpha",
                    "status": "stopped",
                    "metadata": {"exitCode": 0},
                }
            )
        )
        barrier(producer)

        for viewer in (tail3, everything):
            received = barrier(viewer)
            assert [m["seq"] for m in received] == list(range(11, 32))
            assert received[-1]["type"] == "status" and received[-1]["status"] == "stopped"
            assert received[-1]["metadata"] == {"exitCode": 0}
        received = barrier(wildcard)
        alpha = [m for m in received if m["sessionId"] == "alpha"]
        beta = [m for m in received if m["sessionId"] == "beta"]
        assert [m["seq"] for m in alpha] == list(range(11, 32))
        assert beta[0]["type"] == "status" and "seq" not in beta[0]
        assert [(m["seq"], m["message"]) for m in beta[1:]] == [(1, "b1"), (2, "b2"), (3, "b3")]

        # list
        wildcard.send('{"type":"list"}')
        (listing,) = barrier(wildcard)
        assert listing["type"] == "sessions"
        sessions = {s["sessionId"]: s for s in listing["sessions"]}
        assert sessions["alpha"] == {
            "sessionId": "alpha",
            "status": "stopped",
            "metadata": {"exitCode": 0},
            "lastSeq": 31,
        }
        assert sessions["beta"]["status"] == "running" and sessions["beta"]["lastSeq"] == 3


def test_resume_with_since_after_the_connection_is_cut(start_server: Start) -> None:
    server = start_server()
    with open_ws(server.url, token=TOKEN) as producer:
        produce(producer, "job", *(f"line {i}" for i in range(1, 6)))

        viewer = RawWebSocket.connect(server.port, f"/?token={TOKEN}")
        viewer.send_json({"type": "subscribe", "sessionId": "job"})
        snapshot = viewer.recv_frame()
        assert snapshot is not None and snapshot.json()["type"] == "status"
        seen = []
        while len(seen) < 5:
            frame = viewer.recv_frame()
            assert frame is not None
            seen.append(frame.json()["seq"])
        assert seen == [1, 2, 3, 4, 5]
        # Sent to it but never read: lost with the connection.
        produce(producer, "job", *(f"line {i}" for i in range(6, 9)))
        viewer.sock.shutdown(socket.SHUT_RDWR)  # cut: no close frame
        viewer.close()

        # While it is away.
        produce(producer, "job", *(f"line {i}" for i in range(9, 16)))

        with open_ws(server.url, token=TOKEN) as resumed:
            _subscribe(resumed, "job", since=seen[-1])
            received = barrier(resumed)
            assert received[0]["type"] == "status" and "seq" not in received[0]
            assert [m["seq"] for m in received[1:]] == list(range(6, 16))
            # Live entries follow the replay with no hole and no duplicate.
            produce(producer, "job", "line 16", "line 17")
            assert [m["seq"] for m in barrier(resumed)] == [16, 17]


def test_since_before_history_reports_evicted_gap(start_server: Start) -> None:
    server = start_server(env={"HISTORY_LINES": "5"})
    with open_ws(server.url, token=TOKEN) as producer, open_ws(server.url, token=TOKEN) as viewer:
        produce(producer, "short", *(f"m{i}" for i in range(1, 13)))  # keeps 8..12
        _subscribe(viewer, "short", since=2)
        received = barrier(viewer)
        assert received[0]["type"] == "status"
        assert received[1] == {
            "type": "gap",
            "sessionId": "short",
            "fromSeq": 3,
            "toSeq": 7,
            "reason": "evicted",
        }
        assert [m["seq"] for m in received[2:]] == [8, 9, 10, 11, 12]


# --- HTTP on the same port -------------------------------------------------------


def test_http_endpoints(start_server: Start) -> None:
    server = start_server()
    with open_ws(server.url, token=TOKEN) as producer:
        produce(producer, "web", "hello")

        assert server.get("/healthz") == (200, b"ok\n")
        status, _ = server.get("/readyz")
        assert status == 200  # Docker disabled: nothing to wait for

        # /metrics: Prometheus text exposition.
        with urllib.request.urlopen(server.http + "/metrics", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        assert values["pcclog_connections"] == 1  # the producer
        assert values["pcclog_sessions"] == 1
        assert values["pcclog_messages_in_total"] >= 2  # auth, log (and the barrier's ping)
        for name in (
            "pcclog_messages_out_total",
            "pcclog_bytes_out_total",
            "pcclog_gaps_total",
            "pcclog_slow_consumer_drops_total",
            "pcclog_ping_timeouts_total",
            "pcclog_auth_failures_total",
        ):
            assert name in values, name
        # The text format allows one TYPE line per metric family.
        families = re.findall(r"^# TYPE (\S+) ", text, flags=re.MULTILINE)
        duplicated = sorted({f for f in families if families.count(f) > 1})
        assert duplicated == [], f"metric families declared twice: {duplicated}"

        # /api/sessions needs a Bearer token.
        status, body = server.get("/api/sessions")
        assert status == 401 and json.loads(body)["error"] == "UNAUTHORIZED"
        status, body = server.get("/api/sessions", {"Authorization": "Bearer wrong"})
        assert status == 401
        status, body = server.get("/api/sessions", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200
        listing = json.loads(body)
        assert listing["type"] == "sessions"
        assert [(s["sessionId"], s["lastSeq"]) for s in listing["sessions"]] == [("web", 1)]

    # Wrong method, unknown path.
    request = urllib.request.Request(server.http + "/healthz", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 405 and "GET" in (info.value.headers["Allow"] or "")
    assert server.get("/no/such/path")[0] == 404

    # The browser viewer.
    index = Path(__file__).resolve().parent.parent / "src/pcclog_server/static/index.html"
    with urllib.request.urlopen(server.http + "/", timeout=5) as response:
        if index.exists():
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/html")
            assert response.read() == index.read_bytes()

    # Oversized head, too many header fields, malformed request.
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert _raw_http(server.port, big).startswith(b"HTTP/1.1 431 ")
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    many += b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n"
    assert _raw_http(server.port, many).startswith(b"HTTP/1.1 431 ")
    assert _raw_http(server.port, b"NOT A REQUEST\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert _raw_http(server.port, b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").startswith(
        b"HTTP/1.1 400 "
    )
    # The server is still fine.
    assert server.get("/healthz")[0] == 200


# --- TLS -----------------------------------------------------------------------


@pytest.fixture
def tls_server(start_server: Start, tmp_path: Path) -> tuple[ServerProcess, ssl.SSLContext]:
    """A server with a ``trustme`` certificate, and a client context trusting its CA."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    server = start_server("--tls-cert", str(cert_path), "--tls-key", str(key_path))
    assert any(r.get("msg") == "listening" and r.get("tls") is True for r in server.records())
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server, client_ctx


def test_tls_websocket(tls_server: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, client_ctx = tls_server
    url = f"wss://127.0.0.1:{server.port}"
    with (
        open_ws(url, token=TOKEN, ssl_context=client_ctx) as producer,
        open_ws(url, token=TOKEN, ssl_context=client_ctx) as viewer,
    ):
        produce(producer, "secure", "one")
        _subscribe(viewer, "secure")
        received = barrier(viewer)
        assert [m.get("message") for m in received] == [None, "one"]
        produce(producer, "secure", *(f"n{i}" for i in range(200)))
        assert [m["message"] for m in barrier(viewer)] == [f"n{i}" for i in range(200)]
    # A client that does not trust the CA is refused by its own TLS stack.
    with pytest.raises(ssl.SSLError):
        open_ws(url, ssl_context=ssl.create_default_context())


def test_tls_reply_queued_while_a_big_write_is_in_flight_is_sent(
    start_server: Start, tmp_path: Path
) -> None:
    """Under TLS one writer task sends; output queued while it is busy
    sending must not wait for the next event: a viewer's replay of 16 MB is
    still being written (the viewer reads slowly) when its ping arrives, and
    the pong must follow the replay without anything else happening."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    entries, size = 2000, 8000  # 16 MB: far more than the sockets' kernel buffers
    server = start_server(
        "--tls-cert",
        str(tmp_path / "cert.pem"),
        "--tls-key",
        str(tmp_path / "key.pem"),
        env={
            "HISTORY_LINES": str(entries),
            "HISTORY_BYTES": str(64 * 1024 * 1024),
            "CONNECTION_BUFFER": str(64 * 1024 * 1024),
        },
    )
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    url = f"wss://127.0.0.1:{server.port}"
    with open_ws(url, token=TOKEN, ssl_context=client_ctx) as producer:
        produce(producer, "big", *(f"{i:06d}" + "x" * size for i in range(entries)))
    # websockets stops reading once 16 messages wait unread: the server's
    # writer is then blocked in its send for as long as this test waits.
    # No client keepalive: its pongs would wake the writer and hide the bug.
    quiet: dict[str, Any] = {"max_queue": 16, "ping_interval": None}
    with open_ws(url, token=TOKEN, ssl_context=client_ctx, **quiet) as viewer:
        _subscribe(viewer, "big", tail=entries)
        assert recv_json(viewer)["type"] == "status"  # the replay has started
        viewer.send('{"type":"ping"}')
        deadline = time.monotonic() + 10  # about 1 s when it works
        got = [
            recv_json(viewer, timeout=max(0.01, deadline - time.monotonic()))
            for _ in range(entries + 1)
        ]
        assert [m["message"][:6] for m in got[:entries]] == [f"{i:06d}" for i in range(entries)]
        assert got[-1]["type"] == "pong", got[-1]


def test_tls_http(tls_server: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, client_ctx = tls_server
    with urllib.request.urlopen(
        f"https://127.0.0.1:{server.port}/healthz", context=client_ctx, timeout=5
    ) as response:
        assert response.status == 200 and response.read() == b"ok\n"


def test_tls_sigterm_closes_with_1001(tls_server: tuple[ServerProcess, ssl.SSLContext]) -> None:
    server, client_ctx = tls_server
    with open_ws(f"wss://127.0.0.1:{server.port}", token=TOKEN, ssl_context=client_ctx) as ws:
        _subscribe(ws, "*")
        assert barrier(ws) == []
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                ws.recv(timeout=5)
        assert info.value.rcvd is not None, f"no close frame: {info.value!r}"
        assert info.value.rcvd.code == 1001
    assert server.proc.wait(5) == 0


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_oversized_message_gets_error_then_1009(
    start_server: Start, tmp_path: Path, scheme: str
) -> None:
    """The server's last words (an error, a close frame) reach the client,
    with and without TLS."""
    client_ctx = None
    flags: list[str] = []
    if scheme == "wss":
        trustme = pytest.importorskip("trustme")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
        cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
        flags = ["--tls-cert", str(tmp_path / "cert.pem"), "--tls-key", str(tmp_path / "key.pem")]
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
    # A viewer's oversized message closes it (a producer's is skipped).
    server = start_server(*flags, env={"MAX_MESSAGE_SIZE": "1000"}, token=f"{TOKEN}:view:*")
    url = f"{scheme}://127.0.0.1:{server.port}"
    with open_ws(url, token=TOKEN, ssl_context=client_ctx) as ws:
        assert barrier(ws) == []
        ws.send(json.dumps({"type": "list", "pad": "x" * 5000}))
        error = recv_json(ws)
        assert error["type"] == "error" and error["code"] == "MESSAGE_TOO_LARGE"
        assert "1000" in error["message"]
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


# --- SIGTERM ------------------------------------------------------------------------


def test_sigterm_closes_clients_with_1001_and_exits_0(start_server: Start) -> None:
    server = start_server()
    clients = [open_ws(server.url, token=TOKEN) for _ in range(3)]
    _subscribe(clients[0], "*")
    _subscribe(clients[1], "s")
    produce(clients[2], "s", "x")
    for client in clients:
        barrier(client)
    raw = RawWebSocket.connect(server.port, f"/?token={TOKEN}")  # never echoes the close

    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    for client in clients:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                client.recv(timeout=5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    frames = list(raw.frames())
    assert frames and frames[-1].close_code == 1001, frames
    raw.close()
    assert server.proc.wait(5) == 0
    assert time.monotonic() - started < 5
    assert any(r.get("msg") == "stopped" for r in server.records())


# --- configuration errors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "env", "names"),
    [
        (("--port", "notanumber"), {}, ("--port", "notanumber")),
        ((), {"WS_PING_INTERVAL": "-5"}, ("WS_PING_INTERVAL", "-5")),
        ((), {"SLOW_CONSUMER": "maybe"}, ("SLOW_CONSUMER", "maybe")),
        ((), {"TLS_CERT": "/nonexistent/cert.pem"}, ("TLS_CERT", "TLS_KEY")),
        ((), {"CONNECTION_BUFFER": "lots"}, ("CONNECTION_BUFFER",)),
    ],
    ids=["port-flag", "ping-interval", "slow-consumer", "cert-without-key", "buffer"],
)
def test_config_error_exits_2_naming_the_variable(
    start_server: Start, flags: tuple[str, ...], env: dict[str, str], names: tuple[str, ...]
) -> None:
    with pytest.raises(AssertionError) as info:
        start_server(*flags, env=env)
    text = str(info.value)
    match = re.search(r"server exited (-?\d+):\n(.*)", text, flags=re.DOTALL)
    assert match is not None, text
    assert match.group(1) == "2", text
    output = match.group(2)
    for name in names:
        assert name in output, output
    assert "Traceback" not in output


# --- authentication: generated token, tokens never logged --------------------------


def test_generated_token_is_printed_and_works(start_server: Start) -> None:
    server = start_server(token=None)
    command = wait_for(
        lambda: re.search(r"pcclog tail '\*' --url (\S+) --token (\S+)", server.logs()),
        what="the generated token to be printed",
    )
    url, token = command.group(1), command.group(2)
    assert url == server.url
    assert len(token) >= 24
    assert f"\n    {token}\n" in server.logs()  # printed on its own line too

    with open_ws(url, token=token) as producer, open_ws(url) as viewer:
        _subscribe(viewer, "*", auth={"token": token})
        assert barrier(viewer) == []
        produce(producer, "gen", "works")
        assert [m.get("message") for m in barrier(viewer)] == [None, "works"]
        # Anything else is refused.
        viewer.send(json.dumps({"type": "auth", "token": "guess"}))
        (error,) = barrier(viewer)
        assert error["type"] == "error" and error["code"] == "UNAUTHORIZED"
    with pytest.raises(InvalidStatus) as info:
        open_ws(url, headers={"Authorization": "Bearer guess"})
    assert info.value.response.status_code == 401

    server.stop()
    lines = [line for line in server.logs().splitlines() if line.startswith("{")]
    assert lines and all(token not in line for line in lines)


def test_tokens_never_appear_in_the_logs(start_server: Start) -> None:
    good, bad = "good-secret-0xC0FFEE", "bad-secret-0xBADBAD"
    server = start_server("--log-level", "debug", token=good)
    # A token in the URL (browsers, the container wrapper), accepted and refused.
    with open_ws(f"{server.url}/?token={good}&containerID=c1") as wrapper:
        barrier(wrapper)
    with pytest.raises(InvalidStatus):
        open_ws(f"{server.url}/?token={bad}-url")
    with pytest.raises(InvalidStatus):
        open_ws(server.url, headers={"Authorization": f"Bearer {bad}-header"})
    with open_ws(server.url) as ws:
        ws.send(json.dumps({"type": "auth", "token": f"{bad}-message"}))
        _subscribe(ws, "x", auth={"token": f"{bad}-subscribe"})
        errors = barrier(ws)
        assert [e["code"] for e in errors] == ["UNAUTHORIZED", "UNAUTHORIZED"]
        assert all(bad not in e["message"] for e in errors)
    server.get(f"/api/sessions?token={good}", {"Authorization": f"Bearer {bad}-api"})
    server.get(f"/healthz?token={good}")
    wait_for(
        lambda: sum(r.get("msg") == "connection closed" for r in server.records()) >= 2,
        what="the close log lines",
    )
    assert server.stop() == 0
    lines = server.logs().splitlines()
    assert any('"http"' in line for line in lines)  # debug logging was on
    leaked = [line for line in lines if good in line or bad in line]
    assert leaked == []


# --- slow consumers over real sockets --------------------------------------------


class _Reader(threading.Thread):
    """Reads a ``websockets`` connection as fast as it can."""

    def __init__(self, ws: Any) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.last_seq = 0
        self.error: BaseException | None = None
        self.changed = threading.Condition()

    def run(self) -> None:
        try:
            while True:
                message = json.loads(self.ws.recv())
                with self.changed:
                    self.messages.append(message)
                    self.last_seq = message.get("seq", self.last_seq)
                    self.changed.notify_all()
        except ConnectionClosed:
            pass
        except BaseException as exc:
            self.error = exc
        with self.changed:
            self.changed.notify_all()

    def wait_seq(self, seq: int, timeout: float = 10.0) -> None:
        """Until an entry with ``seq`` or later has arrived."""
        with self.changed:
            done = self.changed.wait_for(
                lambda: self.last_seq >= seq or not self.is_alive(), timeout
            )
        assert done and self.last_seq >= seq, (
            f"the fast viewer is at seq {self.last_seq}, waited for {seq}; "
            f"last messages {self.messages[-3:]}, error {self.error!r}"
        )


@pytest.mark.parametrize("policy", ["drop", "disconnect"])
def test_slow_consumer(start_server: Start, policy: str) -> None:
    server = start_server(
        env={"CONNECTION_BUFFER": "65536", "SLOW_CONSUMER": policy, "HISTORY_LINES": "1000"}
    )
    process = psutil.Process(server.proc.pid)
    line = "x" * 2000
    count = 10_000  # about 20 MB of entries
    # The producer never runs more than 2 * window entries (~34 KB) ahead of
    # the fast viewer, so that viewer's queue stays under CONNECTION_BUFFER
    # even if the kernel buffered nothing: any drop for it is a bug. (A
    # viewer slower than the producer for longer is, by definition, slow.)
    window = 8

    with open_ws(server.url, token=TOKEN) as producer, open_ws(server.url, token=TOKEN) as fast:
        producer.send('{"type":"status","sessionId":"flood","status":"running"}')  # seq 1
        barrier(producer)
        # The slow viewer: a 4 KiB receive buffer, subscribes, then stops reading.
        slow = RawWebSocket.connect(server.port, f"/?token={TOKEN}", rcvbuf=4096)
        slow.send_json({"type": "subscribe", "sessionId": "flood", "since": 1})
        slow.send_json({"type": "ping"})
        snapshot, pong = slow.recv_frame(), slow.recv_frame()
        assert snapshot is not None and snapshot.json()["type"] == "status"
        assert pong is not None and pong.json() == {"type": "pong"}

        _subscribe(fast, "flood", since=1)
        assert recv_json(fast)["type"] == "status"
        reader = _Reader(fast)
        reader.start()
        rss_before = process.memory_info().rss
        rss_peak = rss_before

        template = {"type": "log", "sessionId": "flood", "message": line}
        started = time.monotonic()
        for i in range(count):
            producer.send(json.dumps(template))
            if i % window == window - 1:
                sent_seq = i + 2
                reader.wait_seq(sent_seq - window)
            if i % 1000 == 0:
                rss_peak = max(rss_peak, process.memory_info().rss)
        last = count + 1
        reader.wait_seq(last)
        flood_time = time.monotonic() - started
        rss_peak = max(rss_peak, process.memory_info().rss)

        # The fast viewer got every entry, in order, and no gap.
        assert reader.error is None
        assert [m["type"] for m in reader.messages] == ["log"] * count
        assert [m["seq"] for m in reader.messages] == list(range(2, last + 1))

        # One more entry after the flood (the slow viewer still is not reading).
        produce(producer, "flood", "marker")
        last += 1

        seqs: list[int] = []
        gaps: list[tuple[int, int]] = []
        close_code = None
        for frame in slow.frames(timeout=10):
            if frame.opcode == 0x8:
                close_code = frame.close_code
                continue
            if frame.opcode != 0x1:
                continue
            message = frame.json()
            if message["type"] == "log":
                seqs.append(message["seq"])
            elif message["type"] == "gap":
                assert message["sessionId"] == "flood"
                assert message["reason"] == "slow_consumer"
                gaps.append((message["fromSeq"], message["toSeq"]))
            else:
                raise AssertionError(message)
            covered = max(seqs[-1:] + [g[1] for g in gaps[-1:]])
            if policy == "drop" and covered >= last:
                break
        slow.close()

    metrics = server.get("/metrics")[1].decode()
    if policy == "drop":
        # Received seqs and gap ranges tile 2..last exactly, in order.
        items = sorted([(s, s) for s in seqs] + gaps)
        expected = 2
        for low, high in items:
            assert low == expected, (low, expected, gaps)
            assert high >= low
            expected = high + 1
        assert expected == last + 1
        assert gaps, "the slow viewer missed nothing: the flood did not fill its buffers"
        dropped = sum(high - low + 1 for low, high in gaps)
        assert f"pcclog_slow_consumer_drops_total {float(dropped)}" in metrics
        assert close_code is None
    else:
        assert close_code == 1013
        assert gaps == []
        # What it did get is a hole-free prefix.
        assert seqs == list(range(2, 2 + len(seqs)))
        assert len(seqs) < count
        assert "pcclog_slow_consumer_disconnects_total 1.0" in metrics

    # Memory stays bounded: the slow viewer's backlog is not kept.
    growth = rss_peak - rss_before
    print(f"slow viewer: {len(seqs)} entries, gaps {gaps}")
    print(f"server RSS {rss_before / 1e6:.1f} MB, peak {rss_peak / 1e6:.1f} MB; {flood_time=:.2f}")
    assert growth < 12 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over the flood"
    assert flood_time < 30


# --- keepalive ----------------------------------------------------------------------


class _PingAnswerer(threading.Thread):
    """Reads a ``RawWebSocket`` and answers each ping with a pong, by hand."""

    def __init__(self, ws: RawWebSocket) -> None:
        super().__init__(daemon=True)
        self.ws = ws
        self.pings = 0
        self.other: list[Any] = []  # anything but a ping (a close, EOF...)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                frame = self.ws.recv_frame(timeout=0.05)
            except TimeoutError:
                continue
            if frame is not None and frame.opcode == 0x9:
                self.ws.send_frame(0xA, frame.payload)
                self.pings += 1
            else:
                self.other.append(frame)
                return


def test_keepalive_closes_silent_clients_with_1011(start_server: Start) -> None:
    server = start_server(env={"WS_PING_INTERVAL": "200", "WS_PING_TIMEOUT": "200"})
    # The websockets client answers the server's pings by itself.
    with open_ws(server.url, token=TOKEN, ping_interval=None) as healthy:
        answering = _PingAnswerer(RawWebSocket.connect(server.port, f"/?token={TOKEN}"))
        answering.start()
        silent = RawWebSocket.connect(server.port, f"/?token={TOKEN}")  # never answers a ping
        started = time.monotonic()

        frames = list(silent.frames(timeout=3))
        elapsed = time.monotonic() - started
        assert [f.opcode for f in frames[:-1]] == [0x9], frames
        assert frames[-1].close_code == 1011, frames
        assert b"keepalive" in frames[-1].payload
        assert elapsed < 1.5, f"closed after {elapsed:.2f}s"  # ping at 0.2 s, close at 0.4 s
        silent.close()

        # The one that answers stays open over several intervals.
        wait_for(lambda: answering.pings >= 5 or answering.other, what="five pings")
        answering.stopping.set()
        answering.join(5)
        assert answering.other == [] and answering.pings >= 5
        answering.ws.send_json({"type": "ping"})
        frame = answering.ws.recv_frame()
        while frame is not None and frame.opcode == 0x9:
            answering.ws.send_frame(0xA, frame.payload)
            frame = answering.ws.recv_frame()
        assert frame is not None and frame.json() == {"type": "pong"}
        answering.ws.close()

        assert barrier(healthy) == []  # still connected after all those pings

    metrics = server.get("/metrics")[1].decode()
    assert "pcclog_ping_timeouts_total 1.0" in metrics


# --- the trio backend ------------------------------------------------------------


def test_trio_backend(start_server: Start) -> None:
    pytest.importorskip("trio")
    server = start_server("--backend", "trio")
    with open_ws(server.url, token=TOKEN) as producer, open_ws(server.url, token=TOKEN) as viewer:
        _subscribe(viewer, "t")
        error = recv_json(viewer)
        assert error["code"] == "SESSION_NOT_FOUND"
        produce(producer, "t", *(f"trio {i}" for i in range(50)))
        received = barrier(viewer)
        assert received[0]["type"] == "status"
        assert [m["message"] for m in received[1:]] == [f"trio {i}" for i in range(50)]
        assert [m["seq"] for m in received[1:]] == list(range(1, 51))
    assert server.get("/healthz")[0] == 200
    assert server.stop() == 0

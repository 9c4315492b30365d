"""Client-side helpers for the end-to-end tests (not a test module).

Two kinds of client talk to the real ``pcclog serve`` process:

* the third-party ``websockets`` library (its synchronous client), wrapped
  by a few helpers that wait on conditions with deadlines; and
* ``RawWebSocket``: a hand-written RFC 6455 client on a plain socket, for
  what a well-behaved library will not do: never read (slow consumer),
  never answer a ping (keepalive), send a malformed request.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

__all__ = [
    "ConnectionClosed",
    "Frame",
    "RawWebSocket",
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


# --- a raw RFC 6455 client -------------------------------------------------


class Frame:
    __slots__ = ("opcode", "payload")

    def __init__(self, opcode: int, payload: bytes) -> None:
        self.opcode = opcode
        self.payload = payload

    @property
    def close_code(self) -> int | None:
        if self.opcode != 0x8 or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code

    def json(self) -> dict[str, Any]:
        assert self.opcode == 0x1, f"not a text frame: opcode {self.opcode}"
        message: dict[str, Any] = json.loads(self.payload)
        return message

    def __repr__(self) -> str:
        return f"Frame(opcode={self.opcode}, payload={self.payload[:80]!r})"


class RawWebSocket:
    """A minimal WebSocket client on a plain socket. It answers nothing on
    its own: no pong, no close echo. ``rcvbuf`` fixes the kernel receive
    buffer (set before connect, so autotuning cannot grow it)."""

    def __init__(
        self,
        port: int,
        path: str = "/",
        *,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        self.sock = sock
        self.buffer = bytearray()
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{name}: {value}" for name, value in (headers or {}).items()),
        ]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed during the handshake: {bytes(self.buffer)!r}")
            self.buffer += chunk
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"handshake refused: {head.decode(errors='replace')}")
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        assert f"sec-websocket-accept: {accept}".lower().encode() in head.lower(), head

    def send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_json(self, message: dict[str, Any]) -> None:
        self.send_frame(0x1, json.dumps(message).encode())

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError("no frame before the deadline") from None
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def recv_frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame, or ``None`` at EOF; ``TimeoutError`` past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            buf = self.buffer
            if len(buf) >= 2:
                first, second = buf[0], buf[1]
                assert not second & 0x80, "the server masked a frame"
                length = second & 0x7F
                offset = 2
                if length == 126 and len(buf) >= 4:
                    length = struct.unpack_from("!H", buf, 2)[0]
                    offset = 4
                elif length == 127 and len(buf) >= 10:
                    length = struct.unpack_from("!Q", buf, 2)[0]
                    offset = 10
                if (second & 0x7F) < 126 or offset > 2:
                    if len(buf) >= offset + length:
                        payload = bytes(buf[offset : offset + length])
                        del buf[: offset + length]
                        assert first & 0x80, "the server fragmented a message"
                        return Frame(first & 0x0F, payload)
            if not self._fill(deadline):
                return None

    def frames(self, timeout: float = 5.0) -> Iterator[Frame]:
        """Frames until EOF; each must arrive within ``timeout``."""
        while (frame := self.recv_frame(timeout)) is not None:
            yield frame

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

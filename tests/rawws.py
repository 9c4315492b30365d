"""A tiny raw-socket WebSocket client for the hardening and fuzz tests.

Not a test module. Unlike a library client it will do what a hostile or
broken peer does: send any bytes, any frame (unmasked, reserved bits,
unknown opcodes, lying lengths, fragmented control frames), trickle a
handshake, never read, never answer a ping, or vanish with a TCP reset.

* ``handshake_request`` builds an upgrade request; ``encode_frame`` builds a
  client frame with every field under the caller's control.
* ``FrameParser`` is a sans-IO parser for what the server sends: it checks
  that each server frame is well formed (unmasked, no reserved bits, known
  opcode, unfragmented control frames) and raises ``ServerProtocolError``
  otherwise.
* ``RawWebSocket`` is a blocking socket with a receive buffer: the HTTP
  response head first, then frames. Every read takes a timeout.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "FrameParser",
    "HTTPResponse",
    "HandshakeRefused",
    "RawWebSocket",
    "ServerProtocolError",
    "accept_key",
    "close_payload",
    "connect_socket",
    "encode_frame",
    "handshake_request",
    "parse_http_head",
    "reset",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ServerProtocolError(AssertionError):
    """The server sent something that is not valid HTTP or RFC 6455."""


# --- building what the client sends ------------------------------------------------


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def handshake_request(
    path: str = "/",
    *,
    host: str = "127.0.0.1",
    key: str | None = None,
    token: str | None = None,
    origin: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    version: str = "13",
) -> bytes:
    """An RFC 6455 opening handshake; ``token`` goes in ``Authorization``."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    mask_key: bytes | None = None,
    length: int | None = None,
    length_form: int | None = None,
) -> bytes:
    """One client frame. ``rsv`` is the three RSV bits as an int (0-7);
    ``length`` announces a length other than ``len(payload)``;
    ``length_form`` forces the 7-, 16- or 64-bit length encoding."""
    announced = len(payload) if length is None else length
    form = length_form
    if form is None:
        form = 7 if announced < 126 else 16 if announced < 65536 else 64
    first = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    if form == 7:
        header = bytes((first, mask_bit | (announced & 0x7F)))
    elif form == 16:
        header = struct.pack("!BBH", first, mask_bit | 126, announced & 0xFFFF)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, announced & 0xFFFFFFFFFFFFFFFF)
    if not mask:
        return header + payload
    key = os.urandom(4) if mask_key is None else mask_key
    return header + key + _mask(payload, key)


def close_payload(code: int | None = None, reason: str = "") -> bytes:
    if code is None:
        return b""
    return struct.pack("!H", code) + reason.encode()


# --- parsing what the server sends ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HTTPResponse:
    status: int
    reason: str
    headers: dict[str, str]
    raw_head: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def parse_http_head(buffer: bytes | bytearray) -> tuple[HTTPResponse, int] | None:
    """``(response, head length)`` once the head is complete, else ``None``."""
    end = bytes(buffer[:65536]).find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 65536:
            raise ServerProtocolError("HTTP response head longer than 64 KiB")
        return None
    head = bytes(buffer[:end])
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ServerProtocolError(f"not an HTTP status line: {lines[0][:200]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ServerProtocolError(f"malformed header line: {line[:200]!r}")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    return HTTPResponse(int(parts[1]), reason, headers, head), end + 4


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True

    @property
    def close_code(self) -> int | None:
        """The code of a close frame (``None``: a close without a code)."""
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return None
        code: int = struct.unpack("!H", self.payload[:2])[0]
        return code

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", errors="replace")

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        if self.opcode != OP_TEXT:
            raise AssertionError(f"not a text frame: {self!r}")
        return json.loads(self.payload)

    def __repr__(self) -> str:
        return f"Frame(opcode={self.opcode:#x}, fin={self.fin}, payload={self.payload[:120]!r})"


class FrameParser:
    """Sans-IO parser of server frames: ``feed`` bytes, iterate ``frames``.

    Server frames must be unmasked, without RSV bits (nothing is
    negotiated), with a known opcode and minimal length encoding, and
    control frames unfragmented and at most 125 bytes."""

    def __init__(self, max_frame: int = 64 * 1024 * 1024) -> None:
        self.buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next_frame(self) -> Frame | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        if first & 0x70:
            raise ServerProtocolError(f"server frame with RSV bits: {bytes(buf[:2]).hex()}")
        if second & 0x80:
            raise ServerProtocolError("server frame is masked")
        opcode = first & 0x0F
        if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            raise ServerProtocolError(f"server frame with unknown opcode {opcode:#x}")
        fin = bool(first & 0x80)
        length = second & 0x7F
        offset = 2
        if length == 126:
            if len(buf) < 4:
                return None
            length = struct.unpack_from("!H", buf, 2)[0]
            offset = 4
            if length < 126:
                raise ServerProtocolError("server frame with a non-minimal 16-bit length")
        elif length == 127:
            if len(buf) < 10:
                return None
            length = struct.unpack_from("!Q", buf, 2)[0]
            offset = 10
            if length < 65536:
                raise ServerProtocolError("server frame with a non-minimal 64-bit length")
        if opcode >= OP_CLOSE and (length > 125 or not fin):
            raise ServerProtocolError(f"bad server control frame {opcode:#x}, len {length}")
        if length > self.max_frame:
            raise ServerProtocolError(f"server frame of {length} bytes")
        if len(buf) < offset + length:
            return None
        payload = bytes(buf[offset : offset + length])
        del buf[: offset + length]
        return Frame(opcode, payload, fin)

    def frames(self) -> Iterator[Frame]:
        while (frame := self.next_frame()) is not None:
            yield frame


# --- the client ------------------------------------------------------------------------


def connect_socket(
    port: int, *, rcvbuf: int | None = None, timeout: float = 5.0, host: str = "127.0.0.1"
) -> socket.socket:
    """A connected TCP socket; ``rcvbuf`` is fixed before connect (no autotuning)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((host, port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST, no FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class RawWebSocket:
    """A blocking raw client. ``open`` connects without a handshake;
    ``connect`` also performs it (and raises ``HandshakeRefused``).
    It answers nothing by itself unless ``auto_pong`` is set."""

    def __init__(self, sock: socket.socket, *, auto_pong: bool = False) -> None:
        self.sock = sock
        self.buffer = bytearray()  # before the upgrade
        self.parser = FrameParser()
        self.response: HTTPResponse | None = None
        self.auto_pong = auto_pong
        self.eof = False

    # construction

    @classmethod
    def open(cls, port: int, *, rcvbuf: int | None = None, auto_pong: bool = False) -> RawWebSocket:
        return cls(connect_socket(port, rcvbuf=rcvbuf), auto_pong=auto_pong)

    @classmethod
    def connect(
        cls,
        port: int,
        path: str = "/",
        *,
        token: str | None = None,
        origin: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        rcvbuf: int | None = None,
        auto_pong: bool = False,
        timeout: float = 5.0,
    ) -> RawWebSocket:
        ws = cls.open(port, rcvbuf=rcvbuf, auto_pong=auto_pong)
        key = base64.b64encode(os.urandom(16)).decode()
        ws.send(handshake_request(path, key=key, token=token, origin=origin, headers=headers))
        response = ws.read_response(timeout)
        if response.status != 101:
            ws.close()
            raise HandshakeRefused(response)
        if response.header("sec-websocket-accept") != accept_key(key):
            ws.close()
            raise ServerProtocolError(f"wrong Sec-WebSocket-Accept: {response.raw_head!r}")
        return ws

    # raw I/O

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.sock.sendall(encode_frame(opcode, payload, **kwargs))

    def send_text(self, text: str | bytes) -> None:
        self.send_frame(OP_TEXT, text.encode() if isinstance(text, str) else text)

    def send_json(self, message: Any) -> None:
        self.send_text(json.dumps(message))

    def send_close(self, code: int | None = 1000, reason: str = "") -> None:
        self.send_frame(OP_CLOSE, close_payload(code, reason))

    def _recv(self, deadline: float) -> bytes:
        """One chunk (``b""`` at EOF or reset); ``TimeoutError`` past ``deadline``."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("nothing from the server before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise TimeoutError("nothing from the server before the deadline") from None
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
        return chunk

    def read_response(self, timeout: float = 5.0) -> HTTPResponse:
        """The HTTP response head; bytes after it go to the frame parser."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = parse_http_head(self.buffer)
            if parsed is not None:
                response, length = parsed
                del self.buffer[:length]
                if response.status == 101:  # what follows are frames
                    self.parser.feed(bytes(self.buffer))
                    self.buffer.clear()
                self.response = response
                return response
            chunk = self._recv(deadline)
            if not chunk:
                raise ConnectionError(f"closed before a response: {bytes(self.buffer)[:300]!r}")
            self.buffer += chunk

    def read_to_eof(self, timeout: float = 5.0) -> bytes:
        """Everything until the server closes (for plain HTTP exchanges)."""
        deadline = time.monotonic() + timeout
        data = bytearray(self.buffer)
        self.buffer.clear()
        while chunk := self._recv(deadline):
            data += chunk
        return bytes(data)

    def recv_frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame (pings answered first if ``auto_pong``), or ``None``
        at EOF; ``TimeoutError`` past ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.parser.next_frame()
            if frame is not None:
                if self.auto_pong and frame.opcode == OP_PING:
                    try:
                        self.send_frame(OP_PONG, frame.payload)
                    except OSError:
                        pass
                    continue
                return frame
            if self.eof:
                return None
            chunk = self._recv(deadline)
            if chunk:
                self.parser.feed(chunk)

    def frames(self, timeout: float = 5.0) -> Iterator[Frame]:
        """Frames until EOF; each must arrive within ``timeout``."""
        while (frame := self.recv_frame(timeout)) is not None:
            yield frame

    def recv_message(self, timeout: float = 5.0) -> Any:
        """The next text message decoded (control frames other than close
        skipped); ``ConnectionError`` on a close or EOF."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(0.0, deadline - time.monotonic()) or 1e-6)
            if frame is None:
                raise ConnectionError("EOF while waiting for a message")
            if frame.opcode == OP_CLOSE:
                raise ConnectionError(f"closed {frame.close_code} {frame.close_reason!r}")
            if frame.opcode == OP_TEXT:
                return frame.json()

    def recv_until(self, predicate: Any, timeout: float = 5.0) -> tuple[Any, list[Any]]:
        """Messages until ``predicate(message)``: (that one, those before)."""
        deadline = time.monotonic() + timeout
        before: list[Any] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching message within {timeout}s; last {before[-3:]}")
            message = self.recv_message(remaining)
            if predicate(message):
                return message, before
            before.append(message)

    def barrier(self, timeout: float = 5.0) -> list[Any]:
        """Send a ``ping`` message; return every message before its ``pong``."""
        self.send_json({"type": "ping"})
        return self.recv_until(lambda m: m.get("type") == "pong", timeout)[1]

    def expect_close(self, timeout: float = 5.0) -> tuple[int | None, list[Frame]]:
        """Read until the server's close frame; returns (its code, the frames
        before it). The code is ``None`` for a close without a code and 1006
        when the connection ended without any close frame."""
        deadline = time.monotonic() + timeout
        before: list[Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no close within {timeout}s; got {before[-3:]}")
            frame = self.recv_frame(remaining)
            if frame is None:
                return 1006, before
            if frame.opcode == OP_CLOSE:
                return frame.close_code, before
            before.append(frame)

    def wait_eof(self, timeout: float = 5.0) -> None:
        """Discard everything until the server closes the TCP connection."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._recv(deadline)

    # endings

    def abort(self) -> None:
        """Vanish with a TCP reset."""
        reset(self.sock)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawWebSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HandshakeRefused(ConnectionError):
    def __init__(self, response: HTTPResponse) -> None:
        super().__init__(f"handshake refused: {response.status} {response.reason}")
        self.response = response

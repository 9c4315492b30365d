"""Client-side helpers for the end-to-end tests (not a test module): the
third-party ``websockets`` library (its synchronous client), wrapped by a
few helpers that wait on conditions with deadlines. For what a
well-behaved library will not do (never read, never answer a ping, send a
malformed frame), use ``rawws.RawWebSocket``.

``wss://`` goes through ``LockedTLSSocket``: the ``websockets`` sync client
reads in a background thread while the caller's thread writes, and CPython
3.11's ``ssl.SSLSocket`` lets two threads into one OpenSSL connection at
once. That corrupts it: 1,000 handshakes through nginx reproduced heap
corruption (``malloc(): unsorted double linked list corrupted``) and a
handshake that never completed. The client's traffic is unchanged; only
OpenSSL is entered by one thread at a time.
"""

from __future__ import annotations

import inspect
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

__all__ = [
    "ConnectionClosed",
    "LockedTLSSocket",
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
    """Connect with ``websockets``; ``token`` goes in an ``auth`` message.

    ``wss://`` needs ``ssl_context``; TLS then runs in a ``LockedTLSSocket``.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "wss":
        if ssl_context is None:
            raise ValueError("wss:// needs ssl_context")
        host, port = parts.hostname or "127.0.0.1", parts.port or 443
        kwargs["sock"] = LockedTLSSocket.connect((host, port), ssl_context, host, timeout=10)
        url = urllib.parse.urlunsplit(parts._replace(scheme="ws", netloc=f"{host}:{port}"))
    ws = connect(
        url,
        additional_headers=headers,
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


# --- TLS for a reader thread and a writer thread --------------------------------


class LockedTLSSocket:
    """A TLS client socket that one thread may read while another writes.

    OpenSSL state lives in an ``ssl.SSLObject`` over memory buffers and is
    only touched under ``_tls``; the network is read with no lock held, so a
    blocked reader never stalls a writer. Encrypted bytes are taken from the
    outgoing buffer and written under ``_send``, so records reach the wire
    in the order they were sealed. Lock order: ``_send``, then ``_tls``.
    Everything else (``shutdown``, ``settimeout``, ``close``...) is the
    plain socket's.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, hostname: str) -> None:
        self._sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls_object = context.wrap_bio(
            self._incoming, self._outgoing, server_hostname=hostname
        )
        self._tls = threading.Lock()
        self._send = threading.Lock()
        while True:  # one thread so far: no locking needed for the handshake
            try:
                self._tls_object.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            self._flush()
            return

    @classmethod
    def connect(
        cls, address: tuple[str, int], context: ssl.SSLContext, hostname: str, timeout: float
    ) -> LockedTLSSocket:
        sock = socket.create_connection(address, timeout=timeout)
        try:
            tls = cls(sock, context, hostname)
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return tls

    def _fill(self) -> None:
        """Read the network (no lock held) into the incoming buffer."""
        data = self._sock.recv(65_536)
        with self._tls:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    def _flush(self) -> None:
        with self._send:
            with self._tls:
                data = self._outgoing.read()
            if data:
                self._sock.sendall(data)

    def recv(self, bufsize: int) -> bytes:
        """Every byte decrypted so far, waiting on the network for the first.

        This may return more than ``bufsize``: ``websockets`` waits with
        ``select()`` on the plain socket before it reads, so records already
        taken off the network must all be handed over now, or they would sit
        here while ``select()`` waits for bytes that were already read.
        """
        while True:
            chunks: list[bytes] = []
            ended = False
            with self._tls:
                while True:
                    try:
                        chunk = self._tls_object.read(max(bufsize, 16_384))
                    except ssl.SSLWantReadError:
                        break
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        ended = True
                        break
                    if not chunk:
                        ended = True
                        break
                    chunks.append(chunk)
                pending = self._outgoing.pending
            if pending:  # reading can produce records to send (a key update)
                self._flush()
            if chunks:
                return b"".join(chunks)  # an end of stream shows on the next call
            if ended:
                return b""
            self._fill()

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        with self._send:
            with self._tls:
                view = memoryview(data)
                while view:
                    view = view[self._tls_object.write(view) :]
                sealed = self._outgoing.read()
            self._sock.sendall(sealed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

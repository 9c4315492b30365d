"""The runtime's side of one connection, shared by the drivers."""

from __future__ import annotations

import socket
import time
from typing import Any

import anyio
import anyio.abc

from pcclog_core import Connection

__all__ = ["Peer", "clock", "format_peer"]


class Peer:
    """The runtime's side of one connection."""

    __slots__ = (
        "closer",
        "conn",
        "deadline",
        "id",
        "peer",
        "pending",
        "resume",
        "scope",
        "sock",
        "stream",
        "wake",
        "writing",
    )

    def __init__(self, sock: socket.socket, conn: Connection, peer: str, ident: int) -> None:
        self.sock = sock
        self.conn = conn
        self.peer = peer
        self.id = ident
        self.pending: memoryview | None = None
        self.deadline: float | None = None  # the one on the timer heap
        self.scope: anyio.CancelScope | None = None
        self.stream: anyio.abc.ByteStream | None = None  # TLS only
        self.wake: anyio.Event | None = None  # TLS only
        self.writing = False
        # Task drivers only: set when a paused connection may be read again.
        self.resume: anyio.Event | None = None
        # asyncio driver only: the call_later that ends the lingering close.
        self.closer: Any = None


def clock() -> tuple[float, float]:
    """(monotonic, wall) now: the two times the core is given."""
    return time.monotonic(), time.time()


def format_peer(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)

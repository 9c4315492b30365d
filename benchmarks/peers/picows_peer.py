"""Benchmark peer: a relay written to be fast, on ``picows`` + ``uvloop``.

Usage: ``python benchmarks/peers/picows_peer.py PORT [--host 127.0.0.1]``.

Same protocol subset as ``websockets_peer.py``; keepalive from ``WS_PING_INTERVAL`` /
``WS_PING_TIMEOUT`` (milliseconds, periodic pings).

What makes it fast, and what a tuned pcclog can copy:

* each relayed entry is JSON-encoded (msgspec) and WebSocket-framed exactly once; the same
  bytes are written to every subscriber's transport (server frames are unmasked, RFC 6455
  section 5.1, so they are identical for every viewer);
* writes are coalesced: entries relayed while handling one read buffer from a producer are
  joined and written once per subscriber when picows reports the last frame of that buffer
  (``frame.last_in_buffer``), so a burst of 100 messages costs one ``write`` per viewer,
  not 100.

Like the other peers it has no slow-consumer policy: a viewer that stops reading makes
its transport buffer grow until the keepalive closes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from datetime import UTC, datetime
from typing import Any

import msgspec
import uvloop
from picows import (
    WSAutoPingStrategy,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
PONG = b'{"type":"pong"}'


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return bytes((0x81, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + n.to_bytes(8, "big") + payload


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Session:
    __slots__ = ("metadata", "pending", "seq", "session_id", "status", "subscribers")

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.seq = 0
        self.status = "running"
        self.metadata: dict[str, Any] = {}
        # listener -> raw transport; dicts keep removal O(1) and iteration cheap.
        self.subscribers: dict[Listener, asyncio.Transport] = {}
        self.pending: list[bytes] = []

    def flush(self) -> None:
        pending = self.pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        for raw in self.subscribers.values():
            raw.write(data)


sessions: dict[str, Session] = {}
dirty: list[Session] = []


def get_session(session_id: str) -> Session:
    session = sessions.get(session_id)
    if session is None:
        session = sessions[session_id] = Session(session_id)
    return session


def flush_dirty() -> None:
    for session in dirty:
        session.flush()
    dirty.clear()


class Listener(WSListener):
    def __init__(self) -> None:
        self.transport: WSTransport | None = None
        self.subscribed: list[Session] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for session in self.subscribed:
            session.subscribers.pop(self, None)
        self.subscribed.clear()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            try:
                self.handle(transport, _decode(frame.get_payload_as_bytes()))
            except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
                transport.send(WSMsgType.TEXT, b'{"type":"error","code":"INVALID_MESSAGE"}')
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        if frame.last_in_buffer and dirty:
            flush_dirty()

    def handle(self, transport: WSTransport, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "log":
            session = get_session(msg["sessionId"])
            session.seq += 1
            entry: dict[str, Any] = {
                "type": "log",
                "sessionId": session.session_id,
                "timestamp": msg.get("timestamp") or now_iso(),
                "level": msg.get("level", "info"),
                "message": msg.get("message", ""),
                "seq": session.seq,
            }
            if "data" in msg:
                entry["data"] = msg["data"]
            if not session.pending:
                dirty.append(session)
            session.pending.append(text_frame(_encode(entry)))
        elif kind == "subscribe":
            session = get_session(msg["sessionId"])
            session.flush()  # entries before this subscribe are not this viewer's
            snapshot = {
                "type": "status",
                "sessionId": session.session_id,
                "status": session.status,
                "metadata": session.metadata,
            }
            transport.send(WSMsgType.TEXT, _encode(snapshot))
            if self not in session.subscribers:
                session.subscribers[self] = transport.underlying_transport
                self.subscribed.append(session)
        elif kind == "unsubscribe":
            session = get_session(msg["sessionId"])
            session.subscribers.pop(self, None)
            if session in self.subscribed:
                self.subscribed.remove(session)
        elif kind == "ping":
            transport.send(WSMsgType.TEXT, PONG)
        # "auth" and anything else: accepted silently.


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    interval = int(os.environ.get("WS_PING_INTERVAL", "30000")) / 1000
    # picows's periodic loop sleeps idle_timeout, pings, then sleeps reply_timeout, and
    # requires reply_timeout <= idle_timeout: split the interval so a ping still goes out
    # every WS_PING_INTERVAL.
    reply = min(interval / 2, int(os.environ.get("WS_PING_TIMEOUT", "5000")) / 1000)

    def factory(request: WSUpgradeRequest) -> Listener:
        return Listener()

    server = await ws_create_server(
        factory,
        args.host,
        args.port,
        enable_auto_ping=True,
        auto_ping_idle_timeout=interval - reply,
        auto_ping_reply_timeout=reply,
        auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
        enable_auto_pong=True,
    )
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with server:
        await stop


if __name__ == "__main__":
    uvloop.run(main())

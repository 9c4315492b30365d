"""Benchmark peer: the relay a Python user would write first, on ``websockets``.

Usage: ``python benchmarks/peers/websockets_peer.py PORT [--host 127.0.0.1]``.

Implements the protocol subset the harness drives (see ``benchmarks/README.md``):
``subscribe`` → a ``status`` snapshot then live entries, ``log`` from a producer →
relayed to every subscriber with a per-session ``seq`` starting at 1, ``ping`` → ``pong``.
Tokens are accepted, not checked. Keepalive follows the seed's environment variables
``WS_PING_INTERVAL`` / ``WS_PING_TIMEOUT`` (milliseconds).

Deliberately idiomatic rather than tuned: ``json`` per message, ``websockets.broadcast()``
for fan-out (it buffers without backpressure), ``max_queue=None``, no compression.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed


class Session:
    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.seq = 0
        self.status = "running"
        self.metadata: dict[str, Any] = {}
        self.subscribers: set[ServerConnection] = set()


sessions: dict[str, Session] = {}


def get_session(session_id: str) -> Session:
    session = sessions.get(session_id)
    if session is None:
        session = sessions[session_id] = Session(session_id)
    return session


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def handler(ws: ServerConnection) -> None:
    subscribed: set[Session] = set()
    try:
        async for raw in ws:
            try:
                msg = json.loads(raw)
                kind = msg["type"]
            except (ValueError, KeyError, TypeError):
                await ws.send(json.dumps({"type": "error", "code": "INVALID_MESSAGE"}))
                continue
            if kind == "log":
                session = get_session(msg["sessionId"])
                session.seq += 1
                entry = {
                    "type": "log",
                    "sessionId": session.session_id,
                    "timestamp": msg.get("timestamp") or now_iso(),
                    "level": msg.get("level", "info"),
                    "message": msg.get("message", ""),
                    "seq": session.seq,
                }
                if "data" in msg:
                    entry["data"] = msg["data"]
                broadcast(session.subscribers, json.dumps(entry))
            elif kind == "subscribe":
                session = get_session(msg["sessionId"])
                await ws.send(
                    json.dumps(
                        {
                            "type": "status",
                            "sessionId": session.session_id,
                            "status": session.status,
                            "metadata": session.metadata,
                        }
                    )
                )
                session.subscribers.add(ws)
                subscribed.add(session)
            elif kind == "unsubscribe":
                session = get_session(msg["sessionId"])
                session.subscribers.discard(ws)
                subscribed.discard(session)
            elif kind == "ping":
                await ws.send('{"type":"pong"}')
            # "auth" and anything else: accepted silently.
    except ConnectionClosed:
        pass
    finally:
        for session in subscribed:
            session.subscribers.discard(ws)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    interval = int(os.environ.get("WS_PING_INTERVAL", "30000")) / 1000
    timeout = int(os.environ.get("WS_PING_TIMEOUT", "5000")) / 1000

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        args.host,
        args.port,
        max_queue=None,
        compression=None,
        ping_interval=interval,
        ping_timeout=timeout,
    ):
        await stop


if __name__ == "__main__":
    asyncio.run(main())

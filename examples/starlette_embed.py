"""Embedding pcclog's hub in another service's own WebSocket stack.

A Starlette app (run by uvicorn) serves pcclog's protocol on ``/pcclog``
next to its own routes. Starlette owns the sockets and the framing; pcclog's
core owns everything else: parsing, auth, subscriptions, history, fan-out,
backpressure. Each WebSocket gets a ``Client(framed=False)``, which takes
whole text messages and gives back JSON payloads instead of frames.

Fan-out happens inside whichever connection's handler fed the hub, so after
every input the handler wakes the writers of every client the hub marked
ready (``hub.take_ready()``); each writer drains its client and sends.

Run it::

    PCCLOG_TOKEN=secret .venv/bin/uvicorn examples.starlette_embed:app --port 8000

The service can also publish entries itself: ``publish()`` below is what a
job runner inside the service would call.
"""

from __future__ import annotations

import asyncio
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from pcclog_core import Authenticator, Client, Hub, Limits, format_wall, parse_static_tokens

hub = Hub(
    Limits(ping_interval=0),  # Starlette's server (uvicorn) does WebSocket pings itself
    Authenticator(static_tokens=parse_static_tokens(os.environ.get("PCCLOG_TOKEN", "secret"))),
)
_wakeups: dict[Client, asyncio.Event] = {}


def _wake_ready() -> None:
    """Wake the writer of every client the hub queued something for."""
    for client in hub.take_ready():
        event = _wakeups.get(client)
        if event is not None:
            event.set()


def publish(session_id: str, message: str, level: str = "info") -> int:
    """What the host service calls to add an entry of its own."""
    seq = hub.publish_log(
        session_id,
        level=level,
        message=message,
        timestamp=format_wall(time.time()),
        now=time.monotonic(),
    )
    _wake_ready()
    return seq


async def pcclog_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    client = Client(hub, now=time.monotonic(), framed=False)
    wake = _wakeups[client] = asyncio.Event()

    async def writer() -> None:
        while True:
            await wake.wait()
            wake.clear()
            for payload in client.messages_to_send():
                await websocket.send_text(payload.decode())
            if client.close_request is not None:
                code, reason = client.close_request
                await websocket.close(code=int(code), reason=reason)
                return

    writer_task = asyncio.create_task(writer())
    try:
        while client.close_request is None:
            deadline = client.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                text = await asyncio.wait_for(websocket.receive_text(), timeout)
            except TimeoutError:
                client.handle_timeout(time.monotonic())
            else:
                client.receive_message(text, now=time.monotonic(), wall=time.time())
            _wake_ready()
        await asyncio.wait_for(writer_task, 5)
    except WebSocketDisconnect:
        pass
    finally:
        writer_task.cancel()
        client.disconnect()
        _wakeups.pop(client, None)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"service": "host", "sessions": len(hub.sessions)})


async def publish_route(request: Request) -> JSONResponse:
    seq = publish(request.path_params["session"], request.query_params.get("message", ""))
    return JSONResponse({"seq": seq})


app = Starlette(
    routes=[
        Route("/health", health),
        Route("/publish/{session}", publish_route, methods=["POST"]),
        WebSocketRoute("/pcclog", pcclog_endpoint),
    ]
)

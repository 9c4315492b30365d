"""The Python client of pcclog: read sessions (``Subscription``), publish
them (``Producer``), list them (``list_sessions``).

Every decision lives in the sans-IO core: where a viewer stands in each
session and what to send to get back there (``pcclog_core._resume``), a
producer's numbered entries, in-flight window, confirmations and refusals
(``pcclog_core._producer``), and the backoff and pacing schedules
(``pcclog_core._pacing``); their module docstrings state the guarantees
exactly. This module only moves their messages over the ``websockets``
asyncio client, sleeps when they say so and reports what they tell.

Reading: ``Subscription``
-------------------------

::

    async with Subscription("ws://127.0.0.1:8080", "*", token=t) as sub:
        async for message in sub:
            ...  # dicts: status snapshots, log, status, gap, error

Within one ``Subscription`` every ``log`` and ``status`` entry of a session
is yielded at most once and in ``seq`` order, and none is skipped without a
``gap``, across any number of disconnects of the same server process; after
a server restart it follows the new server's sessions from their ``seq`` 1.

Writing: ``Producer``
---------------------

::

    async with Producer("ws://127.0.0.1:8080", token=t) as producer:
        producer.status("build-1", "running", {"pid": 42})
        producer.log("build-1", "info", "compiling")
    # leaving the block flushes (bounded by ``flush_timeout``)

``log`` and ``status`` never block and never fail because the server is
away or refuses the token: entries wait in a bounded buffer and are sent
in order whenever a connection is up and accepted. An entry leaves the
buffer only once the server has surely handled it (a ``pong`` after it);
unconfirmed entries are sent again after a reconnect and land once while
the server process stays the same. On every reconnect the producer first
re-sends the status a server last confirmed ``running`` for each session, so
a restarted server gets them back even from a producer that prints nothing
(the same server drops the copy as already applied). Long messages are split
so no frame exceeds ``max_message_size`` (``data`` gets ``"part": k,
"parts": n``).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgspec
from websockets.exceptions import InvalidURI

from pcclog_core._entries import split_message
from pcclog_core._messages import Auth, List, encode

from ._client_common import (
    TRANSIENT,
    AuthenticationError,
    ClientError,
    ConnectionFailed,
    describe,
    is_refusal,
    normalize_url,
    open_connection,
)
from ._client_producer import Producer
from ._client_subscription import Subscription, subscribe

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConnectionFailed",
    "Producer",
    "Subscription",
    "list_sessions",
    "normalize_url",
    "split_message",
    "subscribe",
]


async def list_sessions(
    url: str, token: str | None, *, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The sessions the token may view: ``[{"sessionId", "status",
    "metadata", "lastSeq"}, ...]``. One attempt; raises ``ConnectionFailed``
    or ``AuthenticationError``."""
    url = normalize_url(url)
    try:
        async with asyncio.timeout(timeout):
            async with open_connection(url, max_size=64 * 1024 * 1024, open_timeout=timeout) as ws:
                if token is not None:
                    await ws.send(encode(Auth(token=token)).decode())
                await ws.send(encode(List()).decode())
                async for raw in ws:
                    message = msgspec.json.decode(raw)
                    if message.get("type") == "sessions":
                        return cast(list[dict[str, Any]], message.get("sessions") or [])
                    if message.get("type") == "error":
                        if message.get("code") == "UNAUTHORIZED":
                            raise AuthenticationError(str(message.get("message")))
                        raise ClientError(f"{message.get('code')}: {message.get('message')}")
                raise ConnectionFailed(f"{url}: the server closed the connection")
    except InvalidURI as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    except TimeoutError:
        raise ConnectionFailed(f"{url}: no answer within {timeout:g}s") from None
    except TRANSIENT as exc:
        if is_refusal(exc):
            raise AuthenticationError(
                f"the server refused the connection: {describe(exc)}"
            ) from None
        raise ConnectionFailed(f"cannot list sessions at {url}: {describe(exc)}") from exc

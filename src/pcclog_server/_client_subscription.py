"""``Subscription``: a viewer over the ``websockets`` asyncio client, a thin
adapter of ``pcclog_core._resume.Resume`` (which decides what to send on
each connection and which entries to hand out)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidURI

from pcclog_core._pacing import Backoff
from pcclog_core._resume import Resume, ResumeRefused, ResyncInterrupted

from ._client_common import (
    TRANSIENT,
    AuthenticationError,
    ConnectionFailed,
    describe,
    is_refusal,
    log,
    normalize_url,
    open_connection,
    tell,
)

__all__ = ["Subscription", "subscribe"]


class Subscription:
    """Subscribe to one session, a glob or ``"*"`` and iterate over its
    messages, reconnecting and resuming without loss (``pcclog_core.
    _resume``).

    ``since``/``tail`` apply to the first subscribe only (the server's
    default tail is ``SUBSCRIBE_TAIL``). ``token=None`` sends no ``auth``
    (for a server with ``AUTH_DISABLED``). With ``reconnect=False`` a lost
    or refused connection raises ``ConnectionFailed``; with ``True`` (the
    default) the client keeps trying with exponential jittered backoff
    between ``backoff[0]`` and ``backoff[1]`` seconds.

    Yields the server's messages as dicts. ``UNAUTHORIZED`` is raised as
    ``AuthenticationError`` instead. With ``sync_markers=True`` it also
    yields ``{"type": "synced", "sessionId": ..., "reconnected": bool}``, a
    client-side marker (never sent by the server) meaning: everything the
    (re)subscribe replayed has been yielded; what follows is live.

    ``on_connection_change(connected, detail)`` is called on every connect
    and disconnect (for a status line); the ``pcclog.client`` logger gets
    the same news.
    """

    def __init__(
        self,
        url: str,
        session_id: str,
        *,
        token: str | None,
        since: int | None = None,
        tail: int | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.25, 10.0),
        open_timeout: float = 10.0,
        max_size: int | None = 64 * 1024 * 1024,
        sync_markers: bool = False,
        on_connection_change: Callable[[bool, str], None] | None = None,
    ) -> None:
        self._core = Resume(
            session_id,
            token=token,
            since=since,
            tail=tail,
            sync_markers=sync_markers,
            backoff=Backoff(*backoff),
        )
        self.url = normalize_url(url)
        self.session_id = session_id
        self.token = token
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.max_size = max_size
        self.on_connection_change = on_connection_change
        self._ws: ClientConnection | None = None
        self._closed = False

    @property
    def last_seq(self) -> dict[str, int]:
        """Highest ``seq`` yielded (or known to be current) per session."""
        return self._core.last_seq

    @property
    def reconnects(self) -> int:
        return self._core.reconnects

    @property
    def connection(self) -> ClientConnection | None:
        """The current ``websockets`` connection, if any (diagnostics, tests)."""
        return self._ws

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def aclose(self) -> None:
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()

    async def __anext__(self) -> dict[str, Any]:
        core = self._core
        while True:
            message = core.next_event()
            if message is not None:
                return message
            if self._closed:
                raise StopAsyncIteration
            ws = self._ws
            if ws is None:
                await self._connect()
                continue
            try:
                raw = await ws.recv()
                try:
                    core.receive_text(raw)
                finally:
                    for notice in core.notices():
                        tell(notice)
                await self._send_queued(ws)
            except ConnectionClosed as exc:
                await self._lost(exc)
            except ResumeRefused as exc:
                raise AuthenticationError(exc.message, exc.session_id) from None
            except ResyncInterrupted:
                with contextlib.suppress(Exception):
                    await ws.close(1000, "resync was rate limited")
                await self._lost(ConnectionClosed(None, None))

    async def _connect(self) -> None:
        core = self._core
        while not self._closed:
            await asyncio.sleep(core.backoff.wait(time.monotonic()))
            try:
                ws = await open_connection(
                    self.url, max_size=self.max_size, open_timeout=self.open_timeout
                )
            except InvalidURI as exc:
                raise ValueError(f"invalid URL {self.url!r}: {exc}") from None
            except TRANSIENT as exc:
                if is_refusal(exc):
                    raise AuthenticationError(
                        f"the server refused the connection: {describe(exc)}"
                    ) from None
                if not self.reconnect:
                    raise ConnectionFailed(
                        f"cannot connect to {self.url}: {describe(exc)}"
                    ) from exc
                core.connection_failed(time.monotonic())
                self._notify(False, f"cannot connect to {self.url}: {describe(exc)}")
                continue
            self._ws = ws
            core.connection_made()
            try:
                await self._send_queued(ws)
            except ConnectionClosed as exc:
                await self._lost(exc)
                continue
            self._notify(True, f"connected to {self.url}")
            return

    async def _send_queued(self, ws: ClientConnection) -> None:
        core = self._core
        for text in core.data_to_send():
            wait = core.bucket.take(time.monotonic())
            if wait:
                await asyncio.sleep(wait)
            await ws.send(text)

    async def _lost(self, exc: BaseException) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        self._core.connection_lost(time.monotonic())
        if self._closed:
            return
        if not self.reconnect:
            raise ConnectionFailed(f"{self.url}: {describe(exc)}") from exc
        self._notify(False, f"{describe(exc)}; reconnecting")

    def _notify(self, connected: bool, detail: str) -> None:
        (log.info if connected else log.warning)("%s", detail)
        if self.on_connection_change is not None:
            self.on_connection_change(connected, detail)


async def subscribe(
    url: str,
    session_id: str,
    *,
    token: str | None,
    since: int | None = None,
    tail: int | None = None,
    reconnect: bool = True,
    backoff: tuple[float, float] = (0.25, 10.0),
) -> AsyncIterator[dict[str, Any]]:
    """Iterate over a session's messages (an async generator around
    ``Subscription``; prefer ``Subscription`` or ``contextlib.aclosing`` to
    close the connection promptly when you stop early)."""
    async with Subscription(
        url, session_id, token=token, since=since, tail=tail, reconnect=reconnect, backoff=backoff
    ) as sub:
        async for message in sub:
            yield message

"""``Producer``: a producer over the ``websockets`` asyncio client, a thin
adapter of ``pcclog_core._producer.ProducerProtocol`` (which owns the
buffer, the numbering, the in-flight window, confirmations, refusals and
the status re-sent on reconnect)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidURI

from pcclog_core._entries import StatusValue
from pcclog_core._pacing import Backoff
from pcclog_core._producer import ProducerProtocol, ProducerState, Rejection

from ._client_common import (
    TRANSIENT,
    AuthenticationError,
    ClientError,
    close_reason,
    describe,
    is_refusal,
    log,
    normalize_url,
    open_connection,
    tell,
)

__all__ = ["Producer"]


class Producer:
    """Publish ``log`` and ``status`` entries, buffering while the server is
    unreachable or refuses the token (``pcclog_core._producer`` states the
    exact guarantee).

    Use it as ``async with Producer(url, token=t) as p:`` or call
    ``start()`` and ``aclose()``. ``log`` and ``status`` are plain methods
    (call them from the event loop's thread); ``await flush()`` waits until
    everything given so far is confirmed.

    Counters: ``pending`` (entries not yet confirmed), ``dropped`` (removed
    by buffer overflow), ``rejected`` (refused by the server: a session the
    token does not cover or may not produce to, for good; or, after
    ``TOO_MANY_SESSIONS``, that session's entries for ``refuse_retry``
    seconds), with the latest reason in ``last_rejection``. ``error`` holds
    the server's refusal of the token while it lasts; the producer keeps its
    entries and retries with backoff meanwhile, and says so once through the
    ``pcclog.client`` logger and ``on_connection_change``.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        max_buffer: int = 100_000,
        max_in_flight: int = 1_000,
        max_message_size: int = 1_048_576,
        backoff: tuple[float, float] = (0.25, 10.0),
        open_timeout: float = 10.0,
        flush_timeout: float = 30.0,
        min_ping_interval: float = 0.01,
        on_connection_change: Callable[[bool, str], None] | None = None,
        on_rejected: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self._core = ProducerProtocol(
            producer_id=uuid.uuid4().hex,
            token=token,
            peer=self.url,
            max_buffer=max_buffer,
            max_in_flight=max_in_flight,
            max_message_size=max_message_size,
            min_ping_interval=min_ping_interval,
            backoff=Backoff(*backoff),
        )
        self.token = token
        self.open_timeout = open_timeout
        self.flush_timeout = flush_timeout
        self.on_connection_change = on_connection_change
        self.on_rejected = on_rejected
        self._fatal: ClientError | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None

    # --- public ---------------------------------------------------------

    @property
    def producer_id(self) -> str:
        """This producer's random id, sent with every entry as ``producer``."""
        return self._core.producer_id

    @property
    def pending(self) -> int:
        """Entries given but not yet confirmed by the server."""
        return self._core.pending

    @property
    def dropped(self) -> int:
        return self._core.dropped

    @property
    def rejected(self) -> int:
        return self._core.rejected

    @property
    def last_rejection(self) -> str | None:
        return self._core.last_rejection

    @property
    def connected(self) -> bool:
        return self._core.connected

    @property
    def error(self) -> ClientError | None:
        """Why nothing can be delivered right now: the server refuses the
        token (retried), or the URL is invalid (not retried)."""
        if self._fatal is not None:
            return self._fatal
        refusal = self._core.refusal
        return None if refusal is None else AuthenticationError(refusal)

    @property
    def refuse_retry(self) -> float:
        """Seconds a ``TOO_MANY_SESSIONS`` refusal of a session lasts."""
        return self._core.refuse_retry

    @refuse_retry.setter
    def refuse_retry(self, seconds: float) -> None:
        self._core.refuse_retry = seconds

    async def __aenter__(self) -> Producer:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start connecting in the background (idempotent)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pcclog-producer")

    def log(
        self,
        session_id: str,
        level: str,
        message: str,
        data: dict[str, Any] | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """Queue a ``log`` entry. ``timestamp`` (epoch seconds) defaults to
        now, so entries buffered during an outage keep their real time. A
        message too long for one frame becomes several consecutive entries."""
        wall = time.time() if timestamp is None else timestamp
        self._core.log(session_id, level, message, data, timestamp=wall, now=time.monotonic())
        self._changed()

    def status(
        self, session_id: str, status: StatusValue, metadata: dict[str, Any] | None = None
    ) -> None:
        """Queue a ``status`` entry (``running``, ``stopped`` or ``error``);
        the server merges ``metadata`` into the session's."""
        self._core.status(session_id, status, metadata, now=time.monotonic())
        self._changed()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry given so far is confirmed (or refused).
        True when the buffer is empty; False on timeout (a refused token is
        retried meanwhile) or when nothing can ever be sent (invalid URL)."""
        if self._fatal is not None:
            return not self.pending
        waiter = asyncio.ensure_future(self._idle.wait())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=timeout)
        finally:
            waiter.cancel()
        return bool(done) and not self.pending

    async def aclose(self, flush_timeout: float | None = None) -> bool:
        """Flush (up to ``flush_timeout``, default the constructor's), then
        close. Returns whether everything was delivered."""
        timeout = self.flush_timeout if flush_timeout is None else flush_timeout
        delivered = await self.flush(timeout) if self._task is not None else not self.pending
        self._core.close()
        task, self._task = self._task, None
        if task is not None:
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return delivered

    # --- the adapter ------------------------------------------------------

    def _changed(self) -> None:
        """After any call into the core: report its events, wake the writer,
        and keep ``_idle`` true exactly when nothing is pending."""
        for event in self._core.events():
            if isinstance(event, Rejection):
                if self.on_rejected is not None:
                    self.on_rejected(event.message)
                continue
            tell(event)
            if event.connected is not None and self.on_connection_change is not None:
                self.on_connection_change(event.connected, event.text)
        if self._core.pending:
            self._idle.clear()
        else:
            self._idle.set()
        self._wake.set()

    async def _run(self) -> None:
        core = self._core
        while not core.closed:
            await asyncio.sleep(core.backoff.wait(time.monotonic()))
            if core.closed:
                return
            core.connecting()
            try:
                ws = await open_connection(
                    self.url, max_size=16 * 1024 * 1024, open_timeout=self.open_timeout
                )
            except InvalidURI as exc:
                self._fatal = ClientError(f"invalid URL {self.url!r}: {exc}")
                log.error("%s", self._fatal)
                core.close()
                self._idle.set()
                return
            except TRANSIENT as exc:
                if is_refusal(exc):
                    reason = f"the server refused the connection: {describe(exc)}"
                    core.connection_failed(reason, time.monotonic(), refused=True)
                else:
                    reason = f"cannot reach {self.url}: {describe(exc)}"
                    core.connection_failed(reason, time.monotonic())
                self._changed()
                continue
            try:
                async with ws:
                    self._ws = ws
                    core.connection_made()
                    reason = await self._serve(ws)
            except TRANSIENT as exc:
                reason = describe(exc)
            except Exception as exc:  # a bug: say so, and keep the entries going
                log.exception("pcclog producer: unexpected error")
                reason = f"unexpected error: {exc!r}"
            finally:
                self._ws = None
            core.connection_lost(f"connection to {self.url} lost: {reason}", time.monotonic())
            self._changed()

    async def _serve(self, ws: ClientConnection) -> str:
        """Run the reader and the writer until one of them ends: the
        connection broke, or the core refused it (a refused token).
        Returns why it ended."""
        reader = asyncio.ensure_future(self._read(ws))
        writer = asyncio.ensure_future(self._write(ws))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            for task in (reader, writer):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise cast(BaseException, task.exception())
        return close_reason(ws)

    def _on_line(self) -> bool:
        return self._core.state in (ProducerState.AUTHENTICATING, ProducerState.STREAMING)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            self._core.receive_text(raw, time.monotonic())
            self._changed()
            if not self._on_line():
                return  # refused: close this connection, retry later

    async def _write(self, ws: ClientConnection) -> None:
        core = self._core
        while self._on_line():
            self._wake.clear()
            texts = core.data_to_send(time.monotonic())
            for text in texts:
                await ws.send(text)
            if texts:
                await asyncio.sleep(0)  # let the reader and the application run
                continue
            deadline = core.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

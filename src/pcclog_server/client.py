"""The Python client of pcclog: read sessions (``Subscription``), publish
them (``Producer``), list them (``list_sessions``).

Built on the ``websockets`` asyncio client. Every function here talks the
wire protocol of ``docs/protocol.md``; nothing imports the server.

Reading: ``Subscription``
-------------------------

::

    async with Subscription("ws://127.0.0.1:8080", "*", token=t) as sub:
        async for message in sub:
            ...  # dicts: status snapshots, log, status, gap, error

Guarantee: within one ``Subscription``, every ``log`` and ``status`` entry
of a session is yielded **at most once and in ``seq`` order**, and **none
is skipped without a ``gap`` message** saying so (the server's own ``gap``,
yielded unchanged: ``slow_consumer``, or ``evicted`` when the server's
history, ``HISTORY_LINES``, no longer holds what was missed) — across any
number of disconnects of the same server process. After a server restart
it follows the new server's sessions from their ``seq`` 1.

How:

* The client remembers, per session, the highest ``seq`` it yielded and
  that entry itself. After a disconnect it reconnects with exponential,
  jittered backoff and resubscribes each known session with ``since`` one
  below that seq, so the server first repeats the last entry the client
  already has: if it comes back identical the session is the same and the
  replay continues it; if it differs (or the session's ``lastSeq`` is now
  lower), the server forgot the session (restart, eviction of an ended
  session) and a new one took its id, so the client replays that one from
  ``seq`` 1.
* For ``*`` it first subscribes ``*`` with tail 0 (so sessions born later
  are followed from their first entry) and asks for the session list: only
  the sessions whose ``lastSeq`` moved past what the client has are resumed
  as above (an explicit subscribe immediately followed by an unsubscribe:
  the wildcard keeps the session attached, so the connection never holds
  more than two subscriptions), and the sessions it had never seen (born
  while it was away) are replayed from ``seq`` 1. A reconnect costs a few
  messages per session that changed, none for the others.
* A ``list`` request after each round of resubscribes acts as a fence: the
  server handles one connection's messages in order, so its answer comes
  after every replayed entry. Until then, entries of a resuming session
  that do not continue its sequence are dropped, because the replay is
  certain to bring them again in order; duplicates are dropped always.
  Status snapshots of known sessions are not repeated on a reconnect: the
  replay carries every status change.

What it cannot promise: entries that left the server's history while the
client was away (announced by a ``gap``); entries a server had not sent
yet when it died (they died with it, and nothing can announce them); and,
after a restart, the recognition of a new session whose entry at the old
position already left the new server's history (nothing to compare with:
it is then resumed from the old position, after the ``evicted`` gap), or,
under ``*``, of one whose new numbering stands exactly where the old one
stopped (it looks unchanged, so it is not resumed and not checked).

Writing: ``Producer``
---------------------

::

    async with Producer("ws://127.0.0.1:8080", token=t) as producer:
        producer.status("build-1", "running", {"pid": 42})
        producer.log("build-1", "info", "compiling")
    # leaving the block flushes (bounded by ``flush_timeout``)

``log`` and ``status`` never block and never fail because the server is
away: entries go into an in-memory buffer (``max_buffer`` entries, default
100,000; past that the oldest is dropped and counted in ``dropped``, with a
warning) and are sent, in order, whenever a connection is up.

Guarantee: an entry leaves the buffer only once the server has surely
handled it. After sending entries the producer sends ``{"type":"ping"}``;
the server handles one connection's messages in order, so its ``pong``
proves that every entry sent before that ping was handled. (An ``error``
the server returns for an entry proves the same for the entries before
it.) If the connection breaks, every entry not yet proven is sent again,
in order, on the next connection. So:

* **no loss**: every entry given to ``log``/``status`` reaches the server
  unless the buffer overflowed (counted in ``dropped``), ``flush``/
  ``aclose`` gave up while the server was unreachable (``pending``), or the
  server refused it (``rejected``: a token without the produce role or not
  covering the session, for good; ``TOO_MANY_SESSIONS``, after which that
  session's entries are refused here for ``refuse_retry`` seconds, 5 by
  default, instead of drawing a stream of errors);
* **order**: entries reach the server in the order they were given;
* **exactly once while the server process stays the same**: every entry
  carries the producer's id (``producer``, random per ``Producer``) and its
  own number (``pseq``, growing across every session it writes); the
  server remembers, per session, the highest ``pseq`` it applied for each
  producer and drops a resend of one it already applied. So the entries in
  flight (sent, not yet proven; at most ``max_in_flight``, default 1,000)
  when a connection broke are sent again and land once. The exception is
  a server restart: entries the old server handled but never confirmed
  (those of the last round trip before it died) are sent again to the new
  server, whose memory starts empty, and appear there again. (Also: the
  server remembers the 64 most recent producers of a session, and a
  server older than this numbering ignores it and applies resends again.)
  Entries buffered while the server was unreachable are delivered exactly
  once.

Long messages are split so no frame exceeds ``max_message_size`` (the
server's ``MAX_MESSAGE_SIZE``): the parts are consecutive entries whose
``data`` carries ``"part": k, "parts": n``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from pcclog_core._timefmt import format_wall

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

log = logging.getLogger("pcclog.client")
log.addHandler(logging.NullHandler())

StatusValue = Literal["running", "stopped", "error"]
_STATUSES = ("running", "stopped", "error")
_PING = '{"type":"ping"}'
_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    WebSocketException,
    EOFError,
)


# --- errors -----------------------------------------------------------------


class ClientError(Exception):
    """Base of the errors this module raises."""


class AuthenticationError(ClientError):
    """The server refused the token (``UNAUTHORIZED``): a wrong or expired
    token, or one without the role or session scope the request needs.
    Never retried: the same token would be refused again."""

    def __init__(self, message: str, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class ConnectionFailed(ClientError):
    """The server could not be reached or the connection broke, and
    reconnecting was not asked for."""


# --- helpers ----------------------------------------------------------------


def normalize_url(url: str) -> str:
    """``http(s)://`` → ``ws(s)://``; a bare ``host:port`` gets ``ws://``."""
    url = url.strip()
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if "://" not in url:
        return "ws://" + url
    return url


def _backoff_delay(attempt: int, backoff: tuple[float, float]) -> float:
    """Exponential with "equal jitter": half fixed, half random."""
    base, cap = backoff
    delay: float = min(cap, base * 2.0 ** min(attempt, 30))
    return delay / 2 + random.uniform(0, delay / 2)


def _open(url: str, *, max_size: int | None, open_timeout: float) -> Any:
    return connect(
        normalize_url(url),
        compression=None,
        max_size=max_size,
        max_queue=256,
        open_timeout=open_timeout,
        close_timeout=2,
        ping_interval=20,
        ping_timeout=20,
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}".strip()
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is not None:
            return f"connection closed by the server ({rcvd.code} {rcvd.reason})".strip()
        return "connection lost"
    text = str(exc) or type(exc).__name__
    return text


def _is_refusal(exc: BaseException) -> bool:
    return isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403)


class _Bucket:
    """Client-side mirror of the server's per-connection rate limit
    (``RATE_LIMIT``, default 200/s with a burst of 400), kept well under it
    so control messages of a big resync are never dropped."""

    def __init__(self, rate: float = 100.0, burst: float = 200.0) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            await asyncio.sleep((1.0 - self.tokens) / self.rate)
            self.tokens = 1.0
            self.stamp = time.monotonic()
        self.tokens -= 1.0


# --- reading ----------------------------------------------------------------


class _Fence:
    __slots__ = ("kind", "sessions")

    def __init__(self, kind: str, sessions: Iterable[str]) -> None:
        self.kind = kind  # "initial", "reconnect" or "resync"
        self.sessions = frozenset(sessions)


class Subscription:
    """Subscribe to one session or ``"*"`` and iterate over its messages,
    reconnecting and resuming without loss (see the module docstring).

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
        if not session_id:
            raise ValueError("session_id must not be empty")
        if (since is not None and since < 0) or (tail is not None and tail < 0):
            raise ValueError("since and tail must not be negative")
        self.url = normalize_url(url)
        self.session_id = session_id
        self.token = token
        self.since = since
        self.tail = tail
        self.reconnect = reconnect
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.max_size = max_size
        self.sync_markers = sync_markers
        self.on_connection_change = on_connection_change
        self._ws: ClientConnection | None = None
        self._closed = False
        self._out: collections.deque[dict[str, Any]] = collections.deque()
        self._last: dict[str, int] = {}
        self._tip: dict[str, dict[str, Any]] = {}  # the entry at _last, as yielded
        self._verify: dict[str, int] = {}  # resumed sessions whose tip must come back first
        self._known: set[str] = set()
        self._windows: dict[str, int] = {}  # session -> fence number closing it
        self._fences: collections.deque[tuple[int, _Fence]] = collections.deque()
        self._fence_no = 0
        self._connections = 0
        self._attempt = 0
        self._reconnect_phase = False
        self._sync_pending = False
        self._bucket = _Bucket()
        self.reconnects = 0

    # --- public ---------------------------------------------------------

    @property
    def last_seq(self) -> dict[str, int]:
        """Highest ``seq`` yielded (or known to be current) per session."""
        return dict(self._last)

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
        while True:
            if self._out:
                return self._out.popleft()
            if self._closed:
                raise StopAsyncIteration
            ws = self._ws
            if ws is None:
                await self._connect()
                continue
            try:
                raw = await ws.recv()
            except ConnectionClosed as exc:
                await self._lost(exc)
                continue
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict):
                try:
                    await self._handle(message)
                except ConnectionClosed as exc:
                    await self._lost(exc)

    # --- connecting -----------------------------------------------------

    async def _connect(self) -> None:
        while not self._closed:
            if self._attempt:
                await asyncio.sleep(_backoff_delay(self._attempt - 1, self.backoff))
            self._attempt += 1
            try:
                ws = await _open(self.url, max_size=self.max_size, open_timeout=self.open_timeout)
            except InvalidURI as exc:
                raise ValueError(f"invalid URL {self.url!r}: {exc}") from None
            except _TRANSIENT as exc:
                if _is_refusal(exc):
                    raise AuthenticationError(
                        f"the server refused the connection: {_describe(exc)}"
                    ) from None
                if not self.reconnect:
                    raise ConnectionFailed(
                        f"cannot connect to {self.url}: {_describe(exc)}"
                    ) from exc
                self._notify(False, f"cannot connect to {self.url}: {_describe(exc)}")
                continue
            self._ws = ws
            try:
                await self._start(first=self._connections == 0)
            except ConnectionClosed as exc:
                await self._lost(exc)
                continue
            self._connections += 1
            if self._connections > 1:
                self.reconnects += 1
            self._notify(True, f"connected to {self.url}")
            return

    async def _lost(self, exc: BaseException) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        self._windows.clear()
        self._verify.clear()
        self._fences.clear()
        self._reconnect_phase = False
        if self._closed:
            return
        if not self.reconnect:
            raise ConnectionFailed(f"{self.url}: {_describe(exc)}") from exc
        self._notify(False, f"{_describe(exc)}; reconnecting")

    def _notify(self, connected: bool, detail: str) -> None:
        if connected:
            log.info("%s", detail)
        else:
            log.warning("%s", detail)
        if self.on_connection_change is not None:
            self.on_connection_change(connected, detail)

    async def _send(self, message: dict[str, Any]) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(None, None)
        await self._bucket.take()
        await ws.send(json.dumps(message, separators=(",", ":")))

    def _original(self, session_id: str) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "sessionId": session_id}
        if self.since is not None:
            message["since"] = self.since
        if self.tail is not None:
            message["tail"] = self.tail
        return message

    async def _fence(self, kind: str, sessions: Iterable[str]) -> int:
        self._fence_no += 1
        fence = _Fence(kind, sessions)
        for session_id in fence.sessions:
            self._windows[session_id] = self._fence_no
        self._fences.append((self._fence_no, fence))
        await self._send({"type": "list"})
        return self._fence_no

    async def _start(self, *, first: bool) -> None:
        """Authenticate and (re)subscribe on a fresh connection."""
        self._sync_pending = True
        if self.token is not None:
            await self._send({"type": "auth", "token": self.token})
        target = self.session_id
        if first:
            await self._send(self._original(target))
            await self._fence("initial", ())
            return
        self._reconnect_phase = True
        if target == "*":
            # Follow everything from now on, then ask where each session
            # stands: only those that moved while we were away are resumed
            # (in ``_fenced``), so a reconnect costs a few messages, not two
            # per session of the server.
            await self._send({"type": "subscribe", "sessionId": "*", "tail": 0})
            await self._fence("reconnect", self._known | set(self._last))
        else:
            self._windows[target] = self._fence_no + 1
            await self._send(self._resume_message(target))
            await self._fence("reconnect", (target,))

    def _resume_message(self, session_id: str) -> dict[str, Any]:
        last = self._last.get(session_id)
        tip = self._tip.get(session_id)
        if last is not None and last >= 1 and tip is not None and tip.get("seq") == last:
            # Ask for the last entry we have too: if it comes back unchanged
            # this is the same session; if not, the server forgot it and a
            # new one reuses the id (and its numbering restarted).
            self._verify[session_id] = last
            return {"type": "subscribe", "sessionId": session_id, "since": last - 1}
        if last is not None:
            return {"type": "subscribe", "sessionId": session_id, "since": last}
        if session_id in self._known:
            # Seen, but the connection broke before its position was known.
            return self._original(session_id)
        # Never seen: it did not exist yet, so all of it is new.
        return {"type": "subscribe", "sessionId": session_id, "since": 0}

    async def _resync(self, session_id: str) -> None:
        """Replay ``session_id`` from seq 1 (a session new to us, or a new
        incarnation of a known one)."""
        await self._resume((), (session_id,))

    async def _resume(self, resumed: Iterable[str], restarted: Iterable[str]) -> None:
        """Resubscribe ``resumed`` sessions from where we are and replay
        ``restarted`` ones from seq 1, then fence. Until the fence, entries
        of these sessions that do not continue their sequence are dropped:
        the replay brings them again, in order. Under ``*`` each explicit
        subscribe is undone at once (the wildcard keeps the session
        attached), so the connection never holds more than two."""
        self._fence_no += 1
        number = self._fence_no
        messages: list[tuple[str, dict[str, Any]]] = []
        for session_id in restarted:
            self._last[session_id] = 0
            self._tip.pop(session_id, None)
            self._verify.pop(session_id, None)
            self._windows[session_id] = number
            messages.append(
                (session_id, {"type": "subscribe", "sessionId": session_id, "since": 0})
            )
        for session_id in resumed:
            self._windows[session_id] = number
            messages.append((session_id, self._resume_message(session_id)))
        for session_id, message in messages:
            await self._send(message)
            if self.session_id == "*":
                await self._send({"type": "unsubscribe", "sessionId": session_id})
        self._fences.append((number, _Fence("resync", [s for s, _ in messages])))
        await self._send({"type": "list"})

    # --- messages ---------------------------------------------------------

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        session_id = message.get("sessionId")
        if kind in ("log", "status") and isinstance(session_id, str):
            seq = message.get("seq")
            if isinstance(seq, int):
                await self._entry(message, session_id, seq)
            elif kind == "status":
                await self._snapshot(message, session_id)
            else:
                self._out.append(message)
        elif kind == "gap" and isinstance(session_id, str):
            self._gap(message, session_id)
        elif kind == "sessions":
            await self._fenced(message)
        elif kind == "error":
            await self._error(message)
        elif kind == "pong":
            pass
        else:
            self._out.append(message)

    async def _entry(self, message: dict[str, Any], session_id: str, seq: int) -> None:
        verify = self._verify.get(session_id)
        if verify is not None:
            # Until our last entry comes back, nothing of this session is
            # certain; the replay behind it repeats whatever is dropped here.
            if seq == verify:
                del self._verify[session_id]
                if message != self._tip.get(session_id):
                    log.info("session %s was replaced by a new one; replaying it", session_id)
                    await self._resync(session_id)
            return
        last = self._last.get(session_id)
        if last is not None and seq != last + 1:
            if session_id in self._windows:
                return  # a duplicate, or ahead of the replay that will bring it
            if seq > last:
                log.debug("session %s jumped from seq %d to %d", session_id, last, seq)
            else:
                log.info("session %s restarted its numbering (seq %d)", session_id, seq)
        self._last[session_id] = seq
        self._tip[session_id] = message
        self._known.add(session_id)
        self._out.append(message)

    async def _snapshot(self, message: dict[str, Any], session_id: str) -> None:
        known = session_id in self._known
        if session_id in self._windows and known:
            return  # the replay carries every change since we last saw it
        self._tip.pop(session_id, None)
        if self._connections <= 1 and self._sync_pending:
            # The answer to the first subscribe: the position of what
            # follows is the replay's, or the fence's ``lastSeq``.
            self._last.pop(session_id, None)
        else:
            # Past the first subscribe, a snapshot outside a resync comes
            # only from a session being (re)created, before its first
            # entry: everything of it is new, from seq 1.
            self._last[session_id] = 0
        self._known.add(session_id)
        self._out.append(message)
        if self._reconnect_phase and self.session_id == "*" and not known:
            await self._resync(session_id)

    def _gap(self, message: dict[str, Any], session_id: str) -> None:
        last = self._last.get(session_id)
        start = message.get("fromSeq")
        end = message.get("toSeq")
        if not isinstance(start, int) or not isinstance(end, int):
            self._out.append(message)
            return
        verify = self._verify.get(session_id)
        if verify is not None:
            if not start <= verify <= end:
                return  # not the answer to our resume: the replay will tell
            del self._verify[session_id]  # our last entry is gone: cannot check
        if session_id in self._windows and last is not None and not (start <= last + 1 <= end):
            return  # stale, or ahead of the replay
        self._last[session_id] = end if last is None else max(last, end)
        self._out.append(message)

    async def _fenced(self, message: dict[str, Any]) -> None:
        if not self._fences:
            self._out.append(message)
            return
        number, fence = self._fences.popleft()
        current: dict[str, int] = {}
        for info in message.get("sessions") or ():
            if isinstance(info, dict) and isinstance(info.get("sessionId"), str):
                current[info["sessionId"]] = int(info.get("lastSeq") or 0)
        # Sessions whose resync this fence ends (a later resync of the same
        # session has its own fence).
        closed = [s for s in fence.sessions if self._windows.get(s) == number]
        for session_id in closed:
            del self._windows[session_id]
            self._verify.pop(session_id, None)
        if fence.kind == "initial":
            for session_id, last_seq in current.items():
                if self.session_id in ("*", session_id):
                    self._known.add(session_id)
                    self._last.setdefault(session_id, last_seq)
        wildcard_reconnect = fence.kind == "reconnect" and self.session_id == "*"
        resumed: list[str] = []
        restarted: list[str] = []
        for session_id in sorted(closed):
            if session_id not in current:
                # Gone from the server: forget it. If the id comes back it
                # is a new session, followed from its first entry.
                self._known.discard(session_id)
                self._last.pop(session_id, None)
                self._tip.pop(session_id, None)
                continue
            last_seq = current[session_id]
            mine = self._last.get(session_id)
            if wildcard_reconnect and (mine is None or last_seq > mine):
                resumed.append(session_id)  # it moved while we were away
            elif mine is None:
                self._last[session_id] = last_seq
            elif last_seq < mine:
                # The server forgot the session (restart, eviction) and a
                # new one took its id: follow it from seq 1.
                log.info("session %s restarted its numbering; replaying it", session_id)
                restarted.append(session_id)
        if resumed or restarted:
            await self._resume(resumed, restarted)
        if fence.kind in ("initial", "reconnect"):
            self._attempt = 0
            self._reconnect_phase = False
        if self._sync_pending and not self._fences:
            self._sync_pending = False
            if self.sync_markers:
                self._out.append(
                    {
                        "type": "synced",
                        "sessionId": self.session_id,
                        "reconnected": self._connections > 1,
                    }
                )

    async def _error(self, message: dict[str, Any]) -> None:
        code = message.get("code")
        text = str(message.get("message") or code)
        if code == "UNAUTHORIZED":
            raise AuthenticationError(text, message.get("sessionId"))
        if code == "RATE_LIMITED" and (self._fences or self._windows):
            # A resync message was dropped: start the connection over.
            ws = self._ws
            if ws is not None:
                await ws.close(1000, "resync was rate limited")
            raise ConnectionClosed(None, None)
        if code == "SESSION_NOT_FOUND" and self._connections > 1:
            return  # a resubscribe after a reconnect; told once already
        self._out.append(message)


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


async def list_sessions(
    url: str, token: str | None, *, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """The sessions the token may view: ``[{"sessionId", "status",
    "metadata", "lastSeq"}, ...]``. One attempt; raises ``ConnectionFailed``
    or ``AuthenticationError``."""
    url = normalize_url(url)
    try:
        async with asyncio.timeout(timeout):
            async with _open(url, max_size=64 * 1024 * 1024, open_timeout=timeout) as ws:
                if token is not None:
                    await ws.send(json.dumps({"type": "auth", "token": token}))
                await ws.send('{"type":"list"}')
                async for raw in ws:
                    message = json.loads(raw)
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
    except _TRANSIENT as exc:
        if _is_refusal(exc):
            raise AuthenticationError(
                f"the server refused the connection: {_describe(exc)}"
            ) from None
        raise ConnectionFailed(f"cannot list sessions at {url}: {_describe(exc)}") from exc


# --- writing ----------------------------------------------------------------


def _escaped_size(char: str) -> int:
    """Bytes ``char`` takes inside a JSON string (``ensure_ascii=False``)."""
    code = ord(char)
    if char == '"' or char == "\\":
        return 2
    if code < 0x20:
        return 2 if char in "\b\f\n\r\t" else 6
    if code < 0x80:
        return 1
    if code < 0x800:
        return 2
    if 0xD800 <= code <= 0xDFFF:
        return 6  # a lone surrogate, escaped
    return 3 if code < 0x10000 else 4


def split_message(message: str, budget: int) -> list[str]:
    """Split ``message`` into pieces whose JSON-escaped UTF-8 size is at most
    ``budget`` bytes each (never splitting a character)."""
    if budget < 8:
        raise ValueError("budget too small")
    if len(message) * 6 <= budget:
        return [message]
    parts: list[str] = []
    start = 0
    used = 0
    for index, char in enumerate(message):
        size = _escaped_size(char)
        if used + size > budget:
            parts.append(message[start:index])
            start = index
            used = 0
        used += size
    parts.append(message[start:])
    return parts


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Entry:
    __slots__ = ("session", "text")

    def __init__(self, session: str, text: str | None) -> None:
        self.session = session
        self.text = text  # None: refused by the server, skip it


class Producer:
    """Publish ``log`` and ``status`` entries, buffering while the server is
    unreachable (see the module docstring for the exact guarantee).

    Use it as ``async with Producer(url, token=t) as p:`` or call
    ``start()`` and ``aclose()``. ``log`` and ``status`` are plain methods
    (call them from the event loop's thread); ``await flush()`` waits until
    everything given so far is confirmed.

    Every entry is numbered when it is created (``producer``: this
    instance's random ``producer_id``; ``pseq``: one more than the entry
    before, across all sessions; the parts of a split message get
    consecutive numbers), and a resend carries the same number. So delivery
    is exactly once while the server process stays the same: the server
    drops a resend it already applied. Across a server restart, entries the
    old server handled but never confirmed can appear again on the new one
    (its memory of what was applied starts empty).

    Counters: ``pending`` (entries not yet confirmed), ``dropped`` (removed
    by buffer overflow), ``rejected`` (refused by the server). ``error`` is
    set, and the producer stops, when the server refuses the token itself.
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
        if max_buffer < 1 or max_in_flight < 1:
            raise ValueError("max_buffer and max_in_flight must be at least 1")
        if max_message_size < 512:
            raise ValueError("max_message_size must be at least 512 bytes")
        self.url = normalize_url(url)
        self.token = token
        self.max_buffer = max_buffer
        self.max_in_flight = max_in_flight
        self.max_message_size = max_message_size
        self.backoff = backoff
        self.open_timeout = open_timeout
        self.flush_timeout = flush_timeout
        self.min_ping_interval = min_ping_interval
        self.on_connection_change = on_connection_change
        self.on_rejected = on_rejected
        self.refuse_retry = 5.0  # seconds a TOO_MANY_SESSIONS refusal lasts
        self.dropped = 0
        self.rejected = 0
        self.error: AuthenticationError | None = None
        self.connected = False
        # Resend de-duplication (see the module docstring): a random id of
        # this producer, and the number of the last entry it created.
        self.producer_id = uuid.uuid4().hex
        self._pseq = 0
        self._buffer: collections.deque[_Entry] = collections.deque()
        self._base = 0  # id of _buffer[0]; ids are contiguous
        self._sent_upto = 0  # id of the next entry to send on this connection
        self._fenced_upto = 0  # entries below this id are covered by a ping
        self._fences: collections.deque[int] = collections.deque()  # -1: the auth ping
        self._last_ping = 0.0
        self._answered_upto: dict[str, int] = {}  # per connection, see _answered
        # Sessions the server refuses: reason, and until when (None: for good).
        self._refused: dict[str, tuple[str, float | None]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._authed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ws: ClientConnection | None = None
        self._outage_reported = False

    # --- public ---------------------------------------------------------

    @property
    def pending(self) -> int:
        """Entries given but not yet confirmed by the server."""
        return sum(1 for entry in self._buffer if entry.text is not None)

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
        _check_session(session_id)
        if not level or len(level) > 16:
            raise ValueError("level must be 1 to 16 characters")
        if data is not None and not isinstance(data, dict):
            raise TypeError("data must be a dict or None")
        stamp = format_wall(time.time() if timestamp is None else timestamp)
        entry: dict[str, Any] = {
            "type": "log",
            "sessionId": session_id,
            "level": level,
            "timestamp": stamp,
            "message": message,
        }
        if data is not None:
            entry["data"] = data
        entry["producer"] = self.producer_id
        entry["pseq"] = self._pseq + 1
        text = _dumps(entry)
        if len(text) * 4 + 64 <= self.max_message_size or (
            len(text.encode()) <= self.max_message_size - 64
        ):
            self._pseq += 1
            self._append(session_id, text)
            return
        # Too big: split the message text over several entries, numbered
        # consecutively.
        skeleton = dict(
            entry,
            message="",
            data={**(data or {}), "part": 999999, "parts": 999999},
            pseq=self._pseq + 1_000_000,
        )
        budget = self.max_message_size - 64 - len(_dumps(skeleton).encode())
        if budget < 64:
            raise ValueError(
                f"data alone is too large for MAX_MESSAGE_SIZE ({self.max_message_size} bytes)"
            )
        pieces = split_message(message, budget)
        for number, piece in enumerate(pieces, 1):
            self._pseq += 1
            part = dict(
                entry,
                message=piece,
                data={**(data or {}), "part": number, "parts": len(pieces)},
                pseq=self._pseq,
            )
            self._append(session_id, _dumps(part))

    def status(
        self, session_id: str, status: StatusValue, metadata: dict[str, Any] | None = None
    ) -> None:
        """Queue a ``status`` entry (``running``, ``stopped`` or ``error``);
        the server merges ``metadata`` into the session's."""
        _check_session(session_id)
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {', '.join(_STATUSES)}, not {status!r}")
        entry: dict[str, Any] = {"type": "status", "sessionId": session_id, "status": status}
        if metadata:
            entry["metadata"] = metadata
        entry["producer"] = self.producer_id
        entry["pseq"] = self._pseq + 1
        text = _dumps(entry)
        if len(text.encode()) > self.max_message_size - 64:
            raise ValueError(
                f"status metadata is too large for MAX_MESSAGE_SIZE ({self.max_message_size} bytes)"
            )
        self._pseq += 1
        self._append(session_id, text)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry given so far is confirmed (or refused).
        True when the buffer is empty; False on timeout or a refused token."""
        if self.error is not None:
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
        self._stopping = True
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

    # --- buffer -----------------------------------------------------------

    def _append(self, session_id: str, text: str) -> None:
        if self.error is not None:
            self.rejected += 1
            return
        refused = self._refused.get(session_id)
        if refused is not None:
            reason, until = refused
            if until is None or time.monotonic() < until:
                self._reject(session_id, reason)
                return
            del self._refused[session_id]
        if len(self._buffer) >= self.max_buffer:
            dropped = self._buffer.popleft()
            self._base += 1
            self._sent_upto = max(self._sent_upto, self._base)
            self._fenced_upto = max(self._fenced_upto, self._base)
            if dropped.text is not None:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.warning(
                        "buffer full (%d entries, server unreachable?): dropped the oldest; "
                        "%d dropped so far",
                        self.max_buffer,
                        self.dropped,
                    )
        self._buffer.append(_Entry(session_id, text))
        self._idle.clear()
        self._wake.set()

    def _confirm(self, upto: int) -> None:
        """Entries with id < ``upto`` were handled by the server."""
        buffer = self._buffer
        while buffer and self._base < upto:
            buffer.popleft()
            self._base += 1
        if not buffer:
            self._idle.set()

    def _reject(self, session_id: str, reason: str) -> None:
        self.rejected += 1
        if self.rejected == 1 or self.rejected % 1000 == 0:
            log.warning("server refused entries for session %s: %s", session_id, reason)

    def _refuse_session(self, session_id: str, reason: str, for_seconds: float | None) -> None:
        """The server refuses ``session_id`` (for good, or for a while):
        drop its buffered entries instead of sending them again after a
        reconnect, and refuse new ones at once while it lasts."""
        until = None if for_seconds is None else time.monotonic() + for_seconds
        self._refused[session_id] = (reason, until)
        for entry in self._buffer:
            if entry.session == session_id and entry.text is not None:
                entry.text = None
                self._reject(session_id, reason)
        if not self.pending:
            self._idle.set()

    # --- connection ---------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                ws = await _open(
                    self.url, max_size=16 * 1024 * 1024, open_timeout=self.open_timeout
                )
            except InvalidURI as exc:
                self._fail(f"invalid URL {self.url!r}: {exc}")
                return
            except _TRANSIENT as exc:
                if _is_refusal(exc):
                    self._fail(f"the server refused the connection: {_describe(exc)}")
                    return
                self._outage(f"cannot reach {self.url}: {_describe(exc)}")
            else:
                try:
                    async with ws:
                        self._ws = ws
                        await self._serve(ws)
                except AuthenticationError as exc:
                    self._fail(str(exc))
                    return
                except _TRANSIENT as exc:
                    if not self._stopping:
                        self._outage(f"connection to {self.url} lost: {_describe(exc)}")
                finally:
                    self._ws = None
                    if self._authed.is_set():
                        attempt = 0
                    self._reset_connection()
            if self._stopping:
                return
            await asyncio.sleep(_backoff_delay(attempt, self.backoff))
            attempt += 1

    def _answered(self, session_id: str) -> bool:
        """An ``error`` for ``session_id`` answers one of its entries in
        flight, at the earliest the first one not matched to an error yet;
        the server handles a connection's messages in order, so everything
        up to that one was handled: confirm it (fewer entries to send
        again, and none twice, if the server closes the connection over a
        burst of errors)."""
        start = max(self._base, self._answered_upto.get(session_id, -1) + 1)
        for entry_id in range(start, self._sent_upto):
            entry = self._buffer[entry_id - self._base]
            if entry.session == session_id:
                live = entry.text is not None
                entry.text = None
                self._answered_upto[session_id] = entry_id
                self._confirm(entry_id + 1)
                return live
        return False  # it left the buffer already (overflow): counted as dropped

    def _reset_connection(self) -> None:
        self._answered_upto.clear()
        self.connected = False
        self._authed.clear()
        self._fences.clear()
        self._sent_upto = self._base
        self._fenced_upto = self._base

    def _fail(self, reason: str) -> None:
        self.error = AuthenticationError(reason)
        log.error("%s", reason)
        self._idle.set()
        if self.on_connection_change is not None:
            self.on_connection_change(False, reason)

    def _outage(self, detail: str) -> None:
        if self.connected or not self._outage_reported:
            self._outage_reported = True
            text = f"{detail}; buffering ({self.pending} entries) and retrying"
            log.warning("%s", text)
            if self.on_connection_change is not None:
                self.on_connection_change(False, text)
        else:
            log.debug("%s", detail)

    async def _serve(self, ws: ClientConnection) -> None:
        if self.token is not None:
            await ws.send(_dumps({"type": "auth", "token": self.token}))
        self._fences.append(-1)
        await ws.send(_PING)
        reader = asyncio.ensure_future(self._read(ws))
        pump = asyncio.ensure_future(self._pump(ws))
        try:
            done, _ = await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, pump):
                task.cancel()
            for task in (reader, pump):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        for task in (reader, pump):
            if task in done and task.exception() is not None:
                raise cast(BaseException, task.exception())
        raise ConnectionClosed(ws.protocol.close_rcvd, ws.protocol.close_sent)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "pong":
                if not self._fences:
                    continue
                upto = self._fences.popleft()
                if upto < 0:
                    self._authed.set()
                    self.connected = True
                    was_out = self._outage_reported
                    self._outage_reported = False
                    detail = f"connected to {self.url}" + (
                        f"; sending {self.pending} buffered entries" if was_out else ""
                    )
                    (log.warning if was_out else log.info)("%s", detail)
                    if self.on_connection_change is not None:
                        self.on_connection_change(True, detail)
                else:
                    self._confirm(upto)
                self._wake.set()
            elif kind == "error":
                if self._on_error(message):
                    self._fences.append(-1)
                    await ws.send(_PING)
        raise ConnectionClosed(ws.protocol.close_rcvd, ws.protocol.close_sent)

    def _on_error(self, message: dict[str, Any]) -> bool:
        """Handle an ``error``; True when the auth ping must be sent again."""
        code = message.get("code")
        text = str(message.get("message") or code)
        session_id = message.get("sessionId")
        if code == "UNAUTHORIZED" and not self._authed.is_set():
            raise AuthenticationError(f"the server refused the token: {text}")
        if code == "RATE_LIMITED":
            # Producer entries are exempt, so this answers one of our pings
            # in place of its pong: that fence is void; a later one covers it.
            if not self._fences:
                return False
            voided = self._fences.popleft()
            if voided < 0:
                return True
            if not self._fences:
                self._fenced_upto = self._base  # re-cover what is in flight
            self._last_ping = time.monotonic()
            self._wake.set()
            return False
        if self.on_rejected is not None:
            self.on_rejected(message)
        if not isinstance(session_id, str):
            self._reject("?", f"{code}: {text}")
            return False
        # The refused entry was live, not one already dropped here.
        live = self._answered(session_id)
        if code == "UNAUTHORIZED":
            self._refuse_session(session_id, text, None)
        elif code == "TOO_MANY_SESSIONS":
            # The server is full of live sessions; try this one again later
            # rather than have a stream of rejections close the connection.
            self._refuse_session(session_id, text, self.refuse_retry)
        if live:
            self._reject(session_id, f"{code}: {text}")
        return False

    async def _pump(self, ws: ClientConnection) -> None:
        """Send buffered entries in order; ping after them (see ``_read``)."""
        await self._authed.wait()
        while True:
            sent = 0
            while self._sent_upto - self._base < len(self._buffer):
                if self._sent_upto - self._base >= self.max_in_flight:
                    break
                entry = self._buffer[self._sent_upto - self._base]
                self._sent_upto += 1
                if entry.text is not None:
                    await ws.send(entry.text)
                    sent += 1
                    if sent >= 256:
                        break
            if self._sent_upto > self._fenced_upto:
                wait = self._last_ping + self.min_ping_interval - time.monotonic()
                if not self._fences or wait <= 0:
                    self._fences.append(self._sent_upto)
                    self._fenced_upto = self._sent_upto
                    self._last_ping = time.monotonic()
                    await ws.send(_PING)
                    continue
                if sent:
                    continue  # keep sending within the in-flight bound
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            if sent:
                continue
            self._wake.clear()
            if self._sent_upto - self._base < len(self._buffer) and (
                self._sent_upto - self._base < self.max_in_flight
            ):
                continue
            await self._wake.wait()


def _check_session(session_id: str) -> None:
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= 256:
        raise ValueError("session id must be 1 to 256 characters")
    if session_id == "*":
        raise ValueError("'*' is not a session id a producer can write to")

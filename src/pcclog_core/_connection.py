"""One TCP connection: HTTP request, WebSocket handshake, frames, keepalive.

Theory of operation
-------------------

A ``Connection`` starts in ``HANDSHAKE``: h11 parses the request head
(bounded by ``max_head_bytes`` and ``max_headers``, complete within
``open_timeout``). An upgrade request on any path (the seed's clients
connect to ``ws://host:8080``) is validated per RFC 6455 §4.2.1, its
``Host`` and ``Origin`` checked by ``check_browser`` under the runtime's
``BrowserPolicy`` (403 before any upgrade) and its
token (``Authorization: Bearer`` or ``?token=``) resolved; on success the
101 response is queued and the connection is ``OPEN``. Any other request
surfaces as an ``HTTPRequest`` event for the runtime to answer
(``send_response``), after which the connection closes (``Connection:
close``: no keep-alive to keep state small).

``OPEN``: wsproto's frame layer parses client frames (masking, UTF-8,
control-frame rules, RFC 6455 §5); a size guard, hooked in as a wsproto
extension, refuses a message whose announced frame lengths add up past
``max_message_size`` before any of its payload is buffered (1009). Complete
text messages go to the ``Client``. Pings are answered and peer closes
echoed by this object itself; the runtime never composes a frame.

Server frames for data bypass wsproto: they are the pre-encoded frames of
the hub (see ``_frames``). Control frames are appended to the same outbound
list, so order on the wire is the order of queuing.

Keepalive is a two-state machine, ``IDLE -> AWAITING_PONG -> IDLE``: a ping
every ``ping_interval``; no matching pong within ``ping_timeout`` closes with
1011, as the seed's ``ws`` server does.

Reading (SPEC §6). ``wants_read`` is the one pause rule for every runtime:
false while the client's outbox is over ``CONNECTION_BUFFER`` or, for a
client that produces, while the hub's pool is over ``MEMORY_BUDGET``. The
runtime does not read the socket then, and the core stops in the middle of
a read too: after each message it checks, and keeps what is left (``_held``,
or in wsproto's buffer) until the runtime calls ``continue_reading``. So one
read full of ``list`` requests queues one over-budget reply, not thousands.
While the pool is what stops the reading, the keepalive is suspended (the
pong may be sitting unread in the socket) and re-armed when reading goes on;
a peer that stops draining its own output still gets the keepalive, so a
dead one is closed with 1011 as before.

Written bytes are confirmed with ``bytes_sent(n)``: until then they count
against the client's budget.

``CLOSING``: our close frame is queued; we wait for the echo up to
``ping_timeout``. ``CLOSED``: the runtime flushes ``data_to_send()`` and
closes the socket. The state moves only along ``_TRANSITIONS``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from urllib.parse import parse_qs, urlsplit

import h11
from wsproto.connection import Connection as _WSConnection
from wsproto.connection import ConnectionState as _WSState
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import generate_accept_token

from ._auth import ALL_ACCESS, AuthError, Role, authorize_request, bearer_token
from ._client import Client
from ._errors import CloseCode, ErrorCode, LocalProtocolError
from ._handshake import (
    HEAD_END,
    REASONS,
    BrowserPolicy,
    Refusal,
    check_upgrade,
    format_response,
    header,
)
from ._hub import Hub
from ._inbound import SizeGuard, next_simple_frame, wsproto_idle

__all__ = [
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "Event",
    "HTTPRequest",
    "WebSocketAccepted",
]


class ConnectionState(enum.Enum):
    HANDSHAKE = "handshake"
    HTTP_RESPONSE = "http_response"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class _Input(enum.Enum):
    REQUEST = "request"  # a plain HTTP request arrived
    UPGRADED = "upgraded"
    RESPONDED = "responded"
    CLOSE_SENT = "close_sent"
    CLOSE_RECEIVED = "close_received"
    ABORT = "abort"  # EOF, protocol error, timeout, runtime abort


_S = ConnectionState
_TRANSITIONS: dict[tuple[ConnectionState, _Input], ConnectionState] = {
    (_S.HANDSHAKE, _Input.REQUEST): _S.HTTP_RESPONSE,
    (_S.HANDSHAKE, _Input.UPGRADED): _S.OPEN,
    (_S.HANDSHAKE, _Input.RESPONDED): _S.CLOSED,  # handshake refused (4xx)
    (_S.HANDSHAKE, _Input.ABORT): _S.CLOSED,
    (_S.HTTP_RESPONSE, _Input.RESPONDED): _S.CLOSED,
    (_S.HTTP_RESPONSE, _Input.ABORT): _S.CLOSED,
    (_S.OPEN, _Input.CLOSE_SENT): _S.CLOSING,
    (_S.OPEN, _Input.CLOSE_RECEIVED): _S.CLOSED,  # echoed at once
    (_S.OPEN, _Input.ABORT): _S.CLOSED,
    (_S.CLOSING, _Input.CLOSE_RECEIVED): _S.CLOSED,
    (_S.CLOSING, _Input.CLOSE_SENT): _S.CLOSING,
    (_S.CLOSING, _Input.ABORT): _S.CLOSED,
    (_S.CLOSED, _Input.ABORT): _S.CLOSED,
    (_S.CLOSED, _Input.CLOSE_RECEIVED): _S.CLOSED,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRequest:
    """A plain HTTP request; answer it with ``Connection.send_response``."""

    method: str
    target: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketAccepted:
    path: str
    authenticated: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    code: int
    reason: str
    by_peer: bool


Event = HTTPRequest | WebSocketAccepted | ConnectionClosed


class Connection:
    """See the module docstring. Drive it with ``receive_data``,
    ``handle_timeout``, ``data_to_send``, ``next_event`` and
    ``next_deadline``; ``now`` is monotonic seconds, ``wall`` epoch seconds."""

    def __init__(
        self,
        hub: Hub,
        *,
        now: float,
        allowed_origins: Sequence[str] | None = None,
        browser: BrowserPolicy | None = None,
    ) -> None:
        self.hub = hub
        limits = hub.limits
        self.state = ConnectionState.HANDSHAKE
        self.client: Client | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        # Host and Origin rules (``check_browser``): the runtime's policy, or
        # one with only the ``allowed_origins`` allowlist.
        self._browser = browser or BrowserPolicy(
            allowed_origins=frozenset(allowed_origins) if allowed_origins else None
        )
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=limits.max_head_bytes
        )
        self._ws: _WSConnection | None = None
        self._guard: SizeGuard | None = None
        self._head = bytearray()  # the first bytes of the request, to bound its head
        self._out: list[bytes] = []  # before the upgrade, and after the client is gone
        self._events: list[Event] = []
        self._parts: list[str] = []
        self._binary = False
        self._deadline: float | None = now + limits.open_timeout
        self._ping_at: float | None = None
        self._pong_deadline: float | None = None
        self._ping_payload = b""
        self._pings = 0
        self._closed_reported = False
        # A response to HEAD carries no body (RFC 9110 §9.3.2).
        self._head_request = False
        # Input not yet fed to the client because it stopped wanting more:
        # bytes the fast path left (``_held``), or wsproto still has events.
        self._held = b""
        self._ws_held = False
        self._keepalive_suspended = False

    # --- runtime API ----------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The runtime closes the socket once this is true and
        ``data_to_send()`` is empty."""
        return self.state is ConnectionState.CLOSED

    @property
    def has_output(self) -> bool:
        """Bytes are waiting for ``data_to_send()``."""
        client = self.client
        return bool(self._out) or (client is not None and client.has_output)

    @property
    def wants_read(self) -> bool:
        """The runtime should read the socket (see "Reading" above)."""
        if self.state is ConnectionState.CLOSED:
            return False
        client = self.client
        return client is None or client.close_request is not None or client.wants_read

    @property
    def paused_by_pool(self) -> bool:
        """Not read because the hub's pool is over budget (not for this
        connection's own backlog)."""
        client = self.client
        return client is not None and client.paused_by_pool

    @property
    def holds_input(self) -> bool:
        """Input was kept back: call ``continue_reading`` once ``wants_read``."""
        return bool(self._held) or self._ws_held

    def bytes_sent(self, count: int) -> None:
        """The runtime wrote ``count`` bytes of what ``data_to_send`` gave."""
        client = self.client
        if client is not None:
            client.bytes_sent(count)

    def continue_reading(self, *, now: float, wall: float) -> None:
        """Feed the input kept back while ``wants_read`` was false."""
        if self._keepalive_suspended:
            self._rearm_keepalive(now)
        if not self.holds_input or not self.wants_read:
            return
        if self.state is ConnectionState.OPEN or self.state is ConnectionState.CLOSING:
            held = self._held
            self._held = b""
            self._receive_frames(held, now, wall, resume=True)

    def receive_data(self, data: bytes, *, now: float, wall: float) -> None:
        """Feed bytes from the socket; ``b""`` means EOF."""
        if self._keepalive_suspended:
            self._rearm_keepalive(now)
        if self.holds_input:
            if data:
                # A runtime that read although ``wants_read`` was false: keep
                # the order (the bound is the caller's: it chose to read).
                self._held += data
                return
            # EOF: what the peer sent before it is still its own to apply.
            self.continue_reading(now=now, wall=wall)
        state = self.state
        if state is ConnectionState.HANDSHAKE:
            self._receive_handshake(data, now, wall)
        elif state is ConnectionState.OPEN or state is ConnectionState.CLOSING:
            self._receive_frames(data, now, wall)
        elif state is ConnectionState.HTTP_RESPONSE:
            if not data:
                self._abort("peer closed before the response", by_peer=True)
        # CLOSED: the bytes are dropped.

    def handle_timeout(self, *, now: float, wall: float) -> None:
        state = self.state
        if state is ConnectionState.HANDSHAKE or state is ConnectionState.HTTP_RESPONSE:
            if self._deadline is not None and now >= self._deadline:
                self._abort("request not complete within the open timeout", by_peer=False)
            return
        if state is ConnectionState.CLOSING:
            if self._deadline is not None and now >= self._deadline:
                self._abort("no close frame from peer", by_peer=False)
            return
        if state is not ConnectionState.OPEN:
            return
        client = self.client
        assert client is not None
        client.handle_timeout(now)
        if client.close_request is not None:
            self._send_close(*client.close_request, now=now)
            return
        if client.paused_by_pool:
            self._keepalive_suspended = True
            return
        if self._pong_deadline is not None:
            if now >= self._pong_deadline:
                self.hub.counters.ping_timeouts += 1
                self._send_close(
                    CloseCode.INTERNAL_ERROR, "keepalive ping timeout", now=now, wait=False
                )
        elif self._ping_at is not None and now >= self._ping_at:
            self._pings += 1
            self._ping_payload = str(self._pings).encode()
            # An unmasked server ping (RFC 6455 §5.5.2), built here rather
            # than by wsproto: every idle connection sends one per interval.
            payload = self._ping_payload
            client.queue_frame(bytes((0x89, len(payload))) + payload)
            self._pong_deadline = now + self.hub.limits.ping_timeout
            self._ping_at = None

    def next_deadline(self) -> float | None:
        state = self.state
        if state is ConnectionState.OPEN:
            assert self.client is not None
            keepalive = None if self._keepalive_suspended else self._pong_deadline or self._ping_at
            candidates = [keepalive, self.client.next_deadline()]
            present = [d for d in candidates if d is not None]
            return min(present) if present else None
        if state is ConnectionState.CLOSED:
            return None
        return self._deadline

    def data_to_send(self) -> bytes:
        """Everything to write now, as one buffer."""
        client = self.client
        if client is not None:
            if client.close_request is not None and self.state is ConnectionState.OPEN:
                self._send_close(*client.close_request, now=None)
            data = client.data_to_send()
            if self._out:
                data += b"".join(self._out)
                self._out.clear()
            return data
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | None:
        """Lifecycle events for the runtime (requests to answer, opens, closes)."""
        return self._events.pop(0) if self._events else None

    def send_response(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        """Answer the ``HTTPRequest`` event; the connection then closes."""
        if self.state is not ConnectionState.HTTP_RESPONSE:
            raise LocalProtocolError(f"no request to answer in state {self.state.name}")
        self._respond(status, headers, body)

    def close(
        self,
        code: CloseCode = CloseCode.GOING_AWAY,
        reason: str = "server shutting down",
        *,
        now: float | None = None,
    ) -> None:
        """Close from our side: a close frame once open, else just close."""
        if self.state is ConnectionState.OPEN:
            assert self.client is not None
            self.client.close(code, reason)
            self._send_close(code, reason, now=now)
        elif self.state is not ConnectionState.CLOSING:
            self._abort(reason, by_peer=False)

    def abort(self, reason: str = "connection lost") -> None:
        """The transport is gone (reset, EOF without close, write error)."""
        self._abort(reason, by_peer=True)

    def _rearm_keepalive(self, now: float) -> None:
        """Reading goes on after the pool stopped it: a pong owed is given
        ``ping_timeout`` from now, else the next ping is an interval away."""
        self._keepalive_suspended = False
        limits = self.hub.limits
        if self._pong_deadline is not None:
            self._pong_deadline = now + limits.ping_timeout
        elif self._ping_at is not None:
            self._ping_at = now + limits.ping_interval

    # --- handshake ------------------------------------------------------------

    def _receive_handshake(self, data: bytes, now: float, wall: float) -> None:
        conn = self._h11
        assert conn is not None
        if not data:
            self._abort("peer closed during the request", by_peer=True)
            return
        limit = self.hub.limits.max_head_bytes
        if len(self._head) <= limit + 4:
            self._head += data[: limit + 4 - len(self._head) + 1]
        conn.receive_data(data)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in REASONS else 400
            # h11's text quotes the offending bytes; keep only what it found wrong.
            self._refuse(status, f"malformed request: {str(exc).split(':')[0]}")
            return
        if event is h11.NEED_DATA:
            if len(self._head) > limit + 4 and HEAD_END.search(self._head) is None:
                self._refuse(431, f"request head exceeds {limit} bytes")
            return
        self._head_request = isinstance(event, h11.Request) and event.method == b"HEAD"
        found = HEAD_END.search(self._head)
        end = found.start() if found is not None else -1
        if end < 0 or end > limit:
            # h11 only bounds a head that arrives in pieces; this bounds one
            # that arrives whole.
            self._refuse(431, f"request head exceeds {limit} bytes")
            return
        self._head = bytearray()
        if not isinstance(event, h11.Request):
            self._refuse(400, "malformed request")
            return
        if len(event.headers) > self.hub.limits.max_headers:
            self._refuse(431, f"more than {self.hub.limits.max_headers} header fields")
            return
        headers = tuple(
            (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
        )
        target = event.target.decode("latin-1")
        try:
            split = urlsplit(target)
        except ValueError:  # "http://[x/": an unclosed IPv6 host
            self._refuse(400, "malformed request target")
            return
        query = parse_qs(split.query)
        method = event.method.decode("latin-1")
        upgrade = header(headers, "upgrade")
        if upgrade is not None and "websocket" in upgrade.lower():
            self._upgrade(method, split.path or "/", query, headers, conn, now, wall)
            return
        self._transition(_Input.REQUEST)
        self._events.append(
            HTTPRequest(
                method=method, target=target, path=split.path or "/", query=query, headers=headers
            )
        )

    def _upgrade(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: tuple[tuple[str, str], ...],
        conn: h11.Connection,
        now: float,
        wall: float,
    ) -> None:
        checked = check_upgrade(method, headers, self._browser)
        if isinstance(checked, Refusal):
            self._refuse(checked.status, checked.text, extra=checked.headers)
            return
        key = checked
        token = bearer_token(header(headers, "authorization"))
        if token is None and query.get("token"):
            token = query["token"][0]
        try:
            grant = authorize_request(self.hub.authenticator, token, wall=wall, required=False)
        except AuthError as exc:
            self.hub.counters.auth_failures += 1
            self._refuse(exc.status, f"authentication failed: {exc}")
            return
        container = query.get("containerID") or query.get("containerId")
        if container and grant is None:
            # The original wrapper's connection (SPEC §3): its token is in the
            # URL. Without one it is refused here, as the original server did,
            # so the wrapper fails fast instead of streaming into nothing.
            self.hub.counters.auth_failures += 1
            self._refuse(401, "authentication failed: a containerID connection needs ?token=")
            return
        if grant is ALL_ACCESS:
            grant = None  # the client takes it from its hub's authenticator
        accept = generate_accept_token(key.encode("ascii")).decode("ascii")
        response = h11.InformationalResponse(
            status_code=101,
            reason=b"Switching Protocols",
            headers=[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept),
            ],
        )
        self._out.append(conn.send(response) or b"")
        trailing, _ = conn.trailing_data
        self._h11 = None
        self._guard = SizeGuard(self.hub.limits.max_message_size)
        self._ws = _WSConnection(ConnectionType.SERVER, extensions=[self._guard])
        # A view token with a containerID and no produce role: an
        # original-style viewer of that session, in the wrapper's dialect.
        viewer_of = (
            container[0]
            if container and grant is not None and Role.PRODUCE not in grant.roles
            else None
        )
        self.client = Client(
            self.hub,
            now=now,
            wall=wall,
            grant=grant,
            framed=True,
            default_session=container[0] if container else None,
            envelopes=viewer_of is not None,
        )
        self.client.owner = self
        # The 101 goes out before anything the client queues.
        self.client.queue_frame(b"".join(self._out))
        self._out.clear()
        if viewer_of is not None:
            self.client.follow(viewer_of, now=now, wall=wall)
        self._transition(_Input.UPGRADED)
        limits = self.hub.limits
        self._deadline = None
        self._ping_at = now + limits.ping_interval if limits.ping_interval > 0 else None
        self._events.append(
            WebSocketAccepted(path=path, authenticated=self.client.grant is not None)
        )
        if trailing:
            self._receive_frames(bytes(trailing), now, wall)

    def _refuse(self, status: int, text: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        self.close_code = status
        self.close_reason = text
        self._respond(status, extra, (text + "\n").encode())

    def _respond(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        self._out.append(format_response(status, headers, body, head_request=self._head_request))
        self._h11 = None
        self._transition(_Input.RESPONDED)
        self._report_closed(status, "", by_peer=False)

    # --- frames ---------------------------------------------------------------

    def _receive_frames(self, data: bytes, now: float, wall: float, resume: bool = False) -> None:
        ws = self._ws
        client = self.client
        assert ws is not None and client is not None
        if not data and not resume:
            if self.state is not ConnectionState.CLOSED:
                self._abort("connection closed without a close frame", by_peer=True)
            return
        if ws.state is _WSState.CLOSED:
            return
        # Everything one read brought is one batch: each viewer gets the
        # entries it is owed from this chunk with one append (Hub.begin_batch).
        hub = self.hub
        hub.begin_batch()
        try:
            self._receive_frames_batched(ws, client, data, now, wall)
        finally:
            hub.end_batch()

    def _receive_frames_batched(
        self, ws: _WSConnection, client: Client, data: bytes, now: float, wall: float
    ) -> None:
        if self._ws_held:
            # wsproto still holds events from before the stall: they go first.
            self._ws_held = False
            if data:
                ws.receive_data(data)
            self._receive_ws_events(ws, client, now, wall)
            return
        if data and self.state is ConnectionState.OPEN and not self._parts and wsproto_idle(ws):
            consumed = self._receive_simple_frames(data, client, now, wall)
            if consumed == len(data):
                return
            if not client.wants_read and client.close_request is None:
                self._held = data[consumed:]
                return
            data = data[consumed:]
        if data:
            ws.receive_data(data)
        self._receive_ws_events(ws, client, now, wall)

    def _receive_ws_events(
        self, ws: _WSConnection, client: Client, now: float, wall: float
    ) -> None:
        guard = self._guard
        assert guard is not None
        guard.lenient = client.may_produce
        for event in ws.events():
            if type(event) is TextMessage:
                if self.state is not ConnectionState.OPEN:
                    continue
                if guard.skipping:
                    # A producer's message past MAX_MESSAGE_SIZE streams past
                    # unkept; it is answered once it ends (SPEC §6).
                    self._parts.clear()
                    if event.message_finished:
                        guard.skipping = False
                        limit = self.hub.limits.max_message_size
                        client.send_error(
                            ErrorCode.MESSAGE_TOO_LARGE,
                            f"message exceeds MAX_MESSAGE_SIZE ({limit} bytes); skipped",
                            now=now,
                        )
                    continue
                if event.message_finished and not self._parts:
                    client.receive_message(event.data, now=now, wall=wall)
                else:
                    self._parts.append(event.data)
                    if event.message_finished:
                        text = "".join(self._parts)
                        self._parts.clear()
                        client.receive_message(text, now=now, wall=wall)
                guard.lenient = client.may_produce
                if client.close_request is not None:
                    self._send_close(*client.close_request, now=now)
                elif not client.wants_read:
                    self._ws_held = True
                    return
            elif type(event) is Ping:
                if ws.state is _WSState.OPEN:
                    client.queue_frame(ws.send(event.response()))
            elif type(event) is Pong:
                if self._pong_deadline is not None and event.payload == self._ping_payload:
                    self._pong_deadline = None
                    self._ping_at = now + self.hub.limits.ping_interval
            elif type(event) is CloseConnection:
                self._on_close_event(event, now)
                return
            elif type(event) is BytesMessage:
                if event.message_finished and self.state is ConnectionState.OPEN:
                    client.receive_binary(now=now)
                    if client.close_request is not None:
                        self._send_close(*client.close_request, now=now)

    def _receive_simple_frames(self, data: bytes, client: Client, now: float, wall: float) -> int:
        """The producers' fast path (``next_simple_frame``): complete,
        final, masked text frames and pongs are handled here; at the first
        frame of any other shape this returns how many bytes it consumed and
        wsproto takes the rest, with every check and error of its own. Only
        called at a frame boundary with no fragmented message open."""
        limit = self.hub.limits.max_message_size
        pos = 0
        while (found := next_simple_frame(data, pos, limit)) is not None:
            is_text, value, pos = found
            if not is_text:
                # A pong (RFC 6455 §5.5.3): the keepalive's answer, once per
                # interval from every viewer.
                if self._pong_deadline is not None and value == self._ping_payload:
                    self._pong_deadline = None
                    self._ping_at = now + self.hub.limits.ping_interval
                continue
            client.receive_message(value, now=now, wall=wall)
            if client.close_request is not None:
                self._send_close(*client.close_request, now=now)
                return len(data)
            if not client.wants_read:
                break
        return pos

    def _on_close_event(self, event: CloseConnection, now: float) -> None:
        ws = self._ws
        client = self.client
        assert ws is not None and client is not None
        if ws.state is _WSState.REMOTE_CLOSING:
            # The peer closed: echo its code (RFC 6455 §5.5.1) and finish.
            client.close(CloseCode.NORMAL, "peer closed")
            client.queue_frame(ws.send(event.response()))
            self.close_code = event.code
            self.close_reason = event.reason or ""
            self._transition(_Input.CLOSE_RECEIVED)
            self._finish(by_peer=True)
        elif ws.state is _WSState.CLOSED:
            # The echo of our own close.
            self._transition(_Input.CLOSE_RECEIVED)
            self._finish(by_peer=False)
        else:
            # A protocol error found by wsproto (it stays OPEN): close with
            # its code, or 1009 when the size guard tripped.
            code = int(event.code)
            reason = event.reason or "protocol error"
            if self._guard is not None and self._guard.exceeded:
                limit = self.hub.limits.max_message_size
                client.send_error(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"message exceeds MAX_MESSAGE_SIZE ({limit} bytes)",
                    now=now,
                )
                code = CloseCode.MESSAGE_TOO_BIG
                reason = f"message exceeds {limit} bytes"
            self._send_close(
                CloseCode(code) if code in _CLOSE_CODES else CloseCode.PROTOCOL_ERROR,
                reason,
                now=now,
                wait=False,
            )

    def _send_close(
        self, code: CloseCode, reason: str, *, now: float | None, wait: bool = True
    ) -> None:
        ws = self._ws
        client = self.client
        if ws is None or client is None or self.state is not ConnectionState.OPEN:
            return
        client.close(code, reason)
        self.close_code = int(code)
        self.close_reason = reason
        if ws.state is _WSState.OPEN:
            self._out.append(ws.send(CloseConnection(code=int(code), reason=reason[:120])))
        self._transition(_Input.CLOSE_SENT)
        if wait and now is not None:
            self._deadline = now + max(self.hub.limits.ping_timeout, 1.0)
        else:
            self._transition(_Input.ABORT)
            self._finish(by_peer=False)

    # --- endings --------------------------------------------------------------

    def _abort(self, reason: str, *, by_peer: bool) -> None:
        if self.close_code is None:
            self.close_code = 1006
            self.close_reason = reason
        self._transition(_Input.ABORT)
        self._finish(by_peer=by_peer, keep_output=False)

    def _finish(self, *, by_peer: bool, keep_output: bool = True) -> None:
        """Now CLOSED: release everything the connection held in the hub.

        The client's last output (a close echo, the error before a close) is
        kept for one last write, unless the connection was aborted: then no
        one will read it, and it is dropped at once."""
        self._h11 = None
        self._parts.clear()
        self._held = b""
        self._ws_held = False
        # wsproto's buffers (a partial message) go now, not with the object.
        self._ws = None
        if self.client is not None:
            pending = self.client.data_to_send() if keep_output else b""
            self.client.disconnect()
            if pending:
                self._out.insert(0, pending)
        if not keep_output:
            self._out.clear()
        self._report_closed(self.close_code or 1006, self.close_reason, by_peer=by_peer)

    def _report_closed(self, code: int, reason: str, *, by_peer: bool) -> None:
        if not self._closed_reported:
            self._closed_reported = True
            self._events.append(ConnectionClosed(code=code, reason=reason, by_peer=by_peer))

    def _transition(self, event: _Input) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"can't handle {event.name} in state {self.state.name}"
            ) from None


_CLOSE_CODES = frozenset(int(c) for c in CloseCode)

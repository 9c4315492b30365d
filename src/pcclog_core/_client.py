"""One peer at the message level: JSON text in, frames (or payloads) out.

Theory of operation
-------------------

A ``Client`` is transport-agnostic: ``Connection`` wraps one in the
WebSocket byte protocol, and an embedder can drive one from its own
WebSocket stack (``framed=False``: whole JSON payloads in and out).

Every byte queued for the peer goes through its ``Outbox`` (``_outbox``):
live entries, replays, snapshots, replies, gaps, control frames. The
runtime takes them with ``data_to_send()`` and confirms with
``bytes_sent(n)``; until then they count against ``CONNECTION_BUFFER``.
``wants_read`` is the one pause rule for every runtime: false while the
outbox is over its budget (the peer's own replies are never dropped, so
the peer is not read until it drains), or while the hub's pool is over
``MEMORY_BUDGET`` and this client produces entries.

What the client is sent (subscriptions, paged replays, gaps, replies) is
its ``Delivery`` half (``_delivery``); its access (grant lifecycle, rate and
abuse limits) is ``Access`` (``_access``).

``now`` is a monotonic time for deadlines; ``wall`` is seconds since the
epoch, for timestamps and token expiry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ._access import Access, AccessState
from ._auth import Grant, Role
from ._delivery import Delivery
from ._errors import CloseCode, ErrorCode, MessageError
from ._frames import text_frame
from ._messages import (
    Auth,
    ClientMessage,
    ErrorMessage,
    List,
    Log,
    Ping,
    Pong,
    Sessions,
    Status,
    Subscribe,
    Unsubscribe,
    WrapperComplete,
    WrapperError,
    WrapperHeartbeat,
    WrapperLog,
    WrapperStatus,
    decode_client_message,
    encode,
)
from ._timefmt import format_wall, normalize_timestamp
from ._wrapper import LogEntry, Reply, StatusEntry, WrapperMessage, translate

if TYPE_CHECKING:
    from ._hub import Hub
    from ._session import Session

__all__ = ["Client"]

_PONG_FRAME = text_frame(encode(Pong()))


class Client(Delivery):
    """One peer at the message level (see the module docstring).

    ``receive_message(text, now=, wall=)`` handles one complete client
    message; replies and subscribed entries accumulate until the runtime
    drains them with ``data_to_send()`` (frames, confirmed with
    ``bytes_sent``) or ``messages_to_send()`` (JSON payloads,
    ``framed=False``). When the client must be closed (policy, slow
    consumer, expired token), ``close_request`` is set and the client is on
    the hub's ready list.
    """

    __slots__ = ("__weakref__", "_produced", "_producing", "access", "default_session")

    def __init__(
        self,
        hub: Hub,
        *,
        now: float,
        grant: Grant | None = None,
        framed: bool = True,
        default_session: str | None = None,
        wall: float | None = None,
        envelopes: bool = False,
    ) -> None:
        super().__init__(hub, framed=framed, envelopes=envelopes)
        self.default_session = default_session
        self._produced = False
        # Sessions this connection has published to (bounded by MAX_SESSIONS).
        self._producing: dict[str, Session] = {}
        self.access = Access(hub.authenticator, hub.limits, now=now)
        if grant is not None:
            self.access.accept(grant, now=now, wall=wall if wall is not None else 0.0)
        hub.clients[self] = None

    @property
    def grant(self) -> Grant | None:
        return self.access.grant

    @property
    def expires_at(self) -> float | None:
        """When the grant expires (monotonic time), if it does."""
        return self.access.deadline if self.access.state is AccessState.GRANTED else None

    # --- the runtime's side -------------------------------------------------

    @property
    def wants_read(self) -> bool:
        """The runtime may read (and feed) this peer's input now. False
        while the outbox is over its budget, or while the hub's pool is over
        ``MEMORY_BUDGET`` and this client produces entries."""
        box = self.outbox
        return box.held < box.limit and not (self._produced and self.hub.producers_paused)

    @property
    def may_produce(self) -> bool:
        """Authenticated with the produce role: an oversized message of its
        is skipped, not a reason to close it."""
        grant = self.access.grant
        return grant is not None and Role.PRODUCE in grant.roles

    @property
    def paused_by_pool(self) -> bool:
        """Not read for the hub's sake (not its own backlog): its keepalive
        is suspended meanwhile."""
        return self._produced and self.hub.producers_paused

    def receive_message(self, text: str | bytes, *, now: float, wall: float) -> None:
        """Handle one complete client message (a text frame's payload)."""
        if self.close_request is not None:
            return
        hub = self.hub
        hub.counters.messages_in += 1
        limit = hub.limits.max_message_size
        # The limit is in bytes; a str can hold up to 4 bytes per character,
        # so only a long one needs encoding to be measured.
        if (
            len(text) > limit // 4
            and (
                size := len(
                    text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
                )
            )
            > limit
        ):
            self.send_error(
                ErrorCode.MESSAGE_TOO_LARGE,
                f"message of {size} bytes exceeds MAX_MESSAGE_SIZE ({limit})",
                now=now,
            )
            return
        try:
            message = decode_client_message(text)
            handler = _HANDLERS[type(message)]
            if handler not in _BATCHABLE:
                hub.settle()
            if not self._exempt(handler):
                try:
                    self.access.take_rate_token(now)
                except MessageError:
                    hub.counters.rate_limited += 1
                    raise
            handler(self, message, now, wall)
        except MessageError as exc:
            self.send_error(exc.code, exc.message, session_id=exc.session_id, now=now)

    def _exempt(self, handler: _Handler) -> bool:
        """Producer entries are throttled by the pool, not the rate limit;
        so is a producer's ping: it is the acknowledgement barrier of what
        it sent (SPEC §6), cheap, and bounded by the connection's budget."""
        if handler is Client._on_ping:
            return self._produced
        if handler not in _EXEMPT:
            return False
        grant = self.grant
        return grant is not None and Role.PRODUCE in grant.roles

    def follow(self, session_id: str, *, now: float, wall: float) -> None:
        """Subscribe to ``session_id`` as if asked (an original-style viewer
        follows its ``containerID`` from the start); a session that does not
        exist yet is followed when it starts, without an error."""
        try:
            self._on_subscribe(Subscribe(sessionId=session_id), now, wall)
        except MessageError as exc:
            if exc.code is not ErrorCode.SESSION_NOT_FOUND:
                self.send_error(exc.code, exc.message, session_id=exc.session_id, now=now)

    def receive_binary(self, *, now: float) -> None:
        """A binary message: pcclog speaks JSON text only."""
        self.send_error(
            ErrorCode.INVALID_MESSAGE,
            "binary messages are not supported: send JSON in text frames",
            now=now,
        )

    def data_to_send(self) -> bytes:
        """Everything queued for this client, as one buffer for one write.

        The bytes stay counted against the budget until the runtime
        confirms them with ``bytes_sent``."""
        box = self.outbox
        if box.gaps:
            self._flush_all_gaps()
        if self._replays and box.held < box.limit:
            self._pump()
        box.ready = False
        chunks = box.take()
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def bytes_sent(self, count: int) -> None:
        """The runtime wrote ``count`` bytes of what ``data_to_send`` gave;
        a paged replay then refills the room they leave."""
        box = self.outbox
        box.sent(count)
        if self._replays and box.held < box.limit:
            self._pump()

    def messages_to_send(self) -> list[bytes]:
        """For ``framed=False`` clients: queued JSON payloads, one per
        message. The host's WebSocket stack owns them from here (it buffers
        and flow-controls on its own), so they leave the budget at once; a
        paged replay queues its next page, and the client is ready again."""
        box = self.outbox
        if box.gaps:
            self._flush_all_gaps()
        box.ready = False
        out = box.take_released()
        if self._replays:
            self._pump()
        return out

    def queue_frame(self, frame: bytes) -> None:
        """Queue a control frame (pong, ping, close) in order with the data.
        Used by ``Connection``; never dropped."""
        self.outbox.put(frame)
        self._mark_ready()

    @property
    def has_output(self) -> bool:
        box = self.outbox
        return bool(box.chunks) or bool(box.gaps) or bool(self._replays and box.room > 0)

    def next_deadline(self) -> float | None:
        return self.access.deadline

    def handle_timeout(self, now: float) -> None:
        awaiting = self.access.state is AccessState.AWAITING
        reason = self.access.timeout(now)
        if reason is not None:
            if awaiting:
                self.hub.counters.auth_failures += 1
            self.close(CloseCode.POLICY_VIOLATION, reason)

    def disconnect(self) -> None:
        """The transport is gone: forget this client entirely and give its
        bytes back at once; the sessions it was producing start their grace."""
        self._detach_all()
        producing = self._producing
        self._producing = {}
        for session in producing.values():
            self.hub.producer_left(session)
        self.outbox.release()
        self.hub.clients.pop(self, None)
        self.owner = None

    def send_error(
        self, code: ErrorCode, message: str, *, session_id: str | None = None, now: float
    ) -> None:
        """Answer one message with an ``error``; repeated abuse closes 1008."""
        self.hub.counters.errors_sent += 1
        if code is ErrorCode.UNAUTHORIZED:
            self.hub.counters.auth_failures += 1
        self._queue_private(encode(ErrorMessage(code=code, message=message, sessionId=session_id)))
        reason = self.access.strike(now)
        if reason is not None:
            self.close(CloseCode.POLICY_VIOLATION, reason)

    def authenticate(self, token: str, *, now: float, wall: float) -> None:
        """Resolve ``token`` and make it this client's grant, or raise
        ``MessageError(UNAUTHORIZED)``. A narrower grant takes effect at once
        on every subscription, attached or pending (``Delivery.regrant``)."""
        self.access.authenticate(token, now=now, wall=wall)
        self.regrant()

    # --- message handlers ---------------------------------------------------

    def _on_auth(self, message: Auth, now: float, wall: float) -> None:
        self.authenticate(message.token, now=now, wall=wall)

    def _on_ping(self, message: Ping, now: float, wall: float) -> None:
        self._queue_private_frame(_PONG_FRAME)

    def _on_list(self, message: List, now: float, wall: float) -> None:
        grant = self._require(Role.VIEW, None)
        self._queue_private(encode(Sessions(sessions=self.hub.list_sessions(grant))))

    def _on_subscribe(self, message: Subscribe, now: float, wall: float) -> None:
        if message.auth is not None:
            self.authenticate(message.auth.token, now=now, wall=wall)
        if self.outbox.over_budget:
            # A runtime honouring ``wants_read`` never gets here; an embedder
            # that feeds a client past its budget is refused instead.
            raise MessageError(
                ErrorCode.RATE_LIMITED,
                "outbound buffer full: read what was already sent before subscribing again",
                session_id=message.sessionId,
            )
        session_id = message.sessionId
        hub = self.hub
        if session_id == "*":
            self._require(Role.VIEW, None)
            if not self.wildcard and self._subscription_count() >= hub.limits.max_subscriptions:
                raise self._too_many(session_id)
            self.wildcard = True
            hub.follow_all(self, True)
            grant = self.grant
            assert grant is not None
            for session in list(hub.sessions.values()):
                if grant.can_view(session.id) and (
                    session.id not in self._attached or message.since is not None
                ):
                    self.attach(session, since=message.since, tail=message.tail)
            return
        self._require(Role.VIEW, session_id)
        if session_id not in self._explicit:
            if self._subscription_count() >= hub.limits.max_subscriptions:
                raise self._too_many(session_id)
            self._explicit[session_id] = None
        found = hub.sessions.get(session_id)
        if found is None:
            hub.wait_for(session_id, self)
            raise MessageError(
                ErrorCode.SESSION_NOT_FOUND,
                f"session {session_id!r} does not exist (yet); you stay subscribed and "
                "receive its entries when it starts",
                session_id=session_id,
            )
        self.attach(found, since=message.since, tail=message.tail)

    def _on_unsubscribe(self, message: Unsubscribe, now: float, wall: float) -> None:
        session_id = message.sessionId
        hub = self.hub
        if session_id == "*":
            self.wildcard = False
            hub.follow_all(self, False)
            for attached in list(self._attached):
                if attached not in self._explicit:
                    self._detach(attached)
            return
        self._explicit.pop(session_id, None)
        hub.stop_waiting(session_id, self)
        if session_id in self._attached and not (
            self.wildcard and self.grant is not None and self.grant.can_view(session_id)
        ):
            self._detach(session_id)

    def _on_log(self, message: Log, now: float, wall: float) -> None:
        session_id = message.sessionId
        self._require(Role.PRODUCE, session_id)
        if message.timestamp is None:
            timestamp = format_wall(wall)
        else:
            try:
                timestamp = normalize_timestamp(message.timestamp)
            except ValueError as exc:
                raise MessageError(
                    ErrorCode.INVALID_MESSAGE, f"{exc} - at `$.timestamp`", session_id=session_id
                ) from None
        data = message.data
        entry = LogEntry(
            level=message.level or "info",
            message=message.message or "",
            timestamp=timestamp,
            data=None if data is msgspec.UNSET or bytes(data) == b"null" else data,
        )
        self._publish(session_id, entry, now, message.producer, message.pseq)

    def _on_status(self, message: Status, now: float, wall: float) -> None:
        session_id = message.sessionId
        self._require(Role.PRODUCE, session_id)
        entry = StatusEntry(status=message.status, metadata=message.metadata or {})
        self._publish(session_id, entry, now, message.producer, message.pseq)

    def _on_wrapper(self, message: WrapperMessage, now: float, wall: float) -> None:
        """The original container wrapper's envelopes (SPEC §3, ``_wrapper``)."""
        session_id = message.containerID or self.default_session
        if not session_id:
            raise MessageError(
                ErrorCode.INVALID_MESSAGE,
                "containerID is missing: set it in the envelope or in the URL (?containerID=)",
            )
        self._require(Role.PRODUCE, session_id)
        entry = translate(message, session_id=session_id, wall=wall)
        if isinstance(entry, Reply):
            self._queue_private(entry.payload)
        else:
            self._publish(session_id, entry, now, None, None)

    def _publish(
        self,
        session_id: str,
        entry: LogEntry | StatusEntry,
        now: float,
        producer: str | None,
        pseq: int | None,
    ) -> None:
        """Publish a producer's entry. A numbered one (``producer``, ``pseq``)
        already applied is a resend after a broken connection: dropped
        without a reply."""
        hub = self.hub
        grant = self.grant
        assert grant is not None  # _require passed
        # Marks are kept per grant subject: a co-producer under another
        # token cannot push this producer's marks out (``Session.mark_applied``).
        subject = grant.subject
        if producer is not None and pseq is not None:
            session = hub.sessions.get(session_id)
            if session is not None and session.already_applied(subject, producer, pseq):
                return
        self._produced = True
        tenant = grant.tenant
        if type(entry) is LogEntry:
            hub.publish_log(
                session_id,
                level=entry.level,
                message=entry.message,
                timestamp=entry.timestamp,
                data=entry.data,
                now=now,
                tenant=tenant,
            )
        else:
            assert isinstance(entry, StatusEntry)
            hub.publish_status(
                session_id,
                status=entry.status,
                metadata=entry.metadata or None,
                now=now,
                tenant=tenant,
            )
        if producer is not None and pseq is not None:
            hub.sessions[session_id].mark_applied(subject, producer, pseq)
        if session_id not in self._producing:
            joined = hub.producer_joined(session_id)
            if joined is not None:
                self._producing[session_id] = joined

    # --- internals ----------------------------------------------------------

    def _require(self, role: Role, session_id: str | None) -> Grant:
        return self.access.require(role, session_id)

    def _subscription_count(self) -> int:
        return len(self._explicit) + (1 if self.wildcard else 0)

    def _too_many(self, session_id: str) -> MessageError:
        return MessageError(
            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            f"cannot subscribe to {session_id!r}: the limit is "
            f"{self.hub.limits.max_subscriptions} subscriptions per connection",
            session_id=session_id,
        )


_Handler = Callable[[Client, Any, float, float], None]
_HANDLERS: dict[type[ClientMessage], _Handler] = {
    Subscribe: Client._on_subscribe,
    Unsubscribe: Client._on_unsubscribe,
    Ping: Client._on_ping,
    Auth: Client._on_auth,
    List: Client._on_list,
    Log: Client._on_log,
    Status: Client._on_status,
    WrapperLog: Client._on_wrapper,
    WrapperStatus: Client._on_wrapper,
    WrapperError: Client._on_wrapper,
    WrapperComplete: Client._on_wrapper,
    WrapperHeartbeat: Client._on_wrapper,
}
# Entries whose fan-out may be deferred to the end of a batch (log only; a
# wrapper STATUS or COMPLETE settles the batch itself in publish_status).
_BATCHABLE: frozenset[_Handler] = frozenset({Client._on_log, Client._on_wrapper})
# Producer entries are throttled by the pool, not the rate limit.
_EXEMPT: frozenset[_Handler] = frozenset(
    {
        Client._on_log,
        Client._on_status,
        Client._on_wrapper,
    }
)

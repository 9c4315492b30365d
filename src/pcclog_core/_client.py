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

Subscribing queues a status snapshot, then the replay, then live entries,
with no duplicate and no hole. The replay is paged: the client keeps a
cursor (``_replays``) into the session's history and copies frames in only
while its outbox has room, more each time the runtime confirms a write. A
session being replayed lists the client in ``lagging``; once the cursor
reaches the session's last ``seq`` the client joins its live subscribers.
Entries published meanwhile are in history, so the cursor reads them too;
if history sheds entries the cursor has not reached, it sends an
``evicted`` gap for them. ``since: 0`` over gigabytes thus costs one
``CONNECTION_BUFFER`` at a time.

``now`` is a monotonic time for deadlines; ``wall`` is seconds since the
epoch, for timestamps and token expiry.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any

import msgspec

from ._auth import AuthError, Grant, Role
from ._errors import CloseCode, ErrorCode, MessageError
from ._frames import frame_header_length, text_frame
from ._messages import (
    Auth,
    ClientMessage,
    ErrorMessage,
    Gap,
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
from ._outbox import Outbox
from ._session import Session, StatusValue
from ._timefmt import format_wall, normalize_timestamp

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["Client"]

_PONG_FRAME = text_frame(encode(Pong()))


class _Replay:
    """A paged replay's cursor: the next seq to copy from history."""

    __slots__ = ("next", "snapshot")

    def __init__(self, next_seq: int) -> None:
        self.next = next_seq
        self.snapshot = True  # the status snapshot is still to be queued


class Client:
    """One peer at the message level (see the module docstring).

    ``receive_message(text, now=, wall=)`` handles one complete client
    message; replies and subscribed entries accumulate until the runtime
    drains them with ``data_to_send()`` (frames, confirmed with
    ``bytes_sent``) or ``messages_to_send()`` (JSON payloads,
    ``framed=False``). When the client must be closed (policy, slow
    consumer, expired token), ``close_request`` is set and the client is on
    the hub's ready list.
    """

    __slots__ = (
        "__weakref__",
        "_attached",
        "_auth_deadline",
        "_explicit",
        "_produced",
        "_rate_stamp",
        "_rate_tokens",
        "_replays",
        "_strikes",
        "_strikes_since",
        "close_request",
        "default_session",
        "expires_at",
        "framed",
        "grant",
        "hub",
        "outbox",
        "owner",
        "wildcard",
    )

    def __init__(
        self,
        hub: Hub,
        *,
        now: float,
        grant: Grant | None = None,
        framed: bool = True,
        default_session: str | None = None,
        wall: float | None = None,
    ) -> None:
        self.hub = hub
        self.framed = framed
        self.default_session = default_session
        # Whatever wraps this client (a ``Connection``, an embedder's socket);
        # cleared on ``disconnect`` so that no cycle outlives the peer.
        self.owner: object = None
        limits = hub.limits
        self.outbox = Outbox(limits.connection_buffer, hub.pool)
        self._replays: dict[str, _Replay] = {}
        # dicts used as ordered sets: an empty dict is a third of an empty
        # set, and an idle connection holds two of them.
        self._explicit: dict[str, None] = {}
        self._attached: dict[str, None] = {}
        self.wildcard = False
        self._produced = False
        self.close_request: tuple[CloseCode, str] | None = None
        self._rate_tokens = float(limits.rate_burst)
        self._rate_stamp = now
        self._strikes = 0
        self._strikes_since = now
        self.grant: Grant | None = None
        self.expires_at: float | None = None
        self._auth_deadline: float | None = None
        if not hub.authenticator.required:
            self.grant = hub.authenticator.authenticate("", wall=0.0)
        elif grant is not None:
            self._set_grant(grant, now, wall if wall is not None else 0.0)
        else:
            self._auth_deadline = now + limits.auth_timeout
        hub.clients[self] = None

    # --- the runtime's side -------------------------------------------------

    @property
    def wants_read(self) -> bool:
        """The runtime may read (and feed) this peer's input now. False
        while the outbox is over its budget, or while the hub's pool is over
        ``MEMORY_BUDGET`` and this client produces entries."""
        box = self.outbox
        return box.held < box.limit and not (self._produced and box.pool.over)

    @property
    def paused_by_pool(self) -> bool:
        """Not read for the hub's sake (not its own backlog): its keepalive
        is suspended meanwhile."""
        return self._produced and self.outbox.pool.over

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
            if hub._dirty and handler not in _BATCHABLE:
                hub.flush_batch()
            if handler not in _EXEMPT or self.grant is None or Role.PRODUCE not in self.grant.roles:
                self._take_rate_token(now)
            handler(self, message, now, wall)
        except MessageError as exc:
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
        deadlines = [d for d in (self._auth_deadline, self.expires_at) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float) -> None:
        if self._auth_deadline is not None and now >= self._auth_deadline:
            self.hub.counters.auth_failures += 1
            self.close(CloseCode.POLICY_VIOLATION, "authentication deadline passed")
        elif self.expires_at is not None and now >= self.expires_at:
            self.close(CloseCode.POLICY_VIOLATION, "token expired")

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the runtime to close this client (idempotent); detaches it
        from every session at once so it costs fan-out nothing more."""
        if self.close_request is None:
            self.close_request = (code, reason)
            self._detach_all()
            self._mark_ready()

    def disconnect(self) -> None:
        """The transport is gone: forget this client entirely and give its
        bytes back at once."""
        self._detach_all()
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
        limits = self.hub.limits
        if now - self._strikes_since > limits.abuse_window:
            self._strikes = 0
            self._strikes_since = now
        self._strikes += 1
        if self._strikes > limits.abuse_limit:
            self.close(
                CloseCode.POLICY_VIOLATION,
                f"more than {limits.abuse_limit} rejected messages in {limits.abuse_window:g}s",
            )

    def authenticate(self, token: str, *, now: float, wall: float) -> None:
        """Resolve ``token`` and make it this client's grant, or raise
        ``MessageError(UNAUTHORIZED)``."""
        try:
            grant = self.hub.authenticator.authenticate(token, wall=wall)
        except AuthError as exc:
            raise MessageError(ErrorCode.UNAUTHORIZED, f"authentication failed: {exc}") from None
        self._set_grant(grant, now, wall)

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
            hub._wildcard[self] = None
            grant = self.grant
            assert grant is not None
            for session in list(hub.sessions.values()):
                if grant.can_view(session.id) and (
                    session.id not in self._attached or message.since is not None
                ):
                    self._attach(session, since=message.since, tail=message.tail)
            return
        self._require(Role.VIEW, session_id)
        if session_id not in self._explicit:
            if self._subscription_count() >= hub.limits.max_subscriptions:
                raise self._too_many(session_id)
            self._explicit[session_id] = None
        found = hub.sessions.get(session_id)
        if found is None:
            hub._pending.setdefault(session_id, {})[self] = None
            raise MessageError(
                ErrorCode.SESSION_NOT_FOUND,
                f"session {session_id!r} does not exist (yet); you stay subscribed and "
                "receive its entries when it starts",
                session_id=session_id,
            )
        self._attach(found, since=message.since, tail=message.tail)

    def _on_unsubscribe(self, message: Unsubscribe, now: float, wall: float) -> None:
        session_id = message.sessionId
        hub = self.hub
        if session_id == "*":
            self.wildcard = False
            hub._wildcard.pop(self, None)
            for attached in list(self._attached):
                if attached not in self._explicit:
                    self._detach(attached)
            return
        self._explicit.pop(session_id, None)
        waiting = hub._pending.get(session_id)
        if waiting is not None:
            waiting.pop(self, None)
            if not waiting:
                del hub._pending[session_id]
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
        producer, pseq = message.producer, message.pseq
        if producer is not None and pseq is not None and self._resent(session_id, producer, pseq):
            return
        data = message.data
        self._produced = True
        self.hub.publish_log(
            session_id,
            level=message.level or "info",
            message=message.message or "",
            timestamp=timestamp,
            data=None if data is msgspec.UNSET or bytes(data) == b"null" else data,
            now=now,
        )
        if producer is not None and pseq is not None:
            self.hub.sessions[session_id].mark_applied(producer, pseq)

    def _on_status(self, message: Status, now: float, wall: float) -> None:
        session_id = message.sessionId
        self._require(Role.PRODUCE, session_id)
        producer, pseq = message.producer, message.pseq
        if producer is not None and pseq is not None and self._resent(session_id, producer, pseq):
            return
        self._produced = True
        self.hub.publish_status(
            session_id, status=message.status, metadata=message.metadata, now=now
        )
        if producer is not None and pseq is not None:
            self.hub.sessions[session_id].mark_applied(producer, pseq)

    def _resent(self, session_id: str, producer: str, pseq: int) -> bool:
        """An entry this producer sent before, resent after a broken
        connection: already applied, so dropped without a reply."""
        session = self.hub.sessions.get(session_id)
        return session is not None and session.already_applied(producer, pseq)

    # The original container wrapper's envelopes (SPEC §3).

    def _wrapper_session(self, container_id: str | None) -> str:
        session_id = container_id or self.default_session
        if not session_id:
            raise MessageError(
                ErrorCode.INVALID_MESSAGE,
                "containerID is missing: set it in the envelope or in the URL (?containerID=)",
            )
        self._require(Role.PRODUCE, session_id)
        self._produced = True
        return session_id

    def _wrapper_timestamp(self, timestamp: str | None, wall: float) -> str:
        if timestamp is None:
            return format_wall(wall)
        try:
            return normalize_timestamp(timestamp)
        except ValueError as exc:
            raise MessageError(ErrorCode.INVALID_MESSAGE, f"{exc} - at `$.timestamp`") from None

    def _on_wrapper_log(self, message: WrapperLog, now: float, wall: float) -> None:
        session_id = self._wrapper_session(message.containerID)
        metadata = message.data.metadata
        self.hub.publish_log(
            session_id,
            level=message.data.level,
            message=message.data.message,
            timestamp=self._wrapper_timestamp(message.timestamp, wall),
            data=None if metadata is msgspec.UNSET or bytes(metadata) == b"null" else metadata,
            now=now,
        )

    _WRAPPER_STATUS: dict[str, StatusValue] = {
        "starting": "running",
        "running": "running",
        "completed": "stopped",
        "failed": "error",
    }

    def _on_wrapper_status(self, message: WrapperStatus, now: float, wall: float) -> None:
        session_id = self._wrapper_session(message.containerID)
        metadata: dict[str, Any] = {"phase": message.data.status}
        if message.data.message is not None:
            metadata["message"] = message.data.message
        self.hub.publish_status(
            session_id, status=self._WRAPPER_STATUS[message.data.status], metadata=metadata, now=now
        )

    def _on_wrapper_error(self, message: WrapperError, now: float, wall: float) -> None:
        session_id = self._wrapper_session(message.containerID)
        data = {"code": message.data.code, "details": message.data.details}
        self.hub.publish_log(
            session_id,
            level="error",
            message=message.data.error,
            timestamp=self._wrapper_timestamp(message.timestamp, wall),
            data=msgspec.Raw(encode({k: v for k, v in data.items() if v is not None})),
            now=now,
        )

    def _on_wrapper_complete(self, message: WrapperComplete, now: float, wall: float) -> None:
        session_id = self._wrapper_session(message.containerID)
        data = message.data
        metadata: dict[str, Any] = {"exitCode": data.exitCode}
        if data.duration is not None:
            metadata["duration"] = data.duration
        if data.message is not None:
            metadata["message"] = data.message
        self.hub.publish_status(
            session_id,
            status="stopped" if data.exitCode == 0 else "error",
            metadata=metadata,
            now=now,
        )

    def _on_wrapper_heartbeat(self, message: WrapperHeartbeat, now: float, wall: float) -> None:
        session_id = self._wrapper_session(message.containerID)
        self._queue_private(
            encode(WrapperHeartbeat(containerID=session_id, timestamp=format_wall(wall)))
        )

    # --- internals ----------------------------------------------------------

    def _require(self, role: Role, session_id: str | None) -> Grant:
        grant = self.grant
        if grant is None:
            raise MessageError(
                ErrorCode.UNAUTHORIZED,
                'not authenticated: send {"type":"auth","token":"..."} or put "auth" in subscribe',
                session_id=session_id,
            )
        if role not in grant.roles:
            raise MessageError(
                ErrorCode.UNAUTHORIZED,
                f"token lacks the {role.value!r} role",
                session_id=session_id,
            )
        if session_id is not None and not grant.allows(session_id):
            raise MessageError(
                ErrorCode.UNAUTHORIZED,
                f"token does not cover session {session_id!r}",
                session_id=session_id,
            )
        return grant

    def _set_grant(self, grant: Grant, now: float, wall: float) -> None:
        self.grant = grant
        self._auth_deadline = None
        self.expires_at = None if grant.expires is None else now + (grant.expires - wall)
        # A narrower grant takes effect at once on existing subscriptions.
        for session_id in list(self._attached):
            if not grant.can_view(session_id):
                self._detach(session_id)

    def _subscription_count(self) -> int:
        return len(self._explicit) + (1 if self.wildcard else 0)

    def _too_many(self, session_id: str) -> MessageError:
        return MessageError(
            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            f"cannot subscribe to {session_id!r}: the limit is "
            f"{self.hub.limits.max_subscriptions} subscriptions per connection",
            session_id=session_id,
        )

    def _take_rate_token(self, now: float) -> None:
        limits = self.hub.limits
        tokens = min(
            float(limits.rate_burst),
            self._rate_tokens + (now - self._rate_stamp) * limits.rate_limit,
        )
        self._rate_stamp = now
        if tokens < 1.0:
            self._rate_tokens = tokens
            self.hub.counters.rate_limited += 1
            raise MessageError(
                ErrorCode.RATE_LIMITED,
                f"more than {limits.rate_limit:g} messages per second; message dropped",
            )
        self._rate_tokens = tokens - 1.0

    def _attach(self, session: Session, *, since: int | None, tail: int | None) -> None:
        """Snapshot, replay, then live (see the module docstring)."""
        hub = self.hub
        if hub._dirty:
            hub.flush_batch()
        session_id = session.id
        if session_id in self._attached:
            self._detach(session_id)
        self.outbox.gaps.pop(session_id, None)
        if since is not None:
            start = since + 1
        else:
            count = hub.limits.subscribe_tail if tail is None else tail
            start = max(session.first_seq, session.seq - count + 1)
        self._replays[session_id] = _Replay(start)
        session.lagging[self] = None
        self._attached[session_id] = None
        self._pump()

    def _pump(self) -> None:
        """Copy replay pages into the outbox while it has room; a cursor that
        reaches its session's last seq joins the live subscribers."""
        hub = self.hub
        if hub._dirty:
            # Entries of an open batch are in history but not yet fanned out:
            # fan them out first, or a cursor joining live would get them twice.
            hub.flush_batch()
        box = self.outbox
        replays = self._replays
        framed = self.framed
        queued = False
        while replays and box.held < box.limit:
            session_id, replay = next(iter(replays.items()))
            session = hub.sessions[session_id]
            if replay.snapshot:
                replay.snapshot = False
                self._queue_private_frame(session.snapshot_frame())
            first = session.first_seq
            start = replay.next
            if start < first:
                self._queue_gap(session_id, start, first - 1, "evicted")
                start = first
            last = session.seq
            if start <= last:
                room = box.limit - box.held
                page: list[bytes] = []
                size = 0
                for frame in islice(session.frames, start - first, None):
                    page.append(frame)
                    size += len(frame)
                    if size >= room:
                        break
                start += len(page)
                if not framed:
                    page = [f[frame_header_length(f) :] for f in page]
                    size = sum(map(len, page))
                box.put_many(page, size)
            replay.next = start
            queued = True
            if start > last:
                del replays[session_id]
                del session.lagging[self]
                (session.subscribers if framed else session.viewers_plain)[self] = box
        if queued:
            self._mark_ready()

    def _detach(self, session_id: str) -> None:
        self._attached.pop(session_id, None)
        self._replays.pop(session_id, None)
        self.outbox.gaps.pop(session_id, None)
        session = self.hub.sessions.get(session_id)
        if session is not None:
            session.subscribers.pop(self, None)
            session.viewers_plain.pop(self, None)
            session.lagging.pop(self, None)

    def _detach_all(self) -> None:
        hub = self.hub
        for session_id in list(self._attached):
            self._detach(session_id)
        for session_id in self._explicit:
            waiting = hub._pending.get(session_id)
            if waiting is not None:
                waiting.pop(self, None)
                if not waiting:
                    del hub._pending[session_id]
        self._explicit.clear()
        hub._wildcard.pop(self, None)
        self.wildcard = False

    # --- the fan-out's slow path (called by Hub._fan_out) -------------------

    def _offer(self, session_id: str, data: bytes, first: int, last: int, limit: float) -> int:
        """Live entries ``first..last`` (joined in ``data``) for a subscriber
        that is over budget or has a gap to announce first. Returns the
        number of entries queued."""
        box = self.outbox
        if box.held < limit:
            if session_id in box.gaps:
                self._flush_gap(session_id)
            box.put(data)
            self._mark_ready()
            return last - first + 1
        self._overflow(session_id, first, last)
        return 0

    def _offer_plain(
        self, session_id: str, payloads: list[bytes], first: int, last: int, limit: float
    ) -> int:
        """``_offer`` for a ``framed=False`` viewer: one payload per entry."""
        box = self.outbox
        if box.held < limit:
            if session_id in box.gaps:
                self._flush_gap(session_id)
            box.put_many(payloads, sum(map(len, payloads)))
            self._mark_ready()
            return len(payloads)
        self._overflow(session_id, first, last)
        return 0

    def _overflow(self, session_id: str, first: int, last: int) -> None:
        """Log entries ``first..last`` found the outbox full."""
        hub = self.hub
        counters = hub.counters
        if hub.limits.slow_consumer == "disconnect":
            if self.close_request is None and self not in hub._doomed:
                counters.slow_consumer_disconnects += 1
                hub._doomed.append(self)
            return
        counters.slow_consumer_drops += last - first + 1
        self.outbox.record_gap(session_id, first, last)

    # --- queuing replies ----------------------------------------------------

    def _flush_gap(self, session_id: str) -> None:
        gap = self.outbox.gaps.pop(session_id, None)
        if gap is not None:
            self._queue_gap(session_id, gap[0], gap[1], "slow_consumer")

    def _flush_all_gaps(self) -> None:
        box = self.outbox
        gaps = box.gaps
        box.gaps = {}
        for session_id, gap in gaps.items():
            self._queue_gap(session_id, gap[0], gap[1], "slow_consumer")

    def _queue_gap(self, session_id: str, first: int, last: int, reason: Any) -> None:
        self.hub.counters.gaps += 1
        self._queue_private(
            encode(Gap(sessionId=session_id, fromSeq=first, toSeq=last, reason=reason))
        )

    def _queue_private(self, payload: bytes) -> None:
        if self.outbox.gaps:
            # A reply goes after every gap already known: a client that pings
            # as a barrier has heard of every entry it missed by the pong.
            self._flush_all_gaps()
        self.outbox.put(text_frame(payload) if self.framed else payload)
        self._mark_ready()

    def _queue_private_frame(self, frame: bytes) -> None:
        if self.outbox.gaps:
            self._flush_all_gaps()
        self.outbox.put(frame if self.framed else frame[frame_header_length(frame) :])
        self._mark_ready()

    def _mark_ready(self) -> None:
        box = self.outbox
        if not box.ready:
            box.ready = True
            self.hub._ready.append(self)


_Handler = Callable[[Client, Any, float, float], None]
_HANDLERS: dict[type[ClientMessage], _Handler] = {
    Subscribe: Client._on_subscribe,
    Unsubscribe: Client._on_unsubscribe,
    Ping: Client._on_ping,
    Auth: Client._on_auth,
    List: Client._on_list,
    Log: Client._on_log,
    Status: Client._on_status,
    WrapperLog: Client._on_wrapper_log,
    WrapperStatus: Client._on_wrapper_status,
    WrapperError: Client._on_wrapper_error,
    WrapperComplete: Client._on_wrapper_complete,
    WrapperHeartbeat: Client._on_wrapper_heartbeat,
}
# Entries whose fan-out may be deferred to the end of a batch (log only).
_BATCHABLE: frozenset[_Handler] = frozenset(
    {Client._on_log, Client._on_wrapper_log, Client._on_wrapper_error}
)
# Producer entries are throttled by the pool, not the rate limit.
_EXEMPT: frozenset[_Handler] = frozenset(
    {
        Client._on_log,
        Client._on_status,
        Client._on_wrapper_log,
        Client._on_wrapper_status,
        Client._on_wrapper_error,
        Client._on_wrapper_complete,
    }
)

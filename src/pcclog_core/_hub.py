"""The hub: session registry, history, subscriptions and fan-out.

Theory of operation
-------------------

A ``Hub`` holds sessions. A session has a status (``running``, ``stopped``,
``error``), metadata, a ``seq`` counter and a bounded history of the frames
of its entries (``log`` and ``status``), oldest first. ``seq`` starts at 1
and grows by one per entry, so the history is addressed by arithmetic:
entry ``s`` sits at index ``s - first_seq``.

A ``Client`` is one peer at the message level: JSON text in, frames (or, for
embedders, JSON payloads) out. It is transport-agnostic; ``Connection``
wraps one in the WebSocket byte protocol, and an embedder can drive one from
its own WebSocket stack.

Fan-out is the hot path. An entry is encoded to JSON and framed **once**;
the same ``bytes`` object is appended to the outbound list of every
subscriber, and the client is put on the hub's ready list the first time it
gets something. Nothing walks all sessions or all connections per message:
each session knows its subscribers (``*`` subscribers are attached to each
matching session when it is created, not checked per message).

Backpressure (SPEC §6). A client's live outbound bytes are counted. Past
``connection_buffer`` the slow-consumer policy applies to ``log`` entries:

* ``drop``: the entry is not queued; the client records the seq range it
  missed per session. The range is sent as one ``gap`` before the next entry
  of that session is queued, or when the runtime drains the client, so each
  missed entry is covered by exactly one gap and order is kept.
* ``disconnect``: the client is closed with 1013.

``status`` entries, errors and pongs are always queued. Replayed history
is queued but not counted: its frames are the history's own objects, shared,
not copies. The hub also sums queued bytes over all clients; past
``global_buffer`` ``producers_paused`` tells the runtime to stop reading
producers until the clients drain.

Ordering: the core is single-threaded and synchronous, so a subscribe
queues the ``status`` snapshot, then the replay, and joins the session's
subscribers in one step: live entries follow with no duplicate and no hole.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Literal

import msgspec

from ._auth import Authenticator, AuthError, Grant, Role
from ._errors import CloseCode, ErrorCode, MessageError
from ._frames import frame_header_length, text_frame
from ._limits import Limits
from ._messages import (
    Auth,
    ClientMessage,
    ErrorMessage,
    Gap,
    List,
    Log,
    Ping,
    Pong,
    SessionInfo,
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

__all__ = ["Client", "Counters", "Hub", "Session"]

StatusValue = Literal["running", "stopped", "error"]
_ENDED = ("stopped", "error")
_PONG_FRAME = text_frame(encode(Pong()))
_NO_LIMIT = float("inf")
_MAX_PRODUCER_MARKS = 64  # producers remembered per session for resend dedupe


@dataclasses.dataclass(slots=True)
class Counters:
    """Plain counters the runtime exports as metrics."""

    auth_failures: int = 0
    bytes_out: int = 0
    deliveries: int = 0
    errors_sent: int = 0
    gaps: int = 0
    messages_in: int = 0
    ping_timeouts: int = 0
    rate_limited: int = 0
    slow_consumer_disconnects: int = 0
    slow_consumer_drops: int = 0


class Session:
    """One agent session: status, metadata, seq and history."""

    __slots__ = (
        "frames",
        "id",
        "metadata",
        "pending",
        "producers",
        "seq",
        "status",
        "subscribers",
        "viewers_plain",
    )

    def __init__(self, session_id: str, history_lines: int) -> None:
        self.id = session_id
        self.status: StatusValue = "running"
        self.metadata: dict[str, Any] = {}
        self.seq = 0
        self.frames: deque[bytes] = deque(maxlen=history_lines)
        # Subscribers that take frames (our socket runtime) and those that
        # take bare JSON payloads (an embedder's WebSocket stack).
        self.subscribers: dict[Client, None] = {}
        self.viewers_plain: dict[Client, None] = {}
        # Log frames published in the current batch, not yet fanned out.
        self.pending: list[bytes] = []
        # Highest ``pseq`` applied per producer id, newest producers last.
        self.producers: dict[str, int] = {}

    def already_applied(self, producer: str, pseq: int) -> bool:
        return pseq <= self.producers.get(producer, 0)

    def mark_applied(self, producer: str, pseq: int) -> None:
        marks = self.producers
        marks.pop(producer, None)
        marks[producer] = pseq
        if len(marks) > _MAX_PRODUCER_MARKS:
            del marks[next(iter(marks))]

    @property
    def first_seq(self) -> int:
        """Seq of the oldest entry still in history (``seq + 1`` if none)."""
        return self.seq - len(self.frames) + 1

    def info(self) -> SessionInfo:
        return SessionInfo(
            sessionId=self.id, status=self.status, metadata=self.metadata, lastSeq=self.seq
        )

    def snapshot_frame(self) -> bytes:
        return text_frame(
            encode(Status(sessionId=self.id, status=self.status, metadata=self.metadata))
        )


class Hub:
    """Session registry and fan-out. See the module docstring."""

    def __init__(
        self, limits: Limits | None = None, authenticator: Authenticator | None = None
    ) -> None:
        self.limits = limits or Limits()
        self.authenticator = authenticator or Authenticator(disabled=True)
        self.sessions: dict[str, Session] = {}
        self.counters = Counters()
        self.queued_bytes = 0
        # Ended sessions by end time; one timeout for all, so insertion
        # order is deadline order and the first one is the next to go.
        self._ended: dict[str, float] = {}
        self._wildcard: dict[Client, None] = {}
        self._pending: dict[str, dict[Client, None]] = {}
        self._ready: list[Client] = []
        self._doomed: list[Client] = []
        self._batch_depth = 0
        self._dirty: list[Session] = []
        self.clients: dict[Client, None] = {}

    # --- the runtime's side ------------------------------------------------

    def take_ready(self) -> list[Client]:
        """Clients that got output since the last call; the runtime drains
        each one (``Client.data_to_send``)."""
        ready = self._ready
        self._ready = []
        return ready

    @property
    def producers_paused(self) -> bool:
        """True while total queued bytes exceed ``global_buffer``: stop
        reading producers and Docker streams until clients drain."""
        return self.queued_bytes > self.limits.global_buffer

    def next_deadline(self) -> float | None:
        """When ``handle_timeout`` next has work (session eviction)."""
        for ended_at in self._ended.values():
            return ended_at + self.limits.session_timeout
        return None

    def handle_timeout(self, now: float) -> None:
        """Evict ended sessions older than ``session_timeout``."""
        if self._dirty:
            self.flush_batch()
        timeout = self.limits.session_timeout
        while self._ended:
            session_id, ended_at = next(iter(self._ended.items()))
            if ended_at + timeout > now:
                break
            self._evict(session_id)

    # --- producers' side (also the Docker source's) ------------------------

    def publish_log(
        self,
        session_id: str,
        *,
        level: str,
        message: str,
        timestamp: str,
        data: msgspec.Raw | None = None,
        now: float,
    ) -> int:
        """Append a ``log`` entry and fan it out. Returns its seq.

        Raises ``MessageError(TOO_MANY_SESSIONS)`` when a new session would
        exceed ``max_sessions``.
        """
        session = self.sessions.get(session_id)
        if session is None:
            session = self._create(session_id, now)
        seq = session.seq + 1
        session.seq = seq
        entry = Log(
            sessionId=session_id,
            timestamp=timestamp,
            level=level,
            message=message,
            data=msgspec.UNSET if data is None else data,
            seq=seq,
        )
        frame = text_frame(encode(entry))
        session.frames.append(frame)
        if self._batch_depth:
            if not session.pending:
                self._dirty.append(session)
            session.pending.append(frame)
        else:
            self._fan_out(session, [frame], seq, droppable=True)
        return seq

    def begin_batch(self) -> None:
        """Defer the fan-out of ``log`` entries until ``end_batch``.

        Within a batch, the log entries of one session are joined into one
        buffer that every viewer gets with a single append: the cost per
        viewer is per batch (one producer read), not per entry. Anything
        that must see entries in order (a status, a subscribe, an eviction)
        flushes the batch first, so batching changes no order anyone can
        observe. Batches nest; the outermost ``end_batch`` flushes.
        """
        self._batch_depth += 1

    def end_batch(self) -> None:
        self._batch_depth -= 1
        if self._batch_depth == 0 and self._dirty:
            self.flush_batch()

    def flush_batch(self) -> None:
        """Fan out every deferred entry now (the batch stays open)."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for session in dirty:
            frames = session.pending
            session.pending = []
            if frames:
                self._fan_out(session, frames, session.seq - len(frames) + 1, droppable=True)

    def publish_status(
        self,
        session_id: str,
        *,
        status: StatusValue,
        metadata: dict[str, Any] | None = None,
        now: float,
    ) -> int:
        """Record a status change (metadata merged) and fan it out. Returns
        its seq. An ended session is evicted ``session_timeout`` later; a
        ``running`` status revives it."""
        if self._dirty:
            self.flush_batch()
        session = self.sessions.get(session_id)
        if session is None:
            merged = dict(metadata or {})
        elif metadata:
            merged = {**session.metadata, **metadata}
        else:
            merged = session.metadata
        seq = (session.seq if session is not None else 0) + 1
        frame = text_frame(
            encode(Status(sessionId=session_id, status=status, metadata=merged, seq=seq))
        )
        # Metadata is merged and re-sent with every status and snapshot, so
        # it is bounded like a message, not left to grow with each update.
        limit = self.limits.max_message_size
        if len(frame) > limit:
            raise MessageError(
                ErrorCode.INVALID_MESSAGE,
                f"session metadata would exceed MAX_MESSAGE_SIZE ({limit} bytes) once merged",
                session_id=session_id,
            )
        if session is None:
            session = self._create(session_id, now)
        session.metadata = merged
        session.status = status
        self._ended.pop(session_id, None)
        if status in _ENDED:
            self._ended[session_id] = now
        session.seq = seq
        session.frames.append(frame)
        self._fan_out(session, [frame], seq, droppable=False)
        return seq

    def list_sessions(self, grant: Grant | None = None) -> list[SessionInfo]:
        return [s.info() for s in self.sessions.values() if grant is None or grant.can_view(s.id)]

    # --- internals ----------------------------------------------------------

    def _create(self, session_id: str, now: float) -> Session:
        if len(self.sessions) >= self.limits.max_sessions:
            # Make room by evicting the session that ended first; live
            # sessions are never evicted.
            if not self._ended:
                raise MessageError(
                    ErrorCode.TOO_MANY_SESSIONS,
                    f"cannot create session {session_id!r}: {len(self.sessions)} sessions are "
                    f"running and the limit is {self.limits.max_sessions}",
                    session_id=session_id,
                )
            self._evict(next(iter(self._ended)))
        session = Session(session_id, self.limits.history_lines)
        self.sessions[session_id] = session
        waiting = self._pending.pop(session_id, None)
        if waiting:
            for client in waiting:
                client._attach(session, since=None, tail=0)
        for client in self._wildcard:
            if client.grant is not None and client.grant.can_view(session_id):
                client._attach(session, since=None, tail=0)
        return session

    def _evict(self, session_id: str) -> None:
        if self._dirty:
            self.flush_batch()
        self._ended.pop(session_id, None)
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for client in (*session.subscribers, *session.viewers_plain):
            client._attached.pop(session_id, None)
            if session_id in client._explicit:
                self._pending.setdefault(session_id, {})[client] = None

    def _fan_out(
        self, session: Session, frames: list[bytes], first: int, *, droppable: bool
    ) -> None:
        """Queue ``frames`` (entries ``first``… of ``session``) for every
        subscriber.

        They are joined once into one buffer, and the loop body is the whole
        per-viewer cost: one append and a byte count. Totals are derived
        after the loop from the (rare) drops instead of summed per viewer.
        """
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        size = len(data)
        last = first + len(frames) - 1
        limit = self.limits.connection_buffer if droppable else _NO_LIMIT
        ready = self._ready
        subscribers = session.subscribers
        dropped = 0
        for client in subscribers:
            out_bytes = client._out_bytes
            if out_bytes < limit:
                if client._gaps:
                    client._flush_gap(session.id)
                client._out.append(data)
                client._out_bytes = out_bytes + size
                if not client._ready:
                    client._ready = True
                    ready.append(client)
            else:
                dropped += 1
                client._overflow(session.id, first, last)
        clients = len(subscribers) - dropped
        queued = clients * size
        delivered = clients * len(frames)
        if session.viewers_plain:
            payloads = [f[frame_header_length(f) :] for f in frames]
            psize = sum(map(len, payloads))
            for client in session.viewers_plain:
                if client._out_bytes < limit:
                    if client._gaps:
                        client._flush_gap(session.id)
                    client._out.extend(payloads)
                    client._out_bytes += psize
                    queued += psize
                    delivered += len(payloads)
                    if not client._ready:
                        client._ready = True
                        ready.append(client)
                else:
                    client._overflow(session.id, first, last)
        self.queued_bytes += queued
        self.counters.deliveries += delivered
        if self._doomed:
            doomed = self._doomed
            self._doomed = []
            for client in doomed:
                client.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: outbound buffer full")


class Client:
    """One peer at the message level (see the module docstring).

    ``receive_message(text, now=, wall=)`` handles one complete client
    message; replies and subscribed entries accumulate until the runtime
    drains them with ``data_to_send()`` (frames) or ``messages_to_send()``
    (JSON payloads, ``framed=False``). When the client must be closed
    (policy, slow consumer, expired token), ``close_request`` is set and the
    client is on the hub's ready list.

    ``now`` is a monotonic time for deadlines; ``wall`` is seconds since the
    epoch, for timestamps and token expiry.
    """

    __slots__ = (
        "__weakref__",
        "_attached",
        "_auth_deadline",
        "_explicit",
        "_gaps",
        "_out",
        "_out_bytes",
        "_rate_stamp",
        "_rate_tokens",
        "_ready",
        "_strikes",
        "_strikes_since",
        "_wildcard_tail",
        "close_request",
        "default_session",
        "expires_at",
        "framed",
        "grant",
        "hub",
        "id",
        "owner",
        "wildcard",
    )

    _next_id = 0

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
        Client._next_id += 1
        self.id = Client._next_id
        self.hub = hub
        self.framed = framed
        self.default_session = default_session
        # Whatever wraps this client (a ``Connection``, an embedder's socket).
        self.owner: object = None
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._ready = False
        self._gaps: dict[str, list[int]] = {}
        # dicts used as ordered sets: an empty dict is a third of an empty
        # set, and an idle connection holds two of them.
        self._explicit: dict[str, None] = {}
        self._attached: dict[str, None] = {}
        self.wildcard = False
        self._wildcard_tail: int | None = None
        self.close_request: tuple[CloseCode, str] | None = None
        limits = hub.limits
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
        """Everything queued for this client, as one buffer for one write."""
        if self._gaps:
            self._flush_all_gaps()
        out = self._out
        if not out:
            self._ready = False
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        self._drained()
        return data

    def messages_to_send(self) -> list[bytes]:
        """For ``framed=False`` clients: queued JSON payloads, one per message."""
        if self._gaps:
            self._flush_all_gaps()
        out = self._out
        self._drained()
        return out

    def queue_frame(self, frame: bytes) -> None:
        """Queue a control frame (pong, close) in order with the data. Used
        by ``Connection``; never dropped."""
        self._out.append(frame)
        self._mark_ready()

    @property
    def has_output(self) -> bool:
        return bool(self._out) or bool(self._gaps)

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
        """The transport is gone: forget this client entirely."""
        self._detach_all()
        self.hub.queued_bytes -= self._out_bytes
        self._out_bytes = 0
        self._out = []
        self._gaps = {}
        self.hub.clients.pop(self, None)

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
        if self._out_bytes >= self.hub.limits.connection_buffer:
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
        """Snapshot, replay, then live (see "Ordering" above)."""
        if self.hub._dirty:
            self.hub.flush_batch()
        session_id = session.id
        if session_id in self._attached:
            self._detach(session_id)
        self._gaps.pop(session_id, None)
        self._queue_private_frame(session.snapshot_frame())
        first = session.first_seq
        last = session.seq
        if since is not None:
            start = since + 1
            if start < first:
                gap = Gap(sessionId=session_id, fromSeq=start, toSeq=first - 1, reason="evicted")
                self._queue_private(encode(gap))
                self.hub.counters.gaps += 1
                start = first
        else:
            count = self.hub.limits.subscribe_tail if tail is None else tail
            start = max(first, last - count + 1)
        if start <= last:
            # Replay counts against the connection's buffer like live data:
            # live entries arriving before the client has read it are then
            # subject to the slow-consumer policy, and a client that keeps
            # asking for replays without reading is refused (see _on_subscribe).
            replay = list(islice(session.frames, start - first, None))
            if not self.framed:
                replay = [f[frame_header_length(f) :] for f in replay]
            size = sum(map(len, replay))
            self._out.extend(replay)
            self._out_bytes += size
            self.hub.queued_bytes += size
        (session.subscribers if self.framed else session.viewers_plain)[self] = None
        self._attached[session_id] = None
        self._mark_ready()

    def _detach(self, session_id: str) -> None:
        self._attached.pop(session_id, None)
        self._gaps.pop(session_id, None)
        session = self.hub.sessions.get(session_id)
        if session is not None:
            session.subscribers.pop(self, None)
            session.viewers_plain.pop(self, None)

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

    def _overflow(self, session_id: str, first: int, last: int) -> None:
        """Log entries ``first..last`` found the outbound buffer full (called
        by fan-out)."""
        counters = self.hub.counters
        if self.hub.limits.slow_consumer == "disconnect":
            if self.close_request is None and self not in self.hub._doomed:
                counters.slow_consumer_disconnects += 1
                self.hub._doomed.append(self)
            return
        counters.slow_consumer_drops += last - first + 1
        gap = self._gaps.get(session_id)
        if gap is None:
            self._gaps[session_id] = [first, last]
        else:
            gap[1] = last

    def _flush_gap(self, session_id: str) -> None:
        gap = self._gaps.pop(session_id, None)
        if gap is not None:
            self._queue_gap(session_id, gap)

    def _flush_all_gaps(self) -> None:
        gaps = self._gaps
        self._gaps = {}
        for session_id, gap in gaps.items():
            self._queue_gap(session_id, gap)

    def _queue_gap(self, session_id: str, gap: list[int]) -> None:
        self.hub.counters.gaps += 1
        self._queue_private(
            encode(Gap(sessionId=session_id, fromSeq=gap[0], toSeq=gap[1], reason="slow_consumer"))
        )

    def _queue_private(self, payload: bytes) -> None:
        if self._gaps:
            # A reply goes after every gap already known: a client that pings
            # as a barrier has heard of every entry it missed by the pong.
            self._flush_all_gaps()
        self._out.append(text_frame(payload) if self.framed else payload)
        self._mark_ready()

    def _queue_private_frame(self, frame: bytes) -> None:
        if self._gaps:
            self._flush_all_gaps()
        self._out.append(frame if self.framed else frame[frame_header_length(frame) :])
        self._mark_ready()

    def _mark_ready(self) -> None:
        if not self._ready:
            self._ready = True
            self.hub._ready.append(self)

    def _drained(self) -> None:
        self.hub.queued_bytes -= self._out_bytes
        self._out_bytes = 0
        self._out = []
        self._ready = False


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
# Producer entries are throttled by the global buffer, not the rate limit.
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

"""A producer's numbered entries, from the moment they are given until the
server has surely handled them.

Theory of operation
-------------------

``ProducerProtocol`` is the sans-IO half of a producer
(``pcclog_server.client.Producer`` and ``pcclog run`` are the other): the
runtime opens connections when ``backoff`` says so, sends what
``data_to_send(now)`` returns, feeds the server's messages to
``receive_text`` and reports what ``events()`` returns. ``now`` is
monotonic seconds, passed in.

**Numbering.** Every entry is numbered when it is given: ``producer`` (an
id of this producer, random per process) and ``pseq`` (one more than the
entry before, across every session; the parts of a split message get
consecutive numbers). A resend carries the same number, and the server
drops an entry whose ``pseq`` it already applied for that producer and
session (SPEC §3), so a resend to the same server process lands once.

**Buffer, window, fences.** Entries wait in one ordered buffer (at most
``max_buffer``; past that the oldest is dropped and counted in
``dropped``) and are sent in order, at most ``max_in_flight`` sent and not
yet confirmed. After sending, the core sends ``{"type":"ping"}``: the
server handles one connection's messages in order, so its ``pong`` proves
every entry sent before that ping was handled, and those leave the buffer.
(With a persistent store the pong also means durable: SPEC §6.) An
``error`` the server returns for an entry proves the same for the entries
before it, and that entry leaves the buffer as ``rejected``. Pings are
spaced by ``min_ping_interval`` while one is outstanding.

**Reconnects.** When a connection breaks, every entry not yet confirmed is
sent again, in order, on the next one. First of all on each new
connection, the core re-sends the status of every session a server last
confirmed ``running`` (with the metadata merged up to that status), under
that status's own ``pseq``: the same server drops it as already applied, a
restarted one (which forgot the session) gets the session back even from a
producer that prints nothing, before the entries still buffered (all given
after that status, since confirmations go in order).

**Refusals.** ``UNAUTHORIZED`` in answer to the connection's ``auth`` (or an
HTTP 401/403 at the handshake, reported by the runtime) is not the end: a
server restarted with other tokens may take the old one back. The core
keeps every entry, says so once (``refusal`` holds the reason meanwhile)
and retries on the backoff schedule. A refusal about one session
(``UNAUTHORIZED`` with a ``sessionId``: the token lacks the role or does not
cover the session) is for good: that session's buffered and future entries
are rejected here. ``TOO_MANY_SESSIONS`` rejects the session's entries for
``refuse_retry`` seconds, instead of drawing a stream of errors that would
close the connection.

Exactly once holds while the server process stays the same. Across a
server restart, entries the old server handled but never confirmed (the
last round trip before it died) are sent to the new one, whose memory of
``pseq`` starts empty, and appear there again.

The connection's life is the table ``_TRANSITIONS`` below.
"""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass
from typing import Any

import msgspec

from ._entries import StatusValue, log_texts, status_text
from ._errors import ErrorCode, LocalProtocolError
from ._messages import Auth, Ping, encode
from ._notice import Notice
from ._pacing import Backoff

__all__ = [
    "Notice",
    "ProducerProtocol",
    "ProducerState",
    "Rejection",
    "StatusValue",
]

_PING = encode(Ping()).decode()
_BATCH = 256  # entries per data_to_send() call, so a runtime's loop stays fair


class ProducerState(enum.Enum):
    WAITING = "waiting"  # no connection; the next attempt is due at backoff.retry_at
    CONNECTING = "connecting"  # the runtime is opening one
    AUTHENTICATING = "authenticating"  # auth and a ping sent; the pong says "accepted"
    STREAMING = "streaming"  # entries flow, pongs confirm them
    CLOSED = "closed"


class _Input(enum.Enum):
    CONNECT = "connect"
    OPENED = "opened"
    FAILED = "failed"  # could not connect, or refused at the handshake
    REFUSED = "refused"  # UNAUTHORIZED in answer to auth
    ACCEPTED = "accepted"  # the pong of the auth ping
    LOST = "lost"
    CLOSE = "close"


_S, _I = ProducerState, _Input
_TRANSITIONS: dict[tuple[ProducerState, _Input], ProducerState] = {
    (_S.WAITING, _I.CONNECT): _S.CONNECTING,
    (_S.WAITING, _I.LOST): _S.WAITING,  # the socket of a refused connection closing
    (_S.CONNECTING, _I.OPENED): _S.AUTHENTICATING,
    (_S.CONNECTING, _I.FAILED): _S.WAITING,
    (_S.AUTHENTICATING, _I.ACCEPTED): _S.STREAMING,
    (_S.AUTHENTICATING, _I.REFUSED): _S.WAITING,
    (_S.AUTHENTICATING, _I.LOST): _S.WAITING,
    (_S.STREAMING, _I.LOST): _S.WAITING,
    (_S.CLOSED, _I.LOST): _S.CLOSED,
    (_S.CLOSED, _I.FAILED): _S.CLOSED,
    **{(state, _I.CLOSE): _S.CLOSED for state in ProducerState},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """The server answered an entry with this ``error`` message."""

    message: dict[str, Any]


Event = Notice | Rejection


# A status as the server would hold it: its pseq and the session's merged
# metadata then; no metadata for an end (stopped, error).
_State = tuple[int, dict[str, Any] | None]


class _Record:
    """A session's status as this producer set it, and as a server confirmed."""

    __slots__ = ("confirmed", "copy", "merged")

    def __init__(self) -> None:
        self.merged: dict[str, Any] = {}  # every status's metadata, merged
        self.confirmed: _State | None = None  # the last status a pong confirmed
        self.copy: _Entry | None = None  # its re-sent copy, while in the buffer


class _Entry:
    __slots__ = ("copy", "record", "session", "state", "text")

    def __init__(
        self,
        session: str,
        text: str,
        *,
        record: _Record | None = None,
        state: _State | None = None,
        copy: bool = False,
    ) -> None:
        self.session = session
        self.text: str | None = text  # None: answered by an error, skip it
        self.record = record  # status entries only
        self.state = state
        self.copy = copy  # a status re-sent on reconnect: not one of the entries given


class ProducerProtocol:
    """One producer's entries and its connection's state (module docstring).

    Counters: ``pending`` (given, not yet confirmed), ``dropped`` (buffer
    overflow), ``rejected`` (refused by the server, or here while a refusal
    lasts). ``refusal`` is the reason the server refuses the token, while it
    does; ``last_rejection`` the reason of the latest rejected entry.
    """

    def __init__(
        self,
        *,
        producer_id: str,
        token: str | None,
        peer: str = "the server",
        max_buffer: int = 100_000,
        max_in_flight: int = 1_000,
        max_message_size: int = 1_048_576,
        min_ping_interval: float = 0.01,
        refuse_retry: float = 5.0,
        max_sessions: int = 1_000,
        backoff: Backoff | None = None,
    ) -> None:
        if max_buffer < 1 or max_in_flight < 1 or max_sessions < 1:
            raise ValueError("max_buffer, max_in_flight and max_sessions must be at least 1")
        if max_message_size < 512:
            raise ValueError("max_message_size must be at least 512 bytes")
        if not 1 <= len(producer_id) <= 64:
            raise ValueError("producer_id must be 1 to 64 characters")
        self.producer_id = producer_id
        self.token = token
        self.peer = peer
        self.max_buffer = max_buffer
        self.max_in_flight = max_in_flight
        self.max_message_size = max_message_size
        self.min_ping_interval = min_ping_interval
        self.refuse_retry = refuse_retry
        self.max_sessions = max_sessions
        self.backoff = backoff or Backoff()
        self.state = ProducerState.WAITING
        self.dropped = 0
        self.rejected = 0
        self.refusal: str | None = None
        self.last_rejection: str | None = None
        self._pseq = 0
        self._live = 0  # entries in the buffer that count as pending
        self._buffer: collections.deque[_Entry] = collections.deque()
        self._base = 0  # id of _buffer[0]; ids are contiguous
        self._sent_upto = 0  # id of the next entry to send on this connection
        self._fenced_upto = 0  # entries below this id are covered by a ping
        self._fences: collections.deque[int | None] = collections.deque()  # None: the auth ping
        self._last_ping = 0.0
        self._answered_upto: dict[str, int] = {}  # per connection, see _answered
        self._refused: dict[str, tuple[str, float | None]] = {}  # reason, until (None: for good)
        self._records: dict[str, _Record] = {}  # sessions given a status, oldest first
        self._outgoing: list[str] = []
        self._events: list[Event] = []
        self._reported: str | None = None  # "outage" or "refusal" told since connected

    # --- counters -------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._live

    @property
    def connected(self) -> bool:
        return self.state is ProducerState.STREAMING

    @property
    def closed(self) -> bool:
        return self.state is ProducerState.CLOSED

    def events(self) -> list[Event]:
        """What happened since the last call, for the runtime to report."""
        out, self._events = self._events, []
        return out

    # --- the application side ---------------------------------------------------

    def log(
        self,
        session_id: str,
        level: str,
        message: str,
        data: dict[str, Any] | None = None,
        *,
        timestamp: float,
        now: float,
    ) -> None:
        """Give a ``log`` entry (``timestamp``: epoch seconds). A message too
        long for one frame becomes several consecutive entries whose
        ``data`` carries ``"part": k, "parts": n``."""
        texts = log_texts(
            session_id,
            level,
            message,
            data,
            timestamp=timestamp,
            producer=self.producer_id,
            first_pseq=self._pseq + 1,
            max_message_size=self.max_message_size,
        )
        self._pseq += len(texts)
        for text in texts:
            self._append(_Entry(session_id, text), now)

    def status(
        self,
        session_id: str,
        status: StatusValue,
        metadata: dict[str, Any] | None = None,
        *,
        now: float,
    ) -> None:
        """Give a ``status`` entry; the server merges ``metadata`` into the
        session's. A ``running`` session's status is re-sent on reconnects."""
        pseq = self._pseq + 1
        text = status_text(
            session_id,
            status,
            metadata,
            producer=self.producer_id,
            pseq=pseq,
            max_message_size=self.max_message_size,
        )
        self._pseq = pseq
        record = self._records.pop(session_id, None) or _Record()
        self._records[session_id] = record  # newest last
        if len(self._records) > self.max_sessions:
            del self._records[next(iter(self._records))]
        record.merged = {**record.merged, **(metadata or {})}
        state = (pseq, record.merged if status == "running" else None)
        self._append(_Entry(session_id, text, record=record, state=state), now)

    # --- the connection side ------------------------------------------------------

    def connecting(self) -> None:
        """The runtime starts opening a connection (when ``backoff`` allows)."""
        self._move(_Input.CONNECT)

    def connection_made(self) -> None:
        """The WebSocket is open: authenticate, then a ping whose pong says
        the token was accepted (nothing else is sent before it)."""
        self._move(_Input.OPENED)
        if self.token is not None:
            self._outgoing.append(encode(Auth(token=self.token)).decode())
        self._fences.append(None)
        self._outgoing.append(_PING)

    def connection_failed(self, reason: str, now: float, *, refused: bool = False) -> None:
        """Connecting failed; ``refused`` when the server turned the handshake
        down (HTTP 401/403): retried like a refused ``auth``."""
        if self.state is ProducerState.CLOSED:
            return
        self._move(_Input.FAILED)
        self.backoff.failed(now)
        if refused:
            self.refusal = reason
        self._report("refusal" if refused else "outage", reason)

    def connection_lost(self, reason: str, now: float) -> None:
        """The connection broke or was closed. Unconfirmed entries will be
        sent again on the next one."""
        before = self.state
        self._move(_Input.LOST)
        if before in (ProducerState.WAITING, ProducerState.CLOSED):
            return
        self._reset_connection()
        self.backoff.failed(now)
        if before is ProducerState.STREAMING:
            self._reported = None  # news again, whatever was told before
        self._report("outage", reason)

    def close(self) -> None:
        self._move(_Input.CLOSE)
        self._reset_connection()

    def receive_text(self, text: str | bytes, now: float) -> None:
        """One message from the server; anything unparsable is ignored."""
        try:
            message = msgspec.json.decode(text)
        except (msgspec.DecodeError, UnicodeError, RecursionError):
            return
        if isinstance(message, dict):
            self.receive(message, now)

    def receive(self, message: dict[str, Any], now: float) -> None:
        if self.state not in (ProducerState.AUTHENTICATING, ProducerState.STREAMING):
            return  # a refused connection's last words
        kind = message.get("type")
        if kind == "pong":
            self._on_pong(now)
        elif kind == "error":
            self._on_error(message, now)

    def data_to_send(self, now: float) -> list[str]:
        """The next JSON texts to send, in order: at most ``_BATCH`` entries
        within the in-flight window, then a ping covering them when due."""
        out, self._outgoing = self._outgoing, []
        if self.state is not ProducerState.STREAMING:
            return out
        buffer = self._buffer
        sent = 0
        while sent < _BATCH:
            offset = self._sent_upto - self._base
            if offset >= len(buffer) or offset >= self.max_in_flight:
                break
            text = buffer[offset].text
            self._sent_upto += 1
            if text is not None:
                out.append(text)
                sent += 1
        if self._sent_upto > self._fenced_upto and (
            not self._fences or now >= self._last_ping + self.min_ping_interval
        ):
            self._fences.append(self._sent_upto)
            self._fenced_upto = self._sent_upto
            self._last_ping = now
            out.append(_PING)
        return out

    def next_deadline(self) -> float | None:
        """When to call ``data_to_send`` again even if nothing happens (a
        ping held back by ``min_ping_interval``), or when the next connection
        attempt is due; None: only when something happens."""
        if self.state is ProducerState.WAITING:
            return self.backoff.retry_at
        if (
            self.state is ProducerState.STREAMING
            and self._sent_upto > self._fenced_upto
            and self._fences
        ):
            return self._last_ping + self.min_ping_interval
        return None

    # --- internals ----------------------------------------------------------------

    def _move(self, event: _Input) -> None:
        try:
            self.state = _TRANSITIONS[self.state, event]
        except KeyError:
            raise LocalProtocolError(
                f"producer: {event.value!r} is not possible while {self.state.value}"
            ) from None

    def _append(self, entry: _Entry, now: float) -> bool:
        """Buffer ``entry``; False when a refusal of its session rejects it."""
        refused = self._refused.get(entry.session)
        if refused is not None:
            reason, until = refused
            if until is None or now < until:
                self._reject(entry.session, reason)
                return False
            del self._refused[entry.session]
        if len(self._buffer) >= self.max_buffer:
            self._drop_oldest()
        self._buffer.append(entry)
        self._live += 1
        return True

    def _drop_oldest(self) -> None:
        dropped = self._buffer.popleft()
        self._base += 1
        self._sent_upto = max(self._sent_upto, self._base)
        self._fenced_upto = max(self._fenced_upto, self._base)
        self._release(dropped, confirmed=False)
        if dropped.text is not None and not dropped.copy:
            self._live -= 1
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                self._events.append(
                    Notice(
                        level="warning",
                        text=f"buffer full ({self.max_buffer} entries, server unreachable?): "
                        f"dropped the oldest; {self.dropped} dropped so far",
                    )
                )

    @staticmethod
    def _release(entry: _Entry, *, confirmed: bool) -> None:
        """``entry`` leaves the buffer; ``confirmed``: handled by the server."""
        record = entry.record
        if record is None:
            return
        if entry.copy:
            if record.copy is entry:
                record.copy = None
        elif confirmed and entry.text is not None and entry.state is not None:
            record.confirmed = entry.state if entry.state[1] is not None else None

    def _confirm(self, upto: int) -> None:
        """Entries with id < ``upto`` were handled by the server."""
        buffer = self._buffer
        while buffer and self._base < upto:
            entry = buffer.popleft()
            self._base += 1
            self._release(entry, confirmed=True)
            if entry.text is not None and not entry.copy:
                self._live -= 1

    def _reject(self, session_id: str, reason: str) -> None:
        self.rejected += 1
        self.last_rejection = reason
        if self.rejected == 1 or self.rejected % 1000 == 0:
            self._events.append(
                Notice(
                    level="warning",
                    text=f"server refused entries for session {session_id}: {reason}",
                )
            )

    def _refuse_session(
        self, session_id: str, reason: str, for_seconds: float | None, now: float
    ) -> None:
        """The server refuses ``session_id`` (for good, or for a while): its
        buffered entries are not sent again, new ones rejected at once."""
        self._refused[session_id] = (reason, None if for_seconds is None else now + for_seconds)
        for entry in self._buffer:
            if entry.session == session_id and entry.text is not None:
                entry.text = None
                if not entry.copy:
                    self._live -= 1
                    self._reject(session_id, reason)

    def _answered(self, session_id: str) -> bool:
        """An ``error`` for ``session_id`` answers one of its entries in
        flight, at the earliest the first one not matched to an error yet;
        the server handles a connection's messages in order, so everything
        before that one was handled: confirm it (fewer entries to send
        again, and none twice, if the server closes the connection over a
        burst of errors). True when the entry counted as pending."""
        start = max(self._base, self._answered_upto.get(session_id, self._base - 1) + 1)
        for entry_id in range(start, self._sent_upto):
            entry = self._buffer[entry_id - self._base]
            if entry.session == session_id:
                live = entry.text is not None and not entry.copy
                if live:
                    self._live -= 1
                entry.text = None
                self._answered_upto[session_id] = entry_id
                self._confirm(entry_id + 1)
                return live
        return False  # it left the buffer already (overflow): counted as dropped

    def _reset_connection(self) -> None:
        self._answered_upto.clear()
        self._fences.clear()
        self._outgoing.clear()
        self._sent_upto = self._base
        self._fenced_upto = self._base

    def _report(self, kind: str, reason: str) -> None:
        """Say it once: the first outage or refusal after being connected (or
        a change from one to the other); the retries after it quietly."""
        if self._reported == kind:
            self._events.append(Notice(level="debug", text=reason))
            return
        self._reported = kind
        text = f"{reason}; buffering ({self.pending} entries) and retrying"
        self._events.append(Notice(level="warning", text=text, connected=False))

    def _on_pong(self, now: float) -> None:
        if not self._fences:
            return
        upto = self._fences.popleft()
        if upto is not None:
            self._confirm(upto)
            return
        self._move(_Input.ACCEPTED)
        self.backoff.succeeded()
        self.refusal = None
        told = self._reported is not None
        self._reported = None
        self._resend_statuses(now)
        detail = f"connected to {self.peer}" + (
            f"; sending {self.pending} buffered entries" if told else ""
        )
        self._events.append(
            Notice(level="warning" if told else "info", text=detail, connected=True)
        )

    def _resend_statuses(self, now: float) -> None:
        """Put first in line the status of every session a server last
        confirmed ``running``: everything still buffered came after it, so a
        restarted server needs it first (the same server drops it)."""
        for session_id in reversed(self._records):
            record = self._records[session_id]
            if record.confirmed is None or record.copy is not None:
                continue
            pseq, merged = record.confirmed
            refused = self._refused.get(session_id)
            if refused is not None and (refused[1] is None or now < refused[1]):
                continue
            try:
                text = status_text(
                    session_id,
                    "running",
                    merged,
                    producer=self.producer_id,
                    pseq=pseq,
                    max_message_size=self.max_message_size,
                )
            except ValueError:  # the merged metadata outgrew a message
                continue
            entry = _Entry(session_id, text, record=record, copy=True)
            record.copy = entry
            self._buffer.appendleft(entry)
            self._base -= 1
        self._sent_upto = self._fenced_upto = self._base

    def _on_error(self, message: dict[str, Any], now: float) -> None:
        code = message.get("code")
        text = str(message.get("message") or code)
        session_id = message.get("sessionId")
        if self.state is ProducerState.AUTHENTICATING and code == ErrorCode.UNAUTHORIZED:
            # Only the auth precedes the first pong: the token was refused.
            self._move(_Input.REFUSED)
            self._reset_connection()
            self.backoff.failed(now)
            self.refusal = f"the server refused the token: {text}"
            self._report("refusal", self.refusal)
            return
        if code == ErrorCode.RATE_LIMITED:
            # Producer entries are exempt, so this answers one of our pings
            # in place of its pong: that fence is void; a later one covers it.
            if not self._fences:
                return
            voided = self._fences.popleft()
            if voided is None:
                self._fences.append(None)
                self._outgoing.append(_PING)
                return
            if not self._fences:
                self._fenced_upto = self._base  # re-cover what is in flight
            self._last_ping = now
            return
        self._events.append(Rejection(message=message))
        reason = f"{code}: {text}"
        if not isinstance(session_id, str):
            self._reject("?", reason)
            return
        live = self._answered(session_id)
        if code == ErrorCode.UNAUTHORIZED:
            self._refuse_session(session_id, reason, None, now)
        elif code == ErrorCode.TOO_MANY_SESSIONS:
            # The server is full of live sessions; try this one again later
            # rather than have a stream of rejections close the connection.
            self._refuse_session(session_id, reason, self.refuse_retry, now)
        if live:
            self._reject(session_id, reason)

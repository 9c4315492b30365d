"""The hub: session registry, batching and fan-out, and the memory budget.

Theory of operation
-------------------

A ``Hub`` holds sessions (``_session``): each has a status, metadata, a
``seq`` counter and a bounded history of its entries' frames. Clients
(``_client``) subscribe to sessions; each client has one ``Outbox``
(``_outbox``) that owns its queued bytes and its budget.

Fan-out is the hot path. An entry is encoded to JSON and framed **once**;
the same ``bytes`` object is appended to the outbox of every subscriber, and
the client is put on the hub's ready list the first time it gets something.
Nothing walks all sessions or all connections per message: each session
knows its subscribers (``*`` and glob subscribers are attached to each
matching session when it is created, not checked per message).

Batches. A producer read (or a Docker read) may carry many entries; inside
``begin_batch``/``end_batch`` the log entries of one session are joined into
one buffer that every viewer gets with a single append. Anything that must
see entries in order (a status, a subscribe, an eviction, a replay page)
flushes the batch first, so batching changes no order anyone can observe.

Redaction (SPEC §8). Every entry's ``message``, the strings of its ``data``
and a status's metadata are masked by the session's redactor before the
entry is encoded: what history, viewers, metrics and later the store hold
is already masked. pcclog's own secrets are always in it; a followed
container's secret environment values are added per session
(``add_secrets``); a PEM private key printed over several lines is masked
line by line (``Session.lines``).

Memory (SPEC §6). Every byte the hub holds is counted in one ``Pool``:
history (per session, bounded by ``HISTORY_LINES`` and ``HISTORY_BYTES``)
plus every outbox's held bytes (each bounded by ``CONNECTION_BUFFER``, see
``_outbox``). Past ``MEMORY_BUDGET`` the session holding the most history
loses its oldest entries first (``_shed``, to 15/16 of the budget so that
shedding is rare); only if history cannot give enough back is the pool
``over``, and then clients that produce are not read until it drains
(``Client.wants_read``). Viewers are never paused by the pool: each is
bounded by its own budget.

Hub and Delivery talk through a narrow interface: a client calls ``settle``,
``wait_for``/``stop_waiting``, ``follow_all``, ``mark_ready`` and ``doom``; the
hub calls a client's ``attach``, ``offer``/``offer_plain`` and
``session_evicted``. Neither writes the other's private fields.

Tenancy (SPEC §2 ``SESSION_QUOTA``). A session remembers the tenant that
created it (``Grant.tenant``: the subject of a grant narrower than ``*``;
``None`` for a grant over every session and for the Docker source). A
tenant holds at most ``session_quota`` running sessions. When the registry
is full (``max_sessions``), room is made by evicting an ended session: the
creator's own first (oldest first); otherwise only one of a tenant that
holds more than ``session_quota`` sessions in the registry, whose excess is
not protected; no other ended session leaves before its ``session_timeout``.
A refusal tells a tenant nothing about sessions outside its grant. Counted
per tenant, never by walking sessions.

Backpressure on a viewer (its outbox past ``CONNECTION_BUFFER``) follows
``SLOW_CONSUMER`` for ``log`` entries: ``drop`` records an exact gap,
``disconnect`` closes it with 1013. ``status`` entries and replies are never
dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ._auth import Authenticator, Grant
from ._errors import CloseCode, ErrorCode, MessageError
from ._frames import frame_header_length, text_frame
from ._levels import LEVEL_RANK, normalize_level
from ._limits import Limits, cut_text
from ._messages import Log, SessionInfo, Status, encode
from ._outbox import Pool, fan_out
from ._redact import Redactor
from ._session import Session, StatusValue
from ._wrapper import to_envelope

if TYPE_CHECKING:
    from ._delivery import Delivery

__all__ = ["Counters", "Hub", "Session"]

_ENDED = ("stopped", "error")
_NO_LIMIT = float("inf")


@dataclasses.dataclass(slots=True)
class Counters:
    """Plain counters the runtime exports as metrics."""

    auth_failures: int = 0
    deliveries: int = 0
    errors_sent: int = 0
    gaps: int = 0
    history_shed: int = 0
    lines_cut: int = 0
    messages_in: int = 0
    ping_timeouts: int = 0
    rate_limited: int = 0
    slow_consumer_disconnects: int = 0
    slow_consumer_drops: int = 0


class Hub:
    """Session registry and fan-out. See the module docstring."""

    def __init__(
        self,
        limits: Limits | None = None,
        authenticator: Authenticator | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.limits = limits = limits or Limits()
        # No authenticator is not an open hub: it is one nobody can enter.
        # An open one says so: ``Authenticator(disabled=True)``.
        self.authenticator = authenticator = authenticator or Authenticator()
        # Redaction (SPEC §8) before anything is kept or sent: the built-in
        # rules by default, and pcclog's own secrets always.
        self.redactor = redactor or Redactor(secrets=authenticator.secrets())
        # Exact secret values per session (a container's secret-looking
        # environment), kept while the session is known.
        self._session_secrets: dict[str, tuple[str, ...]] = {}
        self.sessions: dict[str, Session] = {}
        self.counters = Counters()
        self.pool = Pool(limits.memory_budget)
        # Ended sessions by end time; one timeout for all, so insertion
        # order is deadline order and the first one is the next to go.
        self._ended: dict[str, float] = {}
        # Per tenant: its ended sessions (in end order, a subsequence of
        # ``_ended``), how many of its sessions run, and how many it holds.
        self._ended_of: dict[str | None, dict[str, None]] = {}
        self._running: dict[str | None, int] = {}
        self._held: dict[str | None, int] = {}
        # Running sessions whose last producer connection dropped: when they
        # become "producer lost" (None: not stamped yet, the next
        # ``handle_timeout`` stamps it ``now + producer_grace``).
        self._orphans: dict[str, float | None] = {}
        self._wildcard: dict[Delivery, None] = {}
        self._pending: dict[str, dict[Delivery, None]] = {}
        self._ready: list[Delivery] = []
        self._doomed: list[Delivery] = []
        self._batch_depth = 0
        self._dirty: list[Session] = []
        self.clients: dict[Delivery, None] = {}
        # A message of up to this many characters cannot encode to more
        # than ``max_line_bytes`` (6 bytes per character at worst, ``\\u0001``).
        self._short_line = max(0, (limits.max_line_bytes - 2) // 6)

    # --- the runtime's side ------------------------------------------------

    def take_ready(self) -> list[Delivery]:
        """Clients that got output since the last call; the runtime drains
        each one (``Client.data_to_send``)."""
        ready = self._ready
        self._ready = []
        return ready

    @property
    def queued_bytes(self) -> int:
        """Outbound bytes held for every client (queued or in flight)."""
        return self.pool.queued

    @property
    def history_bytes(self) -> int:
        return self.pool.history

    @property
    def producers_paused(self) -> bool:
        """True while the pool is over ``MEMORY_BUDGET`` even after shedding
        history: clients that produce, and sources, wait until it drains.
        Asking sheds: whatever put the pool over (a publish, or viewers'
        replay pages), history gives way before any producer waits."""
        pool = self.pool
        if pool.queued + pool.history > pool.limit:
            self._shed()
            return pool.queued + pool.history > pool.limit
        return False

    def next_deadline(self) -> float | None:
        """When ``handle_timeout`` next has work: an ended session's
        eviction, or a session whose producer vanished (``0.0``: at once, to
        stamp its grace)."""
        deadline = None
        for ended_at in self._ended.values():
            deadline = ended_at + self.limits.session_timeout
            break
        for lost_at in self._orphans.values():
            if lost_at is None:
                return 0.0
            if deadline is None or lost_at < deadline:
                deadline = lost_at
        return deadline

    def handle_timeout(self, now: float) -> None:
        """Evict ended sessions older than ``session_timeout``; end, as
        ``error`` with ``reason: "producer lost"``, running sessions whose
        producers have been gone for ``producer_grace`` (SPEC §2)."""
        if self._dirty:
            self.flush_batch()
        if self._orphans:
            self._lose_orphans(now)
        timeout = self.limits.session_timeout
        while self._ended:
            session_id, ended_at = next(iter(self._ended.items()))
            if ended_at + timeout > now:
                break
            self._evict(session_id)

    def _lose_orphans(self, now: float) -> None:
        orphans = self._orphans
        grace = self.limits.producer_grace
        for session_id, lost_at in list(orphans.items()):
            if lost_at is None:
                orphans[session_id] = lost_at = now + grace
            if lost_at > now:
                continue
            del orphans[session_id]
            session = self.sessions.get(session_id)
            if session is not None and session.status == "running" and not session.producing:
                self.publish_status(
                    session_id, status="error", metadata={"reason": "producer lost"}, now=now
                )

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
        tenant: str | None = None,
    ) -> int:
        """Append a ``log`` entry and fan it out. Returns its seq.

        ``level`` is normalised through the one level table (``_levels``). A
        ``message`` longer than ``max_line_bytes`` (as encoded JSON) is cut,
        with a marker saying how much. Raises
        ``MessageError(TOO_MANY_SESSIONS)`` when a new session would exceed
        ``max_sessions``, or ``tenant``'s ``session_quota``.
        """
        session = self.sessions.get(session_id)
        if session is None:
            session = self._create(session_id, now, tenant)
        limits = self.limits
        if level not in LEVEL_RANK:
            level = normalize_level(level)
        # Whole lines, after any rejoin: a secret split across two Docker
        # frames is one string here.
        message = session.lines.redact(message)
        if data is not None:
            raw = bytes(data)
            # A source's plain lines share one ``data`` (container, stream):
            # the last one found clean is not scanned again.
            if raw != session.clean_data:
                masked = session.redactor.redact_json(raw)
                if masked is raw:
                    session.clean_data = raw
                else:
                    data = msgspec.Raw(masked)
        if len(message) > self._short_line:
            cut = cut_text(message, limits.max_line_bytes)
            if cut is not message:
                self.counters.lines_cut += 1
                message = cut
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
        session.append(frame, limits.history_lines, limits.history_bytes)
        if self.pool.over:
            self._shed()
        if self._batch_depth:
            if not session.pending:
                self._dirty.append(session)
            session.pending.append(frame)
        else:
            self._fan_out(session, [frame], seq, droppable=True)
        return seq

    def begin_batch(self) -> None:
        """Defer the fan-out of ``log`` entries until ``end_batch`` (see
        "Batches" above). Batches nest; the outermost ``end_batch`` flushes."""
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
        tenant: str | None = None,
    ) -> int:
        """Record a status change (metadata merged) and fan it out. Returns
        its seq. An ended session is evicted ``session_timeout`` later; a
        ``running`` status revives it (within its tenant's quota).
        ``tenant`` creates a new session on that tenant's quota."""
        if self._dirty:
            self.flush_batch()
        session = self.sessions.get(session_id)
        if metadata:
            redactor = self.redactor if session is None else session.redactor
            raw = encode(metadata)
            masked = redactor.redact_json(raw)
            if masked is not raw:
                metadata = msgspec.json.decode(masked)
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
            session = self._create(session_id, now, tenant)
        elif status == "running" and session.status != "running":
            self._check_quota(session_id, session.tenant)
        self._set_status(session, status, merged, now)
        session.seq = seq
        limits = self.limits
        session.append(frame, limits.history_lines, limits.history_bytes)
        if self.pool.over:
            self._shed()
        self._fan_out(session, [frame], seq, droppable=False)
        return seq

    def add_secrets(self, session_id: str, values: Iterable[str]) -> None:
        """Mask these exact values in ``session_id``'s entries too (a
        followed container's secret-looking environment, SPEC §8): its own
        redactor, compiled once, so other sessions pay nothing. Never logged."""
        known = self._session_secrets.get(session_id, ())
        kept = tuple(sorted(set(known) | set(values)))
        if kept == known:
            return
        self._session_secrets[session_id] = kept
        session = self.sessions.get(session_id)
        if session is not None:
            session.use_redactor(self.redactor.with_extra(kept))

    def list_sessions(self, grant: Grant | None = None) -> list[SessionInfo]:
        return [s.info() for s in self.sessions.values() if grant is None or grant.can_view(s.id)]

    # --- the clients' side: the whole interface a Delivery uses ---------------

    def settle(self) -> None:
        """Fan out an open batch's deferred entries now: called before
        anything that must see entries in order (a reply, a subscribe, a
        replay page)."""
        if self._dirty:
            self.flush_batch()

    def wait_for(self, session_id: str, client: Delivery) -> None:
        """``client`` subscribed to a session that does not exist yet: it is
        attached when the session is created (if its grant still allows)."""
        self._pending.setdefault(session_id, {})[client] = None

    def stop_waiting(self, session_id: str, client: Delivery) -> None:
        waiting = self._pending.get(session_id)
        if waiting is not None:
            waiting.pop(client, None)
            if not waiting:
                del self._pending[session_id]

    def follow_all(self, client: Delivery, on: bool) -> None:
        """``client`` subscribes to ``*`` (or stops): attached to every
        session its grant allows as it is created."""
        if on:
            self._wildcard[client] = None
        else:
            self._wildcard.pop(client, None)

    def producer_joined(self, session_id: str) -> Session | None:
        """A connection published to ``session_id`` (its first entry there)."""
        session = self.sessions.get(session_id)
        if session is not None:
            session.producing += 1
            self._orphans.pop(session_id, None)
        return session

    def producer_left(self, session: Session) -> None:
        """A connection that published to ``session`` is gone: if it was the
        last and the session still runs, the grace starts."""
        session_id = session.id
        if self.sessions.get(session_id) is not session:
            return  # evicted since (and maybe created anew)
        session.producing -= 1
        if session.producing <= 0 and session.status == "running":
            self._orphans[session_id] = None

    def mark_ready(self, client: Delivery) -> None:
        """``client`` has output for the runtime (``take_ready``)."""
        self._ready.append(client)

    def doom(self, client: Delivery) -> None:
        """Close ``client`` with 1013 once the current fan-out is done."""
        if client not in self._doomed:
            self._doomed.append(client)
            self.counters.slow_consumer_disconnects += 1

    # --- internals ----------------------------------------------------------

    def _set_status(
        self, session: Session, status: StatusValue, metadata: dict[str, Any], now: float
    ) -> None:
        """The one place a session's status changes: keeps ``_ended`` and
        the per-tenant counts in step."""
        session_id = session.id
        tenant = session.tenant
        was_running = session.status == "running"
        session.set_status(status, metadata)
        self._ended.pop(session_id, None)
        ended_of = self._ended_of.get(tenant)
        if ended_of is not None:
            ended_of.pop(session_id, None)
            if not ended_of:
                del self._ended_of[tenant]
        if status in _ENDED:
            self._ended[session_id] = now
            self._ended_of.setdefault(tenant, {})[session_id] = None
            if was_running:
                _count(self._running, tenant, -1)
        elif not was_running:
            _count(self._running, tenant, 1)

    def _check_quota(self, session_id: str, tenant: str | None) -> None:
        quota = self.limits.session_quota
        if tenant is not None and self._running.get(tenant, 0) >= quota:
            raise MessageError(
                ErrorCode.TOO_MANY_SESSIONS,
                f"cannot run session {session_id!r}: this token already runs {quota} sessions, "
                "its SESSION_QUOTA; end one first",
                session_id=session_id,
            )

    def _room_for(self, tenant: str | None) -> str | None:
        """The ended session to evict so that ``tenant`` may create one (see
        "Tenancy" above), or ``None``: there is no room it may take."""
        own = self._ended_of.get(tenant)
        if own:
            return next(iter(own))
        quota = self.limits.session_quota
        ended = self._ended
        found: str | None = None
        for other, ids in self._ended_of.items():
            if other is None or self._held.get(other, 0) <= quota:
                continue
            first = next(iter(ids))
            if found is None or ended[first] < ended[found]:
                found = first
        return found

    def _create(self, session_id: str, now: float, tenant: str | None = None) -> Session:
        self._check_quota(session_id, tenant)
        if len(self.sessions) >= self.limits.max_sessions:
            # Make room by evicting an ended session (``_room_for``); live
            # sessions are never evicted.
            victim = self._room_for(tenant)
            if victim is None:
                if tenant is not None:
                    # A tenant learns nothing about sessions outside its grant.
                    message = (
                        f"cannot create session {session_id!r}: the server has no room for "
                        "another session now (MAX_SESSIONS); ended sessions of this token "
                        "make room first"
                    )
                else:
                    message = (
                        f"cannot create session {session_id!r}: {len(self.sessions)} sessions "
                        f"are held and the limit is {self.limits.max_sessions}"
                    )
                raise MessageError(ErrorCode.TOO_MANY_SESSIONS, message, session_id=session_id)
            self._evict(victim)
        session = Session(session_id, self.pool, self.redactor, tenant)
        _count(self._held, tenant, 1)
        _count(self._running, tenant, 1)
        extra = self._session_secrets.get(session_id)
        if extra:
            session.use_redactor(self.redactor.with_extra(extra))
        self.sessions[session_id] = session
        waiting = self._pending.pop(session_id, None)
        if waiting:
            for client in waiting:
                # The grant may have narrowed since the subscribe.
                if client.grant is not None and client.grant.can_view(session_id):
                    client.attach(session, since=None, tail=0)
        for client in self._wildcard:
            if client.grant is not None and client.grant.can_view(session_id):
                client.attach(session, since=None, tail=0)
        return session

    def _evict(self, session_id: str) -> None:
        if self._dirty:
            self.flush_batch()
        self._ended.pop(session_id, None)
        self._orphans.pop(session_id, None)
        self._session_secrets.pop(session_id, None)
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        tenant = session.tenant
        ended_of = self._ended_of.get(tenant)
        if ended_of is not None:
            ended_of.pop(session_id, None)
            if not ended_of:
                del self._ended_of[tenant]
        _count(self._held, tenant, -1)
        if session.status == "running":
            _count(self._running, tenant, -1)
        for client in (
            *session.subscribers,
            *session.viewers_plain,
            *session.viewers_envelope,
            *session.lagging,
        ):
            if client.session_evicted(session_id):
                self.wait_for(session_id, client)
        session.subscribers.clear()
        session.viewers_plain.clear()
        session.viewers_envelope.clear()
        session.lagging.clear()
        session.release()

    def _shed(self) -> None:
        """Over ``MEMORY_BUDGET``: take the oldest entries of the largest
        histories until the pool is at 15/16 of the budget (or history has
        nothing more to give)."""
        pool = self.pool
        excess = pool.used - (pool.limit - pool.limit // 16)
        sessions = self.sessions.values()
        while excess > 0 and pool.history > 0:
            largest = max(sessions, key=_history_size)
            freed = largest.drop_oldest(max(excess, largest.history_bytes // 4))
            if not freed:
                break
            self.counters.history_shed += freed
            excess -= freed

    def _fan_out(
        self, session: Session, frames: list[bytes], first: int, *, droppable: bool
    ) -> None:
        """Queue ``frames`` (entries ``first``… of ``session``) for every
        subscriber: joined once into one buffer, one append per viewer
        (``_outbox.fan_out``); the rare viewers over budget or with a gap to
        announce take the slow path below."""
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        last = first + len(frames) - 1
        limit = self.limits.connection_buffer if droppable else _NO_LIMIT
        count = len(frames)
        delivered = 0
        subscribers = session.subscribers
        if subscribers:
            overflowed: list[Delivery] = []
            taken = fan_out(subscribers, data, limit, self._ready, overflowed, self.pool)
            delivered = taken * count
            for client in overflowed:
                delivered += client.offer(session.id, data, first, last, limit)
        if session.viewers_plain or session.viewers_envelope:
            payloads = [f[frame_header_length(f) :] for f in frames]
            for client in session.viewers_plain:
                delivered += client.offer_each(session.id, payloads, first, last, limit)
            if session.viewers_envelope:
                # Translated once per fan-out, for every original-style viewer.
                envelopes = [text_frame(to_envelope(p)) for p in payloads]
                for client in session.viewers_envelope:
                    delivered += client.offer_each(session.id, envelopes, first, last, limit)
        self.counters.deliveries += delivered
        if self._doomed:
            doomed = self._doomed
            self._doomed = []
            for client in doomed:
                client.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: outbound buffer full")


def _count(counts: dict[str | None, int], tenant: str | None, step: int) -> None:
    value = counts.get(tenant, 0) + step
    if value > 0:
        counts[tenant] = value
    else:
        counts.pop(tenant, None)


def _history_size(session: Session) -> int:
    return session.history_bytes

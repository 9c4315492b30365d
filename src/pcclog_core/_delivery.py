"""What one client is sent: its subscriptions' entries, paged replays, gaps
and replies, all through its ``Outbox``.

``Delivery`` is the half of a ``Client`` the hub talks to (``attach``,
``offer``/``offer_plain``, ``session_evicted``); the other half
(``_client``) handles what the peer says. Subscribing queues a status
snapshot, then the replay, then live entries, with no duplicate and no hole.
The replay is paged: the client keeps a cursor (``_replays``) into the
session's history and copies frames in only while its outbox has room, more
each time the runtime confirms a write; a session being replayed lists the
client in ``lagging``, and once the cursor reaches the session's last
``seq`` the client joins its live subscribers. Entries published meanwhile
are in history, so the cursor reads them too; if history sheds entries the
cursor has not reached, it sends an ``evicted`` gap for them.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

from ._auth import Grant, Role
from ._errors import CloseCode
from ._frames import frame_header_length, text_frame
from ._messages import Gap, encode
from ._outbox import Outbox
from ._session import Session
from ._wrapper import to_envelope

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["Delivery"]


class _Replay:
    """A paged replay's cursor: the next seq to copy from history."""

    __slots__ = ("next", "snapshot")

    def __init__(self, next_seq: int) -> None:
        self.next = next_seq
        self.snapshot = True  # the status snapshot is still to be queued


class Delivery:
    """See the module docstring; ``Client`` builds on it."""

    __slots__ = (
        "_attached",
        "_explicit",
        "_replays",
        "close_request",
        "envelopes",
        "framed",
        "hub",
        "outbox",
        "owner",
        "wildcard",
    )

    def __init__(self, hub: Hub, *, framed: bool, envelopes: bool = False) -> None:
        self.hub = hub
        self.framed = framed
        # An original-style viewer (SPEC §3): entries as the original server
        # sent them, in the wrapper's envelopes (``_wrapper.to_envelope``).
        self.envelopes = envelopes
        # Whatever wraps this client (a ``Connection``, an embedder's socket)
        # and drains it; cleared on ``disconnect`` so no cycle outlives it.
        self.owner: object = None
        self.wildcard = False
        self.outbox = Outbox(hub.limits.connection_buffer, hub.pool)
        self._replays: dict[str, _Replay] = {}
        # dicts used as ordered sets: an empty dict is a third of an empty
        # set, and an idle connection holds two of them.
        self._explicit: dict[str, None] = {}
        self._attached: dict[str, None] = {}
        self.close_request: tuple[CloseCode, str] | None = None

    @property
    def grant(self) -> Grant | None:
        """What the client may see (``Client`` has it from its ``Access``)."""
        raise NotImplementedError

    # --- the hub's side: the whole interface the Hub uses --------------------

    def close(self, code: CloseCode, reason: str) -> None:
        """Ask the runtime to close this client (idempotent); detaches it
        from every session at once so it costs fan-out nothing more."""
        if self.close_request is None:
            self.close_request = (code, reason)
            self._detach_all()
            self._mark_ready()

    def attach(self, session: Session, *, since: int | None, tail: int | None) -> None:
        """Snapshot, replay, then live (see the module docstring)."""
        hub = self.hub
        hub.settle()
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
        # Entries of an open batch are in history but not yet fanned out:
        # fan them out first, or a cursor joining live would get them twice.
        hub.settle()
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
                if self.envelopes:
                    page = [text_frame(to_envelope(f[frame_header_length(f) :])) for f in page]
                    size = sum(map(len, page))
                elif not framed:
                    page = [f[frame_header_length(f) :] for f in page]
                    size = sum(map(len, page))
                box.put_many(page, size)
            replay.next = start
            queued = True
            if start > last:
                del replays[session_id]
                del session.lagging[self]
                self._live_in(session)[self] = box
        if queued:
            self._mark_ready()

    def _live_in(self, session: Session) -> dict[Delivery, Outbox]:
        """The subscribers of ``session`` this client joins once live."""
        if self.envelopes:
            return session.viewers_envelope
        return session.subscribers if self.framed else session.viewers_plain

    def _detach(self, session_id: str) -> None:
        self._attached.pop(session_id, None)
        self._replays.pop(session_id, None)
        self.outbox.gaps.pop(session_id, None)
        session = self.hub.sessions.get(session_id)
        if session is not None:
            session.subscribers.pop(self, None)
            session.viewers_plain.pop(self, None)
            session.viewers_envelope.pop(self, None)
            session.lagging.pop(self, None)

    def _detach_all(self) -> None:
        hub = self.hub
        for session_id in list(self._attached):
            self._detach(session_id)
        for session_id in self._explicit:
            hub.stop_waiting(session_id, self)
        self._explicit.clear()
        hub.follow_all(self, False)
        self.wildcard = False

    def regrant(self) -> None:
        """The grant changed (re-auth): every subscription it no longer
        covers goes at once, attached, replaying or pending; a grant that
        may view nothing stops following ``*``. What the grant may see is
        ``Grant.can_view``, the one decision the hub uses too."""
        grant = self.grant
        hub = self.hub
        for session_id in list(self._explicit):
            if grant is None or not grant.can_view(session_id):
                del self._explicit[session_id]
                hub.stop_waiting(session_id, self)
        for session_id in list(self._attached):
            if grant is None or not grant.can_view(session_id):
                self._detach(session_id)
        if self.wildcard and (grant is None or Role.VIEW not in grant.roles):
            self.wildcard = False
            hub.follow_all(self, False)

    def session_evicted(self, session_id: str) -> bool:
        """The hub dropped ``session_id``; True if this client subscribed to
        it by name and its grant still covers it (it then waits for the
        session to come back)."""
        self._attached.pop(session_id, None)
        self._replays.pop(session_id, None)
        if session_id not in self._explicit:
            return False
        grant = self.grant
        if grant is None or not grant.can_view(session_id):
            del self._explicit[session_id]
            return False
        return True

    def offer(self, session_id: str, data: bytes, first: int, last: int, limit: float) -> int:
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

    def offer_each(
        self, session_id: str, payloads: list[bytes], first: int, last: int, limit: float
    ) -> int:
        """``offer`` with one chunk per entry: a ``framed=False`` viewer's
        payloads, or an original-style viewer's envelope frames."""
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
            if self.close_request is None:
                hub.doom(self)
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
        if self.envelopes:
            frame = text_frame(to_envelope(frame[frame_header_length(frame) :]))
        self.outbox.put(frame if self.framed else frame[frame_header_length(frame) :])
        self._mark_ready()

    def _mark_ready(self) -> None:
        box = self.outbox
        if not box.ready:
            box.ready = True
            self.hub.mark_ready(self)

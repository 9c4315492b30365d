"""A viewer's position in every session it follows, kept across reconnects.

Theory of operation
-------------------

``Resume`` is the sans-IO half of a viewer (``pcclog_server.client.
Subscription`` is the other): the runtime opens connections, feeds every
message the server sends to ``receive_text``, sends what ``data_to_send``
returns and hands the user what ``next_event`` returns. Time never enters:
the reconnection schedule is the ``Backoff`` in ``backoff``, the pace of
control messages the ``RateBucket`` in ``bucket``; the runtime sleeps.

Guarantee: every ``log`` and ``status`` entry of a session is handed out
**at most once and in ``seq`` order**, and **none is skipped without a
``gap``** (the server's own, handed out unchanged), across any number of
reconnects to the same server process; after a server restart the new
server's sessions are followed from their ``seq`` 1. Per session the core
keeps the highest ``seq`` handed out (``last_seq``) and that entry (the
*tip*).

* **Resume** (SPEC §3 ``since``). After a reconnect each known session is
  resubscribed with ``since`` one below its position, so the server first
  repeats the tip: if it comes back identical the session is the same and
  the replay continues it; if it differs (or the session's ``lastSeq`` is
  now lower) the server forgot the session (restart, eviction of an ended
  session) and a new one took its id, which is then replayed from ``seq`` 1.
* **Epoch** (SPEC §3 ``list``). A server that names each incarnation of a
  session's history (``epoch`` in its ``sessions`` list and in the status
  snapshot) answers the same question without the tip: a known epoch that
  changed means "replay from 1", an unchanged one means "continue". The
  one place that reads it is ``_incarnation``; a server without epochs
  leaves the tip check in charge.
* **Wildcard** (``"*"``, or any glob: SPEC §3). On a reconnect the core
  subscribes the pattern with tail 0 (sessions born later are followed from
  their first entry) and asks for
  the session list: only sessions whose ``lastSeq`` moved past the core's
  position are resumed (an explicit subscribe at once undone by an
  unsubscribe: the wildcard keeps the session attached, so the connection
  never holds more than two subscriptions); sessions never seen (born while
  away) are replayed from ``seq`` 1. A reconnect costs a few messages per
  session that changed, none for the others.
* **Fences.** A ``list`` request after each round of (re)subscribes is a
  fence: the server handles one connection's messages in order, so its
  ``sessions`` answer comes after every replayed entry. While a session's
  window is open (its resubscribe sent, its fence not answered), entries
  that do not continue its sequence are dropped, because the replay is
  certain to bring them again in order; duplicates are dropped always.
  Status snapshots of known sessions are not handed out on a reconnect:
  the replay carries every status change.
* **Dedupe** is by position alone: an entry whose ``seq`` is not one past
  the session's position is a duplicate or ahead of its replay, never new.

What it cannot promise: entries that left the server's history while the
viewer was away (announced by a ``gap``); entries a server had not sent yet
when it died; and, after a restart of a server without epochs, the
recognition of a new session whose entry at the old position already left
the new server's history (nothing to compare with: it is resumed from the
old position, after the ``evicted`` gap), or, under ``*``, of one whose new
numbering stands exactly where the old one stopped (it looks unchanged, so
it is not resumed and not checked).
"""

from __future__ import annotations

import collections
import fnmatch
from collections.abc import Iterable
from typing import Any

import msgspec

from ._errors import ErrorCode, PcclogError
from ._messages import Auth, Gap, List, SessionInfo, Subscribe, Unsubscribe, encode
from ._notice import Notice
from ._pacing import Backoff, RateBucket

__all__ = ["Resume", "ResumeRefused", "ResyncInterrupted"]

_Message = dict[str, Any]


class ResumeRefused(PcclogError):
    """The server refused the token (``UNAUTHORIZED``). The same token would
    be refused again, so the viewer stops; ``session_id`` names the session
    when the refusal was about one."""

    def __init__(self, message: str, session_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.session_id = session_id


class ResyncInterrupted(PcclogError):
    """The server dropped a message of a resync (``RATE_LIMITED``): what was
    replayed can no longer be told apart from what was not. The runtime
    closes this connection and reconnects; the next one resumes."""


class _Fence:
    __slots__ = ("kind", "number", "sessions")

    def __init__(self, number: int, kind: str, sessions: Iterable[str]) -> None:
        self.number = number
        self.kind = kind  # "initial", "reconnect" or "resync"
        self.sessions = frozenset(sessions)


def _text(message: msgspec.Struct) -> str:
    return encode(message).decode()


_LIST = _text(List())


def _incarnation(info: _Message) -> object | None:
    """The ``epoch`` a session snapshot or ``sessions`` entry names, or None
    when the server does not number incarnations (SPEC §3). The seam for the
    store's epochs: every decision about them goes through ``Resume._same``."""
    return info.get("epoch")


class Resume:
    """One viewer's subscription to ``target`` (a session id, ``"*"`` or a
    glob), its position in every session, and what to send to get back
    there. See the module docstring.

    ``since``/``tail`` shape the first subscribe only. With
    ``sync_markers`` the core also hands out ``{"type": "synced",
    "sessionId": target, "reconnected": bool}`` once everything a
    (re)subscribe replayed has been handed out (a client-side marker, never
    sent by the server).
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        since: int | None = None,
        tail: int | None = None,
        sync_markers: bool = False,
        backoff: Backoff | None = None,
        bucket: RateBucket | None = None,
    ) -> None:
        if not target:
            raise ValueError("session_id must not be empty")
        if (since is not None and since < 0) or (tail is not None and tail < 0):
            raise ValueError("since and tail must not be negative")
        self.target = target
        # "*" and globs follow many sessions (SPEC §3): resumed one by one.
        self.wildcard = any(char in target for char in "*?[")
        self.token = token
        self.since = since
        self.tail = tail
        self.sync_markers = sync_markers
        self.backoff = backoff or Backoff()
        self.bucket = bucket or RateBucket()
        # Connections the server answered on (the first counts once a
        # message arrives: until then nothing was handed out from it).
        self.connections = 0
        self._counted = True
        self._events: collections.deque[_Message] = collections.deque()
        self._notices: list[Notice] = []
        self._outgoing: list[str] = []
        self._last: dict[str, int] = {}
        self._tip: dict[str, _Message] = {}  # the entry at _last, as handed out
        self._epoch: dict[str, object] = {}  # last epoch seen per session
        self._verify: dict[str, int] = {}  # resumed sessions whose tip must come back first
        # Known sessions whose position is not (the connection broke before
        # it was): their entries wait for the replay of a fresh subscribe,
        # which begins with its snapshot. False: that subscribe is not sent
        # yet; True: sent, its snapshot is next.
        self._awaiting: dict[str, bool] = {}
        self._known: set[str] = set()
        self._windows: dict[str, int] = {}  # session -> number of the fence closing it
        self._fences: collections.deque[_Fence] = collections.deque()
        self._fence_no = 0
        self._reconnect_phase = False
        self._sync_pending = False

    # --- what the runtime asks ------------------------------------------------

    @property
    def last_seq(self) -> dict[str, int]:
        """Highest ``seq`` handed out (or known to be current) per session."""
        return dict(self._last)

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    def data_to_send(self) -> list[str]:
        """The JSON texts to send, in order (each one paced by ``bucket``)."""
        out, self._outgoing = self._outgoing, []
        return out

    def next_event(self) -> _Message | None:
        """The next message for the user, or None."""
        return self._events.popleft() if self._events else None

    def notices(self) -> list[Notice]:
        """What the core decided since the last call, for a log."""
        out, self._notices = self._notices, []
        return out

    # --- what the runtime tells -------------------------------------------------

    def connection_made(self) -> None:
        """A connection is open: authenticate and (re)subscribe on it."""
        self._counted = False
        self._sync_pending = True
        if self.token is not None:
            self._send(Auth(token=self.token))
        target = self.target
        if self.connections == 0:
            self._send(Subscribe(sessionId=target, since=self.since, tail=self.tail))
            self._fence("initial", ())
            return
        self._reconnect_phase = True
        if self.wildcard:
            # Follow everything from now on, then ask where each session
            # stands: only those that moved while away are resumed (in
            # ``_on_sessions``).
            for session_id in self._known.difference(self._last):
                self._awaiting[session_id] = False
            self._send(Subscribe(sessionId=target, tail=0))
            self._fence("reconnect", self._known | set(self._last))
        else:
            self._windows[target] = self._fence_no + 1
            self._send(self._resume_message(target))
            self._fence("reconnect", (target,))

    def connection_failed(self, now: float) -> float:
        """A connection could not be opened; returns the wait before the next."""
        return self.backoff.failed(now)

    def connection_lost(self, now: float) -> float:
        """The connection broke (or was closed); returns the wait before the
        next attempt. Nothing queued for the dead connection is sent."""
        self._outgoing.clear()
        self._windows.clear()
        self._verify.clear()
        self._awaiting.clear()
        self._fences.clear()
        self._reconnect_phase = False
        return self.backoff.failed(now)

    def receive_text(self, text: str | bytes) -> None:
        """One message from the server. Raises ``ResumeRefused`` for a
        refused token and ``ResyncInterrupted`` when the runtime must
        reconnect; anything unparsable is ignored."""
        try:
            message = msgspec.json.decode(text)
        except (msgspec.DecodeError, UnicodeError, RecursionError):
            return
        if isinstance(message, dict):
            self.receive(message)

    def receive(self, message: _Message) -> None:
        """One decoded message from the server (see ``receive_text``)."""
        if not self._counted:
            self._counted = True
            self.connections += 1
        kind = message.get("type")
        session_id = message.get("sessionId")
        if kind in ("log", "status") and isinstance(session_id, str):
            seq = message.get("seq")
            if isinstance(seq, int):
                self._on_entry(message, session_id, seq)
            elif kind == "status":
                self._on_snapshot(message, session_id)
            else:
                self._events.append(message)
        elif kind == "gap" and isinstance(session_id, str):
            self._on_gap(message, session_id)
        elif kind == "sessions":
            self._on_sessions(message)
        elif kind == "error":
            self._on_error(message)
        elif kind != "pong":
            self._events.append(message)

    # --- sending --------------------------------------------------------------

    def _send(self, message: msgspec.Struct) -> None:
        self._outgoing.append(_text(message))

    def _note(self, level: str, text: str) -> None:
        self._notices.append(Notice(level=level, text=text))

    def _fence(self, kind: str, sessions: Iterable[str]) -> None:
        self._fence_no += 1
        fence = _Fence(self._fence_no, kind, sessions)
        for session_id in fence.sessions:
            self._windows[session_id] = fence.number
        self._fences.append(fence)
        self._outgoing.append(_LIST)

    def _original(self, session_id: str) -> Subscribe:
        return Subscribe(sessionId=session_id, since=self.since, tail=self.tail)

    def _resume_message(self, session_id: str) -> Subscribe:
        last = self._last.get(session_id)
        tip = self._tip.get(session_id)
        if last is not None and last >= 1 and tip is not None and tip.get("seq") == last:
            # Ask for the last entry we have too: if it comes back unchanged
            # this is the same session; if not, the server forgot it and a
            # new one reuses the id (its numbering restarted).
            self._verify[session_id] = last
            return Subscribe(sessionId=session_id, since=last - 1)
        if last is not None:
            return Subscribe(sessionId=session_id, since=last)
        if session_id in self._known:
            # Seen, but the connection broke before its position was known:
            # ask again as the first time, and take its replay from the start.
            self._awaiting[session_id] = True
            return self._original(session_id)
        # Never seen: it did not exist yet, so all of it is new.
        self._last[session_id] = 0
        return Subscribe(sessionId=session_id, since=0)

    def _resync(self, session_id: str) -> None:
        """Replay ``session_id`` from seq 1 (a session new to us, or a new
        incarnation of a known one)."""
        self._resume((), (session_id,))

    def _resume(self, resumed: Iterable[str], restarted: Iterable[str]) -> None:
        """Resubscribe ``resumed`` sessions from where we are and replay
        ``restarted`` ones from seq 1, then fence. Under ``*`` each explicit
        subscribe is undone at once (the wildcard keeps the session
        attached), so the connection never holds more than two."""
        self._fence_no += 1
        number = self._fence_no
        messages: list[tuple[str, Subscribe]] = []
        for session_id in restarted:
            self._last[session_id] = 0
            self._tip.pop(session_id, None)
            self._verify.pop(session_id, None)
            self._awaiting.pop(session_id, None)
            self._windows[session_id] = number
            messages.append((session_id, Subscribe(sessionId=session_id, since=0)))
        for session_id in resumed:
            self._windows[session_id] = number
            messages.append((session_id, self._resume_message(session_id)))
        for session_id, message in messages:
            self._send(message)
            if self.wildcard:
                self._send(Unsubscribe(sessionId=session_id))
        self._fences.append(_Fence(number, "resync", [s for s, _ in messages]))
        self._outgoing.append(_LIST)

    # --- receiving ------------------------------------------------------------

    def _follows(self, session_id: str) -> bool:
        if self.wildcard:
            return fnmatch.fnmatchcase(session_id, self.target)
        return session_id == self.target

    def _same(self, session_id: str, epoch: object | None) -> bool | None:
        """Is ``epoch`` the incarnation of ``session_id`` we follow? None
        when either side has no epoch: the tip check decides then."""
        if epoch is None:
            return None
        known = self._epoch.get(session_id)
        self._epoch[session_id] = epoch
        if known is None:
            return None
        return known == epoch

    def _on_entry(self, message: _Message, session_id: str, seq: int) -> None:
        if session_id in self._awaiting:
            return  # the replay of its fresh subscribe brings it, in order
        verify = self._verify.get(session_id)
        if verify is not None:
            # Until our last entry comes back, nothing of this session is
            # certain; the replay behind it repeats whatever is dropped here.
            if seq == verify:
                del self._verify[session_id]
                if message != self._tip.get(session_id):
                    self._note(
                        "info", f"session {session_id} was replaced by a new one; replaying it"
                    )
                    self._resync(session_id)
            return
        last = self._last.get(session_id)
        if last is not None and seq != last + 1:
            if session_id in self._windows:
                return  # a duplicate, or ahead of the replay that will bring it
            if seq > last:
                self._note("debug", f"session {session_id} jumped from seq {last} to {seq}")
            else:
                self._note("info", f"session {session_id} restarted its numbering (seq {seq})")
        self._last[session_id] = seq
        self._tip[session_id] = message
        self._known.add(session_id)
        self._events.append(message)

    def _on_snapshot(self, message: _Message, session_id: str) -> None:
        if self._awaiting.get(session_id):
            del self._awaiting[session_id]  # its replay follows
        known = session_id in self._known
        same = self._same(session_id, _incarnation(message))
        if session_id in self._windows and known:
            if same is True:
                self._verify.pop(session_id, None)  # same history: no tip to check
            elif same is False:
                self._note("info", f"session {session_id} has a new epoch; replaying it")
                self._resync(session_id)
            return  # the replay carries every change since we last saw it
        self._tip.pop(session_id, None)
        if self.connections <= 1 and self._sync_pending:
            # The answer to the first subscribe: the position of what
            # follows is the replay's, or the fence's ``lastSeq``.
            self._last.pop(session_id, None)
        else:
            # Past the first subscribe, a snapshot outside a resync comes
            # only from a session being (re)created, before its first
            # entry: everything of it is new, from seq 1.
            self._last[session_id] = 0
        self._known.add(session_id)
        self._events.append(message)
        if self._reconnect_phase and self.wildcard and not known:
            self._resync(session_id)

    def _on_gap(self, message: _Message, session_id: str) -> None:
        try:
            gap = msgspec.convert(message, Gap)
        except msgspec.ValidationError:
            self._events.append(message)
            return
        if session_id in self._awaiting:
            return  # the replay of its fresh subscribe tells
        last = self._last.get(session_id)
        verify = self._verify.get(session_id)
        if verify is not None:
            if not gap.fromSeq <= verify <= gap.toSeq:
                return  # not the answer to our resume: the replay will tell
            del self._verify[session_id]  # our last entry is gone: cannot check
        if (
            session_id in self._windows
            and last is not None
            and not (gap.fromSeq <= last + 1 <= gap.toSeq)
        ):
            return  # stale, or ahead of the replay
        self._last[session_id] = gap.toSeq if last is None else max(last, gap.toSeq)
        self._events.append(message)

    def _on_sessions(self, message: _Message) -> None:
        if not self._fences:
            self._events.append(message)
            return
        fence = self._fences.popleft()
        current = _listing(message)
        # Sessions whose resync this fence ends (a later resync of the same
        # session has its own fence).
        closed = [s for s in fence.sessions if self._windows.get(s) == fence.number]
        for session_id in closed:
            del self._windows[session_id]
            self._verify.pop(session_id, None)
            self._awaiting.pop(session_id, None)
        if fence.kind == "initial":
            for session_id, (last_seq, epoch) in current.items():
                if self._follows(session_id):
                    self._known.add(session_id)
                    self._last.setdefault(session_id, last_seq)
                    if epoch is not None:
                        self._epoch.setdefault(session_id, epoch)
        wildcard_reconnect = fence.kind == "reconnect" and self.wildcard
        resumed: list[str] = []
        restarted: list[str] = []
        for session_id in sorted(closed):
            if session_id not in current:
                # Gone from the server: forget it. If the id comes back it
                # is a new session, followed from its first entry.
                self._known.discard(session_id)
                self._last.pop(session_id, None)
                self._tip.pop(session_id, None)
                self._epoch.pop(session_id, None)
                continue
            last_seq, epoch = current[session_id]
            mine = self._last.get(session_id)
            same = self._same(session_id, epoch)
            if same is False and mine is not None:
                self._note("info", f"session {session_id} has a new epoch; replaying it")
                restarted.append(session_id)
            elif wildcard_reconnect and (mine is None or last_seq > mine):
                resumed.append(session_id)  # it moved while we were away
            elif mine is None:
                self._last[session_id] = last_seq
            elif last_seq < mine:
                # The server forgot the session (restart, eviction) and a
                # new one took its id: follow it from seq 1.
                self._note("info", f"session {session_id} restarted its numbering; replaying it")
                restarted.append(session_id)
        if resumed or restarted:
            self._resume(resumed, restarted)
        if fence.kind in ("initial", "reconnect"):
            self.backoff.succeeded()
            self._reconnect_phase = False
        if self._sync_pending and not self._fences:
            self._sync_pending = False
            if self.sync_markers:
                self._events.append(
                    {"type": "synced", "sessionId": self.target, "reconnected": self.reconnects > 0}
                )

    def _on_error(self, message: _Message) -> None:
        code = message.get("code")
        text = str(message.get("message") or code)
        if code == ErrorCode.UNAUTHORIZED:
            session_id = message.get("sessionId")
            raise ResumeRefused(text, session_id if isinstance(session_id, str) else None)
        if code == ErrorCode.RATE_LIMITED and (self._fences or self._windows):
            raise ResyncInterrupted("a resync message was rate limited")
        if code == ErrorCode.SESSION_NOT_FOUND and self.connections > 1:
            return  # a resubscribe after a reconnect; told once already
        self._events.append(message)


def _listing(message: _Message) -> dict[str, tuple[int, object | None]]:
    """``sessions`` → ``{sessionId: (lastSeq, epoch)}``; entries that are not
    a valid ``SessionInfo`` are skipped."""
    current: dict[str, tuple[int, object | None]] = {}
    infos = message.get("sessions")
    if not isinstance(infos, list):
        return current
    for raw in infos:
        if not isinstance(raw, dict):
            continue
        try:
            info = msgspec.convert(raw, SessionInfo)
        except msgspec.ValidationError:
            continue
        current[info.sessionId] = (info.lastSeq, _incarnation(raw))
    return current

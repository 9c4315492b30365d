"""One client's access: its grant's lifecycle, and its rate and abuse limits.

Theory of operation
-------------------

A client is ``OPEN`` (auth disabled: every role, every session), or starts
``AWAITING`` a token: it has ``auth_timeout`` to present one (a message, or
the handshake's header or URL). An accepted token makes it ``GRANTED``, with
the grant's expiry as a deadline (JWT ``exp``, turned into monotonic time
with the ``wall`` clock the runtime passes in); presenting another token
replaces the grant (the client then re-checks its subscriptions). The
deadline or the expiry passing makes it ``CLOSED``, with the close the
table names. The lifecycle is the table ``_TRANSITIONS``; a pair that is not
in it changes nothing (a deadline after the client was granted, say).

Policy: messages are limited to ``rate_limit`` per second (a token bucket
of ``rate_burst``), and more than ``abuse_limit`` refused messages within
``abuse_window`` seconds close the connection with 1008 — "the connection
stays open unless the abuse repeats" (SPEC §3).
"""

from __future__ import annotations

import enum

from ._auth import Authenticator, AuthError, Grant, Role
from ._errors import ErrorCode, MessageError
from ._limits import Limits

__all__ = ["Access", "AccessState"]


class AccessState(enum.Enum):
    OPEN = "open"
    AWAITING = "awaiting"
    GRANTED = "granted"
    CLOSED = "closed"


class _Input(enum.Enum):
    TOKEN = "token"  # a token was accepted
    DEADLINE = "deadline"  # the auth deadline passed
    EXPIRY = "expiry"  # the grant expired


_S = AccessState
# (state, input) -> (next state, the close it asks for, if any)
_TRANSITIONS: dict[tuple[AccessState, _Input], tuple[AccessState, str | None]] = {
    (_S.OPEN, _Input.TOKEN): (_S.OPEN, None),
    (_S.AWAITING, _Input.TOKEN): (_S.GRANTED, None),
    (_S.AWAITING, _Input.DEADLINE): (_S.CLOSED, "authentication deadline passed"),
    (_S.GRANTED, _Input.TOKEN): (_S.GRANTED, None),
    (_S.GRANTED, _Input.EXPIRY): (_S.CLOSED, "token expired"),
}


class Access:
    """See the module docstring."""

    __slots__ = (
        "_abuse_since",
        "_abuse_strikes",
        "_authenticator",
        "_limits",
        "_rate_stamp",
        "_rate_tokens",
        "deadline",
        "grant",
        "state",
    )

    def __init__(self, authenticator: Authenticator, limits: Limits, *, now: float) -> None:
        self._authenticator = authenticator
        self._limits = limits
        self.grant: Grant | None = None
        # The auth deadline while AWAITING, the grant's expiry once GRANTED.
        self.deadline: float | None = None
        if authenticator.required:
            self.state = AccessState.AWAITING
            self.deadline = now + limits.auth_timeout
        else:
            self.state = AccessState.OPEN
            self.grant = authenticator.authenticate("", wall=0.0)
        self._rate_tokens = float(limits.rate_burst)
        self._rate_stamp = now
        self._abuse_strikes = 0
        self._abuse_since = now

    # --- the lifecycle ----------------------------------------------------------

    def authenticate(self, token: str, *, now: float, wall: float) -> Grant:
        """Resolve ``token`` and make it the grant, or raise
        ``MessageError(UNAUTHORIZED)``."""
        try:
            grant = self._authenticator.authenticate(token, wall=wall)
        except AuthError as exc:
            raise MessageError(ErrorCode.UNAUTHORIZED, f"authentication failed: {exc}") from None
        self.accept(grant, now=now, wall=wall)
        return grant

    def accept(self, grant: Grant, *, now: float, wall: float) -> None:
        """Make ``grant`` (already resolved: the handshake's) the grant."""
        self._step(_Input.TOKEN)
        if self.state is AccessState.OPEN:
            return
        self.grant = grant
        self.deadline = None if grant.expires is None else now + (grant.expires - wall)

    def timeout(self, now: float) -> str | None:
        """The close reason if a deadline passed (the client is then
        ``CLOSED`` and must be closed with 1008), else ``None``."""
        if self.deadline is None or now < self.deadline:
            return None
        awaiting = self.state is AccessState.AWAITING
        reason = self._step(_Input.DEADLINE if awaiting else _Input.EXPIRY)
        if reason is not None:
            self.deadline = None
        return reason

    def _step(self, event: _Input) -> str | None:
        found = _TRANSITIONS.get((self.state, event))
        if found is None:
            return None
        self.state, reason = found
        return reason

    # --- decisions --------------------------------------------------------------

    def require(self, role: Role, session_id: str | None) -> Grant:
        """The grant, if it has ``role`` (and covers ``session_id``), or
        ``MessageError(UNAUTHORIZED)`` saying what is missing."""
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

    def take_rate_token(self, now: float) -> None:
        """One message's worth of the bucket, or ``MessageError(RATE_LIMITED)``."""
        limits = self._limits
        tokens = min(
            float(limits.rate_burst),
            self._rate_tokens + (now - self._rate_stamp) * limits.rate_limit,
        )
        self._rate_stamp = now
        if tokens < 1.0:
            self._rate_tokens = tokens
            raise MessageError(
                ErrorCode.RATE_LIMITED,
                f"more than {limits.rate_limit:g} messages per second; message dropped",
            )
        self._rate_tokens = tokens - 1.0

    def strike(self, now: float) -> str | None:
        """A message was refused: the close reason once the abuse repeats."""
        limits = self._limits
        if now - self._abuse_since > limits.abuse_window:
            self._abuse_strikes = 0
            self._abuse_since = now
        self._abuse_strikes += 1
        if self._abuse_strikes > limits.abuse_limit:
            return f"more than {limits.abuse_limit} rejected messages in {limits.abuse_window:g}s"
        return None

"""Typed errors, error codes and close codes.

Everything a remote peer can cause surfaces as an answer, never as a crash:
an ``ErrorCode`` in an ``error`` reply (``MessageError``; the connection
stays open), a ``CloseCode`` on a WebSocket close, or an HTTP status before
the upgrade (``AuthError.status``, in ``_auth``). Every error the core raises
derives from ``PcclogError``; ``LocalProtocolError`` means the runtime used
the core wrongly (a bug, not input).
"""

from __future__ import annotations

import enum

__all__ = [
    "CloseCode",
    "ConfigurationError",
    "ErrorCode",
    "LocalProtocolError",
    "MessageError",
    "PcclogError",
]


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` message (seed codes first)."""

    UNAUTHORIZED = "UNAUTHORIZED"
    SESSION_NOT_FOUND = "SESSION_NOT_FOUND"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    TOO_MANY_SUBSCRIPTIONS = "TOO_MANY_SUBSCRIPTIONS"
    TOO_MANY_SESSIONS = "TOO_MANY_SESSIONS"
    RATE_LIMITED = "RATE_LIMITED"


class CloseCode(enum.IntEnum):
    """WebSocket close codes pcclog sends (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003  # binary frame
    INVALID_DATA = 1007  # invalid UTF-8
    POLICY_VIOLATION = 1008  # auth deadline, token expired, repeated abuse
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011  # keepalive timeout (as the seed's `ws` server does)
    TRY_AGAIN_LATER = 1013  # slow consumer under the `disconnect` policy


class PcclogError(Exception):
    """Base class of every error pcclog_core raises."""


class MessageError(PcclogError):
    """A client message was rejected; answer with an ``error`` and go on.

    ``message`` is the exact text sent to the client: it says what was wrong
    (the JSON path and the expected type for a schema error).
    """

    def __init__(self, code: ErrorCode, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.session_id = session_id


class ConfigurationError(PcclogError, ValueError):
    """A limit or setting handed to the core is invalid (a ``ValueError``
    too, for callers that validate input generically); the text names it."""


class LocalProtocolError(PcclogError):
    """The caller (the runtime) used the core wrongly: a bug, not input."""

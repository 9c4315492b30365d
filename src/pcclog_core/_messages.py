"""Every message of the wire protocol, one definition each (SPEC §3).

Each message is a ``msgspec.Struct`` tagged by its ``type`` field; the same
definition decodes, validates and encodes it. Decoding never raises anything
but ``MessageError`` (code ``INVALID_MESSAGE``) whose text says what was
wrong: malformed JSON, not an object, unknown ``type``, missing field, wrong
type, each with its JSON path (``$.sessionId``) as msgspec reports it.

Shapes marked *seed* are the original server's and must not change.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ._errors import ErrorCode, MessageError

__all__ = [
    "Auth",
    "AuthField",
    "ClientMessage",
    "ErrorMessage",
    "Gap",
    "List",
    "Log",
    "Ping",
    "Pong",
    "SessionInfo",
    "Sessions",
    "Status",
    "Subscribe",
    "Unsubscribe",
    "WrapperComplete",
    "WrapperError",
    "WrapperHeartbeat",
    "WrapperLog",
    "WrapperStatus",
    "decode_client_message",
    "encode",
]

SessionId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
SeqNumber = Annotated[int, msgspec.Meta(ge=0)]
StatusValue = Literal["running", "stopped", "error"]
Level = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
Token = Annotated[str, msgspec.Meta(max_length=8192)]
# Producers may number their entries so that a resend after a broken
# connection is applied once: ``producer`` names the sender (a random id per
# producer process), ``pseq`` grows by one or more per entry it sends.
ProducerId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
ProducerSeq = Annotated[int, msgspec.Meta(ge=1)]


class _Message(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, omit_defaults=True):
    """Base of every message: tagged by ``type``; unknown fields are ignored
    so newer clients keep working against this server."""


# --- client -> server -------------------------------------------------------


class AuthField(msgspec.Struct, frozen=True, kw_only=True):
    token: Token


class Subscribe(_Message, tag="subscribe", frozen=True, kw_only=True):
    """*seed*, plus ``since``, ``tail`` and ``sessionId: "*"``."""

    sessionId: SessionId
    auth: AuthField | None = None
    since: SeqNumber | None = None
    tail: SeqNumber | None = None


class Unsubscribe(_Message, tag="unsubscribe", frozen=True, kw_only=True):
    """*seed*."""

    sessionId: SessionId


class Ping(_Message, tag="ping", frozen=True, kw_only=True):
    """*seed*: answered with ``Pong``."""


class Auth(_Message, tag="auth", frozen=True, kw_only=True):
    token: Token


class List(_Message, tag="list", frozen=True, kw_only=True):
    """Answered with ``Sessions``."""


# --- both directions: producers send these, viewers receive them ----------


class Log(_Message, tag="log", frozen=True, kw_only=True):
    """*seed* ``log``. From a producer ``timestamp`` is optional (the server
    stamps it) and ``seq`` is ignored; to a viewer both are set."""

    sessionId: SessionId
    timestamp: str | None = None
    level: Level | None = None
    # UNSET, not "": ``omit_defaults`` would drop an empty message from the
    # entry viewers receive, and the seed's ``log`` always carries one.
    message: str | msgspec.UnsetType = msgspec.UNSET
    data: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    seq: int | None = None
    producer: ProducerId | None = None
    pseq: ProducerSeq | None = None


class Status(_Message, tag="status", frozen=True, kw_only=True):
    """*seed* ``status``. A snapshot sent on subscribe carries no ``seq``."""

    sessionId: SessionId
    status: StatusValue
    metadata: dict[str, Any] | None = None
    seq: int | None = None
    producer: ProducerId | None = None
    pseq: ProducerSeq | None = None


# --- server -> client --------------------------------------------------------


class ErrorMessage(_Message, tag="error", frozen=True, kw_only=True):
    """*seed* ``error``."""

    code: ErrorCode
    message: str
    sessionId: str | None = None


class Pong(_Message, tag="pong", frozen=True, kw_only=True):
    """*seed*."""


class Gap(_Message, tag="gap", frozen=True, kw_only=True):
    """Entries ``fromSeq..toSeq`` (inclusive) this viewer will not receive."""

    sessionId: str
    fromSeq: int
    toSeq: int
    reason: Literal["evicted", "slow_consumer"]


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    sessionId: str
    status: StatusValue
    metadata: dict[str, Any]
    lastSeq: int


class Sessions(_Message, tag="sessions", frozen=True, kw_only=True):
    sessions: list[SessionInfo]


# --- the original container wrapper's dialect (producers) -----------------


class _WrapperLogData(msgspec.Struct, frozen=True, kw_only=True):
    level: Level = "info"
    message: str = ""
    metadata: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


class _WrapperStatusData(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["starting", "running", "completed", "failed", "error"]
    message: str | None = None


class _WrapperErrorData(msgspec.Struct, frozen=True, kw_only=True):
    error: str = ""
    code: str | int | None = None
    details: Any = None


class _WrapperCompleteData(msgspec.Struct, frozen=True, kw_only=True):
    exitCode: int = 0
    message: str | None = None
    duration: float | None = None


class _Envelope(_Message, frozen=True, kw_only=True):
    containerID: SessionId | None = None
    timestamp: str | None = None


class WrapperLog(_Envelope, tag="LOG", frozen=True, kw_only=True):
    data: _WrapperLogData


class WrapperStatus(_Envelope, tag="STATUS", frozen=True, kw_only=True):
    data: _WrapperStatusData


class WrapperError(_Envelope, tag="ERROR", frozen=True, kw_only=True):
    data: _WrapperErrorData


class WrapperComplete(_Envelope, tag="COMPLETE", frozen=True, kw_only=True):
    data: _WrapperCompleteData = _WrapperCompleteData()


class WrapperHeartbeat(_Envelope, tag="HEARTBEAT", frozen=True, kw_only=True):
    data: dict[str, Any] = {}


ClientMessage = (
    Subscribe
    | Unsubscribe
    | Ping
    | Auth
    | List
    | Log
    | Status
    | WrapperLog
    | WrapperStatus
    | WrapperError
    | WrapperComplete
    | WrapperHeartbeat
)

_decoder = msgspec.json.Decoder(ClientMessage)
_encoder = msgspec.json.Encoder()

encode = _encoder.encode
"""Encode any message of this module to JSON bytes."""


def decode_client_message(text: str | bytes) -> ClientMessage:
    """Parse and validate one client message.

    Raises ``MessageError(INVALID_MESSAGE)`` and nothing else.
    """
    try:
        message: ClientMessage = _decoder.decode(text)
    except msgspec.ValidationError as exc:
        raise MessageError(ErrorCode.INVALID_MESSAGE, _explain(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise MessageError(ErrorCode.INVALID_MESSAGE, f"invalid JSON: {exc}") from None
    except UnicodeError:
        # msgspec raises this for a ``str`` with a lone surrogate or bytes
        # with invalid UTF-8 inside a string (only an embedder can pass
        # either: WebSocket text is checked UTF-8 by the frame layer).
        raise MessageError(
            ErrorCode.INVALID_MESSAGE, "invalid JSON: text is not valid UTF-8"
        ) from None
    except RecursionError:
        # msgspec's nesting guard: ``[[[[...`` deeper than the interpreter's
        # recursion limit (a 64 KiB message can nest 32,768 deep).
        raise MessageError(ErrorCode.INVALID_MESSAGE, "invalid JSON: nested too deeply") from None
    if type(message) is Log and message.data is not msgspec.UNSET:
        _check_object(message.data, "$.data")
    elif type(message) is WrapperLog and message.data.metadata is not msgspec.UNSET:
        _check_object(message.data.metadata, "$.data.metadata")
    return message


def _check_object(raw: msgspec.Raw, path: str) -> None:
    """``data`` is kept as raw JSON (re-encoded verbatim, never decoded) but
    must be an object (or null, treated as absent)."""
    first = bytes(raw)[:1]
    if first != b"{" and first != b"n":
        raise MessageError(
            ErrorCode.INVALID_MESSAGE, f"Expected `object`, got another JSON value - at `{path}`"
        )


def _explain(text: str) -> str:
    """msgspec's text, with the one case it words obscurely made plain."""
    if text.startswith("Invalid value") and text.endswith("at `$.type`"):
        value = text[len("Invalid value ") : -len(" - at `$.type`")]
        return (
            f"unknown message type {value}; expected one of subscribe, unsubscribe, "
            "ping, auth, list, log, status"
        )
    return text

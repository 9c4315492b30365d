"""The original container wrapper's dialect (SPEC §3), as a pure translation.

The wrapper that shipped with the original server sends envelopes
``{"type":"LOG|STATUS|ERROR|COMPLETE|HEARTBEAT","containerID","timestamp",
"data":{...}}``. Each becomes what pcclog's own producers send, with
``containerID`` (or the one in the URL) as the session id:

========== ==========================================================
envelope   becomes
========== ==========================================================
LOG        ``log`` with ``data.level``, ``data.message``; ``metadata``
           becomes ``data``; the envelope's ``timestamp`` is kept
STATUS     ``status``: starting/running → running, completed → stopped,
           failed/error → error; ``phase`` and ``message`` in metadata
ERROR      ``log`` at level ``error``: ``error`` as the message,
           ``code`` and ``details`` in ``data``
COMPLETE   ``status`` stopped (exit 0) or error; ``exitCode``,
           ``duration``, ``message`` in metadata
HEARTBEAT  answered with a ``HEARTBEAT`` envelope carrying
           ``data.timestamp``, as the original server did
========== ==========================================================

``translate`` only says what to do; the ``Client`` does it (auth, publish).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from ._errors import ErrorCode, MessageError
from ._messages import (
    WrapperComplete,
    WrapperError,
    WrapperHeartbeat,
    WrapperLog,
    WrapperStatus,
    encode,
)
from ._session import StatusValue
from ._timefmt import format_wall, normalize_timestamp

__all__ = ["LogEntry", "Reply", "StatusEntry", "WrapperMessage", "to_envelope", "translate"]

WrapperMessage = WrapperLog | WrapperStatus | WrapperError | WrapperComplete | WrapperHeartbeat


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class LogEntry:
    level: str
    message: str
    timestamp: str
    data: msgspec.Raw | None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StatusEntry:
    status: StatusValue
    metadata: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """A JSON payload to send back to the wrapper."""

    payload: bytes


_STATUS: dict[str, StatusValue] = {
    "starting": "running",
    "running": "running",
    "completed": "stopped",
    "failed": "error",
    "error": "error",
}


def _timestamp(timestamp: str | None, wall: float) -> str:
    if timestamp is None:
        return format_wall(wall)
    try:
        return normalize_timestamp(timestamp)
    except ValueError as exc:
        raise MessageError(ErrorCode.INVALID_MESSAGE, f"{exc} - at `$.timestamp`") from None


def _raw(value: msgspec.Raw | msgspec.UnsetType) -> msgspec.Raw | None:
    return None if value is msgspec.UNSET or bytes(value) == b"null" else value


def translate(
    message: WrapperMessage, *, session_id: str, wall: float
) -> LogEntry | StatusEntry | Reply:
    """What ``message`` means in pcclog's own terms (see the table above)."""
    if isinstance(message, WrapperLog):
        return LogEntry(
            level=message.data.level,
            message=message.data.message,
            timestamp=_timestamp(message.timestamp, wall),
            data=_raw(message.data.metadata),
        )
    if isinstance(message, WrapperStatus):
        metadata: dict[str, Any] = {"phase": message.data.status}
        if message.data.message is not None:
            metadata["message"] = message.data.message
        return StatusEntry(status=_STATUS[message.data.status], metadata=metadata)
    if isinstance(message, WrapperError):
        fields = {"code": message.data.code, "details": message.data.details}
        return LogEntry(
            level="error",
            message=message.data.error,
            timestamp=_timestamp(message.timestamp, wall),
            data=msgspec.Raw(encode({k: v for k, v in fields.items() if v is not None})),
        )
    if isinstance(message, WrapperComplete):
        data = message.data
        metadata = {"exitCode": data.exitCode}
        if data.duration is not None:
            metadata["duration"] = data.duration
        if data.message is not None:
            metadata["message"] = data.message
        return StatusEntry(status="stopped" if data.exitCode == 0 else "error", metadata=metadata)
    now = format_wall(wall)
    heartbeat = WrapperHeartbeat(containerID=session_id, timestamp=now, data={"timestamp": now})
    return Reply(payload=encode(heartbeat))


# --- the other way: entries as an original-style viewer receives them --------------

_PHASE = {"running": "running", "stopped": "completed", "error": "failed"}


def to_envelope(payload: bytes) -> bytes:
    """A server message as the original server sent it to a viewer: ``log``
    becomes ``LOG`` (``data`` as ``metadata``), a ``status`` that ended with
    an ``exitCode`` becomes ``COMPLETE``, any other ``status`` (snapshots
    included) ``STATUS`` with the wrapper's phase names. Replies (``error``,
    ``pong``, ``gap``, ``sessions``) pass as they are."""
    message = msgspec.json.decode(payload)
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "log":
        data: dict[str, Any] = {"level": message.get("level"), "message": message.get("message")}
        if "data" in message:
            data["metadata"] = message["data"]
        envelope = {
            "type": "LOG",
            "containerID": message.get("sessionId"),
            "timestamp": message.get("timestamp"),
            "data": data,
        }
    elif kind == "status":
        metadata = message.get("metadata") or {}
        status = message.get("status")
        if status in ("stopped", "error") and "exitCode" in metadata:
            data = {"exitCode": metadata["exitCode"]}
            for key in ("duration", "message"):
                if key in metadata:
                    data[key] = metadata[key]
            envelope = {"type": "COMPLETE", "containerID": message.get("sessionId"), "data": data}
        else:
            data = {"status": _PHASE.get(str(status), str(status))}
            if isinstance(metadata.get("message"), str):
                data["message"] = metadata["message"]
            envelope = {"type": "STATUS", "containerID": message.get("sessionId"), "data": data}
    else:
        return payload
    return encode(envelope)

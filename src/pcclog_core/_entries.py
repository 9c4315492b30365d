"""A producer's entries as they go on the wire: checked, numbered, encoded
with the message Structs the server decodes them with (``_messages``), and
long messages split so that no frame exceeds the server's
``MAX_MESSAGE_SIZE``.

Pure functions; ``_producer`` decides when and how often they are sent.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ._messages import Log, Status, encode
from ._timefmt import format_wall

__all__ = [
    "STATUSES",
    "StatusValue",
    "check_session_id",
    "log_texts",
    "split_message",
    "status_text",
]

StatusValue = Literal["running", "stopped", "error"]
STATUSES: tuple[str, ...] = ("running", "stopped", "error")
HEADROOM = 64  # bytes kept free under max_message_size for the frame's slack


def check_session_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= 256:
        raise ValueError("session id must be 1 to 256 characters")
    if session_id == "*":
        raise ValueError("'*' is not a session id a producer can write to")
    return session_id


def log_texts(
    session_id: str,
    level: str,
    message: str,
    data: dict[str, Any] | None,
    *,
    timestamp: float,
    producer: str,
    first_pseq: int,
    max_message_size: int,
) -> list[str]:
    """One ``log`` entry, or its consecutive parts when ``message`` is too
    long for one frame (``data`` then carries ``"part": k, "parts": n``),
    numbered from ``first_pseq``. Raises ``ValueError``/``TypeError`` for
    input no server would take."""
    check_session_id(session_id)
    if not isinstance(level, str) or not 1 <= len(level) <= 16:
        raise ValueError("level must be 1 to 16 characters")
    if not isinstance(message, str):
        raise TypeError("message must be a str")
    if data is not None and not isinstance(data, dict):
        raise TypeError("data must be a dict or None")
    message = _utf8(message)
    stamp = format_wall(timestamp)
    limit = max_message_size - HEADROOM
    whole = _log(session_id, level, stamp, message, data, producer, first_pseq)
    if len(whole) <= limit:
        return [whole.decode()]
    skeleton = {**(data or {}), "part": 999_999, "parts": 999_999}
    empty = _log(session_id, level, stamp, "", skeleton, producer, first_pseq + 1_000_000)
    budget = limit - len(empty)
    if budget < 64:
        raise ValueError(f"data alone is too large for MAX_MESSAGE_SIZE ({max_message_size} bytes)")
    pieces = split_message(message, budget)
    return [
        _log(
            session_id,
            level,
            stamp,
            piece,
            {**(data or {}), "part": number, "parts": len(pieces)},
            producer,
            first_pseq + number - 1,
        ).decode()
        for number, piece in enumerate(pieces, 1)
    ]


def status_text(
    session_id: str,
    status: str,
    metadata: dict[str, Any] | None,
    *,
    producer: str,
    pseq: int,
    max_message_size: int,
) -> str:
    """One ``status`` entry; ``ValueError`` if it cannot be sent whole."""
    check_session_id(session_id)
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError("metadata must be a dict or None")
    try:
        text = encode(
            Status(
                sessionId=session_id,
                status=status,  # type: ignore[arg-type]  # checked above
                metadata=metadata or None,
                producer=producer,
                pseq=pseq,
            )
        )
    except UnicodeEncodeError:
        raise ValueError("metadata holds text that is not valid Unicode") from None
    if len(text) > max_message_size - HEADROOM:
        raise ValueError(
            f"status metadata is too large for MAX_MESSAGE_SIZE ({max_message_size} bytes)"
        )
    return text.decode()


def _log(
    session_id: str,
    level: str,
    stamp: str,
    message: str,
    data: dict[str, Any] | None,
    producer: str,
    pseq: int,
) -> bytes:
    raw: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    if data is not None:
        try:
            raw = msgspec.Raw(msgspec.json.encode(data))
        except UnicodeEncodeError:
            raise ValueError("data holds text that is not valid Unicode") from None
    return encode(
        Log(
            sessionId=session_id,
            timestamp=stamp,
            level=level,
            message=message,
            data=raw,
            producer=producer,
            pseq=pseq,
        )
    )


def _utf8(text: str) -> str:
    """``text`` as it can go on the wire: a lone surrogate (only Python code
    can make one) becomes U+FFFD instead of failing the whole connection."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def _escaped_size(char: str) -> int:
    """Bytes ``char`` takes inside a JSON string (UTF-8, as msgspec writes it)."""
    code = ord(char)
    if char == '"' or char == "\\":
        return 2
    if code < 0x20:
        return 2 if char in "\b\f\n\r\t" else 6
    if code < 0x80:
        return 1
    if code < 0x800:
        return 2
    if 0xD800 <= code <= 0xDFFF:
        return 6  # a lone surrogate, escaped
    return 3 if code < 0x10000 else 4


def split_message(message: str, budget: int) -> list[str]:
    """Split ``message`` into pieces whose JSON-escaped UTF-8 size is at most
    ``budget`` bytes each (never splitting a character)."""
    if budget < 8:
        raise ValueError("budget too small")
    if len(message) * 6 <= budget:
        return [message]
    parts: list[str] = []
    start = 0
    used = 0
    for index, char in enumerate(message):
        size = _escaped_size(char)
        if used + size > budget:
            parts.append(message[start:index])
            start = index
            used = 0
        used += size
    parts.append(message[start:])
    return parts

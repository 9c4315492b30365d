"""Limits and policies of the core, as constructor arguments with safe
defaults (SPEC §2). Durations are seconds; the runtime converts the
milliseconds of the environment variables.

The memory bound these make (SPEC §6, docs/configuration.md)::

    RSS <= base + memory_budget
           + connections x (connection_buffer + max_message_size + read_size + ~64 KiB)

``memory_budget`` covers every session's in-memory history and every
connection's queued output; ``connection_buffer`` is counted in the budget
and the last term is what a connection holds outside it (a message being
assembled, one socket read, its objects).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

import msgspec

from ._errors import ConfigurationError

__all__ = ["Limits", "cut_text"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_sessions: int = 100
    # Running sessions one tenant (a grant narrower than ``*``, ``Grant.tenant``)
    # may hold at once (``_hub``, "Tenancy").
    session_quota: int = 25
    session_timeout: float = 300.0
    # A running session whose last producer connection dropped without ending
    # it becomes ``error`` (reason "producer lost") this long after.
    producer_grace: float = 60.0
    history_lines: int = 10_000
    # Bytes of stored frames per session (after JSON escaping).
    history_bytes: int = 8 * 1_048_576
    subscribe_tail: int = 100
    max_message_size: int = 1_048_576
    max_subscriptions: int = 128
    connection_buffer: int = 1_048_576
    slow_consumer: Literal["drop", "disconnect"] = "drop"
    # In-memory history plus queued output, over every session and client:
    # past it the largest histories shed their oldest entries, then clients
    # that produce (and sources) are not read until it drains.
    memory_budget: int = 1_073_741_824
    # A log message longer than this (as encoded JSON) is cut, with a marker.
    max_line_bytes: int = 262_144
    # Bytes a runtime reads from a socket at once: a connection the core
    # stopped reading holds at most one such read back (``Connection``).
    read_size: int = 262_144
    ping_interval: float = 30.0
    ping_timeout: float = 5.0
    # A connection that has not authenticated this long after opening is
    # closed with 1008; a request head not complete this long after the TCP
    # accept is dropped.
    auth_timeout: float = 10.0
    open_timeout: float = 10.0
    # Client messages per second per connection (a token bucket of
    # ``rate_burst``); producer entries from a connection with the produce
    # role are exempt: the global buffer throttles them instead.
    rate_limit: float = 200.0
    rate_burst: int = 400
    # Errors within ``abuse_window`` seconds past which the connection is
    # closed with 1008 ("the connection stays open unless the abuse repeats").
    abuse_limit: int = 50
    abuse_window: float = 10.0
    max_headers: int = 128
    max_head_bytes: int = 16_384

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigurationError(f"{field.name} must not be negative, got {value}")
        if self.slow_consumer not in ("drop", "disconnect"):
            raise ConfigurationError(
                f"slow_consumer must be 'drop' or 'disconnect', not {self.slow_consumer!r}"
            )
        if self.max_message_size < 64:
            raise ConfigurationError("max_message_size must be at least 64 bytes")
        if self.history_lines < 1:
            raise ConfigurationError("history_lines must be at least 1")
        if self.max_line_bytes < 64:
            raise ConfigurationError("max_line_bytes must be at least 64 bytes")
        if self.read_size < 1024:
            raise ConfigurationError("read_size must be at least 1024 bytes")
        if self.connection_buffer < 1:
            raise ConfigurationError("connection_buffer must be at least 1 byte")


def _json_length(text: str) -> int:
    """Bytes ``text`` takes inside a JSON string (escapes included)."""
    return len(msgspec.json.encode(text)) - 2


_MARKER = re.compile(r" …\[truncated (\d{1,20}) bytes\]\Z")


def cut_text(text: str, max_bytes: int) -> str:
    """``text`` if it encodes to at most ``max_bytes`` of JSON, else its
    longest prefix that fits with the marker ``" …[truncated N bytes]"``
    (N: UTF-8 bytes of ``text`` left out). Control characters take six bytes
    each once escaped, so the bound is on the escaped form: that is what
    history and every viewer hold. A text already cut upstream (the Docker
    decoder cuts while it joins) keeps one marker, with the counts added."""
    size = _json_length(text)
    if size <= max_bytes:
        return text
    earlier = 0
    found = _MARKER.search(text)
    if found is not None:
        earlier = int(found[1])
        text = text[: found.start()]
        size = _json_length(text)
    room = max_bytes - 40  # the marker, with a 20-digit count
    keep = len(text) * room // size
    while keep > 0:
        size = _json_length(text[:keep])
        if size <= room:
            break
        keep = max(0, min(keep - 1, keep * room // size))
    dropped = earlier + len(text[keep:].encode("utf-8", "surrogatepass"))
    return f"{text[:keep]} …[truncated {dropped} bytes]"

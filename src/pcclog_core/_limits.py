"""Limits and policies of the core, as constructor arguments with safe
defaults (SPEC §2). Durations are seconds; the runtime converts the
milliseconds of the environment variables."""

from __future__ import annotations

import dataclasses
from typing import Literal

__all__ = ["Limits"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    max_sessions: int = 100
    session_timeout: float = 300.0
    history_lines: int = 10_000
    subscribe_tail: int = 100
    max_message_size: int = 65_536
    max_subscriptions: int = 128
    connection_buffer: int = 1_048_576
    slow_consumer: Literal["drop", "disconnect"] = "drop"
    # Total outbound bytes queued over all connections past which the runtime
    # is told to stop reading producers (and Docker streams) until it drains.
    global_buffer: int = 256 * 1_048_576
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
                raise ValueError(f"{field.name} must not be negative, got {value}")
        if self.slow_consumer not in ("drop", "disconnect"):
            raise ValueError(
                f"slow_consumer must be 'drop' or 'disconnect', not {self.slow_consumer!r}"
            )
        if self.max_message_size < 64:
            raise ValueError("max_message_size must be at least 64 bytes")
        if self.history_lines < 1:
            raise ValueError("history_lines must be at least 1")

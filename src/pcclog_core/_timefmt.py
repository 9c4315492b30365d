"""Timestamps on the wire: ISO 8601 UTC with milliseconds and ``Z`` (seed).

These only convert; the time itself is always passed in by the runtime.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

__all__ = ["format_wall", "normalize_timestamp"]

_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_second_cache: tuple[int | None, str] = (None, "")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_YEAR = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_AFTER_LAST_YEAR = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp()


def format_wall(wall: float) -> str:
    """``1706276730.1234`` → ``"2024-01-26T13:45:30.123Z"``."""
    global _second_cache
    whole = math.floor(wall)  # floor, not int(): times before 1970 too
    millis = min(999, int((wall - whole) * 1000))
    cached_second, prefix = _second_cache
    if cached_second != whole:
        t = _EPOCH + timedelta(seconds=whole)
        prefix = (
            f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        )
        _second_cache = (whole, prefix)
    return f"{prefix}.{millis:03d}Z"


def normalize_timestamp(value: str) -> str:
    """A client's ISO 8601 timestamp in pcclog's canonical form.

    Raises ``ValueError`` with a readable text when ``value`` is not one.
    """
    if _CANONICAL.match(value):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"timestamp {value[:40]!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    seconds = parsed.timestamp()
    if not _FIRST_YEAR <= seconds < _AFTER_LAST_YEAR:
        raise ValueError(f"timestamp {value[:40]!r} is outside years 0001-9999 in UTC")
    return format_wall(seconds)

"""Timestamps: one parser, one formatter (SPEC §3, §4).

pcclog's wire form for ``timestamp`` is the seed's: UTC, ISO 8601,
milliseconds truncated (never rounded up into the next second), ``Z`` —
``"2024-01-26T13:45:30.123Z"``. Everything here only converts; the time
itself is always passed in by the runtime.

* **The formatter** is :func:`format_ns` (nanoseconds since the epoch, an
  ``int``: exact). :func:`format_wall` is the same formatter for a float of
  seconds (the runtime's wall clock), split into whole seconds and
  milliseconds without a float product, so ``x.123`` never becomes ``.122``.
* **The parser** is :func:`parse_rfc3339_ns` (RFC 3339 §5.6, exact to the
  nanosecond, no float), with :data:`TIMESTAMP_SP` and :func:`match_ns`,
  its form for bytes that the Docker stream decoder runs over every record
  (``<timestamp> SP <bytes>``). :func:`normalize_timestamp` turns a
  producer's ISO 8601 timestamp into the wire form: the RFC 3339 forms
  through the parser, the other ISO 8601 forms (``datetime.fromisoformat``:
  a date only, no zone meaning UTC, basic format) through exact integer
  arithmetic.

Days ↔ civil dates use H. Hinnant's algorithms (proleptic Gregorian), so no
``datetime`` is built on the hot path; the formatter and the bytes parser
each cache the last second they saw (consecutive log lines nearly always
share it).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = [
    "TIMESTAMP_SP",
    "format_ns",
    "format_wall",
    "match_ns",
    "normalize_timestamp",
    "parse_rfc3339_ns",
]

NS_PER_S: Final = 1_000_000_000

# RFC 3339 §5.6 date-time. §5.6 NOTE allows lower-case t and z. The fraction
# has 0-9 digits: Go's RFC3339Nano drops trailing zeros, the Docker engine's
# RFC3339NanoFixed keeps all nine.
_RFC3339: Final = r"(\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d)(?:\.(\d{0,9}))?([Zz]|[+-]\d\d:\d\d)"
_RFC3339_STR: Final = re.compile(_RFC3339, re.ASCII)
#: An RFC 3339 date-time followed by the one space that separates it from a
#: Docker record's bytes; groups: date-time, fraction, zone. Use
#: :func:`match_ns` on a match.
TIMESTAMP_SP: Final = re.compile(_RFC3339.encode() + b" ")

_CANONICAL: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


# --- civil dates ----------------------------------------------------------------


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """Inverse of :func:`_days_from_civil`."""
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d


# --- the formatter ------------------------------------------------------------------

_prefix_cache: tuple[int, str] = (-1 << 70, "")


def _format(seconds: int, millis: int) -> str:
    global _prefix_cache
    cached_seconds, prefix = _prefix_cache
    if seconds != cached_seconds:
        days, sod = divmod(seconds, 86400)
        y, mo, d = _civil_from_days(days)
        if not 0 <= y <= 9999:
            raise ValueError(f"{seconds} s since the epoch is outside the years 0000-9999")
        h, sod = divmod(sod, 3600)
        mi, s = divmod(sod, 60)
        prefix = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
        _prefix_cache = (seconds, prefix)
    return f"{prefix}.{millis:03d}Z"


def format_ns(ns: int) -> str:
    """Nanoseconds since the epoch → ``"2024-01-26T13:45:30.123Z"`` (truncated).

    Years outside 0000-9999 raise ``ValueError``.
    """
    seconds, rem = divmod(ns, NS_PER_S)
    return _format(seconds, rem // 1_000_000)


def format_wall(wall: float) -> str:
    """``1706276730.1234`` (seconds, the runtime's wall clock) → ``"…30.123Z"``."""
    whole = math.floor(wall)  # floor, not int(): times before 1970 too
    return _format(whole, min(999, int((wall - whole) * 1000)))


# --- the parser ---------------------------------------------------------------------


def _local_seconds(dt: str | bytes) -> int:
    """``YYYY-MM-DDTHH:MM:SS`` (19 chars) → seconds since the epoch, zone not applied."""
    y, mo, d = int(dt[0:4]), int(dt[5:7]), int(dt[8:10])
    h, mi, s = int(dt[11:13]), int(dt[14:16]), int(dt[17:19])
    if not 1 <= mo <= 12:
        raise ValueError("month out of range")
    leap = mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not 1 <= d <= _DAYS_IN_MONTH[mo] + leap:
        raise ValueError("day out of range")
    # RFC 3339 §5.7 allows second 60 (a leap second); it counts as :00 of the
    # next minute, as POSIX time has no leap seconds.
    if h > 23 or mi > 59 or s > 60:
        raise ValueError("time of day out of range")
    return _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s


def _offset_seconds(zone: str | bytes) -> int:
    if len(zone) == 1:  # Z or z
        return 0
    hh, mm = int(zone[1:3]), int(zone[4:6])
    if hh > 23 or mm > 59:
        raise ValueError("zone offset out of range")
    seconds = hh * 3600 + mm * 60
    return -seconds if zone[:1] in ("-", b"-") else seconds


_seconds_cache: tuple[bytes, int] = (b"", 0)


def match_ns(m: re.Match[bytes]) -> int:
    """Nanoseconds of a :data:`TIMESTAMP_SP` match; ``ValueError`` when out of range."""
    global _seconds_cache
    dt, frac, zone = m.group(1, 2, 3)
    cached_dt, seconds = _seconds_cache
    if dt != cached_dt:
        seconds = _local_seconds(dt)
        _seconds_cache = (dt, seconds)
    if len(zone) > 1:
        seconds -= _offset_seconds(zone)
    return seconds * NS_PER_S + (int(frac.ljust(9, b"0")) if frac else 0)


def parse_rfc3339_ns(ts: str) -> int:
    """An RFC 3339 date-time (RFC 3339 §5.6) → nanoseconds since the epoch, exact.

    Accepts what the Docker engine writes (``2024-01-26T13:45:30.123456789Z``)
    and every other RFC 3339 form: a fraction of 0-9 digits, ``Z`` or a
    ``±hh:mm`` offset, lower-case ``t``/``z``. No float is involved, so all
    nine digits survive. Raises ``ValueError`` for anything else (including
    out-of-range fields such as February 30).
    """
    m = _RFC3339_STR.fullmatch(ts)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {ts[:40]!r}")
    dt, frac, zone = m.group(1, 2, 3)
    try:
        seconds = _local_seconds(dt) - _offset_seconds(zone)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 timestamp: {ts[:40]!r} ({exc})") from None
    return seconds * NS_PER_S + (int(frac.ljust(9, "0")) if frac else 0)


def normalize_timestamp(value: str) -> str:
    """A producer's ISO 8601 timestamp in pcclog's wire form.

    Accepts what ``datetime.fromisoformat`` accepts (a missing zone means
    UTC), in the years 0001-9999 once in UTC. Raises ``ValueError`` with a
    readable text otherwise.
    """
    if _CANONICAL.match(value):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"timestamp {value[:40]!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        in_utc = parsed.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or not 1 <= in_utc.year <= 9999:
        raise ValueError(f"timestamp {value[:40]!r} is outside years 0001-9999 in UTC")
    # Exact: microseconds as an int (fromisoformat keeps at most six digits),
    # then the one formatter.
    return format_ns((parsed - _EPOCH) // _MICROSECOND * 1000)

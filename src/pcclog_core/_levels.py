"""Log levels: the one table (names, order, aliases) every part of pcclog uses.

pcclog's levels are ``trace < debug < info < warn < error < fatal``. Every
level an entry carries is one of them: the Docker classifier, producers'
``log`` messages, ``pcclog run`` and the agent parsers all normalise through
``normalize_level``; ``pcclog tail --level`` ranks with ``LEVEL_RANK``; the
browser viewer is served this table (``levels_json``) instead of a copy.

Aliases are the names other loggers use: syslog's (RFC 5424 §6.2.1:
``emerg``, ``alert``, ``crit``, ``err``, ``notice``), Python's (``warning``,
``critical``), zap's and logrus's (``panic``, ``dpanic``), and pino's
numeric levels (10 trace … 60 fatal; a custom number in between takes the
level at or below it). A name pcclog does not know becomes ``info``: a
producer cannot invent a level that filters would then hide.
"""

from __future__ import annotations

from typing import Final

import msgspec

__all__ = [
    "LEVELS",
    "LEVEL_ALIASES",
    "LEVEL_RANK",
    "level_of",
    "leading_level",
    "levels_json",
    "normalize_level",
]

LEVELS: Final = ("trace", "debug", "info", "warn", "error", "fatal")
LEVEL_RANK: Final[dict[str, int]] = {name: rank for rank, name in enumerate(LEVELS)}

LEVEL_ALIASES: Final[dict[str, str]] = {
    **{name: name for name in LEVELS},
    "warning": "warn",
    "err": "error",
    "critical": "fatal",
    "notice": "info",
    "informational": "info",
    "crit": "fatal",
    "alert": "fatal",
    "emerg": "fatal",
    "emergency": "fatal",
    "panic": "fatal",
    "dpanic": "fatal",
    "verbose": "debug",
}

# A stderr (or any plain) line classified by its leading keyword (SPEC §4):
# ``ERROR: …``, ``WARNING …``, ``[info] …``, ``Traceback (most recent …``.
_LEADING: Final[dict[str, str]] = {
    "error": "error",
    "err": "error",
    "fatal": "fatal",
    "critical": "fatal",
    "panic": "fatal",
    "warn": "warn",
    "warning": "warn",
    "info": "info",
    "notice": "info",
    "debug": "debug",
    "trace": "trace",
    "traceback": "error",
}
_LEADING_MAX = max(map(len, _LEADING))


def _pino_level(n: float) -> str:
    if n < 20:
        return "trace"
    if n < 30:
        return "debug"
    if n < 40:
        return "info"
    if n < 50:
        return "warn"
    if n < 60:
        return "error"
    return "fatal"


def level_of(value: object) -> str | None:
    """The level ``value`` names (a name, an alias or a pino number), or
    ``None`` if it names none."""
    if isinstance(value, str):
        name = value.strip().lower()
        level = LEVEL_ALIASES.get(name)
        if level is None and name.isascii() and name.isdigit() and len(name) < 6:
            level = _pino_level(int(name))
        return level
    if isinstance(value, int | float) and not isinstance(value, bool):
        return None if value != value else _pino_level(value)  # NaN has no level
    return None


def normalize_level(value: object, default: str = "info") -> str:
    """``value`` as one of ``LEVELS``; ``default`` when it names none."""
    if isinstance(value, str) and value in LEVEL_RANK:  # the common case
        return value
    return level_of(value) or default


def leading_level(text: str) -> str | None:
    """The level a plain line announces by its first word (``ERROR:``,
    ``[WARN]``, ``Warning -``, ``Traceback``), or ``None``."""
    start = 0
    end = len(text)
    while start < end and text[start] in " \t[(<":
        start += 1
    stop = start
    while stop < end and stop - start <= _LEADING_MAX and text[stop].isalpha():
        stop += 1
    if stop == start or stop - start > _LEADING_MAX:
        return None
    word = text[start:stop].lower()
    level = _LEADING.get(word)
    if level is None:
        return None
    # A keyword must end the word: "Errors found" is not "ERROR".
    if stop < end and text[stop] not in " \t:]>)-|,.!=":
        return None
    if word == "traceback" and not text[stop:].startswith(" (most recent call"):
        return None
    return level


def levels_json() -> bytes:
    """The table for the browser viewer (``GET /levels.json``)."""
    return msgspec.json.encode({"levels": LEVELS, "aliases": LEVEL_ALIASES})

"""What a client core tells its user: the text of a ``Notice`` and how loud.

The cores (``_resume``, ``_producer``) decide what is news and what is a
quiet retry; the runtime only writes the text where the user looks (a
logger, stderr, a status line).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Notice"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """``level`` is ``debug``, ``info`` or ``warning``; ``connected`` is set
    when the news is a change of the connection (for a status line), None
    otherwise."""

    level: str
    text: str
    connected: bool | None = None

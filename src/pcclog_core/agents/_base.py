"""What every agent kind shares: the entry it makes of a line, the states of
its summary, the interface a kind and a summary offer, and the bounds on
every string copied out of an agent's output (SPEC §7).

An agent kind is stateless: ``detect`` and ``parse`` look at one line and
nothing else, so one kind object serves every session. What a session has
done so far lives in its summary, one per session, which ``apply``-s the
typed events the parser puts into each entry. Time is always an argument:
``now`` is the runtime's monotonic clock (for throttling), ``wall`` is
seconds since the epoch (for the ISO strings viewers see).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, Final, Protocol

import msgspec

from .._timefmt import format_wall

__all__ = [
    "LEVELS",
    "MESSAGE_CHARS",
    "SUMMARY_CHARS",
    "AgentEntry",
    "AgentEvent",
    "AgentKind",
    "AgentState",
    "AgentSummary",
    "bound",
    "first_line",
    "iso_wall",
]

# pcclog's level names (the ones ``_docker`` normalises every source to).
LEVELS: Final = frozenset({"trace", "debug", "info", "warn", "error", "fatal"})

# Every string an agent module copies into a summary or into ``data.agent``
# is at most this long, so a 200 KB tool result or a 1 MB command cannot
# bloat the summary sent with every status entry.
SUMMARY_CHARS: Final = 200
# A log message is one short human line; a line that joins several content
# blocks (text, then a tool call) is bounded as a whole too.
MESSAGE_CHARS: Final = 300
# How far into a long text ``first_line`` looks: a tool result may be
# megabytes, its first line is in the first few kilobytes or it is not a line.
_SCAN_CHARS: Final = 4096
_ELLIPSIS: Final = "…"
# format_wall covers years 0001..9999; a junk timestamp is clamped into it.
_WALL_MIN: Final = -62135596800.0
_WALL_MAX: Final = 253402300799.0


class AgentState(enum.StrEnum):
    """``metadata.agent.state`` (SPEC §7)."""

    STARTING = "starting"
    WORKING = "working"
    TOOL = "tool"  # a tool call without its result yet
    WAITING = "waiting"  # needs a human: ``waitingFor`` says for what
    RETRYING = "retrying"  # the API failed and the agent retries
    SILENT = "silent"  # running, no output for AGENT_SILENT_AFTER (runtime)
    DONE = "done"
    FAILED = "failed"
    LOST = "lost"  # its producer went away without ending it (runtime)


class AgentEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the typed events an agent module's parser produces and its
    summary applies. Each kind defines its own subclasses. (A
    ``msgspec.Struct``: one is made for every line, and a Struct is made
    several times faster than a frozen dataclass.)"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AgentEntry:
    """One agent line (or hook call) understood: the parts of a ``log`` entry.

    * ``level`` — one of ``LEVELS``.
    * ``message`` — a short human line (``Bash: pytest -q``), at most
      ``MESSAGE_CHARS``.
    * ``data`` — the entry's whole ``data``: ``{"agent": {...}, "raw": obj}``.
      ``data["agent"]`` is the event: ``{"event": "tool_use", ...}`` with small
      fields whose strings are at most ``SUMMARY_CHARS`` (never the object
      again); ``data["raw"]`` is the original object, unchanged, kept once.
      A runtime that adds fields of its own (``containerId``, ``stream``)
      adds them beside these two.
    * ``event`` — the typed event for the session's summary (``apply``).
    """

    level: str
    message: str
    data: dict[str, Any]
    event: AgentEvent

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"level {self.level!r} is not one of {sorted(LEVELS)}")


class AgentSummary(Protocol):
    """The per-session summary of one agent: ``metadata.agent``."""

    @property
    def kind(self) -> str: ...

    @property
    def state(self) -> AgentState: ...

    def apply(self, event: AgentEvent, *, now: float, wall: float) -> bool:
        """Fold one event in; True when ``to_dict()`` changed."""
        ...

    def mark_active(self) -> bool:
        """The session printed something that is not an agent event."""
        ...

    def mark_silent(self) -> bool:
        """No output for AGENT_SILENT_AFTER (the runtime decides when)."""
        ...

    def mark_lost(self) -> bool:
        """Its producer went away without ending it (PRODUCER_GRACE)."""
        ...

    def mark_exited(self, exit_code: int | None) -> bool:
        """Its process (container) exited; without a result that is the end."""
        ...

    def should_publish(self, now: float) -> bool:
        """True when a status entry carrying this summary is due now, which
        records it as published; False while throttled or unchanged."""
        ...

    def publish_deadline(self) -> float | None:
        """When a throttled change becomes due (``now`` units), or None."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """``metadata.agent``, in SPEC §7's shape."""
        ...


class AgentKind(Protocol):
    """One kind of agent (Claude Code, later Codex, Gemini CLI): stateless."""

    @property
    def name(self) -> str:
        """``metadata.agent.kind`` and the ``/hooks/<name>`` path segment."""
        ...

    def detect(self, line: str) -> bool:
        """Cheap test, no parsing: could this line be one of this kind's?"""
        ...

    def parse(self, line: str, *, wall: float) -> AgentEntry | None:
        """The entry for one output line, or None when it is not this
        kind's (the caller keeps it as an ordinary log line). Never raises."""
        ...

    def parse_hook(self, payload: object, *, wall: float) -> AgentEntry | None:
        """The entry for one hook call's decoded JSON body, or None when
        this kind has no hooks. Never raises."""
        ...

    def new_summary(self) -> AgentSummary:
        """A fresh summary for a session first seen running this kind."""
        ...


# --- bounded strings -----------------------------------------------------------


def _valid(text: str) -> str:
    # A payload decoded by Python's json module may hold lone surrogates,
    # which no UTF-8 encoder (msgspec's included) accepts; the strings here
    # are short, so checking them costs nothing.
    if text.isascii():
        return text
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


def bound(text: str, limit: int = SUMMARY_CHARS) -> str:
    """``text`` cut to ``limit`` characters, the last one ``…`` when cut."""
    if len(text) > limit:
        text = text[: limit - 1] + _ELLIPSIS
    return _valid(text)


def first_line(text: str, limit: int = SUMMARY_CHARS) -> str:
    """The first non-blank line of ``text``, its runs of white space (tabs
    included) made one space, bounded: one line a human reads at a glance."""
    # Most names, ids and short texts are one clean line already.
    if (
        len(text) <= limit
        and text.isprintable()  # no line breaks, tabs or lone surrogates
        and text[:1] != " "
        and text[-1:] != " "
        and "  " not in text
    ):
        return text
    head = text[:_SCAN_CHARS]
    for line in head.splitlines():
        if line and not line.isspace():
            return bound(" ".join(line.split()), limit)
    return ""


def iso_wall(wall: float) -> str:
    """``format_wall`` for any float a caller or an agent may hand in."""
    if not math.isfinite(wall):
        wall = 0.0
    return format_wall(min(max(wall, _WALL_MIN), _WALL_MAX))

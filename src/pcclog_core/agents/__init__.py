"""Agents: pcclog understands the sessions it streams when they are AI
coding agents (SPEC §7). Sans-IO like the rest of the core.

One module per agent kind behind one small interface (``AgentKind``):

* ``kind.detect(line)`` — cheap test, no parsing;
* ``kind.parse(line, wall=…)`` — an ``AgentEntry`` (level, message, data,
  event), or None: not this kind's line, keep it as an ordinary log line;
* ``kind.parse_hook(payload, wall=…)`` — the same for a hook call's body;
* ``kind.new_summary()`` — the per-session ``AgentSummary``:
  ``apply(entry.event, now=…, wall=…)``, ``mark_silent()``, ``mark_lost()``,
  ``mark_exited(code)``, ``should_publish(now)``, ``to_dict()`` (the
  ``metadata.agent`` of the session's status).

An entry's ``data`` is the whole ``data`` of the log entry:
``{"agent": {"event": …, small bounded fields}, "raw": <the original
object>}`` — the original is kept once, under ``raw``, and nowhere else.

``KINDS`` lists the kinds in the order lines are offered to them; Claude
Code first, room for Codex and Gemini CLI. ``parse_line`` tries each kind
whose ``detect`` matches.
"""

from __future__ import annotations

from ._base import (
    LEVELS,
    MESSAGE_CHARS,
    SUMMARY_CHARS,
    AgentEntry,
    AgentEvent,
    AgentKind,
    AgentState,
    AgentSummary,
)
from .claude_code import CLAUDE_CODE, ClaudeCodeKind, ClaudeCodeSummary

__all__ = [
    "CLAUDE_CODE",
    "KINDS",
    "LEVELS",
    "MESSAGE_CHARS",
    "SUMMARY_CHARS",
    "AgentEntry",
    "AgentEvent",
    "AgentKind",
    "AgentState",
    "AgentSummary",
    "ClaudeCodeKind",
    "ClaudeCodeSummary",
    "detect_agent",
    "kind_named",
    "parse_line",
]

KINDS: tuple[AgentKind, ...] = (CLAUDE_CODE,)
_BY_NAME: dict[str, AgentKind] = {kind.name: kind for kind in KINDS}


def detect_agent(line: str) -> AgentKind | None:
    """The first kind whose cheap ``detect`` accepts ``line``, or None."""
    for kind in KINDS:
        if kind.detect(line):
            return kind
    return None


def kind_named(name: str) -> AgentKind | None:
    """The kind called ``name`` (``claude-code``), e.g. for ``/hooks/<name>``."""
    return _BY_NAME.get(name)


def parse_line(line: str, *, wall: float) -> tuple[AgentKind, AgentEntry] | None:
    """The first kind that parses ``line`` and its entry, or None when the
    line is no agent's (the caller keeps it as an ordinary log line)."""
    for kind in KINDS:
        if kind.detect(line):
            entry = kind.parse(line, wall=wall)
            if entry is not None:
                return kind, entry
    return None

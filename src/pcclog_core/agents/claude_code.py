"""Claude Code: its ``stream-json`` output and its HTTP hooks (SPEC §7).

Theory of operation
-------------------

``claude -p … --output-format stream-json --verbose`` prints one JSON object
per line; an interactive session can POST the same facts through its
``type: "http"`` hooks. Both arrive here:

* ``parse(line, wall=…)`` turns one line into an ``AgentEntry`` — a short
  human ``message``, a ``level`` that says what it is, ``data`` holding the
  event (``data.agent``) and the original object once (``data.raw``) — or
  returns None when the line is not Claude Code's (not JSON, not an object,
  or an object that does not look like Claude Code's), so the caller keeps
  it as an ordinary log line. Nothing here raises on any JSON object: every
  field is read with its type checked, a missing or mistyped one is absent,
  and an unknown ``type`` is an ``other`` event, data like any other.
* ``parse_hook(payload, wall=…)`` does the same for one hook call's body.
* ``ClaudeCodeSummary`` is one session's ``metadata.agent``. It applies the
  typed event of each entry; the runtime adds what only it can see
  (``mark_silent``, ``mark_lost``, ``mark_exited``).

One line is one entry. Claude Code prints each content block of a model
message as its own ``assistant`` line sharing one ``message.id`` and one
``usage``; a line that does carry several blocks still becomes one entry
whose message joins them (``Running the tests. · Bash: pytest -q``).
Tokens are therefore counted once per message id (the largest value seen
for each field), turns once per main-agent message id until the ``result``
gives ``num_turns``, and the cost is only known from the ``result``
(``total_cost_usd``, ``cost_usd`` in older versions): pcclog keeps no price
table, so ``costUsd`` is null until then.

The state machine is the table ``_TRANSITIONS`` below: each event is
reduced to one input, and ``(state, input)`` gives the next state, or
``SAME``, or ``BUSY`` (``tool`` while a main-agent tool call is open,
``working`` otherwise). Subagents (lines with a ``parent_tool_use_id``,
hooks with an ``agent_id``) count their tokens but never open or close the
main agent's tool: while a ``Task`` runs the state stays ``tool: Task``.
While the agent waits for a permission on tool X, events about other tools
leave it waiting (parallel calls run beside a pending prompt); X's own
result, model output, a prompt, ``Stop`` or the end leave the wait.
``Stop`` means the turn is over: the state goes back to ``working`` (no
tool open), and it is Claude Code's own ``Notification`` of type
``idle_prompt`` that says the agent now waits for input — a ``Stop`` also
ends every turn of a headless run a moment before its ``result``, so
taking it for "waiting" would announce a wait that never was.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from ._base import (
    MESSAGE_CHARS,
    AgentEntry,
    AgentEvent,
    AgentState,
    bound,
    first_line,
    iso_wall,
)

__all__ = [
    "CLAUDE_CODE",
    "KIND",
    "ApiRetry",
    "AssistantMessage",
    "ClaudeCodeKind",
    "ClaudeCodeSummary",
    "Hook",
    "Init",
    "Other",
    "Partial",
    "Prompt",
    "RateLimit",
    "Result",
    "SystemStatus",
    "ToolCall",
    "ToolProgress",
    "ToolResult",
    "ToolResults",
    "Usage",
    "detect",
    "parse",
    "parse_hook",
    "tool_summary",
]

KIND: Final = "claude-code"

# Bounds on what one object may make us build: a junk line with a million
# content blocks costs a scan of the first few, not a million entries.
_MAX_BLOCKS: Final = 64
_MAX_LISTED: Final = 8
# Largest token count or duration accepted as a number (beyond: junk).
_INT_CAP: Final = 10**15
_COST_CAP: Final = 1e9
_NAME_CHARS: Final = 100


# --- events --------------------------------------------------------------------


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_creation: int = 0


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A ``tool_use`` block or a tool hook: ``summary`` is ``pytest -q`` for
    ``Bash`` (bounded), ``id`` the ``tool_use_id`` when there is one."""

    id: str | None
    name: str
    summary: str


class Init(AgentEvent, frozen=True, kw_only=True):
    model: str | None = None
    cwd: str | None = None
    session_id: str | None = None


class AssistantMessage(AgentEvent, frozen=True, kw_only=True):
    message_id: str | None = None
    parent_tool_use_id: str | None = None
    model: str | None = None
    usage: Usage | None = None
    tools: tuple[ToolCall, ...] = ()
    error: str | None = None  # ``error`` of the line plus its text, bounded


class ToolResult(msgspec.Struct, frozen=True, kw_only=True):
    tool_use_id: str | None
    is_error: bool
    text: str  # first line, bounded


class ToolResults(AgentEvent, frozen=True, kw_only=True):
    results: tuple[ToolResult, ...] = ()
    parent_tool_use_id: str | None = None


class Prompt(AgentEvent, frozen=True, kw_only=True):
    """A ``user`` line with text rather than tool results: a new prompt."""

    parent_tool_use_id: str | None = None


class ApiRetry(AgentEvent, frozen=True, kw_only=True):
    error: str = ""  # "API error 529 overloaded · retry 1/10", bounded
    parent_tool_use_id: str | None = None


class ToolProgress(AgentEvent, frozen=True, kw_only=True):
    tool_use_id: str | None = None
    tool_name: str | None = None
    elapsed_seconds: float | None = None
    parent_tool_use_id: str | None = None


class RateLimit(AgentEvent, frozen=True, kw_only=True):
    status: str | None = None
    resets_at: str | None = None


class SystemStatus(AgentEvent, frozen=True, kw_only=True):
    status: str | None = None


class Partial(AgentEvent, frozen=True, kw_only=True):
    """A ``stream_event`` (``--include-partial-messages``)."""

    parent_tool_use_id: str | None = None


class Result(AgentEvent, frozen=True, kw_only=True):
    failed: bool = False
    subtype: str | None = None
    duration_ms: int | None = None
    num_turns: int | None = None
    cost_usd: float | None = None
    text: str | None = None  # bounded
    error: str | None = None  # what went wrong when ``failed``, bounded


class Hook(AgentEvent, frozen=True, kw_only=True):
    """One hook call; ``subagent`` when the payload names an ``agent_id``."""

    name: str
    tool: ToolCall | None = None
    subagent: bool = False
    notification_type: str | None = None
    source: str | None = None
    error: str | None = None
    cwd: str | None = None
    model: str | None = None


class Other(AgentEvent, frozen=True, kw_only=True):
    """A type (or ``system`` subtype, or hook) this module does not know."""

    type: str = ""
    subtype: str | None = None


# --- typed reads of untrusted JSON ---------------------------------------------


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    """A non-negative integer (a whole float too), else None."""
    if type(value) is int:  # the common case first; bool is no int here
        return value if 0 <= value <= _INT_CAP else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _INT_CAP else None
    if isinstance(value, float) and math.isfinite(value) and 0 <= value <= _INT_CAP:
        return int(value)
    return None


def _num(value: object, cap: float = _COST_CAP) -> float | None:
    """A finite non-negative number, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value) if value <= cap else math.inf
    return number if 0 <= number <= cap else None


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value[:_MAX_BLOCKS] if isinstance(value, list) else []


def _name(value: object, default: str) -> str:
    """A name, id or status: one line, bounded."""
    if type(value) is not str or not value:
        return default
    if len(value) <= _NAME_CHARS and value.isprintable() and value.strip() == value:
        if "  " not in value:
            return value  # the common case: nothing to clean
    return first_line(value, _NAME_CHARS) or default


def _error_text(value: object) -> str | None:
    """An ``error`` field: a string, or an object with a message or type."""
    if isinstance(value, str):
        return first_line(value) or None
    if isinstance(value, dict):
        for key in ("message", "type", "error"):
            inner = value.get(key)
            if isinstance(inner, str) and inner:
                return first_line(inner) or None
        nested = value.get("error")
        if isinstance(nested, dict):
            return _error_text({k: v for k, v in nested.items() if k != "error"})
    return None


def _content_text(content: object) -> str:
    """The text of a tool result's ``content``: a string or content blocks."""
    if isinstance(content, str):
        return content
    for block in _list(content):
        if isinstance(block, dict):
            text = block.get("text")
            if block.get("type") == "text" and isinstance(text, str) and text.strip():
                return text
            if block.get("type") == "image":
                return "[image]"
    return ""


def _blocks(content: object) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return _list(content)


def _seconds(seconds: float) -> str:
    """``2.2 s``, ``16 s``, ``3 min 5 s``, ``2 h 10 min``."""
    if seconds < 9.95:
        text = f"{seconds:.1f}"
        return f"{text.removesuffix('.0')} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    return f"{hours} h {rest // 60} min"


def _dollars(cost: float) -> str:
    """``$0.35``; below a cent, enough digits not to read as nothing."""
    if 0 < cost < 0.01:
        return f"${cost:.4f}".rstrip("0")
    return f"${cost:.2f}"


def _message(text: str) -> str:
    """An entry's message: one line (its white space made single spaces), bounded."""
    if len(text) <= MESSAGE_CHARS and text.isprintable() and "  " not in text:
        return text  # parts are first lines already: the common case
    return bound(" ".join(text[: MESSAGE_CHARS * 4].split()), MESSAGE_CHARS)


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


# --- tool summaries ------------------------------------------------------------

# The input field that says what a call does, per tool; other tools (MCP
# tools, future ones) use the first of ``_ANY_KEYS`` they have.
_TOOL_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "Bash": ("command",),
    "BashOutput": ("bash_id",),
    "KillShell": ("shell_id",),
    "KillBash": ("shell_id",),
    "Read": ("file_path",),
    "Write": ("file_path",),
    "Edit": ("file_path",),
    "MultiEdit": ("file_path",),
    "NotebookRead": ("notebook_path",),
    "NotebookEdit": ("notebook_path",),
    "Glob": ("pattern",),
    "LS": ("path",),
    "WebFetch": ("url",),
    "WebSearch": ("query",),
    "Task": ("description", "subagent_type", "prompt"),
    "Agent": ("description", "subagent_type", "prompt"),
    "Skill": ("skill", "command"),
    "SlashCommand": ("command",),
}
_ANY_KEYS: Final = (
    "command",
    "file_path",
    "path",
    "notebook_path",
    "pattern",
    "url",
    "query",
    "description",
    "prompt",
)


def _one_line(text: str) -> str:
    line = first_line(text)
    if line and not line.endswith("…") and len(line) < len(text.strip()):
        line = bound(line + " …")  # a multi-line command: say there is more
    return line


def tool_summary(name: str, tool_input: object) -> str:
    """What a tool call does in a few words: ``pytest -q`` for ``Bash``,
    the path for ``Read``/``Edit``, ``TODO in src`` for ``Grep``; bounded."""
    fields = _dict(tool_input)
    if name == "Grep":
        pattern = _str(fields.get("pattern"))
        where = _str(fields.get("path")) or _str(fields.get("glob"))
        if pattern:
            return _one_line(f"{pattern} in {where}" if where else pattern)
        return ""
    if name == "TodoWrite":
        todos = fields.get("todos")
        return f"{len(todos)} todos" if isinstance(todos, list) else ""
    for key in _TOOL_KEYS.get(name, _ANY_KEYS):
        value = _str(fields.get(key))
        if value and value.strip():
            return _one_line(value)
    return ""


def _tool_line(tool: ToolCall) -> str:
    return f"{tool.name}: {tool.summary}" if tool.summary else tool.name


def _tool_fields(tool: ToolCall) -> dict[str, Any]:
    return _drop_none({"id": tool.id, "name": tool.name, "summary": tool.summary or None})


# --- stream-json lines ---------------------------------------------------------

_Parsed = tuple[str, str, dict[str, Any], AgentEvent]  # level, message, data.agent, event


def detect(line: str) -> bool:
    """Cheap: a JSON object with a ``"type"`` key, maybe."""
    start = line.lstrip()[:1] if line[:1].isspace() else line[:1]
    return start == "{" and '"type"' in line


def _parent(obj: Mapping[str, Any]) -> str | None:
    return _str(obj.get("parent_tool_use_id"))


def _sub(parent: str | None, message: str) -> str:
    """A subagent's lines read ``↳ Grep: TODO``: not the main agent's."""
    return f"↳ {message}" if parent else message


def _prompt_line(text: str | None) -> str:
    return f"prompt: {text}" if text else "prompt"


def _parse_init(obj: Mapping[str, Any]) -> _Parsed:
    model = _name(obj.get("model"), "") or None
    cwd = bound(obj["cwd"]) if _str(obj.get("cwd")) else None
    tools = obj.get("tools")
    problems = []
    for server in _list(obj.get("mcp_servers")):
        if isinstance(server, dict):
            status = _str(server.get("status"))
            if status and status not in ("connected", "pending"):
                problems.append(bound(f"{_name(server.get('name'), '?')} {status}", 80))
    problems = problems[:_MAX_LISTED]
    parts = ["init", *(part for part in (model, cwd) if part)]
    if problems:
        parts.append("MCP " + ", ".join(problems))
    agent = _drop_none(
        {
            "event": "init",
            "sessionId": _name(obj.get("session_id"), "") or None,
            "model": model,
            "cwd": cwd,
            "permissionMode": _name(obj.get("permissionMode"), "") or None,
            "version": _name(obj.get("claude_code_version"), "") or None,
            "tools": len(tools) if isinstance(tools, list) else None,
            "mcpProblems": problems or None,
        }
    )
    event = Init(model=model, cwd=cwd, session_id=agent.get("sessionId"))
    return ("warn" if problems else "info"), " · ".join(parts), agent, event


def _usage(value: object) -> Usage | None:
    if not isinstance(value, dict):
        return None
    return Usage(
        input=_int(value.get("input_tokens")) or 0,
        output=_int(value.get("output_tokens")) or 0,
        cache_read=_int(value.get("cache_read_input_tokens")) or 0,
        cache_creation=_int(value.get("cache_creation_input_tokens")) or 0,
    )


def _parse_assistant(obj: Mapping[str, Any]) -> _Parsed:
    message = _dict(obj.get("message"))
    parent = _parent(obj)
    parts: list[str] = []
    tools: list[ToolCall] = []
    kinds: set[str] = set()
    for block in _blocks(message.get("content")):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            text = _str(block.get("text"))
            line = first_line(text) if text else ""
            if line:
                parts.append(line)
                kinds.add("text")
        elif kind in ("thinking", "redacted_thinking"):
            thought = _str(block.get("thinking"))
            line = first_line(thought) if thought else ""
            parts.append(f"thinking: {line}" if line else "thinking")
            kinds.add("thinking")
        elif kind in ("tool_use", "server_tool_use"):
            name = _name(block.get("name"), "tool")
            tool = ToolCall(
                id=_name(block.get("id"), "") or None,
                name=name,
                summary=tool_summary(name, block.get("input")),
            )
            tools.append(tool)
            parts.append(_tool_line(tool))
    if tools:
        event_name = "tool_use"
    elif "text" in kinds:
        event_name = "text"
    elif "thinking" in kinds:
        event_name = "thinking"
    else:
        event_name = "message"
    text = " · ".join(parts)
    error = _error_text(obj.get("error"))
    if error:
        level = "error"
        line = f"✗ {error}: {text}" if text else f"✗ {error}"
    else:
        level = "debug" if event_name == "thinking" else "info"
        line = text or "assistant message"
    message_id = _name(message.get("id"), "") or None
    agent = _drop_none(
        {
            "event": event_name,
            "messageId": message_id,
            "parentToolUseId": bound(parent) if parent else None,
            "tools": [_tool_fields(tool) for tool in tools[:_MAX_LISTED]] or None,
            "error": error,
            "stopReason": _name(message.get("stop_reason"), "") or None,
        }
    )
    event = AssistantMessage(
        message_id=message_id,
        parent_tool_use_id=agent.get("parentToolUseId"),
        model=_name(message.get("model"), "") or None,
        usage=_usage(message.get("usage")),
        tools=tuple(tools),
        error=bound(f"{error}: {text}") if error and text else error,
    )
    return level, _sub(parent, line), agent, event


def _parse_user(obj: Mapping[str, Any]) -> _Parsed:
    message = _dict(obj.get("message"))
    parent = _parent(obj)
    parent_field = bound(parent) if parent else None
    results: list[ToolResult] = []
    texts: list[str] = []
    for block in _blocks(message.get("content")):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_result":
            results.append(
                ToolResult(
                    tool_use_id=_name(block.get("tool_use_id"), "") or None,
                    is_error=block.get("is_error") is True,
                    text=first_line(_content_text(block.get("content"))),
                )
            )
        elif kind == "text":
            text = _str(block.get("text"))
            line = first_line(text) if text else ""
            if line:
                texts.append(line)
    if results:
        parts = [
            (f"✗ tool error: {r.text}" if r.text else "✗ tool error")
            if r.is_error
            else (f"✓ {r.text}" if r.text else "✓ (no output)")
            for r in results
        ]
        agent = _drop_none(
            {
                "event": "tool_result",
                "results": [
                    _drop_none({"toolUseId": r.tool_use_id, "isError": r.is_error})
                    for r in results[:_MAX_LISTED]
                ],
                "parentToolUseId": parent_field,
            }
        )
        level = "error" if any(r.is_error for r in results) else "info"
        event: AgentEvent = ToolResults(results=tuple(results), parent_tool_use_id=parent_field)
        return level, _sub(parent, " · ".join(parts)), agent, event
    agent = _drop_none({"event": "prompt", "parentToolUseId": parent_field})
    line = _prompt_line(" · ".join(texts)) if texts else "user message"
    return "info", _sub(parent, line), agent, Prompt(parent_tool_use_id=parent_field)


def _parse_api_retry(obj: Mapping[str, Any]) -> _Parsed:
    attempt = _int(obj.get("attempt"))
    limit = _int(obj.get("max_retries"))
    delay = _int(obj.get("retry_delay_ms"))
    status = _int(obj.get("error_status"))
    error = _error_text(obj.get("error"))
    parts = ["retrying"]
    if attempt is not None:
        parts.append(f"attempt {attempt}/{limit}" if limit is not None else f"attempt {attempt}")
    if delay is not None:
        parts[-1] += f" in {_seconds(delay / 1000)}"
    cause = " ".join(str(part) for part in (status, error) if part is not None)
    if cause:
        parts.append(cause)
    agent = _drop_none(
        {
            "event": "retry",
            "attempt": attempt,
            "maxRetries": limit,
            "delayMs": delay,
            "errorStatus": status,
            "error": error,
        }
    )
    retry = f"retry {attempt}/{limit}" if attempt is not None and limit is not None else ""
    summary = " · ".join(part for part in (f"API error {cause}".strip(), retry) if part)
    parent = _parent(obj)
    event = ApiRetry(error=bound(summary), parent_tool_use_id=bound(parent) if parent else None)
    return "warn", _sub(parent, " · ".join(parts)), agent, event


def _parse_status(obj: Mapping[str, Any]) -> _Parsed:
    status = _name(obj.get("status"), "") or None
    agent = _drop_none({"event": "status", "status": status})
    return (
        "info",
        f"status · {status}" if status else "status cleared",
        agent,
        SystemStatus(status=status),
    )


def _parse_compact(obj: Mapping[str, Any]) -> _Parsed:
    meta = _dict(obj.get("compact_metadata"))
    trigger = _name(meta.get("trigger"), "") or None
    tokens = _int(meta.get("pre_tokens"))
    parts = ["compacted context", *(p for p in (trigger,) if p)]
    if tokens is not None:
        parts.append(f"{tokens} tokens before")
    agent = _drop_none({"event": "compact", "trigger": trigger, "preTokens": tokens})
    return "info", " · ".join(parts), agent, SystemStatus(status="compacted")


def _parse_other(obj: Mapping[str, Any]) -> _Parsed:
    kind = _name(obj.get("type"), "?")
    subtype = _name(obj.get("subtype"), "") or None
    agent = _drop_none({"event": "other", "type": kind, "subtype": subtype})
    message = f"{kind} · {subtype}" if subtype else kind
    return "info", message, agent, Other(type=kind, subtype=subtype)


_SYSTEM: Final[dict[str, Callable[[Mapping[str, Any]], _Parsed]]] = {
    "init": _parse_init,
    "api_retry": _parse_api_retry,
    "status": _parse_status,
    "compact_boundary": _parse_compact,
}


def _parse_system(obj: Mapping[str, Any]) -> _Parsed:
    subtype = obj.get("subtype")
    parser = _SYSTEM.get(subtype) if isinstance(subtype, str) else None
    return (parser or _parse_other)(obj)


def _parse_tool_progress(obj: Mapping[str, Any]) -> _Parsed:
    tool_id = _name(obj.get("tool_use_id"), "") or None
    name = _name(obj.get("tool_name"), "") or None
    elapsed = _num(obj.get("elapsed_time_seconds"))
    line = f"{name or 'tool'} running"
    if elapsed is not None:
        line += f" · {_seconds(elapsed)}"
    parent = _parent(obj)
    agent = _drop_none(
        {"event": "tool_progress", "toolUseId": tool_id, "tool": name, "elapsedS": elapsed}
    )
    event = ToolProgress(
        tool_use_id=tool_id,
        tool_name=name,
        elapsed_seconds=elapsed,
        parent_tool_use_id=bound(parent) if parent else None,
    )
    return "debug", _sub(parent, line), agent, event


def _reset_time(value: object) -> str | None:
    """``resetsAt``: Unix seconds (as Claude Code sends it) or a string."""
    seconds = _num(value, cap=253402300799.0)
    if seconds is not None:
        return iso_wall(seconds)
    return _name(value, "") or None


_RATE_LIMIT_LINES: Final[dict[str, tuple[str, str]]] = {
    "allowed": ("debug", "rate limit · allowed"),
    "allowed_warning": ("warn", "rate limit warning"),
    "rejected": ("error", "rate limit reached"),
}


def _parse_rate_limit(obj: Mapping[str, Any]) -> _Parsed:
    info = _dict(obj.get("rate_limit_info"))
    status = _name(info.get("status"), "") or None
    resets = _reset_time(info.get("resetsAt"))
    utilization = _num(info.get("utilization"))
    level, line = _RATE_LIMIT_LINES.get(status or "", ("info", f"rate limit · {status}"))
    parts = [line]
    if utilization is not None and utilization <= 1 and status != "allowed":
        parts.append(f"{utilization:.0%} used")
    if resets and status != "allowed":
        parts.append(f"resets {resets}")
    agent = _drop_none(
        {"event": "rate_limit", "status": status, "resetsAt": resets, "utilization": utilization}
    )
    return level, " · ".join(parts), agent, RateLimit(status=status, resets_at=resets)


def _parse_stream_event(obj: Mapping[str, Any]) -> _Parsed:
    event = _dict(obj.get("event"))
    kind = _name(event.get("type"), "") or None
    delta = _dict(event.get("delta"))
    text = _str(delta.get("text")) or _str(delta.get("thinking"))
    line = first_line(text) if text else ""
    parent = _parent(obj)
    agent = _drop_none({"event": "partial", "type": kind})
    message = _sub(parent, line or f"partial · {kind or 'event'}")
    return "debug", message, agent, Partial(parent_tool_use_id=bound(parent) if parent else None)


def _parse_result(obj: Mapping[str, Any]) -> _Parsed:
    subtype = _name(obj.get("subtype"), "") or None
    failed = obj.get("is_error") is True or (subtype or "").startswith("error")
    duration = _int(obj.get("duration_ms"))
    turns = _int(obj.get("num_turns"))
    cost = _num(obj.get("total_cost_usd"))
    if cost is None:
        cost = _num(obj.get("cost_usd"))  # older versions
    raw_text = _str(obj.get("result"))
    errors = [text for text in map(_error_text, _list(obj.get("errors"))) if text]
    denials = obj.get("permission_denials")
    error = None
    if failed:
        error = errors[0] if errors else (first_line(raw_text) if raw_text else None)
        error = error or subtype or "error"
    parts = ["failed" if failed else "done"]
    if failed:
        parts.append(subtype if subtype and subtype != "success" else first_line(error or "", 80))
    if turns is not None:
        parts.append(f"{turns} turn" if turns == 1 else f"{turns} turns")
    if cost is not None:
        parts.append(_dollars(cost))
    if duration is not None:
        parts.append(_seconds(duration / 1000))
    agent = _drop_none(
        {
            "event": "result",
            "subtype": subtype,
            "isError": failed,
            "durationMs": duration,
            "durationApiMs": _int(obj.get("duration_api_ms")),
            "turns": turns,
            "costUsd": cost,
            "terminalReason": _name(obj.get("terminal_reason"), "") or None,
            "permissionDenials": len(denials) if isinstance(denials, list) else None,
            "errors": errors[:_MAX_LISTED] or None,
        }
    )
    event = Result(
        failed=failed,
        subtype=subtype,
        duration_ms=duration,
        num_turns=turns,
        cost_usd=cost,
        text=bound(raw_text) if raw_text else None,
        error=bound(error) if error else None,
    )
    return ("error" if failed else "info"), " · ".join(parts), agent, event


_PARSERS: Final[dict[str, Callable[[Mapping[str, Any]], _Parsed]]] = {
    "system": _parse_system,
    "assistant": _parse_assistant,
    "user": _parse_user,
    "tool_progress": _parse_tool_progress,
    "rate_limit_event": _parse_rate_limit,
    "stream_event": _parse_stream_event,
    "result": _parse_result,
}

# An object is Claude Code's when it carries a ``session_id`` (every line
# of stream-json does), or, for the documented types, when it has that
# type's shape. A structured log of some other program that happens to have
# a ``type`` field stays an ordinary log line.
_SHAPES: Final[dict[str, Callable[[Mapping[str, Any]], bool]]] = {
    "system": lambda o: isinstance(o.get("subtype"), str),
    "assistant": lambda o: isinstance(o.get("message"), dict),
    "user": lambda o: isinstance(o.get("message"), dict),
    "tool_progress": lambda o: isinstance(o.get("tool_use_id"), str),
    "rate_limit_event": lambda o: isinstance(o.get("rate_limit_info"), dict),
    "stream_event": lambda o: isinstance(o.get("event"), dict),
    "result": lambda o: isinstance(o.get("subtype"), str) and "num_turns" in o,
}


def _decode(line: str) -> dict[str, Any] | None:
    if not detect(line):
        return None
    try:
        obj = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError, UnicodeError):
        return None
    return obj if isinstance(obj, dict) else None


def parse(line: str, *, wall: float) -> AgentEntry | None:
    """The entry for one ``stream-json`` line, or None if it is not one.

    ``wall`` is the line's time; the stream carries none of its own, and
    parsing does not need it today (the summary stamps tool starts).
    """
    obj = _decode(line)
    if obj is None:
        return None
    kind = obj.get("type")
    if not isinstance(kind, str):
        return None
    shape = _SHAPES.get(kind)
    if not isinstance(obj.get("session_id"), str) and (shape is None or not shape(obj)):
        return None
    level, message, agent, event = _PARSERS.get(kind, _parse_other)(obj)
    return AgentEntry(
        level=level,
        message=_message(message),
        data={"agent": agent, "raw": obj},
        event=event,
    )


# --- hooks ---------------------------------------------------------------------


def _hook_tool(payload: Mapping[str, Any]) -> ToolCall | None:
    name = _str(payload.get("tool_name"))
    if name is None:
        return None
    name = bound(name, _NAME_CHARS)
    return ToolCall(
        id=_name(payload.get("tool_use_id"), "") or None,
        name=name,
        summary=tool_summary(name, payload.get("tool_input")),
    )


_INPUT_NOTIFICATIONS: Final = frozenset({"idle_prompt", "elicitation_dialog"})
_HookLine = tuple[str, str]  # level, message


def _with(line: str, detail: str | None) -> str:
    return f"{line} · {detail}" if detail else line


def _payload_line(payload: Mapping[str, Any], key: str) -> str | None:
    text = _str(payload.get(key))
    return (first_line(text) or None) if text else None


def _tool_text(event: Hook) -> str:
    return _tool_line(event.tool) if event.tool else "tool"


def _line_notification(payload: Mapping[str, Any], event: Hook) -> _HookLine:
    detail = _payload_line(payload, "message") or event.notification_type
    if event.notification_type == "permission_prompt":
        return "warn", _with("waiting for permission", detail)
    if event.notification_type in _INPUT_NOTIFICATIONS:
        return "warn", _with("waiting for input", detail)
    return "info", _with("notification", detail)


def _line_tool_failure(payload: Mapping[str, Any], event: Hook) -> _HookLine:
    detail = event.error or _tool_text(event)
    return "error", _sub("agent" if event.subagent else None, f"✗ tool error: {detail}")


_HOOK_LINES: Final[dict[str, Callable[[Mapping[str, Any], Hook], _HookLine]]] = {
    "SessionStart": lambda p, e: ("info", _with("session start", e.source)),
    "SessionEnd": lambda p, e: ("info", _with("session end", _payload_line(p, "reason"))),
    "UserPromptSubmit": lambda p, e: ("info", _prompt_line(_payload_line(p, "prompt"))),
    "PreToolUse": lambda p, e: ("info", _sub("agent" if e.subagent else None, _tool_text(e))),
    "PostToolUse": lambda p, e: (
        "info",
        _sub("agent" if e.subagent else None, f"✓ {_tool_text(e)}"),
    ),
    "PostToolUseFailure": _line_tool_failure,
    "PermissionRequest": lambda p, e: ("warn", f"waiting for permission · {_tool_text(e)}"),
    "Notification": _line_notification,
    "Stop": lambda p, e: (
        "info",
        _with("turn ended", _payload_line(p, "last_assistant_message")),
    ),
    "StopFailure": lambda p, e: (
        "error",
        f"✗ turn failed: {e.error}" if e.error else "✗ turn failed",
    ),
    "SubagentStart": lambda p, e: ("info", _with("subagent start", _payload_line(p, "agent_type"))),
    "SubagentStop": lambda p, e: ("info", _with("subagent stop", _payload_line(p, "agent_type"))),
    "PreCompact": lambda p, e: ("info", _with("compacting", _payload_line(p, "trigger"))),
    "PostCompact": lambda p, e: ("info", "compacted context"),
}


def _hook_line(payload: Mapping[str, Any], event: Hook) -> _HookLine:
    line = _HOOK_LINES.get(event.name)
    return line(payload, event) if line else ("info", f"hook · {event.name}")


def parse_hook(payload: object, *, wall: float) -> AgentEntry:
    """The entry for one hook call's JSON body (any value: never raises)."""
    fields = _dict(payload)
    name = _name(fields.get("hook_event_name"), "unknown")
    tool = _hook_tool(fields)
    error = _error_text(fields.get("error"))
    if error is None and name == "PostToolUseFailure":
        response = fields.get("tool_response")
        error = _error_text(response) or (first_line(_content_text(response)) or None)
    event = Hook(
        name=name,
        tool=tool,
        subagent=_str(fields.get("agent_id")) is not None,
        notification_type=_name(fields.get("notification_type"), "") or None,
        source=_name(fields.get("source"), "") or None,
        error=error,
        cwd=bound(fields["cwd"]) if _str(fields.get("cwd")) else None,
        model=_name(fields.get("model"), "") or None,
    )
    level, message = _hook_line(fields, event)
    agent = _drop_none(
        {
            "event": "hook",
            "hook": name,
            "tool": tool.name if tool else None,
            "summary": (tool.summary or None) if tool else None,
            "toolUseId": tool.id if tool else None,
            "notificationType": event.notification_type,
            "source": event.source,
            "reason": _name(fields.get("reason"), "") or None,
            "agentType": _name(fields.get("agent_type"), "") or None,
            "error": error,
        }
    )
    return AgentEntry(
        level=level,
        message=_message(message),
        data={"agent": agent, "raw": payload},
        event=event,
    )


# --- the summary ---------------------------------------------------------------


class _In(enum.Enum):
    """What an event means for the state (one per event, see the table)."""

    START = enum.auto()  # system/init, SessionStart: a run begins
    PROMPT = enum.auto()  # a human's prompt: a new turn, even after the end
    ACTIVE = enum.auto()  # main-agent output, a tool's result, Stop
    NOISE = enum.auto()  # output that says nothing about the state
    TOOL = enum.auto()  # a main-agent tool call starts (or still runs)
    RETRY = enum.auto()  # system/api_retry
    PERMISSION = enum.auto()  # PermissionRequest, Notification permission_prompt
    INPUT = enum.auto()  # Notification idle_prompt / elicitation_dialog
    SUCCESS = enum.auto()  # a result, SessionEnd, exit 0
    FAILURE = enum.auto()  # a failed result, StopFailure, exit != 0 without result
    SILENT = enum.auto()  # runtime: no output for AGENT_SILENT_AFTER
    LOST = enum.auto()  # runtime: its producer is gone


class _Go(enum.Enum):
    SAME = "same"  # stay
    BUSY = "busy"  # ``tool`` while a main tool call is open, else ``working``


# The transitions, as data: a column per state, a row per input; a cell is
# the next state, ``same`` (stay) or ``busy`` (``tool`` while a main-agent
# tool call is open, else ``working``). The ended states are left only by a
# new run (``start``) or a human's new prompt; a late hook or the exit of
# the container after the result changes nothing.
_TABLE: Final = """
            starting working  tool     waiting  retrying silent   lost     done     failed
start       starting starting starting starting starting starting starting starting starting
prompt      busy     busy     busy     busy     busy     busy     busy     busy     busy
active      busy     busy     busy     busy     busy     busy     busy     same     same
noise       same     same     same     same     same     busy     busy     same     same
tool        tool     tool     tool     tool     tool     tool     tool     same     same
retry       retrying retrying retrying retrying retrying retrying retrying same     same
permission  waiting  waiting  waiting  waiting  waiting  waiting  waiting  same     same
input       waiting  waiting  waiting  waiting  waiting  waiting  waiting  same     same
success     done     done     done     done     done     done     done     same     same
failure     failed   failed   failed   failed   failed   failed   failed   same     same
silent      silent   silent   silent   same     silent   same     same     same     same
lost        lost     lost     lost     lost     lost     lost     same     same     same
"""


def _read_table(text: str) -> dict[tuple[AgentState, _In], AgentState | _Go]:
    header, *rows = text.split("\n")[1:-1]
    states = [AgentState(name) for name in header.split()]
    table: dict[tuple[AgentState, _In], AgentState | _Go] = {}
    for row in rows:
        name, *cells = row.split()
        for state, cell in zip(states, cells, strict=True):
            target = _Go(cell) if cell in ("same", "busy") else AgentState(cell)
            table[(state, _In[name.upper()])] = target
    if len(table) != len(AgentState) * len(_In):
        raise RuntimeError("the transition table needs a cell for every state and input")
    return table


_TRANSITIONS: Final = _read_table(_TABLE)
_ENDED: Final = frozenset({AgentState.DONE, AgentState.FAILED})
_SIGNALS: Final = {130: "SIGINT", 134: "SIGABRT", 137: "SIGKILL", 143: "SIGTERM"}


@dataclasses.dataclass(slots=True)
class _OpenTool:
    name: str
    summary: str
    since: str


class ClaudeCodeSummary:
    """One Claude Code session's ``metadata.agent`` (SPEC §7).

    ``apply`` folds in the event of each entry (``parse`` or
    ``parse_hook``); ``mark_*`` are the runtime's observations; every one
    returns True when ``to_dict()`` changed. ``should_publish(now)`` is the
    throttle: a change is due at once when ``state`` (or ``waitingFor``)
    changed since the last publication, else at most once per
    ``min_interval`` seconds; ``publish_deadline()`` says when a held-back
    change becomes due.
    """

    __slots__ = (
        "_awaited",
        "_cwd",
        "_dirty",
        "_done_cost",
        "_done_turns",
        "_interval",
        "_last_error",
        "_last_event_at",
        "_last_publish",
        "_max_ids",
        "_max_tools",
        "_model",
        "_open",
        "_published",
        "_result",
        "_run_cost",
        "_run_result_turns",
        "_run_turns",
        "_state",
        "_tokens",
        "_turn_ids",
        "_usage",
        "_waiting_for",
    )

    def __init__(
        self, *, min_interval: float = 1.0, max_message_ids: int = 1024, max_tools: int = 32
    ) -> None:
        if min_interval < 0 or max_message_ids < 1 or max_tools < 1:
            raise ValueError("min_interval must be >= 0, max_message_ids and max_tools >= 1")
        self._interval = min_interval
        self._max_ids = max_message_ids
        self._max_tools = max_tools
        self._state = AgentState.STARTING
        self._model: str | None = None
        self._cwd: str | None = None
        # Tokens: the largest usage seen per message id (Claude Code repeats
        # a message's usage on every line of it), summed in ``_tokens``.
        self._usage: dict[str, tuple[int, int, int, int]] = {}
        self._tokens = (0, 0, 0, 0)  # input, output, cacheRead, cacheCreation
        # Turns and cost: runs already ended (``_done_*``) plus this run,
        # counted live from main-agent message ids until its result says.
        self._turn_ids: dict[str, None] = {}
        self._done_turns = 0
        self._done_cost: float | None = None
        self._run_turns = 0
        self._run_result_turns: int | None = None
        self._run_cost: float | None = None
        # Open main-agent tool calls by tool_use_id, oldest first; the
        # newest is ``tool``.
        self._open: dict[str, _OpenTool] = {}
        self._waiting_for: str | None = None
        self._awaited: str | None = None  # the tool a permission prompt is for
        self._last_error: str | None = None
        self._result: dict[str, Any] | None = None
        self._dirty = False
        self._published: tuple[AgentState, str | None] | None = None
        self._last_publish: float | None = None
        self._last_event_at: float | None = None

    # --- reading ---

    @property
    def kind(self) -> str:
        return KIND

    @property
    def state(self) -> AgentState:
        return self._state

    @property
    def last_event_at(self) -> float | None:
        """``now`` of the last event applied, None before any."""
        return self._last_event_at

    def _turns(self) -> int:
        run = self._run_result_turns if self._run_result_turns is not None else self._run_turns
        return self._done_turns + run

    def _cost(self) -> float | None:
        if self._done_cost is None and self._run_cost is None:
            return None
        return round((self._done_cost or 0.0) + (self._run_cost or 0.0), 6)

    def _tool(self) -> _OpenTool | None:
        return next(reversed(self._open.values())) if self._open else None

    def to_dict(self) -> dict[str, Any]:
        tool = self._tool()
        inp, out, cache_read, cache_creation = self._tokens
        return {
            "kind": KIND,
            "state": self._state.value,
            "model": self._model,
            "cwd": self._cwd,
            "turns": self._turns(),
            "costUsd": self._cost(),
            "tokens": {
                "input": inp,
                "output": out,
                "cacheRead": cache_read,
                "cacheCreation": cache_creation,
            },
            "tool": (
                {"name": tool.name, "summary": tool.summary, "since": tool.since} if tool else None
            ),
            "waitingFor": self._waiting_for,
            "lastError": self._last_error,
            "result": dict(self._result) if self._result is not None else None,
        }

    def _key(self) -> tuple[object, ...]:
        # What ``to_dict`` shows, cheaply: ``apply`` compares it before and
        # after every event to say whether the summary changed.
        run_turns = self._run_result_turns
        open_tools = self._open
        return (
            self._state,
            self._model,
            self._cwd,
            self._done_turns + (self._run_turns if run_turns is None else run_turns),
            self._done_cost,
            self._run_cost,
            self._tokens,
            next(reversed(open_tools.values())) if open_tools else None,
            self._waiting_for,
            self._last_error,
            self._result,
        )

    # --- the throttle (SPEC §7: at most once a second unless state changes) ---

    def should_publish(self, now: float) -> bool:
        if not self._dirty:
            return False
        key = (self._state, self._waiting_for)
        last = self._last_publish
        if key != self._published or last is None or now >= last + self._interval:
            self._dirty = False
            self._published = key
            self._last_publish = now
            return True
        return False

    def publish_deadline(self) -> float | None:
        """``now`` at which a held-back change is due (``-inf``: at once)."""
        if not self._dirty:
            return None
        last = self._last_publish
        if last is None or (self._state, self._waiting_for) != self._published:
            return -math.inf
        return last + self._interval

    # --- the runtime's observations ---

    def _observe(self, move: _In, *, error: str | None = None) -> bool:
        before = self._key()
        if error is not None:
            self._last_error = error
        self._go(move)
        return self._changed(before)

    def mark_active(self) -> bool:
        return self._observe(_In.NOISE)

    def mark_silent(self) -> bool:
        return self._observe(_In.SILENT)

    def mark_lost(self) -> bool:
        return self._observe(_In.LOST)

    def mark_exited(self, exit_code: int | None) -> bool:
        """Without a result, exit 0 is ``done`` and anything else ``failed``
        with the code in ``lastError``; after a result it changes nothing."""
        if self._state in _ENDED:
            return False
        if isinstance(exit_code, int) and not isinstance(exit_code, bool) and exit_code == 0:
            return self._observe(_In.SUCCESS)
        if isinstance(exit_code, int) and not isinstance(exit_code, bool):
            signal = _SIGNALS.get(exit_code)
            code = f"{exit_code} ({signal})" if signal else str(exit_code)
            error = bound(f"exited with code {code} before a result")
        else:
            error = "exited before a result"
        return self._observe(_In.FAILURE, error=error)

    # --- events ---

    def apply(self, event: AgentEvent, *, now: float, wall: float) -> bool:
        handler = _HANDLERS.get(type(event))
        if handler is None:
            return False  # another kind's event
        before = self._key()
        handler(self, event, wall)
        self._last_event_at = now
        return self._changed(before)

    def _changed(self, before: tuple[object, ...]) -> bool:
        if self._key() == before:
            return False
        self._dirty = True
        return True

    def _go(self, move: _In, tool_ids: tuple[str, ...] = ()) -> None:
        # Waiting for a permission on one tool, news of other tools is noise.
        if (
            tool_ids
            and self._state is AgentState.WAITING
            and self._waiting_for == "permission"
            and self._awaited is not None
            and self._awaited not in tool_ids
            and move in (_In.ACTIVE, _In.TOOL)
        ):
            move = _In.NOISE
        target = _TRANSITIONS[(self._state, move)]
        if target is _Go.SAME:
            return
        if isinstance(target, _Go):  # busy
            target = AgentState.TOOL if self._open else AgentState.WORKING
        if target is not AgentState.WAITING:
            self._waiting_for = None
            self._awaited = None
        if target in _ENDED:
            self._open.clear()
        self._state = target

    def _wait(self, move: _In, reason: str, tool_id: str | None) -> None:
        was_waiting = self._state is AgentState.WAITING and self._waiting_for == reason
        self._go(move)
        if self._state is AgentState.WAITING:
            if not (was_waiting and tool_id is None):
                self._awaited = tool_id
            self._waiting_for = reason

    def _start(self) -> None:
        if self._state in _ENDED:
            # A new run in the same session: the last one's totals are kept.
            self._done_turns = self._turns()
            self._done_cost = self._cost()
            self._run_turns = 0
            self._run_result_turns = None
            self._run_cost = None
            self._result = None
            self._last_error = None
        self._go(_In.START)

    def _open_tool(self, tool: ToolCall, wall: float) -> str:
        key = tool.id or self._anonymous_key(tool.name)
        if self._state in _ENDED:
            return key
        if key not in self._open:
            self._open[key] = _OpenTool(name=tool.name, summary=tool.summary, since=iso_wall(wall))
            while len(self._open) > self._max_tools:
                del self._open[next(iter(self._open))]
        return key

    def _anonymous_key(self, name: str) -> str:
        # A hook without a tool_use_id: the newest open call of that tool is
        # the one it speaks of, if any.
        for key in reversed(self._open):
            if key.startswith("#") and self._open[key].name == name:
                return key
        return f"#{len(self._open)}:{name}"

    def _close_tool(self, tool_id: str | None, name: str | None) -> tuple[str | None, str | None]:
        """Close by id, else the newest open call of that tool; → (key, name)."""
        if tool_id is not None:
            closed = self._open.pop(tool_id, None)
            return tool_id, closed.name if closed else name
        for key in reversed(self._open):
            if self._open[key].name == name:
                return key, self._open.pop(key).name
        return None, name

    def _count_usage(self, message_id: str | None, usage: Usage) -> None:
        values = (usage.input, usage.output, usage.cache_read, usage.cache_creation)
        if message_id is None:
            seen = (0, 0, 0, 0)
        else:
            known = self._usage.get(message_id)
            if known == values:
                return  # the same message again, as Claude Code repeats it
            if known is None:
                seen = (0, 0, 0, 0)
                while len(self._usage) >= self._max_ids:
                    del self._usage[next(iter(self._usage))]
            else:
                seen = known
                values = (
                    max(seen[0], values[0]),
                    max(seen[1], values[1]),
                    max(seen[2], values[2]),
                    max(seen[3], values[3]),
                )
            self._usage[message_id] = values
        total = self._tokens
        self._tokens = (
            total[0] + values[0] - seen[0],
            total[1] + values[1] - seen[1],
            total[2] + values[2] - seen[2],
            total[3] + values[3] - seen[3],
        )

    def _count_turn(self, message_id: str) -> None:
        if message_id in self._turn_ids:
            return
        self._turn_ids[message_id] = None
        while len(self._turn_ids) > self._max_ids:
            del self._turn_ids[next(iter(self._turn_ids))]
        self._run_turns += 1

    def _set_model(self, model: str | None) -> None:
        # ``<synthetic>`` marks messages Claude Code made up itself (errors).
        if model and not model.startswith("<"):
            self._model = model

    # One handler per event type; ``_HANDLERS`` below is the dispatch table.

    def _on_init(self, event: Init, wall: float) -> None:
        self._start()
        self._set_model(event.model)
        if event.cwd:
            self._cwd = event.cwd

    def _on_assistant(self, event: AssistantMessage, wall: float) -> None:
        if event.usage is not None:
            self._count_usage(event.message_id, event.usage)
        if event.parent_tool_use_id is not None:
            self._go(_In.NOISE)
            return
        if event.message_id is not None:
            self._count_turn(event.message_id)
        self._set_model(event.model)
        if event.error:
            self._last_error = event.error
        if event.tools:
            keys = tuple(self._open_tool(tool, wall) for tool in event.tools)
            self._go(_In.TOOL, keys)
        else:
            self._go(_In.ACTIVE)

    def _on_tool_results(self, event: ToolResults, wall: float) -> None:
        keys: list[str] = []
        for result in event.results:
            key, name = self._close_tool(result.tool_use_id, None)
            if key is not None:
                keys.append(key)
            if result.is_error and event.parent_tool_use_id is None:
                text = result.text or "tool error"
                self._last_error = bound(f"{name}: {text}" if name else text)
        if event.parent_tool_use_id is None:
            self._go(_In.ACTIVE, tuple(keys))
        else:
            self._go(_In.ACTIVE if self._awaited in keys else _In.NOISE)

    def _on_prompt(self, event: Prompt, wall: float) -> None:
        self._go(_In.PROMPT if event.parent_tool_use_id is None else _In.NOISE)

    def _on_retry(self, event: ApiRetry, wall: float) -> None:
        if event.parent_tool_use_id is not None:
            self._go(_In.NOISE)
            return
        self._last_error = event.error or self._last_error
        self._go(_In.RETRY)

    def _on_progress(self, event: ToolProgress, wall: float) -> None:
        if event.parent_tool_use_id is not None or event.tool_use_id is None:
            self._go(_In.NOISE)
            return
        elapsed = event.elapsed_seconds or 0.0
        tool = ToolCall(id=event.tool_use_id, name=event.tool_name or "tool", summary="")
        key = self._open_tool(tool, wall - elapsed)
        self._go(_In.TOOL, (key,))

    def _on_rate_limit(self, event: RateLimit, wall: float) -> None:
        if event.status == "rejected":
            resets = f", resets {event.resets_at}" if event.resets_at else ""
            self._last_error = bound(f"rate limit reached{resets}")
        self._go(_In.NOISE)

    def _on_partial(self, event: Partial, wall: float) -> None:
        self._go(_In.ACTIVE if event.parent_tool_use_id is None else _In.NOISE)

    def _on_noise(self, event: AgentEvent, wall: float) -> None:
        self._go(_In.NOISE)

    def _on_result(self, event: Result, wall: float) -> None:
        if event.num_turns is not None:
            self._run_result_turns = event.num_turns
        if event.cost_usd is not None:
            self._run_cost = event.cost_usd
        self._result = {
            "subtype": event.subtype,
            "isError": event.failed,
            "durationMs": event.duration_ms,
            "text": event.text,
        }
        if event.failed:
            self._last_error = event.error
            self._go(_In.FAILURE)
        else:
            self._go(_In.SUCCESS)

    def _on_hook(self, event: Hook, wall: float) -> None:
        if event.cwd:
            self._cwd = event.cwd
        self._set_model(event.model)
        _HOOKS.get(event.name, ClaudeCodeSummary._hook_noise)(self, event, wall)

    def _hook_noise(self, event: Hook, wall: float) -> None:
        self._go(_In.NOISE)

    def _hook_session_start(self, event: Hook, wall: float) -> None:
        # ``compact`` restarts the context, not the run.
        if event.source == "compact":
            self._go(_In.NOISE)
        else:
            self._start()

    def _hook_prompt(self, event: Hook, wall: float) -> None:
        self._go(_In.PROMPT)

    def _hook_pre_tool(self, event: Hook, wall: float) -> None:
        if event.subagent or event.tool is None:
            self._go(_In.NOISE)
            return
        self._go(_In.TOOL, (self._open_tool(event.tool, wall),))

    def _hook_post_tool(self, event: Hook, wall: float) -> None:
        tool = event.tool
        key, name = self._close_tool(tool.id if tool else None, tool.name if tool else None)
        failed = event.name == "PostToolUseFailure"
        if failed and not event.subagent:
            text = event.error or (tool.summary if tool else "") or "tool error"
            self._last_error = bound(f"{name}: {text}" if name else text)
        keys = (key,) if key is not None else ()
        if event.subagent:
            self._go(_In.ACTIVE if key is not None and key == self._awaited else _In.NOISE)
        else:
            self._go(_In.ACTIVE, keys)

    def _hook_permission(self, event: Hook, wall: float) -> None:
        tool = event.tool
        key = None
        if tool is not None:
            key = tool.id if event.subagent else self._open_tool(tool, wall)
        self._wait(_In.PERMISSION, "permission", key)

    def _hook_notification(self, event: Hook, wall: float) -> None:
        if event.notification_type == "permission_prompt":
            self._wait(_In.PERMISSION, "permission", None)
        elif event.notification_type in _INPUT_NOTIFICATIONS:
            self._wait(_In.INPUT, "input", None)
        else:
            self._go(_In.NOISE)

    def _hook_stop(self, event: Hook, wall: float) -> None:
        if self._state not in _ENDED:
            self._open.clear()  # the turn is over: no call of it is open
        self._go(_In.ACTIVE)

    def _hook_stop_failure(self, event: Hook, wall: float) -> None:
        if self._state not in _ENDED:
            self._last_error = event.error or "turn failed"
        self._go(_In.FAILURE)

    def _hook_session_end(self, event: Hook, wall: float) -> None:
        self._go(_In.SUCCESS)


_Handler = Callable[[ClaudeCodeSummary, Any, float], None]
_HANDLERS: Final[dict[type[AgentEvent], _Handler]] = {
    Init: ClaudeCodeSummary._on_init,
    AssistantMessage: ClaudeCodeSummary._on_assistant,
    ToolResults: ClaudeCodeSummary._on_tool_results,
    Prompt: ClaudeCodeSummary._on_prompt,
    ApiRetry: ClaudeCodeSummary._on_retry,
    ToolProgress: ClaudeCodeSummary._on_progress,
    RateLimit: ClaudeCodeSummary._on_rate_limit,
    SystemStatus: ClaudeCodeSummary._on_noise,
    Partial: ClaudeCodeSummary._on_partial,
    Result: ClaudeCodeSummary._on_result,
    Other: ClaudeCodeSummary._on_noise,
    Hook: ClaudeCodeSummary._on_hook,
}
_HOOKS: Final[dict[str, _Handler]] = {
    "SessionStart": ClaudeCodeSummary._hook_session_start,
    "UserPromptSubmit": ClaudeCodeSummary._hook_prompt,
    "PreToolUse": ClaudeCodeSummary._hook_pre_tool,
    "PostToolUse": ClaudeCodeSummary._hook_post_tool,
    "PostToolUseFailure": ClaudeCodeSummary._hook_post_tool,
    "PermissionRequest": ClaudeCodeSummary._hook_permission,
    "Notification": ClaudeCodeSummary._hook_notification,
    "Stop": ClaudeCodeSummary._hook_stop,
    "StopFailure": ClaudeCodeSummary._hook_stop_failure,
    "SessionEnd": ClaudeCodeSummary._hook_session_end,
}


# --- the kind ------------------------------------------------------------------


class ClaudeCodeKind:
    """Claude Code as an ``AgentKind``: stateless, one instance serves all."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return KIND

    def detect(self, line: str) -> bool:
        return detect(line)

    def parse(self, line: str, *, wall: float) -> AgentEntry | None:
        return parse(line, wall=wall)

    def parse_hook(self, payload: object, *, wall: float) -> AgentEntry:
        return parse_hook(payload, wall=wall)

    def new_summary(self) -> ClaudeCodeSummary:
        return ClaudeCodeSummary()

    def __repr__(self) -> str:
        return "CLAUDE_CODE"


CLAUDE_CODE: Final = ClaudeCodeKind()

"""Claude Code understood: stream-json lines and hooks → entries and the
agent summary (SPEC §7), from fixtures in the documented shapes
(``tests/fixtures/claude_code``; ids are fake, values invented)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import test_core_purity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcclog_core.agents import (
    CLAUDE_CODE,
    KINDS,
    LEVELS,
    MESSAGE_CHARS,
    SUMMARY_CHARS,
    AgentEntry,
    AgentEvent,
    AgentState,
    ClaudeCodeSummary,
    detect_agent,
    kind_named,
    parse_line,
)
from pcclog_core.agents import claude_code as cc
from pcclog_core.agents._base import first_line

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "claude_code"
AGENTS_SRC = test_core_purity.CORE / "agents"
WALL = 1767225600.0  # 2026-01-01T00:00:00Z: line i of a fixture is at WALL + i
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def lines_of(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def entry_of(line: str, wall: float) -> AgentEntry:
    entry = cc.parse(line, wall=wall)
    assert entry is not None, line
    return entry


def run(
    name: str, summary: ClaudeCodeSummary | None = None
) -> tuple[list[AgentEntry], list[str], ClaudeCodeSummary]:
    """Every line of a fixture through parse (or parse_hook) and one summary."""
    summary = summary or ClaudeCodeSummary()
    entries, states = [], []
    for i, line in enumerate(lines_of(name)):
        wall = WALL + i
        if name.startswith("hooks"):
            entry = cc.parse_hook(json.loads(line), wall=wall)
        else:
            entry = entry_of(line, wall)
        summary.apply(entry.event, now=float(i), wall=wall)
        entries.append(entry)
        states.append(summary.state.value)
    return entries, states, summary


def summary_of(**fields: Any) -> dict[str, Any]:
    """A ``metadata.agent`` with the defaults of a fresh summary."""
    agent: dict[str, Any] = {
        "kind": "claude-code",
        "state": "starting",
        "model": "claude-sonnet-4-5",
        "cwd": "/workspace",
        "turns": 0,
        "costUsd": None,
        "tokens": {"input": 0, "output": 0, "cacheRead": 0, "cacheCreation": 0},
        "tool": None,
        "waitingFor": None,
        "lastError": None,
        "result": None,
    }
    agent.update(fields)
    return agent


def tokens(i: int, o: int, cr: int, cc_: int) -> dict[str, int]:
    return {"input": i, "output": o, "cacheRead": cr, "cacheCreation": cc_}


def init_agent(session: str, **extra: Any) -> dict[str, Any]:
    agent = {
        "event": "init",
        "sessionId": session,
        "model": "claude-sonnet-4-5",
        "cwd": "/workspace",
        "permissionMode": "bypassPermissions",
        "version": "2.0.0",
        "tools": 7,
    }
    agent.update(extra)
    return agent


def tool_use(mid: str, tid: str, name: str, summary: str, **extra: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "event": "tool_use",
        "messageId": mid,
        "tools": [{"id": tid, "name": name, "summary": summary}],
        "stopReason": "tool_use",
    }
    agent.update(extra)
    return agent


def ok(tid: str, error: bool = False, **extra: Any) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "event": "tool_result",
        "results": [{"toolUseId": tid, "isError": error}],
    }
    agent.update(extra)
    return agent


# --- every fixture, entry by entry ---------------------------------------------

# (level, message, data.agent, state after the line)
EXPECTED: dict[str, list[tuple[str, str, dict[str, Any], str]]] = {
    "full_run.jsonl": [
        ("info", "init · claude-sonnet-4-5 · /workspace", init_agent("sess-full-0001"), "starting"),
        (
            "debug",
            "rate limit · allowed",
            {
                "event": "rate_limit",
                "status": "allowed",
                "resetsAt": "2026-01-01T00:00:00.000Z",
                "utilization": 0.12,
            },
            "starting",
        ),
        (
            "info",
            "I'll run the test suite first.",
            {"event": "text", "messageId": "msg_full_1"},
            "working",
        ),
        (
            "info",
            "Bash: pytest -q",
            tool_use("msg_full_1", "toolu_full_1", "Bash", "pytest -q"),
            "tool",
        ),
        ("info", "✓ ..............................", ok("toolu_full_1"), "working"),
        (
            "debug",
            "thinking: The tests pass; the bug must be in the reader.",
            {"event": "thinking", "messageId": "msg_full_2"},
            "working",
        ),
        (
            "info",
            "Read: /workspace/src/app/io.py",
            tool_use("msg_full_2", "toolu_full_2", "Read", "/workspace/src/app/io.py"),
            "tool",
        ),
        ("info", "✓ 1 import os", ok("toolu_full_2"), "working"),
        (
            "info",
            "Edit: /workspace/src/app/io.py",
            tool_use("msg_full_3", "toolu_full_3", "Edit", "/workspace/src/app/io.py"),
            "tool",
        ),
        (
            "info",
            "✓ The file /workspace/src/app/io.py has been updated.",
            ok("toolu_full_3"),
            "working",
        ),
        (
            "info",
            "Fixed the empty-input case; all 31 tests pass.",
            {"event": "text", "messageId": "msg_full_4", "stopReason": "end_turn"},
            "working",
        ),
        (
            "info",
            "done · 8 turns · $0.35 · 16 s",
            {
                "event": "result",
                "subtype": "success",
                "isError": False,
                "durationMs": 16200,
                "durationApiMs": 15010,
                "turns": 8,
                "costUsd": 0.3512,
                "permissionDenials": 0,
            },
            "done",
        ),
    ],
    "failing_tool.jsonl": [
        ("info", "init · claude-sonnet-4-5 · /workspace", init_agent("sess-fail-0002"), "starting"),
        (
            "info",
            "Bash: pytest -q tests/test_io.py",
            tool_use("msg_fail_1", "toolu_fail_1", "Bash", "pytest -q tests/test_io.py"),
            "tool",
        ),
        (
            "error",
            "✗ tool error: FAILED tests/test_io.py::test_empty - AssertionError",
            ok("toolu_fail_1", error=True),
            "working",
        ),
        (
            "info",
            "The empty case fails. Fixing it. · Edit: src/app/io.py",
            tool_use("msg_fail_2", "toolu_fail_2", "Edit", "src/app/io.py"),
            "tool",
        ),
        ("info", "✓ The file src/app/io.py has been updated.", ok("toolu_fail_2"), "working"),
        (
            "info",
            "Bash: pytest -q \\ …",  # a multi-line command says there is more
            tool_use("msg_fail_3", "toolu_fail_3", "Bash", "pytest -q \\ …"),
            "tool",
        ),
        ("info", "✓ (no output)", ok("toolu_fail_3"), "working"),
        (
            "info",
            "All tests pass now.",
            {"event": "text", "messageId": "msg_fail_4", "stopReason": "end_turn"},
            "working",
        ),
        (
            "info",
            "done · 4 turns · $0.12 · 41 s",
            {
                "event": "result",
                "subtype": "success",
                "isError": False,
                "durationMs": 41250,
                "durationApiMs": 39800,
                "turns": 4,
                "costUsd": 0.1234,
            },
            "done",
        ),
    ],
    "api_retry.jsonl": [
        (
            "info",
            "init · claude-opus-4-1 · /workspace",
            init_agent("sess-retry-0003", model="claude-opus-4-1"),
            "starting",
        ),
        (
            "warn",
            "retrying · attempt 1/10 in 2 s · 529 overloaded",
            {
                "event": "retry",
                "attempt": 1,
                "maxRetries": 10,
                "delayMs": 2000,
                "errorStatus": 529,
                "error": "overloaded",
            },
            "retrying",
        ),
        (
            "warn",
            "retrying · attempt 2/10 in 4.5 s · 500 Internal server error",
            {
                "event": "retry",
                "attempt": 2,
                "maxRetries": 10,
                "delayMs": 4500,
                "errorStatus": 500,
                "error": "Internal server error",
            },
            "retrying",
        ),
        (
            "info",
            "Hello after the retries.",
            {"event": "text", "messageId": "msg_retry_1", "stopReason": "end_turn"},
            "working",
        ),
        (
            "info",
            "done · 1 turn · $0.004 · 8.4 s",
            {
                "event": "result",
                "subtype": "success",
                "isError": False,
                "durationMs": 8400,
                "turns": 1,
                "costUsd": 0.004,
            },
            "done",
        ),
    ],
    "rate_limit.jsonl": [
        (
            "info",
            "init · claude-sonnet-4-5 · /workspace",
            init_agent("sess-limit-0004"),
            "starting",
        ),
        (
            "warn",
            "rate limit warning · 85% used · resets 2026-01-01T00:00:00.000Z",
            {
                "event": "rate_limit",
                "status": "allowed_warning",
                "resetsAt": "2026-01-01T00:00:00.000Z",
                "utilization": 0.85,
            },
            "starting",
        ),
        (
            "info",
            "Looking at the repository.",
            {"event": "text", "messageId": "msg_limit_1"},
            "working",
        ),
        (
            "error",
            "rate limit reached · resets 2026-01-01T01:00:00.000Z",
            {"event": "rate_limit", "status": "rejected", "resetsAt": "2026-01-01T01:00:00.000Z"},
            "working",
        ),
        (
            "error",
            "✗ rate_limit: API Error: Rate limit reached",
            {"event": "text", "messageId": "msg_limit_2", "error": "rate_limit"},
            "working",
        ),
        (
            "error",
            "failed · API Error: Rate limit reached · 2 turns · $0.02 · 3.1 s",
            {
                "event": "result",
                "subtype": "success",
                "isError": True,
                "durationMs": 3100,
                "turns": 2,
                "costUsd": 0.0191,
            },
            "failed",
        ),
    ],
    "subagent.jsonl": [
        ("info", "init · claude-sonnet-4-5 · /workspace", init_agent("sess-sub-0005"), "starting"),
        (
            "info",
            "Task: Find TODO comments",
            tool_use("msg_sub_main_1", "toolu_task_1", "Task", "Find TODO comments"),
            "tool",
        ),
        (
            "info",
            "↳ prompt: Find every TODO comment under src and list them.",
            {"event": "prompt", "parentToolUseId": "toolu_task_1"},
            "tool",
        ),
        (
            "info",
            "↳ Grep: TODO in src",
            tool_use(
                "msg_sub_child_1",
                "toolu_child_1",
                "Grep",
                "TODO in src",
                parentToolUseId="toolu_task_1",
            ),
            "tool",
        ),
        (
            "debug",
            "Task running · 30 s",
            {
                "event": "tool_progress",
                "toolUseId": "toolu_task_1",
                "tool": "Task",
                "elapsedS": 30.2,
            },
            "tool",
        ),
        (
            "info",
            "↳ ✓ src/app/io.py:12: # TODO handle empty input",
            ok("toolu_child_1", parentToolUseId="toolu_task_1"),
            "tool",
        ),
        (
            "info",
            "↳ Found one TODO, in src/app/io.py line 12.",
            {
                "event": "text",
                "messageId": "msg_sub_child_2",
                "parentToolUseId": "toolu_task_1",
                "stopReason": "end_turn",
            },
            "tool",
        ),
        ("info", "✓ Found one TODO, in src/app/io.py line 12.", ok("toolu_task_1"), "working"),
        (
            "info",
            "There is one TODO: src/app/io.py:12.",
            {"event": "text", "messageId": "msg_sub_main_2", "stopReason": "end_turn"},
            "working",
        ),
        (
            "info",
            "done · 2 turns · $0.08 · 1 min 4 s",
            {
                "event": "result",
                "subtype": "success",
                "isError": False,
                "durationMs": 64000,
                "turns": 2,
                "costUsd": 0.0815,
            },
            "done",
        ),
    ],
    "max_turns.jsonl": [
        (
            "info",
            "init · claude-sonnet-4-5 · /workspace",
            init_agent("sess-turns-0006"),
            "starting",
        ),
        (
            "info",
            "Bash: make test",
            tool_use("msg_turns_1", "toolu_turns_1", "Bash", "make test"),
            "tool",
        ),
        ("info", "✓ ok", ok("toolu_turns_1"), "working"),
        (
            "info",
            "Bash: make lint",
            tool_use("msg_turns_2", "toolu_turns_2", "Bash", "make lint"),
            "tool",
        ),
        (
            "error",
            "failed · error_max_turns · 2 turns · $0.05 · 5.3 s",
            {
                "event": "result",
                "subtype": "error_max_turns",
                "isError": True,
                "durationMs": 5300,
                "turns": 2,
                "costUsd": 0.0502,
                "terminalReason": "max_turns",
                "errors": ["Reached maximum number of turns (2)"],
            },
            "failed",
        ),
    ],
    "error_during_execution.jsonl": [
        ("info", "init · claude-sonnet-4-5 · /workspace", init_agent("sess-exec-0007"), "starting"),
        (
            "info",
            "Write: /workspace/out.bin",
            tool_use("msg_exec_1", "toolu_exec_1", "Write", "/workspace/out.bin"),
            "tool",
        ),
        (
            "error",
            "failed · error_during_execution · 1 turn · $0.0021 · 1.2 s",
            {
                "event": "result",
                "subtype": "error_during_execution",
                "isError": True,
                "durationMs": 1200,
                "turns": 1,
                "costUsd": 0.0021,
                "errors": ["ENOSPC: no space left on device"],
            },
            "failed",
        ),
    ],
    "killed.jsonl": [
        (
            "info",
            "init · claude-sonnet-4-5 · /workspace",
            init_agent("sess-killed-0008"),
            "starting",
        ),
        (
            "info",
            "Starting the long build.",
            {"event": "text", "messageId": "msg_killed_1"},
            "working",
        ),
        (
            "info",
            "Bash: make -j8 all",
            tool_use("msg_killed_1", "toolu_killed_1", "Bash", "make -j8 all"),
            "tool",
        ),
        (
            "debug",
            "Bash running · 30 s",
            {
                "event": "tool_progress",
                "toolUseId": "toolu_killed_1",
                "tool": "Bash",
                "elapsedS": 30.0,
            },
            "tool",
        ),
        (
            "debug",
            "Bash running · 1 min",
            {
                "event": "tool_progress",
                "toolUseId": "toolu_killed_1",
                "tool": "Bash",
                "elapsedS": 60.0,
            },
            "tool",
        ),
    ],
    "unknown_events.jsonl": [
        (
            "warn",
            "init · claude-sonnet-4-5 · /workspace · MCP jira failed",
            init_agent("sess-future-0009", mcpProblems=["jira failed"]),
            "starting",
        ),
        ("info", "status · compacting", {"event": "status", "status": "compacting"}, "starting"),
        (
            "info",
            "compacted context · auto · 151000 tokens before",
            {"event": "compact", "trigger": "auto", "preTokens": 151000},
            "starting",
        ),
        ("info", "status cleared", {"event": "status"}, "starting"),
        (
            "info",
            "system · hook_response",
            {"event": "other", "type": "system", "subtype": "hook_response"},
            "starting",
        ),
        ("info", "future_event", {"event": "other", "type": "future_event"}, "starting"),
        ("debug", "Hel", {"event": "partial", "type": "content_block_delta"}, "working"),
        (
            "debug",
            "partial · message_stop",
            {"event": "partial", "type": "message_stop"},
            "working",
        ),
        ("info", "Thinking out loud.", {"event": "text", "messageId": "msg_future_1"}, "working"),
        ("info", "assistant message", {"event": "message"}, "working"),
        (
            "info",
            "A plain string content.",
            {"event": "text", "messageId": "msg_future_2"},
            "working",
        ),
        ("info", "prompt: Please also update the changelog.", {"event": "prompt"}, "working"),
        (
            "info",
            "✓ (no output)",
            {"event": "tool_result", "results": [{"isError": False}]},
            "working",
        ),
        ("debug", "tool running", {"event": "tool_progress"}, "working"),
        (
            "info",
            "rate limit · mystery · resets tomorrow",
            {"event": "rate_limit", "status": "mystery", "resetsAt": "tomorrow"},
            "working",
        ),
        (
            "info",
            "done · $0.05",
            {"event": "result", "subtype": "success", "isError": False, "costUsd": 0.05},
            "done",
        ),
    ],
}


def hook(name: str, **extra: Any) -> dict[str, Any]:
    return {"event": "hook", "hook": name, **extra}


BASH_1 = {"tool": "Bash", "summary": "pytest -q", "toolUseId": "toolu_h1"}
BASH_2 = {"tool": "Bash", "summary": "rm -rf build", "toolUseId": "toolu_h2"}
EDIT_3 = {"tool": "Edit", "summary": "/home/dev/project/src/io.py", "toolUseId": "toolu_h3"}
GREP_4 = {"tool": "Grep", "summary": "def read", "toolUseId": "toolu_h4", "agentType": "Explore"}
# (level, message, data.agent, state, waitingFor after the call)
EXPECTED_HOOKS: list[tuple[str, str, dict[str, Any], str, str | None]] = [
    ("info", "session start · startup", hook("SessionStart", source="startup"), "starting", None),
    (
        "info",
        "prompt: Fix the failing test in tests/test_io.py",
        hook("UserPromptSubmit"),
        "working",
        None,
    ),
    ("info", "Bash: pytest -q", hook("PreToolUse", **BASH_1), "tool", None),
    ("info", "✓ Bash: pytest -q", hook("PostToolUse", **BASH_1), "working", None),
    ("info", "Bash: rm -rf build", hook("PreToolUse", **BASH_2), "tool", None),
    (
        "warn",
        "waiting for permission · Bash: rm -rf build",
        hook("PermissionRequest", **BASH_2),
        "waiting",
        "permission",
    ),
    (
        "warn",
        "waiting for permission · Claude needs your permission to use Bash",
        hook("Notification", notificationType="permission_prompt"),
        "waiting",
        "permission",
    ),
    ("info", "✓ Bash: rm -rf build", hook("PostToolUse", **BASH_2), "working", None),
    ("info", "Edit: /home/dev/project/src/io.py", hook("PreToolUse", **EDIT_3), "tool", None),
    (
        "error",
        "✗ tool error: String to replace not found in file.",
        hook("PostToolUseFailure", **EDIT_3, error="String to replace not found in file."),
        "working",
        None,
    ),
    (
        "info",
        "subagent start · Explore",
        hook("SubagentStart", agentType="Explore"),
        "working",
        None,
    ),
    ("info", "↳ Grep: def read", hook("PreToolUse", **GREP_4), "working", None),
    ("info", "↳ ✓ Grep: def read", hook("PostToolUse", **GREP_4), "working", None),
    ("info", "subagent stop · Explore", hook("SubagentStop", agentType="Explore"), "working", None),
    ("info", "turn ended · The test passes now.", hook("Stop"), "working", None),
    (
        "warn",
        "waiting for input · Claude is waiting for your input",
        hook("Notification", notificationType="idle_prompt"),
        "waiting",
        "input",
    ),
    ("info", "prompt: Now run the linter", hook("UserPromptSubmit"), "working", None),
    ("info", "hook · FutureHook", hook("FutureHook"), "working", None),
    ("error", "✗ turn failed: rate_limit", hook("StopFailure", error="rate_limit"), "failed", None),
    ("info", "prompt: Try again", hook("UserPromptSubmit"), "working", None),
    ("info", "compacting · manual", hook("PreCompact"), "working", None),
    (
        "info",
        "session end · prompt_input_exit",
        hook("SessionEnd", reason="prompt_input_exit"),
        "done",
        None,
    ),
]

FINAL: dict[str, dict[str, Any]] = {
    "full_run.jsonl": summary_of(
        state="done",
        turns=8,
        costUsd=0.3512,
        tokens=tokens(20, 185, 12700, 4500),
        result={
            "subtype": "success",
            "isError": False,
            "durationMs": 16200,
            "text": "Fixed the empty-input case; all 31 tests pass.",
        },
    ),
    "failing_tool.jsonl": summary_of(
        state="done",
        turns=4,
        costUsd=0.1234,
        tokens=tokens(21, 161, 15600, 5100),
        lastError="Bash: FAILED tests/test_io.py::test_empty - AssertionError",
        result={
            "subtype": "success",
            "isError": False,
            "durationMs": 41250,
            "text": "All tests pass now.",
        },
    ),
    "api_retry.jsonl": summary_of(
        state="done",
        model="claude-opus-4-1",
        turns=1,
        costUsd=0.004,
        tokens=tokens(8, 6, 0, 0),
        lastError="API error 500 Internal server error · retry 2/10",
        result={
            "subtype": "success",
            "isError": False,
            "durationMs": 8400,
            "text": "Hello after the retries.",
        },
    ),
    "rate_limit.jsonl": summary_of(
        state="failed",
        turns=2,
        costUsd=0.0191,
        tokens=tokens(9, 12, 0, 3000),
        lastError="API Error: Rate limit reached",
        result={
            "subtype": "success",
            "isError": True,
            "durationMs": 3100,
            "text": "API Error: Rate limit reached",
        },
    ),
    "subagent.jsonl": summary_of(
        state="done",
        turns=2,
        costUsd=0.0815,
        tokens=tokens(64, 117, 8000, 8100),  # the subagent's tokens count too
        result={
            "subtype": "success",
            "isError": False,
            "durationMs": 64000,
            "text": "There is one TODO: src/app/io.py:12.",
        },
    ),
    "max_turns.jsonl": summary_of(
        state="failed",
        turns=2,
        costUsd=0.0502,
        tokens=tokens(15, 40, 1000, 1000),
        lastError="Reached maximum number of turns (2)",
        result={"subtype": "error_max_turns", "isError": True, "durationMs": 5300, "text": None},
    ),
    "error_during_execution.jsonl": summary_of(
        state="failed",
        turns=1,
        costUsd=0.0021,
        tokens=tokens(7, 9, 0, 800),
        lastError="ENOSPC: no space left on device",
        result={
            "subtype": "error_during_execution",
            "isError": True,
            "durationMs": 1200,
            "text": None,
        },
    ),
    "killed.jsonl": summary_of(
        state="tool",
        turns=1,
        tokens=tokens(6, 8, 0, 900),
        tool={"name": "Bash", "summary": "make -j8 all", "since": "2026-01-01T00:00:02.000Z"},
    ),
    "unknown_events.jsonl": summary_of(
        state="done",
        turns=2,  # live: "num_turns": "3" is no number
        costUsd=0.05,  # the older ``cost_usd``
        tokens=tokens(0, 0, 0, 7),  # "12", -5 and true are no token counts; 7.0 is
        result={"subtype": "success", "isError": False, "durationMs": None, "text": None},
    ),
    "hooks_interactive.jsonl": summary_of(
        state="done", cwd="/home/dev/project", lastError="rate_limit"
    ),
}


def walk_strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*walk_strings(k), *walk_strings(v)]]
    if isinstance(value, list):
        return [s for item in value for s in walk_strings(item)]
    return []


def assert_entry_shape(entry: AgentEntry, original: object) -> None:
    assert entry.level in LEVELS
    assert len(entry.message) <= MESSAGE_CHARS
    assert "\n" not in entry.message
    # the original once, under ``raw``; ``agent`` holds small fields only
    assert set(entry.data) == {"agent", "raw"}
    assert entry.data["raw"] is original or entry.data["raw"] == original
    assert all(len(s) <= SUMMARY_CHARS for s in walk_strings(entry.data["agent"]))
    msgspec.json.encode(entry.data["agent"])


def test_every_fixture_has_expectations() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.jsonl")) == sorted(
        [*EXPECTED, "hooks_interactive.jsonl"]
    )


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_entries(name: str) -> None:
    entries, states, _ = run(name)
    got = [(e.level, e.message, e.data["agent"], s) for e, s in zip(entries, states, strict=True)]
    assert got == EXPECTED[name]
    for entry, line in zip(entries, lines_of(name), strict=True):
        assert_entry_shape(entry, json.loads(line))


def test_hook_entries() -> None:
    summary = ClaudeCodeSummary()
    got = []
    for i, line in enumerate(lines_of("hooks_interactive.jsonl")):
        payload = json.loads(line)
        entry = cc.parse_hook(payload, wall=WALL + i)
        assert_entry_shape(entry, payload)
        summary.apply(entry.event, now=float(i), wall=WALL + i)
        agent = summary.to_dict()
        got.append(
            (entry.level, entry.message, entry.data["agent"], agent["state"], agent["waitingFor"])
        )
    assert got == EXPECTED_HOOKS


@pytest.mark.parametrize("name", sorted(FINAL))
def test_final_summary(name: str) -> None:
    *_, summary = run(name)
    agent = summary.to_dict()
    assert agent == FINAL[name]
    assert msgspec.json.decode(msgspec.json.encode(agent)) == agent


def test_the_documented_examples() -> None:
    """The example lines of the format reference, as they are there."""
    reference = Path(__file__).resolve().parents[2] / "shared" / "agents" / "claude-code.md"
    if not reference.exists():
        pytest.skip("the format reference is not beside this checkout")
    examples = [ln for ln in reference.read_text().splitlines() if ln.startswith('{"')]
    *stream, payload = examples
    summary = ClaudeCodeSummary()
    messages = []
    for i, line in enumerate(stream):
        entry = entry_of(line, WALL + i)
        messages.append((entry.level, entry.message))
        summary.apply(entry.event, now=i, wall=WALL + i)
    assert messages == [
        ("info", "init · claude-sonnet-4-5 · /workspace"),
        ("info", "Running the test suite first. · Bash: pytest -q"),
        ("error", "✗ tool error: FAILED tests/test_io.py::test_empty - AssertionError"),
        ("warn", "retrying · attempt 1/10 in 2 s · 529 overloaded"),
        ("info", "done · 6 turns · $0.21 · 41 s"),
    ]
    assert summary.to_dict()["costUsd"] == 0.2131
    assert cc.parse(payload, wall=WALL) is None  # a hook body is no stream line
    entry = cc.parse_hook(json.loads(payload), wall=WALL)
    assert (entry.level, entry.message) == ("warn", "waiting for permission · Bash: rm -rf build")


# --- tokens, turns, cost -------------------------------------------------------


def test_tokens_counted_once_per_message_id() -> None:
    lines = lines_of("full_run.jsonl")
    summary = ClaudeCodeSummary()
    for i, line in enumerate(lines[:3]):
        summary.apply(entry_of(line, WALL + i).event, now=i, wall=WALL + i)
    once = tokens(10, 20, 0, 4000)
    assert summary.to_dict()["tokens"] == once
    # the same message id again (the next content block), and again verbatim
    for _ in range(5):
        summary.apply(entry_of(lines[3], WALL).event, now=3, wall=WALL)
        summary.apply(entry_of(lines[2], WALL).event, now=3, wall=WALL)
    assert summary.to_dict()["tokens"] == once
    assert summary.to_dict()["turns"] == 1


def test_a_message_whose_usage_grows_counts_its_largest() -> None:
    summary = ClaudeCodeSummary()

    def message(output: int) -> str:
        usage = {"input_tokens": 3, "output_tokens": output}
        body = {"id": "msg_grow", "content": [], "usage": usage}
        return json.dumps({"type": "assistant", "session_id": "s", "message": body})

    for output in (5, 40, 12):
        summary.apply(entry_of(message(output), WALL).event, now=0, wall=WALL)
    assert summary.to_dict()["tokens"] == tokens(3, 40, 0, 0)


def test_a_second_run_adds_to_the_first() -> None:
    summary = ClaudeCodeSummary()
    run("full_run.jsonl", summary)
    run("failing_tool.jsonl", summary)
    agent = summary.to_dict()
    assert (agent["state"], agent["turns"], agent["costUsd"]) == ("done", 12, 0.4746)
    assert agent["tokens"] == tokens(41, 346, 28300, 9600)
    assert agent["result"]["text"] == "All tests pass now."


def test_turns_count_live_until_the_result() -> None:
    summary = ClaudeCodeSummary()
    turns = []
    for i, line in enumerate(lines_of("full_run.jsonl")):
        summary.apply(entry_of(line, WALL + i).event, now=i, wall=WALL + i)
        turns.append(summary.to_dict()["turns"])
    assert turns == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 8]
    assert summary.to_dict()["costUsd"] == 0.3512


# --- tools ---------------------------------------------------------------------


def test_the_current_tool_and_its_start() -> None:
    summary = ClaudeCodeSummary()
    tools = []
    for i, line in enumerate(lines_of("full_run.jsonl")):
        summary.apply(entry_of(line, WALL + i).event, now=i, wall=WALL + i)
        tools.append(summary.to_dict()["tool"])
    assert tools[3] == {"name": "Bash", "summary": "pytest -q", "since": "2026-01-01T00:00:03.000Z"}
    assert tools[4] is None
    assert tools[6] == {
        "name": "Read",
        "summary": "/workspace/src/app/io.py",
        "since": "2026-01-01T00:00:06.000Z",
    }
    assert tools[-1] is None


def test_a_subagent_never_clobbers_the_main_tool() -> None:
    summary = ClaudeCodeSummary()
    seen = []
    for i, line in enumerate(lines_of("subagent.jsonl")):
        summary.apply(entry_of(line, WALL + i).event, now=i, wall=WALL + i)
        tool = summary.to_dict()["tool"]
        seen.append(tool and (tool["name"], tool["summary"], tool["since"]))
    task = ("Task", "Find TODO comments", "2026-01-01T00:00:01.000Z")
    assert seen == [None, task, task, task, task, task, task, None, None, None]


def test_parallel_tool_calls() -> None:
    line = json.dumps(
        {
            "type": "assistant",
            "session_id": "s",
            "message": {
                "id": "msg_par",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": "a"}},
                    {"type": "tool_use", "id": "t2", "name": "Read", "input": {"file_path": "b"}},
                ],
            },
        }
    )
    entry = entry_of(line, WALL)
    assert entry.message == "Read: a · Read: b"
    summary = ClaudeCodeSummary()
    summary.apply(entry.event, now=0, wall=WALL)

    def result(tid: str) -> str:
        body = {"content": [{"type": "tool_result", "tool_use_id": tid, "content": "x"}]}
        return json.dumps({"type": "user", "session_id": "s", "message": body})

    summary.apply(entry_of(result("t2"), WALL).event, now=1, wall=WALL + 1)
    assert (summary.state, summary.to_dict()["tool"]["summary"]) == (AgentState.TOOL, "a")
    summary.apply(entry_of(result("t1"), WALL).event, now=2, wall=WALL + 2)
    assert (summary.state, summary.to_dict()["tool"]) == (AgentState.WORKING, None)


@pytest.mark.parametrize(
    ("name", "tool_input", "summary"),
    [
        ("Bash", {"command": "  ls -la  "}, "ls -la"),
        ("Grep", {"pattern": "TODO", "glob": "*.py"}, "TODO in *.py"),
        ("Glob", {"pattern": "**/*.md"}, "**/*.md"),
        ("WebFetch", {"url": "https://example.com/x", "prompt": "p"}, "https://example.com/x"),
        ("TodoWrite", {"todos": [{}, {}, {}]}, "3 todos"),
        ("NotebookEdit", {"notebook_path": "a.ipynb"}, "a.ipynb"),
        ("mcp__github__create_issue", {"title": "t", "description": "Fix it"}, "Fix it"),
        ("FutureTool", {"query": "q"}, "q"),
        ("Bash", "not an object", ""),
        ("Read", {"file_path": 42}, ""),
        ("Bash", {"command": "x" * 10_000}, "x" * (SUMMARY_CHARS - 1) + "…"),
    ],
)
def test_tool_summary(name: str, tool_input: object, summary: str) -> None:
    assert cc.tool_summary(name, tool_input) == summary


# --- states the runtime decides ------------------------------------------------


def test_killed_without_a_result_fails_with_the_exit_code() -> None:
    *_, summary = run("killed.jsonl")
    assert summary.state is AgentState.TOOL
    assert summary.mark_exited(143) is True
    assert summary.to_dict() == summary_of(
        state="failed",
        turns=1,
        tokens=tokens(6, 8, 0, 900),
        lastError="exited with code 143 (SIGTERM) before a result",
    )
    assert summary.mark_exited(0) is False  # the end came already


@pytest.mark.parametrize(
    ("code", "state", "error"),
    [
        (0, "done", None),
        (1, "failed", "exited with code 1 before a result"),
        (137, "failed", "exited with code 137 (SIGKILL) before a result"),
        (None, "failed", "exited before a result"),
    ],
)
def test_exit_without_a_result(code: int | None, state: str, error: str | None) -> None:
    summary = ClaudeCodeSummary()
    summary.apply(entry_of(lines_of("killed.jsonl")[0], WALL).event, now=0, wall=WALL)
    summary.mark_exited(code)
    assert (summary.to_dict()["state"], summary.to_dict()["lastError"]) == (state, error)


def test_exit_after_a_result_changes_nothing() -> None:
    *_, summary = run("full_run.jsonl")
    before = summary.to_dict()
    assert summary.mark_exited(143) is False
    assert summary.mark_lost() is False
    assert summary.mark_silent() is False
    assert summary.to_dict() == before


def test_silent_and_lost_and_back() -> None:
    lines = lines_of("full_run.jsonl")
    summary = ClaudeCodeSummary()
    for i, line in enumerate(lines[:4]):
        summary.apply(entry_of(line, WALL + i).event, now=i, wall=WALL + i)
    assert summary.state is AgentState.TOOL
    assert summary.mark_silent() is True
    assert summary.mark_silent() is False
    assert summary.to_dict()["tool"]["name"] == "Bash"  # still running, just quiet
    assert summary.mark_active() is True
    assert summary.state is AgentState.TOOL
    assert summary.mark_lost() is True
    assert summary.state is AgentState.LOST
    summary.apply(entry_of(lines[4], WALL + 4).event, now=4, wall=WALL + 4)
    assert summary.state is AgentState.WORKING


def test_waiting_stays_waiting_when_silent() -> None:
    summary = ClaudeCodeSummary()
    payload = {"hook_event_name": "PermissionRequest", "tool_name": "Bash", "tool_use_id": "t"}
    summary.apply(cc.parse_hook(payload, wall=WALL).event, now=0, wall=WALL)
    assert summary.mark_silent() is False
    assert summary.to_dict()["waitingFor"] == "permission"
    assert summary.mark_lost() is True
    assert summary.to_dict()["waitingFor"] is None


# --- hooks ---------------------------------------------------------------------


def hook_event(name: str, **fields: Any) -> AgentEvent:
    return cc.parse_hook({"hook_event_name": name, **fields}, wall=WALL).event


def test_permission_request_is_waiting_at_once() -> None:
    summary = ClaudeCodeSummary()
    summary.apply(hook_event("UserPromptSubmit", prompt="go"), now=0.0, wall=WALL)
    assert summary.should_publish(0.0) is True
    summary.apply(hook_event("PreToolUse", tool_name="Bash", tool_use_id="t1"), now=0.1, wall=WALL)
    assert summary.should_publish(0.1) is True  # state changed: not throttled
    changed = summary.apply(
        hook_event("PermissionRequest", tool_name="Bash", tool_use_id="t1"), now=0.2, wall=WALL
    )
    assert changed is True
    assert (summary.state, summary.to_dict()["waitingFor"]) == (AgentState.WAITING, "permission")
    assert summary.should_publish(0.2) is True


def test_waiting_for_one_tool_ignores_the_others() -> None:
    summary = ClaudeCodeSummary()
    for event in (
        hook_event("PreToolUse", tool_name="Read", tool_use_id="r"),
        hook_event("PreToolUse", tool_name="Bash", tool_use_id="b"),
        hook_event("PermissionRequest", tool_name="Bash", tool_use_id="b"),
        hook_event("PostToolUse", tool_name="Read", tool_use_id="r"),
        hook_event("PreToolUse", tool_name="Grep", tool_use_id="g"),
    ):
        summary.apply(event, now=0, wall=WALL)
    assert (summary.state, summary.to_dict()["waitingFor"]) == (AgentState.WAITING, "permission")
    summary.apply(hook_event("PostToolUse", tool_name="Bash", tool_use_id="b"), now=1, wall=WALL)
    assert summary.state is AgentState.TOOL  # Grep still runs
    assert summary.to_dict()["tool"]["name"] == "Grep"


def test_a_subagents_permission_is_waiting_too() -> None:
    summary = ClaudeCodeSummary()
    for line in lines_of("subagent.jsonl")[:2]:
        summary.apply(entry_of(line, WALL).event, now=0, wall=WALL)
    sub = {"agent_id": "agent-1", "tool_name": "Bash", "tool_use_id": "toolu_sub"}
    summary.apply(hook_event("PermissionRequest", **sub), now=1, wall=WALL)
    assert summary.state is AgentState.WAITING
    assert summary.to_dict()["tool"]["name"] == "Task"
    summary.apply(hook_event("PostToolUse", **sub), now=2, wall=WALL)
    assert (summary.state, summary.to_dict()["tool"]["name"]) == (AgentState.TOOL, "Task")


def test_late_hooks_after_the_result_change_nothing() -> None:
    *_, summary = run("full_run.jsonl")
    before = summary.to_dict()
    for name in ("Stop", "PostToolUse", "PreToolUse", "Notification", "SessionEnd", "StopFailure"):
        event = hook_event(name, tool_name="Bash", tool_use_id="x", notification_type="idle_prompt")
        assert summary.apply(event, now=9, wall=WALL) is False
    assert summary.to_dict() == before


def test_session_start_after_compaction_is_no_new_run() -> None:
    summary = ClaudeCodeSummary()
    summary.apply(hook_event("UserPromptSubmit"), now=0, wall=WALL)
    summary.apply(hook_event("SessionStart", source="compact"), now=1, wall=WALL)
    assert summary.state is AgentState.WORKING
    summary.apply(hook_event("SessionEnd"), now=2, wall=WALL)
    summary.apply(hook_event("SessionStart", source="clear"), now=3, wall=WALL)
    assert summary.state is AgentState.STARTING


@pytest.mark.parametrize("payload", [None, [], "text", 42, {}, {"hook_event_name": 7}])
def test_any_hook_body_is_an_entry(payload: object) -> None:
    entry = cc.parse_hook(payload, wall=WALL)
    assert (entry.level, entry.message) == ("info", "hook · unknown")
    assert entry.data == {"agent": {"event": "hook", "hook": "unknown"}, "raw": payload}
    assert ClaudeCodeSummary().apply(entry.event, now=0, wall=WALL) is False


def test_lone_surrogates_in_a_hook_body_do_not_reach_the_summary() -> None:
    # Python's json module lets "\\ud800" through; msgspec (the hub's) never does
    payload = json.loads(
        '{"hook_event_name":"PreToolUse","tool_name":"B\\ud800","cwd":"/\\udc00",'
        '"tool_input":{"command":"x\\ud800"},"tool_use_id":"t"}'
    )
    entry = cc.parse_hook(payload, wall=WALL)
    assert entry.message == "B?: x?"
    summary = ClaudeCodeSummary()
    summary.apply(entry.event, now=0, wall=WALL)
    assert msgspec.json.decode(msgspec.json.encode(summary.to_dict()))["cwd"] == "/?"


# --- the throttle --------------------------------------------------------------


def test_publish_at_most_once_a_second_unless_the_state_changes() -> None:
    lines = lines_of("full_run.jsonl")
    summary = ClaudeCodeSummary()
    assert summary.should_publish(0.0) is False  # nothing to say yet
    assert summary.publish_deadline() is None

    def feed(i: int, now: float) -> bool:
        return summary.apply(entry_of(lines[i], WALL + i).event, now=now, wall=WALL + i)

    assert feed(0, 0.0) is True
    assert summary.publish_deadline() == -math.inf  # due at once
    assert summary.should_publish(0.0) is True
    assert summary.should_publish(0.0) is False  # published, nothing new
    assert feed(1, 0.1) is False  # rate limit "allowed": nothing changed
    assert feed(2, 0.2) is True  # starting -> working
    assert summary.should_publish(0.2) is True
    assert feed(4, 0.3) is False  # a result for a tool not open: still working
    assert feed(5, 0.4) is True  # a new turn (turns 1 -> 2), same state
    assert summary.should_publish(0.4) is False
    assert summary.publish_deadline() == pytest.approx(1.2)
    assert summary.should_publish(1.19) is False
    assert summary.should_publish(1.2) is True
    assert summary.publish_deadline() is None
    assert feed(6, 1.3) is True  # working -> tool: at once
    assert summary.should_publish(1.3) is True


def test_the_throttle_interval_is_an_argument() -> None:
    summary = ClaudeCodeSummary(min_interval=0.0)
    summary.mark_silent()
    assert summary.should_publish(5.0) is True
    with pytest.raises(ValueError):
        ClaudeCodeSummary(min_interval=-1)


# --- not Claude Code's lines ----------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "",
        "   ",
        'plain text with a "type" in it',
        "{",
        '{"type":"system"',
        '["type"]',
        '"type"',
        '{"no_type": 1}',
        '{"type": 42, "session_id": "s"}',
        '{"type": null, "session_id": "s"}',
        '{"type":"log","level":"info","msg":"hello"}',  # some other program's JSON
        '{"type":"result","value":3}',
        '{"type":"user","message":"hi"}',
        '{"type":"future_event","payload":1}',  # unknown and no session_id
        '{"type":"a","x":' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"type":"a","session_id":"s","x":NaN}',
        '{"type":"system","subtype":"init","session_id":"s"} trailing',
        '{"type":"a","session_id":"\\ud800"}',
        '{"type":"a","session_id":"s","s":"\ud800"}',
    ],
)
def test_malformed_or_foreign_lines_are_not_agent_lines(line: str) -> None:
    assert cc.parse(line, wall=WALL) is None
    assert parse_line(line, wall=WALL) is None


def test_surrounding_white_space_is_fine() -> None:
    line = "  " + lines_of("full_run.jsonl")[0] + "\r\n"
    assert entry_of(line, WALL).message == "init · claude-sonnet-4-5 · /workspace"


# --- size bounds ---------------------------------------------------------------


def big_tool_result(size: int) -> str:
    """A 200 KB tool result (made here rather than committed)."""
    output = "\n".join(f"line {n}: " + "x" * 60 for n in range(size // 70))
    block = {"type": "tool_result", "tool_use_id": "toolu_big", "is_error": True, "content": output}
    message = {"role": "user", "content": [block]}
    return json.dumps({"type": "user", "session_id": "s", "message": message})


def test_a_200_kb_tool_result_stays_small_in_the_summary() -> None:
    line = big_tool_result(200_000)
    assert len(line) > 200_000
    entry = entry_of(line, WALL)
    assert entry.message == "✗ tool error: line 0: " + "x" * 60
    assert entry.data["raw"]["message"]["content"][0]["content"].startswith("line 0:")
    assert len(msgspec.json.encode(entry.data["agent"])) < 200
    summary = ClaudeCodeSummary()
    summary.apply(entry.event, now=0, wall=WALL)
    assert len(msgspec.json.encode(summary.to_dict())) < 1000


def test_a_one_line_200_kb_output_is_cut() -> None:
    block = {"type": "tool_result", "tool_use_id": "t", "is_error": True, "content": "e" * 200_000}
    line = json.dumps({"type": "user", "session_id": "s", "message": {"content": [block]}})
    entry = entry_of(line, WALL)
    assert len(entry.message) <= MESSAGE_CHARS
    assert entry.message.endswith("…")
    summary = ClaudeCodeSummary()
    summary.apply(entry.event, now=0, wall=WALL)
    assert len(summary.to_dict()["lastError"]) == SUMMARY_CHARS


def test_huge_fields_everywhere_are_bounded() -> None:
    huge = "h" * 100_000
    line = json.dumps(
        {
            "type": "system",
            "subtype": "init",
            "session_id": huge,
            "model": huge,
            "cwd": huge,
            "mcp_servers": [{"name": huge, "status": huge}] * 1000,
        }
    )
    entry = entry_of(line, WALL)
    assert_entry_shape(entry, json.loads(line))
    summary = ClaudeCodeSummary()
    summary.apply(entry.event, now=0, wall=WALL)
    assert all(len(s) <= SUMMARY_CHARS for s in walk_strings(summary.to_dict()))


def test_first_line() -> None:
    assert first_line("\n\n  \t hello \t world  \nmore") == "hello world"
    assert first_line(" " * 10_000 + "late") == ""  # looks no further than it should
    assert first_line("") == ""
    assert first_line("abcdef", 4) == "abc…"


# --- the interface -------------------------------------------------------------


def test_the_registry() -> None:
    line = lines_of("full_run.jsonl")[0]
    assert KINDS == (CLAUDE_CODE,)
    assert detect_agent(line) is CLAUDE_CODE
    assert detect_agent("hello") is None
    assert kind_named("claude-code") is CLAUDE_CODE
    assert kind_named("codex") is None
    found = parse_line(line, wall=WALL)
    assert found is not None
    kind, entry = found
    assert kind is CLAUDE_CODE and entry.message.startswith("init")
    summary = kind.new_summary()
    assert summary.kind == "claude-code" and summary.state is AgentState.STARTING
    assert CLAUDE_CODE.parse_hook({"hook_event_name": "Stop"}, wall=WALL).message == "turn ended"


def test_an_entry_checks_its_level() -> None:
    with pytest.raises(ValueError):
        AgentEntry(level="loud", message="", data={}, event=AgentEvent())


def test_another_kinds_event_is_ignored() -> None:
    assert ClaudeCodeSummary().apply(AgentEvent(), now=0, wall=WALL) is False


def test_the_transition_table_covers_every_state_and_input() -> None:
    assert len(cc._TRANSITIONS) == len(AgentState) * len(cc._In)


@pytest.mark.parametrize("path", sorted(AGENTS_SRC.glob("*.py")), ids=lambda p: p.name)
def test_the_agents_package_is_pure(path: Path) -> None:
    test_core_purity.test_no_io_thread_or_clock(path)


# --- hypothesis ----------------------------------------------------------------

KEYS = [
    "type", "subtype", "session_id", "message", "content", "id", "name", "input", "usage",
    "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
    "tool_use_id", "is_error", "text", "thinking", "parent_tool_use_id", "error", "attempt",
    "max_retries", "retry_delay_ms", "error_status", "rate_limit_info", "status", "resetsAt",
    "utilization", "event", "delta", "num_turns", "total_cost_usd", "cost_usd", "duration_ms",
    "result", "errors", "permission_denials", "model", "cwd", "tools", "mcp_servers",
    "elapsed_time_seconds", "tool_name", "command", "file_path", "pattern", "todos",
    "compact_metadata", "stop_reason",
]  # fmt: skip
USAGE_KEYS = KEYS[9:13]
LINE_KEYS = [k for k in KEYS if k not in ("type", "subtype", "session_id", "message",
                                          "parent_tool_use_id")]  # fmt: skip
TYPES = ["system", "assistant", "user", "result", "tool_progress", "rate_limit_event",
         "stream_event", "future"]  # fmt: skip
SUBTYPES = ["init", "api_retry", "status", "compact_boundary", "success", "error_max_turns",
            "error_during_execution", "x"]  # fmt: skip
BLOCKS = ["text", "thinking", "redacted_thinking", "tool_use", "tool_result", "image", "x"]
HOOKS = ["SessionStart", "SessionEnd", "UserPromptSubmit", "PreToolUse", "PostToolUse",
         "PostToolUseFailure", "PermissionRequest", "Notification", "Stop", "StopFailure",
         "SubagentStart", "SubagentStop", "PreCompact", "PostCompact", "Future"]  # fmt: skip
IDS = st.sampled_from(["t1", "t2", "m1", "m2", "toolu_full_1", "toolu_task_1"])

leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)  # JSON has neither
    | st.text(max_size=20)
    | IDS
    | st.sampled_from(TYPES + SUBTYPES + BLOCKS + HOOKS)
)
json_values = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=16,
)


def often(likely: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``likely`` three times in four, so most objects get past the first checks."""
    return st.integers(0, 3).flatmap(lambda n: likely if n else other)


blocks = st.fixed_dictionaries(
    {"type": often(st.sampled_from(BLOCKS), json_values)},
    optional={k: often(IDS | st.text(max_size=30), json_values) for k in ("id", "name",
              "tool_use_id", "text", "thinking", "content")}
    | {"input": json_values, "is_error": st.booleans() | json_values},
)  # fmt: skip
messages = st.fixed_dictionaries(
    {},
    optional={
        "id": often(IDS, json_values),
        "content": often(st.lists(blocks, max_size=4), json_values),
        "usage": often(st.dictionaries(st.sampled_from(USAGE_KEYS), json_values), json_values),
        "model": json_values,
    },
)
stream_objects = st.fixed_dictionaries(
    {
        "type": often(st.sampled_from(TYPES), json_values),
        "session_id": often(st.just("s"), json_values),
    },
    optional={
        "subtype": often(st.sampled_from(SUBTYPES), json_values),
        "parent_tool_use_id": st.none() | IDS | json_values,
        "message": often(messages, json_values),
        **{k: json_values for k in LINE_KEYS},
    },
)
hook_payloads = (
    st.fixed_dictionaries(
        {"hook_event_name": st.sampled_from(HOOKS) | json_values},
        optional={
            "tool_name": st.sampled_from(["Bash", "Read", "Task"]) | json_values,
            "tool_use_id": IDS | json_values,
            "tool_input": json_values,
            "agent_id": st.none() | st.just("agent-1") | json_values,
            "notification_type": st.sampled_from(["permission_prompt", "idle_prompt", "x"])
            | json_values,
            "source": st.sampled_from(["startup", "compact", "clear"]) | json_values,
            "error": json_values,
            "cwd": json_values,
            "model": json_values,
            "prompt": json_values,
            "message": json_values,
            "tool_response": json_values,
        },
    )
    | json_values
)
FIXTURE_LINES = [
    line
    for p in sorted(FIXTURES.glob("*.jsonl"))
    if "hooks" not in p.name
    for line in lines_of(p.name)
]
FIXTURE_HOOKS = [json.loads(line) for line in lines_of("hooks_interactive.jsonl")]

fixture_lines = st.tuples(st.just("line"), st.sampled_from(FIXTURE_LINES))
generated_lines = st.tuples(st.just("line"), stream_objects.map(json.dumps))
fixture_hooks = st.tuples(st.just("hook"), st.sampled_from(FIXTURE_HOOKS))
generated_hooks = st.tuples(st.just("hook"), hook_payloads)
ops = st.one_of(
    often(fixture_lines, generated_lines),
    often(fixture_hooks, generated_hooks),
    often(generated_lines, fixture_lines),
    st.one_of(
        st.tuples(st.just("line"), st.text(max_size=40)),
        st.tuples(st.just("mark"), st.sampled_from(["silent", "lost", "active"])),
        st.tuples(st.just("exit"), st.none() | st.integers(min_value=-3, max_value=300)),
        st.tuples(st.just("tick"), st.floats(min_value=0, max_value=3)),
    ),
)


def assert_valid_summary(summary: ClaudeCodeSummary) -> None:
    agent = summary.to_dict()
    msgspec.json.encode(agent)
    assert list(agent) == list(summary_of())
    assert agent["kind"] == "claude-code"
    state = agent["state"]
    assert state in {s.value for s in AgentState}
    assert isinstance(agent["turns"], int) and agent["turns"] >= 0
    cost = agent["costUsd"]
    assert cost is None or (isinstance(cost, float) and math.isfinite(cost) and cost >= 0)
    assert all(isinstance(n, int) and n >= 0 for n in agent["tokens"].values())
    assert list(agent["tokens"]) == ["input", "output", "cacheRead", "cacheCreation"]
    assert all(len(s) <= SUMMARY_CHARS for s in walk_strings(agent))
    assert agent["waitingFor"] in (None, "permission", "input")
    assert (agent["waitingFor"] is not None) == (state == "waiting")
    tool = agent["tool"]
    if state == "tool":
        assert tool is not None
    if state in ("done", "failed"):
        assert tool is None
    if tool is not None:
        assert list(tool) == ["name", "summary", "since"] and ISO.match(tool["since"])
    result = agent["result"]
    if result is not None:
        assert list(result) == ["subtype", "isError", "durationMs", "text"]
        assert isinstance(result["isError"], bool)
        assert result["durationMs"] is None or result["durationMs"] >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, max_size=40), st.floats(min_value=0, max_value=4e9))
def test_any_sequence_leaves_a_valid_summary(
    steps: list[tuple[str, Any]], start_wall: float
) -> None:
    summary = ClaudeCodeSummary()
    now, wall = 0.0, start_wall
    for kind, value in steps:
        if kind == "line":
            entry = cc.parse(value, wall=wall)
            if entry is not None:
                assert_entry_shape(entry, msgspec.json.decode(value.strip()))
                changed = summary.apply(entry.event, now=now, wall=wall)
                assert isinstance(changed, bool)
        elif kind == "hook":
            entry = cc.parse_hook(value, wall=wall)
            assert_entry_shape(entry, value)
            summary.apply(entry.event, now=now, wall=wall)
        elif kind == "mark":
            getattr(summary, f"mark_{value}")()
        elif kind == "exit":
            summary.mark_exited(value)
        else:
            now += value
            wall += value
            deadline = summary.publish_deadline()
            published = summary.should_publish(now)
            assert published == (deadline is not None and deadline <= now)
        assert_valid_summary(summary)


@settings(max_examples=300, deadline=None)
@given(stream_objects | json_values)
def test_parse_never_raises_on_a_json_value(value: object) -> None:
    line = json.dumps(value)
    entry = cc.parse(line, wall=WALL)
    if entry is not None:
        assert_entry_shape(entry, msgspec.json.decode(line))
        assert ClaudeCodeSummary().apply(entry.event, now=0, wall=WALL) in (True, False)

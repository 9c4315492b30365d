"""pcclog_core stays sans-IO: no socket, event loop, thread or clock, and it
imports nothing of pcclog_server (or the runtime's client libraries).

Checked on the source itself, so a stray ``import time`` or
``datetime.now()`` fails here rather than in a reviewer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "src" / "pcclog_core"
FORBIDDEN_MODULES = {
    "socket",
    "ssl",
    "select",
    "selectors",
    "asyncio",
    "anyio",
    "trio",
    "threading",
    "multiprocessing",
    "concurrent",
    "subprocess",
    "time",
    "signal",
    "os",
    "docker",
    "websockets",
    "pcclog_server",  # the import direction: the runtime builds on the core, never back
}
FORBIDDEN_CALLS = {"now", "utcnow", "today", "monotonic", "perf_counter", "time_ns"}
MODULES = sorted(CORE.rglob("*.py"))  # subpackages (agents/) too


def test_the_core_has_modules() -> None:
    assert len(MODULES) >= 8


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_io_thread_or_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] not in FORBIDDEN_MODULES, (path.name, alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            assert node.module.split(".")[0] not in FORBIDDEN_MODULES, (path.name, node.module)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            assert node.attr not in FORBIDDEN_CALLS, (path.name, node.lineno, node.attr)
        elif isinstance(node, ast.AsyncFunctionDef | ast.Await):
            raise AssertionError(f"{path.name}:{node.lineno}: async code in the core")

"""The browser viewer's pure modules (``static/protocol.js``, ``levels.js``,
``format.js``) under Node's own test runner: ``node --test
tests/node/*.test.mjs``. No npm package is involved: the tests import the
served files as they are.

Without Node these tests skip, unless ``PCCLOG_REQUIRE_BROWSER=1`` (set by
CI), which turns the skip into a failure, as for the browser tests.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NODE_TESTS = sorted((REPO / "tests" / "node").glob("*.test.mjs"))


def node_flags(version: tuple[int, int]) -> list[str] | None:
    """What ``node`` needs to load the viewer's ``.js`` files as ES modules
    (they have no ``package.json`` saying so), or None if it cannot."""
    if version >= (22, 7) or (20, 19) <= version < (21, 0):
        return []  # module syntax is detected by default
    if version >= (20, 10):
        return ["--experimental-detect-module"]
    return None


def node_problem() -> tuple[str | None, list[str]]:
    """Why the Node tests cannot run here (or None), and node's flags."""
    node = shutil.which("node")
    if node is None:
        return "no node on PATH (Debian: apt-get install nodejs)", []
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    found = re.match(r"v(\d+)\.(\d+)", out.stdout.strip())
    if found is None:
        return f"cannot tell node's version from {out.stdout!r}", []
    flags = node_flags((int(found[1]), int(found[2])))
    if flags is None:
        return f"node {out.stdout.strip()} is too old: the viewer's tests need 20.10 or later", []
    return None, [node, *flags]


def test_node_tests_exist() -> None:
    assert NODE_TESTS, "tests/node/*.test.mjs is empty"


def test_viewer_modules_pass_node_test_runner() -> None:
    problem, command = node_problem()
    if problem is not None:
        if os.environ.get("PCCLOG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PCCLOG_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    result = subprocess.run(
        [*command, "--test", "--test-reporter=tap", *map(str, NODE_TESTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    counts = {k: int(v) for k, v in re.findall(r"^# (tests|pass|fail) (\d+)$", output, re.M)}
    assert result.returncode == 0, output
    assert counts.get("fail") == 0, output
    assert counts.get("tests", 0) > 0, output
    assert counts.get("pass") == counts["tests"], output

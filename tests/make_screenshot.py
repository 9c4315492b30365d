"""Make docs/screenshot.png: the browser viewer with a few agent sessions.

    .venv/bin/python tests/make_screenshot.py [--out docs/screenshot.png] [--theme light|dark]

Starts a real ``pcclog serve`` on a free loopback port, publishes realistic
agent sessions through a producer connection (running, stopped, failed with
an exit code), opens the page in Debian's headless ``chromium`` (via
``playwright``, executable_path only), signs in, opens four panes and saves
a 1400x900 screenshot. ``tests/test_browser.py`` runs ``capture`` too, so
this script keeps working.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from wsclient import barrier, open_ws  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser

VIEWPORT = (1400, 900)
TOKEN = "screenshot-token"
OPEN_PANES = ["agent-auth-refactor", "agent-db-migration", "agent-flaky-ci", "agent-docs-update"]

# (session, final status or None for running, exit code, [(seconds ago, level, message, data)])
Line = tuple[float, str, str, dict[str, Any] | None]
SESSIONS: list[tuple[str, str | None, int | None, list[Line]]] = [
    (
        "agent-auth-refactor",
        None,
        None,
        [
            (312, "info", "task: move API auth from session cookies to Bearer tokens", None),
            (309, "debug", "read src/auth/session.py (212 lines)", None),
            (305, "debug", "read src/api/deps.py (88 lines)", None),
            (298, "info", "plan: 1) BearerAuth middleware 2) update call sites 3) tests", None),
            (281, "info", "edit src/auth/middleware.py", {"added": 48, "removed": 3}),
            (262, "info", "grep -rn 'request.cookies\\[\"sid\"\\]' src/ → 14 matches", None),
            (240, "info", "edit src/api/routes/users.py", {"added": 6, "removed": 6}),
            (233, "info", "edit src/api/routes/billing.py", {"added": 9, "removed": 7}),
            (204, "info", "$ pytest tests/auth -q", None),
            (
                199,
                "warn",
                "DeprecationWarning: datetime.utcnow() is deprecated (src/auth/tokens.py:41)",
                None,
            ),
            (
                196,
                "error",
                "FAILED tests/auth/test_bearer.py::test_expired_token - 200 != 401",
                None,
            ),
            (171, "info", "fix: check `exp` before the signature cache lookup", None),
            (160, "info", "edit src/auth/tokens.py", {"added": 4, "removed": 1}),
            (151, "info", "$ pytest tests/auth -q", None),
            (143, "info", "tests/auth: 38 passed in 4.12s", None),
            (118, "info", "edit src/api/routes/admin.py", {"added": 11, "removed": 9}),
            (96, "info", "$ pytest -q -x", None),
            (52, "info", "612 passed, 3 skipped in 41.8s", None),
            (31, "info", "$ ruff check src tests && mypy src", None),
            (24, "info", "All checks passed. Success: no issues found in 87 source files", None),
            (3, "info", "writing commit message", None),
        ],
    ),
    (
        "agent-db-migration",
        None,
        None,
        [
            (250, "info", "task: add `archived_at` to projects, backfill from audit log", None),
            (244, "debug", "read migrations/versions/ (41 revisions, head 7f3c2a)", None),
            (230, "info", "$ alembic revision -m 'projects archived_at'", None),
            (228, "info", "created migrations/versions/8a91d4_projects_archived_at.py", None),
            (201, "info", "$ docker compose up -d postgres", None),
            (188, "info", "postgres is ready (16.3) on 127.0.0.1:5433", None),
            (175, "info", "$ alembic upgrade head", None),
            (173, "info", "Running upgrade 7f3c2a -> 8a91d4, projects archived_at", None),
            (
                160,
                "warn",
                "backfill touches 1.2M rows; batching by 10k to keep locks short",
                {"table": "projects", "batch": 10000},
            ),
            (122, "info", "backfill 430000/1204332 rows (36%)", None),
            (78, "info", "backfill 880000/1204332 rows (73%)", None),
            (36, "info", "backfill 1204332/1204332 rows (100%)", None),
            (20, "info", "$ alembic downgrade -1 && alembic upgrade head", None),
            (9, "info", "round trip OK; writing tests/migrations/test_8a91d4.py", None),
        ],
    ),
    (
        "agent-flaky-ci",
        "error",
        1,
        [
            (420, "info", "task: make tests/e2e/checkout.spec.ts pass reliably in CI", None),
            (414, "info", "$ npm ci", None),
            (371, "info", "added 1184 packages in 41s", None),
            (366, "info", "$ npx playwright test checkout --repeat-each=20", None),
            (
                301,
                "error",
                "checkout.spec.ts:88 \u203a discount code: expected '$90.00', got '$100.00'",
                None,
            ),
            (300, "warn", "failed 3 of 20 runs; the price request races the coupon request", None),
            (266, "info", "edit src/checkout/useCart.ts: await the coupon before pricing", None),
            (233, "info", "$ npx playwright test checkout --repeat-each=20", None),
            (
                170,
                "error",
                "checkout.spec.ts:112 \u203a shows tax for EU addresses: timeout 30000ms",
                None,
            ),
            (168, "error", "browserType.launch: Executable doesn't exist in the CI image", None),
            (151, "fatal", "giving up: the CI image needs a browser; asked a human", None),
        ],
    ),
    (
        "agent-docs-update",
        "stopped",
        0,
        [
            (540, "info", "task: document the new Bearer auth in docs/api.md", None),
            (533, "debug", "read docs/api.md (640 lines)", None),
            (497, "info", "edit docs/api.md: new section 'Authentication'", None),
            (471, "info", "edit docs/api.md: 14 curl examples now send -H 'Authorization'", None),
            (452, "info", "$ mkdocs build --strict", None),
            (
                447,
                "warn",
                "docs/changelog.md: link to '#session-cookies' has no target; fixed",
                None,
            ),
            (431, "info", "$ mkdocs build --strict", None),
            (425, "info", "INFO - Documentation built in 2.31 seconds", None),
            (402, "info", "opened pull request #482 'docs: Bearer authentication'", None),
        ],
    ),
    (
        "agent-perf-cache",
        None,
        None,
        [
            (140, "info", "task: cut p95 of GET /projects under 120 ms", None),
            (92, "info", "$ k6 run bench/projects.js", None),
            (5, "info", "p95 243 ms → 97 ms with the ETag cache", None),
        ],
    ),
    (
        "agent-deps-bump",
        "stopped",
        0,
        [
            (900, "info", "task: bump minor versions, keep the lockfile consistent", None),
            (850, "info", "updated 23 packages; all 612 tests pass", None),
        ],
    ),
]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def populate(ws_url: str, token: str) -> None:
    """Publish SESSIONS through one producer connection."""
    now = datetime.now(UTC)
    ws = open_ws(ws_url + "/", token=token)
    try:
        for session, status, exit_code, lines in SESSIONS:
            for ago, level, message, data in lines:
                entry: dict[str, Any] = {
                    "type": "log",
                    "sessionId": session,
                    "level": level,
                    "message": message,
                    "timestamp": _iso(now - timedelta(seconds=ago)),
                }
                if data is not None:
                    entry["data"] = data
                ws.send(json.dumps(entry))
            if status is not None:
                ws.send(
                    json.dumps(
                        {
                            "type": "status",
                            "sessionId": session,
                            "status": status,
                            "metadata": {"exitCode": exit_code},
                        }
                    )
                )
        errors = [m for m in barrier(ws) if m.get("type") == "error"]
        assert not errors, errors
    finally:
        ws.close()


def capture(
    browser: Browser, http_url: str, ws_url: str, token: str, out: Path, theme: str = "light"
) -> None:
    """Populate the server at ``ws_url``, open the viewer and save ``out``."""
    from playwright.sync_api import expect

    populate(ws_url, token)
    width, height = VIEWPORT
    context = browser.new_context(
        viewport={"width": width, "height": height},
        color_scheme="dark" if theme == "dark" else "light",
    )
    try:
        page = context.new_page()
        page.goto(http_url + "/")
        page.get_by_test_id("token-input").fill(token)
        page.get_by_test_id("sign-in").click()
        expect(page.get_by_test_id("conn-state")).to_have_text("connected")
        expect(page.get_by_test_id("session-item")).to_have_count(len(SESSIONS))
        lines = {session: len(entries) for session, _, _, entries in SESSIONS}
        for session in OPEN_PANES:
            page.locator(f'[data-testid="session-item"][data-session-id="{session}"]').click()
            rows = page.locator(
                f'[data-testid="pane"][data-session-id="{session}"] .chunk [data-testid="log-row"]'
            )
            expect(rows).to_have_count(lines[session])
        # The sidebar's counts and "time since last output" refresh once a second.
        for session, count in lines.items():
            item = page.locator(f'[data-testid="session-item"][data-session-id="{session}"]')
            expect(item).to_contain_text(f"{count} lines")
        page.mouse.move(0, height - 1)
        page.evaluate("document.activeElement && document.activeElement.blur()")
        # Let the frame loop settle (scroll to the end, badges, counts).
        page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        expect(page.locator(".session-item.open")).to_have_count(len(OPEN_PANES))
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out))
    finally:
        context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "screenshot.png")
    parser.add_argument("--theme", choices=["light", "dark"], default="light")
    args = parser.parse_args(argv)

    from conftest import ServerProcess
    from playwright.sync_api import sync_playwright
    from test_browser import browser_problem, launch_browser

    problem = browser_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("AUTH_", "DOCKER_"))}
    environ.update({"AUTH_TOKENS": TOKEN, "DOCKER_ENABLED": "false", "PYTHONUNBUFFERED": "1"})
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pcclog_server.cli", "serve", "--host", "127.0.0.1",
                 "--port", "0"],
                stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=HERE.parent,
            )  # fmt: skip
        server = ServerProcess(proc, log_path, TOKEN)
        try:
            with sync_playwright() as playwright:
                browser = launch_browser(playwright)
                try:
                    capture(browser, server.http, server.url, TOKEN, args.out, args.theme)
                finally:
                    browser.close()
        finally:
            server.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The browser viewer in a real browser: Debian's ``chromium`` driven headless
by ``playwright`` (the PyPI package only; its own browser downloads are never
used), against the real ``pcclog serve`` process and a real producer.

``tests/browser_setup.sh`` installs ``chromium`` where it is missing. Without
chromium or playwright these tests skip, unless ``PCCLOG_REQUIRE_BROWSER=1``
(set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import ServerProcess
from wsclient import barrier, open_ws, produce

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("PCCLOG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "test-token"
TIMEOUT_MS = 10_000
# Chromium logs every refused WebSocket connection; expected while a server restarts.
_EXPECTED_CONSOLE = re.compile(r"WebSocket connection to .* failed")


def browser_problem() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (install it: sudo bash tests/browser_setup.sh)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[dev]')"
    return None


def launch_browser(playwright: Any) -> Browser:
    """Debian's chromium, headless; never a browser playwright downloaded."""
    browser: Browser = playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
    )
    return browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    problem = browser_problem()
    if problem is not None:
        if os.environ.get("PCCLOG_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PCCLOG_REQUIRE_BROWSER=1 but {problem}")
        pytest.skip(problem)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = launch_browser(playwright)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (own sessionStorage); fails the test on a script error or
    an unexpected console error (a CSP violation shows up as one)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    tab.on(
        "console",
        lambda msg: (
            problems.append(f"console error: {msg.text}")
            if msg.type == "error" and not _EXPECTED_CONSOLE.search(msg.text)
            else None
        ),
    )
    yield tab
    context.close()
    assert not problems, problems


# --- helpers -----------------------------------------------------------------


def sign_in(page: Page, server: ServerProcess, token: str = TOKEN) -> None:
    from playwright.sync_api import expect

    page.goto(server.http + "/")
    expect(page.get_by_test_id("conn-state")).to_have_text("signed-out")
    page.get_by_test_id("token-input").fill(token)
    page.get_by_test_id("sign-in").click()


def expect_connected(page: Page, timeout: float = TIMEOUT_MS) -> None:
    from playwright.sync_api import expect

    expect(page.get_by_test_id("conn-state")).to_have_text("connected", timeout=timeout)


def item(page: Page, session: str) -> Locator:
    return page.locator(f'[data-testid="session-item"][data-session-id="{session}"]')


def pane(page: Page, session: str) -> Locator:
    return page.locator(f'[data-testid="pane"][data-session-id="{session}"]')


def rows(page: Page, session: str) -> Locator:
    return pane(page, session).locator('.chunk [data-testid="log-row"]')


def open_pane(page: Page, session: str) -> Locator:
    from playwright.sync_api import expect

    item(page, session).click()
    expect(pane(page, session)).to_have_count(1)
    return pane(page, session)


def row_data(page: Page, session: str) -> list[dict[str, Any]]:
    """(seq, level, message) of every drawn log row of a pane, top to bottom."""
    data: list[dict[str, Any]] = rows(page, session).evaluate_all(
        """els => els.map(e => ({
            seq: e.dataset.seq === undefined ? null : Number(e.dataset.seq),
            level: e.dataset.level,
            message: e.querySelector('.body').textContent,
        }))"""
    )
    return data


class Producer:
    """A producer on the ``websockets`` client: entries go out in order and
    each call returns once the server has handled them (ping/pong barrier)."""

    def __init__(self, server: ServerProcess, token: str = TOKEN) -> None:
        self.ws = open_ws(server.url + "/", token=token)

    def logs(self, session: str, *messages: str, level: str = "info") -> None:
        produce(self.ws, session, *messages, level=level)

    def entries(self, session: str, entries: list[tuple[str, str]]) -> None:
        for level, message in entries:
            self.send({"type": "log", "sessionId": session, "level": level, "message": message})
        self.sync()

    def status(self, session: str, status: str, **metadata: Any) -> None:
        self.send({"type": "status", "sessionId": session, "status": status, "metadata": metadata})
        self.sync()

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def sync(self) -> None:
        errors = [m for m in barrier(self.ws) if m.get("type") == "error"]
        assert not errors, errors

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def producers() -> Iterator[Callable[[ServerProcess], Producer]]:
    opened: list[Producer] = []

    def connect(server: ServerProcess) -> Producer:
        producer = Producer(server)
        opened.append(producer)
        return producer

    yield connect
    for producer in opened:
        try:
            producer.close()
        except Exception:
            pass


# --- tests -------------------------------------------------------------------


def test_sessions_appear_and_lines_arrive_in_order(
    page: Page, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    from playwright.sync_api import expect

    server = start_server()
    producer = producers(server)
    # Two sessions exist before the page loads (replayed on subscribe) ...
    producer.logs("agent-alpha", *[f"alpha line {i}" for i in range(1, 6)])
    producer.logs("agent-beta", "beta started")

    sign_in(page, server)
    expect_connected(page)
    expect(item(page, "agent-alpha")).to_have_count(1)
    expect(item(page, "agent-beta")).to_have_count(1)
    expect(item(page, "agent-alpha")).to_have_attribute("data-status", "running")

    # ... and one is created while the page watches (live, via the wildcard).
    producer.logs("agent-gamma", "gamma started")
    expect(item(page, "agent-gamma")).to_have_count(1)
    expect(page.get_by_test_id("session-item")).to_have_count(3)
    ids = page.get_by_test_id("session-item").evaluate_all(
        "els => els.map(e => e.dataset.sessionId)"
    )
    assert ids == ["agent-alpha", "agent-beta", "agent-gamma"]

    open_pane(page, "agent-alpha")
    expect(rows(page, "agent-alpha")).to_have_count(5)

    # Live lines, in bursts, land after the replayed ones, in order.
    producer.logs("agent-alpha", *[f"alpha line {i}" for i in range(6, 31)])
    producer.logs("agent-alpha", *[f"alpha line {i}" for i in range(31, 41)], level="debug")
    expect(rows(page, "agent-alpha")).to_have_count(40)
    expect(rows(page, "agent-alpha").last).to_contain_text("alpha line 40")
    got = row_data(page, "agent-alpha")
    assert [r["message"] for r in got] == [f"alpha line {i}" for i in range(1, 41)]
    assert [r["seq"] for r in got] == sorted({r["seq"] for r in got}), "seq not increasing"
    assert [r["level"] for r in got] == ["info"] * 30 + ["debug"] * 10

    # Lines of other sessions do not leak into the pane; their counts update.
    producer.logs("agent-beta", "beta second")
    expect(item(page, "agent-beta")).to_contain_text("2 lines")
    assert len(row_data(page, "agent-alpha")) == 40
    state = page.evaluate("window.pcclog.state()")
    assert state["conn"] == "connected"
    assert state["panes"] == ["agent-alpha"]
    assert state["lastSeq"]["agent-alpha"] == got[-1]["seq"]


def test_level_filter_and_search_hide_lines(
    page: Page, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    from playwright.sync_api import expect

    server = start_server()
    producer = producers(server)
    entries = [
        ("debug", "loading config"),
        ("info", "cloning repository"),
        ("warn", "lockfile is stale"),
        ("info", "running tests"),
        ("error", "test_login failed"),
        ("debug", "cache hit ratio 0.93"),
        ("fatal", "out of memory"),
        ("info", "retrying test_login"),
    ]
    producer.entries("agent-filter", entries)

    sign_in(page, server)
    expect_connected(page)
    the_pane = open_pane(page, "agent-filter")
    the_rows = rows(page, "agent-filter")
    expect(the_rows).to_have_count(len(entries))

    level = the_pane.get_by_test_id("level-filter")
    level.select_option("warn")
    expect(the_rows).to_have_count(3)
    assert [r["level"] for r in row_data(page, "agent-filter")] == ["warn", "error", "fatal"]

    # A filtered pane keeps filtering live lines.
    producer.entries("agent-filter", [("info", "quiet line"), ("error", "loud line")])
    expect(the_rows).to_have_count(4)
    expect(the_rows.last).to_contain_text("loud line")

    level.select_option("error")
    expect(the_rows).to_have_count(3)
    assert [r["message"] for r in row_data(page, "agent-filter")] == [
        "test_login failed",
        "out of memory",
        "loud line",
    ]

    level.select_option("trace")  # "all levels"
    expect(the_rows).to_have_count(len(entries) + 2)

    search = the_pane.get_by_test_id("search")
    search.fill("test_login")
    expect(the_rows).to_have_count(2)
    assert [r["message"] for r in row_data(page, "agent-filter")] == [
        "test_login failed",
        "retrying test_login",
    ]
    expect(the_rows.first.locator("mark")).to_have_text("test_login")
    search.fill("")
    expect(the_rows).to_have_count(len(entries) + 2)


def test_stopped_and_failed_sessions_show_their_status(
    page: Page, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    from playwright.sync_api import expect

    server = start_server()
    producer = producers(server)
    producer.logs("agent-done", "writing summary")
    producer.logs("agent-broken", "compiling")
    producer.status("agent-done", "stopped", exitCode=0)  # before the page loads

    sign_in(page, server)
    expect_connected(page)
    done = item(page, "agent-done")
    expect(done).to_have_attribute("data-status", "stopped")
    expect(done.get_by_test_id("status-badge")).to_have_text("stopped (exit 0)")
    broken = item(page, "agent-broken")
    expect(broken).to_have_attribute("data-status", "running")
    expect(broken.get_by_test_id("status-badge")).to_have_text("running")

    the_pane = open_pane(page, "agent-broken")
    expect(the_pane.get_by_test_id("status-badge")).to_have_text("running")

    # While the page watches: the session fails with an exit code.
    producer.logs("agent-broken", "error: linker failed", level="error")
    producer.status("agent-broken", "error", exitCode=2)
    expect(broken).to_have_attribute("data-status", "error")
    expect(broken.get_by_test_id("status-badge")).to_have_text("error (exit 2)")
    expect(the_pane.get_by_test_id("status-badge")).to_have_text("error (exit 2)")
    expect(the_pane).to_have_attribute("data-status", "error")
    expect(the_pane.get_by_test_id("status-row").last).to_contain_text("error (exit 2)")
    expect(broken).to_contain_text("1 error")
    expect(page.get_by_test_id("session-summary")).to_have_text("(2, 0 running)")


def test_recovers_after_server_restart(
    page: Page, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    from playwright.sync_api import expect

    server = start_server()
    producer = producers(server)
    producer.logs("agent-phoenix", "before 1", "before 2", "before 3")

    sign_in(page, server)
    expect_connected(page)
    open_pane(page, "agent-phoenix")
    the_rows = rows(page, "agent-phoenix")
    expect(the_rows).to_have_count(3)

    port = server.port
    producer.close()
    server.stop()
    expect(page.get_by_test_id("conn-state")).to_have_text("reconnecting")
    # The page keeps what it had while the server is away.
    expect(the_rows).to_have_count(3)

    # A new server on the same port, with no memory of the old one.
    restarted = start_server("--port", str(port))
    assert restarted.port == port
    expect_connected(page, timeout=20_000)

    producer = producers(restarted)
    producer.logs("agent-phoenix", "after 1", "after 2")
    producer.logs("agent-newcomer", "hello from the new server")
    expect(the_rows).to_have_count(5)
    assert [r["message"] for r in row_data(page, "agent-phoenix")] == [
        "before 1",
        "before 2",
        "before 3",
        "after 1",
        "after 2",
    ]
    # seq restarted at 1: the viewer noticed instead of dropping the lines.
    assert [r["seq"] for r in row_data(page, "agent-phoenix")] == [1, 2, 3, 1, 2]
    expect(pane(page, "agent-phoenix").get_by_test_id("note-row")).to_contain_text(
        "sequence restarted"
    )
    expect(item(page, "agent-newcomer")).to_have_count(1)
    expect(item(page, "agent-phoenix")).to_have_attribute("data-status", "running")
    expect(item(page, "agent-phoenix")).not_to_have_class(re.compile(r"\bgone\b"))
    state = page.evaluate("window.pcclog.state()")
    assert state["lastSeq"]["agent-phoenix"] == 2


def test_recovers_when_the_restarted_server_is_already_ahead(
    page: Page, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    """The producer reaches the new server first and writes more entries than
    the page saw, so the new server's lastSeq is not lower than the page's:
    only the content of the overlap entry can tell that it is a new history."""
    from playwright.sync_api import WebSocketRoute, expect

    server = start_server()
    producer = producers(server)
    producer.logs("agent-phoenix", "old 1", "old 2", "old 3")
    sign_in(page, server)
    expect_connected(page)
    open_pane(page, "agent-phoenix")
    the_rows = rows(page, "agent-phoenix")
    expect(the_rows).to_have_count(3)

    # From now on the page's WebSocket connections go through playwright:
    # refused while `hold` is set, passed through to the real server after.
    hold = True
    attempts: list[str] = []

    def gate(ws: WebSocketRoute) -> None:
        attempts.append("held" if hold else "passed")
        if hold:
            ws.close(code=4000, reason="held by the test")
        else:
            ws.connect_to_server()

    page.route_web_socket(re.compile(r"^ws://127\.0\.0\.1:\d+/$"), gate)

    port = server.port
    producer.close()
    server.stop()
    expect(page.get_by_test_id("conn-state")).to_have_text("reconnecting")
    restarted = start_server("--port", str(port))
    producer = producers(restarted)
    producer.logs("agent-phoenix", *[f"new {i}" for i in range(1, 6)])
    hold = False

    expect_connected(page, timeout=20_000)
    expect(the_rows).to_have_count(8)
    got = row_data(page, "agent-phoenix")
    assert [r["message"] for r in got] == [
        *(f"old {i}" for i in range(1, 4)),
        *(f"new {i}" for i in range(1, 6)),
    ]
    assert [r["seq"] for r in got] == [1, 2, 3, 1, 2, 3, 4, 5]
    expect(pane(page, "agent-phoenix").get_by_test_id("note-row")).to_have_count(1)
    expect(pane(page, "agent-phoenix").get_by_test_id("note-row")).to_contain_text(
        "server restarted"
    )
    assert "passed" in attempts

    # Live lines keep coming after the resync, once each.
    producer.logs("agent-phoenix", "new 6")
    expect(the_rows).to_have_count(9)
    expect(the_rows.last).to_have_attribute("data-seq", "6")
    assert page.evaluate("window.pcclog.state()")["lastSeq"]["agent-phoenix"] == 6


def test_resumes_without_loss_or_duplicates_after_a_dropped_connection(
    page: Page, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    """Same server, connection dropped: the page resumes with `since` (one
    entry of overlap, checked and dropped) and shows every line once."""
    from playwright.sync_api import WebSocketRoute, expect

    server = start_server()
    producer = producers(server)
    producer.logs("agent-steady", "line 1", "line 2")
    hold = False
    routes: list[WebSocketRoute] = []

    def gate(ws: WebSocketRoute) -> None:
        if hold:
            ws.close(code=4000, reason="held by the test")
        else:
            routes.append(ws)
            ws.connect_to_server()

    page.route_web_socket(re.compile(r"^ws://127\.0\.0\.1:\d+/$"), gate)
    sign_in(page, server)
    expect_connected(page)
    open_pane(page, "agent-steady")
    the_rows = rows(page, "agent-steady")
    expect(the_rows).to_have_count(2)
    assert len(routes) == 1

    hold = True
    routes[0].close(code=4001, reason="dropped by the test")
    expect(page.get_by_test_id("conn-state")).to_have_text("reconnecting")
    producer.logs("agent-steady", "line 3", "line 4")
    producer.status("agent-steady", "stopped", exitCode=0)
    hold = False

    expect_connected(page, timeout=20_000)
    expect(item(page, "agent-steady")).to_have_attribute("data-status", "stopped")
    expect(the_rows).to_have_count(4)
    got = row_data(page, "agent-steady")
    assert [r["message"] for r in got] == [f"line {i}" for i in range(1, 5)]
    assert [r["seq"] for r in got] == [1, 2, 3, 4]
    expect(pane(page, "agent-steady").get_by_test_id("status-row")).to_have_count(1)
    expect(pane(page, "agent-steady").get_by_test_id("note-row")).to_have_count(0)
    expect(pane(page, "agent-steady").get_by_test_id("gap-row")).to_have_count(0)
    assert page.evaluate("window.pcclog.state()")["lastSeq"]["agent-steady"] == 5


def test_the_level_table_is_the_one_the_server_serves(
    page: Page, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    """The viewer keeps no level table of its own: it fetches the core's from
    GET /levels.json, and its level filter follows whatever it is served."""
    from playwright.sync_api import Route, expect

    server = start_server()
    status, body = server.get("/levels.json")
    assert status == 200
    served = json.loads(body)
    producer = producers(server)
    producer.entries("agent-levels", [("warning", "disk low"), ("emerg", "disk gone")])
    producer.entries("agent-levels", [("debug", "probe"), ("error", "write failed")])

    sign_in(page, server)
    expect_connected(page)
    the_pane = open_pane(page, "agent-levels")
    expect(rows(page, "agent-levels")).to_have_count(4)
    options = the_pane.get_by_test_id("level-filter").locator("option")
    assert options.evaluate_all("els => els.map(e => e.value)") == served["levels"]
    expect(options.first).to_have_text("all levels")
    levels = [r["level"] for r in row_data(page, "agent-levels")]
    assert levels == ["warn", "fatal", "debug", "error"]
    assert page.evaluate("window.pcclog.state()")["levels"] == served["levels"]
    expect(item(page, "agent-levels")).to_contain_text("2 errors")

    # Another table, served instead: the filter's choices and ranks follow it.
    table = {"levels": ["debug", "info", "notice", "error", "fatal"], "aliases": {}}

    def other_table(route: Route) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(table))

    page.route("**/levels.json", other_table)
    page.reload()
    expect_connected(page)
    the_pane = open_pane(page, "agent-levels")
    expect(rows(page, "agent-levels")).to_have_count(4)
    options = the_pane.get_by_test_id("level-filter").locator("option")
    expect(options).to_have_text(["all levels", "info+", "notice+", "error+", "fatal+"])
    # "warn" is not in this table: the viewer shows it as the default, info.
    assert [r["level"] for r in row_data(page, "agent-levels")] == [
        "info",
        "fatal",
        "debug",
        "error",
    ]
    the_pane.get_by_test_id("level-filter").select_option("notice")
    expect(rows(page, "agent-levels")).to_have_count(2)


def test_connects_only_once_the_level_table_has_loaded(
    browser: Browser, start_server: Callable[..., ServerProcess], producers: Callable[..., Producer]
) -> None:
    """No level table, no connection: while GET /levels.json fails the page
    says so (reconnecting, with the reason) and retries; then it connects."""
    from playwright.sync_api import Route, expect

    server = start_server()
    producers(server).logs("agent-late", "waited for the table")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    fail = True
    asked: list[bool] = []

    def gate(route: Route) -> None:
        asked.append(fail)
        if fail:
            route.fulfill(status=503, content_type="text/plain", body="not ready\n")
        else:
            route.fallback()

    try:
        page.route("**/levels.json", gate)
        sign_in(page, server)
        expect(page.get_by_test_id("conn-state")).to_have_text("reconnecting")
        expect(page.get_by_test_id("conn-detail")).to_contain_text(
            "cannot load the level table (/levels.json): HTTP 503"
        )
        expect(page.get_by_test_id("retry-now")).to_be_visible()
        state = page.evaluate("window.pcclog.state()")
        assert state["levels"] is None and state["sessions"] == 0

        fail = False
        expect_connected(page, timeout=20_000)
        expect(item(page, "agent-late")).to_have_count(1)
        assert asked[0] is True and asked[-1] is False
        assert asked.count(False) == 1, "the table is fetched once it has loaded"
    finally:
        context.close()
    assert not problems, problems


def test_wrong_token_returns_to_sign_in(
    page: Page, start_server: Callable[..., ServerProcess]
) -> None:
    from playwright.sync_api import expect

    server = start_server()
    sign_in(page, server, token="not-the-token")
    expect(page.get_by_test_id("auth-error")).to_be_visible()
    expect(page.get_by_test_id("conn-state")).to_have_text("signed-out")
    expect(page.get_by_test_id("token-input")).to_be_visible()

    page.get_by_test_id("token-input").fill(TOKEN)
    page.get_by_test_id("sign-in").click()
    expect_connected(page)
    expect(page.get_by_test_id("auth-error")).to_be_hidden()


def test_screenshot_script_renders_a_populated_page(
    browser: Browser, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """tests/make_screenshot.py (which made docs/screenshot.png) still works."""
    import make_screenshot

    server = start_server()
    out = tmp_path / "shot.png"
    make_screenshot.capture(browser, server.http, server.url, TOKEN, out)
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == make_screenshot.VIEWPORT

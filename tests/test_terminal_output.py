"""What reaches the terminal from ``pcclog tail`` and ``pcclog sessions``:
the neutraliser against a table of attacks, the session colours and
columns, and both commands end to end against the real server under a pty,
checked byte by byte: nothing but pcclog's own SGR colours and visible text.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from conftest import REPO, ServerProcess
from hypothesis import given
from hypothesis import strategies as st
from wsclient import barrier, open_ws

from pcclog_server._terminal import (
    ESCAPED_RANGES,
    RESET,
    SESSION_PALETTE,
    SESSION_WIDTH,
    SessionColors,
    SessionColumn,
    display_width,
    fit,
    natural_key,
    neutralize,
    palette_index,
)
from pcclog_server.cmd_sessions import render_table
from pcclog_server.cmd_tail import Formatter, Style

TOKEN = "test-token"
CLI = [sys.executable, "-m", "pcclog_server.cli"]

# Every escape sequence pcclog itself may write: its styles and the session
# palette. Anything else starting with ESC came from a log and is a failure.
OWN_SGR = {
    RESET,
    Style.DIM,
    Style.BOLD,
    Style.WARNING,
    *Style.LEVEL.values(),
    *Style.STATUS.values(),
    *(f"\x1b[38;5;{index}m" for index in SESSION_PALETTE),
}
_SGR = re.compile(r"\x1b\[[0-9;]*m")
_CONTROL_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _escaped(code: int) -> bool:
    return any(first <= code <= last for first, last, _ in ESCAPED_RANGES)


def visible(output: str, *, allowed: str = "\n") -> str:
    """``output`` without pcclog's own SGR sequences, after checking that
    every other character is visible text (or in ``allowed``)."""
    for sequence in _SGR.findall(output):
        assert sequence in OWN_SGR, f"foreign SGR {sequence!r} in {output!r}"
    text = _SGR.sub("", output)
    bad = [
        char
        for char in text
        if char not in allowed
        and (unicodedata.category(char) in _CONTROL_CATEGORIES or _escaped(ord(char)))
    ]
    assert not bad, f"control or invisible characters {bad!r} reached the terminal: {text!r}"
    return text


# --- the neutraliser -------------------------------------------------------------

ATTACKS = [
    ("title", "\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    ("title, ST", "\x1b]2;pwned\x1b\\", "\\x1b]2;pwned\\x1b\\"),
    ("clear screen", "\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    ("hidden text", "\x1b[8msecret\x1b[0m", "\\x1b[8msecret\\x1b[0m"),
    (
        "OSC 8 link",
        "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\",
        "\\x1b]8;;https://evil.example/\\x1b\\click\\x1b]8;;\\x1b\\",
    ),
    ("carriage return", "rm -rf /\rls -l   ", "rm -rf /\\rls -l   "),
    ("backspaces", "good\x08\x08\x08\x08evil", "good\\x08\\x08\\x08\\x08evil"),
    (
        "fake line",
        "ok\n12:00:00.000 victim INFO  all tests passed",
        "ok\\n12:00:00.000 victim INFO  all tests passed",
    ),
    ("fake line, CRLF", "ok\r\nvictim", "ok\\r\\nvictim"),
    ("bidi override", "invoice\u202efdp.exe", "invoice\\u202efdp.exe"),
    ("bidi isolate", "a\u2066b\u2069c", "a\\u2066b\\u2069c"),
    ("C1 CSI", "\x9b2J", "\\x9b2J"),
    ("C1 OSC", "\x9d0;pwned\x9c", "\\x9d0;pwned\\x9c"),
    ("DCS", "\x1bPq#0;2;0;0;0\x1b\\", "\\x1bPq#0;2;0;0;0\\x1b\\"),
    ("DEL", "a\x7fb", "a\\x7fb"),
    ("NUL and BEL", "a\x00b\x07", "a\\x00b\\x07"),
    ("zero width", "agent\u200b-1", "agent\\u200b-1"),
    ("byte order mark", "\ufeffagent-1", "\\ufeffagent-1"),
    ("line separator", "a\u2028b\u2029c", "a\\u2028b\\u2029c"),
    ("hangul filler", "agent-1\u3164", "agent-1\\u3164"),
    ("tag characters", "hi\U000e0041\U000e0042", "hi\\U000e0041\\U000e0042"),
    ("lone surrogate", "a\ud800b", "a\\ud800b"),
    ("tab in a field", "a\tb", "a\\tb"),
]


@pytest.mark.parametrize(("raw", "expected"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_attacks_are_printed_escaped(raw: str, expected: str) -> None:
    assert neutralize(raw) == expected
    visible(neutralize(raw), allowed="")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain ascii line: 100% done {json} [x] \\ backslash",
        "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \u0645\u0631\u062d\u0628\u0627",
        "\u2764\ufe0f emoji with its variation selector, \U0001f680",
        "e\u0301 combining accent",
    ],
)
def test_visible_text_is_unchanged(text: str) -> None:
    assert neutralize(text) is text or neutralize(text) == text


def test_a_tab_stays_in_a_message_and_is_escaped_elsewhere() -> None:
    assert neutralize("\tat Foo.bar(Foo.java:1)", keep_tab=True) == "\tat Foo.bar(Foo.java:1)"
    assert neutralize("a\tb\x1b[2J\n", keep_tab=True) == "a\tb\\x1b[2J\\n"
    assert neutralize("a\tb") == "a\\tb"


def test_every_control_format_and_separator_character_is_escaped() -> None:
    # The table is data; this proves it against the Unicode database in use.
    missing = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in _CONTROL_CATEGORIES and not _escaped(code)
    ]
    assert not missing
    for first, last, _ in ESCAPED_RANGES:
        for code in (first, last):
            assert neutralize(chr(code)) != chr(code)
            assert neutralize(chr(code)).startswith("\\")
    assert neutralize("\ufe0f") == "\ufe0f"  # emoji presentation: kept


@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_no_input_can_leave_a_control_character(text: str) -> None:
    shown = neutralize(text)
    visible(shown, allowed="")
    assert "\n" not in shown and "\r" not in shown
    assert neutralize(shown) == shown  # what it prints is already inert
    if not any(_escaped(ord(char)) for char in text):
        assert shown == text


# --- widths, order, colours -------------------------------------------------------


def test_fit_cuts_in_the_middle() -> None:
    long = "build-frontend-integration-tests-7"
    cut = fit(long, 24)
    assert cut == "build-fronte…ion-tests-7" and display_width(cut) == 24
    assert fit("agent-1", 24) == "agent-1"
    wide = fit("\u65e5\u672c\u8a9e\u306e\u30bb\u30c3\u30b7\u30e7\u30f3", 7)
    assert display_width(wide) <= 7 and "\u2026" in wide


def test_natural_sort() -> None:
    ids = ["agent-10", "agent-2", "agent-1", "Agent-3", "agent", "build-9", "agent-02", "x" * 5]
    assert sorted(ids, key=natural_key) == [
        "agent",
        "agent-1",
        "agent-02",
        "agent-2",
        "Agent-3",
        "agent-10",
        "build-9",
        "xxxxx",
    ]
    huge = "agent-" + "9" * 5000  # past Python's int() digit limit
    assert sorted([huge, "agent-1"], key=natural_key) == ["agent-1", huge]


def _luminance(index: int) -> float:
    levels = (0, 95, 135, 175, 215, 255)
    cube = index - 16
    channels = [levels[cube // 36], levels[cube // 6 % 6], levels[cube % 6]]

    def linear(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = map(linear, channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_palette_reads_on_dark_and_light_backgrounds() -> None:
    assert len(set(SESSION_PALETTE)) == len(SESSION_PALETTE) >= 16
    for index in SESSION_PALETTE:
        assert 16 <= index <= 231  # the colour cube: not the theme's 16, not the grey ramp
        cube = index - 16
        assert len({cube // 36, cube // 6 % 6, cube % 6}) > 1  # not grey
        lum = _luminance(index)
        assert (lum + 0.05) / 0.05 >= 3.0, f"{index} too dark on black"
        assert 1.05 / (lum + 0.05) >= 3.0, f"{index} too light on white"


def test_session_colours_are_stable_and_distinct() -> None:
    ids = [f"agent-{n}" for n in range(1, 11)]
    # BLAKE2s, not the per-process salted hash(): these never change.
    assert [palette_index(i) for i in ids] == [3, 12, 5, 5, 0, 7, 2, 7, 8, 8]
    seed = subprocess.run(
        [sys.executable, "-c", "from pcclog_server._terminal import palette_index as p; "
         "print([p(f'agent-{n}') for n in range(1, 11)])"],
        capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )  # fmt: skip
    assert seed.stdout.strip() == "[3, 12, 5, 5, 0, 7, 2, 7, 8, 8]"
    colors = SessionColors()
    codes = [colors.code(i) for i in ids]
    assert len(set(codes)) == 10  # ten agents, ten colours
    assert codes == [colors.code(i) for i in ids]  # and each keeps its own
    assert codes[0] == f"\x1b[38;5;{SESSION_PALETTE[3]}m"  # no collision: its hashed colour
    many = SessionColors()
    assert len({many.code(f"s{n}") for n in range(len(SESSION_PALETTE))}) == len(SESSION_PALETTE)


def test_session_column_pads_to_the_widest_id_so_far_and_caps() -> None:
    column = SessionColumn(color=False)
    assert column.cell("a") == "a"
    assert column.cell("agent-10") == "agent-10"
    assert column.cell("a") == "a       "
    long = "x" * 40
    assert column.cell(long) == "x" * 12 + "\u2026" + "x" * 11
    assert column.cell("a") == "a" + " " * (SESSION_WIDTH - 1)
    evil = column.cell("ev\x1b[8mil\n")
    assert evil.startswith("ev\\x1b[8mil\\n") and len(evil) == SESSION_WIDTH
    colored = SessionColumn(color=True).cell("agent-1")
    assert colored == f"\x1b[38;5;{SESSION_PALETTE[3]}magent-1{RESET}"
    piped = SessionColumn(color=False, pad=False)
    assert piped.cell(long) == long and piped.cell("a") == "a"


# --- the formatters ----------------------------------------------------------------

EVIL_SESSION = "ev\u202eil\x1b]0;t\x07"
SHOWN_EVIL_SESSION = "ev\\u202eil\\x1b]0;t\\x07"
EVIL_MESSAGE = (
    "\x1b]0;pwned\x07\x1b[2J\x1b[8mhidden\x1b[0m"
    "\x1b]8;;https://evil.example/\x1b\\link\x1b]8;;\x1b\\"
    "progress 10%\rprogress 99%\x9b31m\u202eabc"
    "\n12:00:00.000 victim INFO  FORGED"
)
SHOWN_EVIL_MESSAGE = (
    "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[8mhidden\\x1b[0m"
    "\\x1b]8;;https://evil.example/\\x1b\\link\\x1b]8;;\\x1b\\"
    "progress 10%\\rprogress 99%\\x9b31m\\u202eabc"
    "\\n12:00:00.000 victim INFO  FORGED"
)


def _messages() -> list[dict[str, Any]]:
    return [
        {
            "type": "log",
            "sessionId": EVIL_SESSION,
            "seq": 1,
            "level": "err\x1b[8m",
            "timestamp": "\x1b[2J",
            "message": EVIL_MESSAGE,
            "data": {"stream": "stdout", "note": "\x9b2J\u2028x"},
        },
        {
            "type": "status",
            "sessionId": EVIL_SESSION,
            "seq": 2,
            "status": "stopped",
            "metadata": {"command": "make\n\x1b[2Jtest", "exitCode": 0, "finishedAt": "\r"},
        },
        {"type": "status", "sessionId": "victim", "status": "running\x1b[8m"},
        {"type": "gap", "sessionId": "victim", "fromSeq": 1, "toSeq": "\x1b[2J", "reason": "\r"},
    ]


@pytest.mark.parametrize(
    ("color", "tty"), [(True, True), (False, True), (True, False), (False, False)]
)
def test_formatter_prints_every_field_inert_one_line_each(color: bool, tty: bool) -> None:
    formatter = Formatter(Style(color), tty=tty)
    lines = [formatter.format(message) for message in _messages()]
    assert all(line is not None for line in lines)
    text = "\n".join(line for line in lines if line is not None)
    shown = visible(text)
    assert ("\x1b[" in text) == color
    assert len(shown.splitlines()) == 4
    log, status, victim, gap = shown.splitlines()
    assert SHOWN_EVIL_MESSAGE in log and SHOWN_EVIL_SESSION in log
    assert "ERR\\x1b[8M" in log  # the level: upper-cased, then escaped
    assert '"note":"\\x9b2J\\u2028x"' in log
    assert "command=make\\n\\x1b[2Jtest" in status
    assert "running\\x1b[8m" in victim
    assert "\\x1b[2J" in gap and "\\r" in gap
    for line in shown.splitlines():
        assert "FORGED" not in line or line.index("\\n12:00:00.000") < line.index("FORGED")


def test_sessions_table_natural_order_one_line_each() -> None:
    sessions = [
        {"sessionId": f"agent-{n}", "status": "running", "lastSeq": n, "metadata": {}}
        for n in (10, 2, 1)
    ]
    sessions.append(
        {
            "sessionId": EVIL_SESSION,
            "status": "error",
            "lastSeq": 7,
            "metadata": {
                "command": "sh -c 'echo a\necho b'\x1b]0;pwned\x07" + "x" * 100,
                "exitCode": 1,
                "image": "\u202eevil",
            },
        }
    )
    for color in (False, True):
        table = render_table(sessions, Style(color))
        rows = visible(table).splitlines()
        assert len(rows) == 5
        assert [row.split()[0] for row in rows] == [
            "SESSION",
            "agent-1",
            "agent-2",
            "agent-10",
            SHOWN_EVIL_SESSION,
        ]
        evil = rows[4]
        assert "exit=1 command=sh -c 'echo a\\necho b'\\x1b]0;pwned\\x07" in evil
        assert evil.endswith("\u2026 image=\\u202eevil")
        # The columns line up: STATUS starts at the same column on every row.
        starts = {row.index(row.split()[1]) for row in rows}
        assert len(starts) == 1


# --- end to end, through a pty ------------------------------------------------------


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PCCLOG_", "AUTH_", "NO_COLOR"))
    }
    env.update({"PYTHONUNBUFFERED": "1", "TERM": "xterm-256color", **extra})
    return env


class Terminal:
    """A command whose stdout and stderr are a pty, read with deadlines.

    Output post-processing (``OPOST``) is off, so ``\\n`` is not turned into
    ``\\r\\n``: every byte read is a byte the command wrote.
    """

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[1] &= ~termios.OPOST
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.proc = subprocess.Popen(
            [*CLI, *args],
            stdout=slave,
            stderr=slave,
            stdin=subprocess.DEVNULL,
            env=_env({}),
            cwd=REPO,
        )
        os.close(slave)
        self.master = master
        self.data = bytearray()
        self.eof = False

    def read_until(self, predicate: Callable[[bytes], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(bytes(self.data)):
            if self.eof:
                raise AssertionError(f"output ended without the expected text: {self.data!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s; got {self.data!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.5))
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the other side is closed
                chunk = b""
            if chunk:
                self.data += chunk
            else:
                self.eof = True

    def finish(self, timeout: float = 15) -> int:
        self.read_until(lambda _: self.eof, timeout)
        os.close(self.master)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _publish(server: ServerProcess, *messages: dict[str, Any]) -> None:
    ws = open_ws(server.url, token=TOKEN)
    try:
        for message in messages:
            ws.send(json.dumps(message))
        errors = [m for m in barrier(ws) if m.get("type") == "error"]
        assert not errors, errors
    finally:
        ws.close()


def test_tail_on_a_pty_shows_attacks_as_visible_text(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    _publish(
        server,
        {"type": "status", "sessionId": "victim", "status": "running"},
        {"type": "log", "sessionId": "victim", "level": "info", "message": "real line"},
        {
            "type": "status",
            "sessionId": EVIL_SESSION,
            "status": "running",
            "metadata": {"command": "make\n\x1b[2Jtest"},
        },
        {
            "type": "log",
            "sessionId": EVIL_SESSION,
            "level": "info\x1b[8m",
            "message": EVIL_MESSAGE,
            "data": {"note": "\x9b2J\u2028x"},
        },
        {
            "type": "log",
            "sessionId": EVIL_SESSION,
            "level": "warn",
            "message": "end-of-attack",
        },
    )
    terminal = Terminal("tail", "*", "--url", server.url, "--token", TOKEN)
    try:
        terminal.read_until(lambda data: b"end-of-attack" in data and data.endswith(b"\n"))
        # Live, after both sessions were seen: the column is as wide as the
        # evil id.
        _publish(server, {"type": "log", "sessionId": "victim", "message": "live line"})
        terminal.read_until(lambda data: b"live line\n" in data)
    finally:
        terminal.kill()
    terminal.finish()
    output = bytes(terminal.data).decode("utf-8")  # strict: valid UTF-8 only
    assert "\x1b[38;5;" in output  # a terminal: coloured, with the session palette
    shown = visible(output)
    lines = shown.splitlines()
    assert SHOWN_EVIL_MESSAGE in shown
    assert SHOWN_EVIL_SESSION in shown
    # The server normalises levels through its one table: an unknown level
    # (escape sequence and all) arrives as "info" and never reaches a screen.
    assert "INFO\\x1b[8M" not in shown and f"INFO  {SHOWN_EVIL_MESSAGE}" in shown
    assert "\\x9b2J\\u2028x" in shown and "command=make\\n\\x1b[2Jtest" in shown
    # No line starts with text from a log: each has pcclog's prefix, and the
    # forged "victim" line is inside the attacker's own line.
    forged = [line for line in lines if "FORGED" in line]
    assert len(forged) == 1 and SHOWN_EVIL_SESSION in forged[0].split("\\n12:00")[0]
    assert len([line for line in lines if line.endswith(" real line")]) == 1
    (live,) = [line for line in lines if line.endswith(" live line")]
    padded = "victim" + " " * (len(SHOWN_EVIL_SESSION) - len("victim"))
    assert live.split(" ", 1)[1] == f"{padded} INFO  live line"


def test_sessions_on_a_pty_one_line_each_in_natural_order(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    _publish(
        server,
        *({"type": "status", "sessionId": f"agent-{n}", "status": "running"} for n in (10, 2, 1)),
        {
            "type": "status",
            "sessionId": EVIL_SESSION,
            "status": "error",
            "metadata": {
                "command": "sh -c 'echo a\necho b'\x1b]0;pwned\x07",
                "exitCode": 2,
                "image": "\x1b[8m\u202eevil",
            },
        },
    )
    terminal = Terminal("sessions", "--url", server.url, "--token", TOKEN)
    assert terminal.finish() == 0
    output = bytes(terminal.data).decode("utf-8")
    assert "\x1b[38;5;" in output and Style.STATUS["error"] in output
    rows = visible(output).splitlines()
    assert [row.split()[0] for row in rows] == [
        "SESSION",
        "agent-1",
        "agent-2",
        "agent-10",
        SHOWN_EVIL_SESSION,
    ]
    assert rows[4].split()[1:4] == ["error", "1", "exit=2"]
    assert rows[4].endswith(
        "command=sh -c 'echo a\\necho b'\\x1b]0;pwned\\x07 image=\\x1b[8m\\u202eevil"
    )

"""``pcclog tail``: follow one session or every one (``'*'``) in the
terminal, resuming without loss after reconnects.

Every field a producer or the server controls is passed through
``_terminal.neutralize`` before it is printed (``--json`` excepted): a log
line cannot move the cursor, retitle the terminal, hide text or forge a
line. See ``_terminal`` for the rules, the session colours and the padded
session column.

Also home to what the client commands share: the ``--url``/``--token``
options, the stderr logging of the client library, and the exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
from datetime import datetime
from typing import Any, TextIO

from pcclog_core import LEVEL_RANK, normalize_level
from pcclog_core import LEVELS as LEVEL_NAMES
from pcclog_core._levels import LEVEL_ALIASES

from ._terminal import SessionColumn, neutralize, pad
from .client import AuthenticationError, ConnectionFailed, Subscription

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONNECTION",
    "LEVELS",
    "Style",
    "add_connection_arguments",
    "cmd_tail",
    "register",
    "setup_logging",
]

EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_CONNECTION = 4
EXIT_INTERRUPTED = 130

DEFAULT_URL = "ws://127.0.0.1:8080"

# The core's one level table: every alias a producer may send ranks as the
# level it names (``emerg`` is fatal, never hidden behind ``--level error``).
LEVELS = {alias: LEVEL_RANK[level] for alias, level in LEVEL_ALIASES.items()}
_LEVEL_CHOICES = LEVEL_NAMES

EXIT_CODES_HELP = """exit status:
  0  the session stopped (with --exit-on-end)
  1  the session ended in error (with --exit-on-end)
  2  usage error
  3  the server refused the token (UNAUTHORIZED)
  4  connection failed (with --no-reconnect)
  130 interrupted (Ctrl-C)
"""


# --- shared by the client commands ------------------------------------------


def add_connection_arguments(parser: argparse.ArgumentParser, *, reconnect: bool = False) -> None:
    """``--url`` and ``--token``; with ``reconnect``, ``--reconnect-max`` too."""
    if reconnect:
        parser.add_argument(
            "--reconnect-max",
            type=number(float, minimum=0, exclusive=True),
            default=10.0,
            metavar="SECONDS",
            help="longest wait between reconnection attempts (default: %(default)s)",
        )
    parser.add_argument(
        "--url",
        default=os.environ.get("PCCLOG_URL", DEFAULT_URL),
        help="server WebSocket URL (default: $PCCLOG_URL or %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("PCCLOG_TOKEN"),
        help="auth token (default: $PCCLOG_TOKEN; prefer the variable: arguments are "
        "visible to other users in ps)",
    )


class _Prefixed(logging.Formatter):
    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prog}: {record.getMessage()}"


def setup_logging(prog: str, level: int = logging.WARNING) -> None:
    """Send the client library's notices to stderr as ``prog: message``."""
    logger = logging.getLogger("pcclog.client")
    for handler in list(logger.handlers):
        if getattr(handler, "_pcclog_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Prefixed(prog))
    handler._pcclog_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def use_color(stream: TextIO, choice: str) -> bool:
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty() and os.environ.get("TERM") != "dumb"


class Style:
    """ANSI styling that disappears when color is off. Only these constants
    (and the session colours of ``_terminal``) are ever written as escape
    sequences; what they wrap is neutralised first."""

    RESET = "\x1b[0m"
    LEVEL = {
        0: "\x1b[2m",
        1: "\x1b[34m",
        2: "\x1b[32m",
        3: "\x1b[33m",
        4: "\x1b[31m",
        5: "\x1b[1;37;41m",
    }
    STATUS = {"running": "\x1b[1;32m", "stopped": "\x1b[1;34m", "error": "\x1b[1;31m"}
    DIM = "\x1b[2m"
    BOLD = "\x1b[1m"
    WARNING = "\x1b[1;33m"

    def __init__(self, color: bool) -> None:
        self.color = color

    def paint(self, code: str, text: str) -> str:
        return f"{code}{text}{self.RESET}" if self.color and code else text

    def dim(self, text: str) -> str:
        return self.paint(self.DIM, text)

    def bold(self, text: str) -> str:
        return self.paint(self.BOLD, text)

    def status(self, status: str) -> str:
        """``status`` neutralised, coloured if it is one of the three."""
        return self.paint(self.STATUS.get(status, ""), neutralize(status))


# --- formatting ---------------------------------------------------------------


def level_rank(level: object) -> int:
    return LEVEL_RANK[normalize_level(level)]


def _local_time(timestamp: object) -> str:
    if not isinstance(timestamp, str):
        return " " * 12
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        return moment.astimezone().strftime("%H:%M:%S.%f")[:-3]
    except (ValueError, OverflowError):  # a producer's own timestamp: any text
        return neutralize(timestamp)


def _summary(metadata: object, keys: tuple[str, ...]) -> str:
    if not isinstance(metadata, dict):
        return ""
    parts = []
    for key in keys:
        if key in metadata and metadata[key] not in (None, ""):
            value = metadata[key]
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            parts.append(f"{key}={neutralize(text)}")
    return " ".join(parts)


_STATUS_KEYS = (
    "exitCode",
    "signal",
    "duration",
    "command",
    "pid",
    "containerName",
    "image",
    "error",
    "message",
)
_HIDDEN_DATA = ("stream", "containerId")


class Formatter:
    """One message → one line of text (or None to print nothing): exactly
    one, whatever the message holds, since every field is neutralised."""

    def __init__(self, style: Style, *, tty: bool) -> None:
        self.style = style
        self.tty = tty
        self.sessions = SessionColumn(color=style.color, pad=tty)

    def _when(self, timestamp: object) -> str:
        if self.tty:
            return self.style.dim(_local_time(timestamp))
        return neutralize(timestamp) if isinstance(timestamp, str) else "-"

    def format(self, message: dict[str, Any]) -> str | None:
        kind = message.get("type")
        if kind not in ("log", "status", "gap"):
            return None
        style = self.style
        session = self.sessions.cell(str(message.get("sessionId", "")))
        if kind == "log":
            level = str(message.get("level", "info"))
            rank = level_rank(level)
            label = pad(neutralize(level.upper()), 5)
            text = neutralize(str(message.get("message", "")), keep_tab=True)
            data = message.get("data")
            extra = ""
            if isinstance(data, dict):
                shown = {k: v for k, v in data.items() if k not in _HIDDEN_DATA}
                if shown:
                    dumped = json.dumps(shown, ensure_ascii=False, separators=(",", ":"))
                    dumped = dumped if len(dumped) <= 300 else dumped[:297] + "..."
                    extra = " " + style.dim(neutralize(dumped))
            if self.tty and rank >= 4:
                text = style.paint(Style.LEVEL[rank], text) if rank == 4 else text
            return (
                f"{self._when(message.get('timestamp'))} {session} "
                f"{style.paint(Style.LEVEL.get(rank, ''), label)} {text}{extra}"
            )
        if kind == "status":
            status = str(message.get("status", ""))
            metadata = message.get("metadata")
            when: object = None
            if isinstance(metadata, dict):
                when = metadata.get("startTime" if status == "running" else "finishedAt")
            details = _summary(metadata, _STATUS_KEYS)
            snapshot = "seq" not in message
            shown_status = neutralize(status)
            if self.tty:
                marker = {"running": "●", "stopped": "■", "error": "✖"}.get(status, "•")
                head = style.paint(Style.STATUS.get(status, ""), f"{marker} {shown_status}")
                tail = style.dim(" (current state)") if snapshot else ""
                body = f"{head}{tail}" + (f"  {style.dim(details)}" if details else "")
                return f"{self._when(when)} {session} {body}"
            label = "STATE" if snapshot else "STATUS"
            return f"{self._when(when)} {session} {label} {shown_status}" + (
                f" {details}" if details else ""
            )
        if kind == "gap":
            span = neutralize(f"{message.get('fromSeq')}-{message.get('toSeq')}")
            reason = neutralize(str(message.get("reason", "")))
            if self.tty:
                text = style.paint(
                    Style.WARNING, f"⚠ missed entries {span} ({reason}); they are not in this view"
                )
                return f"{self._when(None)} {session} {text}"
            return f"- {session} GAP {span} {reason}"
        return None


# --- the command --------------------------------------------------------------


def _error_line(message: dict[str, Any]) -> str:
    where = f" [{message['sessionId']}]" if message.get("sessionId") else ""
    return neutralize(f"{message.get('code')}{where}: {message.get('message')}")


async def _tail(args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    style = Style(use_color(sys.stdout, args.color))
    formatter = Formatter(style, tty=tty)
    pattern = re.compile(args.grep) if args.grep else None
    min_rank = LEVELS[args.level] if args.level else 0
    outage = False

    def on_change(connected: bool, detail: str) -> None:
        # One line when the connection is lost, one when it is back: not
        # one per attempt in between.
        nonlocal outage
        if connected and outage:
            print(f"pcclog tail: {neutralize(detail)}; resumed", file=sys.stderr, flush=True)
        elif not connected and not outage:
            print(f"pcclog tail: {neutralize(detail)}", file=sys.stderr, flush=True)
        outage = not connected

    current: str | None = None
    live = False
    out = sys.stdout
    async with Subscription(
        args.url,
        args.session,
        token=args.token,
        since=args.since,
        tail=args.tail,
        reconnect=not args.no_reconnect,
        backoff=(0.25, args.reconnect_max),
        sync_markers=True,
        on_connection_change=on_change,
    ) as subscription:
        async for message in subscription:
            kind = message.get("type")
            if kind == "synced":
                live = True
                if args.exit_on_end and current in ("stopped", "error"):
                    return 0 if current == "stopped" else 1
                continue
            if kind == "log":
                if level_rank(message.get("level")) < min_rank:
                    continue
                if pattern is not None and not pattern.search(str(message.get("message", ""))):
                    continue
            if args.json:
                out.write(json.dumps(message, ensure_ascii=False) + "\n")
            elif kind == "error":
                print(f"pcclog tail: {_error_line(message)}", file=sys.stderr, flush=True)
            else:
                line = formatter.format(message)
                if line is not None:
                    out.write(line + "\n")
            out.flush()
            if kind == "status" and message.get("sessionId") == args.session:
                current = str(message.get("status"))
                if (
                    args.exit_on_end
                    and live
                    and "seq" in message
                    and current
                    in (
                        "stopped",
                        "error",
                    )
                ):
                    return 0 if current == "stopped" else 1
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    if args.exit_on_end and args.session == "*":
        print("pcclog tail: --exit-on-end needs a single session, not '*'", file=sys.stderr)
        return EXIT_USAGE
    if args.grep:
        try:
            re.compile(args.grep)
        except re.error as exc:
            print(f"pcclog tail: invalid --grep pattern: {exc}", file=sys.stderr)
            return EXIT_USAGE
    setup_logging("pcclog tail", logging.ERROR)
    try:
        return asyncio.run(_tail(args))
    except AuthenticationError as exc:
        hint = "" if args.token else " (no token given: set --token or $PCCLOG_TOKEN)"
        print(f"pcclog tail: UNAUTHORIZED: {neutralize(str(exc))}{hint}", file=sys.stderr)
        return EXIT_AUTH
    except ConnectionFailed as exc:
        print(f"pcclog tail: {neutralize(str(exc))}", file=sys.stderr)
        return EXIT_CONNECTION
    except ValueError as exc:
        print(f"pcclog tail: {neutralize(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def number(kind: type[float] | type[int], *, minimum: float, exclusive: bool = False) -> Any:
    """An argparse ``type``: a number of ``kind`` at least (or, with
    ``exclusive``, above) ``minimum``, with a readable error. Shared by the
    client commands."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum or (exclusive and value == minimum):
            bound = "above" if exclusive else "at least"
            raise argparse.ArgumentTypeError(f"must be {bound} {minimum:g}")
        return value

    return parse


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "tail",
        help="follow a session's logs and status (or every session with '*')",
        description="Follow the logs and status changes of one session, or of every\n"
        "session the token may view with '*' (quote it for the shell).\n\n"
        "Reconnects with backoff after any disconnect and resumes exactly where\n"
        "it stopped: no line lost, none repeated. Colored when stdout is a\n"
        "terminal, plain text otherwise, raw JSON messages with --json.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("session", metavar="SESSION", help="session id, or '*' for every session")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        type=number(int, minimum=0),
        metavar="SEQ",
        help="replay the entries after this seq, then follow (resume)",
    )
    start.add_argument(
        "--tail",
        type=number(int, minimum=0),
        metavar="N",
        help="replay the last N entries first (default: the server's SUBSCRIBE_TAIL, 100)",
    )
    parser.add_argument(
        "--level",
        choices=_LEVEL_CHOICES,
        help="show log lines at this level or above (trace<debug<info<warn<error<fatal)",
    )
    parser.add_argument("--grep", metavar="REGEX", help="show log lines whose message matches")
    parser.add_argument("--json", action="store_true", help="print raw messages, one JSON per line")
    parser.add_argument(
        "--exit-on-end",
        action="store_true",
        help="exit when the session is stopped (status 0) or in error (status 1); "
        "for scripts waiting on a session",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="color output (default: auto = when stdout is a terminal and NO_COLOR is unset)",
    )
    parser.add_argument(
        "--no-reconnect",
        action="store_true",
        help="exit (status 4) instead of reconnecting when the connection fails",
    )
    add_connection_arguments(parser, reconnect=True)
    parser.set_defaults(func=cmd_tail)

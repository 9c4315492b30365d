"""``pcclog sessions``: the sessions the token may view, as a table.

One line per session whatever its id or metadata hold: every cell is
neutralised (``_terminal.neutralize``: a newline is ``\\n``, an escape
sequence is ``\\x1b[...``), metadata values are cut at
``DETAIL_WIDTH`` columns and ids at ``ID_WIDTH`` (in the middle, with
``…``). Rows are in natural order (``agent-2`` before ``agent-10``); ids
are coloured as in ``pcclog tail``. ``--json`` prints the exact list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ._terminal import (
    RESET,
    SessionColors,
    display_width,
    fit,
    natural_key,
    neutralize,
    pad,
    truncate,
)
from .client import AuthenticationError, ClientError, ConnectionFailed, list_sessions
from .cmd_tail import (
    EXIT_AUTH,
    EXIT_CONNECTION,
    Style,
    add_connection_arguments,
    use_color,
)

__all__ = ["DETAIL_WIDTH", "ID_WIDTH", "cmd_sessions", "register", "render_table"]

ID_WIDTH = 64  # a Docker container id (the wrapper dialect's session id) fits
DETAIL_WIDTH = 60

# (metadata key, label), in the order shown; a container name stands for the
# command that started it.
_DETAILS = (
    ("exitCode", "exit"),
    ("signal", "signal"),
    ("containerName", "container"),
    ("command", "command"),
    ("image", "image"),
)


def _cell(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return truncate(neutralize(text), DETAIL_WIDTH)


def _details(metadata: Any) -> str:
    if not isinstance(metadata, dict):
        return ""
    parts = []
    for key, label in _DETAILS:
        value = metadata.get(key)
        if value is None or (key != "exitCode" and not value):
            continue
        if key == "command" and metadata.get("containerName"):
            continue
        parts.append(f"{label}={_cell(value)}")
    return " ".join(parts)


def render_table(sessions: list[dict[str, Any]], style: Style) -> str:
    """Aligned columns: SESSION STATUS LAST-SEQ DETAILS, one line per session."""
    header = ("SESSION", "STATUS", "LAST-SEQ", "DETAILS")
    ordered = sorted(sessions, key=lambda s: natural_key(str(s.get("sessionId", ""))))
    ids = [str(s.get("sessionId", "")) for s in ordered]
    rows = [
        (
            fit(neutralize(session_id), ID_WIDTH),
            neutralize(str(s.get("status", ""))),
            neutralize(str(s.get("lastSeq", ""))),
            _details(s.get("metadata")),
        )
        for session_id, s in zip(ids, ordered, strict=True)
    ]
    widths = [max(display_width(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        style.bold(
            f"{pad(header[0], widths[0])}  {pad(header[1], widths[1])}  "
            f"{header[2]:>{widths[2]}}  {header[3]}".rstrip()
        )
    ]
    colors = SessionColors()
    for session_id, (session, status, seq, details) in zip(ids, rows, strict=True):
        # Pad outside the colours so escape codes do not upset the alignment.
        painted = f"{colors.code(session_id)}{session}{RESET}" if style.color else session
        session_cell = painted + " " * (widths[0] - display_width(session))
        status_cell = style.paint(Style.STATUS.get(status, ""), status) + " " * (
            widths[1] - display_width(status)
        )
        seq_cell = " " * (widths[2] - display_width(seq)) + seq
        lines.append(f"{session_cell}  {status_cell}  {seq_cell}  {details}".rstrip())
    return "\n".join(lines)


def cmd_sessions(args: argparse.Namespace) -> int:
    try:
        sessions = asyncio.run(list_sessions(args.url, args.token, timeout=args.timeout))
    except AuthenticationError as exc:
        hint = "" if args.token else " (no token given: set --token or $PCCLOG_TOKEN)"
        print(f"pcclog sessions: UNAUTHORIZED: {neutralize(str(exc))}{hint}", file=sys.stderr)
        return EXIT_AUTH
    except ConnectionFailed as exc:
        print(f"pcclog sessions: {neutralize(str(exc))}", file=sys.stderr)
        return EXIT_CONNECTION
    except (ClientError, ValueError) as exc:
        print(f"pcclog sessions: {neutralize(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if args.json:
        print(json.dumps(sessions, ensure_ascii=False))
    elif not sessions:
        print("no sessions", file=sys.stderr)
    else:
        print(render_table(sessions, Style(use_color(sys.stdout, args.color))))
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sessions",
        help="list the sessions with status, last seq and exit code",
        description="List the sessions the token may view: id, status (running, stopped, "
        "error), the seq of the latest entry (resume a tail with --since), and a metadata "
        "summary (exit code, container name or command).",
        epilog="exit status: 0 ok, 1 error, 3 token refused (UNAUTHORIZED), 4 connection failed",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the sessions as one JSON array (for jq)"
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="color the status column (default: auto)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="give up after this long (default: %(default)s)",
    )
    add_connection_arguments(parser)
    parser.set_defaults(func=cmd_sessions)

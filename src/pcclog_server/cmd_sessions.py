"""``pcclog sessions``: the sessions the token may view, as a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .client import AuthenticationError, ClientError, ConnectionFailed, list_sessions
from .cmd_tail import (
    EXIT_AUTH,
    EXIT_CONNECTION,
    Style,
    add_connection_arguments,
    use_color,
)

__all__ = ["cmd_sessions", "register", "render_table"]


def _details(metadata: Any) -> str:
    if not isinstance(metadata, dict):
        return ""
    parts = []
    if metadata.get("exitCode") is not None:
        parts.append(f"exit={metadata['exitCode']}")
    if metadata.get("signal"):
        parts.append(f"signal={metadata['signal']}")
    if metadata.get("containerName"):
        parts.append(f"container={metadata['containerName']}")
    elif metadata.get("command"):
        command = str(metadata["command"])
        parts.append(f"command={command if len(command) <= 60 else command[:57] + '...'}")
    if metadata.get("image"):
        parts.append(f"image={metadata['image']}")
    return " ".join(parts)


def render_table(sessions: list[dict[str, Any]], style: Style) -> str:
    """Aligned columns: SESSION STATUS LAST-SEQ DETAILS."""
    header = ("SESSION", "STATUS", "LAST-SEQ", "DETAILS")
    rows = [
        (
            str(s.get("sessionId", "")),
            str(s.get("status", "")),
            str(s.get("lastSeq", "")),
            _details(s.get("metadata")),
        )
        for s in sorted(sessions, key=lambda s: str(s.get("sessionId", "")))
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        style.bold(
            f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  "
            f"{header[2]:>{widths[2]}}  {header[3]}".rstrip()
        )
    ]
    for session, status, seq, details in rows:
        # Pad before painting so escape codes do not upset the alignment.
        status_cell = style.status(status) + " " * (widths[1] - len(status))
        lines.append(
            f"{session:<{widths[0]}}  {status_cell}  {seq:>{widths[2]}}  {details}".rstrip()
        )
    return "\n".join(lines)


def cmd_sessions(args: argparse.Namespace) -> int:
    try:
        sessions = asyncio.run(list_sessions(args.url, args.token, timeout=args.timeout))
    except AuthenticationError as exc:
        hint = "" if args.token else " (no token given: set --token or $PCCLOG_TOKEN)"
        print(f"pcclog sessions: UNAUTHORIZED: {exc}{hint}", file=sys.stderr)
        return EXIT_AUTH
    except ConnectionFailed as exc:
        print(f"pcclog sessions: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    except (ClientError, ValueError) as exc:
        print(f"pcclog sessions: {exc}", file=sys.stderr)
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

"""``pcclog run``: run a command as a session, streaming its output and exit
status to the server.

stdout lines become ``log`` entries at ``--stdout-level`` (info), stderr
lines at ``--stderr-level`` (error), with ``data: {"stream": ...}``. The
session gets ``status running`` (command, pid, startTime, host) when the
command starts and ``stopped`` (exit 0) or ``error`` (anything else) with
exitCode, finishedAt and duration when it ends. The output is also echoed
to this process's own stdout/stderr (``--quiet`` turns that off), and
``pcclog run`` exits with the command's status (128+N when killed by signal
N, 127 when it cannot be found, 126 when it cannot be executed).

Delivery uses ``client.Producer``: entries are buffered in memory while the
server is unreachable or refuses the token (a restarted server may take it
back; said once on stderr) and sent in order when it accepts them; the
``running`` status is re-sent on every reconnect, so a restarted server
knows the session even when the command prints nothing. At the end
``pcclog run`` waits up to ``--flush-timeout`` for the server to confirm
everything, and says on stderr how many entries were not delivered if any.

When the server refused the output (the token, or the session: outside the
token's scope, ``TOO_MANY_SESSIONS``) ``pcclog run`` says why and exits
non-zero even if the command succeeded (``EXIT_REFUSED``, 3, as ``pcclog
tail`` does for a refused token); a command that failed keeps its own
status. A server that is merely unreachable does not change the status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from typing import IO, Any

from pcclog_core import normalize_level
from pcclog_core._timefmt import format_wall

from .client import Producer
from .cmd_tail import EXIT_AUTH, LEVELS, add_connection_arguments, number, setup_logging

__all__ = ["EXIT_REFUSED", "LineSplitter", "cmd_run", "register"]

EXIT_REFUSED = EXIT_AUTH  # the command succeeded, the server refused its output

_EXIT_GRACE = 2.0  # seconds to keep reading pipes a background child holds open


class LineSplitter:
    """Bytes in, whole lines out; a line longer than ``max_line`` bytes is
    cut there and the number of bytes cut is reported with it."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buffer = bytearray()
        self._cut = 0

    def feed(self, data: bytes) -> list[tuple[bytes, int]]:
        lines: list[tuple[bytes, int]] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._add(data[start:])
                return lines
            self._add(data[start:end])
            lines.append(self._take())
            start = end + 1

    def close(self) -> list[tuple[bytes, int]]:
        """The last line, if the output did not end with a newline."""
        return [self._take()] if self._buffer or self._cut else []

    def _add(self, chunk: bytes) -> None:
        room = self.max_line - len(self._buffer)
        if len(chunk) <= room:
            self._buffer += chunk
        else:
            self._buffer += chunk[: max(room, 0)]
            self._cut += len(chunk) - max(room, 0)

    def _take(self) -> tuple[bytes, int]:
        line = bytes(self._buffer)
        cut = self._cut
        self._buffer.clear()
        self._cut = 0
        if line.endswith(b"\r") and not cut:
            line = line[:-1]
        return line, cut


class _Pipe(asyncio.Protocol):
    """Reads one of the child's pipes: echo, split into lines, publish."""

    def __init__(
        self,
        producer: Producer,
        session: str,
        stream: str,
        level: str,
        echo: IO[bytes] | None,
        max_line: int,
    ) -> None:
        self.producer = producer
        self.session = session
        self.stream = stream
        self.level = level
        self.echo = echo
        self.lines = LineSplitter(max_line)
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.echo is not None:
            try:
                self.echo.write(data)
                self.echo.flush()
            except (OSError, ValueError):
                self.echo = None  # our own stdout went away; keep publishing
        for line, cut in self.lines.feed(data):
            self._publish(line, cut)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    def finish(self) -> None:
        if not self.done.done():
            for line, cut in self.lines.close():
                self._publish(line, cut)
            self.done.set_result(None)

    def _publish(self, line: bytes, cut: int) -> None:
        text = line.decode("utf-8", "replace")
        data: dict[str, Any] = {"stream": self.stream}
        if cut:
            text += f" [… {cut} more bytes cut]"
            data["truncated"] = cut
        self.producer.log(self.session, self.level, text, data)


def _foreground_of_terminal() -> bool:
    """True when Ctrl-C on our terminal reaches the child by itself."""
    for stream in (sys.stdin, sys.stdout, sys.stderr):
        try:
            if stream.isatty():
                return os.tcgetpgrp(stream.fileno()) == os.getpgrp()
        except (OSError, ValueError, AttributeError):
            continue
    return False


async def _run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    command: list[str] = args.command
    session: str = args.session
    producer = Producer(
        args.url,
        token=args.token,
        max_buffer=args.buffer,
        max_message_size=args.max_message_size,
        backoff=(0.25, args.reconnect_max),
        flush_timeout=args.flush_timeout,
    )
    producer.start()
    started = time.time()
    env = dict(os.environ)
    env["PCCLOG_SESSION"] = session
    try:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True
        )
    except OSError as exc:
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        reason = f"cannot run {command[0]!r}: {exc.strerror or exc}"
        print(f"pcclog run: {reason}", file=sys.stderr)
        producer.log(session, "error", f"pcclog run: {reason}", {"stream": "stderr"})
        producer.status(
            session,
            "error",
            {
                "command": shlex.join(command),
                "exitCode": code,
                "error": reason,
                "finishedAt": format_wall(time.time()),
                "duration": 0,
            },
        )
        await _finish(producer, args, asyncio.Event())
        return code
    producer.status(
        session,
        "running",
        {
            "command": shlex.join(command),
            "pid": proc.pid,
            "startTime": format_wall(started),
            "host": socket.gethostname(),
            "exitCode": None,
            "signal": None,
            "finishedAt": None,
            "duration": None,
        },
    )
    abort = asyncio.Event()
    signals_seen = 0
    interactive = _foreground_of_terminal()

    def forward(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if proc.returncode is None and proc.poll() is None:
            # Ctrl-C on our terminal already reached the child (same
            # process group); anything else we pass on.
            if not (signum == signal.SIGINT and interactive):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)
        else:
            abort.set()  # a signal while flushing: stop waiting

    # Installed before the first await: a signal that arrives once the
    # command runs is always passed on, never the default (death) for us.
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in handled:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, forward, signum)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        pipes = []
        for pipe, name, level, echo in (
            (proc.stdout, "stdout", args.stdout_level, None if args.quiet else sys.stdout.buffer),
            (proc.stderr, "stderr", args.stderr_level, None if args.quiet else sys.stderr.buffer),
        ):
            protocol = _Pipe(producer, session, name, level, echo, args.max_line)
            await loop.connect_read_pipe(lambda p=protocol: p, pipe)  # type: ignore[misc]
            pipes.append(protocol)
        returncode = await asyncio.to_thread(proc.wait)
        await asyncio.wait([p.done for p in pipes], timeout=_EXIT_GRACE)
        for protocol in pipes:
            if protocol.transport is not None:
                protocol.transport.close()
            protocol.finish()
        finished = time.time()
        exit_code = returncode if returncode >= 0 else 128 - returncode
        metadata: dict[str, Any] = {
            "exitCode": exit_code,
            "finishedAt": format_wall(finished),
            "duration": round(finished - started, 3),
        }
        if returncode < 0:
            with contextlib.suppress(ValueError):
                metadata["signal"] = signal.Signals(-returncode).name
        producer.status(session, "stopped" if exit_code == 0 else "error", metadata)
        refused = await _finish(producer, args, abort)
    finally:
        for signum in handled:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
    return EXIT_REFUSED if refused and exit_code == 0 else exit_code


async def _finish(producer: Producer, args: argparse.Namespace, abort: asyncio.Event) -> bool:
    """Wait (bounded) for the server to confirm everything, then report.
    True when the server refused some of the output (not merely missed it)."""
    flush = asyncio.ensure_future(producer.flush(args.flush_timeout))
    stop = asyncio.ensure_future(abort.wait())
    await asyncio.wait({flush, stop}, return_when=asyncio.FIRST_COMPLETED)
    stop.cancel()
    if not flush.done():
        flush.cancel()
    pending = producer.pending
    error = producer.error
    await producer.aclose(flush_timeout=0)
    hint = "" if args.token else " (no token given: set --token or $PCCLOG_TOKEN)"
    if error is not None and pending:
        print(
            f"pcclog run: {pending} entries were not delivered to {producer.url}: {error}{hint}",
            file=sys.stderr,
        )
    elif pending:
        why = "interrupted" if abort.is_set() else f"not confirmed within {args.flush_timeout:g}s"
        print(
            f"pcclog run: {pending} entries were not delivered to {producer.url} ({why})",
            file=sys.stderr,
        )
    if producer.dropped:
        print(
            f"pcclog run: {producer.dropped} entries were dropped (buffer of {args.buffer} full)",
            file=sys.stderr,
        )
    if producer.rejected:
        print(
            f"pcclog run: the server refused {producer.rejected} entries "
            f"({producer.last_rejection}){hint}",
            file=sys.stderr,
        )
    return bool(producer.rejected) or (error is not None and bool(pending))


def cmd_run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print(
            "pcclog run: no command given (pcclog run --session ID -- CMD ARGS...)", file=sys.stderr
        )
        return 2
    args.command = command
    if not 1 <= len(args.session) <= 256 or args.session == "*":
        print("pcclog run: --session must be 1 to 256 characters and not '*'", file=sys.stderr)
        return 2
    setup_logging("pcclog run", logging.WARNING)
    try:
        return asyncio.run(_run(args))
    except ValueError as exc:
        print(f"pcclog run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the command started
        return 130


def _level(text: str) -> str:
    if text.lower() not in LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {text!r}")
    return normalize_level(text)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="run a command as a session, streaming its output and exit status",
        description="Run CMD as session ID: its stdout and stderr lines are published as log "
        "entries (and still printed here), its start and exit as status changes. Entries are "
        "buffered in memory while the server is unreachable or refuses the token, and sent in "
        "order when it accepts them. Exits with the command's exit status. The token needs the "
        "produce role.",
        usage="%(prog)s --session ID [options] -- CMD [ARGS...]",
        epilog="exit status: the command's (128+N when killed by signal N, 127 when it cannot "
        "be found, 126 when it cannot be executed); 3 when it succeeded but the server refused "
        "its output (the token, or the session), with the reason on stderr; 2 on a usage "
        "error.  example: pcclog run --session build-1 -- make -j8",
    )
    parser.add_argument("--session", required=True, metavar="ID", help="session id to publish to")
    parser.add_argument(
        "--stdout-level",
        type=_level,
        default="info",
        metavar="LEVEL",
        help="level of stdout lines (default: %(default)s)",
    )
    parser.add_argument(
        "--stderr-level",
        type=_level,
        default="error",
        metavar="LEVEL",
        help="level of stderr lines (default: %(default)s)",
    )
    parser.add_argument(
        "--flush-timeout",
        type=number(float, minimum=0),
        default=30.0,
        metavar="SECONDS",
        help="after the command exits, wait this long at most for the server to confirm "
        "every entry (default: %(default)s)",
    )
    parser.add_argument(
        "--buffer",
        type=number(int, minimum=1),
        default=100_000,
        metavar="N",
        help="entries kept while the server is unreachable; past that the oldest are dropped "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--max-line",
        type=number(int, minimum=64),
        default=1_048_576,
        metavar="BYTES",
        help="cut longer lines here, marking the cut (default: %(default)s); lines longer "
        "than one message are split into parts",
    )
    parser.add_argument(
        "--max-message-size",
        type=number(int, minimum=512),
        default=1_048_576,
        metavar="BYTES",
        help="the server's MAX_MESSAGE_SIZE (default: %(default)s)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="do not echo the command's output here"
    )
    add_connection_arguments(parser, reconnect=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD", help="the command")
    parser.set_defaults(func=cmd_run)

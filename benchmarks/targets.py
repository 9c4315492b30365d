"""Benchmark targets: servers the harness starts, measures and stops.

A target is a command that starts a server listening on 127.0.0.1 at a given port,
plus the token the load generator presents. Adding a server to the comparison is one more
:class:`Target` in :func:`all_targets`.

Every target gets the seed's keepalive variables in its environment (``WS_PING_INTERVAL``,
``WS_PING_TIMEOUT``, milliseconds); a scenario may override them. The server process is
pinned to core 0 (the load generator runs on core 1) and inherits the harness's raised
``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PEERS_DIR = BENCH_DIR / "peers"
RESULTS_DIR = BENCH_DIR / "results"  # gitignored: raw JSON and server logs
LOG_DIR = RESULTS_DIR / "logs"

SERVER_CORE = 0
CLIENT_CORE = 1
TOKEN = "bench-token"
DEFAULT_ENV = {"WS_PING_INTERVAL": "30000", "WS_PING_TIMEOUT": "5000"}


class TargetUnavailable(Exception):
    """The target cannot run on this machine; the message says why."""


@dataclass(frozen=True)
class Target:
    name: str
    #: port -> argv of a process that serves WebSocket on 127.0.0.1:port
    command: Callable[[int], list[str]]
    token: str = TOKEN
    env: Mapping[str, str] = field(default_factory=dict)
    #: Make the target runnable (install dependencies, check imports); raise
    #: :class:`TargetUnavailable` if it cannot be.
    prepare: Callable[[], None] | None = None
    description: str = ""
    #: Scenario prefixes this target runs (``None``: all of them).
    scenarios: tuple[str, ...] | None = None


def _check_python_imports(*modules: str) -> Callable[[], None]:
    def check() -> None:
        code = "import " + ", ".join(modules)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_DIR / "src"), env.get("PYTHONPATH")])
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
            )
        except subprocess.TimeoutExpired as exc:
            raise TargetUnavailable(f"`{code}` timed out") from exc
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise TargetUnavailable(f"`{code}` failed: {last}")

    return check


def _prepare_node() -> None:
    node = shutil.which("node")
    if node is None:
        raise TargetUnavailable("node is not on PATH")
    if (BENCH_DIR / "node_modules" / "ws" / "package.json").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise TargetUnavailable("npm is not on PATH (needed to install ws)")
    verb = "ci" if (BENCH_DIR / "package-lock.json").exists() else "install"
    try:
        proc = subprocess.run(
            [npm, verb, "--no-audit", "--no-fund"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired as exc:
        raise TargetUnavailable(f"npm {verb} timed out") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise TargetUnavailable(f"npm {verb} failed: {last}")


def _pcclog_serve(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pcclog_server.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--auth-tokens",
        TOKEN,
        "--docker-enabled",
        "false",
    ]


def raw_websocket(
    port: int, *, path: str = "/", rcvbuf: int | None = None, timeout: float = 10.0
) -> socket.socket:
    """A blocking socket past a WebSocket handshake with the server on
    ``port`` (``rcvbuf`` fixed before connect, so the kernel does not grow it)."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing past the head is taken
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    sock.settimeout(None)
    return sock


def metric(port: int, name: str) -> float:
    """One value of a running pcclog's ``/metrics`` (NaN if absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def all_targets() -> list[Target]:
    py = sys.executable
    return [
        Target(
            name="websockets",
            command=lambda port: [py, str(PEERS_DIR / "websockets_peer.py"), str(port)],
            prepare=_check_python_imports("websockets"),
            description="websockets (asyncio), broadcast(), idiomatic",
        ),
        Target(
            name="picows",
            command=lambda port: [py, str(PEERS_DIR / "picows_peer.py"), str(port)],
            prepare=_check_python_imports("picows", "uvloop", "msgspec"),
            description="picows + uvloop, frame encoded once, coalesced writes",
        ),
        Target(
            name="node-ws",
            command=lambda port: ["node", str(PEERS_DIR / "node_ws_peer.js"), str(port)],
            prepare=_prepare_node,
            description="Node + ws (the original server's stack)",
        ),
        Target(
            name="pcclog",
            command=_pcclog_serve,
            # Per-connection open/close lines are info; the peers log nothing.
            env={"PYTHONPATH": str(REPO_DIR / "src"), "LOG_LEVEL": "warn"},
            prepare=_check_python_imports("pcclog_server.cli"),
            description="pcclog_server (this project)",
        ),
        Target(
            name="pcclog-redact-off",
            command=_pcclog_serve,
            env={"PYTHONPATH": str(REPO_DIR / "src"), "LOG_LEVEL": "warn", "REDACT": "off"},
            prepare=_check_python_imports("pcclog_server.cli"),
            description="pcclog with REDACT=off: what redaction costs, in the same run",
            scenarios=("S1",),
        ),
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def pin_client() -> None:
    """Pin the calling (load generator) process to the client core, when there are two."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CORE:
        os.sched_setaffinity(0, {CLIENT_CORE})


def _pin_server() -> None:  # runs in the child between fork and exec
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > CLIENT_CORE:
        os.sched_setaffinity(0, {SERVER_CORE})


@dataclass
class RunningServer:
    target: Target
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def token(self) -> str:
        return self.target.token

    def _processes(self) -> list[psutil.Process]:
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident set size of the server and its children, bytes."""
        total = 0
        for p in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its children so far."""
        total = 0.0
        for p in self._processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _wait_listening(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(
                f"{server.target.name} exited with {server.proc.returncode} before listening: "
                f"{server.log_tail()}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{server.target.name} did not listen within {timeout:.0f} s")


@contextlib.contextmanager
def running(
    target: Target, tag: str, env: Mapping[str, str] | None = None, timeout: float = 30.0
) -> Iterator[RunningServer]:
    """Start ``target`` on a free port (pinned to the server core), yield, stop it."""
    port = free_port()
    full_env = dict(os.environ)
    full_env.update(DEFAULT_ENV)
    full_env.update(target.env)
    if "PYTHONPATH" in target.env and os.environ.get("PYTHONPATH"):
        full_env["PYTHONPATH"] = target.env["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
    full_env.update(env or {})
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{target.name}-{tag}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            target.command(port),
            cwd=REPO_DIR,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pin_server,  # only sets CPU affinity; no locks taken
        )
    server = RunningServer(target=target, port=port, proc=proc, log_path=log_path)
    try:
        _wait_listening(server, timeout)
        yield server
    finally:
        server.stop()

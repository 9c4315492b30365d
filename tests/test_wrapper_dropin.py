"""Ingest that loses nothing (issue 14), against the real server.

* The original container wrapper as a drop-in: ``tests/node/wrapper.js``
  speaks its dialect (SPEC §3) over Node's ``ws``; with ``AUTH_TOKEN`` or a
  produce token from ``AUTH_TOKENS`` every entry reaches a viewer in order,
  a 100 KB line whole, the exit status last; without a valid token it is
  refused with HTTP 401 at the handshake and exits at once.
* Big lines: cut at ``MAX_LINE_BYTES`` with a marker, never dropped; a
  message over ``MAX_MESSAGE_SIZE`` is refused with ``MESSAGE_TOO_LARGE``
  and the producer's next message still arrives; a 100 KB line via a plain
  WebSocket producer, ``pcclog run`` and a Docker container, each whole.
* ``PRODUCER_GRACE``: a producer that vanishes leaves its session ``error``
  (``producer lost``); one that comes back within the grace continues it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TEST_IMAGE, ServerProcess, wait_for
from rawws import RawWebSocket
from wsclient import open_ws

NODE_DIR = Path(__file__).resolve().parent / "node"
PCCLOG = REPO / ".venv" / "bin" / "pcclog"
VIEW = "view-token-5f1c2e9a7b"
PRODUCE = "produce-token-8d3a6b0c4e"
ORIGINAL = "original-auth-token-2b7e91"  # AUTH_TOKEN, the original server's variable
SPLIT_TOKENS = f"{VIEW}:view:*,{PRODUCE}:produce:*"
BASE_TIME = "2024-01-26T13:45:30.000Z"
BIG = 102_400  # a 100 KB line: under MAX_LINE_BYTES, over the old 64 KiB limit
MAX_LINE_BYTES = 262_144
MARKER = re.compile(r"^(x*) …\[truncated (\d+) bytes\]$")


# --- helpers ---------------------------------------------------------------------


class Viewer:
    """A ``websockets`` client subscribed to ``*``, reading in a thread."""

    def __init__(self, server: ServerProcess, token: str) -> None:
        self.ws = open_ws(server.url)
        self.messages: list[dict[str, Any]] = []
        self._pongs = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        self.ws.send(json.dumps({"type": "subscribe", "sessionId": "*", "auth": {"token": token}}))
        self.barrier()  # subscribed before any producer starts
        assert not self.errors(), self.errors()

    def _read(self) -> None:
        try:
            for text in self.ws:
                message = json.loads(text)
                if message.get("type") == "pong":
                    self._pongs += 1
                else:
                    self.messages.append(message)
        except Exception:
            pass

    def barrier(self) -> None:
        """Everything the server queued for this viewer so far has arrived."""
        expected = self._pongs + 1
        self.ws.send('{"type":"ping"}')
        wait_for(lambda: self._pongs >= expected, timeout=10, what="the viewer's pong")

    def entries(self, session: str) -> list[dict[str, Any]]:
        """``log`` and ``status`` entries of ``session`` (not snapshots), in order."""
        return [
            m
            for m in list(self.messages)
            if m.get("sessionId") == session and m["type"] in ("log", "status") and "seq" in m
        ]

    def logs(self, session: str) -> list[dict[str, Any]]:
        return [m for m in self.entries(session) if m["type"] == "log"]

    def statuses(self, session: str) -> list[dict[str, Any]]:
        return [m for m in self.entries(session) if m["type"] == "status"]

    def wait_ended(self, session: str, timeout: float = 15.0) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            statuses = self.statuses(session)
            if statuses and statuses[-1]["status"] in ("stopped", "error"):
                return statuses[-1]
            return None

        status: dict[str, Any] = wait_for(ended, timeout=timeout, what=f"{session} to end")
        return status

    def errors(self) -> list[dict[str, Any]]:
        return [m for m in list(self.messages) if m["type"] in ("error", "gap")]

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def viewer() -> Iterator[Callable[[ServerProcess, str], Viewer]]:
    viewers: list[Viewer] = []

    def start(server: ServerProcess, token: str) -> Viewer:
        v = Viewer(server, token)
        viewers.append(v)
        return v

    yield start
    for v in viewers:
        v.close()


def assert_contiguous(entries: list[dict[str, Any]]) -> None:
    seqs = [m["seq"] for m in entries]
    assert seqs == list(range(1, len(seqs) + 1)), f"seqs {seqs}: one skipped or repeated"


def assert_cut(message: str, original: int) -> None:
    """``message`` is a line of ``original`` x's cut at MAX_LINE_BYTES, with the marker."""
    found = MARKER.match(message)
    assert found is not None, f"no truncation marker at the end of {message[-80:]!r}"
    kept, dropped = len(found[1]), int(found[2])
    assert kept + dropped == original, (kept, dropped, original)
    encoded = len(json.dumps(message, ensure_ascii=False).encode()) - 2
    assert encoded <= MAX_LINE_BYTES, encoded
    assert kept > MAX_LINE_BYTES - 100, f"cut far more than needed: kept {kept}"


# --- the Node wrapper ------------------------------------------------------------------


@pytest.fixture(scope="session")
def node() -> str:
    """``node``, with ``tests/node``'s pinned ``ws`` installed (``npm ci``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js/npm not installed: cannot run tests/node/wrapper.js")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stderr}"
    return node


class WrapperRun:
    def __init__(self, result: subprocess.CompletedProcess[str], elapsed: float) -> None:
        self.returncode = result.returncode
        self.stdout = result.stdout.splitlines()
        self.stderr = result.stderr
        self.elapsed = elapsed

    def sent(self, *kinds: str) -> list[str]:
        """Timestamps of the envelopes of these types it sent, in order."""
        return [
            line.split()[2]
            for line in self.stdout
            if line.startswith("sent ") and line.split()[1] in kinds
        ]

    def __repr__(self) -> str:
        tail = self.stdout[-6:]
        return f"wrapper exit {self.returncode} after {self.elapsed:.2f}s: {tail} {self.stderr!r}"


@pytest.fixture
def wrapper(node: str) -> Callable[..., WrapperRun]:
    def run(server: ServerProcess, token: str, container: str, **env: str) -> WrapperRun:
        environ = {**os.environ, "WRAPPER_BASE_TIME": BASE_TIME, **env}
        started = time.monotonic()
        result = subprocess.run(
            [node, "wrapper.js", server.url, token, container],
            cwd=NODE_DIR,
            env=environ,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        return WrapperRun(result, time.monotonic() - started)

    return run


@pytest.mark.parametrize("auth", ["AUTH_TOKEN", "AUTH_TOKENS"])
def test_wrapper_dropin_delivers_every_entry(
    auth: str,
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
    wrapper: Callable[..., WrapperRun],
) -> None:
    if auth == "AUTH_TOKEN":  # the original server's one token, every role
        server = start_server(token=None, env={"AUTH_TOKEN": ORIGINAL})
        view_token = produce_token = ORIGINAL
        exit_code = 0
    else:  # a produce-only token for the wrapper, a view-only one for the viewer
        server = start_server(token=SPLIT_TOKENS)
        view_token, produce_token = VIEW, PRODUCE
        exit_code = 7
    watcher = viewer(server, view_token)
    session = f"wrap-{auth.lower()}"

    run = wrapper(server, produce_token, session, WRAPPER_EXIT_CODE=str(exit_code))
    assert run.returncode == 0, run
    heartbeats = [line for line in run.stdout if line.startswith("heartbeat ")]
    assert len(heartbeats) == 2, run  # each reply carried data.timestamp

    end = watcher.wait_ended(session)
    watcher.barrier()
    entries = watcher.entries(session)
    assert_contiguous(entries)
    assert [(m["type"], m.get("status") or m["level"]) for m in entries] == [
        ("status", "running"),  # STATUS starting
        ("log", "info"),  # the wrapper's own URL
        ("status", "running"),
        ("log", "info"),
        ("log", "warn"),
        ("log", "debug"),
        ("log", "info"),  # the 100 KB line
        ("log", "error"),  # ERROR
        ("log", "info"),
        ("status", "stopped" if exit_code == 0 else "error"),  # COMPLETE, last
    ]
    assert entries[-1] is end
    assert end["metadata"]["exitCode"] == exit_code
    assert isinstance(end["metadata"]["duration"], int | float)
    assert entries[0]["metadata"]["phase"] == "starting"

    logs = watcher.logs(session)
    url_line, hello, warn, debug, big, error, last = logs
    # The envelopes' timestamps are kept, not replaced by the server's clock.
    assert [m["timestamp"] for m in logs] == run.sent("LOG", "ERROR")
    assert logs[0]["timestamp"] == "2024-01-26T13:45:31.000Z"  # BASE_TIME + 1 s
    assert url_line["message"].startswith(f"Connecting to {server.url}/?token=")
    assert produce_token not in url_line["message"], url_line["message"]
    assert "[REDACTED:" in url_line["message"], url_line["message"]
    assert (hello["message"], hello["data"]) == ("hello from the agent", {"step": 1})
    assert (warn["message"], debug["message"]) == ("disk almost full", "debug detail")
    assert big["message"] == "x" * BIG, f"the 100 KB line arrived as {len(big['message'])} chars"
    assert big["data"] == {"step": 4}
    assert error["message"] == "tool call failed"
    assert error["data"] == {"code": "E_TOOL", "details": {"attempt": 1}}
    assert last["message"] == "after the heartbeats"
    assert not watcher.errors(), watcher.errors()

    # No token reaches the server's own log, not even the one in the wrapper's URL.
    logs_text = server.logs()
    assert produce_token not in logs_text and view_token not in logs_text


@pytest.mark.parametrize("token", ["", "wrong-token-3c9d1f7e"], ids=["no-token", "wrong-token"])
def test_wrapper_refused_with_401_fails_fast(
    token: str,
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
    wrapper: Callable[..., WrapperRun],
) -> None:
    server = start_server(token=SPLIT_TOKENS)
    watcher = viewer(server, VIEW)
    run = wrapper(server, token, "wrap-refused")
    assert run.returncode == 2, run
    assert "refused: HTTP 401" in run.stderr, run
    assert run.elapsed < 5, run  # failed fast, no streaming into nothing
    assert not any(line.startswith("sent ") for line in run.stdout), run
    watcher.barrier()
    assert watcher.entries("wrap-refused") == []
    logs_text = server.logs()
    if token:
        assert token not in logs_text
    assert PRODUCE not in logs_text and VIEW not in logs_text


def test_wrapper_line_over_max_line_bytes_is_cut_and_complete_arrives(
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
    wrapper: Callable[..., WrapperRun],
) -> None:
    server = start_server(token=SPLIT_TOKENS)
    watcher = viewer(server, VIEW)
    run = wrapper(server, PRODUCE, "wrap-long", WRAPPER_BIG_BYTES="300000")
    assert run.returncode == 0, run  # no error message from the server either
    end = watcher.wait_ended("wrap-long")
    assert end["status"] == "stopped" and end["metadata"]["exitCode"] == 0
    logs = watcher.logs("wrap-long")
    assert len(logs) == 7, [m["message"][:40] for m in logs]
    big = logs[4]
    assert big["data"] == {"step": 4}
    assert_cut(big["message"], 300_000)
    assert logs[-1]["message"] == "after the heartbeats"
    assert_contiguous(watcher.entries("wrap-long"))


# --- a message over MAX_MESSAGE_SIZE ----------------------------------------------------


@pytest.mark.parametrize("dialect", ["pcclog", "wrapper"])
def test_oversized_message_refused_and_next_message_arrives(
    dialect: str,
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
) -> None:
    server = start_server(token=SPLIT_TOKENS)
    watcher = viewer(server, VIEW)
    session = f"huge-{dialect}"
    huge = "y" * (2 * 1024 * 1024)
    failed = {"exitCode": 1}
    if dialect == "pcclog":
        producer = RawWebSocket.connect(server.port, token=PRODUCE)
        messages = [
            {"type": "status", "sessionId": session, "status": "running"},
            {"type": "log", "sessionId": session, "level": "info", "message": huge},
            {"type": "log", "sessionId": session, "level": "info", "message": "after the big one"},
            {"type": "status", "sessionId": session, "status": "error", "metadata": failed},
        ]
    else:
        path = f"/?token={PRODUCE}&containerID={session}"
        producer = RawWebSocket.connect(server.port, path)

        def envelope(kind: str, data: dict[str, Any]) -> dict[str, Any]:
            return {"type": kind, "containerID": session, "timestamp": BASE_TIME, "data": data}

        messages = [
            envelope("STATUS", {"status": "running"}),
            envelope("LOG", {"level": "info", "message": huge}),
            envelope("LOG", {"level": "info", "message": "after the big one"}),
            envelope("COMPLETE", {"exitCode": 1, "duration": 10}),
        ]
    with producer:
        producer.send_json(messages[0])
        producer.send_json(messages[1])
        error, before = producer.recv_until(lambda m: m.get("type") == "error", timeout=10)
        assert error["code"] == "MESSAGE_TOO_LARGE", error
        assert before == [], before
        producer.send_json(messages[2])
        producer.send_json(messages[3])
        assert producer.barrier() == []  # still open, nothing else refused

    end = watcher.wait_ended(session)
    entries = watcher.entries(session)
    assert [(m["type"], m.get("status") or m["message"]) for m in entries] == [
        ("status", "running"),
        ("log", "after the big one"),
        ("status", "error"),
    ]
    assert end["metadata"]["exitCode"] == 1
    assert_contiguous(entries)


# --- a 100 KB line from every kind of producer -----------------------------------------


def assert_big_line_then_exit(watcher: Viewer, session: str, exit_code: int = 3) -> None:
    end = watcher.wait_ended(session)
    watcher.barrier()
    logs = watcher.logs(session)
    sizes = [len(m["message"]) for m in logs]
    assert [m["message"] for m in logs] == ["x" * BIG], f"lines of {sizes} chars, not one of {BIG}"
    assert "part" not in (logs[0].get("data") or {}), logs[0].get("data")
    entries = watcher.entries(session)
    assert entries[-1] is end and entries.index(logs[0]) < len(entries) - 1
    assert end["status"] == "error" and end["metadata"]["exitCode"] == exit_code
    assert not watcher.errors(), watcher.errors()


def test_big_line_via_websocket_producer(
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
) -> None:
    server = start_server(token=SPLIT_TOKENS)
    watcher = viewer(server, VIEW)
    exited = {"exitCode": 3}
    with open_ws(server.url, token=PRODUCE) as producer:
        for message in (
            {"type": "status", "sessionId": "ws-big", "status": "running"},
            {"type": "log", "sessionId": "ws-big", "level": "info", "message": "x" * BIG},
            {"type": "status", "sessionId": "ws-big", "status": "error", "metadata": exited},
        ):
            producer.send(json.dumps(message))
    assert_big_line_then_exit(watcher, "ws-big")


def test_big_line_via_pcclog_run(
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
) -> None:
    server = start_server(token=SPLIT_TOKENS)
    watcher = viewer(server, VIEW)
    result = subprocess.run(
        [
            str(PCCLOG),
            "run",
            "--url",
            server.url,
            "--token",
            PRODUCE,
            "--session",
            "run-big",
            "--",
            "sh",
            "-c",
            'head -c 102400 /dev/zero | tr "\\0" x; echo; exit 3',
        ],
        capture_output=True,
        timeout=25,
        check=False,
    )
    assert result.returncode == 3, result.stderr.decode(errors="replace")
    assert_big_line_then_exit(watcher, "run-big")


@pytest.mark.docker
def test_big_line_via_docker_container(
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
    docker_engine: Any,
) -> None:
    label = f"pcclog.test.{uuid.uuid4().hex[:12]}"
    server = start_server(token=SPLIT_TOKENS, env={"DOCKER_ENABLED": "true", "DOCKER_LABEL": label})
    wait_for(lambda: server.get("/readyz")[0] == 200, timeout=15, what="/readyz 200")
    watcher = viewer(server, VIEW)
    container = docker_engine.containers.run(
        TEST_IMAGE,
        ["sh", "-c", 'head -c 102400 /dev/zero | tr "\\0" x; echo; exit 3'],
        detach=True,
        network_mode="none",
        labels={"pcclog.test": "1", label: "docker-big"},
    )
    try:
        assert_big_line_then_exit(watcher, "docker-big")
    finally:
        container.remove(force=True)


# --- PRODUCER_GRACE ----------------------------------------------------------------------


def wait_lost(watcher: Viewer, session: str, timeout: float = 10.0) -> dict[str, Any]:
    end = watcher.wait_ended(session, timeout=timeout)
    assert end["status"] == "error", end
    assert end["metadata"]["reason"] == "producer lost", end
    return end


def test_vanished_raw_producer_session_becomes_error_after_grace(
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
) -> None:
    server = start_server(token=SPLIT_TOKENS, env={"PRODUCER_GRACE": "500"})
    watcher = viewer(server, VIEW)
    producer = RawWebSocket.connect(server.port, token=PRODUCE)
    producer.send_json({"type": "status", "sessionId": "lost-raw", "status": "running"})
    producer.send_json({"type": "log", "sessionId": "lost-raw", "level": "info", "message": "hi"})
    assert producer.barrier() == []
    producer.abort()  # a TCP reset: no close frame, no ending status
    gone = time.monotonic()
    wait_lost(watcher, "lost-raw")
    assert time.monotonic() - gone >= 0.45, "ended before PRODUCER_GRACE"
    assert [m["type"] for m in watcher.entries("lost-raw")] == ["status", "log", "status"]


def test_killed_pcclog_run_session_becomes_error_after_grace(
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
) -> None:
    server = start_server(token=SPLIT_TOKENS, env={"PRODUCER_GRACE": "500"})
    watcher = viewer(server, VIEW)
    proc = subprocess.Popen(
        [
            str(PCCLOG),
            "run",
            "--url",
            server.url,
            "--token",
            PRODUCE,
            "--session",
            "lost-run",
            "--",
            "sh",
            "-c",
            "echo started; exec sleep 30",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: any(m["message"] == "started" for m in watcher.logs("lost-run")),
            timeout=15,
            what="pcclog run's first line",
        )
        proc.send_signal(signal.SIGKILL)  # pcclog run only; its child is left behind
        proc.wait(5)
        gone = time.monotonic()
        end = wait_lost(watcher, "lost-run")
        assert time.monotonic() - gone >= 0.45, "ended before PRODUCER_GRACE"
        assert "exitCode" not in end["metadata"] or end["metadata"]["exitCode"] is None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned sleep
        except ProcessLookupError:
            pass
        proc.wait(5)


def test_producer_back_within_grace_continues_the_session(
    start_server: Callable[..., ServerProcess],
    viewer: Callable[[ServerProcess, str], Viewer],
) -> None:
    """Two sessions lose their producer at the same moment; one gets a
    producer back within the grace. Once the other is ``producer lost`` the
    grace is over for both: the first must still be running."""
    server = start_server(token=SPLIT_TOKENS, env={"PRODUCER_GRACE": "3000"})
    watcher = viewer(server, VIEW)
    first = RawWebSocket.connect(server.port, token=PRODUCE)
    for session in ("back-a", "gone-b"):
        first.send_json({"type": "status", "sessionId": session, "status": "running"})
    assert first.barrier() == []
    first.abort()
    gone = time.monotonic()

    with RawWebSocket.connect(server.port, token=PRODUCE) as second:
        second.send_json(
            {"type": "log", "sessionId": "back-a", "level": "info", "message": "back again"}
        )
        assert second.barrier() == []
        assert time.monotonic() - gone < 3, "the reconnect itself took longer than the grace"

        wait_lost(watcher, "gone-b", timeout=15)
        assert time.monotonic() - gone >= 2.9, "ended before PRODUCER_GRACE"
        watcher.barrier()
        assert [m["status"] for m in watcher.statuses("back-a")] == ["running"]
        assert [m["message"] for m in watcher.logs("back-a")] == ["back again"]

        second.send_json({"type": "status", "sessionId": "back-a", "status": "stopped"})
        assert second.barrier() == []
    end = watcher.wait_ended("back-a")
    assert end["status"] == "stopped" and "reason" not in end["metadata"]

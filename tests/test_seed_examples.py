"""The seed README's client examples, run unchanged against the real server.

``seed/original-README.md`` is the contract users already have: its Node.js
client (the ``ws`` package from npm), its ``curl`` upgrade check, its
``wscat`` walkthrough and its React hook must work against ``pcclog serve``
as they did against the TypeScript original; so must the original container
wrapper's envelope dialect (SPEC §3).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ServerProcess, wait_for
from wsclient import barrier, open_ws, produce, recv_json, recv_until

NODE_DIR = Path(__file__).resolve().parent / "node"
TOKEN = "test-token"
ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --- the Node.js client (npm ``ws``) -----------------------------------------


@pytest.fixture(scope="session")
def node_ws() -> Path:
    """``tests/node`` with its pinned ``ws`` installed (``npm ci``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js/npm not installed: cannot run the seed's Node.js client")
    if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
        lock = NODE_DIR / "package-lock.json"
        command = [npm, "ci" if lock.exists() else "install", "--no-audit", "--no-fund"]
        result = subprocess.run(
            command, cwd=NODE_DIR, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
    installed = json.loads((NODE_DIR / "node_modules" / "ws" / "package.json").read_text())
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]["ws"]
    assert installed["version"] == pinned, (installed["version"], pinned)
    return NODE_DIR


class NodeClient:
    """``node basic-client.js URL SESSION TOKEN``, its output collected by a thread."""

    def __init__(self, directory: Path, url: str, session: str, token: str) -> None:
        node = shutil.which("node")
        assert node is not None
        self.proc = subprocess.Popen(
            [node, "basic-client.js", url, session, token],
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, line: str, timeout: float = 10.0) -> None:
        wait_for(lambda: line in self.lines or self._dead(), timeout=timeout, what=repr(line))
        assert line in self.lines, f"node exited without printing {line!r}: {self.lines}"

    def _dead(self) -> bool:
        return self.proc.poll() is not None and not self._reader.is_alive()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture
def node_client(node_ws: Path) -> Iterator[Callable[..., NodeClient]]:
    clients: list[NodeClient] = []

    def start(url: str, session: str, token: str) -> NodeClient:
        client = NodeClient(node_ws, url, session, token)
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.stop()


def test_seed_node_client_prints_logs_and_status(
    start_server: Callable[..., ServerProcess], node_client: Callable[..., NodeClient]
) -> None:
    server = start_server()
    with open_ws(server.url, token=TOKEN) as producer:
        produce(producer, "node-s", "history line")  # replayed on subscribe

        client = node_client(server.url, "node-s", TOKEN)
        client.wait_line("Session node-s status: running")
        client.wait_line("[node-s] history line")

        produce(producer, "node-s", *(f"live {i}" for i in range(1, 6)))
        producer.send(json.dumps({"type": "status", "sessionId": "node-s", "status": "stopped"}))
        barrier(producer)
        client.wait_line("Session node-s status: stopped")

        # The seed's error branch: a refused token is printed with console.error.
        refused = node_client(server.url, "node-s", "not-the-token")
        refused.wait_line("Connected to WebSocket server")
        wait_for(
            lambda: any(line.startswith("Error: authentication failed") for line in refused.lines),
            what="the Node client to print the UNAUTHORIZED error",
        )

    # SIGTERM: the Node client sees the close and its process ends on its own.
    assert server.stop() == 0
    client.wait_line("Disconnected from WebSocket server")
    assert client.proc.wait(5) == 0
    assert client.lines == [
        "Connected to WebSocket server",
        "Session node-s status: running",  # the snapshot sent on subscribe
        "[node-s] history line",
        *(f"[node-s] live {i}" for i in range(1, 6)),
        "Session node-s status: stopped",
        "Disconnected from WebSocket server",
    ]


# --- curl -------------------------------------------------------------------


def test_seed_curl_upgrade_check(start_server: Callable[..., ServerProcess]) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    # An unauthenticated connection is closed (1008) at AUTH_TIMEOUT and the
    # server waits max(WS_PING_TIMEOUT, 1 s) for curl's close echo, which
    # never comes: short values let curl see the end of the stream instead
    # of running into its --max-time.
    server = start_server(env={"AUTH_TIMEOUT": "300", "WS_PING_TIMEOUT": "500"})
    result = subprocess.run(
        [
            curl,
            "-i",
            "-N",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==",
            "-H",
            "Sec-WebSocket-Version: 13",
            "--max-time",
            "5",
            server.http,
        ],
        capture_output=True,
        timeout=15,
        check=False,
    )
    output = result.stdout.decode("latin-1")
    assert "HTTP/1.1 101 Switching Protocols" in output, (result.returncode, output)
    headers = output.split("\r\n\r\n", 1)[0].lower()
    assert "upgrade: websocket" in headers
    assert "connection: upgrade" in headers
    # RFC 6455's example key has this accept value.
    assert "sec-websocket-accept: hsmrc0smlyukagmm5oppg2hagwk=" in headers
    # Then the auth deadline's close frame (1008), and the end of the stream.
    assert b"\x88" in result.stdout and b"authentication deadline" in result.stdout
    assert result.returncode == 0, f"curl ran into --max-time: {result.returncode}"


# --- the wscat walkthrough and the React hook, from Python ------------------------


def test_seed_wscat_walkthrough(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    with open_ws(server.url, token=TOKEN) as producer, open_ws(server.url) as viewer:
        produce(producer, "session-123", "first")
        # > {"type":"subscribe","sessionId":"session-123","auth":{"token":"your-token"}}
        viewer.send(
            json.dumps({"type": "subscribe", "sessionId": "session-123", "auth": {"token": TOKEN}})
        )
        snapshot = recv_json(viewer)
        assert snapshot == {
            "type": "status",
            "sessionId": "session-123",
            "status": "running",
            "metadata": {},
        }
        replayed = recv_json(viewer)
        assert replayed["type"] == "log" and replayed["message"] == "first"
        assert replayed["seq"] == 1 and ISO_MS_Z.match(replayed["timestamp"])

        # > {"type":"ping"}
        viewer.send('{"type":"ping"}')
        assert recv_json(viewer) == {"type": "pong"}

        produce(producer, "session-123", "second")
        assert [m["message"] for m in barrier(viewer)] == ["second"]

        # > {"type":"unsubscribe","sessionId":"session-123"}
        viewer.send('{"type":"unsubscribe","sessionId":"session-123"}')
        assert barrier(viewer) == []  # unsubscribed before the producer goes on
        produce(producer, "session-123", "after unsubscribe")
        assert barrier(viewer) == []  # nothing arrives any more, no error either


def test_seed_react_hook_flow(start_server: Callable[..., ServerProcess]) -> None:
    """useLogStream: open, subscribe with the token in the message, keep
    ``message.type === 'log'`` entries; the seed's LogEntry fields are there."""
    server = start_server()
    with open_ws(server.url) as hook, open_ws(server.url, token=TOKEN) as producer:
        hook.send(json.dumps({"type": "subscribe", "sessionId": "ui", "auth": {"token": TOKEN}}))
        # Not started yet: the hook is told so and stays subscribed.
        error = recv_json(hook)
        assert error["type"] == "error" and error["code"] == "SESSION_NOT_FOUND"
        assert error["sessionId"] == "ui"

        producer.send(
            json.dumps(
                {
                    "type": "log",
                    "sessionId": "ui",
                    "level": "warn",
                    "message": "Container started successfully",
                    "data": {"containerId": "abc123", "stage": "startup"},
                }
            )
        )
        produce(producer, "ui", "second line")
        logs: list[dict[str, Any]] = [m for m in barrier(hook) if m["type"] == "log"]
        assert [m["message"] for m in logs] == ["Container started successfully", "second line"]
        first = logs[0]
        assert first["sessionId"] == "ui" and first["level"] == "warn"
        assert first["data"] == {"containerId": "abc123", "stage": "startup"}
        assert ISO_MS_Z.match(first["timestamp"])
        assert [m["seq"] for m in logs] == [1, 2]


# --- the original container wrapper's dialect (SPEC §3) ----------------------------


def _envelope(kind: str, container: str, data: dict[str, Any] | None = None) -> str:
    message: dict[str, Any] = {
        "type": kind,
        "containerID": container,
        "timestamp": "2024-01-26T13:45:30.123Z",
    }
    if data is not None:
        message["data"] = data
    return json.dumps(message)


def test_container_wrapper_dialect(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    with open_ws(server.url, token=TOKEN) as viewer:
        viewer.send('{"type":"subscribe","sessionId":"*"}')
        assert barrier(viewer) == []  # no session yet

        # The wrapper authenticates with ?token= and names its container in the URL.
        url = f"{server.url}/?token={TOKEN}&containerID=wrap-1"
        with open_ws(url) as wrapper:
            wrapper.send(_envelope("STATUS", "wrap-1", {"status": "starting", "message": "boot"}))
            wrapper.send(
                _envelope(
                    "LOG",
                    "wrap-1",
                    {"level": "info", "message": "hello from the wrapper", "metadata": {"n": 1}},
                )
            )
            wrapper.send(
                _envelope(
                    "ERROR", "wrap-1", {"error": "boom", "code": "E42", "details": {"line": 7}}
                )
            )
            wrapper.send(_envelope("HEARTBEAT", "wrap-1"))
            heartbeat, before = recv_until(wrapper, lambda m: m["type"] == "HEARTBEAT")
            assert before == []
            assert heartbeat["containerID"] == "wrap-1"
            assert ISO_MS_Z.match(heartbeat["timestamp"])
            wrapper.send(
                _envelope(
                    "COMPLETE", "wrap-1", {"exitCode": 0, "message": "done", "duration": 1234}
                )
            )
            # A second container on the same connection, ending badly.
            wrapper.send(_envelope("STATUS", "wrap-2", {"status": "running"}))
            wrapper.send(_envelope("COMPLETE", "wrap-2", {"exitCode": 3}))
            wrapper.send(_envelope("STATUS", "wrap-3", {"status": "failed", "message": "oom"}))
            assert [m for m in barrier(wrapper) if m["type"] == "error"] == []

        received = barrier(viewer)
    by_session: dict[str, list[dict[str, Any]]] = {}
    for message in received:
        by_session.setdefault(message["sessionId"], []).append(message)

    snapshot, starting, log, error, complete = by_session["wrap-1"]
    assert snapshot["type"] == "status" and "seq" not in snapshot
    assert starting["type"] == "status" and starting["status"] == "running"
    assert starting["seq"] == 1
    assert log == {
        "type": "log",
        "sessionId": "wrap-1",
        "timestamp": "2024-01-26T13:45:30.123Z",
        "level": "info",
        "message": "hello from the wrapper",
        "data": {"n": 1},
        "seq": 2,
    }
    assert error["type"] == "log" and error["level"] == "error" and error["message"] == "boom"
    assert error["data"] == {"code": "E42", "details": {"line": 7}} and error["seq"] == 3
    assert complete["type"] == "status" and complete["status"] == "stopped"
    assert complete["metadata"]["exitCode"] == 0 and complete["metadata"]["duration"] == 1234
    assert complete["seq"] == 4

    statuses = [(m["status"], m.get("seq")) for m in by_session["wrap-2"]]
    assert statuses == [("running", None), ("running", 1), ("error", 2)]
    assert by_session["wrap-2"][-1]["metadata"]["exitCode"] == 3
    assert [(m["status"], m.get("seq")) for m in by_session["wrap-3"]] == [
        ("running", None),
        ("error", 1),
    ]

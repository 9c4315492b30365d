"""Shared fixtures: the real ``pcclog serve`` process on a free port, and the
real Docker engine (``PCCLOG_REQUIRE_DOCKER=1`` turns its absence into a
failure instead of a skip)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent


def wait_for(
    condition: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


T = TypeVar("T")


def free_port() -> int:
    """A port nothing listens on right now (for servers started on a known port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """``asyncio.run`` with a deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def until(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll ``condition`` (sync or async) until true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class ServerProcess:
    """A running ``pcclog serve``; ``stop()`` sends SIGTERM and waits."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, token: str | None) -> None:
        self.proc = proc
        self.log_path = log_path
        self.token = token
        self.port = 0
        listening = wait_for(self._listening, timeout=15, what="the server to listen")
        self.port = int(listening["port"])

    def _listening(self) -> dict[str, Any] | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited {self.proc.returncode}:\n{self.logs()}")
        for record in self.records():
            if record.get("msg") == "listening":
                return record
        return None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.http + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(*flags, env={...}, token="t")`` → ServerProcess.

    Defaults: 127.0.0.1, a free port, Docker off, a static token ``token``.
    """
    started: list[ServerProcess] = []

    def start(
        *flags: str, env: dict[str, str] | None = None, token: str | None = "test-token"
    ) -> ServerProcess:
        log_path = tmp_path / f"server-{len(started)}.log"
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AUTH_", "DOCKER_", "TLS_")) and k not in ("PORT", "HOST")
        }
        environ.update({"PYTHONUNBUFFERED": "1", "DOCKER_ENABLED": "false"})
        if token is not None:
            environ["AUTH_TOKENS"] = token
        environ.update(env or {})
        args = [
            sys.executable,
            "-m",
            "pcclog_server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            *flags,
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=environ, cwd=REPO
            )
        server = ServerProcess(proc, log_path, token)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(signal.SIGKILL if server.proc.poll() is None else signal.SIGTERM)


def _docker_available() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
        return None
    except Exception as exc:
        return f"no Docker engine: {exc}"


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Any]:
    """A docker SDK client for the real engine (skip, or fail in CI)."""
    problem = _docker_available()
    if problem is not None:
        if os.environ.get("PCCLOG_REQUIRE_DOCKER") == "1":
            pytest.fail(f"PCCLOG_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(problem)
    import docker

    client = docker.from_env(timeout=30)
    yield client
    client.close()


TEST_IMAGE = os.environ.get("PCCLOG_TEST_IMAGE", "pcclog-test/busybox:latest")

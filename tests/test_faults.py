"""Faults with real processes: a producer losing the server, and the server
SIGKILLed and restarted (issue cases 14 and 15).

Every wait is a deadline wait on an observable condition. The one deliberate
sleep is the outage itself (``OUTAGE``), a parameter of the scenario.

The producer's faults go through :class:`FaultProxy`, a TCP proxy on
127.0.0.1 that reads just enough WebSocket framing to act at a precise
moment: it pairs each of the producer's ``{"type":"ping"}`` with the
entries sent before it, and when the server's ``pong`` for a batch that
holds log entries comes back, it withholds that pong and resets (RST, via
``SO_LINGER`` 0) the connection. The server has applied those entries; the
producer never learns it, so it must send them again, and only the server's
de-duplication (``producer``/``pseq``) keeps them from appearing twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import signal
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from conftest import REPO, TEST_IMAGE, ServerProcess, run, until
from websockets.asyncio.client import connect

from pcclog_server.client import Producer, Subscription, list_sessions

T = TypeVar("T")
TOKEN = "test-token"
CLI = [sys.executable, "-m", "pcclog_server.cli"]
OUTAGE = 10.0  # seconds the proxy refuses connections in case 14


# --- the fault proxy -----------------------------------------------------------


def _unmask(payload: bytes, mask: bytes) -> bytes:
    size = len(payload)
    key = (mask * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


class _Frames:
    """One direction of a WebSocket connection, cut into the units the
    proxy forwards: the HTTP handshake, then whole frames, each with its
    JSON object when it is a complete text frame."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.upgraded = False

    def feed(self, data: bytes) -> list[tuple[bytes, dict[str, Any] | None]]:
        buf = self.buf
        buf += data
        out: list[tuple[bytes, dict[str, Any] | None]] = []
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            out.append((bytes(buf[: end + 4]), None))
            del buf[: end + 4]
            self.upgraded = True
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            length, pos = second & 0x7F, 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            mask = b""
            if second & 0x80:
                if len(buf) < pos + 4:
                    break
                mask, pos = bytes(buf[pos : pos + 4]), pos + 4
            if len(buf) < pos + length:
                break
            raw = bytes(buf[: pos + length])
            payload = bytes(buf[pos : pos + length])
            del buf[: pos + length]
            message = None
            if first == 0x81:  # FIN + text
                with contextlib.suppress(ValueError):
                    decoded = json.loads(_unmask(payload, mask) if mask else payload)
                    if isinstance(decoded, dict):
                        message = decoded
            out.append((raw, message))
        return out


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: RST, not FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One proxied connection."""

    def __init__(
        self, proxy: FaultProxy, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client = (reader, writer)
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.batch: list[dict[str, Any]] = []  # entries sent since the last ping
        self.in_flight: collections.deque[list[dict[str, Any]]] = collections.deque()
        self.dead = False

    async def serve(self) -> None:
        try:
            self.upstream = await asyncio.open_connection("127.0.0.1", self.proxy.upstream_port)
        except OSError:
            self.reset()
            return
        pumps = [
            asyncio.ensure_future(self._pump(self.client[0], self.upstream[1], up=True)),
            asyncio.ensure_future(self._pump(self.upstream[0], self.client[1], up=False)),
        ]
        try:
            await asyncio.gather(*pumps)
        except (OSError, asyncio.IncompleteReadError):
            self.reset()
        finally:
            for pump in pumps:
                pump.cancel()
            if not self.dead:
                self.client[1].close()
                self.upstream[1].close()
            self.proxy.links.discard(self)

    def reset(self) -> None:
        if self.dead:
            return
        self.dead = True
        _reset(self.client[1])
        if self.upstream is not None:
            _reset(self.upstream[1])

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
        frames = _Frames()
        while not self.dead:
            data = await reader.read(65536)
            if not data:
                if not self.dead and writer.can_write_eof():
                    writer.write_eof()
                return
            for raw, message in frames.feed(data):
                kind = None if message is None else message.get("type")
                if up and message is not None and kind in ("log", "status"):
                    self.batch.append(message)
                    self.proxy.forwarded.append(message)
                elif up and kind == "ping":
                    self.in_flight.append(self.batch)
                    self.batch = []
                elif not up and kind == "pong":
                    applied = self.in_flight.popleft() if self.in_flight else []
                    if self.proxy.armed is not None and any(m["type"] == "log" for m in applied):
                        self.proxy.fire(self, applied)  # withhold the pong: cut here
                        return
                if self.dead:
                    return
                writer.write(raw)
                await writer.drain()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream_port`` (see the
    module docstring). ``forwarded`` holds every ``log``/``status`` entry it
    passed to the server, resends included."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.links: set[_Link] = set()
        self.forwarded: list[dict[str, Any]] = []
        self.cut_batches: list[list[dict[str, Any]]] = []
        self.armed: tuple[str, asyncio.Future[None]] | None = None
        self._server: asyncio.Server | None = None

    async def listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # the listening socket: new connections are refused

    def reset_all(self) -> None:
        for link in list(self.links):
            link.reset()

    async def cut(self, mode: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At the next ``pong`` answering a batch with log entries: withhold
        it and reset that connection (``"one"``) or every connection and
        stop listening (``"all"``). Returns the batch the server applied
        but the producer never saw confirmed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.armed = (mode, done)
        await asyncio.wait_for(done, timeout)
        return self.cut_batches[-1]

    def fire(self, link: _Link, applied: list[dict[str, Any]]) -> None:
        assert self.armed is not None
        mode, done = self.armed
        self.armed = None
        self.cut_batches.append(applied)
        if mode == "all":
            self.stop_listening()
            self.reset_all()
        else:
            link.reset()
        done.set_result(None)

    async def close(self) -> None:
        self.stop_listening()
        self.reset_all()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(self, reader, writer)
        self.links.add(link)
        await link.serve()


# --- viewers ---------------------------------------------------------------------


class RawViewer:
    """A plain ``websockets`` client on the server itself, keeping every message."""

    def __init__(self, url: str, session: str) -> None:
        self.url = url
        self.session = session
        self.messages: list[dict[str, Any]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        ws = await connect(self.url, max_size=None, open_timeout=10)
        await ws.send(
            json.dumps({"type": "subscribe", "sessionId": self.session, "auth": {"token": TOKEN}})
        )
        self.task = asyncio.ensure_future(self._read(ws))

    async def _read(self, ws: Any) -> None:
        async with ws:
            async for text in ws:
                self.messages.append(json.loads(text))

    def entries(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] in ("log", "status") and "seq" in m]

    def lines(self) -> list[str]:
        return [m["message"] for m in self.entries() if m["type"] == "log"]

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class Reader:
    """Iterates a ``Subscription`` on demand, keeping every message. While
    nobody pulls, the subscription does not notice a lost connection, so a
    test decides when the viewer reconnects (and hence what the server it
    reconnects to already holds)."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.messages: list[dict[str, Any]] = []
        self._it = sub.__aiter__()

    async def pull(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.messages.append(await asyncio.wait_for(self._it.__anext__(), remaining))
            except TimeoutError:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def entries(self, session: str) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m.get("sessionId") == session and m["type"] in ("log", "status") and "seq" in m
        ]

    def logs(self, session: str) -> list[dict[str, Any]]:
        return [m for m in self.entries(session) if m["type"] == "log"]

    def lines(self, session: str) -> list[str]:
        return [m["message"] for m in self.logs(session)]

    def ended(self, session: str) -> bool:
        entries = self.entries(session)
        return (
            bool(entries)
            and entries[-1]["type"] == "status"
            and (entries[-1]["status"] in ("stopped", "error"))
        )


async def history(url: str, session: str) -> list[dict[str, Any]]:
    """Every entry the server holds for ``session``, from seq 1."""
    out: list[dict[str, Any]] = []
    async with Subscription(url, session, token=TOKEN, since=0, sync_markers=True) as sub:
        async for message in sub:
            if message["type"] == "synced":
                break
            if "seq" in message:
                out.append(message)
    return out


async def last_seq(url: str, session: str) -> int:
    for info in await list_sessions(url, TOKEN):
        if info["sessionId"] == session:
            return int(info["lastSeq"])
    return 0


# --- case 14: the producer loses the server for 10 s -------------------------------


def test_run_loses_the_server_for_10s_and_every_line_arrives_once_in_order(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    lines = 80
    script = f"i=1; while [ $i -le {lines} ]; do echo line $i; i=$((i+1)); sleep 0.2; done"

    async def scenario() -> None:
        proxy = FaultProxy(server.port)
        await proxy.listen()
        viewer = RawViewer(server.url, "s")
        await viewer.start()
        proc = await asyncio.create_subprocess_exec(
            *CLI, "run", "--session", "s", "--url", f"ws://127.0.0.1:{proxy.port}",
            "--token", TOKEN, "--reconnect-max", "1", "-q", "--", "sh", "-c", script,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=REPO,
        )  # fmt: skip
        try:
            await until(lambda: len(viewer.lines()) >= 5, timeout=15, what="the first lines")
            # Fault 1: one connection cut mid-stream, the pong of an
            # applied batch withheld; the producer reconnects at once.
            await proxy.cut("one")
            seen = len(viewer.lines())
            await until(lambda: len(viewer.lines()) >= seen + 3, what="lines after the first cut")
            # Fault 2: the same cut on every connection, then nobody
            # listens for OUTAGE seconds; the producer buffers meanwhile.
            await proxy.cut("all")
            await asyncio.sleep(OUTAGE / 2)
            during = len(viewer.lines())  # what was in flight at the cut has landed
            await asyncio.sleep(OUTAGE / 2)
            assert len(viewer.lines()) == during, "lines arrived while the proxy was down"
            await proxy.listen()
            _, stderr = await asyncio.wait_for(proc.communicate(), 40)
            assert proc.returncode == 0, stderr.decode()
            assert b"not delivered" not in stderr, stderr.decode()
            await until(
                lambda: bool(viewer.entries()) and viewer.entries()[-1]["type"] == "status"
                and viewer.entries()[-1]["status"] == "stopped",
                what="the stopped status",
            )  # fmt: skip
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proxy.close()
            await viewer.stop()

        entries = viewer.entries()
        assert viewer.lines() == [f"line {i}" for i in range(1, lines + 1)]
        assert [e["seq"] for e in entries] == list(range(1, lines + 3))
        assert [(e["type"], e.get("status")) for e in (entries[0], entries[-1])] == [
            ("status", "running"),
            ("status", "stopped"),
        ]
        assert not [m for m in viewer.messages if m["type"] in ("gap", "error")
                    and m.get("code") != "SESSION_NOT_FOUND"]  # fmt: skip
        # The faults did what they are for: both cut batches had been
        # applied by the server, and the producer sent them again.
        assert len(proxy.cut_batches) == 2
        sent = collections.Counter(m.get("message") for m in proxy.forwarded)
        for batch in proxy.cut_batches:
            for entry in batch:
                assert sent[entry.get("message")] >= 2, entry

    run(scenario(), timeout=60)


# --- case 15: the server is SIGKILLed and restarted -----------------------------------


def test_sigkill_restart_viewer_reconnects_and_gets_new_entries(
    start_server: Callable[..., ServerProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pcclog.client")
    first = start_server()
    port = first.port
    before = [f"before {i}" for i in range(20)]
    after = [f"after {i}" for i in range(40)]

    async def scenario() -> None:
        async with (
            Producer(first.url, token=TOKEN, backoff=(0.05, 0.2)) as producer,
            Subscription(first.url, "*", token=TOKEN, backoff=(0.05, 0.2)) as sub,
        ):
            viewer = Reader(sub)
            for text in before:
                producer.log("job", "info", text)
            assert await producer.flush(10)
            await viewer.pull(lambda: len(viewer.logs("job")) == 20, 10, "the lines before")
            await asyncio.to_thread(first.stop, signal.SIGKILL)
            second = await asyncio.to_thread(start_server, "--port", str(port))
            assert second.port == port
            # Written to the new server while the viewer is away (its
            # new numbering is past where the viewer stopped), ...
            for text in after[:30]:
                producer.log("job", "info", text)
            assert await producer.flush(15)
            await viewer.pull(lambda: len(viewer.logs("job")) >= 50, 15, "the replay")
            assert sub.reconnects >= 1
            # ... then live.
            for text in after[30:]:
                producer.log("job", "info", text)
            await viewer.pull(lambda: len(viewer.logs("job")) >= 60, 10, "the live lines")
        assert viewer.lines("job") == before + after
        # The new server numbers the session from 1 again; the client saw
        # that its last entry (seq 20) is not the one it had, and replayed.
        assert [m["seq"] for m in viewer.logs("job")] == [*range(1, 21), *range(1, 41)]
        assert not [m for m in viewer.messages if m["type"] in ("gap", "error")]

    run(scenario(), timeout=40)
    assert "session job was replaced by a new one; replaying it" in caplog.messages


@pytest.mark.docker
def test_sigkill_restart_docker_history_is_replayed_and_live_continues(
    start_server: Callable[..., ServerProcess],
    docker_engine: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "pcclog.client")
    label = f"pcclog.test.{uuid.uuid4().hex[:12]}"
    env = {"DOCKER_ENABLED": "true", "DOCKER_LABEL": label}
    lines = 150
    script = f"i=1; while [ $i -le {lines} ]; do echo line $i; i=$((i+1)); sleep 0.1; done"
    expected = [f"line {i}" for i in range(1, lines + 1)]
    first = start_server(env=env)
    port = first.port
    containers: list[Any] = []

    async def scenario() -> None:
        async with Subscription(
            first.url, "*", token=TOKEN, backoff=(0.05, 0.2), sync_markers=True
        ) as sub:
            viewer = Reader(sub)
            await viewer.pull(
                lambda: any(m["type"] == "synced" for m in viewer.messages), 10, "the subscribe"
            )
            container = await asyncio.to_thread(
                docker_engine.containers.run,
                TEST_IMAGE,
                ["sh", "-c", script],
                detach=True,
                network_mode="none",
                labels={"pcclog.test": "1", label: "dock"},
            )
            containers.append(container)
            await viewer.pull(lambda: len(viewer.logs("dock")) >= 20, 15, "the first lines")
            old = list(viewer.entries("dock"))
            await asyncio.to_thread(first.stop, signal.SIGKILL)
            second = await asyncio.to_thread(start_server, "--port", str(port), env=env)
            assert second.port == port
            # The new server replays the container's history from the
            # engine: the same entries under the same numbers.

            async def caught_up() -> bool:
                return await last_seq(second.url, "dock") >= int(old[-1]["seq"])

            await until(caught_up, timeout=15, what="the new server to replay the container")
            replayed = await history(second.url, "dock")
            assert replayed[: len(old)] == old
            # The viewer has not read since the kill: reading now, it finds
            # the connection lost, reconnects by itself, sees its last entry
            # come back unchanged and resumes from there: the lines printed
            # meanwhile come from the new server's replay, then live ones.
            await viewer.pull(lambda: viewer.ended("dock"), 30, "the end status")
            assert sub.reconnects >= 1
        entries = viewer.entries("dock")
        assert [m["message"] for m in entries if m["type"] == "log"] == expected
        assert [m["seq"] for m in entries] == list(range(1, lines + 3))
        assert entries[0]["status"] == "running" and entries[-1]["status"] == "stopped"
        assert not [m for m in viewer.messages if m["type"] in ("gap", "error")]
        # Everything the viewer got equals the new server's history.
        assert entries == (await history(second.url, "dock"))[: len(entries)]

    try:
        run(scenario(), timeout=50)
        container = containers[0]
        assert container.logs(stdout=True, stderr=False).decode().splitlines() == expected
        # Same numbering, same entries: the client resumed, nothing replaced.
        assert not [m for m in caplog.messages if "replaying it" in m or "restarted" in m]
    finally:
        for container in containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)

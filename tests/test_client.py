"""The Python client (``pcclog_server.client``) against the real server
process: resume without loss or duplicate after a cut connection, the
producer's buffer across outages and restarts, refusals, long messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from conftest import ServerProcess, free_port, run, until

from pcclog_server.client import (
    AuthenticationError,
    ConnectionFailed,
    Producer,
    Subscription,
    list_sessions,
    split_message,
)

T = TypeVar("T")
TOKEN = "test-token"


class Collector:
    """Drains a ``Subscription`` in a task, keeping every message."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.messages: list[dict[str, Any]] = []
        self.task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        async for message in self.sub:
            self.messages.append(message)

    def entries(self, session: str) -> list[dict[str, Any]]:
        return [
            m
            for m in self.messages
            if m.get("sessionId") == session and m["type"] in ("log", "status") and "seq" in m
        ]

    def logs(self, session: str) -> list[str]:
        return [m["message"] for m in self.entries(session) if m["type"] == "log"]

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        if self.task.done() and not self.task.cancelled() and self.task.exception():
            raise self.task.exception()  # type: ignore[misc]


def assert_contiguous(entries: list[dict[str, Any]], first: int = 1) -> None:
    seqs = [e["seq"] for e in entries]
    assert seqs == list(range(first, first + len(seqs))), seqs


def cut(sub: Subscription) -> None:
    """Kill the viewer's TCP connection under it (no close frame)."""
    assert sub.connection is not None
    sub.connection.transport.abort()


# --- Subscription -------------------------------------------------------------


@pytest.mark.parametrize("target", ["job", "*"])
def test_resume_after_cut_connection_no_duplicate_no_hole(
    start_server: Callable[..., ServerProcess], target: str
) -> None:
    server = start_server()
    lines = 1500

    async def scenario() -> None:
        async with Producer(server.url, token=TOKEN) as producer:
            producer.log("job", "info", "before")
            assert await producer.flush(10)
            async with Subscription(server.url, target, token=TOKEN, tail=0) as sub:
                seen = Collector(sub)
                await until(lambda: sub.connection is not None and bool(seen.messages), what="sub")
                for i in range(lines):
                    producer.log("job", "info", f"line {i}")
                    producer.log("other", "info", f"other {i}")
                    if i in (300, 700, 1100):
                        # Cut once the viewer is connected and has seen a few
                        # lines, mid-stream: some lines are still on the wire.
                        count = len(seen.logs("job"))
                        await until(
                            lambda c=count: (
                                sub.connection is not None and len(seen.logs("job")) > c
                            ),  # type: ignore[misc]
                            what="progress before the cut",
                        )
                        cut(sub)
                    if i % 100 == 0:
                        await asyncio.sleep(0)  # let the producer and the viewer run
                assert await producer.flush(20)
                # A resume replays each session in turn: wait for both.
                sessions = ("job", "other") if target == "*" else ("job",)
                await until(
                    lambda: all(len(seen.logs(name)) >= lines for name in sessions),
                    timeout=20,
                    what="every line",
                )
                await seen.stop()
                assert sub.reconnects >= 1
        job = seen.entries("job")
        assert [m["message"] for m in job] == [f"line {i}" for i in range(lines)]
        assert_contiguous(job, first=2)  # seq 1 is "before", left out by tail 0
        if target == "*":
            other = seen.entries("other")
            assert [m["message"] for m in other] == [f"other {i}" for i in range(lines)]
            assert_contiguous(other)
        else:
            assert not seen.entries("other")
        assert not [m for m in seen.messages if m["type"] in ("gap", "error")]

    run(scenario(), timeout=45)


def test_wildcard_resume_covers_sessions_born_and_reborn_during_outage(
    start_server: Callable[..., ServerProcess],
) -> None:
    # Ended sessions are evicted 100 ms after they end, so a session can be
    # forgotten and reborn (numbered from 1 again) while the viewer is away.
    server = start_server(env={"SESSION_TIMEOUT": "100"})

    async def scenario() -> None:
        async with Producer(server.url, token=TOKEN) as producer:
            producer.log("old", "info", "old 1")
            producer.log("reborn", "info", "first life")
            producer.status("reborn", "stopped")
            assert await producer.flush(10)
            sub = Subscription(server.url, "*", token=TOKEN, sync_markers=True)
            it = sub.__aiter__()
            first: list[dict[str, Any]] = []
            while not first or first[-1]["type"] != "synced":
                first.append(await it.__anext__())
            assert sub.last_seq == {"old": 1, "reborn": 2}
            # A session born now: its snapshot is yielded before its first
            # entry, and from then on it is known to start at seq 1.
            producer.log("fresh", "info", "fresh 1")
            assert await producer.flush(10)
            born = await it.__anext__()
            assert born == {"type": "status", "sessionId": "fresh", "status": "running",
                            "metadata": {}}  # fmt: skip
            assert sub.last_seq["fresh"] == 0

            # Cut the connection while nobody iterates: nothing reconnects yet.
            cut(sub)

            async def evicted() -> bool:
                names = {s["sessionId"] for s in await list_sessions(server.url, TOKEN)}
                return "reborn" not in names

            await until(evicted, what="the ended session to be evicted")
            producer.log("old", "info", "old 2")
            producer.log("fresh", "info", "fresh 2")
            producer.log("new", "info", "new 1")
            producer.log("new", "info", "new 2")
            producer.log("reborn", "info", "second life 1")
            producer.log("reborn", "info", "second life 2")
            producer.log("reborn", "info", "second life 3")
            assert await producer.flush(10)

            rest: list[dict[str, Any]] = []
            while True:
                message = await it.__anext__()
                rest.append(message)
                if message["type"] == "synced":
                    break
            # Live from here on: one more of each, to see nothing repeats.
            producer.log("new", "info", "new 3")
            producer.log("reborn", "info", "second life 4")
            assert await producer.flush(10)
            while sum(1 for m in rest if m.get("message") in ("new 3", "second life 4")) < 2:
                rest.append(await it.__anext__())
            await sub.aclose()

        def logs(session: str) -> list[tuple[int, str]]:
            return [
                (m["seq"], m["message"])
                for m in rest
                if m["type"] == "log" and m["sessionId"] == session
            ]

        assert logs("old") == [(2, "old 2")]
        assert logs("fresh") == [(1, "fresh 1"), (2, "fresh 2")]
        assert logs("new") == [(1, "new 1"), (2, "new 2"), (3, "new 3")]
        assert logs("reborn") == [
            (1, "second life 1"),
            (2, "second life 2"),
            (3, "second life 3"),
            (4, "second life 4"),
        ]
        assert not [m for m in rest if m["type"] in ("gap", "error")], rest
        assert sub.reconnects == 1

    run(scenario(), timeout=40)


def test_subscription_refused_token_raises(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()

    async def scenario() -> None:
        with pytest.raises(AuthenticationError, match="authentication failed"):
            async with Subscription(server.url, "*", token="wrong") as sub:
                async for _ in sub:
                    pass

    run(scenario())


def test_subscription_without_reconnect_reports_the_failure() -> None:
    port = free_port()

    async def scenario() -> None:
        with pytest.raises(ConnectionFailed, match="cannot connect"):
            async with Subscription(
                f"ws://127.0.0.1:{port}", "*", token=TOKEN, reconnect=False
            ) as sub:
                async for _ in sub:
                    pass

    run(scenario())


def test_list_sessions(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(env={"AUTH_TOKENS": "all,viewer:view:a*"})

    async def scenario() -> None:
        async with Producer(server.url, token="all") as producer:
            producer.status("a1", "running", {"containerName": "c-a1"})
            producer.log("b1", "info", "x")
            assert await producer.flush(10)
        everything = await list_sessions(server.url, "all")
        assert sorted(s["sessionId"] for s in everything) == ["a1", "b1"]
        scoped = await list_sessions(server.url, "viewer")
        assert [(s["sessionId"], s["status"], s["lastSeq"]) for s in scoped] == [
            ("a1", "running", 1)
        ]
        assert scoped[0]["metadata"] == {"containerName": "c-a1"}
        with pytest.raises(AuthenticationError):
            await list_sessions(server.url, "nope")
        with pytest.raises(ConnectionFailed):
            await list_sessions(f"ws://127.0.0.1:{free_port()}", "all", timeout=3)

    run(scenario())


# --- Producer -----------------------------------------------------------------


async def history(url: str, session: str) -> list[dict[str, Any]]:
    """Every entry the server holds for ``session`` (replayed from seq 1)."""
    out: list[dict[str, Any]] = []
    async with Subscription(url, session, token=TOKEN, since=0, sync_markers=True) as sub:
        async for message in sub:
            if message["type"] == "synced":
                return out
            if "seq" in message:
                out.append(message)
    return out


def test_producer_buffers_until_the_server_starts(
    start_server: Callable[..., ServerProcess],
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"

    async def scenario() -> None:
        producer = Producer(url, token=TOKEN, backoff=(0.05, 0.2))
        producer.start()
        producer.status("buf", "running", {"pid": 1})
        for i in range(500):
            producer.log("buf", "info", f"line {i}", {"i": i})
        await until(lambda: producer.dropped == 0 and producer.pending == 501, what="buffered")
        assert not producer.connected
        server = await asyncio.to_thread(start_server, "--port", str(port))
        assert server.port == port
        for i in range(500, 600):
            producer.log("buf", "warn", f"line {i}", {"i": i})
        assert await producer.flush(15)
        assert producer.pending == 0 and producer.dropped == 0 and producer.rejected == 0
        await producer.aclose()
        entries = await history(url, "buf")
        assert entries[0]["type"] == "status" and entries[0]["status"] == "running"
        logs = entries[1:]
        assert [m["message"] for m in logs] == [f"line {i}" for i in range(600)]
        assert [m["data"]["i"] for m in logs] == list(range(600))
        assert_contiguous(entries)

    run(scenario(), timeout=40)


def test_producer_resends_only_unconfirmed_entries_after_a_server_restart(
    start_server: Callable[..., ServerProcess],
) -> None:
    first = start_server()
    port = first.port
    url = first.url

    async def scenario() -> None:
        async with Producer(url, token=TOKEN, backoff=(0.05, 0.2)) as producer:
            for i in range(100):
                producer.log("r", "info", f"early {i}")
            assert await producer.flush(10)
            await asyncio.to_thread(first.stop, 9)  # SIGKILL: no goodbye
            await until(lambda: not producer.connected, what="the producer to notice")
            for i in range(100):
                producer.log("r", "info", f"late {i}")
            second = await asyncio.to_thread(start_server, "--port", str(port))
            assert await producer.flush(15)
        entries = await history(second.url, "r")
        # The early lines were confirmed by the first server and died with
        # it; they are not sent again. The late ones arrive exactly once.
        assert [m["message"] for m in entries] == [f"late {i}" for i in range(100)]
        assert_contiguous(entries)

    run(scenario(), timeout=40)


def test_producer_outlives_a_restart_with_another_token_then_the_old_one(
    start_server: Callable[..., ServerProcess],
) -> None:
    first = start_server()
    port = str(first.port)

    async def scenario() -> None:
        async with Producer(first.url, token=TOKEN, backoff=(0.05, 0.2)) as producer:
            producer.status("job", "running", {"pid": 1})
            producer.log("job", "info", "early")
            assert await producer.flush(10)
            await asyncio.to_thread(first.stop)
            other = {"AUTH_TOKENS": "other-token-0123456789"}
            second = await asyncio.to_thread(start_server, "--port", port, env=other)
            producer.log("job", "info", "kept 1")
            await until(lambda: producer.error is not None, what="the refusal")
            producer.log("job", "info", "kept 2")
            assert not await producer.flush(0.2)
            assert producer.pending == 2 and producer.rejected == 0
            await asyncio.to_thread(second.stop)
            third = await asyncio.to_thread(start_server, "--port", port)
            assert await producer.flush(15)
            assert producer.error is None and producer.connected
        entries = await history(third.url, "job")
        # The restarted server learns the session's status again first (it
        # was confirmed by the first server, so it is not in the buffer),
        # then gets what was kept, once.
        assert [(m["type"], m.get("status") or m["message"]) for m in entries] == [
            ("status", "running"),
            ("log", "kept 1"),
            ("log", "kept 2"),
        ]
        assert entries[0]["metadata"] == {"pid": 1}
        assert_contiguous(entries)

    run(scenario(), timeout=45)


def test_producer_with_a_refused_token_keeps_its_entries_and_says_why(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()

    async def scenario() -> None:
        changes: list[tuple[bool, str]] = []
        producer = Producer(
            server.url,
            token="wrong",
            backoff=(0.05, 0.1),
            on_connection_change=lambda up, text: changes.append((up, text)),
        )
        producer.start()
        producer.log("x", "info", "hello")
        await until(lambda: producer.error is not None, what="the refusal")
        assert "authentication failed" in str(producer.error)
        # It keeps retrying (a restarted server may take the token back),
        # keeps the entry, and said so once.
        await until(lambda: _metric(server, "pcclog_auth_failures_total") >= 3, what="retries")
        assert not await producer.flush(0.1)
        assert producer.pending == 1 and producer.rejected == 0
        refusals = [text for up, text in changes if "refused the token" in text]
        assert len(refusals) == 1 and not any(up for up, _ in changes), changes
        await producer.aclose(flush_timeout=0)

    run(scenario())


def _metric(server: ServerProcess, name: str) -> float:
    for line in server.get("/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_producer_without_produce_role_rejects_the_session(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(env={"AUTH_TOKENS": "viewer:view:*"})

    async def scenario() -> None:
        refusals: list[dict[str, Any]] = []
        producer = Producer(server.url, token="viewer", on_rejected=refusals.append)
        producer.start()
        for i in range(5):
            producer.log("x", "info", f"hello {i}")
        assert await producer.flush(10)  # refused entries leave the buffer
        assert producer.rejected == 5
        assert refusals[0]["code"] == "UNAUTHORIZED"
        assert "produce" in refusals[0]["message"]
        producer.log("x", "info", "again")  # refused at once, not queued
        assert producer.pending == 0 and producer.rejected == 6
        await producer.aclose()

    run(scenario())


def test_producer_backs_off_a_session_the_full_server_refuses(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-sessions", "2")

    async def scenario() -> None:
        refusals: list[dict[str, Any]] = []
        async with Producer(server.url, token=TOKEN, on_rejected=refusals.append) as producer:
            producer.refuse_retry = 60  # lasts the whole test, however slow the machine
            producer.log("a", "info", "a")
            producer.log("b", "info", "b")
            for i in range(200):  # far past the server's abuse limit (50 errors)
                producer.log("c", "info", f"c {i}")
            producer.log("a", "info", "a again")
            assert await producer.flush(10)
            # The burst was in flight when the first refusal came back, so
            # the server may have closed the connection (1008, too many
            # errors); what it did not handle was sent again without the
            # refused session's entries, so the connection does not loop.
            assert {r["code"] for r in refusals} == {"TOO_MANY_SESSIONS"}
            assert producer.rejected == 200
            answered = len(refusals)
            # While the refusal lasts, new entries for it stop here.
            for i in range(100):
                producer.log("c", "info", f"more {i}")
            producer.log("b", "info", "b again")
            assert await producer.flush(10)
            assert producer.rejected == 300 and len(refusals) == answered
            assert producer.connected
        entries = await history(server.url, "a")
        assert [m["message"] for m in entries] == ["a", "a again"]
        entries = await history(server.url, "b")
        assert [m["message"] for m in entries] == ["b", "b again"]

    run(scenario())


def test_producer_splits_messages_larger_than_a_frame(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-message-size", "4096")
    text = 'é"\n\x01ab' * 3000  # multi-byte, escaped and control characters

    async def scenario() -> None:
        async with Producer(server.url, token=TOKEN, max_message_size=4096) as producer:
            producer.log("big", "info", text, {"stream": "stdout"})
            producer.log("big", "info", "small")
            assert await producer.flush(10)
            assert producer.rejected == 0
        entries = await history(server.url, "big")
        parts = entries[:-1]
        assert len(parts) > 1
        assert "".join(m["message"] for m in parts) == text
        assert [m["data"]["part"] for m in parts] == list(range(1, len(parts) + 1))
        assert {m["data"]["parts"] for m in parts} == {len(parts)}
        assert all(m["data"]["stream"] == "stdout" for m in parts)
        assert entries[-1]["message"] == "small"
        for m in parts:
            wire = json.dumps(
                {k: m[k] for k in ("type", "sessionId", "level", "timestamp", "message", "data")},
                ensure_ascii=False,
                separators=(",", ":"),
            )
            assert len(wire.encode()) <= 4096

    run(scenario())


def test_producer_buffer_is_bounded_and_counts_what_it_drops() -> None:
    async def scenario() -> None:
        producer = Producer(f"ws://127.0.0.1:{free_port()}", token=TOKEN, max_buffer=10)
        for i in range(25):
            producer.log("s", "info", f"{i}")
        assert producer.pending == 10
        assert producer.dropped == 15
        assert not await producer.flush(0.05)
        await producer.aclose(flush_timeout=0)

    run(scenario())


def test_producer_validates_its_input() -> None:
    async def scenario() -> None:
        producer = Producer("ws://127.0.0.1:1", token=TOKEN)
        with pytest.raises(ValueError):
            producer.log("", "info", "x")
        with pytest.raises(ValueError):
            producer.log("*", "info", "x")
        with pytest.raises(ValueError):
            producer.log("s", "x" * 17, "x")
        with pytest.raises(ValueError):
            producer.status("s", "finished")  # type: ignore[arg-type]
        assert producer.pending == 0

    run(scenario())


def test_split_message_respects_the_budget() -> None:
    for text in ["", "a" * 10, "€" * 1000, "\x00" * 100 + "z", '"\\' * 50]:
        parts = split_message(text, 64)
        assert "".join(parts) == text
        for part in parts:
            assert len(json.dumps(part, ensure_ascii=False).encode()) - 2 <= 64

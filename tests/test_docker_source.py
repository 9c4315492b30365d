"""The Docker source against a real engine (SPEC §4).

Every test starts the real ``pcclog serve`` with ``DOCKER_ENABLED=true`` and
a label of its own, runs busybox containers (``network_mode="none"``,
removed at teardown even on failure) and watches with the ``websockets``
client. Where it can, a test compares what the viewer got with the engine's
own ``docker logs``: same lines, same streams, same timestamps (to the
millisecond), no duplicate, no hole.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import REPO, TEST_IMAGE, ServerProcess, wait_for
from websockets.sync.client import ClientConnection, connect

from pcclog_core._docker_http import ChunkedDecoder, EngineHTTPError

TOKEN = "test-token"
ENGINE_SCRIPT = REPO.parent / "shared" / "docker" / "start-engine.sh"
docker_test = pytest.mark.docker


# --- helpers ---------------------------------------------------------------------


class Viewer:
    """A ``websockets`` client subscribed to a session (or ``*``), reading in a thread."""

    def __init__(
        self, server: ServerProcess, session: str = "*", *, stalled: bool = False, **extra: Any
    ) -> None:
        # __enter__ works on every websockets version (17 warns without it).
        self.ws: ClientConnection = connect(
            server.url, max_size=None, open_timeout=10, max_queue=4
        ).__enter__()
        self.messages: list[dict[str, Any]] = []
        self.closed = False
        self.ws.send(
            json.dumps(
                {"type": "subscribe", "sessionId": session, "auth": {"token": TOKEN}, **extra}
            )
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        if not stalled:
            self._thread.start()

    def resume(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        try:
            for text in self.ws:
                self.messages.append(json.loads(text))
        except Exception:
            pass
        self.closed = True

    def entries(self, session: str) -> list[dict[str, Any]]:
        """``log`` and ``status`` entries of ``session`` (not snapshots), in order."""
        return [
            m
            for m in list(self.messages)
            if m.get("sessionId") == session and m["type"] in ("log", "status") and "seq" in m
        ]

    def logs(self, session: str) -> list[dict[str, Any]]:
        return [m for m in self.entries(session) if m["type"] == "log"]

    def texts(self, session: str) -> list[str]:
        return [m["message"] for m in self.logs(session)]

    def statuses(self, session: str) -> list[dict[str, Any]]:
        return [m for m in self.entries(session) if m["type"] == "status"]

    def ended(self, session: str) -> dict[str, Any] | None:
        statuses = self.statuses(session)
        if statuses and statuses[-1]["status"] in ("stopped", "error"):
            return statuses[-1]
        return None

    def errors(self) -> list[dict[str, Any]]:
        return [
            m
            for m in list(self.messages)
            if m["type"] == "gap" or (m["type"] == "error" and m["code"] != "SESSION_NOT_FOUND")
        ]

    def close(self) -> None:
        self.ws.close()


def engine_lines(container: Any) -> list[tuple[str, str, str]]:
    """``(stream, millisecond timestamp, text)`` of every line, from the engine itself."""
    out: list[tuple[str, str, str]] = []
    for stream in ("stdout", "stderr"):
        raw = container.logs(
            stdout=stream == "stdout", stderr=stream == "stderr", timestamps=True
        ).decode("utf-8", "replace")
        for line in raw.splitlines():
            ts, _, text = line.partition(" ")
            out.append((stream, ts[:23] + "Z", text))
    return out


def viewed_lines(viewer: Viewer, session: str) -> list[tuple[str, str, str]]:
    return [(m["data"]["stream"], m["timestamp"], m["message"]) for m in viewer.logs(session)]


def assert_contiguous(viewer: Viewer, session: str) -> None:
    seqs = [m["seq"] for m in viewer.entries(session)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a seq was skipped or repeated"


@pytest.fixture
def label() -> str:
    return f"pcclog.test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def docker_server(
    start_server: Callable[..., ServerProcess], label: str
) -> Callable[..., ServerProcess]:
    def start(**env: str) -> ServerProcess:
        server = start_server(env={"DOCKER_ENABLED": "true", "DOCKER_LABEL": label, **env})
        wait_for(lambda: server.get("/readyz")[0] == 200, timeout=15, what="/readyz 200")
        return server

    return start


@pytest.fixture
def run_container(docker_engine: Any, label: str) -> Iterator[Callable[..., Any]]:
    """``run_container("sh script", session="s")``; removed at teardown."""
    created: list[Any] = []
    lock = threading.Lock()

    def run(
        script: str,
        *,
        session: str | None = "s",
        labels: dict[str, str] | None = None,
        **options: Any,
    ) -> Any:
        labels = {"pcclog.test": "1", **(labels or {})}
        if session is not None:
            labels[label] = session
        container = docker_engine.containers.run(
            TEST_IMAGE,
            ["sh", "-c", script],
            detach=True,
            network_mode="none",
            labels=labels,
            **options,
        )
        with lock:
            created.append(container)
        return container

    yield run
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(_remove, created))


def _remove(container: Any) -> None:
    for _ in range(3):
        try:
            container.remove(force=True)
            return
        except Exception as exc:
            if "No such container" in str(exc) or "404" in str(exc):
                return
            time.sleep(1)


# --- the chunked body, byte by byte (no engine needed) -----------------------------


def test_unchunker_whole_and_byte_by_byte() -> None:
    body = b"2a\r\n" + b"x" * 0x2A + b"\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\nNEXT"
    whole = ChunkedDecoder()
    assert whole.receive_data(body) == b"x" * 0x2A + b"abc"
    assert whole.done
    split = ChunkedDecoder()
    out = b"".join(split.receive_data(body[i : i + 1]) for i in range(len(body)))
    assert out == b"x" * 0x2A + b"abc"
    assert split.done
    for cut in range(len(body)):  # every split into two reads
        two = ChunkedDecoder()
        assert two.receive_data(body[:cut]) + two.receive_data(body[cut:]) == b"x" * 0x2A + b"abc"
        assert two.done
    with pytest.raises(EngineHTTPError):
        ChunkedDecoder().receive_data(b"zz\r\n")


# --- engine connection and /readyz ------------------------------------------------


def test_required_without_engine_is_not_ready(
    start_server: Callable[..., ServerProcess], tmp_path: Any
) -> None:
    server = start_server(
        env={"DOCKER_ENABLED": "true", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    )
    wait_for(
        lambda: any(
            r.get("msg") == "Docker engine unavailable, retrying" for r in server.records()
        ),
        what="the unavailable warning",
    )
    status, body = server.get("/readyz")
    assert status == 503 and b"docker" in body
    assert server.stop() == 0


def test_auto_without_engine_is_ready(
    start_server: Callable[..., ServerProcess], tmp_path: Any
) -> None:
    server = start_server(
        env={"DOCKER_ENABLED": "auto", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    )
    wait_for(
        lambda: any("no Docker engine answered" in r.get("msg", "") for r in server.records()),
        what="the log line",
    )
    assert server.get("/readyz")[0] == 200
    assert server.stop() == 0


# --- lines and statuses -------------------------------------------------------------


@docker_test
def test_streams_levels_timestamps_and_exit_statuses(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    server = docker_server()
    viewer = Viewer(server)
    script = (
        "echo out1; sleep 0.05; echo err1 >&2; sleep 0.05; echo out2; sleep 0.05; "
        "echo err2 >&2; sleep 0.05; echo 'plain {not json}'; exit 0"
    )
    ok = run_container(script, session="ok")
    run_container("echo failing; exit 3", session="bad")
    wait_for(lambda: viewer.ended("ok") and viewer.ended("bad"), what="both end statuses")

    assert viewer.texts("ok") == ["out1", "err1", "out2", "err2", "plain {not json}"]
    assert viewed_lines(viewer, "ok") == sorted(engine_lines(ok), key=lambda x: x[1])
    levels = [(m["data"]["stream"], m["level"]) for m in viewer.logs("ok")]
    assert levels == [
        ("stdout", "info"),
        ("stderr", "error"),
        ("stdout", "info"),
        ("stderr", "error"),
        ("stdout", "info"),
    ]
    assert {m["data"]["containerId"] for m in viewer.logs("ok")} == {ok.id[:12]}

    entries = viewer.entries("ok")
    assert entries[0]["type"] == "status" and entries[0]["status"] == "running"
    meta = entries[0]["metadata"]
    assert meta["containerId"] == ok.id[:12]
    assert meta["containerName"] == ok.name
    assert meta["image"] == TEST_IMAGE
    assert meta["startTime"].endswith("Z")
    assert entries[-1]["status"] == "stopped"
    assert entries[-1]["metadata"]["exitCode"] == 0
    assert entries[-1]["metadata"]["finishedAt"].endswith("Z")
    assert [m["type"] for m in entries[1:-1]] == ["log"] * 5
    assert_contiguous(viewer, "ok")

    ended = viewer.ended("bad")
    assert ended is not None and ended["status"] == "error"
    assert ended["metadata"]["exitCode"] == 3
    assert ended["metadata"]["oomKilled"] is False
    assert viewer.texts("bad") == ["failing"]
    assert viewer.errors() == []
    assert server.get("/readyz")[0] == 200


@docker_test
def test_oom_kill_and_removal_end_the_session_with_error(
    docker_server: Callable[..., ServerProcess],
    run_container: Callable[..., Any],
    docker_engine: Any,
) -> None:
    if not docker_engine.info().get("MemoryLimit"):
        pytest.skip("this engine has no memory cgroup: it cannot OOM-kill a container")
    server = docker_server()
    viewer = Viewer(server)
    oom = run_container(
        # The pause: an OOM kill in the container's first milliseconds can
        # come before the engine watches for it; the engine then reports a
        # plain exit 137 (OOMKilled false, no "oom" event), and so would pcclog.
        "echo start; sleep 1; x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        session="oom",
        mem_limit="16m",
        memswap_limit="16m",
    )
    doomed = run_container("echo up; sleep 3600", session="rm")
    wait_for(lambda: viewer.texts("rm") == ["up"], what="the second container's line")
    doomed.remove(force=True)
    wait_for(lambda: viewer.ended("rm"), what="the removed container's end status")
    ended = viewer.ended("rm")
    assert ended is not None and ended["status"] == "error"
    assert ended["metadata"]["exitCode"] == 137

    wait_for(lambda: viewer.ended("oom"), timeout=30, what="the OOM-killed container's end")
    oom.reload()
    assert oom.attrs["State"]["OOMKilled"], oom.attrs["State"]  # the engine agrees
    ended = viewer.ended("oom")
    assert ended is not None and ended["status"] == "error"
    assert ended["metadata"]["oomKilled"] is True
    assert ended["metadata"]["exitCode"] == 137
    assert viewer.texts("oom") == ["start"]


@docker_test
def test_tty_long_lines_and_json(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    server = docker_server()
    viewer = Viewer(server)
    run_container("echo tty1; echo tty2 >&2; printf 'no newline'", session="tty", tty=True)
    long_script = (
        "head -c 102400 /dev/zero | tr '\\0' x; echo; "
        "head -c 300000 /dev/zero | tr '\\0' y; echo; "
        "head -c 40000 /dev/zero | tr '\\0' z >&2; echo >&2; "
        'echo \'{"level":"warn","msg":"structured","n":1}\'; '
        'echo \'{"level":50,"msg":"pino error"}\'; '
        'echo \'{"severity":"DEBUG","message":"gcp style"}\'; '
        'echo \'{"msg":"no level"}\' >&2; '
        "echo after"
    )
    run_container(long_script, session="long")
    wait_for(lambda: viewer.ended("tty") and viewer.ended("long"), what="both end statuses")

    tty = viewer.logs("tty")
    assert [m["message"] for m in tty] == ["tty1", "tty2", "no newline"]  # no "\r"
    assert {m["data"]["stream"] for m in tty} == {"stdout"}  # a TTY has one stream

    # stdout and stderr are copied apart: their relative order is the engine's.
    out = [m for m in viewer.logs("long") if m["data"]["stream"] == "stdout"]
    err = [m for m in viewer.logs("long") if m["data"]["stream"] == "stderr"]
    assert len(out) == 6 and len(err) == 2
    assert out[0]["message"] == "x" * 102400  # seven 16 KiB pieces, joined
    # Cut once, with one marker, to MAX_LINE_BYTES as encoded: every byte
    # of the 300,000 is either kept or counted.
    cut = out[1]["message"]
    kept, marker = cut.split(" …[truncated ")
    assert kept == "y" * len(kept) and len(kept) > 256 * 1024 - 100
    assert marker == f"{300000 - len(kept)} bytes]"
    assert len(json.dumps(cut, ensure_ascii=False)) - 2 <= 256 * 1024
    assert err[0]["message"] == "z" * 40000
    assert (out[2]["level"], out[2]["message"], out[2]["data"]["n"]) == ("warn", "structured", 1)
    assert (out[3]["level"], out[3]["message"]) == ("error", "pino error")
    assert (out[4]["level"], out[4]["message"]) == ("debug", "gcp style")
    assert (err[1]["level"], err[1]["message"]) == ("error", "no level")  # stderr default
    assert out[5]["message"] == "after"
    assert_contiguous(viewer, "long")


@docker_test
def test_burst_of_ten_thousand_lines(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    server = docker_server(CONNECTION_BUFFER=str(64 << 20))
    viewer = Viewer(server)
    run_container("seq 1 10000", session="burst")
    wait_for(lambda: viewer.ended("burst"), timeout=30, what="the end status")
    assert viewer.texts("burst") == [str(i) for i in range(1, 10001)]
    assert_contiguous(viewer, "burst")
    assert viewer.errors() == []


@docker_test
def test_unlabelled_and_other_label_ignored(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    server = docker_server()
    viewer = Viewer(server)
    run_container("echo unlabelled-marker; sleep 0.2; echo unlabelled-marker", session=None)
    run_container("echo other-marker", session=None, labels={"pcclog.other": "mine"})
    run_container("sleep 0.5; echo mine", session="mine")
    wait_for(lambda: viewer.ended("mine"), what="the labelled container to end")
    assert viewer.texts("mine") == ["mine"]
    sessions = {m["sessionId"] for m in viewer.messages if "sessionId" in m}
    assert sessions == {"mine"}
    assert not any("marker" in json.dumps(m) for m in viewer.messages)


@docker_test
def test_backpressure_pauses_reading_instead_of_dropping(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    # A stalled viewer fills the memory budget (64 KiB: history is shed
    # first) long before its own 1 MiB buffer: the source must stop reading,
    # not let the hub drop lines.
    server = docker_server(MEMORY_BUDGET="65536", CONNECTION_BUFFER=str(1 << 20))
    viewer = Viewer(server, "bp", stalled=True)
    run_container("seq 1 100000", session="bp")
    time.sleep(2)  # the stall itself: nothing to poll for
    viewer.resume()
    wait_for(lambda: viewer.ended("bp"), timeout=60, what="the end status")
    assert viewer.errors() == []  # no gap
    assert viewer.texts("bp") == [str(i) for i in range(1, 100001)]


@docker_test
def test_session_limit_refuses_extra_containers_without_harm(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    server = docker_server(MAX_SESSIONS="1")
    viewer = Viewer(server)
    run_container("echo first; sleep 3600", session="first")
    wait_for(lambda: viewer.texts("first") == ["first"], what="the first session")
    run_container("echo second; sleep 3600", session="second")
    wait_for(
        lambda: any("refused" in r.get("msg", "") for r in server.records()),
        what="the refusal in the server log",
    )
    run_container("sleep 0.3; echo more >&2; sleep 3600", session="first")
    wait_for(lambda: "more" in viewer.texts("first"), what="the first session still served")
    assert {m["sessionId"] for m in viewer.messages if "sessionId" in m} == {"first"}
    assert server.get("/readyz")[0] == 200


# --- continuity: container restart, engine restart, pcclog restart -------------------


@docker_test
def test_container_restart_continues_the_session(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    server = docker_server()
    viewer = Viewer(server)
    container = run_container(
        "n=0; while true; do echo line-$n; n=$((n+1)); sleep 0.02; done", session="re"
    )
    wait_for(lambda: len(viewer.logs("re")) >= 10, what="first lines")
    container.restart(timeout=0)
    wait_for(
        lambda: [s["status"] for s in viewer.statuses("re")] == ["running", "error", "running"],
        what="running, error, running",
    )
    before = len(viewer.logs("re"))
    wait_for(lambda: len(viewer.logs("re")) >= before + 10, what="lines of the second run")
    container.kill()
    wait_for(lambda: len(viewer.statuses("re")) == 4, what="the last end status")

    statuses = viewer.statuses("re")
    assert statuses[1]["metadata"]["exitCode"] == 137
    assert statuses[2]["metadata"]["exitCode"] is None  # cleared for the new run
    assert statuses[2]["metadata"]["startTime"] > statuses[0]["metadata"]["startTime"]
    assert statuses[3]["status"] == "error"
    assert viewed_lines(viewer, "re") == engine_lines(container)  # no duplicate, no hole
    assert_contiguous(viewer, "re")


@docker_test
def test_engine_restart_resumes_without_duplicate_or_hole(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    if not ENGINE_SCRIPT.exists():
        pytest.skip(f"{ENGINE_SCRIPT} not found")
    server = docker_server()
    viewer = Viewer(server, "eng")
    container = run_container(
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done", session="eng"
    )
    wait_for(lambda: len(viewer.logs("eng")) >= 20, what="first lines")
    subprocess.run(
        ["bash", str(ENGINE_SCRIPT), "restart"], check=True, timeout=90, capture_output=True
    )
    at_restart = len(viewer.logs("eng"))
    wait_for(
        lambda: len(viewer.logs("eng")) >= at_restart + 100, timeout=30, what="lines after restart"
    )
    container.kill()
    wait_for(lambda: viewer.ended("eng"), timeout=15, what="the end status")

    texts = viewer.texts("eng")
    assert texts == [str(i) for i in range(len(texts))]  # every line once, in order
    assert viewed_lines(viewer, "eng") == engine_lines(container)
    assert_contiguous(viewer, "eng")
    assert [s["status"] for s in viewer.statuses("eng")] == ["running", "error"]
    records = server.records()
    assert any("reconnecting" in r.get("msg", "") for r in records)
    assert server.get("/readyz")[0] == 200


@docker_test
def test_pcclog_restart_replays_history(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    first = docker_server()
    viewer = Viewer(first, "hist")
    run_container("seq 1 50; sleep 1; seq 51 60; sleep 3600", session="hist")
    wait_for(lambda: len(viewer.logs("hist")) >= 50, what="the first 50 lines")
    viewer.close()
    assert first.stop() == 0

    second = docker_server()

    def listed() -> bool:
        status, body = second.get("/api/sessions", {"Authorization": f"Bearer {TOKEN}"})
        sessions = json.loads(body)["sessions"] if status == 200 else []
        return any(s["sessionId"] == "hist" and s["lastSeq"] >= 61 for s in sessions)

    wait_for(listed, what="the session and its 60 lines in the new server")
    late = Viewer(second, "hist", tail=1000)
    wait_for(lambda: len(late.logs("hist")) >= 60, what="the replay")
    assert late.texts("hist") == [str(i) for i in range(1, 61)]
    assert late.statuses("hist")[0]["status"] == "running"
    assert_contiguous(late, "hist")


# --- shutdown -------------------------------------------------------------------------


@docker_test
def test_sigterm_with_fifty_followed_containers_is_quick(
    docker_server: Callable[..., ServerProcess], run_container: Callable[..., Any]
) -> None:
    server = docker_server()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: run_container("echo up; sleep 3600", session=f"s{i}"), range(50)))

    def followed() -> bool:
        status, body = server.get("/api/sessions", {"Authorization": f"Bearer {TOKEN}"})
        sessions = json.loads(body)["sessions"] if status == 200 else []
        return len(sessions) == 50 and all(s["lastSeq"] >= 2 for s in sessions)

    wait_for(followed, timeout=60, what="50 followed containers")
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(10)
    elapsed = time.monotonic() - started
    assert code == 0
    assert elapsed < 5, f"shutdown took {elapsed:.2f}s"

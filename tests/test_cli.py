"""The client commands as a user runs them: ``pcclog run``, ``tail``,
``sessions`` and ``token`` as real processes against the real server."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
from conftest import REPO, ServerProcess, free_port, wait_for

from pcclog_server.client import ClientError, Producer, list_sessions

TOKEN = "test-token"
CLI = [sys.executable, "-m", "pcclog_server.cli"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PCCLOG_", "AUTH_", "NO_COLOR"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=REPO,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(env),
        cwd=REPO,
    )


class Lines:
    """Reads a pipe in a thread so tests can wait for a line with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _pull(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15) -> str:
        def found() -> str | None:
            self._pull()
            return next((line for line in self.lines if predicate(line)), None)

        result: str = wait_for(found, timeout=timeout, what="an output line")
        return result

    def all(self) -> list[str]:
        self._pull()
        return self.lines


def jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def entries(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if "seq" in m]


def stream_lines(messages: list[dict[str, Any]], stream: str) -> list[tuple[str, str]]:
    return [
        (m["level"], m["message"])
        for m in messages
        if m["type"] == "log" and m.get("data", {}).get("stream") == stream
    ]


SCRIPT = "echo out1; echo err1 >&2; echo out2; exit 3"


def test_run_streams_output_and_exit_status_to_tail(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    conn = ["--url", server.url, "--token", TOKEN]
    # A viewer waiting before the session exists: told so, then follows it.
    live = spawn("tail", "s", "--json", "--exit-on-end", *conn)
    live_out = Lines(live.stdout)  # type: ignore[arg-type]
    first = json.loads(live_out.wait_for(lambda line: True))
    assert first["type"] == "error" and first["code"] == "SESSION_NOT_FOUND"

    run = cli("run", "--session", "s", *conn, "--", "sh", "-c", SCRIPT)
    assert run.returncode == 3, run.stderr
    assert run.stdout.splitlines() == ["out1", "out2"]  # echoed as well as published
    assert "err1" in run.stderr

    assert live.wait(15) == 1  # --exit-on-end: the session ended in error
    seen = [json.loads(line) for line in live_out.all()[1:]]
    _check_session_history(entries(seen))
    assert all("seq" in m for m in seen[1:])  # a snapshot first, then entries

    # After the fact: the snapshot, the replayed history, exit status 1.
    again = cli("tail", "s", "--json", "--exit-on-end", *conn)
    assert again.returncode == 1, again.stderr
    replayed = jsonl(again.stdout)
    assert replayed[0]["type"] == "status" and "seq" not in replayed[0]
    assert replayed[0]["status"] == "error" and replayed[0]["metadata"]["exitCode"] == 3
    assert entries(replayed) == entries(seen)

    # Filters: --level and --grep apply to log lines; statuses always show.
    errors_only = cli("tail", "s", "--json", "--exit-on-end", "--level", "error", *conn)
    logs = [m for m in jsonl(errors_only.stdout) if m["type"] == "log"]
    assert [m["message"] for m in logs] == ["err1"]
    grep = cli("tail", "s", "--exit-on-end", "--grep", "^out2$", *conn)
    lines = grep.stdout.splitlines()
    assert [line for line in lines if " INFO " in line or " ERROR " in line] == [
        line for line in lines if line.endswith(" INFO  out2")
    ]
    assert any(" STATUS error exitCode=3" in line for line in lines)


def _check_session_history(history: list[dict[str, Any]]) -> None:
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))
    assert history[0]["type"] == "status" and history[0]["status"] == "running"
    started = history[0]["metadata"]
    assert started["command"] == f"sh -c '{SCRIPT}'"
    assert isinstance(started["pid"], int) and started["startTime"].endswith("Z")
    assert stream_lines(history, "stdout") == [("info", "out1"), ("info", "out2")]
    assert stream_lines(history, "stderr") == [("error", "err1")]
    end = history[-1]
    assert end["type"] == "status" and end["status"] == "error"
    assert end["metadata"]["exitCode"] == 3
    assert end["metadata"]["finishedAt"].endswith("Z")
    assert end["metadata"]["duration"] >= 0
    assert len(history) == 5


def test_run_buffers_while_no_server_listens_then_delivers_everything_once(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    go = tmp_path / "go"
    script = (
        'for i in 1 2 3; do echo "line $i"; done; echo "warn 1" >&2; '
        f"n=0; while [ ! -e {go} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; "
        'echo "line 4"'
    )
    run = spawn(
        "run", "--session", "b", "--url", url, "--token", TOKEN, "--reconnect-max", "0.3",
        "--", "sh", "-c", script,
    )  # fmt: skip
    out, err = Lines(run.stdout), Lines(run.stderr)  # type: ignore[arg-type]
    out.wait_for(lambda line: line == "line 3")
    err.wait_for(lambda line: line == "warn 1")
    notice = err.wait_for(lambda line: line.startswith("pcclog run: cannot reach"))
    assert "buffering" in notice

    server = start_server("--port", str(port))
    assert server.port == port
    go.touch()
    assert run.wait(30) == 0, err.all()
    assert out.all() == ["line 1", "line 2", "line 3", "line 4"]

    tail = cli("tail", "b", "--json", "--exit-on-end", "--since", "0", "--url", url,
               "--token", TOKEN)  # fmt: skip
    assert tail.returncode == 0, tail.stderr
    history = entries(jsonl(tail.stdout))
    assert [m["seq"] for m in history] == list(range(1, 8))
    assert history[0]["status"] == "running" and history[-1]["status"] == "stopped"
    assert history[-1]["metadata"]["exitCode"] == 0
    assert stream_lines(history, "stdout") == [("info", f"line {i}") for i in (1, 2, 3, 4)]
    assert stream_lines(history, "stderr") == [("error", "warn 1")]


def test_run_forwards_sigterm_and_reports_the_exit(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    conn = ["--url", server.url, "--token", TOKEN]
    script = "trap 'echo bye; exit 7' TERM; echo ready; while :; do sleep 0.05; done"
    run = spawn("run", "--session", "sig", *conn, "--", "sh", "-c", script)
    out = Lines(run.stdout)  # type: ignore[arg-type]
    out.wait_for(lambda line: line == "ready")
    run.send_signal(signal.SIGTERM)
    assert run.wait(15) == 7
    tail = cli("tail", "sig", "--json", "--exit-on-end", *conn)
    history = entries(jsonl(tail.stdout))
    assert [m["message"] for m in history if m["type"] == "log"] == ["ready", "bye"]
    assert history[-1]["metadata"]["exitCode"] == 7


def test_run_reports_a_command_that_cannot_start(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    conn = ["--url", server.url, "--token", TOKEN]
    missing = cli("run", "--session", "nope", *conn, "--", "/no/such/program")
    assert missing.returncode == 127
    assert "cannot run '/no/such/program'" in missing.stderr
    history = entries(jsonl(cli("tail", "nope", "--json", "--exit-on-end", *conn).stdout))
    assert history[-1]["status"] == "error" and history[-1]["metadata"]["exitCode"] == 127
    usage = cli("run", "--session", "x", *conn)
    assert usage.returncode == 2 and "no command given" in usage.stderr


# --- producers that outlive restarts (and refusals) -----------------------------------

VIEWER = "viewer-token-0123456789"


def _metric(server: ServerProcess, name: str) -> float:
    for line in server.get("/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _listed(server: ServerProcess, session: str) -> dict[str, Any] | None:
    try:
        found = asyncio.run(list_sessions(server.url, TOKEN, timeout=3))
    except ClientError:
        return None
    return next((s for s in found if s["sessionId"] == session), None)


def test_run_through_a_restart_with_another_token_then_the_old_one_delivers_every_line_once(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    tokens = f"{TOKEN},{VIEWER}:view:*"
    first = start_server(env={"AUTH_TOKENS": tokens})
    port = str(first.port)
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    wait = "n=0; while [ ! -e {0} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done"
    script = (
        "echo line 1; echo line 2; echo line 3; "
        f"{wait.format(go1)}; echo line 4; echo line 5; echo line 6; {wait.format(go2)}"
    )
    # A viewer (whose token every server accepts) follows across restarts.
    tail = spawn("tail", "s", "--json", "--exit-on-end", "--url", first.url, "--token", VIEWER,
                 "--reconnect-max", "0.3")  # fmt: skip
    seen = Lines(tail.stdout)  # type: ignore[arg-type]
    run = spawn("run", "--session", "s", "--url", first.url, "--token", TOKEN,
                "--reconnect-max", "0.3", "--", "sh", "-c", script)  # fmt: skip
    out, err = Lines(run.stdout), Lines(run.stderr)  # type: ignore[arg-type]
    try:
        seen.wait_for(lambda line: '"line 3"' in line)
        first.stop()
        # The server comes back with a new token: the old one is refused.
        second = start_server(
            "--port", port, env={"AUTH_TOKENS": f"other-token-0123456789,{VIEWER}:view:*"}
        )
        err.wait_for(lambda line: "refused the token" in line)
        go1.touch()
        out.wait_for(lambda line: line == "line 6")  # buffered meanwhile
        wait_for(lambda: _metric(second, "pcclog_auth_failures_total") >= 3, what="retries")
        # The old token is back: everything kept is delivered.
        second.stop()
        third = start_server("--port", port, env={"AUTH_TOKENS": tokens})
        go2.touch()
        assert run.wait(30) == 0, err.all()
        assert tail.wait(30) == 0, seen.all()
    finally:
        for proc in (run, tail):
            if proc.poll() is None:
                proc.kill()
    messages = [json.loads(line) for line in seen.all()]
    logs = [m["message"] for m in messages if m["type"] == "log"]
    assert logs == [f"line {i}" for i in range(1, 7)]  # every line, once
    statuses = [(m["status"], m["seq"]) for m in entries(messages) if m["type"] == "status"]
    # running on the first server; on the third, running again (re-sent on
    # reconnect: the restarted server had forgotten the session), then the end.
    assert statuses == [("running", 1), ("running", 1), ("stopped", 5)], (seen.all(), err.all())
    assert [m["seq"] for m in entries(messages)] == [1, 2, 3, 4, 1, 2, 3, 4, 5]
    # Said once, however many attempts were refused.
    assert len([line for line in err.all() if "refused the token" in line]) == 1, err.all()
    assert "not delivered" not in "\n".join(err.all())
    assert _listed(third, "s") is not None


def test_a_silent_run_sends_its_running_status_again_after_a_restart(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    first = start_server()
    go = tmp_path / "go"
    script = f"n=0; while [ ! -e {go} ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done"
    run = spawn("run", "--session", "quiet", "--url", first.url, "--token", TOKEN,
                "--reconnect-max", "0.3", "--", "sh", "-c", script)  # fmt: skip
    try:
        before = wait_for(lambda: _listed(first, "quiet"), what="the session")
        assert before["status"] == "running"
        first.stop(signal.SIGKILL)
        second = start_server("--port", str(first.port))
        # The command printed nothing since: only the re-sent status can
        # bring the session back.
        after = wait_for(lambda: _listed(second, "quiet"), what="the session after the restart")
        assert after["status"] == "running" and after["lastSeq"] == 1
        assert after["metadata"]["command"] == before["metadata"]["command"]
        assert after["metadata"]["pid"] == before["metadata"]["pid"]
        go.touch()
        assert run.wait(30) == 0
    finally:
        if run.poll() is None:
            run.kill()
    end = _listed(second, "quiet")
    assert end is not None and end["status"] == "stopped" and end["lastSeq"] == 2


def test_a_refused_run_exits_non_zero_with_the_reason(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server("--max-sessions", "1")
    conn = ["--url", server.url]

    async def occupy() -> None:
        async with Producer(server.url, token=TOKEN) as producer:
            producer.status("busy", "running")
            assert await producer.flush(10)

    asyncio.run(occupy())
    full = cli("run", "--session", "s", *conn, "--token", TOKEN, "--", "echo", "hi")
    assert full.returncode == 3, full.stderr
    assert "refused 3 entries (TOO_MANY_SESSIONS" in full.stderr
    assert full.stdout == "hi\n"
    # A token the server refuses: retried until --flush-timeout, then said.
    wrong = cli("run", "--session", "busy", *conn, "--token", "wrong-token-0123456789",
                "--flush-timeout", "1", "--reconnect-max", "0.2", "--", "echo", "hi")  # fmt: skip
    assert wrong.returncode == 3, wrong.stderr
    assert "3 entries were not delivered" in wrong.stderr
    assert "the server refused the token: authentication failed" in wrong.stderr
    assert len([ln for ln in wrong.stderr.splitlines() if "retrying" in ln]) == 1, wrong.stderr
    # A command that failed keeps its own status.
    failed = cli("run", "--session", "busy", *conn, "--token", "wrong-token-0123456789",
                 "--flush-timeout", "0.5", "--", "sh", "-c", "exit 5")  # fmt: skip
    assert failed.returncode == 5, failed.stderr
    assert "not delivered" in failed.stderr


def test_run_splits_and_cuts_long_lines(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    conn = ["--url", server.url, "--token", TOKEN]
    program = "import sys; sys.stdout.write('x' * 300000 + '\\nend\\n')"
    run = cli("run", "--session", "long", "--max-line", "200000", "--max-message-size", "65536",
              "-q", *conn, "--", sys.executable, "-c", program)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # -q: not echoed
    history = entries(jsonl(cli("tail", "long", "--json", "--exit-on-end", *conn).stdout))
    logs = [m for m in history if m["type"] == "log"]
    parts = logs[:-1]
    assert len(parts) == parts[0]["data"]["parts"] >= 4  # 200 KB over 64 KiB messages
    assert "".join(m["message"] for m in parts) == "x" * 200000 + " [… 100000 more bytes cut]"
    assert all(m["data"]["truncated"] == 100000 for m in parts)
    assert logs[-1]["message"] == "end"


def test_sessions_lists_status_seq_and_exit_code(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    conn = ["--url", server.url, "--token", TOKEN]

    async def publish() -> None:
        async with Producer(server.url, token=TOKEN) as producer:
            producer.status("ok-1", "running", {"command": "true"})
            producer.status("ok-1", "stopped", {"exitCode": 0})
            producer.status("bad-1", "running", {"containerName": "agent-bad"})
            producer.log("bad-1", "error", "boom")
            producer.status("bad-1", "error", {"exitCode": 4})
            producer.log("live-1", "info", "working")
            assert await producer.flush(10)

    asyncio.run(publish())
    table = cli("sessions", *conn)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SESSION", "STATUS", "LAST-SEQ", "DETAILS"]
    assert lines[1].split() == ["bad-1", "error", "3", "exit=4", "container=agent-bad"]
    assert lines[2].split() == ["live-1", "running", "1"]
    assert lines[3].split() == ["ok-1", "stopped", "2", "exit=0", "command=true"]
    assert "\x1b[" not in table.stdout  # not a terminal: no color
    listed = json.loads(cli("sessions", "--json", *conn).stdout)
    assert {s["sessionId"]: (s["status"], s["lastSeq"]) for s in listed} == {
        "ok-1": ("stopped", 2),
        "bad-1": ("error", 3),
        "live-1": ("running", 1),
    }
    refused = cli("sessions", "--url", server.url, "--token", "wrong")
    assert refused.returncode == 3 and "UNAUTHORIZED" in refused.stderr
    down = cli("sessions", "--url", f"ws://127.0.0.1:{free_port()}", "--token", TOKEN)
    assert down.returncode == 4 and "cannot list sessions" in down.stderr


def test_minted_jwt_is_accepted_and_scoped(start_server: Callable[..., ServerProcess]) -> None:
    secret = "jwt-secret-for-the-cli-test-0123456789"
    server = start_server(token=None, env={"AUTH_JWT_SECRET": secret})
    minted = {}
    for name, flags in {
        "viewer": ["--roles", "view"],
        "producer": ["--roles", "produce", "--session", "job-*"],
    }.items():
        result = cli("token", *flags, "--expires-in", "10m", env={"AUTH_JWT_SECRET": secret})
        assert result.returncode == 0, result.stderr
        minted[name] = result.stdout.strip()
    run = cli("run", "--session", "job-1", "--url", server.url, "--token", minted["producer"],
              "--", "echo", "hello")  # fmt: skip
    assert run.returncode == 0 and run.stderr == "", run.stderr
    tail = cli("tail", "job-1", "--json", "--exit-on-end", "--url", server.url,
               "--token", minted["viewer"])  # fmt: skip
    assert tail.returncode == 0, tail.stderr
    assert [m["message"] for m in jsonl(tail.stdout) if m["type"] == "log"] == ["hello"]
    # The producer token cannot view, nor produce outside job-*.
    cannot_view = cli("tail", "job-1", "--url", server.url, "--token", minted["producer"])
    assert cannot_view.returncode == 3
    assert "lacks the 'view' role" in cannot_view.stderr
    outside = cli("run", "--session", "other", "--url", server.url, "--token",
                  minted["producer"], "--", "echo", "x")  # fmt: skip
    # The command succeeded but the server refused its output: non-zero,
    # with the reason.
    assert outside.returncode == 3
    assert "does not cover session 'other'" in outside.stderr
    assert "refused 3 entries" in outside.stderr  # running, the line, the end


def test_tail_with_a_bad_or_missing_token_exits_with_a_clear_message(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    bad = cli("tail", "s", env={"PCCLOG_URL": server.url, "PCCLOG_TOKEN": "wrong"})
    assert bad.returncode == 3
    assert bad.stderr.startswith("pcclog tail: UNAUTHORIZED: authentication failed")
    assert bad.stdout == ""
    missing = cli("tail", "*", "--url", server.url)
    assert missing.returncode == 3
    assert "not authenticated" in missing.stderr and "PCCLOG_TOKEN" in missing.stderr
    down = cli("tail", "s", "--no-reconnect", "--url", f"ws://127.0.0.1:{free_port()}")
    assert down.returncode == 4 and "cannot connect" in down.stderr
    star = cli("tail", "*", "--exit-on-end", "--url", server.url)
    assert star.returncode == 2 and "single session" in star.stderr


def test_tail_on_a_terminal_is_colored_and_readable(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server()
    conn = ["--url", server.url, "--token", TOKEN]
    assert cli("run", "--session", "tty", *conn, "--", "sh", "-c", SCRIPT).returncode == 3
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, "tail", "tty", "--exit-on-end", *conn],
        stdout=slave,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=_env({"TERM": "xterm"}),
        cwd=REPO,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(5) == 1
    text = b"".join(chunks).decode()
    assert "\x1b[" in text  # colored
    plain = [_strip_ansi(line) for line in text.splitlines()]
    assert any("✖ error (current state)" in line for line in plain)
    assert any(line.endswith("INFO  out1") for line in plain)
    assert any(line.endswith("ERROR err1") for line in plain)
    assert any("● running" in line for line in plain)


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip("\r")


@pytest.mark.parametrize("command", [[], ["tail"], ["sessions"], ["run"]])
def test_help(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: pcclog")
    if command in (["tail"], ["sessions"], ["run"]):
        assert "--url" in result.stdout and "PCCLOG_TOKEN" in result.stdout

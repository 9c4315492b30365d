"""Docker source benchmark: many labelled containers, several viewers, every line checked.

    .venv/bin/python benchmarks/docker_bench.py            # 100 containers x 200 lines/s x 30 s
    .venv/bin/python benchmarks/docker_bench.py --quick    # 10 containers x 5 s

Theory of operation
-------------------
* One ``pcclog serve`` (``DOCKER_ENABLED=true``, a label of this run, keepalive off so the
  viewers need not answer pings) on a free port.
* ``--containers`` busybox containers (``network_mode="none"``), each printing the numbers
  ``1..rate*duration`` in bursts of ``rate/10`` lines every 100 ms (``seq`` then
  ``sleep 0.1``), so about ``rate`` lines a second. Started concurrently; removed at the
  end, even on failure. They all wait for a gate (a file in a read-only bind mount) that
  opens once every one of them runs and pcclog follows them all: starting 100 containers
  takes longer than their output on a small machine, and the lines must be counted in the
  window whose CPU is counted.
* ``--viewers`` WebSocket viewers subscribed to ``*``, in a child process, on raw sockets
  in one ``epoll`` loop: a regular expression picks ``sessionId``, ``message`` and
  ``seq`` out of each received block (a message cut by a ``recv`` boundary is carried
  over), so a viewer costs about a microsecond per message and never slows the server.
  Each viewer checks, per session, that the messages are exactly ``1, 2, 3, ...`` (no
  loss, no duplicate, in order) and counts ``gap`` messages.
* pcclog's CPU time and RSS are read with psutil: CPU from the gate's opening to the last
  line delivered (``pcclog_cpu_us_per_line``: the whole cost per followed line: read,
  decode, history, fan-out), over the window in which all containers print (steady
  state) and over the whole run (attaching included), RSS at its peak. dockerd's and the
  viewers' CPU are reported beside it for context.
* The viewers get a 64 MiB ``CONNECTION_BUFFER``: they share two cores with dockerd and
  the containers, and a scheduling stall of theirs must not count as a lost line.

The run passes when every viewer got every line of every container and pcclog used less
than half a core in the steady window. Exit status 0 on pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

# Run as a script (``python benchmarks/docker_bench.py``) or as a module.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.targets import metric, raw_websocket

REPO = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("PCCLOG_TEST_IMAGE", "pcclog-test/busybox:latest")
TOKEN = "bench-token"
LOG_RE = re.compile(
    rb'\{"type":"log","sessionId":"([^"]*)","timestamp":"[^"]*","level":"[^"]*",'
    rb'"message":"(\d+)".*?"seq":(\d+)\}'
)
GAP = b'"type":"gap"'


# --- viewers (child process) ---------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = raw_websocket(port, rcvbuf=1 << 20)
    payload = json.dumps({"type": "subscribe", "sessionId": "*", "auth": {"token": TOKEN}}).encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    sock.setblocking(False)
    return sock


def _viewers(port: int, count: int, lines: int, ready: Any, stop: Any, out: Any) -> None:
    socks = [_connect(port) for _ in range(count)]
    epoll = select.epoll()
    state: dict[int, dict[str, Any]] = {}
    for index, sock in enumerate(socks):
        epoll.register(sock.fileno(), select.EPOLLIN)
        state[sock.fileno()] = {
            "sock": sock,
            "index": index,
            "carry": b"",
            "next": {},  # session -> next expected number
            "bad": 0,  # out of order, missing or duplicate
            "gaps": 0,
            "messages": 0,
            "bytes": 0,
            "closed": False,
        }
    ready.set()
    finditer = LOG_RE.finditer
    while not stop.is_set():
        for fd, _ in epoll.poll(0.2):
            st = state[fd]
            try:
                data = st["sock"].recv(1 << 20)
            except BlockingIOError:
                continue
            if not data:
                st["closed"] = True
                epoll.unregister(fd)
                continue
            st["bytes"] += len(data)
            block = st["carry"] + data if st["carry"] else data
            expected = st["next"]
            end = 0
            count_ = 0
            for m in finditer(block):
                session = m.group(1)
                number = int(m.group(2))
                if expected.get(session, 1) != number:
                    st["bad"] += 1
                expected[session] = number + 1
                end = m.end()
                count_ += 1
            st["messages"] += count_
            if GAP in block:
                st["gaps"] += block.count(GAP)
            # Carry what may hold the start of a message cut by this recv (a message is
            # ~200 bytes; nothing after the last match has been counted).
            st["carry"] = block[max(end, len(block) - 8192) :]
    results = []
    for st in state.values():
        complete = sum(1 for n in st["next"].values() if n == lines + 1)
        results.append(
            {
                "viewer": st["index"],
                "messages": st["messages"],
                "sessions": len(st["next"]),
                "complete_sessions": complete,
                "bad": st["bad"],
                "gaps": st["gaps"],
                "bytes": st["bytes"],
                "closed": st["closed"],
                "progress": {k.decode(): v - 1 for k, v in st["next"].items()},
            }
        )
        st["sock"].close()
    out.send(results)


# --- the server -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_server(
    label: str, containers: int, log_path: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTH_", "DOCKER_ENABLED", "DOCKER_LABEL", "TLS_"))
    }
    env.update(
        PYTHONUNBUFFERED="1",
        DOCKER_ENABLED="true",
        DOCKER_LABEL=label,
        AUTH_TOKENS=TOKEN,
        MAX_SESSIONS=str(containers + 10),
        WS_PING_INTERVAL="0",
        # The viewers share two cores with dockerd and 100 containers: a big per-viewer
        # buffer rides out their scheduling stalls, so a drop would be pcclog's fault.
        CONNECTION_BUFFER=str(64 << 20),
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pcclog_server.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pcclog exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc, port
        except Exception:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("pcclog did not become ready")
        time.sleep(0.1)


def _dockerd() -> psutil.Process | None:
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "dockerd":
            return p
    return None


# --- the run ---------------------------------------------------------------------------------


def run(containers: int, rate: int, duration: float, viewers: int) -> dict[str, Any]:
    import docker

    client = docker.from_env(timeout=120)
    label = f"pcclog.bench.{uuid.uuid4().hex[:10]}"
    burst = max(1, rate // 10)
    lines = burst * max(1, round(duration * 10))
    script = (
        "while [ ! -e /gate/open ]; do sleep 0.2; done; "
        f"i=1; while [ $i -le {lines} ]; do seq $i $((i+{burst - 1})); "
        f"i=$((i+{burst})); sleep 0.1; done"
    )
    tmp = Path(tempfile.mkdtemp(prefix="pcclog-docker-bench-"))
    gate = tmp / "gate"
    gate.mkdir()
    gate.chmod(0o755)
    tmp.chmod(0o755)
    log_path = tmp / "server.log"
    proc, port = _start_server(label, containers, log_path)
    server = psutil.Process(proc.pid)
    dockerd = _dockerd()
    ctx = mp.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    parent_end, child_end = ctx.Pipe(duplex=False)
    viewer_proc = ctx.Process(
        target=_viewers, args=(port, viewers, lines, ready, stop, child_end), daemon=True
    )
    viewer_proc.start()
    if not ready.wait(30):
        raise RuntimeError("viewers did not connect")
    created: list[Any] = []
    lock = threading.Lock()
    peak_rss = server.memory_info().rss
    samples: list[tuple[float, float, float]] = []  # (time, pcclog cpu s, dockerd cpu s)

    def cpu(p: psutil.Process | None) -> float:
        if p is None:
            return 0.0
        t = p.cpu_times()
        return float(t.user + t.system)

    def start_one(i: int) -> None:
        c = client.containers.run(
            IMAGE,
            ["sh", "-c", script],
            detach=True,
            network_mode="none",
            volumes={str(gate): {"bind": "/gate", "mode": "ro"}},
            labels={label: f"bench-{i:03d}", "pcclog.test": "1"},
        )
        with lock:
            created.append(c)

    result: dict[str, Any] = {
        "containers": containers,
        "rate_per_container": rate,
        "duration_s": duration,
        "lines_per_container": lines,
        "viewers": viewers,
    }
    try:
        t0 = time.monotonic()
        cpu0, dcpu0 = cpu(server), cpu(dockerd)
        viewer_ps = psutil.Process(viewer_proc.pid)
        vcpu0 = cpu(viewer_ps)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(start_one, range(containers)))
        result["start_all_s"] = round(time.monotonic() - t0, 1)
        _wait_following(port, containers)
        all_started = time.monotonic()
        cpu_start, dcpu_start = cpu(server), cpu(dockerd)
        (gate / "open").touch()
        # Sample while they run; the steady window ends when the first container exits.
        steady_end: tuple[float, float, float] | None = None
        deadline = all_started + duration * 1.5 + 60
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            samples.append((now, cpu(server), cpu(dockerd)))
            peak_rss = max(peak_rss, server.memory_info().rss)
            states = [c.attrs["State"]["Status"] for c in created if _reload(c)]
            if steady_end is None and any(s != "running" for s in states):
                steady_end = samples[-1]
            if all(s != "running" for s in states):
                break
            if now > deadline:
                result["error"] = "containers did not finish in time"
                break
        done = time.monotonic()
        if steady_end is None:
            steady_end = samples[-1]
        # Let the viewers drain what is still in flight: until the server's
        # count of entries queued to viewers stops moving (or 60 s).
        result["drain_s"] = _drain(port, deadline=time.monotonic() + 60)
        viewer_cpu = cpu(viewer_ps) - vcpu0
        stop.set()
        viewer_results = parent_end.recv() if parent_end.poll(30) else []
        end_cpu, end_dcpu = cpu(server), cpu(dockerd)
        result["viewers_cpu_s_total"] = round(viewer_cpu, 2)
        steady_wall = steady_end[0] - all_started
        total_lines = lines * containers
        result.update(
            {
                "total_lines": total_lines,
                "lines_per_s_nominal": containers * rate,
                "lines_per_s_mean": round(total_lines / max(done - all_started, 1e-9)),
                "steady_window_s": round(steady_wall, 1),
                "pcclog_cpu_cores_steady": round(
                    (steady_end[1] - cpu_start) / max(steady_wall, 1e-9), 3
                ),
                "pcclog_cpu_cores_whole_run": round((end_cpu - cpu0) / (done - t0), 3),
                "pcclog_cpu_s_total": round(end_cpu - cpu0, 2),
                "pcclog_cpu_us_per_line": round((end_cpu - cpu_start) / total_lines * 1e6, 1),
                "pcclog_peak_rss_mib": round(peak_rss / 2**20, 1),
                "dockerd_cpu_cores_steady": round(
                    (steady_end[2] - dcpu_start) / max(steady_wall, 1e-9), 3
                ),
                "dockerd_cpu_s_total": round(end_dcpu - dcpu0, 2),
            }
        )
        delivered = [v["messages"] for v in viewer_results]
        result["viewer_messages"] = delivered
        result["every_line_delivered"] = bool(viewer_results) and all(
            v["messages"] == total_lines
            and v["complete_sessions"] == containers
            and v["bad"] == 0
            and v["gaps"] == 0
            for v in viewer_results
        )
        result["viewer_problems"] = [
            {k: v[k] for k in ("viewer", "messages", "complete_sessions", "bad", "gaps", "closed")}
            for v in viewer_results
            if v["messages"] != total_lines or v["bad"] or v["gaps"]
        ]
        result["pass"] = result["every_line_delivered"] and result["pcclog_cpu_cores_steady"] < 0.5
        return result
    finally:
        stop.set()
        viewer_proc.join(5)
        if viewer_proc.is_alive():
            viewer_proc.kill()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(_remove, created))
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        result["server_log"] = str(log_path)
        client.close()


def _wait_following(port: int, containers: int) -> None:
    """Until pcclog has a running session for every container (``GET /api/sessions``)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                body = json.loads(r.read())
        except Exception:
            body = None
        sessions = body.get("sessions", body) if isinstance(body, dict) else body
        if isinstance(sessions, list):
            running = [s for s in sessions if isinstance(s, dict) and s.get("status") == "running"]
            if len(running) >= containers:
                time.sleep(1.0)  # the follow streams are opened after "running"
                return
        time.sleep(0.5)
    raise RuntimeError("pcclog did not follow every container in time")


def _drain(port: int, *, deadline: float) -> float:
    """Seconds until ``pcclog_messages_out_total`` and the queued bytes hold
    still for 2 s: every line read from the engine has reached the viewers."""
    start = time.monotonic()
    last = (-1.0, -1.0)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        now = (metric(port, "pcclog_messages_out_total"), metric(port, "pcclog_queued_bytes"))
        if now != last:
            last, still_since = now, time.monotonic()
        elif now[1] == 0 and time.monotonic() - still_since >= 2.0:
            break
        time.sleep(0.2)
    return round(time.monotonic() - start, 1)


def _reload(container: Any) -> bool:
    try:
        container.reload()
        return True
    except Exception:
        return False


def _remove(container: Any) -> None:
    try:
        container.remove(force=True)
    except Exception:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=100)
    parser.add_argument("--rate", type=int, default=200, help="lines per second per container")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of output")
    parser.add_argument("--viewers", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="10 containers x 5 s")
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args()
    if args.quick:
        args.containers, args.duration = 10, 5.0
    result = run(args.containers, args.rate, args.duration, args.viewers)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())

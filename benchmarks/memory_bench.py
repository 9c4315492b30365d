"""S6: pcclog's memory under attack, against the bound it promises (SPEC §6).

``python -m benchmarks.memory_bench [--quick]``, and part of ``make bench``.

The server (the real ``pcclog serve``) is started with a known budget and
its history filled (many sessions of 2 KiB lines). Then, for ``attack_s``
seconds, two view-only clients that never read attack it, each under the
rate limit:

* **replay**: subscribe to ``*`` with ``since: 0`` twice (the whole
  history, many times the connection's buffer);
* **flood**: ``list``, ``subscribe`` since 0, pings and bad messages.

Meanwhile a legitimate producer writes 50 lines/s to its own session and a
legitimate viewer reads it. The row gives the server's RSS growth during the
attack next to what the formula allows for the four connections open
(``connections x (CONNECTION_BUFFER + MAX_MESSAGE_SIZE + 320 KiB)``; history
is already in the base), the core's own count of queued bytes, and whether
the legitimate viewer got every line at full rate (lines, p99 latency).
RSS is sampled every 20 ms, so the growth is a peak, allocator noise
included; ``queued_peak_mb`` is the core's exact count at the same moments.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from typing import Any

from .loadgen import client_frame
from .targets import TOKEN, all_targets, metric, raw_websocket, running

MiB = 1024 * 1024
CONNECTION_BUFFER = 1 * MiB
MAX_MESSAGE_SIZE = 65_536
MEMORY_BUDGET = 512 * MiB
PER_CONNECTION = CONNECTION_BUFFER + MAX_MESSAGE_SIZE + 320 * 1024


def _connect(port: int, *, rcvbuf: int | None = None) -> socket.socket:
    return raw_websocket(port, path=f"/?token={TOKEN}", rcvbuf=rcvbuf)


def _send(sock: socket.socket, message: dict[str, Any] | str) -> bool:
    """One text frame, without blocking: False when the server is not
    reading this client (its socket buffer is full)."""
    text = message if isinstance(message, str) else json.dumps(message)
    frame = client_frame(0x1, text.encode())
    try:
        sock.setblocking(False)
        sent = sock.send(frame)
    except (BlockingIOError, InterruptedError):
        return False
    finally:
        sock.setblocking(True)
    if sent < len(frame):
        sock.sendall(frame[sent:])
    return True


def _frames(sock: socket.socket, buf: bytearray) -> list[dict[str, Any]]:
    """Read what is there and return the complete server frames' JSON."""
    buf += sock.recv(1 << 20)
    out = []
    while len(buf) >= 2:
        n = buf[1] & 0x7F
        head = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, head = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, head = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < head + n:
            break
        if buf[0] & 0x0F == 0x1:
            out.append(json.loads(bytes(buf[head : head + n])))
        del buf[: head + n]
    return out


def run_memory_bench(quick: bool = False) -> dict[str, Any]:
    sessions, lines, attack_s = (5, 500, 3.0) if quick else (40, 3000, 10.0)
    target = next(t for t in all_targets() if t.name == "pcclog")
    env = {
        "CONNECTION_BUFFER": str(CONNECTION_BUFFER),
        "MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE),
        "MEMORY_BUDGET": str(MEMORY_BUDGET),
        "HISTORY_LINES": str(lines),
        "HISTORY_BYTES": str(16 * MiB),
    }
    with running(target, "s6", env=env) as server:
        port = server.port
        producer = _connect(port)
        line = "x" * 2000
        for s in range(sessions):
            batch = b"".join(
                client_frame(
                    0x1,
                    json.dumps({"type": "log", "sessionId": f"hist-{s}", "message": line}).encode(),
                )
                for _ in range(lines)
            )
            producer.sendall(batch)
        _send(producer, {"type": "ping"})
        buf = bytearray()
        deadline = time.monotonic() + 120
        while not any(m.get("type") == "pong" for m in _frames(producer, buf)):
            if time.monotonic() > deadline:
                raise TimeoutError("history fill not acknowledged")
        history = metric(port, "pcclog_history_bytes")
        base_rss = server.rss()

        viewer = _connect(port)
        _send(viewer, {"type": "subscribe", "sessionId": "legit", "tail": 0})
        replay = _connect(port, rcvbuf=4096)
        flood = _connect(port, rcvbuf=4096)
        for _ in range(2):
            _send(replay, {"type": "subscribe", "sessionId": "*", "since": 0})
        stop = threading.Event()
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        received: list[int] = []

        def read_viewer() -> None:
            vbuf = bytearray()
            viewer.settimeout(0.2)
            while not stop.is_set() or len(received) < len(sent_at):
                try:
                    got = _frames(viewer, vbuf)
                except TimeoutError:
                    if stop.is_set():
                        return
                    continue
                for m in got:
                    if m.get("type") == "log" and m.get("sessionId") == "legit":
                        n = int(m["message"])
                        received.append(n)
                        latencies.append(time.monotonic() - sent_at[n])

        reader = threading.Thread(target=read_viewer, daemon=True)
        reader.start()
        peak_rss = base_rss
        peak_queued = 0.0
        flood_sent = flood_refused = 0
        start = time.monotonic()
        n = 0
        kinds = [
            {"type": "list"},
            {"type": "ping"},
            {"type": "subscribe", "sessionId": "hist-0", "since": 0},
            {"type": "list"},
        ]
        while (elapsed := time.monotonic() - start) < attack_s:
            # 50 legit lines/s; 100 attack messages/s (under RATE_LIMIT 200).
            while n < int(elapsed * 50) + 1:
                n += 1
                sent_at[n] = time.monotonic()
                _send(producer, {"type": "log", "sessionId": "legit", "message": str(n)})
            for k in range(2):
                ok = _send(flood, kinds[(n + k) % len(kinds)] if n % 25 else "{bad")
                flood_sent += ok
                flood_refused += not ok
            peak_rss = max(peak_rss, server.rss())
            peak_queued = max(peak_queued, metric(port, "pcclog_queued_bytes"))
            time.sleep(0.02)
        stop.set()
        reader.join(timeout=10)
        growth = peak_rss - base_rss
        # Every connection open during the attack: producer, viewer, attackers.
        allowed = 4 * PER_CONNECTION
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else None
        for sock in (producer, viewer, replay, flood):
            sock.close()
        return {
            "scenario": "S6",
            "history_mb": round(history / MiB, 1),
            "attack_s": attack_s,
            "rss_base_mb": round(base_rss / MiB, 1),
            "rss_growth_mb": round(growth / MiB, 1),
            "formula_mb": round(allowed / MiB, 1),
            "growth_over_formula": round(growth / allowed, 2),
            "queued_peak_mb": round(peak_queued / MiB, 2),
            "flood_msgs_taken": flood_sent,
            "flood_msgs_refused_by_tcp": flood_refused,
            "legit_sent": n,
            "legit_received": len(received),
            "legit_in_order": received == list(range(1, n + 1)),
            "legit_p99_ms": None if p99 is None else round(1000 * p99, 1),
        }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory_bench")
    ap.add_argument("--quick", action="store_true")
    row = run_memory_bench(quick=ap.parse_args().quick)
    for key, value in row.items():
        print(f"{key:>28}  {value}")


if __name__ == "__main__":
    main()

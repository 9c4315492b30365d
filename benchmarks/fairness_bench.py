"""S7: fair reading, a viewer's ping latency while two producers flood.

``python -m benchmarks.fairness_bench [--quick]``, and part of ``make bench``.

The real ``pcclog serve`` is started; a viewer connects and pings it
(one ping in flight, a few milliseconds apart) for ``phase_s`` seconds with
nothing else running: the **baseline**. Then two producers flood it with
small log entries as fast as the server takes them (each from its own
thread, through a blocking ``sendall`` of pre-built batches), and the same
viewer pings again for ``phase_s`` seconds: the **flood** phase. The row
gives both phases' ping p50/p99/max, how many entries the producers got in
(per second) and the target: p99 under flood at most 20 ms. Both phases are
the same run, the same process and the same connection; the producers
are separate processes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import statistics
import threading
import time
from typing import Any

from .loadgen import client_frame
from .memory_bench import _connect, _frames
from .targets import all_targets, running

TARGET_P99_MS = 20.0
_PING = client_frame(0x1, b'{"type":"ping"}')


def _pings(viewer: socket.socket, seconds: float) -> list[float]:
    """Ping for ``seconds``, one in flight: the round trips, in seconds.
    A lost pong (10 s) counts as 10 s rather than stopping the run."""
    rtts: list[float] = []
    buf = bytearray()
    viewer.settimeout(10.0)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sent = time.monotonic()
        viewer.sendall(_PING)
        try:
            while not any(m.get("type") == "pong" for m in _frames(viewer, buf)):
                pass
        except TimeoutError:
            rtts.append(10.0)
            break
        rtts.append(time.monotonic() - sent)
        time.sleep(0.002)
    return rtts


def _stats(rtts: list[float]) -> dict[str, float | None]:
    if not rtts:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    q = statistics.quantiles(rtts, n=100, method="inclusive") if len(rtts) >= 2 else [rtts[0]] * 99
    return {
        "p50_ms": round(1000 * q[49], 2),
        "p99_ms": round(1000 * q[98], 2),
        "max_ms": round(1000 * max(rtts), 2),
    }


def _flood(port: int, name: str, stop: Any, count: Any) -> None:
    """One flooding producer, in its own process (the viewer's timing must
    not wait for this one's GIL): batches of 500 small entries, blocking."""
    sock = _connect(port)

    # Drain whatever the server says (errors, pongs) so it never pauses us
    # for our own backlog. Blocking reads: a timeout on this socket would
    # apply to the flood's ``sendall`` too. Closing the socket ends it.
    def drain() -> None:
        while True:
            try:
                if not sock.recv(1 << 16):
                    return
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    batch_n = 500
    batch = b"".join(
        client_frame(
            0x1,
            json.dumps({"type": "log", "sessionId": name, "message": f"flood line {k}"}).encode(),
        )
        for k in range(batch_n)
    )
    try:
        while not stop.is_set():
            sock.sendall(batch)
            with count.get_lock():
                count.value += batch_n
    except OSError:
        pass
    finally:
        sock.close()


def run_fairness_bench(quick: bool = False) -> dict[str, Any]:
    phase_s = 2.0 if quick else 6.0
    target = next(t for t in all_targets() if t.name == "pcclog")
    env = {"HISTORY_LINES": "2000"}
    with running(target, "s7", env=env) as server:
        port = server.port
        viewer = _connect(port)
        _pings(viewer, 0.3)  # warm up
        baseline = _pings(viewer, phase_s)
        ctx = multiprocessing.get_context("spawn")
        stop = ctx.Event()
        counts = [ctx.Value("q", 0) for _ in range(2)]
        floods = [
            ctx.Process(target=_flood, args=(port, f"flood-{i}", stop, counts[i]), daemon=True)
            for i in range(2)
        ]
        for proc in floods:
            proc.start()
        try:
            time.sleep(1.0)  # both floods connected and at full rate
            before = sum(c.value for c in counts)
            start = time.monotonic()
            flooded = _pings(viewer, phase_s)
            elapsed = time.monotonic() - start
            taken = sum(c.value for c in counts) - before
        finally:
            stop.set()
            for proc in floods:
                proc.join(timeout=10)
                if proc.is_alive():
                    proc.kill()
            viewer.close()
    base, flood = _stats(baseline), _stats(flooded)
    p99 = flood["p99_ms"]
    return {
        "scenario": "S7",
        "phase_s": phase_s,
        "baseline_pings": len(baseline),
        "baseline_p50_ms": base["p50_ms"],
        "baseline_p99_ms": base["p99_ms"],
        "flood_pings": len(flooded),
        "flood_p50_ms": flood["p50_ms"],
        "flood_p99_ms": p99,
        "flood_max_ms": flood["max_ms"],
        "flood_entries_per_s": round(taken / elapsed) if elapsed > 0 else 0,
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": p99 is not None and p99 <= TARGET_P99_MS,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fairness_bench")
    ap.add_argument("--quick", action="store_true")
    row = run_fairness_bench(quick=ap.parse_args().quick)
    for key, value in row.items():
        print(f"{key:>22}  {value}")


if __name__ == "__main__":
    main()

"""Benchmark scenarios: each takes a :class:`~benchmarks.targets.Target` and returns a row.

Every scenario starts its own fresh server (so one scenario's heap, sessions and sequence
numbers never leak into the next), drives it with :class:`~benchmarks.loadgen.LoadGen` on
the client core, and stops it. A row is a flat ``dict`` of numbers and short strings;
``error`` is set when the scenario could not be measured.

S1 fan-out throughput · S2 latency at a fixed rate · S3 idle connection density ·
S4 slow consumers. Sizes and durations are in :class:`Params`; ``Params.quick()`` shrinks
everything to about a second for smoke tests.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .loadgen import Conn, LoadGen, Role, State, cpu_seconds, percentiles
from .targets import RunningServer, Target, running

Row = dict[str, Any]
MB = 1024 * 1024


@dataclass(frozen=True)
class Params:
    msg_size: int = 150  # bytes of message text per log entry
    connect_timeout: float = 60.0
    # S1 fan-out throughput
    s1_viewers: tuple[int, ...] = (100, 1000)
    s1_warmup: float = 1.0
    s1_duration: float = 5.0
    s1_burst: int = 100  # messages per producer write
    s1_window_bursts: int = 4  # bursts in flight (sent, not yet at the slowest probe)
    # S2 latency
    s2_viewers: int = 100
    s2_rate: float = 500.0  # messages per second from the producer
    s2_warmup: float = 1.0
    s2_duration: float = 5.0
    # S3 idle density
    s3_conns: int = 10_000
    s3_ping_interval_ms: int = 2000
    s3_rounds: int = 3
    s3_connect_timeout: float = 120.0
    # S4 slow consumers
    s4_viewers: int = 1000
    s4_slow: int = 10
    s4_rate: float = 50.0  # well under every peer's S1 capacity: this is not a saturation test
    s4_msg_size: int = 1024  # so a stalled viewer's backlog shows in RSS within the run
    s4_duration: float = 60.0
    s4_sample_every: float = 5.0
    s4_slow_rcvbuf: int = 4096
    #: time.monotonic() by which the whole run must end; connect timeouts are clamped to it
    deadline: float = math.inf

    @classmethod
    def quick(cls) -> Params:
        return cls(
            connect_timeout=20.0,
            s1_viewers=(10, 50),
            s1_warmup=0.2,
            s1_duration=1.0,
            s2_viewers=10,
            s2_rate=200.0,
            s2_warmup=0.2,
            s2_duration=1.0,
            s3_conns=200,
            s3_ping_interval_ms=300,
            s3_rounds=2,
            s3_connect_timeout=20.0,
            s4_viewers=50,
            s4_slow=2,
            s4_duration=1.5,
            s4_sample_every=0.5,
        )

    def with_(self, **changes: Any) -> Params:
        return replace(self, **changes)


@dataclass(frozen=True)
class Scenario:
    key: str  # e.g. "S1-1000"
    title: str
    run: Callable[[Target, Params], Row]
    estimate: Callable[[Params], float]  # seconds, for the driver's time budget


def _timeout(p: Params, seconds: float) -> float:
    """``seconds``, or less if the run's deadline is nearer."""
    return max(1.0, min(seconds, p.deadline - time.monotonic()))


def spread(n: int, k: int, avoid: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """``k`` indexes spread evenly over ``range(n)`` (first and last included), skipping
    ``avoid``."""
    k = min(k, n - len(avoid))
    if k <= 0:
        return []
    out: list[int] = []
    taken = set(avoid)
    for j in range(k):
        i = round(j * (n - 1) / max(1, k - 1))
        while i in taken:
            i = (i + 1) % n
        taken.add(i)
        out.append(i)
    return out


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine have used (``/proc/stat``), seconds."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:9]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Server, client and everyone else's CPU, and wall time, between two points.

    ``other_cpu_pct`` is the machine's busy time not used by the server or this process:
    on a shared machine it says how much the numbers were disturbed.
    """

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.t0 = time.monotonic()
        self.server0 = server.cpu_seconds()
        self.client0 = cpu_seconds()
        self.busy0 = machine_busy_seconds()

    def result(self) -> Row:
        wall = time.monotonic() - self.t0
        server = self.server.cpu_seconds() - self.server0
        client = cpu_seconds() - self.client0
        other = machine_busy_seconds() - self.busy0 - server - client
        return {
            "wall_s": round(wall, 3),
            "server_cpu_pct": round(100 * server / wall, 1),
            "client_cpu_pct": round(100 * client / wall, 1),
            "other_cpu_pct": round(max(0.0, 100 * other / wall), 1),
        }


def _open(
    lg: LoadGen,
    n: int,
    p: Params,
    probes: list[int],
    slow: list[int] | None = None,
    slow_rcvbuf: int = 0,
    sinks: bool = False,
) -> list[Conn]:
    timeout = _timeout(p, p.connect_timeout)
    _producer(lg, timeout)
    viewers = lg.add_viewers(
        n, probes=probes, rcvbuf=slow_rcvbuf, rcvbuf_for=slow or (), sinks=sinks
    )
    got = lg.wait_subscribed(viewers, timeout)
    if got < n:
        raise RuntimeError(f"only {got}/{n} viewers subscribed within {timeout:.0f} s{_why(lg)}")
    lg.run_for(0.2)  # let replayed history (if the server replays any) arrive
    lg.mark_baseline(viewers)
    return viewers


def _producer(lg: LoadGen, timeout: float) -> None:
    """Connect the producer and create the session before any viewer subscribes."""
    lg.add_producer()
    if not lg.create_session(timeout):
        raise RuntimeError(f"producer could not connect and create the session{_why(lg)}")


def _why(lg: LoadGen) -> str:
    for c in lg.all:
        if c.errors:
            return f" ({c.errors[0]})"
    return ""


def _probe_errors(viewers: list[Conn]) -> Row:
    probes = [c for c in viewers if c.role == Role.PROBE]
    errors = [e for c in probes for e in c.errors]
    row: Row = {"seq_errors": sum(c.seq_errors for c in probes)}
    if errors:
        row["note"] = errors[0]
    return row


def _paced(lg: LoadGen, rate: float, size: int) -> Callable[[float], float]:
    """A tick that sends one message every ``1/rate`` s on an absolute schedule."""
    interval = 1.0 / rate
    state = {"next": time.monotonic()}

    def tick(now: float) -> float:
        nxt = state["next"]
        while nxt <= now:
            if not lg.send_logs(1, size):
                break  # producer's socket is full: the server is not reading
            nxt += interval
        state["next"] = nxt
        return max(0.0, nxt - now)

    return tick


def _drain(lg: LoadGen, viewers: list[Conn], timeout: float) -> int:
    """Pump until every open viewer has every sent log (or timeout); return viewers that
    are still missing some. A sink is complete when it has as many bytes as a complete
    probe (all viewers of the session receive the same stream)."""

    def missing() -> int:
        sent = lg.sent
        done_probes = [c.nbytes for c in viewers if c.role == Role.PROBE and c.logs >= sent]
        ref = min(done_probes) if done_probes else None
        n = 0
        for c in viewers:
            if c.state != State.OPEN:
                continue
            if c.role == Role.SINK:
                n += ref is None or c.nbytes < ref
            elif c.role == Role.PROBE:
                n += c.logs < sent
            else:
                n += c.msgs - c.base < sent
        return n

    lg.run_until(lambda: missing() == 0, timeout, step=0.05)
    return missing()


# -- S1 -----------------------------------------------------------------------------------


def s1_fanout(target: Target, p: Params, viewers: int) -> Row:
    with running(target, f"s1-{viewers}") as server, LoadGen(server.port, server.token) as lg:
        probe_idx = spread(viewers, min(3, viewers))
        vs = _open(lg, viewers, p, probe_idx, sinks=True)
        probes = [c for c in vs if c.role == Role.PROBE]
        window = p.s1_burst * p.s1_window_bursts

        def tick(now: float) -> float:
            # Keep at most `window` messages between the producer and the slowest probe.
            while lg.sent - min(c.logs for c in probes) < window:
                if not lg.send_logs(p.s1_burst, p.msg_size):
                    break
            return 0.05

        lg.run_for(p.s1_warmup, tick)
        bytes0 = sum(c.nbytes for c in vs)
        probe0 = [(c.nbytes, c.msgs) for c in probes]
        sent0 = lg.sent
        meter = Meter(server)
        lg.recording = True
        lg.run_for(p.s1_duration, tick)
        lg.recording = False
        bytes1 = sum(c.nbytes for c in vs)
        probe_bytes = sum(c.nbytes - b for c, (b, _) in zip(probes, probe0, strict=True))
        probe_msgs = sum(c.msgs - m for c, (_, m) in zip(probes, probe0, strict=True))
        sent1 = lg.sent
        row: Row = {"viewers": viewers, **meter.result()}
        wall = row["wall_s"]
        # Sinks count bytes; the probes tell how many bytes a message took in this window.
        per_msg = probe_bytes / probe_msgs if probe_msgs else float("inf")
        row["deliveries_per_s"] = round((bytes1 - bytes0) / per_msg / wall)
        row["produced_per_s"] = round((sent1 - sent0) / wall)
        row["frame_bytes"] = round(per_msg, 1)
        row.update(percentiles([x for c in probes for x in c.latencies]))
        row["incomplete_viewers"] = _drain(lg, vs, 10.0)
        row.update(_probe_errors(vs))
        return row


# -- S2 -----------------------------------------------------------------------------------


def s2_latency(target: Target, p: Params) -> Row:
    with running(target, "s2") as server, LoadGen(server.port, server.token) as lg:
        n = p.s2_viewers
        vs = _open(lg, n, p, spread(n, max(1, n // 10)))
        probes = [c for c in vs if c.role == Role.PROBE]
        tick = _paced(lg, p.s2_rate, p.msg_size)
        lg.run_for(p.s2_warmup, tick)
        meter = Meter(server)
        lg.recording = True
        lg.run_for(p.s2_duration, tick)
        lg.recording = False
        row: Row = {"viewers": n, "rate": p.s2_rate, **meter.result()}
        samples = [x for c in probes for x in c.latencies]
        row.update(percentiles(samples))
        row["samples"] = len(samples)
        row["incomplete_viewers"] = _drain(lg, vs, 5.0)
        row.update(_probe_errors(vs))
        return row


# -- S3 -----------------------------------------------------------------------------------


def s3_idle(target: Target, p: Params) -> Row:
    interval = str(p.s3_ping_interval_ms)
    env = {"WS_PING_INTERVAL": interval, "WS_PING_TIMEOUT": interval}
    with running(target, "s3", env) as server, LoadGen(server.port, server.token) as lg:
        n = p.s3_conns
        _producer(lg, _timeout(p, p.connect_timeout))
        lg.run_for(0.5)
        rss0 = server.rss()
        t0 = time.monotonic()
        vs = lg.add_viewers(n, probes=spread(n, 3))
        # Leave time for the measured window (and S4 after it) if the deadline is near.
        window = p.s3_rounds * p.s3_ping_interval_ms / 1000
        got = lg.wait_subscribed(vs, _timeout(p, p.s3_connect_timeout) - window)
        connect_s = time.monotonic() - t0
        if got < n:
            raise RuntimeError(f"only {got}/{n} subscribed in {connect_s:.0f} s{_why(lg)}")
        lg.run_for(1.0)  # settle
        rss1 = server.rss()
        pings0 = sum(c.pings for c in vs)
        meter = Meter(server)
        server_cpu0 = server.cpu_seconds()
        lg.run_for(p.s3_rounds * p.s3_ping_interval_ms / 1000)
        server_cpu = server.cpu_seconds() - server_cpu0
        rounds = (sum(c.pings for c in vs) - pings0) / n
        open_now = sum(1 for c in vs if c.state == State.OPEN)
        row: Row = {
            "conns": n,
            "connect_s": round(connect_s, 2),
            "conns_per_s": round(n / connect_s),
            "connect_retries": sum(c.attempts - 1 for c in vs),
            "rss_before_mb": round(rss0 / MB, 1),
            "rss_after_mb": round(rss1 / MB, 1),
            "kib_per_conn": round((rss1 - rss0) / n / 1024, 2),
            "ping_rounds": round(rounds, 2),
            "cpu_ms_per_round": round(1000 * server_cpu / rounds, 2) if rounds else None,
            "us_per_ping": round(1e6 * server_cpu / (rounds * n), 2) if rounds else None,
            "still_open": open_now,
            **meter.result(),
        }
        return row


# -- S4 -----------------------------------------------------------------------------------


def s4_slow(target: Target, p: Params) -> Row:
    with running(target, "s4") as server, LoadGen(server.port, server.token) as lg:
        n = p.s4_viewers
        slow_idx = spread(n, p.s4_slow, avoid={0, n - 1})
        probe_idx = spread(n, max(1, min(10, n // 10)), avoid=set(slow_idx))
        vs = _open(lg, n, p, probe_idx, slow_idx, p.s4_slow_rcvbuf)
        slow = [vs[i] for i in slow_idx]
        fast = [c for i, c in enumerate(vs) if i not in set(slow_idx)]
        probes = [c for c in fast if c.role == Role.PROBE]
        lg.stall(slow)
        tick = _paced(lg, p.s4_rate, p.s4_msg_size)
        series: list[float] = [round(server.rss() / MB, 1)]
        meter = Meter(server)
        lg.recording = True
        end = time.monotonic() + p.s4_duration
        while (left := end - time.monotonic()) > 0:
            lg.run_for(min(p.s4_sample_every, left), tick)
            series.append(round(server.rss() / MB, 1))
        lg.recording = False
        row: Row = {
            "viewers": n,
            "slow": len(slow),
            "rate": p.s4_rate,
            "msg_bytes": p.s4_msg_size,
            **meter.result(),
        }
        row.update(
            {
                f"fast_{k}": v
                for k, v in percentiles([x for c in probes for x in c.latencies]).items()
            }
        )
        row["rss_start_mb"] = series[0]
        row["rss_max_mb"] = max(series)
        row["rss_end_mb"] = series[-1]
        row["rss_growth_mb"] = round(max(series) - series[0], 1)
        row["rss_series_mb"] = series
        row["fast_incomplete"] = _drain(lg, fast, 5.0)
        # Let the stalled viewers read again: did the server keep, drop or close them?
        lg.resume(slow)
        lg.run_for(2.0 if p.s4_duration >= 10 else 0.5)
        row["slow_closed"] = sum(1 for c in slow if c.state != State.OPEN)
        row["slow_got_avg"] = round(sum(c.msgs - c.base for c in slow) / max(1, len(slow)))
        row["sent"] = lg.sent
        row.update(_probe_errors(vs))
        return row


# -- the list the driver runs -------------------------------------------------------------


def all_scenarios(p: Params) -> list[Scenario]:
    out = [
        Scenario(
            key=f"S1-{v}",
            title=f"S1 fan-out throughput, 1 session, {v} viewers",
            run=lambda t, q, v=v: s1_fanout(t, q, v),
            estimate=lambda q: q.s1_warmup + q.s1_duration + 3,
        )
        for v in p.s1_viewers
    ]
    out += [
        Scenario(
            key="S2",
            title="S2 latency, fixed producer rate",
            run=s2_latency,
            estimate=lambda q: q.s2_warmup + q.s2_duration + 3,
        ),
        Scenario(
            key="S3",
            title="S3 idle density, keepalive on",
            run=s3_idle,
            estimate=lambda q: q.s3_conns / 500 + q.s3_rounds * q.s3_ping_interval_ms / 1000 + 5,
        ),
        Scenario(
            key="S4",
            title="S4 slow consumers",
            run=s4_slow,
            estimate=lambda q: q.s4_duration + 6,
        ),
    ]
    return out

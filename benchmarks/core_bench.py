"""Core-only fan-out benchmark: the sans-IO hub with no sockets.

One producer ``Client`` publishes ``log`` messages (a 150-byte ``message``)
to one session watched by N framed subscriber ``Client``s. Every 100
messages the benchmark does what a runtime does after a read: it takes the
hub's ready list and drains each client (``data_to_send``), one buffer per
client per batch.

Reported per subscriber count:

* ``messages_per_s`` — producer messages handled (parse, validate, stamp,
  encode and frame once, fan out);
* ``frames_per_s`` — deliveries: frames queued to subscribers (the hub's
  ``deliveries`` counter), i.e. ``messages_per_s * subscribers``;
* ``bytes_per_s`` — bytes handed to the runtime by ``data_to_send``.

Rates are per second of the benchmark thread's CPU time (``thread_time``):
one core's worth of work, not disturbed by other load on the machine.
``cpu_share`` (CPU time / wall time) shows how much that load interfered.
The garbage collector stays on, as in a real runtime.

Run ``python -m benchmarks.core_bench [seconds]``; one core, no I/O, so the
numbers bound what any runtime on top can reach.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

from pcclog_core import Authenticator, Client, Hub, Limits

# An open hub: these tests are not about authentication.
OPEN = Authenticator(disabled=True)

__all__ = ["run_core_bench"]

SUBSCRIBER_COUNTS = (1, 100, 1_000)
BATCH = 100
MESSAGE_BYTES = 150
SESSION = "bench"


def _producer_message() -> str:
    return json.dumps(
        {
            "type": "log",
            "sessionId": SESSION,
            "level": "info",
            "message": "x" * MESSAGE_BYTES,
        }
    )


def _bench_one(subscribers: int, duration: float) -> dict[str, Any]:
    hub = Hub(Limits(), authenticator=OPEN)
    now = time.monotonic()
    wall = time.time()
    producer = Client(hub, now=now, wall=wall, framed=True)
    viewers = [Client(hub, now=now, wall=wall, framed=True) for _ in range(subscribers)]
    # Create the session first so subscribers attach directly.
    producer.receive_message(_producer_message(), now=now, wall=wall)
    subscribe = json.dumps({"type": "subscribe", "sessionId": SESSION, "tail": 0})
    for viewer in viewers:
        viewer.receive_message(subscribe, now=now, wall=wall)
    for client in hub.take_ready():
        client.bytes_sent(len(client.data_to_send()))
    assert len(hub.sessions[SESSION].subscribers) == subscribers

    text = _producer_message()
    receive = producer.receive_message
    take_ready = hub.take_ready
    counters = hub.counters
    messages = 0
    bytes_out = 0
    deliveries_before = counters.deliveries
    gc.collect()
    start = time.perf_counter()
    cpu_start = time.thread_time()
    elapsed = 0.0
    while elapsed < duration:
        now = time.monotonic()
        wall = time.time()
        for _ in range(BATCH):
            receive(text, now=now, wall=wall)
        for client in take_ready():
            size = len(client.data_to_send())
            client.bytes_sent(size)
            bytes_out += size
        messages += BATCH
        elapsed = time.perf_counter() - start
    cpu = time.thread_time() - cpu_start
    deliveries = counters.deliveries - deliveries_before
    assert deliveries == messages * subscribers, (deliveries, messages, subscribers)
    assert counters.slow_consumer_drops == 0
    assert hub.queued_bytes == 0
    # Rates are per second of this thread's CPU time ("on one core"), so a
    # busy machine does not understate them; ``cpu_share`` shows how much of
    # the wall-clock time the thread actually ran.
    return {
        "subscribers": subscribers,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "cpu_share": cpu / elapsed,
        "messages": messages,
        "frames": deliveries,
        "messages_per_s": messages / cpu,
        "frames_per_s": deliveries / cpu,
        "bytes_per_s": bytes_out / cpu,
        "frames_per_wall_s": deliveries / elapsed,
    }


def run_core_bench(duration: float = 2.0) -> list[dict[str, Any]]:
    """Run the benchmark for each subscriber count, ``duration`` seconds each."""
    return [_bench_one(n, duration) for n in SUBSCRIBER_COUNTS]


def _format(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'subscribers':>11}  {'messages in/s':>14}  {'frames queued/s':>16}  "
        f"{'MB out/s':>9}  {'cpu share':>9}  {'frames/wall s':>14}",
    ]
    for row in results:
        lines.append(
            f"{row['subscribers']:>11,}  {row['messages_per_s']:>14,.0f}  "
            f"{row['frames_per_s']:>16,.0f}  {row['bytes_per_s'] / 1e6:>9,.1f}  "
            f"{row['cpu_share']:>9.0%}  {row['frames_per_wall_s']:>14,.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    duration = float(args[0]) if args else 2.0
    print(f"pcclog core fan-out, {MESSAGE_BYTES}-byte messages, drained every {BATCH}")
    print(_format(run_core_bench(duration)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

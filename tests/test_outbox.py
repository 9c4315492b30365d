"""The outbox and the one pause rule (SPEC §6), at the core's level.

``Outbox`` accounting on its own; then a ``Connection`` driven in memory by
a wsproto client: a read full of requests is cut off once the replies pass
the budget and resumed by ``continue_reading`` after the runtime confirms
its writes, on the fast frame path and on wsproto's; the keepalive is
suspended while the pool (not the peer) stops the reading, and kept for a
peer that stops draining its own output. Time is a fake clock.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from wsproto import ConnectionType
from wsproto import WSConnection as WSClient
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from pcclog_core import (
    Authenticator,
    ConnectionState,
    Hub,
    Limits,
    Outbox,
    Pool,
    format_wall,
    parse_static_tokens,
)
from pcclog_core import Connection as CoreConnection

T0 = 1000.0
WALL = 1_700_000_000.0
STAMP = format_wall(WALL)


# --- Outbox on its own ------------------------------------------------------------


def test_held_counts_queued_and_in_flight_until_sent() -> None:
    pool = Pool(10_000)
    box = Outbox(100, pool)
    box.put(b"x" * 60)
    box.put_many([b"y" * 30, b"z" * 30], 60)
    assert box.held == 120 and box.queued == 120 and pool.queued == 120
    assert box.over_budget and box.room == -20
    chunks = box.take()
    assert b"".join(chunks) == b"x" * 60 + b"y" * 30 + b"z" * 30
    assert box.held == box.in_flight == 120 and box.queued == 0
    assert box.take() == []
    box.sent(50)
    assert box.held == box.in_flight == 70 and pool.queued == 70
    box.put(b"w" * 10)
    assert box.held == 80 and box.queued == 10
    box.sent(1_000)  # never more than was taken
    assert box.held == 10 and box.in_flight == 0 and pool.queued == 10
    box.sent(5)  # nothing in flight: nothing to confirm
    assert box.held == 10


def test_take_released_and_release_give_every_byte_back() -> None:
    pool = Pool(10_000)
    box = Outbox(100, pool)
    box.put(b"a" * 40)
    box.take()
    box.put(b"b" * 20)
    assert box.take_released() == [b"b" * 20]
    assert box.held == 40 and pool.queued == 40  # the earlier take is still in flight
    box.record_gap("s", 3, 4)
    box.record_gap("s", 3, 9)
    assert box.gaps == {"s": [3, 9]}
    box.release()
    assert box.held == 0 and pool.queued == 0 and box.chunks == [] and box.gaps == {}


def test_pool_is_over_on_history_plus_queued() -> None:
    pool = Pool(100)
    pool.history = 60
    pool.queued = 40
    assert not pool.over and pool.used == 100
    pool.queued = 41
    assert pool.over


# --- a Connection in memory ---------------------------------------------------------


class Wire:
    """A wsproto client and a pcclog Connection, with a runtime between
    them that writes only when told to (``flush``) and confirms each write."""

    def __init__(self, hub: Hub, *, token: str | None = None, now: float = T0) -> None:
        self.hub = hub
        self.now = now
        self.conn = CoreConnection(hub, now=now)
        self.ws = WSClient(ConnectionType.CLIENT)
        target = "/" if token is None else f"/?token={token}"
        self.conn.receive_data(
            self.ws.send(Request(host="localhost", target=target)), now=now, wall=WALL
        )
        self.received: list[dict[str, Any]] = []
        self.flush()
        assert self.accepted

    def send(self, *messages: dict[str, Any], fragmented: bool = False) -> None:
        """All ``messages`` in one read, as a client writing fast would."""
        data = b""
        for message in messages:
            text = json.dumps(message)
            if fragmented:  # wsproto's path: the fast path takes whole frames only
                half = len(text) // 2
                data += self.ws.send(TextMessage(data=text[:half], message_finished=False))
                data += self.ws.send(TextMessage(data=text[half:], message_finished=True))
            else:
                data += self.ws.send(TextMessage(data=text))
        self.conn.receive_data(data, now=self.now, wall=WALL)

    def flush(self) -> int:
        """The runtime writes everything queued and confirms it; the client
        reads it. Returns the bytes written."""
        data = self.conn.data_to_send()
        self.conn.bytes_sent(len(data))
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, AcceptConnection):
                self.accepted = True
            elif isinstance(event, TextMessage):
                self.received.append(json.loads(event.data))
            elif isinstance(event, CloseConnection):
                self.received.append({"type": "<close>", "code": event.code})
        return len(data)

    def resume(self) -> None:
        """What a runtime does once the core wants the input again."""
        if self.conn.wants_read:
            self.conn.continue_reading(now=self.now, wall=WALL)

    accepted = False


def _hub(**limits: Any) -> Hub:
    return Hub(Limits(**limits), Authenticator(static_tokens=parse_static_tokens("tok")))


@pytest.mark.parametrize("fragmented", [False, True])
def test_a_read_of_requests_stops_at_the_budget_and_resumes_after_the_write(
    fragmented: bool,
) -> None:
    hub = _hub(connection_buffer=2_000, rate_burst=10_000)
    for i in range(5):
        hub.publish_status(f"session-{i}", status="running", metadata={"n": "x" * 50}, now=T0)
    wire = Wire(hub, token="tok")
    requests = [{"type": "list"}, {"type": "ping"}] * 100
    wire.send(*requests, fragmented=fragmented)
    box = wire.conn.client.outbox  # type: ignore[union-attr]
    reply = len(box.chunks[-1]) if box.chunks else 0
    # The core stopped reading at the budget: one reply past it at most, and
    # the rest of the read kept back.
    assert box.held < 2_000 + 1_000
    assert not wire.conn.wants_read and wire.conn.holds_input
    assert not wire.conn.paused_by_pool
    assert reply > 0
    rounds = 0
    while wire.conn.holds_input:
        rounds += 1
        assert rounds < 500
        wire.flush()
        assert box.held == 0
        wire.resume()
        assert box.held < 2_000 + 1_000
    wire.flush()
    kinds = [m["type"] for m in wire.received]
    assert kinds == ["sessions", "pong"] * 100
    assert rounds > 10  # it really was paced by the budget
    assert hub.queued_bytes == 0


def test_a_read_past_the_budget_keeps_order_with_later_input() -> None:
    hub = _hub(connection_buffer=500, rate_burst=10_000)
    hub.publish_status("s", status="running", metadata={"k": "v" * 200}, now=T0)
    wire = Wire(hub, token="tok")
    wire.send(*[{"type": "list"}] * 20)
    assert wire.conn.holds_input
    # A runtime that reads anyway: the bytes queue behind what was kept.
    wire.send({"type": "ping"})
    while wire.conn.holds_input:
        wire.flush()
        wire.resume()
    wire.flush()
    assert [m["type"] for m in wire.received] == ["sessions"] * 20 + ["pong"]


def test_eof_after_kept_input_still_applies_it() -> None:
    hub = _hub(connection_buffer=400, rate_burst=10_000)
    hub.publish_status("s", status="running", metadata={"k": "v" * 200}, now=T0)
    wire = Wire(hub, token="tok")
    wire.send(*[{"type": "list"}] * 3, {"type": "log", "sessionId": "s", "message": "last"})
    assert wire.conn.holds_input
    wire.flush()  # drained: the kept input can go on at EOF
    wire.conn.receive_data(b"", now=T0, wall=WALL)
    assert wire.conn.state is ConnectionState.CLOSED
    assert hub.sessions["s"].seq == 2  # the log entry after the lists was applied
    assert hub.queued_bytes == 0


def _pool_stall(**limits: Any) -> tuple[Hub, Wire, Wire]:
    """A producer connection stopped by the pool: a viewer that does not
    read holds more than the memory budget."""
    hub = _hub(**limits)
    producer = Wire(hub, token="tok")
    producer.send({"type": "status", "sessionId": "s", "status": "running"})
    producer.flush()
    viewer = Wire(hub, token="tok")
    viewer.send({"type": "subscribe", "sessionId": "s"})
    viewer.flush()
    producer.send(*[{"type": "log", "sessionId": "s", "message": "x" * 500}] * 200)
    producer.flush()
    return hub, producer, viewer


def test_pool_pause_suspends_the_keepalive_and_resumes_it() -> None:
    hub, producer, viewer = _pool_stall(
        memory_budget=65_536, connection_buffer=1 << 20, ping_interval=30, ping_timeout=5
    )
    conn = producer.conn
    assert hub.producers_paused
    assert not conn.wants_read and conn.paused_by_pool
    # A viewer is never paused by the pool, even with a token that may also
    # produce ("tok" has every role): only publishing makes a client pausable.
    assert viewer.conn.wants_read
    # The producer's ping is due; its pong would sit unread in the socket.
    conn.handle_timeout(now=T0 + 31, wall=WALL)
    assert conn.next_deadline() is None  # no keepalive while the pool holds it
    conn.handle_timeout(now=T0 + 100, wall=WALL)
    assert conn.state is ConnectionState.OPEN
    assert hub.counters.ping_timeouts == 0
    # The viewer reads: the pool drains and the producer is read again, with
    # a fresh interval before its next ping.
    viewer.flush()
    assert not hub.producers_paused and conn.wants_read
    conn.continue_reading(now=T0 + 200, wall=WALL)
    assert conn.next_deadline() == pytest.approx(T0 + 230)


def test_a_pool_pause_while_a_pong_is_owed_gives_it_a_fresh_timeout() -> None:
    hub = _hub(memory_budget=65_536, ping_interval=30, ping_timeout=5)
    producer = Wire(hub, token="tok")
    producer.send({"type": "status", "sessionId": "s", "status": "running"})
    producer.flush()
    producer.conn.handle_timeout(now=T0 + 30, wall=WALL)  # the ping is sent
    producer.flush()
    assert producer.conn.next_deadline() == pytest.approx(T0 + 35)
    viewer = Wire(hub, token="tok")
    viewer.send({"type": "subscribe", "sessionId": "s"})
    viewer.flush()
    producer.send(*[{"type": "log", "sessionId": "s", "message": "x" * 500}] * 200)
    assert producer.conn.paused_by_pool
    producer.conn.handle_timeout(now=T0 + 36, wall=WALL)
    assert producer.conn.state is ConnectionState.OPEN
    viewer.flush()
    producer.conn.continue_reading(now=T0 + 50, wall=WALL)
    assert producer.conn.next_deadline() == pytest.approx(T0 + 55)


def test_a_peer_that_stops_draining_its_own_output_keeps_its_keepalive() -> None:
    hub = _hub(connection_buffer=2_000, ping_interval=30, ping_timeout=5)
    for _ in range(30):
        hub.publish_log("s", level="info", message="x" * 200, timestamp=STAMP, now=T0)
    viewer = Wire(hub, token="tok")
    viewer.send({"type": "subscribe", "sessionId": "s", "since": 0})
    assert not viewer.conn.wants_read and not viewer.conn.paused_by_pool
    viewer.conn.handle_timeout(now=T0 + 30, wall=WALL)  # ping queued behind the replay
    viewer.conn.handle_timeout(now=T0 + 36, wall=WALL)  # never read: dead
    assert viewer.conn.state is ConnectionState.CLOSED
    assert viewer.conn.close_code == 1011
    assert hub.counters.ping_timeouts == 1
    assert hub.queued_bytes == 0

"""The producer's sans-IO core (``pcclog_core._producer``, its entries in
``_entries``): its connection table, what it sends and when, refusals, the
status it re-sends, and a hypothesis state machine that runs it against the
real hub core over a fake network with cuts, refusing servers and resends."""

from __future__ import annotations

import collections
import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pcclog_core import Authenticator, Client, Hub, Limits, LocalProtocolError, parse_static_tokens
from pcclog_core._entries import split_message
from pcclog_core._pacing import Backoff
from pcclog_core._producer import (
    _TRANSITIONS,
    Notice,
    ProducerProtocol,
    ProducerState,
    Rejection,
    _Input,
)

TOKEN = "producer-token-0123456789"
WALL = 1_700_000_000.0


def make(**options: Any) -> ProducerProtocol:
    options.setdefault("backoff", Backoff(0.1, 1.0, rng=lambda: 0.0))
    return ProducerProtocol(producer_id="p1", token=TOKEN, peer="ws://pcclog", **options)


def decoded(texts: list[str]) -> list[dict[str, Any]]:
    return [json.loads(text) for text in texts]


def kinds(texts: list[str]) -> list[str]:
    return [message["type"] for message in decoded(texts)]


def streaming(producer: ProducerProtocol, now: float = 0.0) -> list[str]:
    """Connect ``producer`` and accept its token; returns what it sent."""
    producer.connecting()
    producer.connection_made()
    sent = producer.data_to_send(now)
    producer.receive_text('{"type":"pong"}', now)
    assert producer.state is ProducerState.STREAMING
    return sent


def pong(producer: ProducerProtocol, now: float = 0.0) -> None:
    producer.receive_text('{"type":"pong"}', now)


def error(code: str, session: str | None = None, text: str = "no") -> str:
    message: dict[str, Any] = {"type": "error", "code": code, "message": text}
    if session is not None:
        message["sessionId"] = session
    return json.dumps(message)


# --- the connection table ---------------------------------------------------------


@pytest.mark.parametrize("state", list(ProducerState), ids=lambda s: s.value)
@pytest.mark.parametrize("event", list(_Input), ids=lambda e: e.value)
def test_every_state_and_input_is_a_transition_or_a_local_error(
    state: ProducerState, event: _Input
) -> None:
    producer = make()
    producer.state = state
    if (state, event) in _TRANSITIONS:
        producer._move(event)
        assert producer.state is _TRANSITIONS[state, event]
    else:
        with pytest.raises(LocalProtocolError):
            producer._move(event)
        assert producer.state is state  # unchanged


def test_close_is_possible_from_every_state() -> None:
    for state in ProducerState:
        assert _TRANSITIONS[state, _Input.CLOSE] is ProducerState.CLOSED


def test_a_runtime_that_skips_a_step_is_told() -> None:
    producer = make()
    with pytest.raises(LocalProtocolError, match="while waiting"):
        producer.connection_made()


# --- what goes on the wire ----------------------------------------------------------


def test_authenticates_first_and_sends_nothing_else_before_the_pong() -> None:
    producer = make()
    producer.log("s", "info", "early", timestamp=WALL, now=0.0)
    producer.connecting()
    producer.connection_made()
    first = producer.data_to_send(0.0)
    assert decoded(first) == [{"type": "auth", "token": TOKEN}, {"type": "ping"}]
    assert producer.data_to_send(0.0) == []  # waiting for the pong
    pong(producer)
    assert producer.connected
    sent = decoded(producer.data_to_send(0.0))
    assert [m["type"] for m in sent] == ["log", "ping"]
    assert sent[0] == {
        "type": "log",
        "sessionId": "s",
        "timestamp": "2023-11-14T22:13:20.000Z",
        "level": "info",
        "message": "early",
        "producer": "p1",
        "pseq": 1,
    }


def test_no_token_sends_no_auth() -> None:
    producer = ProducerProtocol(producer_id="p1", token=None)
    producer.connecting()
    producer.connection_made()
    assert kinds(producer.data_to_send(0.0)) == ["ping"]


def test_a_pong_confirms_what_its_ping_covers_and_only_that() -> None:
    producer = make()
    streaming(producer)
    for i in range(3):
        producer.log("s", "info", f"{i}", timestamp=WALL, now=0.0)
    assert kinds(producer.data_to_send(0.0)) == ["log", "log", "log", "ping"]
    producer.log("s", "info", "3", timestamp=WALL, now=0.0)
    # A ping is outstanding: the next one waits for min_ping_interval.
    assert kinds(producer.data_to_send(0.0)) == ["log"]
    assert producer.next_deadline() == pytest.approx(0.01)
    assert kinds(producer.data_to_send(0.01)) == ["ping"]
    assert producer.pending == 4
    pong(producer)
    assert producer.pending == 1
    pong(producer)
    assert producer.pending == 0
    assert producer.data_to_send(1.0) == []
    assert producer.next_deadline() is None


def test_the_in_flight_window_holds_back_the_rest() -> None:
    producer = make(max_in_flight=2)
    streaming(producer)
    for i in range(5):
        producer.log("s", "info", f"{i}", timestamp=WALL, now=0.0)
    assert kinds(producer.data_to_send(0.0)) == ["log", "log", "ping"]
    assert producer.data_to_send(1.0) == []  # the window is full
    pong(producer)
    assert [m.get("message") for m in decoded(producer.data_to_send(1.0))] == ["2", "3", None]


def test_a_broken_connection_resends_every_unconfirmed_entry_with_its_number() -> None:
    producer = make()
    streaming(producer)
    for i in range(4):
        producer.log("s", "info", f"{i}", timestamp=WALL, now=0.0)
    first = decoded(producer.data_to_send(0.0))
    pong(producer)
    assert producer.pending == 0
    producer.log("s", "info", "4", timestamp=WALL, now=0.0)
    producer.log("s", "info", "5", timestamp=WALL, now=0.0)
    lost = decoded(producer.data_to_send(1.0))
    producer.connection_lost("cut", 1.0)
    assert producer.state is ProducerState.WAITING and producer.pending == 2
    streaming(producer, now=2.0)
    again = decoded(producer.data_to_send(2.0))
    assert [(m["message"], m["pseq"]) for m in again if m["type"] == "log"] == [
        (m["message"], m["pseq"]) for m in lost if m["type"] == "log"
    ]
    assert [m["pseq"] for m in first if m["type"] == "log"] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("reply", "pending", "rejected", "state"),
    [
        # One entry of "s" and one of "t" in flight (pseq 1, 2); the reply:
        ('{"type":"pong"}', 0, 0, ProducerState.STREAMING),
        # answers t, so s (sent before it) was handled too
        (error("UNAUTHORIZED", "t", "not covered"), 0, 1, ProducerState.STREAMING),
        (error("TOO_MANY_SESSIONS", "s"), 1, 1, ProducerState.STREAMING),
        (error("INVALID_MESSAGE", "s"), 1, 1, ProducerState.STREAMING),
        (error("INVALID_MESSAGE"), 2, 1, ProducerState.STREAMING),  # about nothing we sent
        (error("RATE_LIMITED"), 2, 0, ProducerState.STREAMING),  # voids the ping
        ('{"type":"sessions","sessions":[]}', 2, 0, ProducerState.STREAMING),  # ignored
        ("not json", 2, 0, ProducerState.STREAMING),
    ],
)
def test_replies_while_streaming(
    reply: str, pending: int, rejected: int, state: ProducerState
) -> None:
    producer = make()
    streaming(producer)
    producer.log("s", "info", "one", timestamp=WALL, now=0.0)
    producer.log("t", "info", "two", timestamp=WALL, now=0.0)
    assert kinds(producer.data_to_send(0.0)) == ["log", "log", "ping"]
    producer.receive_text(reply, 0.0)
    assert (producer.pending, producer.rejected, producer.state) == (pending, rejected, state)


def test_an_error_confirms_the_entries_before_the_one_it_answers() -> None:
    producer = make()
    streaming(producer)
    producer.log("a", "info", "a1", timestamp=WALL, now=0.0)
    producer.log("b", "info", "b1", timestamp=WALL, now=0.0)
    producer.log("a", "info", "a2", timestamp=WALL, now=0.0)
    producer.data_to_send(0.0)
    producer.events()
    producer.receive_text(error("INVALID_MESSAGE", "b"), 0.0)
    assert producer.pending == 1  # a1 handled, b1 answered; a2 still in flight
    events = producer.events()
    assert [type(e) for e in events] == [Rejection, Notice]
    assert "session b" in events[1].text  # type: ignore[union-attr]
    producer.connection_lost("cut", 1.0)
    streaming(producer, now=2.0)
    assert [m.get("message") for m in decoded(producer.data_to_send(2.0))] == ["a2", None]


def test_rate_limited_auth_ping_is_sent_again() -> None:
    producer = make()
    producer.connecting()
    producer.connection_made()
    producer.data_to_send(0.0)
    producer.receive_text(error("RATE_LIMITED"), 0.0)
    assert kinds(producer.data_to_send(0.0)) == ["ping"]
    pong(producer)
    assert producer.connected


def test_too_many_sessions_refuses_the_session_for_a_while() -> None:
    producer = make(refuse_retry=5.0)
    streaming(producer)
    producer.log("full", "info", "x", timestamp=WALL, now=0.0)
    producer.log("full", "info", "y", timestamp=WALL, now=0.0)
    producer.log("ok", "info", "z", timestamp=WALL, now=0.0)
    producer.data_to_send(0.0)
    producer.receive_text(error("TOO_MANY_SESSIONS", "full", "no room"), 0.0)
    assert producer.rejected == 2 and producer.pending == 1
    assert producer.last_rejection == "TOO_MANY_SESSIONS: no room"
    producer.log("full", "info", "later", timestamp=WALL, now=4.9)
    assert producer.rejected == 3 and producer.pending == 1
    producer.log("full", "info", "retried", timestamp=WALL, now=5.0)
    assert producer.rejected == 3 and producer.pending == 2


def test_a_session_refused_for_good_stays_refused() -> None:
    producer = make()
    streaming(producer)
    producer.log("x", "info", "1", timestamp=WALL, now=0.0)
    producer.data_to_send(0.0)
    producer.receive_text(error("UNAUTHORIZED", "x", "token lacks the 'produce' role"), 0.0)
    producer.log("x", "info", "2", timestamp=WALL, now=1e9)
    assert producer.pending == 0 and producer.rejected == 2


# --- refusals of the token and outages --------------------------------------------------


def test_a_refused_token_keeps_the_entries_retries_and_says_so_once() -> None:
    producer = make()
    producer.log("s", "info", "kept", timestamp=WALL, now=0.0)
    waits = []
    for attempt in range(4):
        now = float(attempt * 10)
        producer.connecting()
        producer.connection_made()
        producer.data_to_send(now)
        producer.receive_text(
            error("UNAUTHORIZED", None, "authentication failed: unknown token"), now
        )
        assert producer.state is ProducerState.WAITING
        waits.append(producer.backoff.wait(now))
        producer.receive_text('{"type":"pong"}', now)  # the ping's pong, after: ignored
        producer.connection_lost("closed", now)  # the runtime closes it: nothing new
        assert producer.state is ProducerState.WAITING
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.4])  # base 0.1, no jitter
    assert producer.pending == 1 and producer.rejected == 0
    assert producer.refusal == "the server refused the token: authentication failed: unknown token"
    loud = [e for e in producer.events() if isinstance(e, Notice) and e.level == "warning"]
    assert [e.text for e in loud] == [
        "the server refused the token: authentication failed: unknown token; "
        "buffering (1 entries) and retrying"
    ]
    assert loud[0].connected is False
    # Accepted again: the entry goes, the refusal is over, and that is news.
    streaming(producer, now=100.0)
    assert producer.refusal is None and producer.backoff.failures == 0
    assert [e.text for e in producer.events()] == [
        "connected to ws://pcclog; sending 1 buffered entries"
    ]
    assert [m.get("message") for m in decoded(producer.data_to_send(100.0))] == ["kept", None]


def test_a_handshake_refusal_is_retried_like_a_refused_token() -> None:
    producer = make()
    producer.connecting()
    producer.connection_failed("the server refused the connection: HTTP 401", 0.0, refused=True)
    assert producer.state is ProducerState.WAITING
    assert producer.refusal == "the server refused the connection: HTTP 401"
    assert producer.next_deadline() == producer.backoff.retry_at == 0.05


def test_an_outage_is_told_once_until_connected_again() -> None:
    producer = make()
    streaming(producer)
    producer.events()
    producer.connection_lost("connection to ws://pcclog lost: reset", 1.0)
    for attempt in range(3):
        producer.connecting()
        producer.connection_failed("cannot reach ws://pcclog: refused", 2.0 + attempt)
    events = producer.events()
    assert [(e.level, e.connected) for e in events if isinstance(e, Notice)] == [
        ("warning", False),
        ("debug", None),
        ("debug", None),
        ("debug", None),
    ]
    # A refusal after an outage is different news: told too.
    producer.connecting()
    producer.connection_failed("the server refused the connection: HTTP 403", 9.0, refused=True)
    assert [e.level for e in producer.events() if isinstance(e, Notice)] == ["warning"]


# --- the status re-sent on every reconnect ------------------------------------------------


def test_a_running_status_is_resent_first_on_every_reconnect_under_its_own_number() -> None:
    producer = make()
    streaming(producer)
    producer.status("job", "running", {"pid": 7}, now=0.0)
    producer.status("job", "running", {"host": "h"}, now=0.0)
    producer.log("job", "info", "quiet", timestamp=WALL, now=0.0)
    producer.data_to_send(0.0)
    pong(producer)
    assert producer.pending == 0
    for attempt in range(2):
        producer.connection_lost("cut", 1.0 + attempt)
        streaming(producer, now=2.0 + attempt)
        sent = decoded(producer.data_to_send(2.0 + attempt))
        assert sent == [
            {
                "type": "status",
                "sessionId": "job",
                "status": "running",
                "metadata": {"pid": 7, "host": "h"},  # merged, as the server does
                "producer": "p1",
                "pseq": 2,  # the last status's own number: the same server drops it
            },
            {"type": "ping"},
        ]
        assert producer.pending == 0  # a copy, not an entry given
        pong(producer)


def test_an_ended_session_or_a_status_still_buffered_is_not_resent() -> None:
    producer = make()
    producer.status("done", "running", now=0.0)
    producer.status("done", "stopped", {"exitCode": 0}, now=0.0)
    producer.status("live", "running", now=0.0)  # never confirmed: sent once, in order
    streaming(producer)
    sent = decoded(producer.data_to_send(0.0))
    assert [(m["sessionId"], m["status"], m["pseq"]) for m in sent if m["type"] == "status"] == [
        ("done", "running", 1),
        ("done", "stopped", 2),
        ("live", "running", 3),
    ]


def test_a_confirmed_running_status_goes_before_an_end_still_buffered() -> None:
    producer = make()
    streaming(producer)
    producer.status("job", "running", {"pid": 7}, now=0.0)
    producer.data_to_send(0.0)
    pong(producer)
    producer.log("job", "info", "last words", timestamp=WALL, now=0.0)
    producer.status("job", "error", {"exitCode": 3}, now=0.0)
    producer.connection_lost("restart", 1.0)
    streaming(producer, now=2.0)
    sent = decoded(producer.data_to_send(2.0))
    assert [(m["type"], m.get("status"), m.get("metadata"), m.get("pseq")) for m in sent] == [
        ("status", "running", {"pid": 7}, 1),  # the copy, before what followed it
        ("log", None, None, 2),
        ("status", "error", {"exitCode": 3}, 3),
        ("ping", None, None, None),
    ]
    pong(producer)
    # The end is confirmed now: nothing to bring back any more.
    producer.connection_lost("restart", 3.0)
    streaming(producer, now=4.0)
    assert producer.data_to_send(4.0) == []


def test_a_copy_refused_by_a_full_server_is_not_counted_as_given() -> None:
    producer = make()
    streaming(producer)
    producer.status("job", "running", now=0.0)
    producer.data_to_send(0.0)
    pong(producer)
    producer.connection_lost("restart", 1.0)
    streaming(producer, now=2.0)
    producer.data_to_send(2.0)
    producer.receive_text(error("TOO_MANY_SESSIONS", "job"), 2.0)
    assert producer.pending == 0 and producer.rejected == 0


# --- entries ------------------------------------------------------------------------


def test_the_buffer_is_bounded_and_counts_what_it_drops() -> None:
    producer = make(max_buffer=10)
    for i in range(25):
        producer.log("s", "info", f"{i}", timestamp=WALL, now=0.0)
    assert producer.pending == 10 and producer.dropped == 15
    notices = [e for e in producer.events() if isinstance(e, Notice)]
    assert len(notices) == 1 and "dropped the oldest" in notices[0].text
    streaming(producer)
    assert [m.get("message") for m in decoded(producer.data_to_send(0.0))][:2] == ["15", "16"]


@pytest.mark.parametrize(
    ("call", "error_type"),
    [
        (lambda p: p.log("", "info", "x", timestamp=0, now=0), ValueError),
        (lambda p: p.log("*", "info", "x", timestamp=0, now=0), ValueError),
        (lambda p: p.log("s" * 257, "info", "x", timestamp=0, now=0), ValueError),
        (lambda p: p.log("s", "", "x", timestamp=0, now=0), ValueError),
        (lambda p: p.log("s", "x" * 17, "x", timestamp=0, now=0), ValueError),
        (lambda p: p.log("s", "info", 42, timestamp=0, now=0), TypeError),
        (lambda p: p.log("s", "info", "x", [1], timestamp=0, now=0), TypeError),
        (lambda p: p.status("s", "finished", now=0), ValueError),
        (lambda p: p.status("s", "running", {"k": "v" * 1_100_000}, now=0), ValueError),
    ],
)
def test_bad_input_is_refused_at_once(call: Any, error_type: type[Exception]) -> None:
    producer = make()
    with pytest.raises(error_type):
        call(producer)
    assert producer.pending == 0


def test_a_lone_surrogate_cannot_break_the_connection() -> None:
    producer = make()
    producer.log("s", "info", "a\ud800b", timestamp=WALL, now=0.0)
    streaming(producer)
    (entry,) = [m for m in decoded(producer.data_to_send(0.0)) if m["type"] == "log"]
    assert entry["message"] == "a\ufffdb"


@pytest.mark.parametrize("size", [512, 4096, 65_536])
def test_long_messages_are_split_into_numbered_parts_that_fit(size: int) -> None:
    producer = make(max_message_size=size)
    text = 'é"\n\x01ab€𝄞' * 20_000
    producer.log("big", "info", text, {"stream": "stdout"}, timestamp=WALL, now=0.0)
    producer.log("big", "info", "small", timestamp=WALL, now=0.0)
    streaming(producer)
    sent: list[str] = []
    while True:
        batch = producer.data_to_send(0.0)
        if not batch:
            break
        sent += batch
        pong(producer)
    assert all(len(t.encode()) <= size for t in sent)
    logs = [m for m in decoded(sent) if m["type"] == "log"]
    parts, last = logs[:-1], logs[-1]
    assert "".join(m["message"] for m in parts) == text
    assert [m["data"]["part"] for m in parts] == list(range(1, len(parts) + 1))
    assert {m["data"]["parts"] for m in parts} == {len(parts)}
    assert [m["pseq"] for m in logs] == list(range(1, len(logs) + 1))
    assert last["message"] == "small" and "data" not in last


def test_split_message_respects_the_budget() -> None:
    for text in ["", "a" * 10, "€" * 1000, "\x00" * 100 + "z", '"\\' * 50, "𝄞" * 99]:
        parts = split_message(text, 64)
        assert "".join(parts) == text
        for part in parts:
            assert len(msgspec.json.encode(part)) - 2 <= 64


# --- against the real hub over a fake network ---------------------------------------------


class Server:
    """A hub process: ``tokens`` it accepts, and its memory."""

    def __init__(self, token: str) -> None:
        self.hub = Hub(
            Limits(ping_interval=0),
            Authenticator(static_tokens=parse_static_tokens(token)),
        )


class Link:
    """One connection to a server: what is on the wire each way."""

    def __init__(self, server: Server, now: float) -> None:
        self.server = server
        self.client = Client(server.hub, now=now, framed=False)
        self.up: collections.deque[str] = collections.deque()
        self.down: collections.deque[bytes] = collections.deque()

    def close(self) -> None:
        self.client.disconnect()


def history(server: Server, session: str) -> list[tuple[str, Any]]:
    """The entries the hub holds for ``session``, as (type, identity)."""
    viewer = Client(server.hub, now=0.0, framed=False)
    viewer.receive_message(json.dumps({"type": "auth", "token": TOKEN}), now=0.0, wall=WALL)
    viewer.receive_message(
        json.dumps({"type": "subscribe", "sessionId": session, "since": 0}), now=0.0, wall=WALL
    )
    out: list[tuple[str, Any]] = []
    while True:
        batch = viewer.messages_to_send()
        if not batch:
            break
        for raw in batch:
            message = json.loads(raw)
            if "seq" not in message:
                continue
            if message["type"] == "log":
                out.append(("log", message["message"]))
            else:
                out.append(("status", message["metadata"].get("n")))
    viewer.disconnect()
    return out


SESSIONS = ("a", "b")


class ProducerOverAFakeNetwork(RuleBasedStateMachine):
    """Any interleaving of entries given, sends, server reads, replies,
    cuts, refusing servers (a restart with another token, then the old
    server back) and time: once everything drains, the server holds every
    entry given exactly once, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.home = Server(TOKEN)
        self.refusing = Server("another-token-0123456789")
        self.server = self.home
        self.link: Link | None = None
        self.producer = ProducerProtocol(
            producer_id="p1",
            token=TOKEN,
            max_in_flight=3,
            min_ping_interval=0.01,
            backoff=Backoff(0.1, 0.4, rng=lambda: 0.5),
        )
        self.given: dict[str, list[tuple[str, Any]]] = {s: [] for s in SESSIONS}
        self.count = 0

    # the application
    @rule(session=st.sampled_from(SESSIONS))
    def give_log(self, session: str) -> None:
        self.count += 1
        text = f"{session}-{self.count}"
        self.producer.log(session, "info", text, timestamp=WALL, now=self.now)
        self.given[session].append(("log", text))

    @rule(session=st.sampled_from(SESSIONS), status=st.sampled_from(["running", "stopped"]))
    def give_status(self, session: str, status: str) -> None:
        self.count += 1
        self.producer.status(session, status, {"n": self.count}, now=self.now)  # type: ignore[arg-type]
        self.given[session].append(("status", self.count))

    @rule(dt=st.sampled_from([0.001, 0.01, 0.1, 1.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    # the runtime
    @precondition(lambda self: self.link is None)
    @rule(reachable=st.booleans())
    def connect(self, reachable: bool) -> None:
        producer = self.producer
        if producer.state is not ProducerState.WAITING:
            return
        self.now += producer.backoff.wait(self.now)
        producer.connecting()
        if not reachable:
            producer.connection_failed("cannot reach", self.now)
            return
        self.link = Link(self.server, self.now)
        producer.connection_made()

    @precondition(lambda self: self.link is not None)
    @rule()
    def send(self) -> None:
        assert self.link is not None
        self.link.up.extend(self.producer.data_to_send(self.now))

    @precondition(lambda self: self.link is not None and self.link.up)
    @rule(count=st.integers(1, 5))
    def server_reads(self, count: int) -> None:
        link = self.link
        assert link is not None
        for _ in range(min(count, len(link.up))):
            link.client.receive_message(link.up.popleft(), now=self.now, wall=WALL + self.now)
        link.down.extend(link.client.messages_to_send())
        self.server.hub.take_ready()
        if link.client.close_request is not None:
            self.cut()

    @precondition(lambda self: self.link is not None and self.link.down)
    @rule(count=st.integers(1, 5))
    def producer_reads(self, count: int) -> None:
        link = self.link
        assert link is not None
        for _ in range(min(count, len(link.down))):
            self.producer.receive_text(link.down.popleft(), self.now)
        if self.producer.state is ProducerState.WAITING:
            self.cut()  # refused: the runtime closes the connection

    @precondition(lambda self: self.link is not None)
    @rule()
    def round_trip(self) -> None:
        """Everything sent, read by the server, answered and read back."""
        self.send()
        if self.link is not None and self.link.up:
            self.server_reads(len(self.link.up))
        if self.link is not None and self.link.down:
            self.producer_reads(len(self.link.down))

    @precondition(lambda self: self.link is not None)
    @rule()
    def cut(self) -> None:
        assert self.link is not None
        self.link.close()
        self.link = None
        self.producer.connection_lost("cut", self.now)

    @rule(refusing=st.booleans())
    def restart_elsewhere(self, refusing: bool) -> None:
        """The server goes away and comes back refusing the token, or the
        old one (with its memory) comes back."""
        if self.link is not None:
            self.cut()
        self.server = self.refusing if refusing else self.home

    @invariant()
    def counters_add_up(self) -> None:
        given = sum(len(entries) for entries in self.given.values())
        assert 0 <= self.producer.pending <= given
        assert self.producer.rejected == 0 and self.producer.dropped == 0

    def teardown(self) -> None:
        # Let everything drain to the home server, then compare.
        if self.link is not None:
            self.cut()
        self.server = self.home
        for _ in range(10_000):
            if self.link is None:
                self.connect(True)
                continue
            self.now += 0.01
            self.send()
            link = self.link
            if link.up:
                self.server_reads(5)
            elif link.down:
                self.producer_reads(5)
            elif self.producer.connected and self.producer.pending == 0:
                break  # connected, accepted, and nothing left to say
        assert self.producer.pending == 0
        for session in SESSIONS:
            assert history(self.home, session) == self.given[session]
        self.producer.close()


TestProducerOverAFakeNetwork = ProducerOverAFakeNetwork.TestCase
TestProducerOverAFakeNetwork.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

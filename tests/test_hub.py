"""The hub: subscriptions, history, fan-out, backpressure, policy (SPEC §2, §3, §6).

Clients are driven at the message level: JSON text in through
``receive_message``; out through ``messages_to_send`` (``framed=False``) or
``data_to_send`` (frames, parsed back here). Time is a fake clock: every call
gets its ``now`` and ``wall``.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from pcclog_core import (
    Authenticator,
    Client,
    CloseCode,
    ErrorCode,
    Grant,
    Hub,
    Limits,
    MessageError,
    Role,
    format_wall,
    parse_static_tokens,
)

# An open hub: these tests are not about authentication.
OPEN = Authenticator(disabled=True)

T0 = 1000.0
WALL = 1_700_000_000.0
STAMP = format_wall(WALL)
SECRET = "hub-tests-hmac-secret-of-at-least-32-bytes"


def parse_frames(data: bytes) -> list[dict[str, Any]]:
    """Server frames (final, unmasked, text) back to JSON objects."""
    messages = []
    i = 0
    while i < len(data):
        assert data[i] == 0x81, data[i : i + 4]
        length = data[i + 1]
        assert not length & 0x80, "server frames are never masked"
        i += 2
        if length == 126:
            length = int.from_bytes(data[i : i + 2], "big")
            i += 2
        elif length == 127:
            length = int.from_bytes(data[i : i + 8], "big")
            i += 8
        messages.append(json.loads(data[i : i + length]))
        i += length
    assert i == len(data)
    return messages


class Peer:
    """A client plus the helpers to talk to it."""

    def __init__(
        self,
        hub: Hub,
        *,
        framed: bool = False,
        grant: Grant | None = None,
        now: float = T0,
        default_session: str | None = None,
    ) -> None:
        self.client = Client(
            hub, now=now, wall=WALL, grant=grant, framed=framed, default_session=default_session
        )

    def send(self, message: dict[str, Any] | str, *, now: float = T0, wall: float = WALL) -> None:
        text = message if isinstance(message, str) else json.dumps(message)
        self.client.receive_message(text, now=now, wall=wall)

    def received(self) -> list[dict[str, Any]]:
        """Everything the client has to send, as a runtime would drain it:
        take, confirm the write, and again while a paged replay refills."""
        client = self.client
        got: list[dict[str, Any]] = []
        while True:
            if client.framed:
                data = client.data_to_send()
                client.bytes_sent(len(data))
                batch = parse_frames(data)
            else:
                batch = [json.loads(m) for m in client.messages_to_send()]
            if not batch:
                return got
            got += batch

    def subscribe(self, session_id: str, **extra: Any) -> None:
        self.send({"type": "subscribe", "sessionId": session_id, **extra})

    def log(self, session_id: str, message: str = "m", **extra: Any) -> None:
        self.send({"type": "log", "sessionId": session_id, "message": message, **extra})

    def status(self, session_id: str, status: str, **extra: Any) -> None:
        self.send({"type": "status", "sessionId": session_id, "status": status, **extra})


def publish(hub: Hub, session_id: str, n: int, *, now: float = T0, size: int = 10) -> list[int]:
    return [
        hub.publish_log(
            session_id, level="info", message=f"{i}".ljust(size, "x"), timestamp=STAMP, now=now
        )
        for i in range(n)
    ]


def seqs(messages: list[dict[str, Any]], kind: str = "log") -> list[int]:
    return [m["seq"] for m in messages if m["type"] == kind]


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


def errors(messages: list[dict[str, Any]]) -> list[str]:
    return [m["code"] for m in messages if m["type"] == "error"]


def is_snapshot(message: dict[str, Any]) -> bool:
    return message["type"] == "status" and "seq" not in message


def auth_hub(tokens: str, **limits: Any) -> Hub:
    return Hub(Limits(**limits), Authenticator(static_tokens=parse_static_tokens(tokens)))


# --- subscribe: snapshot, replay, live ------------------------------------------------


@pytest.mark.parametrize("framed", [False, True])
def test_subscribe_snapshot_then_replay_then_live(framed: bool) -> None:
    hub = Hub(authenticator=OPEN)
    producer = Peer(hub)
    producer.status("s", "running", metadata={"image": "img"})
    producer.log("s", "one")
    producer.log("s", "two", level="warn", data={"k": 1})
    viewer = Peer(hub, framed=framed)
    viewer.subscribe("s")
    got = viewer.received()
    assert got[0] == {
        "type": "status",
        "sessionId": "s",
        "status": "running",
        "metadata": {"image": "img"},
    }
    assert got[1] == {
        "type": "status",
        "sessionId": "s",
        "status": "running",
        "metadata": {"image": "img"},
        "seq": 1,
    }
    assert got[2] == {
        "type": "log",
        "sessionId": "s",
        "timestamp": STAMP,
        "level": "info",
        "message": "one",
        "seq": 2,
    }
    assert got[3]["data"] == {"k": 1} and got[3]["level"] == "warn" and got[3]["seq"] == 3
    assert len(got) == 4
    producer.log("s", "three")
    assert viewer.received() == [
        {
            "type": "log",
            "sessionId": "s",
            "timestamp": STAMP,
            "level": "info",
            "message": "three",
            "seq": 4,
        }
    ]
    assert viewer.received() == []
    assert producer.received() == []


def test_framed_and_plain_viewers_get_the_same_payloads_and_shared_frames() -> None:
    hub = Hub(authenticator=OPEN)
    plain, framed, framed2 = Peer(hub), Peer(hub, framed=True), Peer(hub, framed=True)
    for peer in (plain, framed, framed2):
        peer.subscribe("s")
        peer.received()
    publish(hub, "s", 1)
    # the frame is encoded once and the same object queued for each viewer
    assert framed.client.outbox.chunks[-1] is framed2.client.outbox.chunks[-1]
    assert framed.received() == plain.received()


def test_empty_message_is_kept_in_the_entry() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    Peer(hub).log("s", "")
    viewer.subscribe("s")
    assert viewer.received()[1]["message"] == ""
    Peer(hub).send({"type": "log", "sessionId": "s"})
    assert viewer.received()[0]["message"] == ""


def test_subscribe_default_tail() -> None:
    hub = Hub(Limits(subscribe_tail=3), authenticator=OPEN)
    publish(hub, "s", 10)
    viewer = Peer(hub)
    viewer.subscribe("s")
    got = viewer.received()
    assert is_snapshot(got[0])
    assert seqs(got) == [8, 9, 10]


@pytest.mark.parametrize(("tail", "expected"), [(0, []), (1, [10]), (4, [7, 8, 9, 10])])
def test_subscribe_tail(tail: int, expected: list[int]) -> None:
    hub = Hub(authenticator=OPEN)
    publish(hub, "s", 10)
    viewer = Peer(hub)
    viewer.subscribe("s", tail=tail)
    got = viewer.received()
    assert is_snapshot(got[0])
    assert seqs(got) == expected
    publish(hub, "s", 1)
    assert seqs(viewer.received()) == [11]


def test_subscribe_tail_larger_than_history() -> None:
    hub = Hub(Limits(history_lines=5), authenticator=OPEN)
    publish(hub, "s", 10)
    viewer = Peer(hub)
    viewer.subscribe("s", tail=100)
    got = viewer.received()
    # a plain tail is not a resume: no gap, just what history holds
    assert kinds(got) == ["status", "log", "log", "log", "log", "log"]
    assert seqs(got) == [6, 7, 8, 9, 10]


@pytest.mark.parametrize(
    ("since", "expected"),
    [(0, list(range(1, 11))), (7, [8, 9, 10]), (10, []), (25, [])],
)
def test_subscribe_since(since: int, expected: list[int]) -> None:
    hub = Hub(Limits(subscribe_tail=2), authenticator=OPEN)
    publish(hub, "s", 10)
    viewer = Peer(hub)
    viewer.subscribe("s", since=since)
    got = viewer.received()
    assert is_snapshot(got[0])
    assert "gap" not in kinds(got)
    assert seqs(got) == expected
    publish(hub, "s", 1)
    assert seqs(viewer.received()) == [11]


def test_since_older_than_history_sends_an_evicted_gap() -> None:
    hub = Hub(Limits(history_lines=4), authenticator=OPEN)
    publish(hub, "s", 10)
    viewer = Peer(hub)
    viewer.subscribe("s", since=2)
    got = viewer.received()
    assert is_snapshot(got[0])
    assert got[1] == {
        "type": "gap",
        "sessionId": "s",
        "fromSeq": 3,
        "toSeq": 6,
        "reason": "evicted",
    }
    assert seqs(got[2:]) == [7, 8, 9, 10]
    assert hub.counters.gaps == 1


def test_since_exactly_at_history_start_needs_no_gap() -> None:
    hub = Hub(Limits(history_lines=4), authenticator=OPEN)
    publish(hub, "s", 10)
    viewer = Peer(hub)
    viewer.subscribe("s", since=6)
    got = viewer.received()
    assert "gap" not in kinds(got)
    assert seqs(got) == [7, 8, 9, 10]


def test_resubscribe_resumes_without_duplicates() -> None:
    hub = Hub(authenticator=OPEN)
    publish(hub, "s", 3)
    viewer = Peer(hub)
    viewer.subscribe("s")
    assert seqs(viewer.received()) == [1, 2, 3]
    viewer.send({"type": "unsubscribe", "sessionId": "s"})
    publish(hub, "s", 2)
    assert viewer.received() == []
    viewer.subscribe("s", since=3)
    got = viewer.received()
    assert is_snapshot(got[0]) and seqs(got) == [4, 5]


def test_status_metadata_merges_and_snapshot_is_current() -> None:
    hub = Hub(authenticator=OPEN)
    producer = Peer(hub)
    producer.status("s", "running", metadata={"a": 1, "b": 2})
    producer.status("s", "stopped", metadata={"b": 3, "exitCode": 0})
    viewer = Peer(hub)
    viewer.subscribe("s", tail=0)
    assert viewer.received() == [
        {
            "type": "status",
            "sessionId": "s",
            "status": "stopped",
            "metadata": {"a": 1, "b": 3, "exitCode": 0},
        }
    ]
    assert hub.sessions["s"].seq == 2


def test_seq_is_per_session() -> None:
    hub = Hub(authenticator=OPEN)
    assert publish(hub, "a", 3) == [1, 2, 3]
    assert publish(hub, "b", 2) == [1, 2]
    assert hub.publish_status("a", status="running", now=T0) == 4


# --- wildcard -----------------------------------------------------------------------------


def test_wildcard_gets_existing_and_later_sessions() -> None:
    hub = Hub(Limits(subscribe_tail=1), authenticator=OPEN)
    publish(hub, "a", 2)
    viewer = Peer(hub)
    viewer.subscribe("*")
    got = viewer.received()
    assert [(m["type"], m["sessionId"], m.get("seq")) for m in got] == [
        ("status", "a", None),
        ("log", "a", 2),
    ]
    publish(hub, "b", 1)
    got = viewer.received()
    assert [(m["type"], m["sessionId"], m.get("seq")) for m in got] == [
        ("status", "b", None),
        ("log", "b", 1),
    ]
    publish(hub, "a", 1)
    assert [(m["sessionId"], m["seq"]) for m in viewer.received()] == [("a", 3)]


def test_wildcard_with_since() -> None:
    hub = Hub(authenticator=OPEN)
    publish(hub, "a", 5)
    publish(hub, "b", 2)
    viewer = Peer(hub)
    viewer.subscribe("*", since=3)
    got = viewer.received()
    assert [(m["sessionId"], m["seq"]) for m in got if m["type"] == "log"] == [("a", 4), ("a", 5)]


def test_wildcard_limited_by_the_token_globs() -> None:
    hub = auth_hub("v:view:team-*,p:produce:*")
    producer = Peer(hub)
    producer.send({"type": "auth", "token": "p"})
    producer.log("team-1")
    producer.log("other")
    viewer = Peer(hub)
    viewer.send({"type": "subscribe", "sessionId": "*", "auth": {"token": "v"}})
    got = viewer.received()
    assert {m["sessionId"] for m in got} == {"team-1"}
    producer.log("other-2")
    producer.log("team-2")
    producer.log("other")
    got = viewer.received()
    assert {m["sessionId"] for m in got} == {"team-2"}
    assert seqs(got) == [1]
    # the wildcard did not make the others visible by name either
    viewer.subscribe("other")
    assert errors(viewer.received()) == ["UNAUTHORIZED"]


def test_unsubscribe_wildcard_keeps_explicit_subscriptions() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    publish(hub, "a", 1)
    publish(hub, "b", 1)
    viewer.subscribe("*")
    viewer.subscribe("a")
    viewer.received()
    viewer.send({"type": "unsubscribe", "sessionId": "*"})
    publish(hub, "a", 1)
    publish(hub, "b", 1)
    publish(hub, "c", 1)
    assert [(m["sessionId"], m["seq"]) for m in viewer.received()] == [("a", 2)]


def test_unsubscribe_one_session_while_on_wildcard_keeps_it() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    publish(hub, "a", 1)
    viewer.subscribe("*")
    viewer.subscribe("a")
    viewer.received()
    viewer.send({"type": "unsubscribe", "sessionId": "a"})
    publish(hub, "a", 1)
    assert seqs(viewer.received()) == [2]


# --- unsubscribe and pending subscriptions ----------------------------------------------


def test_unsubscribe_stops_delivery() -> None:
    hub = Hub(authenticator=OPEN)
    publish(hub, "s", 1)
    viewer = Peer(hub)
    viewer.subscribe("s")
    viewer.received()
    viewer.send({"type": "unsubscribe", "sessionId": "s"})
    publish(hub, "s", 3)
    assert viewer.received() == []
    assert viewer.client not in hub.sessions["s"].viewers_plain
    # unsubscribing from something never subscribed is harmless
    viewer.send({"type": "unsubscribe", "sessionId": "never"})
    assert viewer.received() == []


def test_session_not_found_keeps_a_pending_subscription() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("later")
    [error] = viewer.received()
    assert error["type"] == "error"
    assert error["code"] == "SESSION_NOT_FOUND"
    assert error["sessionId"] == "later"
    assert "'later'" in error["message"] and "does not exist" in error["message"]
    publish(hub, "later", 2)
    got = viewer.received()
    assert is_snapshot(got[0]) and got[0]["sessionId"] == "later"
    assert seqs(got) == [1, 2]


def test_unsubscribe_cancels_a_pending_subscription() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("later")
    viewer.received()
    viewer.send({"type": "unsubscribe", "sessionId": "later"})
    publish(hub, "later", 1)
    assert viewer.received() == []
    assert "later" not in hub._pending


def test_disconnect_cancels_a_pending_subscription() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("later")
    viewer.client.disconnect()
    assert "later" not in hub._pending
    assert viewer.client not in hub.clients
    publish(hub, "later", 1)
    assert viewer.client.messages_to_send() == []


# --- limits: subscriptions, sessions, eviction ---------------------------------------------


def test_max_subscriptions() -> None:
    hub = Hub(Limits(max_subscriptions=2), authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("a")
    viewer.subscribe("b")
    viewer.received()
    viewer.subscribe("c")
    [error] = viewer.received()
    assert error["code"] == "TOO_MANY_SUBSCRIPTIONS"
    assert error["sessionId"] == "c"
    assert "limit is 2" in error["message"]
    # re-subscribing to one it has does not count again
    viewer.subscribe("a")
    assert errors(viewer.received()) == ["SESSION_NOT_FOUND"]
    viewer.subscribe("*")
    assert errors(viewer.received()) == ["TOO_MANY_SUBSCRIPTIONS"]
    viewer.send({"type": "unsubscribe", "sessionId": "b"})
    viewer.subscribe("*")
    assert errors(viewer.received()) == []
    # the refused one is not pending
    publish(hub, "c", 1)
    got = viewer.received()
    assert [m["sessionId"] for m in got] == ["c", "c"]  # via the wildcard only


def test_max_sessions_evicts_the_oldest_ended_session() -> None:
    hub = Hub(Limits(max_sessions=3), authenticator=OPEN)
    producer = Peer(hub)
    producer.log("a")
    producer.log("b")
    producer.log("c")
    producer.status("b", "stopped", now=T0 + 1)
    producer.status("a", "error", now=T0 + 2)
    producer.log("d")
    assert producer.received() == []
    assert set(hub.sessions) == {"a", "c", "d"}
    producer.log("e")
    assert set(hub.sessions) == {"c", "d", "e"}


def test_max_sessions_refuses_when_all_are_running() -> None:
    hub = Hub(Limits(max_sessions=2), authenticator=OPEN)
    producer = Peer(hub)
    viewer = Peer(hub)
    viewer.subscribe("c")
    viewer.received()
    producer.log("a")
    producer.log("b")
    producer.log("c")
    [error] = producer.received()
    assert error["code"] == "TOO_MANY_SESSIONS"
    assert error["sessionId"] == "c"
    assert "limit is 2" in error["message"]
    assert set(hub.sessions) == {"a", "b"}
    assert viewer.received() == []
    with pytest.raises(MessageError) as info:
        hub.publish_status("c", status="running", now=T0)
    assert info.value.code is ErrorCode.TOO_MANY_SESSIONS


def test_session_timeout_evicts_ended_sessions() -> None:
    hub = Hub(Limits(session_timeout=300), authenticator=OPEN)
    publish(hub, "a", 1)
    publish(hub, "b", 1)
    assert hub.next_deadline() is None
    hub.publish_status("a", status="stopped", now=T0 + 10)
    hub.publish_status("b", status="error", now=T0 + 20)
    assert hub.next_deadline() == T0 + 310
    hub.handle_timeout(T0 + 309.999)
    assert set(hub.sessions) == {"a", "b"}
    hub.handle_timeout(T0 + 310)
    assert set(hub.sessions) == {"b"}
    assert hub.next_deadline() == T0 + 320
    hub.handle_timeout(T0 + 1000)
    assert hub.sessions == {}
    assert hub.next_deadline() is None


def test_running_status_revives_an_ended_session() -> None:
    hub = Hub(Limits(session_timeout=300), authenticator=OPEN)
    hub.publish_status("a", status="stopped", now=T0)
    hub.publish_status("a", status="running", now=T0 + 100)
    assert hub.next_deadline() is None
    hub.handle_timeout(T0 + 10_000)
    assert "a" in hub.sessions
    # a second end restarts the clock
    hub.publish_status("a", status="error", now=T0 + 200)
    hub.publish_status("a", status="stopped", now=T0 + 250)
    assert hub.next_deadline() == T0 + 550


def test_evicted_session_returns_to_its_explicit_subscribers() -> None:
    hub = Hub(Limits(session_timeout=5), authenticator=OPEN)
    viewer = Peer(hub)
    publish(hub, "s", 2)
    viewer.subscribe("s")
    viewer.received()
    hub.publish_status("s", status="stopped", now=T0)
    hub.handle_timeout(T0 + 5)
    assert "s" not in hub.sessions
    assert seqs(viewer.received(), "status") == [3]
    publish(hub, "s", 1)
    got = viewer.received()
    # a new session: a fresh snapshot, seq restarts
    assert is_snapshot(got[0]) and got[0]["status"] == "running"
    assert seqs(got) == [1]


def test_list_sessions_filtered_by_grant() -> None:
    hub = auth_hub("v:view:a*,all")
    publish(hub, "a1", 2)
    publish(hub, "b1", 1)
    viewer = Peer(hub)
    viewer.send({"type": "list"})
    assert errors(viewer.received()) == ["UNAUTHORIZED"]
    viewer.send({"type": "auth", "token": "v"})
    viewer.send({"type": "list"})
    assert viewer.received() == [
        {
            "type": "sessions",
            "sessions": [{"sessionId": "a1", "status": "running", "metadata": {}, "lastSeq": 2}],
        }
    ]
    other = Peer(hub)
    other.send({"type": "auth", "token": "all"})
    other.send({"type": "list"})
    [reply] = other.received()
    assert [s["sessionId"] for s in reply["sessions"]] == ["a1", "b1"]


def test_ping_pong() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    viewer.send({"type": "ping"})
    assert viewer.received() == [{"type": "pong"}]
    framed = Peer(hub, framed=True)
    framed.send({"type": "ping"})
    assert framed.client.data_to_send() == b'\x81\x0f{"type":"pong"}'


def test_invalid_message_gets_an_error_and_the_client_goes_on() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    viewer.send("{not json")
    viewer.send({"type": "subscribe", "sessionId": 7})
    viewer.send({"type": "ping"})
    got = viewer.received()
    assert got[0]["code"] == "INVALID_MESSAGE" and "invalid JSON" in got[0]["message"]
    assert got[1]["code"] == "INVALID_MESSAGE" and "$.sessionId" in got[1]["message"]
    assert got[2] == {"type": "pong"}
    assert viewer.client.close_request is None
    assert hub.counters.errors_sent == 2


def test_message_too_large() -> None:
    hub = Hub(Limits(max_message_size=100), authenticator=OPEN)
    viewer = Peer(hub)
    viewer.send({"type": "log", "sessionId": "s", "message": "x" * 200})
    [error] = viewer.received()
    assert error["code"] == "MESSAGE_TOO_LARGE"
    assert "exceeds MAX_MESSAGE_SIZE (100)" in error["message"]
    assert "s" not in hub.sessions


# --- backpressure -------------------------------------------------------------------------


@pytest.mark.parametrize("framed", [False, True])
def test_drop_policy_sends_exact_gaps(framed: bool) -> None:
    hub = Hub(Limits(connection_buffer=500), authenticator=OPEN)
    viewer = Peer(hub, framed=framed)
    viewer.subscribe("s")
    viewer.received()
    # each log entry is ~100 bytes: five fit under 500, the rest drop
    publish(hub, "s", 12, size=20)
    assert viewer.client.outbox.held >= 500
    got = viewer.received()
    logs = seqs(got)
    assert logs == list(range(1, len(logs) + 1))
    assert got[-1] == {
        "type": "gap",
        "sessionId": "s",
        "fromSeq": len(logs) + 1,
        "toSeq": 12,
        "reason": "slow_consumer",
    }
    assert hub.counters.slow_consumer_drops == 12 - len(logs)
    assert hub.counters.gaps == 1
    # drained: delivery resumes
    publish(hub, "s", 1)
    assert seqs(viewer.received()) == [13]


def test_gap_is_sent_before_the_next_entry_of_its_session() -> None:
    hub = Hub(Limits(connection_buffer=300), authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("a")
    viewer.subscribe("b")
    viewer.received()  # two SESSION_NOT_FOUND: pending until created
    publish(hub, "a", 6, size=20)  # fills the buffer; a's later entries drop
    dropped_from = len(seqs([json.loads(m) for m in viewer.client.outbox.chunks])) + 1
    publish(hub, "b", 1)  # dropped too
    # the runtime takes the bytes and writes them, without a drain of the gaps
    box = viewer.client.outbox
    box.take()
    box.sent(box.in_flight)
    assert dropped_from <= 6
    publish(hub, "a", 1)
    publish(hub, "b", 1)
    got = viewer.received()
    items = [
        (m["type"], m["sessionId"], m.get("seq"), m.get("fromSeq"), m.get("toSeq"))
        for m in got
        if m["type"] in ("gap", "log")
    ]
    # The gap comes once, after what was queued before the drop and before
    # the next entry of its session.
    gap, entry = ("gap", "a", None, dropped_from, 6), ("log", "a", 7, None, None)
    assert items.count(gap) == 1, items
    assert items.index(gap) < items.index(entry), items
    # b was created while the viewer was over budget: it joined as a paged
    # replay from its first entry, so nothing of b was dropped.
    assert [i for i in items if i[1] == "b"] == [
        ("log", "b", 1, None, None),
        ("log", "b", 2, None, None),
    ]
    assert [i for i in items if i[1] == "a"][-2:] == [
        ("gap", "a", None, dropped_from, 6),
        ("log", "a", 7, None, None),
    ]


def test_status_entries_are_never_dropped() -> None:
    hub = Hub(Limits(connection_buffer=200), authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("s")
    viewer.received()
    publish(hub, "s", 5, size=40)  # 1..5: the buffer fills after the first one or two
    hub.publish_status("s", status="running", metadata={"n": 1}, now=T0)  # 6
    publish(hub, "s", 2, size=40)  # 7, 8
    hub.publish_status("s", status="stopped", now=T0)  # 9
    got = [m for m in viewer.received() if not is_snapshot(m) and m["type"] != "error"]
    items = [(m["type"], m.get("seq") or (m["fromSeq"], m["toSeq"])) for m in got]
    kept = [i for i in items if i[0] == "log" and i[1] < 6]
    assert kept and kept == [("log", n) for n in range(1, len(kept) + 1)]
    assert items == [
        *kept,
        ("gap", (len(kept) + 1, 5)),
        ("status", 6),
        ("gap", (7, 8)),
        ("status", 9),
    ]


def test_private_replies_are_never_dropped() -> None:
    hub = Hub(Limits(connection_buffer=100), authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("s")
    publish(hub, "s", 10, size=50)
    viewer.send({"type": "ping"})
    viewer.subscribe("nope")
    got = viewer.received()
    assert {"type": "pong"} in got
    assert "SESSION_NOT_FOUND" in errors(got)


def test_replay_is_paged_through_the_budget() -> None:
    hub = Hub(Limits(connection_buffer=1000), authenticator=OPEN)
    publish(hub, "s", 100, size=50)
    frame = len(hub.sessions["s"].frames[0])
    viewer = Peer(hub, framed=True)
    box = viewer.client.outbox
    viewer.subscribe("s", since=0)
    # One page: at most one frame past the budget, never the whole history.
    assert 1000 <= box.held < 1000 + frame
    assert hub.queued_bytes == box.held
    assert viewer.client in hub.sessions["s"].lagging
    assert not viewer.client.wants_read
    # A live entry published during the replay is read from history: no gap.
    publish(hub, "s", 1)
    # The runtime takes a page: still counted until it confirms the write.
    data = viewer.client.data_to_send()
    assert box.held == box.in_flight == len(data)
    assert viewer.client.data_to_send() == b""
    # Confirmed: the next page is copied in.
    viewer.client.bytes_sent(len(data))
    assert 1000 <= box.held < 1000 + frame
    got = parse_frames(data) + viewer.received()
    assert seqs(got) == list(range(1, 102))
    assert not [m for m in got if m["type"] == "gap"]
    assert box.held == 0 and hub.queued_bytes == 0
    assert viewer.client in hub.sessions["s"].subscribers
    publish(hub, "s", 1)
    assert seqs(viewer.received()) == [102]


def test_subscribing_again_while_over_budget_is_refused() -> None:
    hub = Hub(Limits(connection_buffer=1000), authenticator=OPEN)
    publish(hub, "s", 100, size=50)
    viewer = Peer(hub)
    viewer.subscribe("s", since=0)
    viewer.subscribe("s", since=0)  # an embedder that does not honour wants_read
    got = viewer.received()
    assert errors(got) == ["RATE_LIMITED"]
    assert seqs(got) == list(range(1, 101))


def test_replay_overtaken_by_history_eviction_sends_an_evicted_gap() -> None:
    hub = Hub(Limits(connection_buffer=600, history_lines=20), authenticator=OPEN)
    publish(hub, "s", 20, size=50)
    viewer = Peer(hub, framed=True)
    viewer.subscribe("s", since=0)
    first_page = viewer.client.data_to_send()
    viewer.client.bytes_sent(len(first_page))
    # 30 more entries push everything not yet replayed out of history.
    publish(hub, "s", 30, size=50)
    got = parse_frames(first_page) + viewer.received()
    logs = seqs(got)
    gaps = [(m["fromSeq"], m["toSeq"], m["reason"]) for m in got if m["type"] == "gap"]
    assert len(gaps) == 1 and gaps[0][2] == "evicted"
    assert gaps[0][0] == logs[logs.index(gaps[0][0] - 1)] + 1
    assert logs[-1] == 50 and logs == sorted(set(logs))
    assert set(logs) | set(range(gaps[0][0], gaps[0][1] + 1)) == set(range(1, 51))


def test_disconnect_policy_closes_1013() -> None:
    hub = Hub(Limits(connection_buffer=300, slow_consumer="disconnect"), authenticator=OPEN)
    slow = Peer(hub)
    fast = Peer(hub)
    for peer in (slow, fast):
        peer.subscribe("s")
        peer.received()
    for _ in range(10):
        publish(hub, "s", 1, size=40)
        fast.received()
    code, reason = slow.client.close_request  # type: ignore[misc]
    assert code is CloseCode.TRY_AGAIN_LATER
    assert "slow consumer" in reason
    assert hub.counters.slow_consumer_disconnects == 1
    assert slow.client not in hub.sessions["s"].viewers_plain
    # closed clients take nothing more; the others go on
    before = len(slow.client.outbox.chunks)
    publish(hub, "s", 1)
    assert len(slow.client.outbox.chunks) == before
    assert seqs(fast.received()) == [11]
    assert slow.client in hub.take_ready() or slow.client.outbox.ready


def test_pool_over_budget_pauses_producers_only() -> None:
    hub = Hub(Limits(memory_budget=3000, connection_buffer=100_000), authenticator=OPEN)
    producer = Peer(hub)
    idle_viewer = Peer(hub)
    viewers = [Peer(hub, framed=True) for _ in range(3)]
    producer.status("s", "running")
    for viewer in viewers:
        viewer.subscribe("s")
        viewer.received()
    assert producer.client.wants_read and not hub.producers_paused
    for _ in range(10):
        producer.log("s", "x" * 100)
    # History was shed first (it keeps the newest entry), then the pool is
    # over on the viewers' queued bytes alone.
    assert len(hub.sessions["s"].frames) < 11
    assert hub.queued_bytes == sum(v.client.outbox.held for v in viewers)
    assert hub.producers_paused
    assert not producer.client.wants_read and producer.client.paused_by_pool
    # Viewers are bounded by their own budget, never paused by the pool.
    assert idle_viewer.client.wants_read and all(v.client.wants_read for v in viewers)
    for viewer in viewers[:2]:
        viewer.received()
    assert not hub.producers_paused and producer.client.wants_read
    viewers[2].client.disconnect()
    assert hub.queued_bytes == 0


def test_history_bounded_by_bytes_and_lines() -> None:
    hub = Hub(Limits(history_bytes=2000, history_lines=1000), authenticator=OPEN)
    publish(hub, "s", 100, size=100)
    session = hub.sessions["s"]
    assert session.history_bytes == sum(map(len, session.frames)) <= 2000
    assert hub.history_bytes == session.history_bytes
    assert session.first_seq > 1 and session.seq == 100
    hub2 = Hub(Limits(history_lines=5), authenticator=OPEN)
    publish(hub2, "s", 10)
    assert len(hub2.sessions["s"].frames) == 5
    assert hub2.history_bytes == sum(map(len, hub2.sessions["s"].frames))
    # One entry bigger than the bound is still kept: the newest always is.
    hub3 = Hub(Limits(history_bytes=100), authenticator=OPEN)
    publish(hub3, "s", 3, size=500)
    assert len(hub3.sessions["s"].frames) == 1


def test_memory_budget_sheds_the_largest_history_first() -> None:
    hub = Hub(Limits(memory_budget=20_000), authenticator=OPEN)
    publish(hub, "small", 10, size=50)  # about 1 KiB: a failed build's lines
    publish(hub, "flood", 1000, size=100)
    assert hub.history_bytes <= 20_000
    assert hub.sessions["small"].first_seq == 1  # untouched
    assert hub.sessions["flood"].first_seq > 1
    assert hub.counters.history_shed > 0
    viewer = Peer(hub)
    viewer.subscribe("flood", since=0)
    got = viewer.received()
    assert [m["reason"] for m in got if m["type"] == "gap"] == ["evicted"]


def test_a_long_message_is_cut_on_its_escaped_size() -> None:
    hub = Hub(Limits(max_line_bytes=1000), authenticator=OPEN)
    hub.publish_log("s", level="info", message="\x01" * 5000, timestamp=STAMP, now=T0)
    hub.publish_log("s", level="info", message="short", timestamp=STAMP, now=T0)
    viewer = Peer(hub)
    viewer.subscribe("s", since=0)
    logs = [m for m in viewer.received() if m["type"] == "log"]
    cut = logs[0]["message"]
    assert cut.endswith(" bytes]") and "…[truncated " in cut
    assert len(json.dumps(cut, ensure_ascii=False)) - 2 <= 1000
    kept = cut[: cut.index(" …[truncated")]
    assert cut.endswith(f"[truncated {5000 - len(kept)} bytes]")
    assert logs[1]["message"] == "short"
    assert hub.counters.lines_cut == 1


def test_a_message_cut_upstream_keeps_one_marker_with_the_counts_added() -> None:
    from pcclog_core._limits import cut_text

    upstream = "y" * 2000 + " …[truncated 500 bytes]"
    cut = cut_text(upstream, 1000)
    kept, marker = cut.split(" …[truncated ")
    assert cut.count("truncated") == 1
    assert marker == f"{500 + 2000 - len(kept)} bytes]"
    assert len(cut.encode()) <= 1000
    assert cut_text("short …[truncated 5 bytes]", 1000) == "short …[truncated 5 bytes]"


def test_take_ready_lists_each_client_once() -> None:
    hub = Hub(authenticator=OPEN)
    a, b = Peer(hub), Peer(hub)
    publish(hub, "s", 1)
    a.subscribe("s")
    b.subscribe("s")
    assert hub.take_ready() == [a.client, b.client]
    # listed once until drained: the runtime drains what it takes
    publish(hub, "s", 1)
    assert hub.take_ready() == []
    a.received()
    b.received()
    publish(hub, "s", 3)
    ready = hub.take_ready()
    assert ready == [a.client, b.client] or ready == [b.client, a.client]
    assert hub.take_ready() == []
    a.received()
    b.received()
    publish(hub, "s", 1)
    assert len(hub.take_ready()) == 2
    assert hub.counters.deliveries == 2 * 5


# --- rate limiting and abuse --------------------------------------------------------------


def test_rate_limited_then_refilled() -> None:
    hub = Hub(Limits(rate_limit=2, rate_burst=3), authenticator=OPEN)
    viewer = Peer(hub)
    for _ in range(4):
        viewer.send({"type": "ping"}, now=T0)
    got = viewer.received()
    assert kinds(got) == ["pong", "pong", "pong", "error"]
    assert got[3]["code"] == "RATE_LIMITED"
    assert "more than 2 messages per second" in got[3]["message"]
    assert hub.counters.rate_limited == 1
    viewer.send({"type": "ping"}, now=T0 + 0.25)
    assert errors(viewer.received()) == ["RATE_LIMITED"]
    viewer.send({"type": "ping"}, now=T0 + 0.75)
    assert viewer.received() == [{"type": "pong"}]


def test_repeated_abuse_closes_1008() -> None:
    hub = Hub(
        Limits(rate_limit=1, rate_burst=1, abuse_limit=3, abuse_window=10), authenticator=OPEN
    )
    viewer = Peer(hub)
    for _ in range(4):
        viewer.send({"type": "ping"}, now=T0)
    assert viewer.client.close_request is None
    viewer.send({"type": "ping"}, now=T0)
    code, reason = viewer.client.close_request  # type: ignore[misc]
    assert code is CloseCode.POLICY_VIOLATION
    assert "more than 3 rejected messages in 10s" in reason
    # a closed client ignores further input
    errors_sent = hub.counters.errors_sent
    viewer.send({"type": "ping"}, now=T0)
    assert hub.counters.errors_sent == errors_sent


def test_abuse_window_resets() -> None:
    hub = Hub(Limits(abuse_limit=2, abuse_window=10), authenticator=OPEN)
    viewer = Peer(hub)
    for step in range(10):
        viewer.send("nope", now=T0 + step * 6)
    assert viewer.client.close_request is None
    assert errors(viewer.received()) == ["INVALID_MESSAGE"] * 10


def test_producer_entries_are_not_rate_limited() -> None:
    hub = Hub(Limits(rate_limit=1, rate_burst=1, abuse_limit=1), authenticator=OPEN)
    producer = Peer(hub, default_session="c")
    for i in range(20):
        producer.log("s", f"m{i}")
        producer.status("s", "running")
        producer.send({"type": "LOG", "data": {"message": "x"}})
        producer.send({"type": "STATUS", "data": {"status": "running"}})
        producer.send({"type": "ERROR", "data": {"error": "e"}})
        producer.send({"type": "COMPLETE", "data": {"exitCode": 0}})
    assert producer.received() == []
    assert producer.client.close_request is None
    assert hub.sessions["s"].seq == 40
    assert hub.sessions["c"].seq == 80


def test_viewer_log_is_rate_limited_like_anything_else() -> None:
    hub = auth_hub("v:view:*", rate_limit=1, rate_burst=1)
    viewer = Peer(hub)
    viewer.send({"type": "auth", "token": "v"})
    viewer.log("s")
    assert errors(viewer.received()) == ["RATE_LIMITED"]


# --- authentication -----------------------------------------------------------------------


def test_unauthenticated_client_is_refused_and_then_authenticates() -> None:
    hub = auth_hub("good:view:*")
    viewer = Peer(hub)
    assert viewer.client.grant is None
    viewer.subscribe("s")
    [error] = viewer.received()
    assert error["code"] == "UNAUTHORIZED" and "not authenticated" in error["message"]
    viewer.send({"type": "auth", "token": "bad"})
    [error] = viewer.received()
    assert error["code"] == "UNAUTHORIZED"
    assert error["message"] == "authentication failed: invalid token"
    assert "bad" not in error["message"]
    viewer.send({"type": "auth", "token": "good"})
    assert viewer.received() == []
    viewer.subscribe("s")
    assert errors(viewer.received()) == ["SESSION_NOT_FOUND"]
    assert hub.counters.auth_failures == 2


def test_subscribe_with_auth_field() -> None:
    hub = auth_hub("good:view:s*")
    publish(hub, "s1", 1)
    viewer = Peer(hub)
    viewer.send({"type": "subscribe", "sessionId": "s1", "auth": {"token": "good"}})
    assert seqs(viewer.received()) == [1]
    other = Peer(hub)
    other.send({"type": "subscribe", "sessionId": "s1", "auth": {"token": "wrong"}})
    assert errors(other.received()) == ["UNAUTHORIZED"]
    viewer.send({"type": "subscribe", "sessionId": "x1"})
    [error] = viewer.received()
    assert error["code"] == "UNAUTHORIZED"
    assert error["message"] == "token does not cover session 'x1'"
    assert error["sessionId"] == "x1"


def test_viewer_without_produce_role_cannot_publish() -> None:
    hub = auth_hub("v:view:*")
    viewer = Peer(hub)
    viewer.send({"type": "auth", "token": "v"})
    viewer.log("s")
    [error] = viewer.received()
    assert error["code"] == "UNAUTHORIZED"
    assert "lacks the 'produce' role" in error["message"]
    assert "s" not in hub.sessions


def test_producer_cannot_view() -> None:
    hub = auth_hub("p:produce:*")
    producer = Peer(hub)
    producer.send({"type": "auth", "token": "p"})
    producer.subscribe("s")
    producer.subscribe("*")
    producer.send({"type": "list"})
    assert errors(producer.received()) == ["UNAUTHORIZED"] * 3


def test_producer_outside_its_globs_publishes_nothing() -> None:
    hub = auth_hub("p:produce:team-*,v:view:*")
    viewer = Peer(hub)
    viewer.send({"type": "subscribe", "sessionId": "*", "auth": {"token": "v"}})
    viewer.subscribe("other")
    viewer.received()
    producer = Peer(hub, default_session="other")
    producer.send({"type": "auth", "token": "p"})
    producer.log("other")
    producer.status("other", "running")
    producer.send({"type": "LOG", "containerID": "other", "data": {"message": "x"}})
    producer.send({"type": "COMPLETE", "data": {"exitCode": 0}})
    got = producer.received()
    assert errors(got) == ["UNAUTHORIZED"] * 4
    assert all(m["message"] == "token does not cover session 'other'" for m in got)
    assert hub.sessions == {}
    assert viewer.received() == []
    producer.log("team-1")
    assert producer.received() == []
    assert [m["sessionId"] for m in viewer.received()] == ["team-1", "team-1"]


def test_auth_deadline_closes_1008() -> None:
    hub = auth_hub("t", auth_timeout=10)
    viewer = Peer(hub, now=T0)
    assert viewer.client.next_deadline() == T0 + 10
    viewer.client.handle_timeout(T0 + 9.9)
    assert viewer.client.close_request is None
    viewer.client.handle_timeout(T0 + 10)
    assert viewer.client.close_request == (
        CloseCode.POLICY_VIOLATION,
        "authentication deadline passed",
    )
    assert hub.counters.auth_failures == 1


def test_authenticating_clears_the_auth_deadline() -> None:
    hub = auth_hub("t", auth_timeout=10)
    viewer = Peer(hub, now=T0)
    viewer.send({"type": "auth", "token": "t"}, now=T0 + 1)
    assert viewer.client.next_deadline() is None
    viewer.client.handle_timeout(T0 + 100)
    assert viewer.client.close_request is None


def test_no_deadline_when_auth_is_disabled() -> None:
    viewer = Peer(Hub(authenticator=OPEN))
    assert viewer.client.grant is not None
    assert viewer.client.next_deadline() is None


def test_token_expiry_mid_stream_closes_1008() -> None:
    hub = Hub(authenticator=Authenticator(jwt_secret=SECRET))
    token = jwt.encode(
        {"exp": WALL + 30, "sessions": ["*"], "roles": ["view"]}, SECRET, algorithm="HS256"
    )
    viewer = Peer(hub, now=T0)
    viewer.send({"type": "subscribe", "sessionId": "*", "auth": {"token": token}}, now=T0)
    # monotonic and wall clocks differ: the deadline is on the monotonic one
    assert viewer.client.next_deadline() == T0 + 30
    publish(hub, "s", 1)
    viewer.client.handle_timeout(T0 + 29)
    assert viewer.client.close_request is None
    assert seqs(viewer.received()) == [1]
    viewer.client.handle_timeout(T0 + 30)
    assert viewer.client.close_request == (CloseCode.POLICY_VIOLATION, "token expired")
    publish(hub, "s", 1)
    assert viewer.received() == []


def test_expired_jwt_is_refused() -> None:
    hub = Hub(authenticator=Authenticator(jwt_secret=SECRET))
    token = jwt.encode({"exp": WALL - 1}, SECRET, algorithm="HS256")
    viewer = Peer(hub)
    viewer.send({"type": "auth", "token": token})
    [error] = viewer.received()
    assert error == {
        "type": "error",
        "code": "UNAUTHORIZED",
        "message": "authentication failed: token has expired",
    }


def test_narrower_grant_detaches_at_once() -> None:
    hub = auth_hub("all:view:*,a:view:a*")
    viewer = Peer(hub)
    viewer.send({"type": "auth", "token": "all"})
    publish(hub, "a1", 1)
    publish(hub, "b1", 1)
    viewer.subscribe("a1")
    viewer.subscribe("b1")
    viewer.received()
    viewer.send({"type": "auth", "token": "a"})
    publish(hub, "a1", 1)
    publish(hub, "b1", 1)
    assert [(m["sessionId"], m["seq"]) for m in viewer.received()] == [("a1", 2)]


def test_grant_given_by_the_runtime() -> None:
    hub = auth_hub("unused")
    grant = Grant(roles=frozenset({Role.VIEW}), globs=("s",), expires=WALL + 5)
    viewer = Peer(hub, grant=grant, now=T0)
    assert viewer.client.expires_at == T0 + 5
    viewer.subscribe("s")
    assert errors(viewer.received()) == ["SESSION_NOT_FOUND"]


# --- producers and the wrapper dialect (SPEC §3) ------------------------------------------


def test_log_timestamp_stamped_or_normalized() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("*")
    producer = Peer(hub)
    producer.send({"type": "log", "sessionId": "s"}, wall=WALL + 0.25)
    producer.log("s", timestamp="2024-01-26T14:45:30.5+01:00")
    producer.log("s", timestamp="2024-01-26T13:45:30.123Z")
    producer.log("s", timestamp="yesterday")
    got = [m for m in viewer.received() if m["type"] == "log"]
    assert [m["timestamp"] for m in got] == [
        format_wall(WALL + 0.25),
        "2024-01-26T13:45:30.500Z",
        "2024-01-26T13:45:30.123Z",
    ]
    [error] = producer.received()
    assert error["code"] == "INVALID_MESSAGE"
    assert "'yesterday' is not an ISO 8601 date-time" in error["message"]
    assert "$.timestamp" in error["message"]


def test_log_data_null_is_absent() -> None:
    hub = Hub(authenticator=OPEN)
    viewer = Peer(hub)
    viewer.subscribe("*")
    Peer(hub).log("s", data=None)
    log = viewer.received()[-1]
    assert "data" not in log


def _wrapper_run(messages: list[dict[str, Any]], default: str | None = None) -> tuple[Any, Any]:
    hub = auth_hub("v:view:*,p:produce:*")
    viewer = Peer(hub)
    viewer.send({"type": "subscribe", "sessionId": "*", "auth": {"token": "v"}})
    viewer.received()
    producer = Peer(hub, default_session=default)
    producer.send({"type": "auth", "token": "p"})
    for message in messages:
        producer.send(message)
    return [m for m in viewer.received() if not is_snapshot(m)], producer.received()


def test_wrapper_log() -> None:
    got, replies = _wrapper_run(
        [
            {
                "type": "LOG",
                "containerID": "c1",
                "timestamp": "2024-01-26T13:45:30.123Z",
                "data": {"level": "warn", "message": "hello", "metadata": {"file": "a.py"}},
            },
            {"type": "LOG", "containerID": "c1", "data": {"message": "plain"}},
        ]
    )
    assert replies == []
    assert got == [
        {
            "type": "log",
            "sessionId": "c1",
            "timestamp": "2024-01-26T13:45:30.123Z",
            "level": "warn",
            "message": "hello",
            "data": {"file": "a.py"},
            "seq": 1,
        },
        {
            "type": "log",
            "sessionId": "c1",
            "timestamp": STAMP,
            "level": "info",
            "message": "plain",
            "seq": 2,
        },
    ]


@pytest.mark.parametrize(
    ("phase", "status"),
    [
        ("starting", "running"),
        ("running", "running"),
        ("completed", "stopped"),
        ("failed", "error"),
        ("error", "error"),
    ],
)
def test_wrapper_status(phase: str, status: str) -> None:
    got, replies = _wrapper_run(
        [{"type": "STATUS", "containerID": "c1", "data": {"status": phase, "message": "m"}}]
    )
    assert replies == []
    assert got == [
        {
            "type": "status",
            "sessionId": "c1",
            "status": status,
            "metadata": {"phase": phase, "message": "m"},
            "seq": 1,
        }
    ]


def test_wrapper_error_becomes_an_error_log() -> None:
    got, _ = _wrapper_run(
        [
            {
                "type": "ERROR",
                "containerID": "c1",
                "data": {"error": "boom", "code": "E42", "details": {"line": 3}},
            },
            {"type": "ERROR", "containerID": "c1", "data": {"error": "bare"}},
        ]
    )
    assert [(m["type"], m["level"], m["message"]) for m in got] == [
        ("log", "error", "boom"),
        ("log", "error", "bare"),
    ]
    assert got[0]["data"] == {"code": "E42", "details": {"line": 3}}
    assert got[1]["data"] == {}


@pytest.mark.parametrize(("exit_code", "status"), [(0, "stopped"), (1, "error"), (137, "error")])
def test_wrapper_complete(exit_code: int, status: str) -> None:
    got, _ = _wrapper_run(
        [
            {
                "type": "COMPLETE",
                "containerID": "c1",
                "data": {"exitCode": exit_code, "message": "done", "duration": 12.5},
            }
        ]
    )
    assert got == [
        {
            "type": "status",
            "sessionId": "c1",
            "status": status,
            "metadata": {"exitCode": exit_code, "duration": 12.5, "message": "done"},
            "seq": 1,
        }
    ]


def test_wrapper_complete_ends_the_session() -> None:
    hub = Hub(Limits(session_timeout=60), authenticator=OPEN)
    producer = Peer(hub, default_session="c1")
    producer.send({"type": "COMPLETE", "data": {"exitCode": 0}}, now=T0)
    assert hub.next_deadline() == T0 + 60


def test_wrapper_heartbeat_is_answered() -> None:
    got, replies = _wrapper_run([{"type": "HEARTBEAT", "containerID": "c1", "data": {}}])
    assert got == []
    assert replies == [
        {"type": "HEARTBEAT", "containerID": "c1", "timestamp": STAMP, "data": {"timestamp": STAMP}}
    ]


def test_wrapper_container_id_from_the_url() -> None:
    got, replies = _wrapper_run(
        [
            {"type": "LOG", "data": {"message": "x"}},
            {"type": "HEARTBEAT"},
            {"type": "LOG", "containerID": "explicit", "data": {"message": "y"}},
        ],
        default="from-url",
    )
    assert [(m["sessionId"], m["message"]) for m in got] == [("from-url", "x"), ("explicit", "y")]
    assert replies[0]["containerID"] == "from-url"


def test_wrapper_without_container_id() -> None:
    got, replies = _wrapper_run([{"type": "LOG", "data": {"message": "x"}}])
    assert got == []
    [error] = replies
    assert error["code"] == "INVALID_MESSAGE"
    assert "containerID is missing" in error["message"]


def test_wrapper_bad_timestamp() -> None:
    got, replies = _wrapper_run(
        [{"type": "LOG", "containerID": "c", "timestamp": "nope", "data": {"message": "x"}}]
    )
    assert got == []
    assert errors(replies) == ["INVALID_MESSAGE"]
    assert "$.timestamp" in replies[0]["message"]


# --- the state machine ----------------------------------------------------------------------

SESSIONS = ("a", "b", "c", "d")
VIEWER_GRANTS = (
    Grant(roles=frozenset({Role.VIEW})),
    Grant(roles=frozenset({Role.VIEW}), globs=("a", "b")),
    Grant(roles=frozenset({Role.VIEW})),
)


class ViewerModel:
    """What one viewer has seen, per session, since its last snapshot, and
    the bytes its runtime holds: taken (``wire``) and written, not yet
    parsed (``read``)."""

    def __init__(self, index: int, peer: Peer) -> None:
        self.index = index
        self.peer = peer
        # session -> list of items: ("log"|"status", seq) or ("gap", from, to)
        self.segments: dict[str, list[tuple[Any, ...]]] = {}
        self.seen_max: dict[str, int] = {}
        self.wire = bytearray()
        self.read = bytearray()


# Largest chunk the machine can queue past a budget in one step: a page
# ends with one frame over, then one message's replies (a snapshot, a gap,
# an error or a ``sessions`` list of up to 3 sessions).
_OVERSHOOT = 2_000


class HubMachine(RuleBasedStateMachine):
    """Random producers, viewers that drain or don't (a runtime that takes
    bytes and confirms them later, in part), evictions by time and by the
    memory budget, under both slow-consumer policies.

    Invariants: every byte is counted — each outbox's ``held`` is the bytes
    it really queues plus those in flight, the pool is their sum plus the
    bytes of every history — and bounded (``CONNECTION_BUFFER`` plus one
    step's overshoot per viewer, the runtime honouring ``wants_read``);
    per viewer per session, after a ``status`` snapshot the entries and
    gaps are contiguous, so seqs strictly increase, every missed seq is in
    exactly one gap and no slow-consumer gap covers a ``status``. At the end
    a drained viewer has reached every attached session's last seq.
    """

    @initialize(
        policy=st.sampled_from(["drop", "disconnect"]), budget=st.sampled_from([800, 10**6])
    )
    def setup(self, policy: str, budget: int) -> None:
        self.now = T0
        limits = Limits(
            connection_buffer=300,
            history_lines=6,
            history_bytes=900,
            memory_budget=budget,
            subscribe_tail=3,
            max_sessions=3,
            session_timeout=5,
            max_subscriptions=8,
            rate_burst=100_000,
            abuse_limit=100_000,
            slow_consumer=policy,  # type: ignore[arg-type]
        )
        self.hub = Hub(limits, Authenticator(static_tokens=parse_static_tokens("unused")))
        producer_grant = Grant(roles=frozenset({Role.PRODUCE}))
        self.producer = Peer(self.hub, grant=producer_grant, now=self.now)
        self.viewers = [self._new_viewer(i) for i in range(len(VIEWER_GRANTS))]
        # (session, generation) -> {seq: kind}; the generation is in every entry
        self.generation = dict.fromkeys(SESSIONS, 0)
        self.kinds: dict[tuple[str, int], dict[int, str]] = {}

    def _new_viewer(self, index: int) -> ViewerModel:
        peer = Peer(self.hub, framed=(index != 0), grant=VIEWER_GRANTS[index], now=self.now)
        return ViewerModel(index, peer)

    # --- producers

    def _current(self, session: str) -> tuple[str, int]:
        if session not in self.hub.sessions:
            self.generation[session] += 1
        return (session, self.generation[session])

    @rule(session=st.sampled_from(SESSIONS), size=st.integers(0, 120))
    def publish_log(self, session: str, size: int) -> None:
        if not self.producer.client.wants_read:
            event("producer paused by the pool")
            return
        key = self._current(session)
        before = session in self.hub.sessions
        self.producer.log(session, f"g{key[1]}:" + "x" * size, now=self.now)
        self._check_producer(session, key, "log", before)

    @rule(session=st.sampled_from(SESSIONS), count=st.integers(2, 12))
    def publish_burst(self, session: str, count: int) -> None:
        for _ in range(count):
            self.publish_log(session, 40)

    @rule(
        steps=st.lists(
            st.tuples(st.sampled_from(SESSIONS), st.sampled_from(["log", "log", "log", "status"])),
            min_size=1,
            max_size=15,
        )
    )
    def publish_batch(self, steps: list[tuple[str, str]]) -> None:
        """What one producer read does in the runtime: entries published
        inside a batch, their fan-out deferred and joined per session."""
        self.hub.begin_batch()
        try:
            for session, kind in steps:
                if kind == "log":
                    self.publish_log(session, 40)
                else:
                    self.publish_status(session, "running")
        finally:
            self.hub.end_batch()
        event("batch")

    @rule(
        session=st.sampled_from(SESSIONS), status=st.sampled_from(["running", "stopped", "error"])
    )
    def publish_status(self, session: str, status: str) -> None:
        if not self.producer.client.wants_read:
            return
        key = self._current(session)
        before = session in self.hub.sessions
        self.producer.status(session, status, metadata={"gen": key[1]}, now=self.now)
        self._check_producer(session, key, "status", before)

    def _check_producer(self, session: str, key: tuple[str, int], kind: str, before: bool) -> None:
        replies = self.producer.received()
        if session in self.hub.sessions:
            assert replies == []
            hub_session = self.hub.sessions[session]
            self.kinds.setdefault(key, {})[hub_session.seq] = kind
            if not before:
                assert hub_session.seq == 1
        else:
            # only refused when every session runs
            assert errors(replies) == ["TOO_MANY_SESSIONS"]
            event("TOO_MANY_SESSIONS")
            assert not before
            assert not self.hub._ended
            self.generation[session] -= 1

    # --- viewers

    @rule(
        viewer=st.integers(0, 2),
        session=st.sampled_from((*SESSIONS, "*")),
        mode=st.sampled_from(["plain", "since", "tail", "since-seen"]),
        n=st.integers(0, 12),
    )
    def subscribe(self, viewer: int, session: str, mode: str, n: int) -> None:
        model = self.viewers[viewer]
        if not model.peer.client.wants_read:
            event("viewer not read: over its budget")
            return
        extra: dict[str, Any] = {}
        if mode == "since":
            extra["since"] = n
        elif mode == "tail":
            extra["tail"] = n
        elif mode == "since-seen" and session != "*":
            extra["since"] = model.seen_max.get(session, 0)
        model.peer.subscribe(session, now=self.now, **extra)

    @rule(viewer=st.integers(0, 2), session=st.sampled_from((*SESSIONS, "*")))
    def unsubscribe(self, viewer: int, session: str) -> None:
        model = self.viewers[viewer]
        if model.peer.client.wants_read:
            model.peer.send({"type": "unsubscribe", "sessionId": session}, now=self.now)

    @rule(viewer=st.integers(0, 2))
    def ping(self, viewer: int) -> None:
        model = self.viewers[viewer]
        if model.peer.client.wants_read:
            model.peer.send({"type": "ping"}, now=self.now)
            model.peer.send({"type": "list"}, now=self.now)

    @rule(viewer=st.integers(1, 2))
    def take(self, viewer: int) -> None:
        """The runtime takes what is queued; it is written later."""
        model = self.viewers[viewer]
        model.wire += model.peer.client.data_to_send()

    @rule(viewer=st.integers(1, 2), part=st.sampled_from([1, 7, 100, 10**6]))
    def confirm(self, viewer: int, part: int) -> None:
        """The runtime writes ``part`` bytes of what it took."""
        model = self.viewers[viewer]
        count = min(part, len(model.wire))
        model.peer.client.bytes_sent(count)
        model.read += model.wire[:count]
        del model.wire[:count]
        self._parse(model)

    def _parse(self, model: ViewerModel) -> None:
        data = model.read
        while len(data) >= 2:
            length = data[1]
            head = 2
            if length == 126:
                if len(data) < 4:
                    return
                length = int.from_bytes(data[2:4], "big")
                head = 4
            if len(data) < head + length:
                return
            self._observe(model, json.loads(bytes(data[head : head + length])))
            del data[: head + length]

    @rule(viewer=st.integers(0, 2))
    def drain(self, viewer: int) -> None:
        model = self.viewers[viewer]
        client = model.peer.client
        if client.framed:
            self.confirm(viewer, len(model.wire))
        for message in model.peer.received():
            self._observe(model, message)
        if client.close_request is not None:
            code, reason = client.close_request
            assert code is CloseCode.TRY_AGAIN_LATER and "slow consumer" in reason
            assert self.hub.limits.slow_consumer == "disconnect"
            event("closed 1013")
            self.reconnect(viewer)

    @rule(viewer=st.integers(0, 2))
    def reconnect(self, viewer: int) -> None:
        model = self.viewers[viewer]
        model.peer.client.disconnect()
        assert model.peer.client not in self.hub.clients
        assert model.peer.client.outbox.held == 0
        self.viewers[viewer] = self._new_viewer(viewer)

    @rule(dt=st.sampled_from([0.5, 2.0, 5.0, 10.0]))
    def advance_time(self, dt: float) -> None:
        self.now += dt
        before = len(self.hub.sessions)
        self.hub.handle_timeout(self.now)
        if len(self.hub.sessions) < before:
            event("session evicted by timeout")
        deadline = self.hub.next_deadline()
        assert deadline is None or deadline > self.now

    # --- checks

    def _observe(self, model: ViewerModel, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("pong", "sessions"):
            return
        session = message["sessionId"]
        grant = VIEWER_GRANTS[model.index]
        if kind == "error":
            expected = "SESSION_NOT_FOUND" if grant.can_view(session) else "UNAUTHORIZED"
            assert message["code"] == expected, message
            return
        assert grant.can_view(session), (model.index, session)
        if is_snapshot(message):
            model.segments[session] = []
            return
        items = model.segments.get(session)
        assert items is not None, f"{kind} for {session} before any snapshot"
        if kind == "gap":
            event(f"gap {message['reason']}")
            item: tuple[Any, ...] = ("gap", message["fromSeq"], message["toSeq"], message["reason"])
            assert message["fromSeq"] <= message["toSeq"]
        else:
            assert kind in ("log", "status"), message
            item = (kind, message["seq"])
            if kind == "log":
                generation = int(message["message"].split(":")[0][1:])
            else:
                generation = message["metadata"]["gen"]
            item = (*item, generation)
            model.seen_max[session] = message["seq"]
        if items:
            previous = items[-1]
            end = previous[2] if previous[0] == "gap" else previous[1]
            start = item[1]
            assert start == end + 1, (model.index, session, items[-3:], item)
        items.append(item)
        self._check_statuses(session, items)

    def _check_statuses(self, session: str, items: list[tuple[Any, ...]]) -> None:
        generations = {i[2] for i in items if i[0] != "gap"}
        assert len(generations) <= 1, "a segment spans two sessions"
        if not generations:
            return
        published = self.kinds.get((session, generations.pop()), {})
        for item in items:
            if item[0] == "gap" and item[3] == "slow_consumer":
                # history eviction may take statuses; the slow-consumer policy never
                missed = range(item[1], item[2] + 1)
                assert all(published.get(s) == "log" for s in missed), (item, published)
            elif item[0] != "gap":
                assert published.get(item[1]) == item[0]

    @invariant()
    def every_byte_is_counted_and_bounded(self) -> None:
        if not hasattr(self, "hub"):
            return
        hub = self.hub
        limit = hub.limits.connection_buffer
        total = 0
        for client in hub.clients:
            box = client.outbox
            assert box.held == sum(len(c) for c in box.chunks) + box.in_flight
            total += box.held
        assert hub.queued_bytes == total
        history = sum(sum(map(len, s.frames)) for s in hub.sessions.values())
        assert hub.history_bytes == history
        for session in hub.sessions.values():
            assert session.history_bytes <= hub.limits.history_bytes or len(session.frames) == 1
        for model in self.viewers:
            client = model.peer.client
            assert client.outbox.held <= limit + _OVERSHOOT, client.outbox.held
            if client.framed:
                assert client.outbox.in_flight == len(model.wire)
            assert set(client._attached) <= set(hub.sessions)
            for session_id in client._attached:
                assert client.grant is not None and client.grant.can_view(session_id)

    @invariant()
    def sessions_bounded(self) -> None:
        if hasattr(self, "hub"):
            assert len(self.hub.sessions) <= self.hub.limits.max_sessions

    def teardown(self) -> None:
        """Drained, every viewer has reached each attached session's end:
        no trailing hole."""
        if not hasattr(self, "hub"):
            return
        for index in range(len(self.viewers)):
            for _ in range(200):
                model = self.viewers[index]
                client = model.peer.client
                if client.close_request is not None:
                    break
                self.drain(index)
                if not client.has_output and not model.wire:
                    break
            model = self.viewers[index]
            if model.peer.client.close_request is not None:
                continue
            for session_id in model.peer.client._attached:
                items = model.segments.get(session_id)
                # Attached, so its snapshot has come (a drained replay is live).
                assert items is not None, (index, session_id)
                if items:
                    last = self.hub.sessions[session_id].seq
                    end = items[-1][2] if items[-1][0] == "gap" else items[-1][1]
                    assert end == last, (index, session_id, items[-3:], last)


HubMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHubMachine = HubMachine.TestCase


def test_resent_producer_entries_are_applied_once() -> None:
    hub = Hub(Limits(), authenticator=OPEN)
    producer = Peer(hub)
    viewer = Peer(hub)
    for pseq in (1, 2, 3, 2, 3, 1, 4):  # a reconnect resends 2 and 3, a stale 1
        producer.log("s", f"m{pseq}", producer="p-1", pseq=pseq)
    producer.send(
        {"type": "status", "sessionId": "s", "status": "stopped", "producer": "p-1", "pseq": 5}
    )
    producer.send(
        {"type": "status", "sessionId": "s", "status": "stopped", "producer": "p-1", "pseq": 5}
    )
    # Another producer's numbering is its own; unnumbered entries always apply.
    producer.log("s", "other", producer="p-2", pseq=1)
    producer.log("s", "plain")
    producer.log("s", "plain")
    viewer.subscribe("s", since=0)
    got = viewer.received()
    assert [m.get("message", m.get("status")) for m in got if "seq" in m] == [
        "m1",
        "m2",
        "m3",
        "m4",
        "stopped",
        "other",
        "plain",
        "plain",
    ]
    assert [m["seq"] for m in got if "seq" in m] == list(range(1, 9))
    assert all("producer" not in m and "pseq" not in m for m in got)
    assert producer.received() == []


def test_batched_fan_out_joins_entries_and_keeps_order() -> None:
    hub = Hub(Limits(), authenticator=OPEN)
    producer = Peer(hub)
    early = Peer(hub, framed=True)
    producer.status("s", "running")
    early.subscribe("s")
    early.received()
    hub.begin_batch()
    for i in range(3):
        producer.log("s", f"a{i}")
    assert early.client.outbox.chunks == []  # deferred until the batch ends (or must flush)
    late = Peer(hub)
    late.subscribe("s", since=0)  # a subscribe flushes first: no duplicate, no hole
    producer.log("s", "b")
    hub.end_batch()
    assert seqs(late.received()) == [2, 3, 4, 5]
    got = early.client.data_to_send()
    early.client.bytes_sent(len(got))
    assert [m["seq"] for m in parse_frames(got)] == [2, 3, 4, 5]
    assert hub.counters.deliveries == 5 and hub.queued_bytes == 0


# --- PRODUCER_GRACE: a session whose producer vanished -----------------------------------


def test_a_session_whose_producer_vanished_becomes_error_after_the_grace() -> None:
    hub = Hub(Limits(producer_grace=60), authenticator=OPEN)
    producer = Peer(hub)
    viewer = Peer(hub)
    producer.status("job", "running")
    producer.log("job", "working")
    viewer.subscribe("job")
    viewer.received()
    producer.client.disconnect()
    # The next timeout stamps the grace; nothing happens before it ends.
    assert hub.next_deadline() == 0.0
    hub.handle_timeout(T0 + 1)
    assert hub.next_deadline() == T0 + 61
    hub.handle_timeout(T0 + 60)
    assert hub.sessions["job"].status == "running"
    hub.handle_timeout(T0 + 61)
    session = hub.sessions["job"]
    assert session.status == "error" and session.metadata["reason"] == "producer lost"
    [status] = [m for m in viewer.received() if m["type"] == "status"]
    assert status["status"] == "error" and status["metadata"]["reason"] == "producer lost"


def test_a_producer_back_within_the_grace_continues_the_session() -> None:
    hub = Hub(Limits(producer_grace=60), authenticator=OPEN)
    first = Peer(hub)
    first.status("job", "running")
    first.client.disconnect()
    hub.handle_timeout(T0 + 1)
    again = Peer(hub)
    again.log("job", "still here", now=T0 + 30)
    hub.handle_timeout(T0 + 100)
    assert hub.sessions["job"].status == "running"
    assert hub.next_deadline() is None


def test_no_grace_for_ended_sessions_other_producers_or_evicted_ones() -> None:
    hub = Hub(Limits(producer_grace=0, max_sessions=2), authenticator=OPEN)
    a, b = Peer(hub), Peer(hub)
    a.status("done", "running")
    a.status("done", "stopped")  # ended by its producer: nothing to lose
    a.status("shared", "running")
    b.log("shared", "co-producer")
    a.client.disconnect()
    hub.handle_timeout(T0 + 1)
    hub.handle_timeout(T0 + 2)
    assert hub.sessions["done"].status == "stopped"
    assert hub.sessions["shared"].status == "running"  # b still produces there
    b.client.disconnect()
    hub.handle_timeout(T0 + 3)
    hub.handle_timeout(T0 + 3)
    assert hub.sessions["shared"].status == "error"
    # An evicted and re-created session is not the one a producer left.
    c = Peer(hub)
    c.status("x", "running")
    hub._evict("x")
    hub.publish_status("x", status="running", now=T0)
    c.client.disconnect()
    hub.handle_timeout(T0 + 4)
    assert hub.sessions["x"].status == "running" and hub.sessions["x"].producing == 0


def test_docker_sessions_have_no_producer_connection_to_lose() -> None:
    hub = Hub(Limits(producer_grace=0), authenticator=OPEN)
    hub.publish_status("container", status="running", now=T0)  # a source, not a client
    hub.handle_timeout(T0 + 10)
    assert hub.sessions["container"].status == "running"

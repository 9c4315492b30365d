"""Issue 13 (tenancy) against the real server, plus a property test over
the hub: no client holds a subscription its current grant cannot view."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
from conftest import ServerProcess, wait_for
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from rawws import RawWebSocket

from pcclog_core import Authenticator, Hub, Limits, parse_static_tokens
from pcclog_core._client import Client

ADMIN = "admin-token-0123456789"
TEAM_A = "team-a-token-0123456789"
EVIL = "evil-token-0123456789ab"
VICTIM = "victim-token-0123456789"
TOKENS = (
    f"{ADMIN},{TEAM_A}:view+produce:team-a-*,{EVIL}:view+produce:evil-*,"
    f"{VICTIM}:view+produce:victim-*"
)
JWT_SECRET = "tenancy-hs256-secret-that-is-long-enough"


def _authed(server: ServerProcess, token: str) -> RawWebSocket:
    ws = RawWebSocket.connect(server.port, auto_pong=True)
    ws.send_json({"type": "auth", "token": token})
    assert ws.barrier() == []
    return ws


def _session_ids(server: ServerProcess) -> set[str]:
    with _authed(server, ADMIN) as ws:
        ws.send_json({"type": "list"})
        return {s["sessionId"] for s in ws.recv_message()["sessions"]}


def test_1_narrowed_grant_gets_nothing_of_sessions_created_later(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=TOKENS, env={"SESSION_TIMEOUT": "0"})
    viewer = _authed(server, ADMIN)
    viewer.send_json({"type": "subscribe", "sessionId": "team-b-1"})
    assert viewer.recv_message()["code"] == "SESSION_NOT_FOUND"
    viewer.send_json({"type": "auth", "token": TEAM_A})
    viewer.send_json({"type": "subscribe", "sessionId": "team-a-1"})
    assert [m["code"] for m in viewer.barrier()] == ["SESSION_NOT_FOUND"]
    producer = _authed(server, ADMIN)
    producer.send_json({"type": "log", "sessionId": "team-b-1", "message": "secret-b"})
    producer.send_json({"type": "status", "sessionId": "team-b-1", "status": "stopped"})
    producer.send_json({"type": "log", "sessionId": "team-b-1", "message": "again-b"})
    producer.send_json({"type": "log", "sessionId": "team-a-1", "message": "mine"})
    assert producer.barrier() == []
    _, got = viewer.recv_until(lambda m: m.get("message") == "mine")
    assert all(m.get("sessionId") != "team-b-1" for m in got), got
    assert viewer.barrier() == []
    # the dropped subscription no longer counts: re-subscribing is refused
    viewer.send_json({"type": "subscribe", "sessionId": "team-b-1"})
    assert viewer.recv_message()["code"] == "UNAUTHORIZED"


def test_2_a_tenant_cannot_lock_others_out(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(token=TOKENS, env={"MAX_SESSIONS": "6", "SESSION_QUOTA": "3"})
    evil = _authed(server, EVIL)
    for i in range(5):
        evil.send_json({"type": "log", "sessionId": f"evil-{i}", "message": "x"})
    errors = evil.barrier()
    assert [e["code"] for e in errors] == ["TOO_MANY_SESSIONS"] * 2
    assert "SESSION_QUOTA" in errors[0]["message"]
    assert "6" not in errors[0]["message"] and "limit" not in errors[0]["message"]
    victim = _authed(server, VICTIM)
    victim.send_json({"type": "log", "sessionId": "victim-1", "message": "build"})
    assert victim.barrier() == []
    assert "victim-1" in _session_ids(server)


def test_3_another_tenants_ended_session_is_not_erased(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=TOKENS, env={"MAX_SESSIONS": "5", "SESSION_QUOTA": "2"})
    victim = _authed(server, VICTIM)
    victim.send_json({"type": "log", "sessionId": "victim-1", "message": "failed build"})
    victim.send_json({"type": "status", "sessionId": "victim-1", "status": "error"})
    assert victim.barrier() == []
    evil = _authed(server, EVIL)
    for i in range(20):
        evil.send_json({"type": "log", "sessionId": f"evil-{i}", "message": "x"})
        evil.send_json({"type": "status", "sessionId": f"evil-{i}", "status": "stopped"})
    assert evil.barrier() == []
    assert "victim-1" in _session_ids(server)


def test_7_producer_pings_are_always_answered(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=TOKENS, env={"RATE_LIMIT": "5"})
    producer = _authed(server, VICTIM)
    producer.send_json({"type": "log", "sessionId": "victim-1", "message": "x"})
    for _ in range(60):
        producer.send_json({"type": "ping"})
    pongs = 0
    while pongs < 60:
        message = producer.recv_message()
        assert message["type"] == "pong", message
        pongs += 1
    # a viewer's pings stay rate limited
    viewer = _authed(server, VICTIM)
    for _ in range(60):
        viewer.send_json({"type": "ping"})
    error, _ = viewer.recv_until(lambda m: m["type"] == "error")
    assert error["code"] == "RATE_LIMITED"


def test_7_co_producers_cannot_push_out_a_victims_resend_marks(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=f"{TOKENS},{EVIL}-2:produce:victim-*")
    victim = _authed(server, VICTIM)
    entry = {"type": "log", "sessionId": "victim-1", "message": "once"}
    victim.send_json({**entry, "producer": "p-victim", "pseq": 1})
    assert victim.barrier() == []
    co = _authed(server, f"{EVIL}-2")
    for i in range(70):
        co.send_json({**entry, "message": "noise", "producer": f"p-{i}", "pseq": 1})
    assert co.barrier() == []
    victim.send_json({**entry, "producer": "p-victim", "pseq": 1})  # a resend
    assert victim.barrier() == []
    with _authed(server, ADMIN) as ws:
        ws.send_json({"type": "subscribe", "sessionId": "victim-1", "tail": 1000})
        got = ws.barrier()
    assert [m["message"] for m in got if m["type"] == "log"].count("once") == 1


def test_7_a_jwt_without_sessions_views_nothing(
    start_server: Callable[..., ServerProcess],
) -> None:
    server = start_server(token=None, env={"AUTH_JWT_SECRET": JWT_SECRET})
    token = jwt.encode({"exp": int(time.time()) + 600, "roles": ["view"]}, JWT_SECRET)
    with RawWebSocket.connect(server.port) as ws:
        ws.send_json({"type": "auth", "token": token})
        reply = ws.recv_message()
        assert reply["code"] == "UNAUTHORIZED" and "sessions claim" in reply["message"]


def test_7_short_secret_refused_and_short_token_warned(
    start_server: Callable[..., ServerProcess], tmp_path: Any
) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pcclog_server.cli", "serve", "--port", "0"],
        env={"AUTH_JWT_SECRET": "short", "DOCKER_ENABLED": "false", "PATH": ""},
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"AUTH_JWT_SECRET" in result.stderr and b"short" not in result.stderr
    server = start_server(token="tiny")
    wait_for(
        lambda: "shorter than 16 characters" in server.logs() or None,
        timeout=10,
        what="the short-token warning",
    )
    assert "tiny" not in server.logs()


# --- the hub: no subscription outlives the grant ------------------------------

_SESSIONS = ("a-1", "a-2", "b-1", "b-2")
_GRANT_TOKENS = ("all-0123456789abcd", "a-only-0123456789ab", "b-only-0123456789ab")
_AUTH = Authenticator(
    static_tokens=parse_static_tokens(
        f"{_GRANT_TOKENS[0]},{_GRANT_TOKENS[1]}:view+produce:a-*,"
        f"{_GRANT_TOKENS[2]}:view+produce:b-*"
    )
)


class GrantMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.hub = Hub(Limits(max_sessions=3, session_timeout=1.0), authenticator=_AUTH)
        self.clients = [Client(self.hub, now=self.now) for _ in range(3)]
        for client in self.clients:
            client.authenticate(_GRANT_TOKENS[0], now=self.now, wall=self.now)

    @rule(client=st.integers(0, 2), token=st.sampled_from(_GRANT_TOKENS))
    def reauth(self, client: int, token: str) -> None:
        self.clients[client].authenticate(token, now=self.now, wall=self.now)

    @rule(client=st.integers(0, 2), session=st.sampled_from((*_SESSIONS, "*")))
    def subscribe(self, client: int, session: str) -> None:
        self.clients[client].receive_message(
            f'{{"type":"subscribe","sessionId":"{session}"}}', now=self.now, wall=self.now
        )

    @rule(session=st.sampled_from(_SESSIONS), status=st.sampled_from(("running", "stopped")))
    def create_or_end(self, session: str, status: Any) -> None:
        try:
            self.hub.publish_status(session, status=status, now=self.now)
        except Exception:  # TOO_MANY_SESSIONS
            pass

    @rule()
    def evict(self) -> None:
        self.now += 2.0
        self.hub.handle_timeout(self.now)

    @invariant()
    def nothing_beyond_the_grant(self) -> None:
        hub = self.hub
        for client in self.clients:
            grant = client.grant
            assert grant is not None
            held = set(client._attached) | set(client._explicit)
            held |= {sid for sid, waiting in hub._pending.items() if client in waiting}
            for session in hub.sessions.values():
                if (
                    client in session.subscribers
                    or client in session.lagging
                    or client in session.viewers_plain
                ):
                    held.add(session.id)
            assert all(grant.can_view(sid) for sid in held), (grant.globs, held)


GrantMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_no_subscription_beyond_the_grant = GrantMachine.TestCase


# --- the hub's quota and eviction order, on a fake clock ----------------------


def test_hub_quota_revive_and_eviction_order() -> None:
    import pytest

    from pcclog_core._errors import MessageError

    hub = Hub(Limits(max_sessions=4, session_quota=2, session_timeout=300.0), authenticator=_AUTH)
    now = 1000.0
    hub.publish_status("v-1", status="stopped", now=now, tenant="victim")
    hub.publish_status("e-1", status="running", now=now, tenant="evil")
    hub.publish_status("e-2", status="running", now=now, tenant="evil")
    with pytest.raises(MessageError) as refused:
        hub.publish_status("e-3", status="running", now=now, tenant="evil")
    assert "SESSION_QUOTA" in refused.value.message
    hub.publish_status("e-1", status="stopped", now=now + 1, tenant="evil")
    hub.publish_status("e-3", status="running", now=now + 1, tenant="evil")  # registry: 4
    # reviving past the quota is refused too
    with pytest.raises(MessageError):
        hub.publish_status("e-1", status="running", now=now + 2, tenant="evil")
    # full: evil's own ended session goes, never the victim's
    hub.publish_status("e-2", status="stopped", now=now + 3, tenant="evil")
    hub.publish_status("e-4", status="running", now=now + 4, tenant="evil")
    assert set(hub.sessions) == {"v-1", "e-2", "e-3", "e-4"}
    # evil holds 3 sessions, more than its quota: its excess ended ones are
    # not protected, so another tenant may take one's room
    hub.publish_status("e-3", status="stopped", now=now + 5, tenant="evil")
    hub.publish_status("x-1", status="running", now=now + 5, tenant="other")
    assert set(hub.sessions) == {"v-1", "e-3", "e-4", "x-1"}
    # nothing of its own ended and no tenant over its share: refused, no counts
    with pytest.raises(MessageError) as full:
        hub.publish_status("x-2", status="running", now=now + 6, tenant="other")
    assert "4" not in full.value.message and "MAX_SESSIONS" in full.value.message
    hub.handle_timeout(now + 301)  # the victim's session leaves at its timeout only
    assert "v-1" not in hub.sessions

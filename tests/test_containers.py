"""The Docker lifecycle state machine (pcclog_core._containers, _docker_sessions), no engine.

Each test plays the engine: it answers the core's actions (Inspect, OpenLogs,
WaitUntil) with the inputs a real engine would cause, and checks the statuses
the core publishes and where it attaches. The real-engine tests of the same
behaviours are in tests/test_docker_source.py.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcclog_core import LocalProtocolError
from pcclog_core._containers import (
    _TABLE,
    Action,
    Container,
    Forget,
    Input,
    Inspect,
    OpenLogs,
    Phase,
    PublishStatus,
    WaitUntil,
)
from pcclog_core._docker_engine import ContainerInfo, EngineEvent, StreamEnd
from pcclog_core._docker_sessions import Containers

LABEL = "pcclog.session"
A = "a" * 64
B = "b" * 64
RUN1 = "2024-01-26T13:45:30.000000000Z"
RUN2 = "2024-01-26T13:46:00.000000000Z"
ZERO = "0001-01-01T00:00:00Z"
RUN1_NS = 1706276730_000000000
RUN2_NS = 1706276760_000000000


def info(
    *,
    running: bool = True,
    started: str = RUN1,
    finished: str = ZERO,
    code: int | None = 0,
    oom: bool = False,
    session: str = "s",
    tty: bool = False,
) -> ContainerInfo:
    return ContainerInfo.from_inspect(
        {
            "Name": "/box",
            "Config": {"Image": "busybox", "Labels": {LABEL: session}, "Tty": tty},
            "State": {
                "Running": running,
                "Restarting": False,
                "StartedAt": started,
                "FinishedAt": finished,
                "ExitCode": code,
                "OOMKilled": oom,
            },
        },
        LABEL,
    )


def body(*lines: tuple[str, str], last: bool = True) -> bytes:
    """An engine response: chunked, one multiplexed record per chunk."""
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for ts, text in lines:
        payload = f"{ts} {text}\n".encode()
        record = struct.pack(">BxxxI", 1, len(payload)) + payload
        out += b"%x\r\n" % len(record) + record + b"\r\n"
    return out + (b"0\r\n\r\n" if last else b"")


class Engine:
    """Plays the runtime: keeps the core's actions, answers them."""

    def __init__(self, **kwargs: Any) -> None:
        self.core = Containers(label=LABEL, history_lines=50, **kwargs)
        self.core.api_prefix = "/v1.41"
        self.now = 0.0
        self.actions: list[Action] = []
        self.published: list[PublishStatus] = []
        self.entries: list[str] = []

    def take(self, actions: list[Action]) -> list[Action]:
        self.actions += [a for a in actions if not isinstance(a, PublishStatus)]
        self.published += [a for a in actions if isinstance(a, PublishStatus)]
        return actions

    def pop(self, kind: type[Any], container: str = A) -> Any:
        for i, action in enumerate(self.actions):
            if isinstance(action, kind) and action.container_id == container:
                return self.actions.pop(i)
        raise AssertionError(f"no {kind.__name__} for {container[:4]} in {self.actions}")

    def statuses(self) -> list[str]:
        return [p.status for p in self.published]

    def sync(self, *running: str) -> None:
        self.take(self.core.synced(list(running), self.now))

    def event(self, action: str, container: str = A, **kw: Any) -> None:
        event = EngineEvent(action=action, container_id=container, **kw)
        self.take(self.core.engine_event(event, self.now, wall_ns=int(self.now * 1e9)))

    def inspect(self, answer: ContainerInfo | None, container: str = A) -> None:
        self.pop(Inspect, container)
        self.take(self.core.inspected(container, answer, self.now))

    def logs(self, data: bytes, container: str = A, *, eof: bool = True) -> OpenLogs:
        """Run the OpenLogs the core asked for on ``data`` (then EOF)."""
        action: OpenLogs = self.pop(OpenLogs, container)
        stream = action.stream
        self.entries += [e.message for e in stream.receive_data(data)]
        if eof:
            self.entries += [e.message for e in stream.receive_data(b"")]
        self.take(self.core.logs_ended(container, self.now))
        return action

    def later(self, seconds: float, container: str = A) -> None:
        self.now += seconds
        self.take(self.core.handle_timeout(container, self.now))


def query(action: OpenLogs) -> dict[str, str]:
    target = action.stream.request.split(b" ", 2)[1].decode()
    return dict(part.split("=", 1) for part in target.split("?", 1)[1].split("&"))


# --- one container ----------------------------------------------------------------------


def test_running_at_first_sync_reads_the_tail_then_ends_stopped() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    running = e.published[-1]
    assert running.status == "running" and running.first and running.session_id == "s"
    assert running.metadata == {
        "containerId": A[:12],
        "containerName": "box",
        "image": "busybox",
        "startTime": "2024-01-26T13:45:30.000Z",
    }
    follow = e.logs(body(("2024-01-26T13:45:31.5Z", "hello")))
    assert query(follow) == {
        "follow": "1",
        "stdout": "1",
        "stderr": "1",
        "timestamps": "1",
        "tail": "50",
    }
    assert follow.stream.outcome is StreamEnd.EOF
    assert e.entries == ["hello"]
    e.inspect(info(running=False, finished="2024-01-26T13:45:32Z", code=0))
    rest = e.logs(body(("2024-01-26T13:45:31.5Z", "hello"), ("2024-01-26T13:45:31.9Z", "bye")))
    assert query(rest)["follow"] == "0"
    assert query(rest)["since"] == "1706276731.500000000"  # the resume point
    assert e.entries == ["hello", "bye"]  # resent "hello" dropped
    end = e.published[-1]
    assert end.status == "stopped"
    assert end.metadata == {
        "exitCode": 0,
        "finishedAt": "2024-01-26T13:45:32.000Z",
        "oomKilled": False,
    }
    assert e.core.phase(A) is Phase.IDLE and e.actions == []


def test_started_later_is_read_from_its_run_start() -> None:
    e = Engine()
    e.sync()
    e.event("start")
    e.inspect(info(finished="2024-01-26T13:40:00Z"))  # a previous run ended then
    assert query(e.pop(OpenLogs)) == {
        "follow": "1",
        "stdout": "1",
        "stderr": "1",
        "timestamps": "1",
        "tail": "all",
        "since": "1706276400.000000000",
    }


@pytest.mark.parametrize(
    ("code", "oom", "status"),
    [(0, False, "stopped"), (3, False, "error"), (None, False, "error"), (0, True, "error")],
)
def test_exit_code_and_oom_decide_the_status(code: int | None, oom: bool, status: str) -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.logs(body())
    e.inspect(info(running=False, code=code, oom=oom))
    e.logs(body())
    assert e.published[-1].status == status
    assert e.published[-1].metadata["exitCode"] == code
    assert e.published[-1].metadata["oomKilled"] is oom


def test_an_oom_event_marks_the_run_even_when_inspect_does_not() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.event("oom")
    e.event("die", exit_code=137, time_nano=RUN1_NS + 10)
    e.logs(body())
    e.inspect(info(running=False, code=137, oom=False))
    e.logs(body())
    assert e.statuses() == ["running", "error"]
    assert e.published[-1].metadata["oomKilled"] is True


def test_quick_restart_ends_the_run_with_its_die_code_and_clears_the_metadata() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.event("die", exit_code=137, time_nano=RUN1_NS + 5)
    e.event("start")
    e.logs(body())
    e.inspect(info(started=RUN2, finished="2024-01-26T13:45:59Z"))  # a run we never saw end
    assert e.statuses() == ["running", "error", "running"]
    end, again = e.published[1], e.published[2]
    assert end.metadata == {
        "exitCode": 137,
        "finishedAt": "2024-01-26T13:45:30.000Z",
        "oomKilled": False,
    }
    assert again.metadata["startTime"] == "2024-01-26T13:46:00.000Z"
    assert again.metadata["exitCode"] is None  # the hub merges: cleared for the new run
    assert not again.first
    assert query(e.pop(OpenLogs))["follow"] == "1"


def test_die_grace_without_a_die_event_ends_without_a_code() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.logs(body())
    e.inspect(info(started=RUN2))
    wait = e.pop(WaitUntil)
    assert (wait.reason, wait.deadline) == ("die", 2.0)
    assert e.statuses() == ["running"]
    e.later(1.0)
    assert e.statuses() == ["running"]  # not yet
    e.later(1.0)
    assert e.statuses() == ["running", "error", "running"]
    assert e.published[1].metadata == {"exitCode": None, "finishedAt": None, "oomKilled": False}


def test_a_die_event_during_the_grace_ends_at_once() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.logs(body())
    e.inspect(info(started=RUN2))
    e.pop(WaitUntil)
    e.event("die", exit_code=2, time_nano=RUN1_NS - 1)  # of an older run: not this one
    assert e.statuses() == ["running"]
    e.event("die", exit_code=2, time_nano=RUN1_NS + 1)
    assert e.statuses() == ["running", "error", "running"]
    assert e.published[1].metadata["exitCode"] == 2


def test_removal_while_running_ends_the_session_and_forgets_the_container() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.event("die", exit_code=137, time_nano=RUN1_NS + 7)
    e.event("destroy")
    e.logs(body())
    e.pop(Inspect)
    e.take(e.core.inspect_failed(A, e.now))  # destroyed: 404 is all inspect could say
    assert e.statuses() == ["running", "error"]
    assert e.published[-1].metadata["exitCode"] == 137
    forget = e.pop(Forget)
    assert forget.announced and forget.session_id == "s"
    assert A not in e.core and e.core.phase(A) is Phase.GONE


def test_removal_after_the_end_only_forgets() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.logs(body())
    e.inspect(info(running=False, code=0))
    e.logs(body())
    e.event("destroy")
    e.inspect(None)
    assert e.statuses() == ["running", "stopped"]
    assert e.pop(Forget).announced


def test_a_broken_stream_reattaches_with_backoff_from_the_last_line() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    delays = []
    for _ in range(4):
        e.logs(body(last=False))  # EOF without the last chunk: broken
        e.inspect(info())
        wait = e.pop(WaitUntil)
        delays.append(wait.delay)
        e.later(wait.delay)
    assert delays == [0.05, 0.1, 0.2, 0.4]
    follow = e.logs(body(("2024-01-26T13:45:31Z", "x"), last=False))
    assert follow.stream.outcome is StreamEnd.BROKEN and e.entries == ["x"]
    e.inspect(info())
    wait = e.pop(WaitUntil)
    assert wait.delay == 0.05  # it delivered: the backoff starts over
    e.later(wait.delay)
    assert query(e.pop(OpenLogs))["since"] == "1706276731.000000000"
    assert e.statuses() == ["running"]


def test_an_event_during_the_backoff_inspects_at_once() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.logs(body(last=False))
    e.inspect(info())
    e.pop(WaitUntil)
    e.event("die", exit_code=1, time_nano=RUN1_NS + 1)
    e.inspect(info(running=False, code=1))
    e.logs(body())
    assert e.statuses() == ["running", "error"]


def test_an_inspect_the_engine_does_not_answer_is_retried() -> None:
    e = Engine()
    e.sync(A)
    e.pop(Inspect)
    e.take(e.core.inspect_failed(A, e.now))
    wait = e.pop(WaitUntil)
    assert (wait.reason, wait.delay) == ("retry", 0.1)
    e.later(0.1)
    e.inspect(info())
    assert e.statuses() == ["running"]


def test_unreadable_logs_are_not_retried_and_the_end_still_comes() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    refused = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 17\r\n\r\nconfigured driver"
    action = e.logs(refused)
    assert action.stream.outcome is StreamEnd.REFUSED
    assert action.stream.refusal == "configured driver"
    e.inspect(info())
    assert e.core.phase(A) is Phase.IDLE and e.actions == []
    e.event("die", exit_code=0, time_nano=RUN1_NS + 1)
    e.inspect(info(running=False, code=0))
    assert e.statuses() == ["running", "stopped"]


def test_an_event_while_inspecting_is_not_lost() -> None:
    e = Engine()
    e.sync(A)
    e.event("die", exit_code=0, time_nano=RUN1_NS + 1)  # the answer below predates it
    e.inspect(info(running=False, started=ZERO))  # created, not started yet
    e.inspect(info(running=False, code=0))  # asked again at once
    e.logs(body())
    assert e.statuses() == ["running", "stopped"]


def test_a_reconnect_reinspects_every_known_container() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    e.logs(body())
    e.inspect(info(running=False, code=0))
    e.logs(body())
    e.sync()  # the engine came back; A is not running any more
    e.inspect(info(running=False, code=0))
    assert e.statuses() == ["running", "stopped"]  # nothing new happened


# --- one session, several containers ---------------------------------------------------


def test_two_containers_with_one_label_are_one_session() -> None:
    e = Engine()
    e.sync(A, B)
    e.inspect(info(), A)
    e.inspect(info(started=RUN2), B)
    assert [(p.container_id, p.status) for p in e.published] == [(A, "running"), (B, "running")]
    assert e.published[1].metadata["containerId"] == B[:12]
    e.logs(body(("2024-01-26T13:46:01Z", "from a")), A)
    e.logs(body(("2024-01-26T13:46:01Z", "from b")), B)
    e.inspect(info(running=False, code=3), A)
    e.logs(body(), A)
    assert e.statuses() == ["running", "running"]  # B still runs: the session too
    e.inspect(info(running=False, started=RUN2, code=0), B)
    e.logs(body(), B)
    assert e.statuses() == ["running", "running", "stopped"]
    assert e.published[-1].container_id == B
    assert sorted(e.entries) == ["from a", "from b"]


def test_the_metadata_reset_spans_the_containers_of_a_session() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info(), A)
    e.logs(body(), A)
    e.inspect(info(running=False, code=0), A)
    e.logs(body(), A)
    e.event("start", B)
    e.inspect(info(started=RUN2), B)
    assert e.published[-1].container_id == B
    assert e.published[-1].metadata["exitCode"] is None  # A's end is in the hub's metadata


def test_an_end_older_than_the_session_timeout_needs_no_reset() -> None:
    e = Engine(session_timeout=300.0)
    e.sync(A)
    e.inspect(info())
    e.logs(body())
    e.inspect(info(running=False, code=0))
    e.logs(body())
    e.now += 301  # the hub has evicted the ended session by now
    e.event("start")
    e.inspect(info(started=RUN2))
    assert "exitCode" not in e.published[-1].metadata


# --- the table --------------------------------------------------------------------------


def test_the_table_covers_events_and_timeouts_in_every_phase() -> None:
    for phase in Phase:
        for event in (Input.EVENT, Input.DIED, Input.TIMEOUT):
            assert (phase, event) in _TABLE
        for event in Input:
            effect, after = _TABLE.get((phase, event), (None, phase))
            assert isinstance(after, Phase)
            assert effect is None or hasattr(Container, effect)


def test_an_answer_nobody_asked_for_is_a_local_protocol_error() -> None:
    e = Engine()
    e.sync(A)
    e.inspect(info())
    with pytest.raises(LocalProtocolError):
        e.core.inspected(A, info(), e.now)  # streaming: no inspect was asked for
    with pytest.raises(LocalProtocolError):
        e.core.logs_ended(B, e.now)
    assert e.core.phase(A) is Phase.STREAMING


ANSWERS = st.sampled_from(
    [
        ("inspect", {"running": True}),
        ("inspect", {"running": True, "started": RUN2}),
        ("inspect", {"running": False, "code": 0}),
        ("inspect", {"running": False, "code": 137, "oom": True}),
        ("inspect", {"running": False, "started": RUN2, "code": 1}),
        ("inspect", {"running": False, "started": ZERO}),
        ("gone", {}),
        ("no-answer", {}),
        ("logs", {"data": body(("2024-01-26T13:45:31Z", "x"))}),
        ("logs", {"data": body(last=False)}),
        ("logs", {"data": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"}),
        ("logs", {"data": b"garbage"}),
        ("event", {"action": "start"}),
        ("event", {"action": "die", "exit_code": 1, "time_nano": RUN1_NS + 1}),
        ("event", {"action": "die", "exit_code": 0, "time_nano": RUN2_NS + 1}),
        ("event", {"action": "oom"}),
        ("event", {"action": "destroy"}),
        ("time", {"seconds": 0.05}),
        ("time", {"seconds": 2.5}),
        ("sync", {}),
    ]
)


@settings(max_examples=300)
@given(steps=st.lists(ANSWERS, max_size=40))
def test_any_walk_keeps_the_machine_consistent(steps: list[tuple[str, dict[str, Any]]]) -> None:
    """Whatever the engine does, each action is answerable and statuses make sense."""
    e = Engine()
    e.sync(A)
    for kind, kw in steps:
        if A not in e.core:
            break
        phase = e.core.phase(A)
        pending = [type(a) for a in e.actions if a.container_id == A]
        if kind in ("inspect", "gone", "no-answer"):
            if Inspect not in pending:
                # An answer nobody asked for: refused, and the phase stays.
                with pytest.raises(LocalProtocolError):
                    e.core.inspected(A, info(), e.now)
                assert e.core.phase(A) is phase
                continue
            if kind == "inspect":
                e.inspect(info(**kw))
            elif kind == "gone":
                e.inspect(None)
            else:
                e.pop(Inspect)
                e.take(e.core.inspect_failed(A, e.now))
        elif kind == "logs":
            if OpenLogs in pending:
                e.logs(kw["data"])
        elif kind == "event":
            e.event(**kw)
        elif kind == "time":
            e.later(kw["seconds"])
        else:
            e.sync()
        e.actions = [a for a in e.actions if not isinstance(a, WaitUntil | Forget)]
        mine = [a for a in e.actions if a.container_id == A]
        # At most one thing in flight: an inspect or a log stream, never both.
        assert sum(isinstance(a, Inspect | OpenLogs) for a in mine) <= 1
        assert isinstance(e.core.phase(A), Phase)
    statuses = e.statuses()
    if statuses:
        assert statuses[0] == "running"
    for before, after in itertools.pairwise(statuses):
        assert not (before != "running" and after != "running"), statuses  # no end twice

"""The Docker lifecycle: one state machine per labelled container (SPEC §4).

Theory of operation
===================

Containers carrying ``DOCKER_LABEL`` are sessions. For each one the source
follows, a :class:`Container` decides what happens next; ``Containers``
(:mod:`._docker_sessions`) holds them all and the facts shared by the
containers of one session. The
runtime feeds inputs and performs the actions it gets back; it never
decides anything itself:

inputs (a method of ``Containers`` each)
    ``synced`` (the engine's list of running containers, at every
    (re)connection), ``engine_event`` (``start``, ``die``, ``oom``,
    ``destroy``), ``inspected`` (``GET /containers/{id}/json``: a
    :class:`ContainerInfo`, ``None`` for 404) and ``inspect_failed``,
    ``logs_ended`` (the :class:`LogStream` it was given is finished), and
    ``handle_timeout`` at the container's :attr:`deadline`. Time is an
    argument: ``now`` is the runtime's monotonic clock, in seconds.

actions (what the runtime does)
    :class:`Inspect`; :class:`PublishStatus` (``Hub.publish_status``);
    :class:`OpenLogs` (open a connection, write ``stream.request``, feed the
    stream until it is finished, publish its entries, then ``logs_ended``);
    :class:`WaitUntil` (call ``handle_timeout`` then, unless an input comes
    first); :class:`Forget` (the container is gone: drop its task).

The engine's ``inspect`` is the truth; events only wake a container and
record what inspect cannot tell later (the exit code of a run that was
replaced, an OOM kill). Each inspect result is classified against what was
published (:meth:`Container._classify`) into one input, and the
transitions are this table (:data:`_TABLE`; ``·`` keeps the phase)::

    phase          input                effect              next phase
    -------------  -------------------  ------------------  ----------------
    NEW            TRACK                inspect             INSPECTING
    INSPECTING     FOLLOW               [running], follow   STREAMING
    INSPECTING     REATTACH             backoff             BACKOFF
    INSPECTING     DRAIN                [running], rest     DRAINING
    INSPECTING     END                  [running], end      IDLE
    INSPECTING     WAIT                 [running]           IDLE
    INSPECTING     RESTARTED            wait for die        DIE_WAIT_RESTART
    INSPECTING     VANISHED_RUNNING     wait for die        DIE_WAIT_GONE
    INSPECTING     VANISHED             forget              GONE
    INSPECTING     NO_ANSWER            retry later         RETRY
    INSPECTING     EVENT, DIED          note                ·
    STREAMING      LOGS_ENDED           inspect             INSPECTING
    DRAINING       LOGS_ENDED           end                 IDLE
    BACKOFF        TIMEOUT              follow              STREAMING
    BACKOFF        EVENT, DIED          inspect             INSPECTING
    RETRY          TIMEOUT, EVENT, DIED inspect             INSPECTING
    DIE_WAIT_*     DIED, TIMEOUT        end the unseen run  INSPECTING / GONE
    IDLE           EVENT, DIED          inspect             INSPECTING
    (any)          EVENT, DIED          note                ·
    (any)          TIMEOUT              nothing (stale)     ·
    GONE           anything             nothing             GONE

``[running]`` publishes ``running`` when the inspected run is new (its
``StartedAt`` differs from the published one). A pair not in the table is
the runtime's mistake (:class:`LocalProtocolError`, the phase unchanged).
An effect may chain one more input: ``note`` in INSPECTING or DRAINING marks
the container *dirty* (an event came while the answer was on its way) and
reaching IDLE dirty chains EVENT, so nothing an event says is lost;
DIE_WAIT_RESTART chains the classification of the inspect it kept.

Decisions, each in one place:

* **Status** (:meth:`Container._end`): ``stopped`` on exit code 0,
  ``error`` on any other code, an unknown one, or an OOM kill (inspect's
  ``OOMKilled`` or an ``oom`` event of the run); metadata ``exitCode``,
  ``finishedAt``, ``oomKilled``. ``running`` carries ``containerId`` (12
  characters), ``containerName``, ``image``, ``startTime``.
* **Quick restart / removal while running**: the published run ended
  unseen. Its exit code comes from its ``die`` event (one stamped at or
  after the run's ``StartedAt``), waited for up to ``die_grace`` seconds;
  without one the end has no code (``error``).
* **Attach points** (:meth:`Container._open`): a container running at the
  first sync with the engine is read from ``tail=HISTORY_LINES`` (a
  restarted pcclog replays recent history); one seen later from the start
  of its current run (:func:`run_start`); every later read ``since=`` the
  last delivered timestamp (:class:`ResumeFilter` drops what comes twice).
* **Backoff**: a follow stream that ends while the run goes on broke;
  re-attach after 0.05 s, doubling to 2 s, back to 0.05 s once a stream
  delivered. An inspect the engine does not answer is retried after 0.1 s,
  doubling to 2 s.
* **One session, several containers** (``Containers``): a session is
  ``running`` while any of its containers runs; a container's end is
  published only when it is the last one running (with its exit details).
* **Metadata reset**: the hub merges metadata, so a ``running`` after an
  end carries ``exitCode``/``finishedAt``/``oomKilled`` as ``null``. Whether
  the session has those fields is known here (this source published them),
  not read from the hub: an end older than ``session_timeout`` is taken as
  evicted with its session (the hub evicts it then).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from ._docker_engine import ContainerInfo, LogStream, StreamEnd, engine_iso, engine_ns, run_start
from ._docker_lines import LineClassifier
from ._docker_resume import ResumeFilter
from ._errors import LocalProtocolError
from ._pacing import Backoff
from ._timefmt import format_ns

__all__ = [
    "DIE_GRACE",
    "Action",
    "steady_backoff",
    "Container",
    "Forget",
    "Input",
    "Inspect",
    "OpenLogs",
    "Phase",
    "PublishStatus",
    "SessionBook",
    "Settings",
    "StatusName",
    "WaitUntil",
]

DIE_GRACE: Final = 2.0  # seconds to wait for a die event's exit code

StatusName = Literal["running", "stopped", "error"]


# --- actions ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Inspect:
    """Inspect the container; answer with ``inspected`` or ``inspect_failed``."""

    container_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishStatus:
    """``Hub.publish_status(session_id, status=..., metadata=...)``.

    ``first`` is true for the first status of this container (worth a log line).
    """

    container_id: str
    session_id: str
    status: StatusName
    metadata: dict[str, Any]
    first: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenLogs:
    """Open a connection to the engine and run ``stream`` on it, then ``logs_ended``."""

    container_id: str
    stream: LogStream


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitUntil:
    """Call ``handle_timeout`` at ``deadline`` (monotonic seconds) unless an input comes."""

    container_id: str
    deadline: float
    reason: Literal["reattach", "retry", "die"]
    delay: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Forget:
    """The container is gone; ``announced``: it had published a status."""

    container_id: str
    session_id: str
    announced: bool


Action = Inspect | PublishStatus | OpenLogs | WaitUntil | Forget


# --- the state machine ----------------------------------------------------------------


class Phase(enum.Enum):
    NEW = "new"  # tracked, not inspected yet
    INSPECTING = "inspecting"  # an inspect is in flight
    RETRY = "retry"  # the engine did not answer the inspect: asking again later
    STREAMING = "streaming"  # the follow stream is open
    BACKOFF = "backoff"  # the follow stream broke, the run goes on: re-attach later
    DRAINING = "draining"  # exited: reading what the follow stream missed
    DIE_WAIT_RESTART = "die-wait-restart"  # a new run replaced the published one
    DIE_WAIT_GONE = "die-wait-gone"  # removed while the published run was running
    IDLE = "idle"  # nothing to read: waiting for an event
    GONE = "gone"  # removed and forgotten


class Input(enum.Enum):
    TRACK = "track"
    # An inspect result, classified (see Container._classify):
    FOLLOW = "follow"  # running, its stream not just ended: read it live
    REATTACH = "reattach"  # running, right after its follow stream ended: it broke
    DRAIN = "drain"  # the published run exited: read the rest, then end it
    END = "end"  # the published run exited and its logs cannot be read: end it
    WAIT = "wait"  # nothing to do until an event
    RESTARTED = "restarted"  # a new run replaced the published one, unseen
    VANISHED_RUNNING = "vanished-running"  # 404 while the published run was running
    VANISHED = "vanished"  # 404 otherwise
    NO_ANSWER = "no-answer"  # the engine did not answer
    # The engine's events (recorded before the table is consulted):
    EVENT = "event"
    DIED = "died"  # a die event of the run a DIE_WAIT waits for
    LOGS_ENDED = "logs-ended"
    TIMEOUT = "timeout"


_P = Phase
_I = Input
_INSPECTED: Final = (
    _I.FOLLOW,
    _I.REATTACH,
    _I.DRAIN,
    _I.END,
    _I.WAIT,
    _I.RESTARTED,
    _I.VANISHED_RUNNING,
    _I.VANISHED,
    _I.NO_ANSWER,
)

# (phase, input) -> (effect: a Container method name or None, next phase).
_TABLE: Final[dict[tuple[Phase, Input], tuple[str | None, Phase]]] = {
    (_P.NEW, _I.TRACK): ("_inspect", _P.INSPECTING),
    (_P.INSPECTING, _I.FOLLOW): ("_follow", _P.STREAMING),
    (_P.INSPECTING, _I.REATTACH): ("_backoff", _P.BACKOFF),
    (_P.INSPECTING, _I.DRAIN): ("_drain", _P.DRAINING),
    (_P.INSPECTING, _I.END): ("_end_exited", _P.IDLE),
    (_P.INSPECTING, _I.WAIT): ("_settle", _P.IDLE),
    (_P.INSPECTING, _I.RESTARTED): ("_wait_die", _P.DIE_WAIT_RESTART),
    (_P.INSPECTING, _I.VANISHED_RUNNING): ("_wait_die", _P.DIE_WAIT_GONE),
    (_P.INSPECTING, _I.VANISHED): ("_forget", _P.GONE),
    (_P.INSPECTING, _I.NO_ANSWER): ("_retry", _P.RETRY),
    (_P.INSPECTING, _I.EVENT): ("_note", _P.INSPECTING),
    (_P.INSPECTING, _I.DIED): ("_note", _P.INSPECTING),
    (_P.STREAMING, _I.LOGS_ENDED): ("_after_follow", _P.INSPECTING),
    (_P.DRAINING, _I.LOGS_ENDED): ("_end_exited", _P.IDLE),
    (_P.DRAINING, _I.EVENT): ("_note", _P.DRAINING),
    (_P.DRAINING, _I.DIED): ("_note", _P.DRAINING),
    (_P.BACKOFF, _I.TIMEOUT): ("_reattach", _P.STREAMING),
    (_P.BACKOFF, _I.EVENT): ("_inspect", _P.INSPECTING),
    (_P.BACKOFF, _I.DIED): ("_inspect", _P.INSPECTING),
    (_P.RETRY, _I.TIMEOUT): ("_inspect", _P.INSPECTING),
    (_P.RETRY, _I.EVENT): ("_inspect", _P.INSPECTING),
    (_P.RETRY, _I.DIED): ("_inspect", _P.INSPECTING),
    (_P.DIE_WAIT_RESTART, _I.DIED): ("_end_unseen_and_go_on", _P.INSPECTING),
    (_P.DIE_WAIT_RESTART, _I.TIMEOUT): ("_end_unseen_and_go_on", _P.INSPECTING),
    (_P.DIE_WAIT_GONE, _I.DIED): ("_end_removed", _P.GONE),
    (_P.DIE_WAIT_GONE, _I.TIMEOUT): ("_end_removed", _P.GONE),
    (_P.IDLE, _I.EVENT): ("_inspect", _P.INSPECTING),
    (_P.IDLE, _I.DIED): ("_inspect", _P.INSPECTING),
}
for _phase in Phase:
    for _input in (_I.EVENT, _I.DIED, _I.TIMEOUT):
        _TABLE.setdefault((_phase, _input), (None, _phase))
for _input in Input:
    _TABLE[(_P.GONE, _input)] = (None, _P.GONE)
del _phase, _input


def steady_backoff(first: float, cap: float) -> Backoff:
    """``first``, twice that, … up to ``cap`` seconds: the pacing ``Backoff``
    with its jitter held at one (the engine is one peer, not a fleet)."""
    return Backoff(first, cap, rng=_no_jitter)


def _no_jitter() -> float:
    return 1.0


class SessionBook(Protocol):
    """What a container asks of the registry that holds it (``_docker_sessions``)."""

    def publish(
        self,
        c: Container,
        status: StatusName,
        metadata: dict[str, Any],
        now: float,
        out: list[Action],
        *,
        first: bool = False,
    ) -> None: ...

    def forget(self, c: Container, now: float, out: list[Action]) -> None: ...


@dataclass(slots=True)
class Settings:
    """What every container of one registry shares (set by the registry)."""

    label: str
    api_prefix: str
    host: str
    history_lines: int
    max_line_bytes: int
    stdout_level: str
    stderr_level: str
    die_grace: float


@dataclass(slots=True)
class Container:
    """One labelled container: its phase and what it has published and read."""

    id: str
    fresh: bool  # seen after the first sync: read from its run's start
    settings: Settings
    sessions: SessionBook
    short_id: str = ""
    phase: Phase = Phase.NEW
    session_id: str = ""
    first_since: str | None = None
    name: str = ""
    image: str = ""
    tty: bool = False
    run: str = ""  # StartedAt of the run whose status was published
    status: str = ""  # "", "running", "stopped", "error": published
    die_code: int | None = None  # from the latest die event
    die_ns: int = 0
    oom: bool = False
    removed: bool = False
    no_logs: bool = False  # the log driver cannot be read
    dirty: bool = False  # an event came while an answer was on its way
    streamed_run: str = ""  # the run whose follow stream just ended
    pending: ContainerInfo | None = None  # the inspect a DIE_WAIT_RESTART keeps
    deadline: float | None = None
    stream: LogStream | None = None
    resume: ResumeFilter = field(default_factory=ResumeFilter)
    classifier: LineClassifier | None = None
    follow_backoff: Backoff = field(default_factory=lambda: steady_backoff(0.05, 2.0))
    inspect_backoff: Backoff = field(default_factory=lambda: steady_backoff(0.1, 2.0))

    def __post_init__(self) -> None:
        self.short_id = self.id[:12]
        s = self.settings
        self.classifier = LineClassifier(
            container_id=self.short_id, stdout_level=s.stdout_level, stderr_level=s.stderr_level
        )

    # -- the machine -------------------------------------------------------------

    def feed(self, event: Input, now: float, arg: Any = None) -> list[Action]:
        """Consult the table for ``event`` (and what its effect chains); the actions."""
        out: list[Action] = []
        step: tuple[Input, Any] | None = (event, arg)
        while step is not None:
            event, arg = step
            try:
                effect, phase = _TABLE[(self.phase, event)]
            except KeyError:
                raise LocalProtocolError(
                    f"container {self.short_id}: {event.name} in phase {self.phase.name}"
                ) from None
            if phase is not self.phase:
                self.deadline = None
            self.phase = phase
            step = None
            if effect is not None:
                method: Callable[[float, Any, list[Action]], tuple[Input, Any] | None]
                method = getattr(self, effect)
                step = method(now, arg, out)
        return out

    def classify(self, info: ContainerInfo | None) -> Input:
        if info is None:
            return Input.VANISHED_RUNNING if self.status == "running" else Input.VANISHED
        started = info.started_at
        if self.status == "running" and self.run and self.run != started:
            return Input.RESTARTED
        new_run = started != self.run and engine_ns(started) is not None
        if info.running:
            if self.no_logs:
                return Input.WAIT
            return Input.REATTACH if self.streamed_run == started else Input.FOLLOW
        if new_run or (self.status == "running" and self.run == started):
            return Input.END if self.no_logs else Input.DRAIN
        return Input.WAIT

    # -- effects -------------------------------------------------------------------
    # Each takes (now, arg, out), appends its actions to out and may return
    # one more input (with its argument) to feed at once.

    def _inspect(self, now: float, arg: Any, out: list[Action]) -> None:
        self.dirty = False
        out.append(Inspect(container_id=self.id))

    def _note(self, now: float, arg: Any, out: list[Action]) -> None:
        self.dirty = True

    def _absorb(self, info: ContainerInfo, now: float, out: list[Action]) -> None:
        """Take what inspect says of the container; publish ``running`` for a new run."""
        self.inspect_backoff.succeeded()
        self.name = info.name
        self.image = info.image
        self.tty = info.tty
        if not self.session_id:
            self.session_id = info.label_value or info.name or self.short_id
            self.first_since = run_start(info)
        started = info.started_at
        if started != self.run and engine_ns(started) is not None:
            first = self.status == ""
            self.run = started
            self.status = "running"
            self.oom = False
            metadata: dict[str, Any] = {
                "containerId": self.short_id,
                "containerName": self.name,
                "image": self.image,
                "startTime": engine_iso(started),
            }
            self.sessions.publish(self, "running", metadata, now, out, first=first)

    def _settle(self, now: float, arg: Any, out: list[Action]) -> tuple[Input, Any] | None:
        if arg is not None:
            self._absorb(arg, now, out)
        self.streamed_run = ""
        return (Input.EVENT, None) if self.dirty else None

    def _follow(self, now: float, arg: ContainerInfo, out: list[Action]) -> None:
        self._absorb(arg, now, out)
        self._open(now, out, follow=True)

    def _reattach(self, now: float, arg: Any, out: list[Action]) -> None:
        self._open(now, out, follow=True)

    def _drain(self, now: float, arg: ContainerInfo, out: list[Action]) -> None:
        self._absorb(arg, now, out)
        self.pending = arg
        self._open(now, out, follow=False)

    def _open(self, now: float, out: list[Action], *, follow: bool) -> None:
        s = self.settings
        params = {
            "follow": "1" if follow else "0",
            "stdout": "1",
            "stderr": "1",
            "timestamps": "1",
        }
        since = self.resume.since_param()
        if since is not None:
            params["since"] = since  # resume: the filter drops what comes twice
        elif not self.fresh:
            params["tail"] = str(s.history_lines)
        else:
            params["tail"] = "all"
            if self.first_since is not None:
                params["since"] = self.first_since
        query = "&".join(f"{k}={v}" for k, v in params.items())
        self.stream = LogStream(
            target=f"{s.api_prefix}/containers/{self.id}/logs?{query}",
            host=s.host,
            tty=self.tty,
            follow=follow,
            max_line_bytes=s.max_line_bytes,
            resume=self.resume,
            classifier=self.classifier or LineClassifier(container_id=self.short_id),
        )
        out.append(OpenLogs(container_id=self.id, stream=self.stream))

    def _after_follow(self, now: float, arg: Any, out: list[Action]) -> None:
        stream = self.stream
        self.stream = None
        if stream is not None:
            if stream.outcome is StreamEnd.REFUSED:
                self.no_logs = True
            if stream.delivered:
                self.follow_backoff.succeeded()  # it delivered: the next break starts over
        self.streamed_run = self.run
        self._inspect(now, arg, out)

    def _backoff(self, now: float, arg: ContainerInfo, out: list[Action]) -> None:
        self._absorb(arg, now, out)
        delay = self.follow_backoff.failed(now)
        self.deadline = now + delay
        out.append(
            WaitUntil(container_id=self.id, deadline=self.deadline, reason="reattach", delay=delay)
        )

    def _retry(self, now: float, arg: Any, out: list[Action]) -> None:
        delay = self.inspect_backoff.failed(now)
        self.deadline = now + delay
        out.append(
            WaitUntil(container_id=self.id, deadline=self.deadline, reason="retry", delay=delay)
        )

    def _end_exited(
        self, now: float, arg: ContainerInfo | None, out: list[Action]
    ) -> tuple[Input, Any] | None:
        info: ContainerInfo | None = arg
        if arg is not None:  # END: straight from the inspect
            self._absorb(arg, now, out)
        else:  # DRAINING ended: the inspect that started it
            self.stream = None
            info = self.pending
            self.pending = None
        if info is not None and self.status == "running" and self.run == info.started_at:
            self._end(
                info.exit_code, engine_iso(info.finished_at), info.oom_killed or self.oom, now, out
            )
        self.streamed_run = ""
        return (Input.EVENT, None) if self.dirty else None

    def _end(
        self, code: int | None, finished_at: str | None, oom: bool, now: float, out: list[Action]
    ) -> None:
        status: StatusName = "error" if oom or code is None or code != 0 else "stopped"
        self.status = status
        metadata = {"exitCode": code, "finishedAt": finished_at, "oomKilled": oom}
        self.sessions.publish(self, status, metadata, now, out)

    def died_in_run(self) -> bool:
        run_ns = engine_ns(self.run) or 0
        return bool(self.die_ns and self.die_ns >= run_ns)

    def _wait_die(
        self, now: float, arg: ContainerInfo | None, out: list[Action]
    ) -> tuple[Input, Any] | None:
        if arg is not None:
            self.name, self.image, self.tty = arg.name, arg.image, arg.tty
        self.pending = arg
        if self.died_in_run():
            return (Input.DIED, None)
        self.deadline = now + self.settings.die_grace
        out.append(
            WaitUntil(
                container_id=self.id,
                deadline=self.deadline,
                reason="die",
                delay=self.settings.die_grace,
            )
        )
        return None

    def _end_unseen(self, now: float, out: list[Action]) -> None:
        if self.died_in_run():
            self._end(self.die_code, format_ns(self.die_ns), self.oom, now, out)
        else:
            self._end(None, None, self.oom, now, out)

    def _end_unseen_and_go_on(self, now: float, arg: Any, out: list[Action]) -> tuple[Input, Any]:
        """The replaced run ended; go on with the inspect that showed the new one."""
        self._end_unseen(now, out)
        info = self.pending
        self.pending = None
        return (self.classify(info), info)

    def _end_removed(self, now: float, arg: Any, out: list[Action]) -> None:
        self._end_unseen(now, out)
        self._forget(now, arg, out)

    def _forget(self, now: float, arg: Any, out: list[Action]) -> None:
        self.stream = None
        self.sessions.forget(self, now, out)

"""Every followed container of one label, and the facts their sessions share (SPEC §4).

:class:`Containers` is what the runtime talks to: it creates a
:class:`~._containers.Container` state machine per labelled container (at the
engine sync, or on its ``start`` event), routes each input to it, and
applies the rules that span the containers of one session before a status
goes out (see "One session, several containers" and "Metadata reset" in
:mod:`._containers`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from ._containers import (
    DIE_GRACE,
    Action,
    Container,
    Forget,
    Input,
    Phase,
    PublishStatus,
    Settings,
    StatusName,
)
from ._docker_engine import ContainerInfo, EngineEvent
from ._errors import LocalProtocolError

__all__ = ["Containers"]

_RESET: Final = {"exitCode": None, "finishedAt": None, "oomKilled": None}


class Containers:
    """Every followed container of one label, and their sessions (see the module doc).

    Limits and settings are constructor arguments: ``history_lines`` (the
    tail read at the first sync), ``max_line_bytes``, the default levels,
    ``session_timeout`` (the hub's: for the metadata reset) and
    ``die_grace``. :attr:`api_prefix` (``"/v1.41"``) and :attr:`host` (the
    ``Host`` field) are set by the runtime once it knows the engine.
    """

    def __init__(
        self,
        *,
        label: str,
        history_lines: int = 10_000,
        max_line_bytes: int = 262_144,
        stdout_level: str = "info",
        stderr_level: str = "error",
        session_timeout: float = 300.0,
        die_grace: float = DIE_GRACE,
    ) -> None:
        self.label = label
        self._settings = Settings(
            label=label,
            api_prefix="",
            host="localhost",
            history_lines=history_lines,
            max_line_bytes=max_line_bytes,
            stdout_level=stdout_level,
            stderr_level=stderr_level,
            die_grace=die_grace,
        )
        self._session_timeout = session_timeout
        self._containers: dict[str, Container] = {}
        self._synced = False  # the first sync with the engine is done
        # Per session: the containers whose "running" is the latest word.
        self._running: dict[str, set[str]] = {}
        # Sessions whose hub metadata has the end fields; and, in end order,
        # those whose latest status is an end (the hub evicts them).
        self._end_fields: set[str] = set()
        self._ended_at: dict[str, float] = {}

    @property
    def api_prefix(self) -> str:
        return self._settings.api_prefix

    @api_prefix.setter
    def api_prefix(self, value: str) -> None:
        self._settings.api_prefix = value

    @property
    def host(self) -> str:
        return self._settings.host

    @host.setter
    def host(self, value: str) -> None:
        self._settings.host = value

    def __contains__(self, container_id: object) -> bool:
        return container_id in self._containers

    def __len__(self) -> int:
        return len(self._containers)

    def phase(self, container_id: str) -> Phase:
        c = self._containers.get(container_id)
        return Phase.GONE if c is None else c.phase

    def deadline(self, container_id: str) -> float | None:
        """When ``handle_timeout`` has work for this container."""
        c = self._containers.get(container_id)
        return None if c is None else c.deadline

    def session_of(self, container_id: str) -> str:
        c = self._containers.get(container_id)
        return "" if c is None else c.session_id

    # -- inputs ------------------------------------------------------------------------

    def synced(self, running: Iterable[str], now: float) -> list[Action]:
        """The engine's running containers at a (re)connection: track the new
        ones, re-inspect the known ones (their events may have been missed)."""
        out: list[Action] = []
        known = list(self._containers)
        for container_id in running:
            if container_id not in self._containers:
                out += self._track(container_id, fresh=self._synced, now=now)
        self._synced = True  # from now on, new containers are read from their start
        for container_id in known:
            c = self._containers.get(container_id)
            if c is not None:
                out += c.feed(Input.EVENT, now)
        return out

    def engine_event(self, event: EngineEvent, now: float, wall_ns: int) -> list[Action]:
        """An event of the engine's stream; ``wall_ns`` stamps a die without ``timeNano``."""
        c = self._containers.get(event.container_id)
        if c is None:
            if event.action == "start":
                return self._track(event.container_id, fresh=True, now=now)
            return []
        kind = Input.EVENT
        if event.action == "die":
            c.die_code = event.exit_code
            c.die_ns = event.time_nano if event.time_nano is not None else wall_ns
            if c.died_in_run():
                kind = Input.DIED
        elif event.action == "oom":
            c.oom = True
        elif event.action == "destroy":
            c.removed = True
        return c.feed(kind, now)

    def inspected(self, container_id: str, info: ContainerInfo | None, now: float) -> list[Action]:
        """The answer to :class:`Inspect`: the container, or ``None`` (404)."""
        c = self._get(container_id, Phase.INSPECTING)
        return c.feed(c.classify(info), now, info)

    def inspect_failed(self, container_id: str, now: float) -> list[Action]:
        """The engine did not answer :class:`Inspect`."""
        c = self._get(container_id, Phase.INSPECTING)
        if c.removed:  # destroyed meanwhile: 404 is all it could say
            return c.feed(c.classify(None), now, None)
        return c.feed(Input.NO_ANSWER, now)

    def logs_ended(self, container_id: str, now: float) -> list[Action]:
        """The :class:`LogStream` of :class:`OpenLogs` is finished (or abandoned)."""
        c = self._containers.get(container_id)
        if c is None:
            raise LocalProtocolError(f"container {container_id[:12]} is not followed")
        return c.feed(Input.LOGS_ENDED, now)

    def handle_timeout(self, container_id: str, now: float) -> list[Action]:
        """The container's deadline passed (a stale call does nothing)."""
        c = self._containers.get(container_id)
        if c is None or c.deadline is None or now < c.deadline:
            return []
        return c.feed(Input.TIMEOUT, now)

    # -- internals --------------------------------------------------------------------

    def _get(self, container_id: str, phase: Phase) -> Container:
        c = self._containers.get(container_id)
        if c is None or c.phase is not phase:
            raise LocalProtocolError(
                f"container {container_id[:12]}: an inspect answer nobody asked for"
            )
        return c

    def _track(self, container_id: str, *, fresh: bool, now: float) -> list[Action]:
        c = Container(id=container_id, fresh=fresh, settings=self._settings, sessions=self)
        self._containers[container_id] = c
        return c.feed(Input.TRACK, now)

    def publish(
        self,
        c: Container,
        status: StatusName,
        metadata: dict[str, Any],
        now: float,
        out: list[Action],
        *,
        first: bool = False,
    ) -> None:
        session_id = c.session_id
        self._expire(now)
        running = self._running.setdefault(session_id, set())
        if status == "running":
            running.add(c.id)
            if session_id in self._end_fields:
                metadata.update(_RESET)  # the hub merges: clear the previous end
            self._ended_at.pop(session_id, None)
        else:
            running.discard(c.id)
            if running:
                return  # another container of the session still runs
            del self._running[session_id]
            self._end_fields.add(session_id)
            self._ended_at.pop(session_id, None)
            self._ended_at[session_id] = now  # last in end order
        out.append(
            PublishStatus(
                container_id=c.id,
                session_id=session_id,
                status=status,
                metadata=metadata,
                first=first,
            )
        )

    def _expire(self, now: float) -> None:
        """Forget the end fields of sessions the hub has evicted by now."""
        timeout = self._session_timeout
        while self._ended_at:
            session_id, ended_at = next(iter(self._ended_at.items()))
            if ended_at + timeout > now:
                break
            del self._ended_at[session_id]
            self._end_fields.discard(session_id)

    def forget(self, c: Container, now: float, out: list[Action]) -> None:
        self._containers.pop(c.id, None)
        running = self._running.get(c.session_id)
        if running is not None:
            running.discard(c.id)
            if not running:
                del self._running[c.session_id]
        out.append(Forget(container_id=c.id, session_id=c.session_id, announced=bool(c.status)))

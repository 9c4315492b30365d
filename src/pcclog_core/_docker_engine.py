"""What the Docker engine tells the Docker source, decoded (Engine API, SPEC §4).

* :class:`ContainerInfo` — the fields of ``GET /containers/{id}/json``
  (``inspect``) the lifecycle uses.
* :class:`EngineEvent` — one ``start``/``die``/``oom``/``destroy`` of
  ``GET /events``; :class:`EventStream` decodes that stream (one JSON object
  per line) from the raw bytes of the connection.
* :class:`LogStream` — one ``GET /containers/{id}/logs`` exchange, from the
  raw bytes of the connection to :class:`~._docker_lines.LogEntry` values:
  HTTP (:mod:`._docker_http`), the log stream (:mod:`._docker_stream`), the
  resume filter (:mod:`._docker_resume`) and the classifier
  (:mod:`._docker_lines`), in one ``receive_data``.

Nothing here reads a socket: the runtime writes ``request`` to a connection
it opened and feeds what it reads.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, urlencode

import msgspec

from ._docker_http import EngineHTTPError, Response
from ._docker_lines import LineClassifier, LogEntry
from ._docker_resume import ResumeFilter, since_text
from ._docker_stream import DockerStreamDecoder, DockerStreamError
from ._redact import secret_env_values
from ._timefmt import NS_PER_S, format_ns, parse_rfc3339_ns

__all__ = [
    "EVENTS",
    "ContainerInfo",
    "EngineEvent",
    "EventStream",
    "LogStream",
    "StreamEnd",
    "engine_iso",
    "engine_ns",
    "run_start",
    "running_ids",
]

#: The engine events the lifecycle listens to.
EVENTS: Final = ("start", "die", "oom", "destroy")
EARLY_LINES: Final = 1.0  # a run's first lines can be stamped before StartedAt
_MAX_EVENT: Final = 1_048_576
_ERROR_TEXT: Final = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerInfo:
    """An inspected container: what the lifecycle needs of ``State`` and ``Config``.

    ``running`` is "runs and is not restarting"; ``process_running`` is the
    engine's ``State.Running`` alone. ``started_at``/``finished_at`` are the
    engine's strings (Go's zero time ``0001-01-01T00:00:00Z`` when unset).
    """

    name: str
    image: str
    tty: bool
    label_value: str
    running: bool
    process_running: bool
    started_at: str
    finished_at: str
    exit_code: int | None
    oom_killed: bool
    # Values of the secret-looking environment variables (``*_TOKEN``,
    # ``*_KEY``, ``ANTHROPIC_API_KEY`` …): masked in the session's entries
    # (SPEC §8); never logged, never published.
    secrets: tuple[str, ...] = ()

    @classmethod
    def from_inspect(cls, info: Mapping[str, Any], label: str) -> ContainerInfo:
        config = info.get("Config") or {}
        labels = config.get("Labels") or {}
        state = info.get("State") or {}
        code = state.get("ExitCode")
        return cls(
            name=str(info.get("Name") or "").lstrip("/"),
            image=str(config.get("Image") or info.get("Image") or ""),
            tty=bool(config.get("Tty")),
            label_value=str(labels.get(label) or ""),
            running=bool(state.get("Running")) and not state.get("Restarting"),
            process_running=bool(state.get("Running")),
            started_at=str(state.get("StartedAt") or ""),
            finished_at=str(state.get("FinishedAt") or ""),
            exit_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            oom_killed=bool(state.get("OOMKilled")),
            secrets=tuple(
                secret_env_values(e for e in config.get("Env") or () if isinstance(e, str))
            ),
        )


def engine_ns(ts: str) -> int | None:
    """An engine timestamp in ns, or ``None`` for Go's zero time / garbage."""
    if not ts or ts.startswith("0001-"):
        return None
    try:
        return parse_rfc3339_ns(ts)
    except ValueError:
        return None


def engine_iso(ts: str) -> str | None:
    ns = engine_ns(ts)
    if ns is None:
        return None
    try:
        return format_ns(ns)
    except ValueError:
        return None


def run_start(info: ContainerInfo) -> str | None:
    """``since`` that reads a container's current run and none of its older ones.

    The engine sets ``StartedAt`` only after the process runs, so its first
    lines can be stamped a little earlier; and a quick exit's ``FinishedAt``
    (containerd's clock) can even precede ``StartedAt``. So: while it runs,
    ``FinishedAt`` is the previous run's end (zero if none: read it all);
    once it has exited, allow :data:`EARLY_LINES` seconds before
    ``StartedAt``.
    """
    started = engine_ns(info.started_at)
    if started is None:
        return None
    if info.process_running:
        since = engine_ns(info.finished_at)
        if since is None or since >= started:
            return None
    else:
        since = started - int(EARLY_LINES * NS_PER_S)
    return since_text(since)


def running_ids(containers: list[dict[str, Any]]) -> list[str]:
    """The ids of ``GET /containers/json?all=1`` entries that run (or are paused)."""
    return [
        str(c["Id"])
        for c in containers
        if str(c.get("State", "")).lower() in ("running", "paused") and c.get("Id")
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineEvent:
    """One container event. ``time_nano`` is the engine's ``timeNano`` (wall clock)."""

    action: str
    container_id: str
    exit_code: int | None = None
    time_nano: int | None = None

    @classmethod
    def from_json(cls, event: object) -> EngineEvent | None:
        """An event of the engine's ``/events`` stream, or ``None`` if it is none of ours."""
        if not isinstance(event, dict):
            return None
        action = str(event.get("Action") or event.get("status") or "")
        actor = event.get("Actor") or {}
        if not isinstance(actor, dict):
            actor = {}
        container_id = str(actor.get("ID") or event.get("id") or "")
        if not container_id or action not in EVENTS:
            return None
        attributes = actor.get("Attributes") or {}
        exit_code = None
        if action == "die" and isinstance(attributes, dict):
            try:
                exit_code = int(attributes.get("exitCode", ""))
            except (TypeError, ValueError):
                exit_code = None
        time_nano = event.get("timeNano")
        return cls(
            action=action,
            container_id=container_id,
            exit_code=exit_code,
            time_nano=time_nano
            if isinstance(time_nano, int) and not isinstance(time_nano, bool)
            else None,
        )


def _query(params: Mapping[str, str]) -> str:
    return urlencode(params, quote_via=quote)


class EventStream:
    """``GET /events`` filtered to our label's container events, decoded.

    :meth:`receive_data` returns the events a read completed. :attr:`error`
    is set (and :attr:`finished`) when the engine refuses the request or the
    stream breaks its framing; a record over 1 MiB is such an error.
    """

    __slots__ = ("_http", "_pending", "error", "finished", "request")

    def __init__(self, *, api_prefix: str, host: str, label: str) -> None:
        filters = {"type": ["container"], "label": [label], "event": list(EVENTS)}
        target = f"{api_prefix}/events?" + _query(
            {"filters": msgspec.json.encode(filters).decode()}
        )
        self._http = Response(target, host=host)
        self.request = self._http.request
        self._pending = b""
        self.error: str | None = None
        self.finished = False

    @property
    def status(self) -> int | None:
        head = self._http.head
        return None if head is None else head.status

    def receive_data(self, data: bytes) -> list[EngineEvent]:
        if self.finished:
            return []
        try:
            body = self._http.receive_data(data)
        except EngineHTTPError as exc:
            return self._fail(str(exc))
        head = self._http.head
        if head is not None and head.status != 200:
            return self._fail(f"the engine answered {head.status} {head.reason}")
        if self._http.closed or self._http.complete:
            self.finished = True
        if not body:
            return []
        pending = self._pending + body if self._pending else body
        *records, self._pending = pending.split(b"\n")
        if len(self._pending) > _MAX_EVENT:
            return self._fail("an engine event exceeds 1 MiB")
        out = []
        for record in records:
            if not record.strip():
                continue
            try:
                event = EngineEvent.from_json(msgspec.json.decode(record))
            except msgspec.DecodeError:
                return self._fail(f"an engine event is not JSON: {record[:40]!r}")
            if event is not None:
                out.append(event)
        return out

    def _fail(self, error: str) -> list[EngineEvent]:
        self.error = error
        self.finished = True
        return []


class StreamEnd(enum.Enum):
    """How a log stream ended."""

    EOF = "eof"  # the engine ended the body: the container stopped, or the read is done
    BROKEN = "broken"  # the connection or the framing broke first
    GONE = "gone"  # 404: no such container
    REFUSED = "refused"  # another error status: these logs cannot be read (log driver)


class LogStream:
    """One ``GET /containers/{id}/logs`` exchange: raw bytes in, log entries out.

    The entries are the new lines only (the :class:`ResumeFilter` it is
    given drops what was delivered before, and counts what it lets through),
    classified. :attr:`finished` turns true when the exchange is over (the
    runtime then closes the connection; after EOF it is over in any case),
    with :attr:`outcome` saying how. A broken stream does not flush a
    partial line: it is read again, whole, on re-attach. :meth:`take_errors`
    gives the engine's in-band errors and a decoding error, for the log.
    """

    __slots__ = (
        "_classifier",
        "_decoder",
        "_errors",
        "_filter",
        "_http",
        "_refusal",
        "delivered",
        "finished",
        "follow",
        "outcome",
        "request",
    )

    def __init__(
        self,
        *,
        target: str,
        host: str,
        tty: bool,
        follow: bool,
        max_line_bytes: int,
        resume: ResumeFilter,
        classifier: LineClassifier,
    ) -> None:
        self._http = Response(target, host=host)
        self.request = self._http.request
        self.follow = follow
        self._decoder = DockerStreamDecoder(tty=tty, max_line_bytes=max_line_bytes)
        self._filter = resume
        self._classifier = classifier
        self._errors: list[str] = []
        self._refusal = b""
        self.delivered = 0
        self.finished = False
        self.outcome: StreamEnd | None = None
        resume.start_attach()

    @property
    def status(self) -> int | None:
        head = self._http.head
        return None if head is None else head.status

    @property
    def refusal(self) -> str:
        """The engine's error text when it refused the request (at most 300 bytes)."""
        return self._refusal.decode("utf-8", "replace").strip()

    def take_errors(self) -> list[str]:
        errors = self._errors
        self._errors = []
        return errors

    def receive_data(self, data: bytes) -> list[LogEntry]:
        """The new entries ``data`` completes; ``b""`` means EOF."""
        if self.finished:
            return []
        http = self._http
        try:
            body = http.receive_data(data)
        except EngineHTTPError as exc:
            self._errors.append(str(exc))
            return self._end(StreamEnd.BROKEN)
        head = http.head
        if head is None:
            return []
        if head.status != 200:
            room = _ERROR_TEXT - len(self._refusal)
            if room > 0:
                self._refusal += body[:room]
            if http.complete or http.closed:
                self._end(StreamEnd.GONE if head.status == 404 else StreamEnd.REFUSED)
            return []
        decoder = self._decoder
        outcome = None
        try:
            if body:
                decoder.receive_data(body)
            if http.complete:
                decoder.receive_data(b"")
                outcome = StreamEnd.EOF
            elif http.closed:
                outcome = StreamEnd.BROKEN  # no last chunk: the connection dropped
        except DockerStreamError as exc:
            self._errors.append(str(exc))
            outcome = StreamEnd.BROKEN
        lines = decoder.lines()
        errors = decoder.daemon_errors()
        if errors:
            self._errors.extend(errors)
        entries = []
        if lines:
            accept = self._filter.accept
            entry = self._classifier.entry
            entries = [entry(line) for line in lines if accept(line)]
            self.delivered += len(entries)
        if outcome is not None:
            self._end(outcome)
        return entries

    def _end(self, outcome: StreamEnd) -> list[LogEntry]:
        self.outcome = outcome
        self.finished = True
        return []

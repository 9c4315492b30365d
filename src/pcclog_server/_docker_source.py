"""The Docker source: containers carrying ``DOCKER_LABEL`` are sessions (SPEC §4).

Theory of operation
-------------------

Threads. The ``docker`` SDK blocks, so every engine call runs in a
**dedicated daemon thread** (:meth:`DockerSource._in_thread`): one long-lived
thread per followed log stream, one for the event stream, and short-lived
ones for ``inspect``/``list`` (at most :data:`_CONTROL_THREADS` at a time).
Threads hand results back with ``anyio.from_thread.run_sync(...,
token=...)``. Being daemon threads, none of them can hold up the process's
exit, and a cancelled task never waits for one.

Interruption. Shutdown (the task group cancelled) sets ``_closing`` and
shuts down (``shutdown(SHUT_RDWR)``) the socket of every open streaming
response: a thread blocked in ``read`` gets EOF at once and returns. A
socket is only ever *shut down* from another thread, never closed (closing
a ``BufferedReader`` another thread is reading from would block on its
lock); the reading thread closes its own response.

Reading. A follow stream is ``GET /containers/{id}/logs?follow=1&
timestamps=1&stdout=1&stderr=1``, opened with the SDK's low-level ``_get``
(docker-py's ``logs()`` merges stdout and stderr). The reader takes the raw
HTTP/1.1 body from the connection's buffered socket (``read1``: whatever is
there, one ``recv`` at most), undoes the chunked transfer coding itself
(:class:`_Unchunker`, RFC 9112 §7.1), and feeds the bytes to the sans-IO
:class:`~pcclog_core._docker.DockerStreamDecoder` (``tty=Config.Tty``). The
lines of one read are filtered (:class:`~pcclog_core._docker.ResumeFilter`),
classified and encoded in the thread and published with **one** hop to the
event loop (:meth:`DockerSource._deliver`), which then flushes the viewers
once. The engine ends a stream it is done with by the terminating chunk:
that is a clean EOF (the container stopped). A stream that breaks without
one (engine restart) is *not* flushed: a partial line is fetched again,
whole, on re-attach.

Backpressure. ``_deliver`` returns ``hub.producers_paused`` (the hub's pool
over ``MEMORY_BUDGET``); while it is true the reader does not read, waiting
on ``Server.wait_for_room`` (woken when the pool drains, no polling), so the
engine and the kernel buffer.

Lifecycle. One manager task per container (:meth:`DockerSource._manage`)
owns its status and its log stream, so a container's entries are in order:
``running`` (metadata ``containerId``, ``containerName``, ``image``,
``startTime``), its lines, then ``stopped`` (exit 0) or ``error`` (non-zero
exit or OOM kill; ``exitCode``, ``finishedAt``, ``oomKilled``). The event
stream (``start``, ``die``, ``oom``, ``destroy``) only wakes managers and
records exit details; ``inspect`` is the truth. After a follow stream ends
the manager inspects:

* still running, same ``StartedAt``: the stream broke (engine restart, the
  SDK ending it) → re-attach with backoff, ``since=`` the last delivered
  timestamp; the ResumeFilter drops what is sent twice.
* exited: one more non-follow read from the last timestamp (anything the
  stream missed), then the end status; wait for ``start``/``destroy``.
* running with a new ``StartedAt`` (a quick restart): end the previous run
  (exit code from its ``die`` event), then ``running`` again. The session
  (the label's value) is the same.
* gone (404): the session ends with its last known status (``error`` if it
  was still running) and the hub evicts it after ``SESSION_TIMEOUT``.

Attach points. A container running at pcclog's first sync with the engine
is read from ``tail=HISTORY_LINES`` (a restarted pcclog replays recent
history). One seen later (it started since; also one found on a reconnect)
is read from the start of its current run, not its older runs
(:func:`_run_start`). Every later read is ``since=`` the last delivered
timestamp. ``containerId`` is the 12-character short id. A label with an
empty value names the session after the container. Lines longer than
``MAX_LINE_BYTES`` (``Limits.max_line_bytes``) are cut with a marker.

Engine connection. ``ready`` is true while the event stream is open
(DOCKER_ENABLED=true: retried with backoff, ``/readyz`` 503 until then).
With ``auto`` and no engine answering at start the source logs that once
and stays out of the way (ready).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import msgspec

from pcclog_core import MessageError
from pcclog_core._docker import (
    DockerLine,
    DockerStreamDecoder,
    DockerStreamError,
    ResumeFilter,
    classify_line,
    iso_millis,
    parse_rfc3339_ns,
)

if TYPE_CHECKING:
    from ._config import Config
    from ._server import Server

__all__ = ["DockerSource"]

T = TypeVar("T")

_READ_SIZE: Final = 64 * 1024  # one recv at most per read
_REQUEST_TIMEOUT: Final = 10.0  # connect + response headers, and control calls
_CONTROL_THREADS: Final = 16  # inspect/list calls in flight at once
_DIE_GRACE: Final = 2.0  # how long to wait for a die event's exit code
_EARLY_LINES: Final = 1.0  # a run's first lines can be stamped before StartedAt
_EVENTS: Final = ("start", "die", "oom", "destroy")

Outcome = Literal["eof", "broken", "gone", "unsupported", "closed"]


# ---------------------------------------------------------------------------
# HTTP/1.1 chunked transfer coding
# ---------------------------------------------------------------------------

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)
_MAX_CHUNK_LINE: Final = 4096
_CHUNK_HEAD: Final = re.compile(rb"([0-9a-fA-F]{1,16})\r\n")


class _Unchunker:
    """Undo the chunked transfer coding (RFC 9112 §7.1) of a streamed body.

    The engine flushes every log record as its own chunk; reading the
    socket in big blocks and unchunking here costs one ``recv`` for many
    records instead of one call per chunk. ``done`` turns true at the last
    chunk and its trailer section: the engine ended the stream on purpose
    (the connection itself stays open for keep-alive). Malformed framing
    raises ``ValueError``.
    """

    __slots__ = ("_left", "_line", "_state", "done")

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = b""
        self.done = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _SIZE and not self._line:
                # Fast path: whole chunks, one regex match each.
                m = _CHUNK_HEAD.match(data, pos)
                if m is not None:
                    size = int(m.group(1), 16)
                    start = m.end()
                    stop = start + size
                    if size and stop + 2 <= end and data[stop : stop + 2] == b"\r\n":
                        out.append(data[start:stop])
                        pos = stop + 2
                        continue
            if state == _DATA:
                take = min(self._left, end - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
                continue
            if state == _DONE:
                break  # bytes after the body belong to the next response
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > _MAX_CHUNK_LINE:
                    raise ValueError("chunked body: control line too long")
                break
            line = data[pos:nl]
            if self._line:
                line = self._line + line
                self._line = b""
            pos = nl + 1
            if line[-1:] == b"\r":
                line = line[:-1]
            if state == _DATA_END:
                if line:
                    raise ValueError("chunked body: no CRLF after chunk data")
                self._state = _SIZE
            elif state == _SIZE:
                size_text = line.split(b";", 1)[0].strip()
                if not size_text:
                    raise ValueError("chunked body: empty chunk size")
                size = int(size_text, 16)  # ValueError when not hex
                if size:
                    self._left = size
                    self._state = _DATA
                else:
                    self._state = _TRAILER
            elif not line:  # _TRAILER: an empty line ends the trailer section
                self._state = _DONE
                self.done = True
        return out[0] if len(out) == 1 else b"".join(out)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class _Backoff:
    """Exponential delays between ``first`` and ``cap`` seconds."""

    __slots__ = ("_cap", "_delay", "_first")

    def __init__(self, first: float, cap: float) -> None:
        self._first = first
        self._cap = cap
        self._delay = first

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._cap, delay * 2)
        return delay

    def reset(self) -> None:
        self._delay = self._first


def _ns(ts: object) -> int | None:
    """An engine timestamp in ns, or ``None`` for Go's zero time / garbage."""
    if not isinstance(ts, str) or not ts or ts.startswith("0001-"):
        return None
    try:
        return parse_rfc3339_ns(ts)
    except ValueError:
        return None


def _iso(ts: object) -> str | None:
    ns = _ns(ts)
    if ns is None:
        return None
    try:
        return iso_millis(ns)
    except ValueError:
        return None


def _run_start(state: dict[str, Any]) -> str | None:
    """``since`` that reads a container's current run and none of its older ones.

    The engine sets ``StartedAt`` only after the process runs, so its first
    lines can be stamped a little earlier; and a quick exit's ``FinishedAt``
    (containerd's clock) can even precede ``StartedAt``. So: while it runs,
    ``FinishedAt`` is the previous run's end (zero if none: read it all);
    once it has exited, allow :data:`_EARLY_LINES` seconds before
    ``StartedAt``.
    """
    started = _ns(state.get("StartedAt"))
    if started is None:
        return None
    if state.get("Running"):
        since = _ns(state.get("FinishedAt"))
        if since is None or since >= started:
            return None
    else:
        since = started - int(_EARLY_LINES * 1e9)
    seconds, nanos = divmod(since, 1_000_000_000)
    return f"{seconds}.{nanos:09d}"


def _response_socket(response: Any) -> socket.socket | None:
    """The socket under a streamed ``requests`` response (unix, tcp, tls)."""
    try:
        raw = response.raw._fp.fp.raw
    except AttributeError:
        return None
    sock = getattr(raw, "_sock", raw)
    return sock if isinstance(sock, socket.socket) else None


class _Tracked:
    """One labelled container, owned by its manager task."""

    __slots__ = (
        "die_code",
        "die_ns",
        "filter",
        "first_since",
        "fresh",
        "id",
        "image",
        "name",
        "no_logs",
        "oom",
        "raw_stderr",
        "raw_stdout",
        "refused",
        "removed",
        "run",
        "session_id",
        "short_id",
        "status",
        "tty",
        "wake",
    )

    def __init__(self, container_id: str, *, fresh: bool) -> None:
        self.id = container_id
        # Found at pcclog's first sync with the engine: tail=HISTORY_LINES.
        # Seen later (it started since): from its start (``first_since``).
        self.fresh = fresh
        self.first_since: str | None = None
        self.short_id = container_id[:12]
        self.session_id = ""
        self.name = ""
        self.image = ""
        self.tty = False
        self.filter = ResumeFilter()
        self.run = ""  # StartedAt of the run whose status we published
        self.status = ""  # "", "running", "stopped", "error": published
        self.die_code: int | None = None  # from the latest die event
        self.die_ns = 0
        self.oom = False
        self.removed = False
        self.no_logs = False  # the log driver cannot be read
        self.refused = False  # the hub refused the session (logged once)
        self.wake = anyio.Event()
        self.raw_stdout = msgspec.Raw(
            msgspec.json.encode({"containerId": self.short_id, "stream": "stdout"})
        )
        self.raw_stderr = msgspec.Raw(
            msgspec.json.encode({"containerId": self.short_id, "stream": "stderr"})
        )


Batch = list[tuple[str, str, str, msgspec.Raw]]


# ---------------------------------------------------------------------------
# The source
# ---------------------------------------------------------------------------


class DockerSource:
    """Follows labelled containers into the hub (see the module docstring)."""

    name = "docker"

    def __init__(
        self,
        config: Config,
        *,
        required: bool,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.required = required
        self.label = config.docker_label
        self.stdout_level = config.docker_stdout_level
        self.stderr_level = config.docker_stderr_level
        self.history_lines = config.history_lines
        self._max_line_bytes = config.max_line_bytes
        self._client_factory = client_factory or _default_client
        self._client: Any = None
        self._api: Any = None
        self._server: Server | None = None
        self._token: Any = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._control: anyio.CapacityLimiter | None = None
        self._containers: dict[str, _Tracked] = {}
        self._responses: set[Any] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._connected = False
        self._absent = False
        self._synced = False  # the first sync with the engine is done

    @property
    def ready(self) -> bool:
        """Connected to the engine, or ``auto`` found none (then not needed)."""
        return self._connected or self._absent

    # --- the task ---------------------------------------------------------

    async def run(self, server: Server) -> None:
        self._server = server
        self._token = anyio.lowlevel.current_token()
        self._control = anyio.CapacityLimiter(_CONTROL_THREADS)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self._engine_loop()  # returns for auto without an engine
        finally:
            self._close_all()

    def _close_all(self) -> None:
        """Shutdown: no more publishing; wake every thread blocked on a read."""
        self._closing = True
        self._connected = False
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            _interrupt(response)

    async def _engine_loop(self) -> None:
        assert self._server is not None
        log = self._server.log
        backoff = _Backoff(0.2, 2.0)
        first = True
        outage_logged = False
        while not self._closing:
            try:
                if self._api is None:
                    self._client = await self._in_thread(self._client_factory)
                    self._api = self._client.api
                events = await self._in_thread(self._open_events)
            except Exception as exc:
                if first and not self.required:
                    self._absent = True
                    log.info(
                        "no Docker engine answered: not following containers (DOCKER_ENABLED=auto)",
                        error=_error_text(exc),
                    )
                    return
                if not outage_logged:
                    log.warn(
                        "Docker engine unavailable, retrying",
                        error=_error_text(exc),
                        required=self.required,
                    )
                    outage_logged = True
                first = False
                await anyio.sleep(backoff.next())
                continue
            first = False
            try:
                await self._engine_session(events, backoff)
            except Exception as exc:
                if self._closing:
                    return
                log.warn("Docker engine connection lost, reconnecting", error=_error_text(exc))
            else:
                if self._closing:
                    return
                log.warn("Docker event stream ended, reconnecting")
            finally:
                self._connected = False
                self._unregister(events)
                _interrupt(events)
            outage_logged = True
            await anyio.sleep(backoff.next())

    async def _engine_session(self, events: Any, backoff: _Backoff) -> None:
        """Sync with the engine, then dispatch its events until the stream ends."""
        assert self._server is not None and self._tg is not None
        try:
            running = await self._control_call(self._list_running)
        except BaseException:
            events.close()  # no thread reads it yet
            raise
        self._connected = True
        backoff.reset()
        self._server.log.info(
            "following Docker containers",
            label=self.label,
            running=len(running),
            engine=getattr(self._api, "base_url", ""),
        )
        for container_id in running:
            self._track(container_id, fresh=self._synced)
        self._synced = True  # from now on, new containers are read from their start
        for tracked in self._containers.values():
            tracked.wake.set()  # re-inspect: events were missed while disconnected
        await self._in_thread(self._read_events, events)

    # --- threads ------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a new daemon thread; cancelling does not wait for it."""
        done = anyio.Event()
        box: list[tuple[bool, Any]] = []
        token = self._token

        def target() -> None:
            try:
                box.append((True, fn(*args)))
            except BaseException as exc:
                box.append((False, exc))
            try:
                anyio.from_thread.run_sync(done.set, token=token)
            except Exception:
                pass  # the event loop is gone: shutdown

        threading.Thread(target=target, name=f"pcclog-docker-{fn.__name__}", daemon=True).start()
        await done.wait()
        ok, value = box[0]
        if ok:
            result: T = value
            return result
        raise value

    async def _control_call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._control is not None
        async with self._control:
            return await self._in_thread(fn, *args)

    def _to_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """From a reader thread: run ``fn`` on the event loop, return its result."""
        return anyio.from_thread.run_sync(fn, *args, token=self._token)

    def _register(self, response: Any) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._responses.add(response)
            return True

    def _unregister(self, response: Any) -> None:
        with self._lock:
            self._responses.discard(response)

    # --- engine calls (in threads) -------------------------------------------

    def _open_events(self) -> Any:
        api = self._api
        filters = {"type": ["container"], "label": [self.label], "event": list(_EVENTS)}
        response = api._get(
            api._url("/events"),
            params={"filters": json.dumps(filters)},
            stream=True,
            timeout=_REQUEST_TIMEOUT,
        )
        api._raise_for_status(response)
        if not self._register(response):
            response.close()
            raise RuntimeError("shutting down")
        sock = _response_socket(response)
        if sock is not None:
            sock.settimeout(None)
        return response

    def _read_events(self, response: Any) -> None:
        """Thread: decode the JSON event stream; hand events over per read."""
        fp = response.raw._fp.fp
        unchunk = _Unchunker() if response.raw._fp.chunked else None
        pending = b""
        try:
            while not self._closing:
                data = fp.read1(_READ_SIZE)
                if not data:
                    return
                if unchunk is not None:
                    data = unchunk.feed(data)
                pending += data
                if len(pending) > 1_048_576:
                    raise ValueError("an engine event exceeds 1 MiB")
                *records, pending = pending.split(b"\n")
                events = [msgspec.json.decode(r) for r in records if r.strip()]
                if events:
                    self._to_loop(self._on_events, events)
                if unchunk is not None and unchunk.done:
                    return
        finally:
            self._unregister(response)
            response.close()

    def _list_running(self) -> list[str]:
        containers = self._api.containers(all=True, filters={"label": [self.label]})
        return [
            c["Id"]
            for c in containers
            if str(c.get("State", "")).lower() in ("running", "paused") and c.get("Id")
        ]

    def _inspect_blocking(self, container_id: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            info: dict[str, Any] = self._api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        return info

    def _stream_blocking(self, t: _Tracked, params: dict[str, Any]) -> Outcome:
        """Thread: read one log stream to its end, publishing per read."""
        api = self._api
        try:
            response = api._get(
                api._url("/containers/{0}/logs", t.id),
                params=params,
                stream=True,
                timeout=_REQUEST_TIMEOUT,
            )
        except Exception:
            return "closed" if self._closing else "broken"
        if not self._register(response):
            response.close()
            return "closed"
        try:
            status = response.status_code
            if status == 404:
                return "gone"
            if status >= 400:
                self._to_loop(self._log_unsupported, t, status, response.text[:300])
                return "unsupported"
            sock = _response_socket(response)
            if sock is not None:
                sock.settimeout(None)
            return self._pump(t, response)
        except Exception:
            return "closed" if self._closing else "broken"
        finally:
            self._unregister(response)
            response.close()

    def _pump(self, t: _Tracked, response: Any) -> Outcome:
        fp = response.raw._fp.fp
        unchunk = _Unchunker() if response.raw._fp.chunked else None
        decoder = DockerStreamDecoder(tty=t.tty, max_line_bytes=self._max_line_bytes)
        t.filter.start_attach()
        clean = False
        while True:
            data = fp.read1(_READ_SIZE)
            if self._closing:
                return "closed"
            if not data:
                if unchunk is not None:
                    return "broken"  # no last chunk: the connection dropped
                clean = True
            elif unchunk is not None:
                data = unchunk.feed(data)
                clean = unchunk.done
            try:
                if data:
                    decoder.receive_data(data)
                if clean:
                    decoder.receive_data(b"")
            except DockerStreamError as exc:
                self._deliver_safe(t, self._prepare(t, decoder.lines()), [str(exc)])
                return "broken"
            lines = decoder.lines()
            errors = decoder.daemon_errors()
            if lines or errors:
                batch = self._prepare(t, lines)
                if (batch or errors) and self._deliver_safe(t, batch, errors):
                    self._to_loop_async_wait()
            if clean:
                return "eof"

    def _prepare(self, t: _Tracked, lines: list[DockerLine]) -> Batch:
        """Thread: drop what was delivered before, classify, encode ``data``."""
        out: Batch = []
        accept = t.filter.accept
        short_id = t.short_id
        stdout_level = self.stdout_level
        stderr_level = self.stderr_level
        encode = msgspec.json.encode
        for line in lines:
            if not accept(line):
                continue
            text = line.text
            first = text[:1]
            if first != "{" and not first.isspace():
                # Not a JSON object (classify_line's own test, inlined: most lines).
                if line.stream == "stdout":
                    out.append((stdout_level, text, iso_millis(line.timestamp_ns), t.raw_stdout))
                else:
                    out.append((stderr_level, text, iso_millis(line.timestamp_ns), t.raw_stderr))
                continue
            c = classify_line(
                line, container_id=short_id, stdout_level=stdout_level, stderr_level=stderr_level
            )
            data = c.data
            if len(data) == 2:  # a plain line: only containerId and stream
                raw = t.raw_stdout if line.stream == "stdout" else t.raw_stderr
            else:
                raw = msgspec.Raw(encode(data))
            out.append((c.level, c.message, c.timestamp, raw))
        return out

    def _deliver_safe(self, t: _Tracked, batch: Batch, errors: list[str]) -> bool:
        """Thread: publish on the loop; True when producers are paused."""
        if not batch and not errors:
            return False
        return self._to_loop(self._deliver, t, batch, errors)

    def _to_loop_async_wait(self) -> None:
        anyio.from_thread.run(self._wait_unpaused, token=self._token)

    # --- on the event loop: publishing ----------------------------------------

    def _deliver(self, t: _Tracked, batch: Batch, errors: list[str]) -> bool:
        """Publish one read's lines, then write to the viewers once."""
        server = self._server
        if self._closing or server is None:
            return False
        hub = server.hub
        now = time.monotonic()
        session_id = t.session_id
        publish = hub.publish_log
        # One read's lines are one hub batch: each viewer gets them with a
        # single append (Hub.begin_batch).
        hub.begin_batch()
        try:
            for level, message, timestamp, raw in batch:
                publish(
                    session_id, level=level, message=message, timestamp=timestamp, data=raw, now=now
                )
        except MessageError as exc:
            self._refused(t, exc)
        finally:
            hub.end_batch()
        for error in errors:
            server.log.warn(
                "Docker engine error in a log stream", container=t.short_id, error=error
            )
        server.flush_ready()
        return hub.producers_paused

    async def _wait_unpaused(self) -> None:
        assert self._server is not None
        await self._server.wait_for_room()

    def _refused(self, t: _Tracked, exc: MessageError) -> None:
        if not t.refused and self._server is not None:
            t.refused = True
            self._server.log.warn(
                "the hub refused a Docker container's entries",
                container=t.short_id,
                session=t.session_id,
                code=str(exc.code),
                error=exc.message,
            )

    def _publish_status(
        self, t: _Tracked, status: Literal["running", "stopped", "error"], metadata: dict[str, Any]
    ) -> None:
        server = self._server
        if server is None or self._closing:
            return
        try:
            server.hub.publish_status(
                t.session_id, status=status, metadata=metadata, now=time.monotonic()
            )
        except MessageError as exc:
            self._refused(t, exc)
            return
        t.refused = False
        server.flush_ready()

    def _log_unsupported(self, t: _Tracked, status: int, text: str) -> None:
        if self._server is not None:
            self._server.log.error(
                "cannot read a Docker container's logs",
                container=t.short_id,
                session=t.session_id,
                status=status,
                error=text.strip(),
            )

    # --- on the event loop: events --------------------------------------------

    def _on_events(self, events: list[Any]) -> None:
        for event in events:
            if not isinstance(event, dict):
                continue
            action = str(event.get("Action") or event.get("status") or "")
            actor = event.get("Actor") or {}
            container_id = str(actor.get("ID") or event.get("id") or "")
            if not container_id:
                continue
            tracked = self._containers.get(container_id)
            if action == "start":
                self._track(container_id, fresh=True)
                continue
            if tracked is None:
                continue
            if action == "die":
                attributes = actor.get("Attributes") or {}
                try:
                    tracked.die_code = int(attributes.get("exitCode", ""))
                except ValueError:
                    tracked.die_code = None
                time_ns = event.get("timeNano")
                tracked.die_ns = time_ns if isinstance(time_ns, int) else time.time_ns()
            elif action == "oom":
                tracked.oom = True
            elif action == "destroy":
                tracked.removed = True
            tracked.wake.set()

    def _track(self, container_id: str, *, fresh: bool) -> None:
        tracked = self._containers.get(container_id)
        if tracked is not None:
            tracked.wake.set()
            return
        if self._tg is None or self._closing:
            return
        tracked = _Tracked(container_id, fresh=fresh)
        self._containers[container_id] = tracked
        self._tg.start_soon(self._manage, tracked, name=f"docker {container_id[:12]}")

    # --- one container ----------------------------------------------------------

    async def _manage(self, t: _Tracked) -> None:
        assert self._server is not None
        log = self._server.log
        try:
            await self._manage_container(t)
        except Exception as exc:  # a bug must cost one container, not the source
            if not self._closing:
                log.error("Docker container follower failed", container=t.short_id, error=repr(exc))
        finally:
            if self._containers.get(t.id) is t:
                del self._containers[t.id]

    async def _manage_container(self, t: _Tracked) -> None:
        log = self._server.log if self._server is not None else None
        backoff = _Backoff(0.05, 2.0)
        streamed_run = ""  # the run whose follow stream just ended
        while not self._closing:
            t.wake = anyio.Event()  # events from here on wake us again
            info = None if t.removed else await self._inspect(t)
            if info is None:
                await self._end_removed(t)
                return
            self._describe(t, info)
            state = info.get("State") or {}
            started = str(state.get("StartedAt") or "")
            running = bool(state.get("Running")) and not state.get("Restarting")
            if t.status == "running" and t.run and t.run != started:
                await self._end_unseen_run(t)
            if started != t.run and _ns(started) is not None:
                if t.status == "" and log is not None:
                    log.info(
                        "following Docker container",
                        container=t.short_id,
                        name=t.name,
                        session=t.session_id,
                    )
                self._publish_running(t, started)
            if running and not t.no_logs:
                if streamed_run == started:
                    # The stream ended but the run goes on: it broke.
                    delay = backoff.next()
                    if log is not None:
                        log.info(
                            "re-attaching to Docker container logs",
                            container=t.short_id,
                            delay=delay,
                        )
                    await anyio.sleep(delay)
                    if t.wake.is_set():
                        continue  # something happened meanwhile: inspect again
                mark = t.filter.point
                outcome = await self._stream(t, follow=True)
                if outcome == "closed":
                    return
                if outcome == "unsupported":
                    t.no_logs = True
                if t.filter.point != mark:
                    backoff.reset()  # it delivered: the next break starts over
                streamed_run = started
                continue
            if not running and t.status == "running" and t.run == started:
                if not t.no_logs:
                    await self._stream(t, follow=False)  # whatever the stream missed
                oom = bool(state.get("OOMKilled")) or t.oom
                code = state.get("ExitCode")
                self._publish_end(
                    t, code if isinstance(code, int) else None, _iso(state.get("FinishedAt")), oom
                )
            streamed_run = ""
            await t.wake.wait()

    async def _inspect(self, t: _Tracked) -> dict[str, Any] | None:
        """Inspect, retrying while the engine does not answer; ``None``: removed."""
        backoff = _Backoff(0.1, 2.0)
        while True:
            try:
                return await self._control_call(self._inspect_blocking, t.id)
            except Exception:
                if self._closing:
                    raise
            if t.removed:
                return None
            with anyio.move_on_after(backoff.next()):
                await t.wake.wait()

    async def _stream(self, t: _Tracked, *, follow: bool) -> Outcome:
        params: dict[str, Any] = {
            "follow": 1 if follow else 0,
            "stdout": 1,
            "stderr": 1,
            "timestamps": 1,
        }
        since = t.filter.since_param()
        if since is not None:
            params["since"] = since  # resume: the filter drops what comes twice
        elif not t.fresh:
            params["tail"] = str(self.history_lines)
        else:
            params["tail"] = "all"
            if t.first_since is not None:
                params["since"] = t.first_since
        return await self._in_thread(self._stream_blocking, t, params)

    def _describe(self, t: _Tracked, info: dict[str, Any]) -> None:
        config = info.get("Config") or {}
        labels = config.get("Labels") or {}
        name = str(info.get("Name") or "").lstrip("/")
        t.name = name
        t.image = str(config.get("Image") or info.get("Image") or "")
        t.tty = bool(config.get("Tty"))
        if not t.session_id:
            t.session_id = str(labels.get(self.label) or "") or name or t.short_id
            t.first_since = _run_start(info.get("State") or {})

    def _publish_running(self, t: _Tracked, started: str) -> None:
        metadata: dict[str, Any] = {
            "containerId": t.short_id,
            "containerName": t.name,
            "image": t.image,
            "startTime": _iso(started),
        }
        server = self._server
        session = server.hub.sessions.get(t.session_id) if server is not None else None
        if session is not None and "exitCode" in session.metadata:
            # The hub merges metadata: clear the previous run's end.
            metadata.update(exitCode=None, finishedAt=None, oomKilled=None)
        t.run = started
        t.status = "running"
        t.oom = False
        self._publish_status(t, "running", metadata)

    def _publish_end(
        self, t: _Tracked, exit_code: int | None, finished_at: str | None, oom: bool
    ) -> None:
        failed = oom or exit_code is None or exit_code != 0
        status: Literal["stopped", "error"] = "error" if failed else "stopped"
        t.status = status
        self._publish_status(
            t, status, {"exitCode": exit_code, "finishedAt": finished_at, "oomKilled": oom}
        )

    async def _wait_die(self, t: _Tracked) -> bool:
        """Wait briefly for the die event of the run we published."""
        run_ns = _ns(t.run) or 0
        with anyio.move_on_after(_DIE_GRACE):
            while not (t.die_ns and t.die_ns >= run_ns):
                t.wake = anyio.Event()
                await t.wake.wait()
        return bool(t.die_ns and t.die_ns >= run_ns)

    async def _end_unseen_run(self, t: _Tracked) -> None:
        """A quick restart: the run we published ended between two looks."""
        if await self._wait_die(t):
            self._publish_end(t, t.die_code, iso_millis(t.die_ns), t.oom)
        else:
            self._publish_end(t, None, None, t.oom)

    async def _end_removed(self, t: _Tracked) -> None:
        """The container is gone: its session ends with its last known status."""
        if t.status == "running":
            if await self._wait_die(t):
                self._publish_end(t, t.die_code, iso_millis(t.die_ns), t.oom)
            else:
                self._publish_end(t, None, None, t.oom)
        if self._server is not None and t.status:
            self._server.log.info(
                "Docker container removed", container=t.short_id, session=t.session_id
            )


# ---------------------------------------------------------------------------


def _default_client() -> Any:
    """``docker.from_env()``: DOCKER_HOST etc.; asks the engine its API version."""
    import docker

    return docker.from_env(timeout=int(_REQUEST_TIMEOUT), max_pool_size=32)


def _interrupt(response: Any) -> None:
    """Wake a thread blocked reading ``response``: shut its socket down."""
    sock = _response_socket(response)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"

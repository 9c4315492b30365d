"""The Docker source: containers carrying ``DOCKER_LABEL`` are sessions (SPEC §4).

Theory of operation
-------------------

Every decision is the core's (``Containers``, the lifecycle table of
:mod:`pcclog_core._containers`); this runtime moves bytes, sleeps until the
core's deadlines and calls the Docker SDK.

* **The SDK** (``docker.from_env()``) answers the calls that return once,
  ``inspect`` and the container list, each in a short-lived daemon thread (at
  most :data:`_CONTROL_THREADS` at a time): a cancelled task never waits for
  one, none holds up the process's exit.
* **Streams** (events, logs) are read on the event loop over the source's own
  connection to the address ``DOCKER_HOST`` names (unix, tcp, or tls with the
  ``DOCKER_CERT_PATH`` certificates): it writes the request the core built and
  feeds each read to the core (``LogStream``: HTTP, the log stream, resume,
  classification), which returns new entries. No private attribute of the
  SDK, ``requests`` or ``http.client`` is touched (why: ``_docker_http`` in
  the core) and no line crosses a thread. A drained socket is read again
  :data:`_COALESCE` after it turns readable, so a burst of records (one chunk
  each) is one read (:meth:`DockerSource._pump`).
* **Publishing**: one read's entries are one hub batch; the viewers are written
  once per turn of the loop (:meth:`DockerSource._flusher`). While the hub's
  pool is over ``MEMORY_BUDGET`` a reader waits on ``Server.wait_for_room``
  instead of reading: the kernel and the engine buffer.
* **Tasks**: one per container performs the core's actions for it in order,
  so its entries are in order (``running``, lines, end); one reads the event
  stream and hands each event to the core. Shutdown cancels them all: a read
  blocked on the engine is a cancelled receive.
* **Readiness**: ``ready`` while the event stream is open (DOCKER_ENABLED=true:
  retried with backoff, ``/readyz`` 503 until then); with ``auto`` and no
  engine at start the source logs that once and stays out of the way.
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel

from pcclog_core import Backoff, MessageError
from pcclog_core._containers import (
    Action,
    Forget,
    Inspect,
    OpenLogs,
    PublishStatus,
    WaitUntil,
    steady_backoff,
)
from pcclog_core._docker_engine import ContainerInfo, EventStream, LogStream, running_ids
from pcclog_core._docker_sessions import Containers

if TYPE_CHECKING:
    from ._config import Config
    from ._server import Server

__all__ = ["DockerSource"]

T = TypeVar("T")

_COALESCE: Final = 0.002  # a readable log socket is read this much later (see _pump)
_READ_SIZE: Final = 65536  # under malloc's mmap threshold: a recv costs no mmap
_REQUEST_TIMEOUT: Final = 10.0  # connect + response head, and control calls
_CONTROL_THREADS: Final = 16  # inspect/list calls in flight at once


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """Where the engine listens, as ``docker.from_env()`` reads it."""

    unix_path: str | None
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    host_header: str

    @property
    def plain(self) -> bool:
        """No TLS: the socket carries the HTTP bytes themselves."""
        return self.ssl_context is None

    @classmethod
    def from_env(cls) -> _Endpoint:
        from docker.constants import IS_WINDOWS_PLATFORM
        from docker.utils import kwargs_from_env, parse_host

        kwargs = kwargs_from_env()
        tls = kwargs.get("tls")
        url = str(parse_host(kwargs.get("base_url"), IS_WINDOWS_PLATFORM, tls=bool(tls)))
        scheme, _, rest = url.partition("://")
        if scheme == "http+unix":
            return cls("/" + rest.lstrip("/"), "", 0, None, "localhost")
        if scheme not in ("http", "https"):
            raise RuntimeError(f"pcclog reads Docker logs over unix, tcp or tls, not {scheme}://")
        netloc = rest.split("/", 1)[0]
        host, _, port = netloc.rpartition(":")
        context = None
        if scheme == "https":
            verify = getattr(tls, "verify", True)
            ca_cert = getattr(tls, "ca_cert", None)
            context = ssl.create_default_context(cafile=ca_cert if verify and ca_cert else None)
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            cert = getattr(tls, "cert", None)
            if cert:
                context.load_cert_chain(*cert)
        return cls(None, host.strip("[]"), int(port), context, netloc)

    async def connect(self) -> anyio.abc.ByteStream:
        if self.unix_path is not None:
            return await anyio.connect_unix(self.unix_path)
        if self.ssl_context is None:
            return await anyio.connect_tcp(self.host, self.port)
        return await anyio.connect_tcp(
            self.host, self.port, ssl_context=self.ssl_context, tls_standard_compatible=False
        )


class _Follower:
    """The task of one container: the actions the core queued for it."""

    __slots__ = ("actions", "id", "short_id", "wake")

    def __init__(self, container_id: str) -> None:
        self.id = container_id
        self.short_id = container_id[:12]
        self.actions: collections.deque[Action] = collections.deque()
        self.wake = anyio.Event()


class DockerSource:
    """Follows labelled containers into the hub (see the module docstring)."""

    name = "docker"

    def __init__(self, config: Config, *, required: bool) -> None:
        self.required = required
        self.label = config.docker_label
        self._config = config
        self._api: Any = None
        self._endpoint: _Endpoint | None = None
        self._server: Server | None = None
        self._core: Containers | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._control: anyio.CapacityLimiter | None = None
        self._followers: dict[str, _Follower] = {}
        self._flush = anyio.Event()
        self._flush_wanted = False
        self._closing = False
        self._connected = False
        self._absent = False
        self._refused: set[str] = set()  # containers whose refusal was logged

    @property
    def ready(self) -> bool:
        """Connected to the engine, or ``auto`` found none (then not needed)."""
        return self._connected or self._absent

    # --- the task ---------------------------------------------------------------

    async def run(self, server: Server) -> None:
        config = self._config
        self._server = server
        self._core = Containers(
            label=self.label,
            history_lines=config.history_lines,
            max_line_bytes=config.max_line_bytes,
            stdout_level=config.docker_stdout_level,
            stderr_level=config.docker_stderr_level,
            session_timeout=server.hub.limits.session_timeout,
        )
        self._control = anyio.CapacityLimiter(_CONTROL_THREADS)
        self._flush = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._flusher)
                await self._engine_loop()  # returns for auto without an engine
                tg.cancel_scope.cancel()
        finally:
            self._closing = True
            self._connected = False

    async def _engine_loop(self) -> None:
        assert self._server is not None
        log = self._server.log
        delay = steady_backoff(0.2, 2.0)
        first = True
        outage_logged = False
        while not self._closing:
            try:
                if self._api is None:
                    client = await self._in_thread(_default_client)
                    self._endpoint = _Endpoint.from_env()
                    self._api = client.api
                events, stream, early = await self._open_events()
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
                await anyio.sleep(delay.failed(time.monotonic()))
                continue
            first = False
            try:
                async with stream:
                    await self._engine_session(events, stream, early, delay)
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
            outage_logged = True
            await anyio.sleep(delay.failed(time.monotonic()))

    async def _open_events(self) -> tuple[EventStream, anyio.abc.ByteStream, list[Any]]:
        """Connect and request ``/events``; return once the engine answered 200
        (with the events that came with the head, for after the sync)."""
        assert self._endpoint is not None and self._core is not None
        core = self._core
        core.api_prefix = f"/v{self._api.api_version}"
        core.host = self._endpoint.host_header
        events = EventStream(api_prefix=core.api_prefix, host=core.host, label=self.label)
        with anyio.fail_after(_REQUEST_TIMEOUT):
            stream = await self._endpoint.connect()
            early: list[Any] = []
            try:
                await stream.send(events.request)
                while events.status is None and not events.finished:
                    early += events.receive_data(await _receive(stream))
                if events.status != 200 or events.error is not None:
                    raise RuntimeError(events.error or "the event stream ended at once")
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
        return events, stream, early

    async def _engine_session(
        self, events: EventStream, stream: anyio.abc.ByteStream, early: list[Any], delay: Backoff
    ) -> None:
        """Sync with the engine, then hand its events to the core until the stream ends."""
        assert self._server is not None and self._core is not None
        running = await self._control_call(self._list_running)
        self._connected = True
        delay.succeeded()
        self._server.log.info(
            "following Docker containers",
            label=self.label,
            running=len(running),
            engine=getattr(self._api, "base_url", ""),
        )
        self._perform(self._core.synced(running, time.monotonic()))
        self._dispatch(early)
        while not events.finished:
            self._dispatch(events.receive_data(await _receive(stream)))
        if events.error is not None:
            raise RuntimeError(events.error)

    def _dispatch(self, events: list[Any]) -> None:
        core = self._core
        assert core is not None
        for event in events:
            self._perform(core.engine_event(event, time.monotonic(), time.time_ns()))

    # --- actions --------------------------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        """Queue each action for its container's task (started if need be)."""
        for action in actions:
            follower = self._followers.get(action.container_id)
            if follower is None:
                if self._tg is None or self._closing:
                    return
                follower = _Follower(action.container_id)
                self._followers[follower.id] = follower
                self._tg.start_soon(self._follow, follower, name=f"docker {follower.short_id}")
            follower.actions.append(action)
            follower.wake.set()

    async def _follow(self, f: _Follower) -> None:
        assert self._server is not None and self._core is not None
        core = self._core
        try:
            while not self._closing:
                while f.actions:
                    action = f.actions.popleft()
                    if isinstance(action, Forget):
                        self._forgotten(action)
                        return
                    await self._act(f, action)
                f.wake = anyio.Event()
                deadline = core.deadline(f.id)
                if deadline is None:
                    await f.wake.wait()
                    continue
                with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                    await f.wake.wait()
                if not f.wake.is_set():
                    self._perform(core.handle_timeout(f.id, time.monotonic()))
        except Exception as exc:  # a bug must cost one container, not the source
            if not self._closing:
                self._server.log.error(
                    "Docker container follower failed", container=f.short_id, error=repr(exc)
                )
        finally:
            if self._followers.get(f.id) is f:
                del self._followers[f.id]

    async def _act(self, f: _Follower, action: Action) -> None:
        core = self._core
        assert core is not None and self._server is not None
        if isinstance(action, Inspect):
            try:
                raw = await self._control_call(self._inspect_blocking, f.id)
            except Exception:
                if self._closing:
                    raise
                self._perform(core.inspect_failed(f.id, time.monotonic()))
                return
            info = None if raw is None else ContainerInfo.from_inspect(raw, self.label)
            if info is not None and info.secrets and (session_id := core.session_of(f.id)):
                # Before any of its lines is published (SPEC §8).
                self._server.hub.add_secrets(session_id, info.secrets)
            self._perform(core.inspected(f.id, info, time.monotonic()))
            if info is not None and info.secrets and (session_id := core.session_of(f.id)):
                self._server.hub.add_secrets(session_id, info.secrets)
        elif isinstance(action, PublishStatus):
            self._publish_status(action)
        elif isinstance(action, OpenLogs):
            await self._read_logs(f, action.stream)
            if not self._closing:
                self._perform(core.logs_ended(f.id, time.monotonic()))
        elif isinstance(action, WaitUntil) and action.reason == "reattach":
            self._server.log.info(
                "re-attaching to Docker container logs", container=f.short_id, delay=action.delay
            )

    async def _read_logs(self, f: _Follower, logs: LogStream) -> None:
        """Run one log stream to its end, publishing the entries of each read."""
        assert self._endpoint is not None and self._server is not None
        server = self._server
        try:
            with anyio.fail_after(_REQUEST_TIMEOUT):
                stream = await self._endpoint.connect()
        except (OSError, TimeoutError):
            return  # not finished: the core takes it as broken
        session_id = self._core.session_of(f.id) if self._core is not None else ""
        async with stream:
            try:
                await stream.send(logs.request)
                with anyio.fail_after(_REQUEST_TIMEOUT):
                    while logs.status is None and not logs.finished:
                        self._publish(f, session_id, logs.receive_data(await _receive(stream)))
                await self._pump(f, session_id, logs, stream)
            except (OSError, TimeoutError, anyio.BrokenResourceError):
                return
            finally:
                for error in logs.take_errors():
                    server.log.warn(
                        "Docker engine error in a log stream", container=f.short_id, error=error
                    )
        if logs.refusal and logs.status not in (None, 200, 404):
            server.log.error(
                "cannot read a Docker container's logs",
                container=f.short_id,
                session=session_id,
                status=logs.status,
                error=logs.refusal,
            )

    async def _pump(
        self, f: _Follower, session_id: str, logs: LogStream, stream: anyio.abc.ByteStream
    ) -> None:
        """Read one log stream to its end, publishing the entries of each read.

        The engine writes each record as its own chunk, so a socket read as
        soon as it turns readable yields a line or two, and every read costs
        a wake-up and a hub batch. So once the socket is drained, the reader
        waits for it to turn readable and then :data:`_COALESCE` seconds
        more: a burst of lines is one read and one batch, for that much
        latency. A plain socket is read with ``recv`` directly (no
        checkpoint per read); a TLS one through its stream.
        """
        server = self._server
        assert server is not None and self._endpoint is not None
        sock = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        if not self._endpoint.plain:
            sock = None
        while not logs.finished:
            if sock is None:
                data = await _receive(stream)
            else:
                try:
                    data = sock.recv(_READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    await anyio.wait_readable(sock)
                    await anyio.sleep(_COALESCE)
                    continue
                except OSError:
                    data = b""
            entries = logs.receive_data(data)
            if entries and self._publish(f, session_id, entries):
                await server.wait_for_room()
            elif sock is None and data and len(data) < _READ_SIZE:
                await anyio.sleep(_COALESCE)

    # --- on the event loop: publishing ------------------------------------------------

    def _publish(self, f: _Follower, session_id: str, entries: list[Any]) -> bool:
        """Publish one read's entries as one hub batch; True when producers are paused."""
        server = self._server
        if not entries or self._closing or server is None:
            return False
        hub = server.hub
        now = time.monotonic()
        publish = hub.publish_log
        hub.begin_batch()
        try:
            for level, message, timestamp, data in entries:
                publish(
                    session_id,
                    level=level,
                    message=message,
                    timestamp=timestamp,
                    data=data,
                    now=now,
                )
        except MessageError as exc:
            self._refused_log(f.id, session_id, exc)
        finally:
            hub.end_batch()
        self._flush_soon()
        return hub.producers_paused

    def _flush_soon(self) -> None:
        if not self._flush_wanted:
            self._flush_wanted = True
            self._flush.set()

    async def _flusher(self) -> None:
        """Write to the viewers once per turn of the loop, after every reader of that turn."""
        assert self._server is not None
        while True:
            await self._flush.wait()
            self._flush = anyio.Event()
            self._flush_wanted = False
            self._server.flush_ready()

    def _publish_status(self, action: PublishStatus) -> None:
        server = self._server
        if server is None or self._closing:
            return
        if action.first:
            meta = action.metadata
            server.log.info(
                "following Docker container",
                container=action.container_id[:12],
                name=meta.get("containerName", ""),
                session=action.session_id,
            )
        try:
            server.hub.publish_status(
                action.session_id,
                status=action.status,
                metadata=action.metadata,
                now=time.monotonic(),
            )
        except MessageError as exc:
            self._refused_log(action.container_id, action.session_id, exc)
            return
        self._refused.discard(action.container_id)
        self._flush_soon()

    def _refused_log(self, container_id: str, session_id: str, exc: MessageError) -> None:
        if container_id not in self._refused and self._server is not None:
            self._refused.add(container_id)
            self._server.log.warn(
                "the hub refused a Docker container's entries",
                container=container_id[:12],
                session=session_id,
                code=str(exc.code),
                error=exc.message,
            )

    def _forgotten(self, action: Forget) -> None:
        self._refused.discard(action.container_id)
        if action.announced and self._server is not None:
            self._server.log.info(
                "Docker container removed",
                container=action.container_id[:12],
                session=action.session_id,
            )

    # --- the SDK, in threads ----------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a new daemon thread; cancelling does not wait for it."""
        done = anyio.Event()
        box: list[tuple[bool, Any]] = []
        token = anyio.lowlevel.current_token()

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

    def _list_running(self) -> list[str]:
        return running_ids(self._api.containers(all=True, filters={"label": [self.label]}))

    def _inspect_blocking(self, container_id: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            info: dict[str, Any] = self._api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None
        return info


# ---------------------------------------------------------------------------


async def _receive(stream: anyio.abc.ByteStream) -> bytes:
    """The next bytes from the engine; ``b""`` once it closed the connection."""
    try:
        return await stream.receive(_READ_SIZE)
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
        return b""


def _default_client() -> Any:
    """``docker.from_env()``: DOCKER_HOST etc.; asks the engine its API version."""
    import docker

    return docker.from_env(timeout=int(_REQUEST_TIMEOUT), max_pool_size=_CONTROL_THREADS)


def _error_text(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"

"""The anyio runtime: moves bytes between sockets and the sans-IO core.

Theory of operation
-------------------

One task per connection reads its socket and sleeps until the core's next
deadline; all protocol and policy decisions are the core's. Writes are not
per-task: after any input, the reading task drains every client the hub
marked ready and writes each one's queued frames with **one non-blocking
``send``** (the frames were joined by ``Client.data_to_send``). Nothing on
that path awaits, so fan-out to a thousand viewers is a thousand syscalls,
not a thousand trips through the event loop. Only a socket whose kernel
buffer is full gets a writer task, which waits for writability, finishes
the partial buffer and pulls again; while it waits, the core's
slow-consumer policy bounds what queues up behind it.

Drivers. Under trio (and for TLS) each connection is an anyio task that
waits for its socket to be readable. Under asyncio, the default, plain
connections have no task at all: the socket is registered once with the
loop's reader callbacks (``add_reader``/``add_writer``), and a readable
socket is read, fed to the core and flushed synchronously. An idle viewer
then costs only its core objects and a socket, and a wake-up costs one
callback instead of a task switch through a future. One timer task serves
every connection's core deadline (pings, pong and auth timeouts) from a
heap, in both drivers, and the hub's own deadline (ended sessions' eviction)
is on the same loop.

The asyncio driver lives in ``_reactor``, the TLS one (anyio's
``TLSStream``, a writer task per connection) in ``_tls``, the HTTP routes in
``_http``; this module keeps what they share: accepting, timers, pausing,
writing and the connection events.

Pausing. Whether a connection is read is the core's decision alone
(``Connection.wants_read``: its own outbox under ``CONNECTION_BUFFER``,
and for a producer the hub's pool under ``MEMORY_BUDGET``); every driver
honours exactly that. A connection paused for its own backlog is resumed
when its writes are confirmed (``bytes_sent``) and it wants input again; one
paused by the pool is resumed when the pool drains. Resuming feeds the input
the core kept back (``continue_reading``) before the socket is read again.
Meanwhile the kernel, then the peer, buffer. Sources wait on
``wait_for_room`` the same way.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import math
import signal
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Protocol

import anyio
import anyio.abc

from pcclog_core import (
    CloseCode,
    Connection,
    ConnectionClosed,
    HTTPRequest,
    Hub,
    WebSocketAccepted,
)

from . import _reactor, _tls
from ._config import Config
from ._http import HTTPRoutes
from ._log import Logger
from ._peer import Peer, clock, format_peer

__all__ = ["Server", "Source"]

_TIMER_SLACK = 0.01  # seconds a deadline may be served late, to batch wake-ups


class Source(Protocol):
    """A log source the server runs beside its listener (the Docker one)."""

    name: str

    @property
    def ready(self) -> bool: ...

    async def run(self, server: Server) -> None: ...


class Server:
    """``pcclog serve``: the listener, the connections, the sources."""

    def __init__(
        self,
        config: Config,
        *,
        hub: Hub,
        logger: Logger,
        sources: Sequence[Source] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.hub = hub
        self.log = logger
        self.sources = list(sources)
        self.ssl_context = ssl_context
        self.peers: dict[int, Peer] = {}
        self.port = 0
        self.started = time.time()
        self.connections_total = 0
        self.bytes_out = 0
        self._next_id = 0
        self._listener: socket.socket | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self.stopping = False  # read by /readyz
        self._stop = anyio.Event()
        # Paused connections, by why: their own backlog, or the hub's pool.
        self._paused_own: dict[int, Peer] = {}
        self._paused_pool: dict[int, Peer] = {}
        # Set when the pool drains, for sources waiting in ``wait_for_room``.
        self._room: anyio.Event | None = None
        self._allowed_origins = config.allowed_origins
        self._routes = HTTPRoutes(self)
        self._timers: list[tuple[float, int, Peer]] = []
        # Set when the asyncio driver is in use (see "Drivers" above).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer_at = math.inf
        self._timer_wake = anyio.Event()

    # --- lifecycle ------------------------------------------------------------

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, serve until ``stop()`` or a signal, then shut down cleanly."""
        listener = self._listener or self.bind()
        if self.ssl_context is None:
            try:
                self._loop = asyncio.get_running_loop()  # raises under trio
            except RuntimeError:
                self._loop = None
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._accept_loop, listener)
            tg.start_soon(self._timer_loop)
            tg.start_soon(self._signals)
            for source in self.sources:
                tg.start_soon(source.run, self)
            self.log.info(
                "listening",
                host=self.config.host,
                port=self.port,
                tls=self.ssl_context is not None,
                auth="disabled" if self.config.auth_disabled else "required",
            )
            task_status.started(self.port)
            await self._stop.wait()
            await self._shutdown()
            tg.cancel_scope.cancel()
        self.log.info("stopped")

    def stop(self) -> None:
        self._stop.set()

    def bind(self) -> socket.socket:
        """Bind the listening socket (``OSError`` if the address is taken)."""
        if self._listener is not None:
            return self._listener
        host = self.config.host
        infos = socket.getaddrinfo(
            host or None, self.config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(4096)
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        return sock

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                self.log.info("signal received, shutting down", signal=signal.Signals(signum).name)
                self.stop()
                return

    async def _shutdown(self) -> None:
        """SIGTERM: stop accepting, close every WebSocket with 1001, flush."""
        self.stopping = True
        if self._listener is not None:
            anyio.notify_closing(self._listener)
            self._listener.close()
        now = time.monotonic()
        for peer in list(self.peers.values()):
            peer.conn.close(CloseCode.GOING_AWAY, "server shutting down", now=now)
            self.flush(peer)
        with anyio.move_on_after(3.0):
            while any(
                p.pending is not None or p.writing or (p.stream is not None and p.conn.has_output)
                for p in self.peers.values()
            ):
                await anyio.sleep(0.02)
        for peer in list(self.peers.values()):
            if self._loop is not None:
                if not peer.conn.closed:
                    peer.conn.abort("server shutting down")
                peer.pending = None
                _reactor.close_peer(self, peer)
            else:
                self.wake_reader(peer)

    # --- accepting ------------------------------------------------------------

    async def _accept_loop(self, listener: socket.socket) -> None:
        assert self._tg is not None
        while not self.stopping:
            try:
                await anyio.wait_readable(listener)
            except (anyio.ClosedResourceError, OSError):
                return
            for _ in range(256):
                try:
                    sock, address = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                        self.log.error("accept failed: out of resources", error=str(exc))
                        await anyio.sleep(0.1)
                        break
                    if self.stopping or exc.errno == errno.EBADF:
                        return
                    # ECONNABORTED, EPROTO, EPERM (a firewall)...: that one
                    # connection is lost, the listener is fine.
                    self.log.debug("accept failed", error=str(exc))
                    continue
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._loop is not None:
                    _reactor.open_peer(self, sock, format_peer(address))
                else:
                    self._tg.start_soon(self._handle, sock, format_peer(address))

    # --- one connection ---------------------------------------------------------

    async def _handle(self, sock: socket.socket, peer_name: str) -> None:
        self._next_id += 1
        self.connections_total += 1
        now, _ = clock()
        conn = Connection(self.hub, now=now, browser=self._routes.browser_policy)
        peer = Peer(sock, conn, peer_name, self._next_id)
        self.peers[peer.id] = peer
        try:
            if self.ssl_context is not None:
                await _tls.run(self, peer)
            else:
                await self._run_plain(peer)
        except Exception as exc:  # a bug must cost one connection, not the server
            self.log.error("connection failed", id=peer.id, error=repr(exc))
            conn.abort("internal error")
        finally:
            self.peers.pop(peer.id, None)
            self._paused_own.pop(peer.id, None)
            self._paused_pool.pop(peer.id, None)
            if not conn.closed:
                conn.abort("connection task ended")
            self.drain_events(peer)
            peer.pending = None
            peer.deadline = None
            if peer.stream is not None:
                with anyio.CancelScope(shield=True):
                    try:
                        await peer.stream.aclose()
                    except Exception:
                        pass
            else:
                try:
                    anyio.notify_closing(sock)
                except Exception:
                    pass
                sock.close()

    async def _run_plain(self, peer: Peer) -> None:
        conn = peer.conn
        sock = peer.sock
        self.schedule(peer)
        with anyio.CancelScope() as scope:
            peer.scope = scope
            while not conn.closed:
                if not conn.wants_read:
                    await self.wait_resume(peer)
                    continue
                try:
                    await anyio.wait_readable(sock)
                except (anyio.ClosedResourceError, OSError):
                    conn.abort("socket closed")
                    break
                self.read_ready(peer)
        peer.scope = None
        if self.stopping and not conn.closed:
            conn.abort("server shutting down")
        # Give the last frames (a close, an HTTP response) a moment to leave.
        if peer.pending is not None or peer.writing:
            with anyio.move_on_after(1.0):
                while peer.pending is not None or peer.writing:
                    await anyio.sleep(0.01)
        await self.linger(sock)

    # --- timers: one heap for every connection's deadline ---------------------

    def schedule(self, peer: Peer) -> None:
        """Put the core's next deadline for ``peer`` on the heap, if it moved.

        A popped entry whose deadline is no longer the peer's current one is
        stale and skipped. One timer task serves every connection, so an idle
        connection costs no timer of its own. Stale entries would keep closed
        peers alive until they fall due, so once they outnumber the live
        ones the heap is rebuilt from the live entries.
        """
        deadline = peer.conn.next_deadline()
        if deadline == peer.deadline:
            return
        peer.deadline = deadline
        if deadline is None:
            return
        timers = self._timers
        if len(timers) > 2 * len(self.peers) + 64:
            peers = self.peers
            timers[:] = [t for t in timers if t[2].deadline == t[0] and t[1] in peers]
            heapq.heapify(timers)
        heapq.heappush(timers, (deadline, peer.id, peer))
        if deadline < self._timer_at:
            self._timer_wake.set()

    async def _timer_loop(self) -> None:
        """Serves every connection's deadline and the hub's (session
        eviction): one task, one heap, one sleep."""
        timers = self._timers
        hub = self.hub
        while True:
            now, wall = clock()
            hub_deadline = hub.next_deadline()
            if hub_deadline is not None and hub_deadline <= now:
                hub.handle_timeout(now)
                hub_deadline = hub.next_deadline()
            while timers and timers[0][0] <= now:
                deadline, _, peer = heapq.heappop(timers)
                if peer.deadline != deadline or peer.id not in self.peers:
                    continue
                peer.deadline = None
                conn = peer.conn
                conn.handle_timeout(now=now, wall=wall)
                self.drain_events(peer)
                self.flush(peer)
                if conn.closed:
                    self.wake_reader(peer)
                else:
                    self.schedule(peer)
            self.flush_ready()
            # Timer slack: deadlines due within the next few milliseconds
            # are served by one wake-up, so 10,000 connections' pings cost a
            # few hundred wake-ups per round rather than 10,000.
            first = timers[0][0] if timers else math.inf
            if hub_deadline is not None and hub_deadline < first:
                first = hub_deadline
            self._timer_at = first + _TIMER_SLACK
            self._timer_wake = anyio.Event()
            with anyio.move_on_after(max(_TIMER_SLACK, self._timer_at - time.monotonic())):
                await self._timer_wake.wait()

    async def linger(self, sock: socket.socket) -> None:
        """Half-close, then read and discard briefly before closing: closing
        with unread input makes the kernel send a reset, which can destroy
        the response or close frame we just wrote (RFC 7230 §6.6)."""
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        budget = 262_144
        with anyio.move_on_after(0.5):
            while budget > 0:
                try:
                    await anyio.wait_readable(sock)
                    chunk = sock.recv(65_536)
                except (BlockingIOError, InterruptedError):
                    continue
                except (OSError, anyio.ClosedResourceError):
                    return
                if not chunk:
                    return
                budget -= len(chunk)

    # --- pausing: the core's ``wants_read``, for every driver -----------------

    def pause(self, peer: Peer) -> None:
        """Stop reading ``peer`` until ``check_resume`` finds it wants input."""
        if peer.id in self._paused_own or peer.id in self._paused_pool:
            return
        paused = self._paused_pool if peer.conn.paused_by_pool else self._paused_own
        paused[peer.id] = peer
        if self._loop is not None and peer.stream is None:
            self._loop.remove_reader(peer.sock)

    def check_resume(self, peer: Peer) -> None:
        """``peer``'s writes were confirmed: resume it if it was paused for
        its own backlog and now wants input."""
        if peer.id in self._paused_own and peer.conn.wants_read:
            del self._paused_own[peer.id]
            self._resume_peer(peer)
        if self._paused_pool or self._room is not None:
            self._check_pool()

    def _check_pool(self) -> None:
        """Resume what waited for the pool, once it is under budget."""
        if self.hub.producers_paused:
            return
        if self._room is not None:
            self._room.set()
            self._room = None
        paused = self._paused_pool
        if not paused:
            return
        self._paused_pool = {}
        for peer in paused.values():
            if peer.conn.wants_read:
                self._resume_peer(peer)
            else:
                self._paused_own[peer.id] = peer

    def _resume_peer(self, peer: Peer) -> None:
        if self._loop is not None and peer.stream is None:
            # Deferred: this runs inside another connection's write path.
            self._loop.call_soon(_reactor.on_resumed, self, peer)
        elif peer.resume is not None:
            peer.resume.set()

    async def wait_for_room(self) -> None:
        """For sources: return once the hub's pool is under budget."""
        while self.hub.producers_paused and not self.stopping:
            if self._room is None:
                self._room = anyio.Event()
            await self._room.wait()

    async def wait_resume(self, peer: Peer) -> None:
        """Task drivers: sleep until the core wants ``peer``'s input again,
        then feed it what it kept back."""
        peer.resume = anyio.Event()
        self.pause(peer)
        if peer.conn.wants_read:  # drained meanwhile
            self._paused_own.pop(peer.id, None)
            self._paused_pool.pop(peer.id, None)
        else:
            await peer.resume.wait()
        peer.resume = None
        self.resumed(peer)

    def resumed(self, peer: Peer) -> None:
        conn = peer.conn
        now, wall = clock()
        conn.continue_reading(now=now, wall=wall)
        self.after_input(peer)
        self.schedule(peer)

    def read_ready(self, peer: Peer) -> None:
        """Read a readable socket into the core and write what it produced.
        A full read usually means more is waiting: read on (bounded) before
        giving the loop back."""
        conn = peer.conn
        read_size = self.hub.limits.read_size
        for _ in range(8):
            try:
                data = peer.sock.recv(read_size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            now, wall = clock()
            conn.receive_data(data, now=now, wall=wall)
            self.after_input(peer)
            if len(data) < read_size or conn.closed or not conn.wants_read:
                break
        self.schedule(peer)

    def after_input(self, peer: Peer) -> None:
        self.drain_events(peer)
        self.flush(peer)
        self.flush_ready()

    def flush_ready(self) -> None:
        """Write to every client the hub queued something for. Call it after
        publishing into the hub from outside a connection (a source)."""
        hub = self.hub
        for client in hub.take_ready():
            owner = client.owner
            if isinstance(owner, Peer):
                self.flush(owner)
        if self._paused_pool or self._room is not None:
            self._check_pool()
        deadline = hub.next_deadline()
        if deadline is not None and deadline + _TIMER_SLACK < self._timer_at:
            self._timer_wake.set()

    def flush(self, peer: Peer) -> None:
        """Write what the core queued for ``peer``: non-blocking sends, no
        await, each confirmed to the core (a paged replay then refills)."""
        if peer.stream is not None:
            # TLS: the writer task sends. Wake it even while it is busy
            # sending: it then takes this output as soon as that send ends
            # (skipping the wake here left a reply queued until the next one).
            if peer.wake is not None:
                peer.wake.set()
            return
        if peer.pending is not None or peer.writing:
            return
        conn = peer.conn
        while data := conn.data_to_send():
            try:
                sent = peer.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                conn.abort("write failed")
                self.wake_reader(peer)
                return
            self.bytes_out += sent
            conn.bytes_sent(sent)
            if sent < len(data):
                peer.pending = memoryview(data)[sent:]
                peer.writing = True
                if self._loop is not None:
                    self._loop.add_writer(peer.sock, _reactor.on_writable, self, peer)
                else:
                    assert self._tg is not None
                    self._tg.start_soon(self._writer, peer)
                break
        self.check_resume(peer)
        if conn.closed:
            self.wake_reader(peer)

    async def _writer(self, peer: Peer) -> None:
        """A full socket: wait until writable, then keep draining the core."""
        try:
            while peer.pending is not None:
                try:
                    await anyio.wait_writable(peer.sock)
                except (OSError, anyio.ClosedResourceError):
                    peer.pending = None
                    peer.conn.abort("write failed")
                    break
                self.send_pending(peer)
        finally:
            peer.writing = False
        self.drain_events(peer)
        self.check_resume(peer)
        if peer.conn.closed:
            self.wake_reader(peer)

    def send_pending(self, peer: Peer) -> bool:
        """Write the partial buffer, then whatever the core queued since,
        until the socket is full (False: wait for writability again) or
        everything is out (True)."""
        while peer.pending is not None:
            try:
                sent = peer.sock.send(peer.pending)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                peer.pending = None
                peer.conn.abort("write failed")
                return True
            self.bytes_out += sent
            peer.conn.bytes_sent(sent)
            if sent < len(peer.pending):
                peer.pending = peer.pending[sent:]
                return False
            peer.pending = None
            data = peer.conn.data_to_send()
            if data:
                peer.pending = memoryview(data)
        return True

    def wake_reader(self, peer: Peer) -> None:
        if self._loop is not None:
            if peer.conn.closed and peer.pending is None:
                _reactor.close_peer(self, peer)
        elif peer.scope is not None:
            peer.scope.cancel()

    # --- events: HTTP requests, opens, closes -------------------------------

    def drain_events(self, peer: Peer) -> None:
        conn = peer.conn
        while (event := conn.next_event()) is not None:
            if type(event) is HTTPRequest:
                status, headers, body = self._routes.answer(event)
                conn.send_response(status, headers, body)
                self.log.debug(
                    "http",
                    id=peer.id,
                    peer=peer.peer,
                    method=event.method,
                    path=event.path,
                    status=status,
                )
            elif type(event) is WebSocketAccepted:
                if conn.client is not None:
                    conn.client.owner = peer
                self.log.info(
                    "connection open",
                    id=peer.id,
                    peer=peer.peer,
                    path=event.path,
                    authenticated=event.authenticated,
                )
            elif type(event) is ConnectionClosed:
                if conn.client is not None or event.code >= 1000:
                    self.log.info(
                        "connection closed",
                        id=peer.id,
                        peer=peer.peer,
                        code=event.code,
                        reason=event.reason,
                        by_peer=event.by_peer,
                    )
                else:
                    self.log.debug(
                        "request closed",
                        id=peer.id,
                        peer=peer.peer,
                        status=event.code,
                        reason=event.reason,
                    )

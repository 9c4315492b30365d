"""The asyncio driver: plain connections with no task of their own.

Each socket is registered once with the loop's reader callbacks
(``add_reader``/``add_writer``); a readable socket is read, fed to the core
and flushed synchronously (``Server.read_ready``). An idle viewer then
costs only its core objects and a socket, and a wake-up costs one callback
instead of a task switch through a future. Pausing (``wants_read`` false)
removes the reader; resuming (``on_resumed``) feeds the input the core kept
back and adds it again. A closed connection lingers half-closed for a
moment so its last frames survive unread input, then is released.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pcclog_core import Connection

from ._peer import Peer

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["close_peer", "on_resumed", "open_peer"]


def open_peer(server: Server, sock: socket.socket, peer_name: str) -> None:
    assert server._loop is not None
    server._next_id += 1
    server.connections_total += 1
    now = time.monotonic()
    conn = Connection(server.hub, now=now, browser=server._routes.browser_policy)
    peer = Peer(sock, conn, peer_name, server._next_id)
    server.peers[peer.id] = peer
    server._loop.add_reader(sock, on_readable, server, peer)
    server.schedule(peer)


def on_readable(server: Server, peer: Peer) -> None:
    _guarded(server, peer, _read)


def on_resumed(server: Server, peer: Peer) -> None:
    """asyncio driver: a paused connection may be read again."""
    if peer.id in server.peers and peer.closer is None and not peer.conn.closed:
        _guarded(server, peer, _resume)


def _read(server: Server, peer: Peer) -> None:
    conn = peer.conn
    if conn.wants_read:
        server.read_ready(peer)
    if not conn.closed and not conn.wants_read:
        # The kernel, then the peer, buffer until it is resumed.
        server.pause(peer)


def _resume(server: Server, peer: Peer) -> None:
    assert server._loop is not None
    conn = peer.conn
    server.resumed(peer)
    if conn.closed:
        return
    if conn.wants_read:
        server._loop.add_reader(peer.sock, on_readable, server, peer)
    else:
        server.pause(peer)


def _guarded(server: Server, peer: Peer, step: Callable[[Server, Peer], None]) -> None:
    """Run a callback's ``step``; a bug in it costs this connection, not the
    server. A connection that is now closed is released."""
    conn = peer.conn
    try:
        step(server, peer)
    except Exception as exc:
        server.log.error("connection failed", id=peer.id, error=repr(exc))
        conn.abort("internal error")
        peer.pending = None
    if conn.closed:
        server.wake_reader(peer)


def on_writable(server: Server, peer: Peer) -> None:
    """A full socket has room again: finish the partial buffer, then
    keep draining the core until it has nothing more or the socket is
    full again."""
    assert server._loop is not None
    try:
        if not server.send_pending(peer):
            return
    except Exception as exc:
        server.log.error("connection failed", id=peer.id, error=repr(exc))
        peer.pending = None
        peer.conn.abort("internal error")
    server._loop.remove_writer(peer.sock)
    peer.writing = False
    server.drain_events(peer)
    server.check_resume(peer)
    if peer.conn.closed:
        server.wake_reader(peer)


def close_peer(server: Server, peer: Peer) -> None:
    """Closed and flushed: half-close and drain briefly (a lingering
    close, as in ``linger``), then release the socket."""
    loop = server._loop
    assert loop is not None
    if peer.closer is not None or peer.id not in server.peers:
        return
    server.peers.pop(peer.id, None)
    server._paused_own.pop(peer.id, None)
    server._paused_pool.pop(peer.id, None)
    server.drain_events(peer)
    sock = peer.sock
    loop.remove_reader(sock)
    if peer.writing:
        loop.remove_writer(sock)
        peer.writing = False
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        sock.close()
        return
    peer.closer = loop.call_later(0.5, release, server, peer)
    loop.add_reader(sock, on_linger_readable, server, peer)


def on_linger_readable(server: Server, peer: Peer) -> None:
    try:
        chunk = peer.sock.recv(65_536)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        chunk = b""
    if not chunk:
        release(server, peer)


def release(server: Server, peer: Peer) -> None:
    assert server._loop is not None
    if peer.closer is not None:
        peer.closer.cancel()
        peer.closer = None  # the handle holds this peer: no cycle left behind
    peer.pending = None
    peer.deadline = None  # any heap entry left for it is stale now
    if peer.sock.fileno() >= 0:
        server._loop.remove_reader(peer.sock)
        peer.sock.close()

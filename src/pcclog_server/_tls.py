"""The TLS driver: ``wss://`` connections over anyio's ``TLSStream``.

Reads are stream receives in the connection's task, which waits while the
core does not want input (``Server.wait_resume``); one writer task per
connection sends what the core queued whenever it is woken
(``Server.flush`` sets ``peer.wake``) and confirms each write to the core.
TLS takes this slower path by design; put a proxy in front for many
``wss://`` viewers (docs/deploy.md).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from anyio.streams.tls import TLSStream

from ._peer import Peer, clock

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["run"]


async def run(server: Server, peer: Peer) -> None:
    assert server.ssl_context is not None
    conn = peer.conn
    with anyio.move_on_after(server.hub.limits.open_timeout):
        raw = await anyio.abc.SocketStream.from_socket(peer.sock)
        peer.stream = await TLSStream.wrap(
            raw, server_side=True, ssl_context=server.ssl_context, standard_compatible=False
        )
    if peer.stream is None:
        conn.abort("TLS handshake timed out")
        return
    peer.wake = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, server, peer)
        stream = peer.stream
        server.schedule(peer)
        with anyio.CancelScope() as scope:
            peer.scope = scope
            while not conn.closed:
                if not conn.wants_read:
                    await server.wait_resume(peer)
                    continue
                try:
                    data = await stream.receive(server.hub.limits.read_size)
                except (
                    anyio.EndOfStream,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                    ssl.SSLError,
                    OSError,
                ):
                    data = b""
                now, wall = clock()
                conn.receive_data(data, now=now, wall=wall)
                server.after_input(peer)
                server.schedule(peer)
        peer.scope = None
        if server.stopping and not conn.closed:
            conn.abort("server shutting down")
        # Let the writer send the last frames, then stop it.
        with anyio.move_on_after(1.0):
            while peer.writing or peer.conn.has_output:
                if peer.wake is not None:
                    peer.wake.set()
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


async def writer(server: Server, peer: Peer) -> None:
    assert peer.stream is not None and peer.wake is not None
    conn = peer.conn
    while True:
        await peer.wake.wait()
        peer.wake = anyio.Event()
        while data := conn.data_to_send():
            peer.writing = True
            try:
                await peer.stream.send(data)
                server.bytes_out += len(data)
                conn.bytes_sent(len(data))
            except (
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
                ssl.SSLError,
                OSError,
            ):
                conn.abort("write failed")
            finally:
                peer.writing = False
            server.drain_events(peer)
            server.check_resume(peer)
        if conn.closed:
            server.wake_reader(peer)

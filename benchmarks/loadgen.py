"""Load generator: many WebSocket viewers and a producer in one epoll loop.

Theory of operation
-------------------
The generator must not be the bottleneck, so it avoids everything a WebSocket library
does per message. Each connection is a raw non-blocking socket driven by one
``select.epoll`` loop in this process (pinned to the client core by the harness):

* handshake: a hand-written HTTP/1.1 upgrade request; the ``101`` status line is checked.
  At most :data:`MAX_CONNECTING` handshakes are in flight (so listen backlogs do not
  overflow into SYN retransmits); a refused, reset or :data:`HANDSHAKE_TIMEOUT`-stuck
  attempt is retried up to :data:`MAX_ATTEMPTS` times;
* sending: client frames are masked (RFC 6455 section 5.3) with a random key; the producer
  builds a whole burst of frames and writes it with one ``send``;
* receiving on a *counting* viewer: ``recv_into`` one shared buffer and walk the frame
  headers only (RFC 6455 section 5.2), counting complete data messages; payloads are
  skipped, never copied or decoded. A frame cut by a ``recv`` boundary leaves only its
  header fragment (or, for a data frame, a byte count to skip);
* receiving on a *sink* viewer (throughput runs): after the status snapshot, only bytes
  are counted -- one ``recv_into`` per wakeup, nothing per frame. Every viewer of a session
  receives the same byte stream, so messages = bytes / (bytes per message measured on the
  probes over the same window), and a viewer is complete when it has as many bytes as a
  complete probe. Sinks do not answer pings: use them only for runs shorter than the
  server's ping interval;
* receiving on a *probe* viewer: frames are fully parsed, ``seq`` is checked for holes and
  the latency measured from the send time the producer embedded in the message text
  (``"T<monotonic_ns> xxxx"``; ``CLOCK_MONOTONIC`` is shared by all processes). Fields are
  pulled out with two regular expressions rather than ``json.loads``, so that a probe costs
  about a microsecond per message even when the producer sends 100k messages a second.
  Probes are handled first in each epoll batch and time-stamped right after ``recv`` so
  the client's own work on other sockets does not inflate their latency;
* control frames: a ping is answered with a pong carrying its payload (the servers run
  keepalive), a close is echoed.

All other sockets get a fixed 1 MiB ``SO_RCVBUF`` (and the producer a 4 MiB
``SO_SNDBUF``) so that the client's kernel buffers never throttle a fast server: a burst of
100 messages is ~26 KB per viewer and several bursts may be in flight, while the autotuned
receive buffer starts at 128 KiB and was seen pruning (``TcpExtPruneCalled``). The
producer's in-flight window keeps what is actually queued per viewer far below 1 MiB.

A viewer can be switched to *stalled*: it stops reading (its socket is taken out of the
epoll read set), so the server's buffers for it grow; it is given a small ``SO_RCVBUF``
instead, which keeps the kernel from hiding that.

Ten thousand sockets to one server address can exhaust ephemeral ports after a few runs,
so above :data:`SOURCES_ABOVE` connections the sockets bind round-robin to several
127.0.0.x source addresses (with ``IP_BIND_ADDRESS_NO_PORT`` so the port is still chosen at
``connect``).
"""

from __future__ import annotations

import base64
import enum
import errno
import json
import math
import random
import re
import resource
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SOURCES_ABOVE = 4000  # connections; above this spread over several source addresses
CONNS_PER_SOURCE = 4000
RECV_SIZE = 256 * 1024
MAX_CONNECTING = 64  # handshakes in flight; keeps servers' listen backlogs from overflowing
MAX_ATTEMPTS = 5
HANDSHAKE_TIMEOUT = 20.0  # seconds from connect() to the 101; then retry
RCVBUF = 1 << 20  # see the module docstring

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR | select.EPOLLHUP

_LINGER_RST = struct.pack("ii", 1, 0)


class State(enum.IntEnum):
    QUEUED = 0
    CONNECTING = 1
    HANDSHAKE = 2
    OPEN = 3
    CLOSED = 4
    FAILED = 5


class Role(enum.IntEnum):
    VIEWER = 0  # walks frame headers: counts messages, answers pings
    PROBE = 1  # decodes every frame: checks seq, measures latency
    PRODUCER = 2  # sends logs; reads (and ignores) whatever comes back
    SINK = 3  # like VIEWER until its status snapshot, then only counts bytes


_SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')
_SENT = re.compile(rb'"message"\s*:\s*"T(\d+) ')


def raise_nofile(needed: int) -> int:
    """Raise RLIMIT_NOFILE to at least ``needed`` if possible; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    want = max(needed, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def cpu_seconds() -> float:
    """This process's user + system CPU time."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame (RFC 6455 sections 5.2 and 5.3)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 0xFE)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0xFF)) + n.to_bytes(8, "big")
    key = random.randbytes(4)
    if n == 0:
        return header + key
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return header + key + (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little")


def frame_header(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """(header length, payload length) of the unmasked server frame at
    ``pos``, or None until its header has fully arrived (RFC 6455 §5.2)."""
    if end - pos < 2:
        return None
    ln = buf[pos + 1] & 0x7F
    if ln < 126:
        return 2, ln
    if ln == 126:
        return (4, (buf[pos + 2] << 8) | buf[pos + 3]) if end - pos >= 4 else None
    return (10, int.from_bytes(buf[pos + 2 : pos + 10], "big")) if end - pos >= 10 else None


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Conn:
    __slots__ = (
        "attempts",
        "base",
        "errors",
        "fd",
        "handshake",
        "index",
        "last_seq",
        "latencies",
        "logs",
        "msgs",
        "nbytes",
        "pbuf",
        "pings",
        "pongs",
        "rcvbuf",
        "rest",
        "role",
        "seq_errors",
        "skip",
        "sock",
        "stalled",
        "started",
        "state",
        "wbuf",
    )

    def __init__(self, index: int, role: Role, rcvbuf: int = 0) -> None:
        self.index = index
        self.role = role
        self.rcvbuf = rcvbuf
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = State.QUEUED
        self.attempts = 0
        self.started = 0.0  # monotonic time of the current connect()
        self.handshake = b""
        self.rest = b""  # header fragment (or short control frame) cut by a recv boundary
        self.skip = 0  # payload bytes of the current data frame still to skip
        self.pbuf = bytearray()  # probe/producer: undecoded bytes
        self.wbuf = bytearray()  # bytes the kernel would not take yet
        self.msgs = 0  # complete data messages received (the first is the status snapshot)
        self.base = 0  # msgs before the producer's first log (see LoadGen.mark_baseline)
        self.logs = 0  # probe: the producer's log messages received
        self.pongs = 0  # producer: {"type":"pong"} replies received
        self.nbytes = 0
        self.pings = 0
        self.stalled = False
        self.last_seq = 0
        self.seq_errors = 0
        self.latencies: list[int] = []  # ns, probes only, while recording
        self.errors: list[str] = []  # probe: first few {"type":"error"} texts or close reasons

    @property
    def subscribed(self) -> bool:
        return self.state == State.OPEN and self.msgs >= 1


class LoadGen:
    """Viewers and a producer against one server, in one epoll loop."""

    def __init__(self, port: int, token: str, session: str = "bench", host: str = "127.0.0.1"):
        self.host = host
        self.port = port
        self.token = token
        self.session = session
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.all: list[Conn] = []
        self.queue: deque[Conn] = deque()
        self.connecting = 0
        self.inflight: dict[int, Conn] = {}  # fd -> conn in CONNECTING or HANDSHAKE
        self._next_expiry_check = 0.0
        self.sources = 1
        self.buf = bytearray(RECV_SIZE)
        self.mv = memoryview(self.buf)
        self.probe_fds: set[int] = set()
        self.recording = False
        self.producer: Conn | None = None
        self.sent = 0  # log messages the producer has handed to its socket
        self.ready = 0  # viewers that received their first message (the status snapshot)
        self._subscribe = client_frame(
            1,
            json.dumps(
                {"type": "subscribe", "sessionId": session, "auth": {"token": token}},
                separators=(",", ":"),
            ).encode(),
        )
        self._log_prefix = (
            '{"type":"log","sessionId":' + json.dumps(session) + ',"level":"info","message":"'
        ).encode()

    # -- opening connections -------------------------------------------------------------

    def add_viewers(
        self,
        n: int,
        probes: Iterable[int] = (),
        rcvbuf: int = 0,
        rcvbuf_for: Iterable[int] = (),
        sinks: bool = False,
    ) -> list[Conn]:
        """Queue ``n`` viewers; indexes in ``probes`` decode fully, the others walk frame
        headers (or, with ``sinks``, count bytes only); ``rcvbuf_for`` get a small receive
        buffer of ``rcvbuf`` bytes (for viewers that will stall)."""
        probe_set = set(probes)
        small = set(rcvbuf_for)
        raise_nofile(len(self.all) + n + 256)
        total = len(self.all) + n
        if total > SOURCES_ABOVE:
            self.sources = max(self.sources, min(250, -(-total // CONNS_PER_SOURCE)))
        out = []
        for i in range(n):
            c = Conn(
                len(self.all),
                Role.PROBE if i in probe_set else Role.SINK if sinks else Role.VIEWER,
                rcvbuf if i in small else 0,
            )
            self.all.append(c)
            self.queue.append(c)
            out.append(c)
        self._start_queued()
        return out

    def add_producer(self) -> Conn:
        c = Conn(len(self.all), Role.PRODUCER)
        self.all.append(c)
        self.queue.append(c)
        self.producer = c
        self._start_queued()
        return c

    def _start_queued(self) -> None:
        while self.queue and self.connecting < MAX_CONNECTING:
            self._connect(self.queue.popleft())

    def _connect(self, c: Conn) -> None:
        c.attempts += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, c.rcvbuf or RCVBUF)
        if c.role == Role.PRODUCER:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        if self.sources > 1:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{1 + c.index % self.sources}", 0))
        err = s.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self._retry(c)
            return
        c.sock = s
        c.fd = s.fileno()
        c.state = State.CONNECTING
        self.connecting += 1
        c.started = time.monotonic()
        self.inflight[c.fd] = c
        self.conns[c.fd] = c
        self.ep.register(c.fd, EPOLLOUT)

    def _retry(self, c: Conn) -> None:
        if c.attempts < MAX_ATTEMPTS:
            c.state = State.QUEUED
            self.queue.append(c)
        else:
            c.state = State.FAILED

    def _drop(self, c: Conn, failed: bool) -> None:
        """Forget a socket (closing it with RST, so no TIME_WAIT piles up across runs)."""
        if c.state in (State.CONNECTING, State.HANDSHAKE):
            self.connecting -= 1
            self.inflight.pop(c.fd, None)
        if c.sock is not None:
            self.conns.pop(c.fd, None)
            self.probe_fds.discard(c.fd)
            try:
                self.ep.unregister(c.fd)
            except (OSError, ValueError):
                pass
            try:
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
            c.sock.close()
            c.sock = None
            c.fd = -1
        if failed:
            c.handshake = b""
            self._retry(c)
        else:
            c.state = State.CLOSED

    def _on_connected(self, c: Conn) -> None:
        assert c.sock is not None
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop(c, failed=True)
            return
        key = base64.b64encode(random.randbytes(16)).decode()
        request = (
            f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        c.state = State.HANDSHAKE
        self.ep.modify(c.fd, EPOLLIN)
        self._send(c, request)

    def _on_handshake_data(self, c: Conn) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._drop(c, failed=True)
            return
        if not data:
            self._drop(c, failed=True)
            return
        c.handshake += data
        end = c.handshake.find(b"\r\n\r\n")
        if end < 0:
            return
        head, extra = c.handshake[:end], c.handshake[end + 4 :]
        c.handshake = b""
        if not head.startswith(b"HTTP/1.1 101"):
            c.errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            self._drop(c, failed=False)
            c.state = State.FAILED
            return
        self.connecting -= 1
        self.inflight.pop(c.fd, None)
        c.state = State.OPEN
        c.nbytes += len(extra)
        if c.role == Role.PRODUCER:
            auth = {"type": "auth", "token": self.token}
            self._send(c, client_frame(1, json.dumps(auth).encode()))
        else:
            self._send(c, self._subscribe)
        if c.role in (Role.PROBE, Role.PRODUCER):
            self.probe_fds.add(c.fd)
            c.pbuf += extra
            self._decode(c, time.monotonic_ns())
        elif extra:
            c.rest = extra
            self._read_count(c, recv=False)

    # -- sending -------------------------------------------------------------------------

    def _send(self, c: Conn, data: bytes) -> None:
        if c.sock is None:
            return
        if c.wbuf:
            c.wbuf += data
            return
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._drop(c, failed=False)
            return
        if n < len(data):
            c.wbuf += data[n:]
            self._update_events(c)

    def _flush(self, c: Conn) -> None:
        assert c.sock is not None
        try:
            n = c.sock.send(c.wbuf)
        except BlockingIOError:
            return
        except OSError:
            self._drop(c, failed=False)
            return
        del c.wbuf[:n]
        if not c.wbuf:
            self._update_events(c)

    def _update_events(self, c: Conn) -> None:
        if c.sock is None:
            return
        events = 0 if c.stalled else EPOLLIN
        if c.wbuf:
            events |= EPOLLOUT
        self.ep.modify(c.fd, events)

    def send_logs(self, count: int, size: int) -> bool:
        """Send ``count`` log messages of ``size``-byte text in one write, each carrying the
        send time. Returns False (sending nothing) while earlier bytes are still queued."""
        p = self.producer
        if p is None or p.state != State.OPEN or p.wbuf:
            return False
        ns = time.monotonic_ns()
        head = f"T{ns} ".encode()
        text = head + b"x" * max(0, size - len(head))
        suffix = b'","timestamp":"' + iso_now().encode() + b'"}'
        payload = self._log_prefix + text + suffix
        frames = b"".join([client_frame(1, payload) for _ in range(count)])
        self._send(p, frames)
        self.sent += count
        return True

    # -- receiving -----------------------------------------------------------------------

    def _read_count(self, c: Conn, recv: bool = True) -> None:
        """Count complete data messages by walking frame headers only."""
        buf = self.buf
        k = 0
        rest = c.rest
        if rest:
            k = len(rest)
            buf[:k] = rest
            c.rest = b""
        n = 0
        if recv:
            assert c.sock is not None
            try:
                n = c.sock.recv_into(self.mv[k:])
            except BlockingIOError:
                c.rest = rest
                return
            except OSError:
                self._drop(c, failed=False)
                return
            if n == 0:
                self._drop(c, failed=False)
                return
            c.nbytes += n
        end = k + n
        pos = 0
        skip = c.skip
        if skip:
            if skip >= end:
                c.skip = skip - end
                return
            pos = skip
            c.skip = 0
        msgs = 0
        while (header := frame_header(buf, pos, end)) is not None:
            b0 = buf[pos]
            hl, ln = header
            fe = pos + hl + ln
            if b0 & 0x08 == 0:  # data frame (opcode 0, 1 or 2)
                if b0 & 0x80:
                    msgs += 1
                if fe > end:
                    c.skip = fe - end
                    pos = end
                    break
            else:
                if fe > end:
                    break
                self._control(c, b0 & 0x0F, bytes(buf[pos + hl : fe]))
                if c.sock is None:
                    return
            pos = fe
        if msgs:
            if not c.msgs:
                self.ready += 1
            c.msgs += msgs
        if pos < end:
            c.rest = bytes(buf[pos:end])

    def _read_sink(self, c: Conn) -> None:
        assert c.sock is not None
        try:
            n = c.sock.recv_into(self.mv)
        except BlockingIOError:
            return
        except OSError:
            self._drop(c, failed=False)
            return
        if n == 0:
            self._drop(c, failed=False)
            return
        c.nbytes += n

    def _read_decode(self, c: Conn) -> None:
        assert c.sock is not None
        try:
            n = c.sock.recv_into(self.mv)
        except BlockingIOError:
            return
        except OSError:
            self._drop(c, failed=False)
            return
        now = time.monotonic_ns()
        if n == 0:
            self._drop(c, failed=False)
            return
        c.nbytes += n
        c.pbuf += self.mv[:n]
        self._decode(c, now)

    def _decode(self, c: Conn, now: int) -> None:
        buf = c.pbuf
        end = len(buf)
        pos = 0
        while (header := frame_header(buf, pos, end)) is not None:
            b0 = buf[pos]
            hl, ln = header
            fe = pos + hl + ln
            if fe > end:
                break
            payload = bytes(buf[pos + hl : fe])
            pos = fe
            opcode = b0 & 0x0F
            if opcode & 0x08:
                self._control(c, opcode, payload)
                if c.sock is None:
                    return
            elif c.role == Role.PROBE and b0 & 0x80:
                self._on_probe_message(c, payload, now)
            elif b0 & 0x80:
                c.msgs += 1
                if b'"pong"' in payload:
                    c.pongs += 1
                elif b'"error"' in payload and len(c.errors) < 3:
                    c.errors.append(payload.decode(errors="replace")[:200])
        del buf[:pos]

    def _on_probe_message(self, c: Conn, payload: bytes, now: int) -> None:
        if not c.msgs:
            self.ready += 1
        c.msgs += 1
        m = _SEQ.search(payload)
        if m is None:  # the status snapshot, a pong, or an error
            if b'"error"' in payload and len(c.errors) < 3:
                c.errors.append(payload.decode(errors="replace")[:200])
            return
        seq = int(m.group(1))
        if c.last_seq and seq != c.last_seq + 1:
            c.seq_errors += 1
        c.last_seq = seq
        m = _SENT.search(payload)
        if m is not None:
            c.logs += 1
            if self.recording:
                c.latencies.append(now - int(m.group(1)))

    def _control(self, c: Conn, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:  # ping -> pong with the same payload (RFC 6455 section 5.5.2)
            c.pings += 1
            self._send(c, client_frame(0xA, payload))
        elif opcode == 0x8:  # close -> echo the code (section 5.5.1), server closes TCP
            if len(c.errors) < 3:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                c.errors.append(f"close {code} {payload[2:].decode(errors='replace')}")
            self._send(c, client_frame(0x8, payload[:2]))

    # -- the loop ------------------------------------------------------------------------

    def pump(self, timeout: float) -> None:
        """One epoll round: wait up to ``timeout`` seconds and handle what is ready."""
        events = self.ep.poll(max(0.0, timeout), 4096)
        if not events:
            return
        conns = self.conns
        probes = self.probe_fds
        if probes:
            later = []
            for fd, ev in events:
                if fd in probes:
                    c = conns.get(fd)
                    if c is not None and c.state == State.OPEN and ev & EPOLLIN:
                        self._read_decode(c)
                        ev &= ~EPOLLIN
                if ev:
                    later.append((fd, ev))
            events = later
        for fd, ev in events:
            c = conns.get(fd)
            if c is None:
                continue
            state = c.state
            if state == State.OPEN:
                if ev & EPOLLIN:
                    role = c.role
                    if role == Role.SINK and c.msgs:
                        self._read_sink(c)
                    elif role in (Role.VIEWER, Role.SINK):
                        self._read_count(c)
                    else:
                        self._read_decode(c)
                    if c.sock is None:
                        continue
                if ev & EPOLLOUT and c.wbuf:
                    self._flush(c)
                elif ev & EPOLLERR and not ev & EPOLLIN:
                    self._drop(c, failed=False)
            elif state == State.CONNECTING:
                self._on_connected(c)
            elif state == State.HANDSHAKE:
                if ev & EPOLLOUT and c.wbuf:
                    self._flush(c)
                if ev & (EPOLLIN | EPOLLERR):
                    self._on_handshake_data(c)
        if self.inflight:
            self._expire_handshakes()
        if self.queue and self.connecting < MAX_CONNECTING:
            self._start_queued()

    def _expire_handshakes(self) -> None:
        now = time.monotonic()
        if now < self._next_expiry_check:
            return
        self._next_expiry_check = now + 1.0
        for c in [c for c in self.inflight.values() if now - c.started > HANDSHAKE_TIMEOUT]:
            self._drop(c, failed=True)

    def run_for(self, seconds: float, tick: Callable[[float], float] | None = None) -> None:
        """Pump for ``seconds``. ``tick(now)`` is called every round and returns how long
        the loop may sleep before the next call."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                return
            wait = end - now
            if tick is not None:
                wait = min(wait, tick(now))
            self.pump(wait)

    def run_until(self, done: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
        end = time.monotonic() + timeout
        while not done():
            now = time.monotonic()
            if now >= end:
                return False
            self.pump(min(step, end - now))
        return True

    # -- control and results -------------------------------------------------------------

    def wait_subscribed(self, conns: list[Conn], timeout: float) -> int:
        """Pump until every conn got its status snapshot (or failed); return how many did."""

        def done() -> bool:
            if self.ready >= len(conns):
                return True
            if self.queue or self.connecting:
                return False
            return all(c.subscribed or c.state >= State.CLOSED for c in conns)

        self.run_until(done, timeout)
        return sum(1 for c in conns if c.subscribed)

    def wait_producer(self, timeout: float) -> bool:
        p = self.producer
        return p is not None and self.run_until(lambda: p.state >= State.OPEN, timeout)

    def create_session(self, timeout: float) -> bool:
        """Have the producer announce the session (a ``status`` message, which creates it on
        servers that only know sessions once produced to), then wait for a ping's pong so
        the server has handled it before any viewer subscribes."""
        p = self.producer
        if p is None or not self.wait_producer(timeout):
            return False
        status = {"type": "status", "sessionId": self.session, "status": "running"}
        self._send(p, client_frame(1, json.dumps(status).encode()))
        self._send(p, client_frame(1, b'{"type":"ping"}'))
        return self.run_until(lambda: p.pongs >= 1 or p.state >= State.CLOSED, timeout) and (
            p.state == State.OPEN
        )

    def mark_baseline(self, conns: Iterable[Conn]) -> None:
        """Remember each viewer's message count before the first log is sent (the status
        snapshot, and any history a server replays on subscribe)."""
        for c in conns:
            c.base = c.msgs

    def stall(self, conns: Iterable[Conn]) -> None:
        for c in conns:
            c.stalled = True
            self._update_events(c)

    def resume(self, conns: Iterable[Conn]) -> None:
        for c in conns:
            c.stalled = False
            self._update_events(c)

    def close_all(self) -> None:
        for c in self.all:
            if c.sock is not None:
                self._drop(c, failed=False)
        self.queue.clear()
        self.ep.close()

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_all()


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    """p50 / p99 / max in milliseconds (nearest-rank)."""
    if not samples_ns:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    s = sorted(samples_ns)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] / 1e6

    return {"p50_ms": rank(0.50), "p99_ms": rank(0.99), "max_ms": s[-1] / 1e6}

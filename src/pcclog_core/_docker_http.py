"""The Docker engine's HTTP/1.1 responses, decoded by us (RFC 9112).

Why not the SDK's response. The ``docker`` SDK answers a streamed request
with a ``requests`` response whose body is reached only through private
attributes (``response.raw._fp.fp``: urllib3's ``HTTPResponse`` wraps an
``http.client.HTTPResponse``, whose buffered reader already holds the first
bytes of the body, so the socket alone is not enough), and whose own
reading costs one call per chunk. The engine writes every log record as its
own chunk. So the runtime opens the engine's socket itself (unix, tcp or
tls, as ``DOCKER_HOST`` says), writes :meth:`Response.request` and hands
every read to :meth:`Response.receive_data`, which returns the decoded body
bytes: no private attribute, and one read for many records.

h11 or our own unchunker. Both are used, each where it fits:

* **h11 (client mode)** writes the request and parses the response head
  (status line, header fields, RFC 9112 §2-§6): that happens once per
  stream, and h11 validates it better than a regex would. Once h11 returns
  the ``Response`` event, the bytes it has not processed
  (``Connection.trailing_data``, public API) are the start of the body.
* **:class:`ChunkedDecoder`** undoes the chunked transfer coding (RFC 9112
  §7.1) of the body. h11 would do it too, but at about 4 µs per chunk (one
  ``Data`` event through its state machine per chunk) against 0.6 µs here:
  with one chunk per log line that is a third of the Docker source's whole
  budget per line. Its tests feed every split of valid bodies and random
  garbage; the only error out of it is :class:`EngineHTTPError`.

The body's framing is RFC 9112 §6.3: ``Transfer-Encoding: chunked``, else
``Content-Length``, else until the connection closes (h11 rejects any other
transfer coding). A 1xx response is skipped; 204 and 304 have no body.
:attr:`Response.complete` says the body ended as framed: for a follow
stream, the engine ended it on purpose (the terminating chunk); EOF before
that means the connection broke.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import h11

from ._errors import PcclogError

__all__ = ["ChunkedDecoder", "EngineHTTPError", "Head", "Response"]

_MAX_LINE: Final = 4096  # a chunk-size line (with extensions) or one trailer field line
_MAX_HEAD: Final = 65536
_SIZE_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\Z")
_CHUNK_HEAD: Final = re.compile(rb"([0-9a-fA-F]{1,16})\r\n")

_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class EngineHTTPError(PcclogError, ValueError):
    """The engine's response broke HTTP/1.1: drop the connection.

    Raised for a malformed response head (h11's ``RemoteProtocolError``,
    translated here), a malformed chunked body, EOF before the head, or a
    head longer than 64 KiB. Once raised, every later
    ``receive_data`` raises again.
    """


class ChunkedDecoder:
    """Undo the chunked transfer coding (RFC 9112 §7.1) of a streamed body.

    :meth:`receive_data` takes the body's bytes as they arrive, split
    anywhere, and returns the chunk data they complete. :attr:`done` turns
    true after the last chunk (size 0) and its trailer section; bytes after
    it are not the body's and are ignored (the connection is not reused).
    Chunk extensions and trailer fields are skipped (RFC 9112 §7.1.1, §7.1.2);
    a bare LF ends a line as well as CRLF (RFC 9112 §2.2). Limits: a
    chunk-size line or a trailer line of 4096 bytes, a size of 16 hex
    digits. Everything else raises :class:`EngineHTTPError`.
    """

    __slots__ = ("_error", "_left", "_line", "_state", "done")

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        self._line = b""
        self._error: EngineHTTPError | None = None
        self.done = False

    def receive_data(self, data: bytes) -> bytes:
        if self._error is not None:
            raise EngineHTTPError(f"the chunked body already failed: {self._error}")
        try:
            return self._feed(data)
        except EngineHTTPError as exc:
            self._error = exc
            raise

    def _feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _SIZE and not self._line:
                # Fast path: whole chunks, one regex match each.
                m = _CHUNK_HEAD.match(data, pos)
                if m is not None:
                    start = m.end()
                    stop = start + int(m.group(1), 16)
                    if stop > start and stop + 2 <= end and data[stop : stop + 2] == b"\r\n":
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
                break
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > _MAX_LINE:
                    raise EngineHTTPError("chunked body: a control line is over 4096 bytes")
                break
            line = data[pos:nl]
            if self._line:
                line = self._line + line
                self._line = b""
            if len(line) > _MAX_LINE:
                raise EngineHTTPError("chunked body: a control line is over 4096 bytes")
            pos = nl + 1
            if state == _DATA_END:
                if line not in (b"", b"\r"):
                    raise EngineHTTPError("chunked body: no CRLF after the chunk data")
                self._state = _SIZE
            elif state == _SIZE:
                m = _SIZE_LINE.match(line)
                if m is None:
                    raise EngineHTTPError(f"chunked body: bad chunk size line {line[:40]!r}")
                size = int(m.group(1), 16)
                if size:
                    self._left = size
                    self._state = _DATA
                else:
                    self._state = _TRAILER
            elif line in (b"", b"\r"):  # _TRAILER: an empty line ends the trailer section
                self._state = _DONE
                self.done = True
        return out[0] if len(out) == 1 else b"".join(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class Head:
    """The status line and header fields of a response (names lower-case)."""

    status: int
    reason: str
    headers: Sequence[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        """The last value of header field ``name`` (lower-case), or ``None``."""
        value = None
        for key, v in self.headers:
            if key == name:
                value = v
        return value


class Response:
    """One request to the engine and its response: bytes in, body bytes out.

    ``Response(target, host=...)``; write :attr:`request` to a new
    connection, then feed every read to :meth:`receive_data` (``b""`` is
    EOF), which returns the body bytes that read completed. :attr:`head` is
    set once the head has arrived; :attr:`complete` once the body ended as
    framed; :attr:`closed` after EOF. See the module docstring.
    """

    __slots__ = (
        "_chunked",
        "_conn",
        "_error",
        "_left",
        "closed",
        "complete",
        "head",
        "request",
    )

    def __init__(self, target: str, *, host: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        self._conn: h11.Connection | None = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=_MAX_HEAD
        )
        fields = [("Host", host), ("User-Agent", "pcclog"), *headers]
        request = self._conn.send(h11.Request(method="GET", target=target, headers=fields))
        end = self._conn.send(h11.EndOfMessage())
        self.request: bytes = (request or b"") + (end or b"")
        self.head: Head | None = None
        self.complete = False
        self.closed = False
        self._chunked: ChunkedDecoder | None = None
        self._left: int | None = None  # Content-Length still to come; None: until EOF
        self._error: EngineHTTPError | None = None

    def receive_data(self, data: bytes) -> bytes:
        """The body bytes ``data`` completes; ``b""`` means EOF."""
        if self._error is not None:
            raise EngineHTTPError(f"the response already failed: {self._error}")
        try:
            return self._receive(data)
        except EngineHTTPError as exc:
            self._error = exc
            raise

    def _receive(self, data: bytes) -> bytes:
        if not data:
            self.closed = True
            if self.head is None:
                raise EngineHTTPError("the engine closed the connection before a response")
            if self._chunked is None and self._left is None:
                self.complete = True  # a body delimited by the connection's close
            return b""
        if self.closed:
            raise EngineHTTPError("data after EOF")
        if self._conn is not None:
            data = self._receive_head(data)
            if not data:
                return b""
        if self.complete:
            return b""  # after a complete body: not this response's (never reused)
        chunked = self._chunked
        if chunked is not None:
            body = chunked.receive_data(data)
            self.complete = chunked.done
            return body
        left = self._left
        if left is None:
            return data
        if len(data) >= left:
            self.complete = True
            self._left = 0
            return data[:left]
        self._left = left - len(data)
        return data

    def _receive_head(self, data: bytes) -> bytes:
        conn = self._conn
        assert conn is not None
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return b""
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    break
                raise EngineHTTPError(f"unexpected {type(event).__name__} before the response")
        except h11.RemoteProtocolError as exc:
            raise EngineHTTPError(f"malformed response head: {exc}") from None
        headers = tuple((bytes(k), bytes(v)) for k, v in event.headers)
        head = Head(
            status=event.status_code, reason=event.reason.decode("latin-1"), headers=headers
        )
        self.head = head
        body, _ = conn.trailing_data
        self._conn = None
        if head.status in (204, 304):
            self.complete = True
            return b""
        coding = head.header(b"transfer-encoding")
        if coding is not None and coding.lower() == b"chunked":
            self._chunked = ChunkedDecoder()
        else:
            length = head.header(b"content-length")
            if length is not None:
                self._left = int(length)  # h11 validated it: digits only
                if not self._left:
                    self.complete = True
        return body

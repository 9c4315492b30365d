"""Sans-IO decoding of the Docker Engine's container log stream (SPEC §4).

Theory of operation
===================

The runtime opens ``GET /containers/{id}/logs?follow=1&stdout=1&stderr=1&timestamps=1``
(:mod:`._docker_http` undoes the HTTP framing) and hands every chunk of the body
to :meth:`DockerStreamDecoder.receive_data`; ``receive_data(b"")`` is EOF. Whole
lines come out of :meth:`DockerStreamDecoder.lines`. Nothing here reads a socket
or a clock.

What the engine sends (moby ``api/server/httputils/write_log_stream.go``,
``WriteLogStream``; ``pkg/stdcopy``; ``daemon/logger/copier.go``):

* Every log *record* is written with one ``Write``. With ``timestamps=1`` it is
  ``<RFC3339NanoFixed timestamp> SP <bytes>``; the timestamp is
  ``time.Format("2006-01-02T15:04:05.000000000Z07:00")``, UTC, so in practice
  ``2024-01-26T13:45:30.123456789Z`` (we accept any RFC 3339 form: 0-9 fraction
  digits, ``Z`` or ``±hh:mm``).
* Without a TTY the body is multiplexed by ``stdcopy.StdWriter``: each ``Write``
  becomes ONE frame, an 8-byte header ``[type, 0, 0, 0, len32be]`` then ``len``
  payload bytes. ``type`` is 0 stdin, 1 stdout, 2 stderr, 3 *Systemerr* (the
  engine's own in-band error, ``"Error grabbing logs: ...\\n"``, after which it
  goes on streaming). ``stdcopy.StdCopy`` demultiplexes stdin onto stdout, and
  so do we. With a TTY there is no header and everything is stdout (the engine
  then writes its in-band errors, without a timestamp, into the same stream).
* The logging copier cuts the container's output at ``\\n`` and, when 16 KiB
  (``defaultBufSize``) arrive without one, logs those bytes as a *partial*
  record. A record that ends in ``\\n`` completes a line; one that does not is
  continued by the next record of the same stream, which carries its own
  timestamp prefix (current moby copiers give every piece the first piece's
  value, ``partialTS``; older ones stamped each piece). The last bytes a
  container writes before closing its stdout are also logged as a partial
  record without ``\\n``.

Per stream, the decoder runs this small state machine over the stream's bytes
(one :class:`_Assembler` per stream; frames only tell it where a record ends)::

    state    input                                          next state
    -------  ---------------------------------------------  ----------------
    START    "timestamp SP"                                 CONTENT
    START    anything else                                  DockerStreamError
    START    TTY only: "Error ..." (in-band engine error)   DAEMON
    CONTENT  bytes up to LF: the line is complete           START
    CONTENT  the frame ends (TTY: a full 16 KiB piece)      SEAM
    SEAM     "timestamp SP": a continuation, stamp dropped  CONTENT
    SEAM     anything else, or the frame ends first: text   CONTENT
             of one record framed in several frames
    DAEMON   bytes up to LF: to daemon_errors()             START

A TTY stream has no frames, so the end of a 16 KiB piece is recognised by
position: after ``tty_piece_bytes`` bytes of content without ``\\n`` the decoder
looks for a timestamp (SEAM). An engine whose log driver uses another buffer
size leaves that timestamp inside the line text; nothing is lost.

Limits: a line keeps its first ``max_line_bytes`` bytes; the rest is counted
and dropped as it arrives, so a stream never buffers more than
``max_line_bytes`` plus one timestamp (35 bytes), and the decoder one 8-byte
header besides. Everything a malformed body can cause is a
:class:`DockerStreamError`.

Timestamps are parsed by the one parser (:mod:`._timefmt`); lines are
classified by :mod:`._docker_lines` and de-duplicated on re-attach by
:mod:`._docker_resume`.
"""

from __future__ import annotations

import re
import struct
from typing import Final, Literal

import msgspec

from ._errors import PcclogError
from ._timefmt import TIMESTAMP_SP, match_ns

__all__ = ["DockerLine", "DockerStreamDecoder", "DockerStreamError", "Stream"]

Stream = Literal["stdout", "stderr"]


class DockerStreamError(PcclogError, ValueError):
    """The log body broke the Engine API framing; the decoder cannot go on.

    Raised by :meth:`DockerStreamDecoder.receive_data` for: a multiplexed
    header whose stream type is not 0-3 or whose three padding bytes are not
    zero (a TTY body decoded with ``tty=False`` shows up this way: its first
    byte is the ``"2"`` of a timestamp), a record that does not begin with an
    RFC 3339 timestamp (the request must carry ``timestamps=1``), and data
    after EOF. Once raised, every later ``receive_data`` raises again; lines
    completed before the error are still returned by ``lines()``. The runtime
    drops the connection and re-attaches (see ``ResumeFilter``).
    """


class DockerLine(msgspec.Struct, frozen=True, kw_only=True):
    """One whole log line of a container.

    ``timestamp`` is the engine's own string (of the line's first piece when
    the engine split the line), ``timestamp_ns`` the same instant in
    nanoseconds since the Unix epoch, exact. ``text`` has no trailing
    ``\\n``/``\\r\\n``; when the line was longer than the decoder's
    ``max_line_bytes`` it was cut, ``truncated`` is true and ``text`` ends in
    ``" …[truncated N bytes]"``.
    """

    stream: Stream
    timestamp: str
    timestamp_ns: int
    text: str
    truncated: bool = False

    def __post_init__(self) -> None:
        if self.stream != "stdout" and self.stream != "stderr":
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {self.stream!r}")


# Longest timestamp: 19 (date-time) + 10 (.fraction) + 6 (±hh:mm) = 35 bytes.
# A record whose first 36 bytes hold no space does not start with one.
_TS_WINDOW: Final = 36
_TS_ALPHABET: Final = b"0123456789-:.+TtZz"
_TS_SP_RE: Final = TIMESTAMP_SP

# ---------------------------------------------------------------------------
# The stream decoder
# ---------------------------------------------------------------------------

_START: Final = 0
_CONTENT: Final = 1
_SEAM: Final = 2
_DAEMON: Final = 3

_HEADER: Final = struct.Struct(">II")
_STDIN, _STDOUT, _STDERR, _SYSTEMERR = 0, 1, 2, 3
_DAEMON_ERROR_CAP: Final = 4096
_DAEMON_PREFIX: Final = b"Error "  # WriteLogStream: "Error grabbing logs: %v\n"


def _utf8_tail(raw: bytes) -> int:
    """How many bytes at the end of ``raw`` are an incomplete UTF-8 sequence."""
    n = len(raw)
    for back in range(1, min(4, n) + 1):
        byte = raw[n - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        if byte < 0xC0:
            return 0
        need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return back if need > back else 0
    return 0


class _Assembler:
    """Turns one stream's record bytes into whole lines (see the module's table)."""

    __slots__ = (
        "_cr",
        "_cut",
        "_daemon",
        "_errors",
        "_head",
        "_kept",
        "_max",
        "_out",
        "_parts",
        "_piece",
        "_piece_len",
        "_state",
        "_stream",
        "_ts",
        "_ts_ns",
    )

    def __init__(
        self,
        stream: Stream,
        out: list[DockerLine],
        errors: list[str],
        max_line_bytes: int,
        piece_bytes: int,
    ) -> None:
        self._stream: Stream = stream
        self._out = out
        self._errors = errors
        self._max = max_line_bytes
        # 0 for a multiplexed stream, whose frames mark the end of a piece.
        self._piece = piece_bytes
        self._piece_len = 0
        self._state = _START
        self._head = b""  # start of a record whose timestamp is not complete yet
        self._ts = ""
        self._ts_ns = 0
        self._parts: list[bytes] = []
        self._kept = 0
        self._cut = 0
        self._cr = False  # the line's last byte so far is "\r"
        self._daemon = bytearray()

    @property
    def buffered(self) -> int:
        return self._kept + len(self._head) + len(self._daemon)

    def feed(self, data: bytes, pos: int, end: int) -> None:
        while pos < end:
            state = self._state
            if state == _CONTENT:
                pos = self._content(data, pos, end)
            elif state == _DAEMON:
                pos = self._daemon_line(data, pos, end)
            else:
                pos = self._prefix(data, pos, end)

    def end_frame(self) -> None:
        """A multiplexed frame (one engine record) ended."""
        if self._state == _CONTENT:
            self._state = _SEAM
        elif self._state == _SEAM and self._head:
            # The engine writes a record's timestamp, space and bytes with one
            # Write, so in one frame: a whole frame that is neither a timestamp
            # nor a line end is text of a record framed in several frames.
            head = self._head
            self._head = b""
            self._append(head, 0, len(head))

    def finish(self) -> None:
        """EOF: flush the trailing partial line, if any."""
        state = self._state
        if state == _SEAM and self._head.strip(_TS_ALPHABET):
            # Not the beginning of a continuation timestamp (the body ended in
            # its middle): these bytes are text.
            self._append(self._head, 0, len(self._head))
        self._head = b""
        if state in (_CONTENT, _SEAM):
            self._emit()
        elif state == _DAEMON:
            self._emit_daemon()
        self._state = _START

    # -- states ------------------------------------------------------------

    def _prefix(self, data: bytes, pos: int, end: int) -> int:
        """START / SEAM: expect ``timestamp SP``."""
        head = self._head
        if not head:
            m = _TS_SP_RE.match(data, pos, end)
            if m is not None and self._take_timestamp(m):
                return m.end()
        window = head + data[pos : min(end, pos + _TS_WINDOW - len(head))]
        space = window.find(b" ")
        if space >= 0:
            m = _TS_SP_RE.fullmatch(window, 0, space + 1)
            if m is not None and self._take_timestamp(m):
                self._head = b""
                return pos + space + 1 - len(head)
        elif len(window) < _TS_WINDOW and b"\n" not in window:
            self._head = window  # the timestamp goes on in the next chunk
            return end
        # Not a timestamp.
        self._head = b""
        if self._state == _SEAM:
            # The previous frame ended inside a record: what follows is text.
            self._state = _CONTENT
            self._piece_len = 0
            self._append(head, 0, len(head))
            return pos
        if self._piece and window.startswith(_DAEMON_PREFIX):
            self._state = _DAEMON
            self._daemon += head[: min(_DAEMON_ERROR_CAP, self._max)]
            return pos
        hint = ""
        if self._piece and window[:1] in (b"\x00", b"\x01", b"\x02"):
            hint = " (a multiplexed body? decode it with tty=False)"
        raise DockerStreamError(
            f"{self._stream} record does not start with an RFC 3339 timestamp: "
            f"{window[:40]!r}{hint}; request the logs with timestamps=1"
        )

    def _take_timestamp(self, m: re.Match[bytes]) -> bool:
        """Take ``m`` as the record's timestamp; False if it is no valid time."""
        try:
            ns = match_ns(m)
        except ValueError:
            return False
        if self._state == _START:
            self._ts = m.group(0)[:-1].decode("ascii")
            self._ts_ns = ns
        # SEAM: a continuation piece; the line keeps its first piece's stamp.
        self._state = _CONTENT
        self._piece_len = 0
        return True

    def _content(self, data: bytes, pos: int, end: int) -> int:
        """CONTENT: the line's bytes, up to ``\\n``."""
        piece = self._piece
        limit = end
        if piece:
            limit = pos + piece - self._piece_len
            if limit > end:
                limit = end
        nl = data.find(b"\n", pos, limit)
        if nl >= 0:
            if not self._parts and not self._cut and nl - pos <= self._max:
                # Hot path: the whole line is in this chunk.
                stop = nl - 1 if nl > pos and data[nl - 1] == 13 else nl
                self._out.append(
                    DockerLine(
                        stream=self._stream,
                        timestamp=self._ts,
                        timestamp_ns=self._ts_ns,
                        text=data[pos:stop].decode("utf-8", "replace"),
                    )
                )
                self._state = _START
            else:
                self._append(data, pos, nl)
                self._emit()
            return nl + 1
        self._append(data, pos, limit)
        if piece:
            self._piece_len += limit - pos
            if self._piece_len >= piece:
                self._state = _SEAM  # a 16 KiB piece: a timestamp may follow
        return limit

    def _daemon_line(self, data: bytes, pos: int, end: int) -> int:
        """DAEMON (TTY): the engine's in-band error line, up to ``\\n``."""
        nl = data.find(b"\n", pos, end)
        stop = end if nl < 0 else nl
        room = min(_DAEMON_ERROR_CAP, self._max) - len(self._daemon)
        if room > 0:
            self._daemon += data[pos : pos + min(room, stop - pos)]
        if nl < 0:
            return end
        self._emit_daemon()
        self._state = _START
        return nl + 1

    # -- line buffer -------------------------------------------------------

    def _append(self, data: bytes, start: int, stop: int) -> None:
        n = stop - start
        if n <= 0:
            return
        self._cr = data[stop - 1] == 13
        room = self._max - self._kept
        if n <= room:
            self._parts.append(data[start:stop])
            self._kept += n
        else:
            if room > 0:
                self._parts.append(data[start : start + room])
                self._kept += room
            self._cut += n - room  # dropped as it arrives: memory stays bounded

    def _emit(self) -> None:
        parts = self._parts
        raw = parts[0] if len(parts) == 1 else b"".join(parts)
        cut = self._cut
        if self._cr:  # the line ended in "\r\n": the "\r" is not text
            if cut:
                cut -= 1
            else:
                raw = raw[:-1]
        if cut:
            back = _utf8_tail(raw)  # do not cut a character in half
            if back:
                raw = raw[:-back]
                cut += back
            text = f"{raw.decode('utf-8', 'replace')} …[truncated {cut} bytes]"
        else:
            text = raw.decode("utf-8", "replace")
        self._out.append(
            DockerLine(
                stream=self._stream,
                timestamp=self._ts,
                timestamp_ns=self._ts_ns,
                text=text,
                truncated=cut > 0,
            )
        )
        self._parts = []
        self._kept = 0
        self._cut = 0
        self._cr = False
        self._state = _START

    def _emit_daemon(self) -> None:
        self._errors.append(bytes(self._daemon).decode("utf-8", "replace").rstrip("\r\n"))
        self._daemon.clear()


class _SystemErrSink:
    """Collects a Systemerr frame (type 3): the engine's in-band error text."""

    __slots__ = ("_buf", "_cap", "_errors")

    def __init__(self, errors: list[str], cap: int) -> None:
        self._errors = errors
        self._cap = cap
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes, pos: int, end: int) -> None:
        room = self._cap - len(self._buf)
        if room > 0:
            self._buf += data[pos : min(end, pos + room)]

    def end_frame(self) -> None:
        self._errors.append(bytes(self._buf).decode("utf-8", "replace").rstrip("\r\n"))
        self._buf.clear()

    def finish(self) -> None:
        if self._buf:
            self.end_frame()


class DockerStreamDecoder:
    """Decode the body of ``GET /containers/{id}/logs?...&timestamps=1``.

    ``tty`` must match the container's ``Config.Tty`` (the engine multiplexes
    only non-TTY containers: moby ``WriteLogStream(..., mux=!tty)``).

    Feed every chunk of the body to :meth:`receive_data`, in order, split
    anywhere; ``receive_data(b"")`` is EOF and flushes a trailing line that
    has no ``\\n`` (one per stream). Take the complete lines with
    :meth:`lines`, in the order they completed; stdout and stderr are kept
    apart, each in file order. Lines the engine split into 16 KiB pieces are
    joined again. The engine's own in-band errors (Systemerr frames; in TTY
    mode a line ``Error grabbing logs: ...`` without timestamp) are not log
    lines: they come out of :meth:`daemon_errors`, and the stream goes on, as
    it does in the engine.

    ``max_line_bytes`` caps one line (after joining); longer lines keep their
    first bytes and end in ``" …[truncated N bytes]"``. ``tty_piece_bytes``
    is the log driver's piece size, used only to find the seams of a long
    line in a TTY body (json-file and local: 16 KiB, moby ``defaultBufSize``).

    Malformed bodies raise :class:`DockerStreamError`, never anything else.
    """

    __slots__ = (
        "_assemblers",
        "_daemon_errors",
        "_eof",
        "_error",
        "_header",
        "_lines",
        "_max",
        "_remaining",
        "_syserr",
        "_target",
        "_tty",
    )

    def __init__(
        self, *, tty: bool, max_line_bytes: int = 1_048_576, tty_piece_bytes: int = 16_384
    ) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be at least 1")
        if tty_piece_bytes < 1:
            raise ValueError("tty_piece_bytes must be at least 1")
        self._tty = tty
        self._max = max_line_bytes
        self._lines: list[DockerLine] = []
        self._daemon_errors: list[str] = []
        piece = tty_piece_bytes if tty else 0
        stdout = _Assembler("stdout", self._lines, self._daemon_errors, max_line_bytes, piece)
        stderr = _Assembler("stderr", self._lines, self._daemon_errors, max_line_bytes, piece)
        self._syserr = _SystemErrSink(self._daemon_errors, min(_DAEMON_ERROR_CAP, max_line_bytes))
        # Indexed by the header's stream type; stdin goes to stdout as in
        # moby's stdcopy.StdCopy.
        self._assemblers: tuple[_Assembler, _Assembler, _Assembler] = (stdout, stdout, stderr)
        self._target: _Assembler | _SystemErrSink = stdout
        self._header = b""  # a header split across chunks
        self._remaining = 0  # payload bytes left in the current frame
        self._eof = False
        self._error: DockerStreamError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for incomplete lines and headers (bounded, see the module doc)."""
        stdout, _, stderr = self._assemblers
        return len(self._header) + stdout.buffered + stderr.buffered + self._syserr.buffered

    def receive_data(self, data: bytes) -> None:
        """Feed the next chunk of the body; ``b""`` means EOF.

        Raises :class:`DockerStreamError` when the body is malformed, and
        again on every later call.
        """
        if self._error is not None:
            raise DockerStreamError(f"the log stream already failed: {self._error}")
        if self._eof:
            if data:
                self._error = DockerStreamError("data received after EOF")
                raise self._error
            return
        if not data:
            self._finish()
            return
        data = bytes(data)
        try:
            if self._tty:
                self._assemblers[_STDOUT].feed(data, 0, len(data))
            else:
                self._feed_frames(data)
        except DockerStreamError as exc:
            self._error = exc
            raise

    def lines(self) -> list[DockerLine]:
        """The lines completed so far, oldest first; clears them."""
        out = self._lines[:]
        self._lines.clear()
        return out

    def daemon_errors(self) -> list[str]:
        """The engine's in-band error messages received so far; clears them."""
        out = self._daemon_errors[:]
        self._daemon_errors.clear()
        return out

    def _feed_frames(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        assemblers = self._assemblers
        lines = self._lines
        limit = self._max
        while pos < end:
            remaining = self._remaining
            if not remaining and not self._header and end - pos >= 8:
                # Fast path: a whole frame holding one whole record, one line
                # (the copier writes each line as one record): what the state
                # machine below would do, without walking it.
                word, length = _HEADER.unpack_from(data, pos)
                start = pos + 8
                stop = start + length
                if (
                    word < 3 << 24  # stdin, stdout or stderr, zero padding
                    and length
                    and stop <= end
                    and data[stop - 1] == 10
                    and length <= limit
                ):
                    target = assemblers[word >> 24]
                    m = _TS_SP_RE.match(data, start, stop)
                    if m is not None and target._state == _START and not target._head:
                        at = m.end()
                        try:
                            ns = match_ns(m) if data.find(b"\n", at, stop - 1) < 0 else -1
                        except ValueError:
                            ns = -1
                        if ns >= 0:
                            text_end = (
                                stop - 2 if data[stop - 2] == 13 and stop - 2 >= at else stop - 1
                            )
                            lines.append(
                                DockerLine(
                                    stream=target._stream,
                                    timestamp=data[start : at - 1].decode("ascii"),
                                    timestamp_ns=ns,
                                    text=data[at:text_end].decode("utf-8", "replace"),
                                )
                            )
                            pos = stop
                            continue
            if remaining:
                take = remaining if remaining < end - pos else end - pos
                self._target.feed(data, pos, pos + take)
                pos += take
                self._remaining = remaining - take
                if remaining == take:
                    self._target.end_frame()
                continue
            if self._header or end - pos < 8:
                need = 8 - len(self._header)
                self._header += data[pos : pos + need]
                pos += min(need, end - pos)
                if len(self._header) < 8:
                    return
                word, length = _HEADER.unpack(self._header)
                self._header = b""
            else:
                word, length = _HEADER.unpack_from(data, pos)
                pos += 8
            self._start_frame(word, length)

    def _start_frame(self, word: int, length: int) -> None:
        # pkg/stdcopy: header := [8]byte{STREAM_TYPE, 0, 0, 0, SIZE1, SIZE2, SIZE3, SIZE4}
        kind = word >> 24
        if word & 0xFFFFFF or kind > _SYSTEMERR:
            hint = ""
            if kind in b"0123456789":
                hint = " (a TTY body? decode it with tty=True)"
            raise DockerStreamError(
                f"malformed stream header {word.to_bytes(4, 'big').hex()}: stream type "
                f"{kind} with padding {word & 0xFFFFFF:#x}; expected type 0-3 and zero "
                f"padding{hint}"
            )
        if length == 0:
            return  # an empty Write carries no record
        self._target = self._syserr if kind == _SYSTEMERR else self._assemblers[kind]
        self._remaining = length

    def _finish(self) -> None:
        self._eof = True
        # A body that ends inside a frame: what arrived is flushed below, a
        # partial timestamp is dropped (see _Assembler.finish).
        self._remaining = 0
        self._header = b""  # a partial header carries nothing
        stdout, _, stderr = self._assemblers
        stdout.finish()
        stderr.finish()
        self._syserr.finish()

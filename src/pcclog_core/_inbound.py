"""Client-to-server frames: what the ``Connection`` reads before wsproto.

* ``SizeGuard``, hooked into wsproto as an extension, catches a message as
  soon as its frames' announced lengths pass ``MAX_MESSAGE_SIZE``, before a
  payload byte is buffered (RFC 6455 §10.4: "implementations SHOULD impose a
  limit"): for a producer (``lenient``) the message is skipped as it streams
  past (wsproto hands payloads on in pieces, nothing is kept) and answered
  with ``MESSAGE_TOO_LARGE``, so its later messages (its exit status above
  all) still arrive (SPEC §6); anyone else is closed with 1009.
* ``next_simple_frame`` is the producers' fast path: a complete, final,
  masked text frame of up to 64 KiB with no reserved bit (the shape of
  nearly every client message), or a short masked pong, unmasked and
  decoded here (§5.2, §5.3). Anything else, or a frame not wholly received,
  is left to wsproto, which owns every check and error; the differential
  test (tests/test_inbound.py) feeds both the same frames.
"""

from __future__ import annotations

from wsproto.connection import Connection as _WSConnection
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

__all__ = ["SizeGuard", "next_simple_frame", "unmask", "wsproto_idle"]


class SizeGuard(Extension):
    """Refuses a message as soon as its frames' announced lengths pass the
    limit: wsproto hands each frame header here before reading a payload
    byte (RFC 6455 §10.4: "implementations SHOULD impose a limit")."""

    name = "pcclog-size-guard"

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Lengths of the current message's *completed* frames: wsproto calls
        # ``frame_inbound_header`` again for the same frame each time it
        # retries a header that arrived in pieces (the mask key trickling
        # in), so a frame is added to the total only once it is complete.
        self.total = 0
        self.exceeded = False
        # Skip (not close) an oversized message: the connection's producer.
        self.lenient = False
        self.skipping = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if not opcode.iscontrol():
            if opcode is not Opcode.CONTINUATION:
                self.total = 0
                self.skipping = False
            if self.total + payload_length > self.limit:
                if self.lenient:
                    self.skipping = True
                else:
                    self.exceeded = True
                    return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        header = proto.header if isinstance(proto, FrameDecoder) else None
        if header is not None and not header.opcode.iscontrol():
            self.total += header.payload_len
        return None


def next_simple_frame(data: bytes, pos: int, limit: int) -> tuple[bool, str | bytes, int] | None:
    """The frame at ``pos`` if it takes the fast path: ``(True, text, end)``
    for a text message, ``(False, payload, end)`` for a pong; ``None`` for
    any other shape (wsproto's to handle) or a frame not wholly in ``data``."""
    end_of_data = len(data)
    if pos + 6 > end_of_data:
        return None
    first = data[pos]
    second = data[pos + 1]
    if first == 0x8A and second & 0x80 and (second & 0x7F) < 126:
        end = pos + 6 + (second & 0x7F)
        if end > end_of_data:
            return None
        return False, unmask(data[pos + 2 : pos + 6], data[pos + 6 : end]), end
    if first != 0x81 or not second & 0x80:  # FIN, no RSV, text; masked (else 1002)
        return None
    length = second & 0x7F
    if length < 126:
        start = pos + 6
    elif length == 126:
        if pos + 8 > end_of_data:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 126:  # not minimal: wsproto's error
            return None
        start = pos + 8
    else:
        return None
    end = start + length
    if length > limit or end > end_of_data:
        return None
    try:
        text = unmask(data[start - 4 : start], data[start:end]).decode("utf-8")
    except UnicodeDecodeError:  # wsproto closes with 1007
        return None
    return True, text, end


def unmask(mask: bytes, payload: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` (RFC 6455 §5.3), as one big
    integer operation instead of a loop over bytes."""
    length = len(payload)
    key = int.from_bytes((mask * ((length >> 2) + 1))[:length], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")


def wsproto_idle(ws: _WSConnection) -> bool:
    """wsproto holds no partial frame and no fragmented message, so the next
    bytes start a new message and may take the fast path. Reads wsproto
    internals (pinned to wsproto < 2 in pyproject); any surprise means
    "not idle", which only costs speed."""
    try:
        proto = ws._proto
        decoder = proto._frame_decoder
        return (
            decoder.header is None
            and len(decoder.buffer) == 0
            and proto._message_decoder.opcode is None
        )
    except AttributeError:
        return False

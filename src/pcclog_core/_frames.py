"""Server-to-client WebSocket frame encoding for the hot path.

A server frame is never masked (RFC 6455 §5.1) and pcclog negotiates no
extension, so a text frame is a 2-, 4- or 10-byte header followed by the
payload, byte for byte. Fan-out encodes each entry once with
``text_frame`` and queues the very same ``bytes`` object for every viewer;
wsproto's own ``send`` would re-frame and copy per viewer.
"""

from __future__ import annotations

import struct

__all__ = ["frame_header_length", "text_frame"]

_FIN_TEXT = 0x81
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
# Two-byte headers for every short length, built once.
_SHORT_HEADERS = tuple(bytes((_FIN_TEXT, n)) for n in range(126))


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return _SHORT_HEADERS[n] + payload
    if n < 65536:
        return _HEAD_16.pack(_FIN_TEXT, 126, n) + payload
    return _HEAD_64.pack(_FIN_TEXT, 127, n) + payload


def frame_header_length(frame: bytes) -> int:
    """Length of the header of an unmasked frame made by ``text_frame``."""
    short = frame[1] & 0x7F
    if short < 126:
        return 2
    return 4 if short == 126 else 10

"""The fast frame path against wsproto (``pcclog_core._inbound``).

The same random client frames are fed to a ``Connection`` twice: once as
it runs (complete masked text frames and pongs decoded by
``next_simple_frame``), once with the fast path turned off so wsproto
decodes every frame. What the client is handed (each message's text, in
order), what is sent back and how the connection ends must be the same,
whatever the frames and however the bytes are split.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pcclog_core._connection as connection_module
from pcclog_core import Authenticator, Client, Connection, Hub, Limits
from pcclog_core._inbound import next_simple_frame, unmask

T0 = 1000.0
WALL = 1_700_000_000.0
HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = b"\x11\x22\x33\x44",
    long_length: bool = False,
) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if mask is not None else 0
    if n < 126 and not long_length:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask is None:
        return head + payload
    return head + mask + unmask(mask, payload)


_text = st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
_payload = st.one_of(_text, st.binary(max_size=200))


@st.composite
def frames(draw: Any) -> bytes:
    kind = draw(
        st.sampled_from(
            ["text", "text", "text", "long", "ping", "pong", "binary", "fragments", "odd", "bytes"]
        )
    )
    mask = draw(st.binary(min_size=4, max_size=4))
    if kind == "text":
        return frame(0x1, draw(_text), mask=mask)
    if kind == "long":  # a 16-bit length, minimal or not
        return frame(0x1, draw(_text), mask=mask, long_length=True)
    if kind == "ping":
        return frame(0x9, draw(st.binary(max_size=125)), mask=mask)
    if kind == "pong":
        return frame(0xA, draw(st.binary(max_size=125)), mask=mask)
    if kind == "binary":
        return frame(0x2, draw(st.binary(max_size=100)), mask=mask)
    if kind == "fragments":
        text = draw(_text)
        cut = draw(st.integers(0, len(text)))
        return frame(0x1, text[:cut], fin=False, mask=mask) + frame(0x0, text[cut:], mask=mask)
    if kind == "odd":  # shapes the fast path must leave to wsproto
        return draw(
            st.sampled_from(
                [
                    frame(0x1, b"unmasked", mask=None),
                    frame(0x1, b"rsv", rsv=4, mask=mask),
                    frame(0x1, b"\xff\xfe invalid utf-8", mask=mask),
                    frame(0x3, b"reserved opcode", mask=mask),
                    frame(0x8, struct.pack("!H", 1000) + b"bye", mask=mask),
                    frame(0x1, b"x" * 2000, mask=mask),  # past max_message_size
                ]
            )
        )
    return draw(st.binary(max_size=12))


def _drive(data: bytes, chunk: int, *, fast: bool) -> Any:
    received: list[str] = []
    original = Client.receive_message

    def record(self: Client, text: str | bytes, *, now: float, wall: float) -> None:
        received.append(text if isinstance(text, str) else text.decode())
        original(self, text, now=now, wall=wall)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Client, "receive_message", record)
        if not fast:
            patch.setattr(connection_module, "next_simple_frame", lambda *args: None)
        hub = Hub(
            Limits(max_message_size=1000, rate_burst=10_000, abuse_limit=10_000),
            Authenticator(disabled=True),
        )
        conn = Connection(hub, now=T0)
        conn.receive_data(HANDSHAKE, now=T0, wall=WALL)
        out = bytearray(conn.data_to_send())
        for i in range(0, len(data), chunk):
            conn.receive_data(data[i : i + chunk], now=T0, wall=WALL)
            sent = conn.data_to_send()
            conn.bytes_sent(len(sent))
            out += sent
        return received, bytes(out), conn.state, conn.close_code


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(frames(), max_size=8).map(b"".join),
    chunk=st.sampled_from([1, 3, 7, 64, 100_000]),
)
def test_fast_path_and_wsproto_agree(stream: bytes, chunk: int) -> None:
    fast = _drive(stream, chunk, fast=True)
    slow = _drive(stream, chunk, fast=False)
    assert fast == slow


def test_the_fast_path_really_takes_the_common_frames() -> None:
    """The differential test is only worth something if the fast path is
    used: a masked text frame and a pong are decoded by it, the rest not."""
    text = frame(0x1, "héllo".encode(), mask=os.urandom(4))
    pong = frame(0xA, b"7", mask=os.urandom(4))
    assert next_simple_frame(text + pong, 0, 1000) == (True, "héllo", len(text))
    assert next_simple_frame(text + pong, len(text), 1000) == (False, b"7", len(text) + len(pong))
    for other in (
        frame(0x1, b"x", mask=None),
        frame(0x1, b"x", rsv=4),
        frame(0x1, b"x", fin=False),
        frame(0x2, b"x"),
        frame(0x9, b"x"),
        frame(0x1, b"\xff"),
        frame(0x1, b"x" * 10, long_length=True),  # a non-minimal length
        frame(0x1, b"x" * 2000),  # past the limit
        text[:-1],  # not wholly received
    ):
        assert next_simple_frame(other, 0, 1000) is None

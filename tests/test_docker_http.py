"""The engine's HTTP/1.1 responses decoded by the core (pcclog_core._docker_http).

Table-driven heads and bodies, every split of valid chunked bodies (RFC 9112
§7.1) decoding the same, and garbage fed whole and byte by byte: the only
error out is ``EngineHTTPError``.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcclog_core import PcclogError
from pcclog_core._docker_http import ChunkedDecoder, EngineHTTPError, Response


def chunked(pieces: list[bytes], *, ext: bool = False, lf_only: bool = False) -> bytes:
    eol = b"\n" if lf_only else b"\r\n"
    out = b""
    for piece in pieces:
        out += b"%x" % len(piece) + (b";name=value" if ext else b"") + eol + piece + eol
    return out + b"0" + eol + b"Trailer: t" + eol + eol


def feed(decoder: ChunkedDecoder, body: bytes, cuts: list[int]) -> bytes:
    out = b""
    last = 0
    for cut in [*sorted(set(cuts)), len(body)]:
        out += decoder.receive_data(body[last:cut])
        last = cut
    return out


@settings(max_examples=400)
@given(
    pieces=st.lists(st.binary(min_size=1, max_size=40), max_size=8),
    ext=st.booleans(),
    lf_only=st.booleans(),
    data=st.data(),
)
def test_any_split_of_a_valid_body_decodes_the_same(
    pieces: list[bytes], ext: bool, lf_only: bool, data: st.DataObject
) -> None:
    body = chunked(pieces, ext=ext, lf_only=lf_only)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=10))
    decoder = ChunkedDecoder()
    assert feed(decoder, body + b"NEXT RESPONSE", cuts) == b"".join(pieces)
    assert decoder.done


def test_byte_by_byte_and_every_two_way_split() -> None:
    pieces = [b"x" * 0x2A, b"abc", b"\r\n0\r\n"]
    body = chunked(pieces)
    expected = b"".join(pieces)
    one = ChunkedDecoder()
    assert b"".join(one.receive_data(body[i : i + 1]) for i in range(len(body))) == expected
    for cut in range(len(body) + 1):
        two = ChunkedDecoder()
        assert two.receive_data(body[:cut]) + two.receive_data(body[cut:]) == expected
        assert two.done


BAD = {
    "not hex": b"zz\r\n",
    "negative": b"-5\r\nhello\r\n",
    "python int syntax": b"0x5\r\nhello\r\n",
    "underscore": b"1_0\r\n",
    "empty size": b"\r\n",
    "no CRLF after data": b"3\r\nabcX\r\n",
    "size too long": b"1" * 17 + b"\r\n",
    "control line too long": b"5;" + b"e" * 5000,
}


@pytest.mark.parametrize("body", BAD.values(), ids=list(BAD))
@pytest.mark.parametrize("bytewise", [False, True])
def test_garbage_raises_a_typed_error(body: bytes, bytewise: bool) -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(EngineHTTPError) as info:
        if bytewise:
            for i in range(len(body)):
                decoder.receive_data(body[i : i + 1])
        else:
            decoder.receive_data(body)
    assert isinstance(info.value, PcclogError)
    with pytest.raises(EngineHTTPError):
        decoder.receive_data(b"1\r\nx\r\n")  # it stays failed


@settings(max_examples=500)
@given(body=st.binary(max_size=200), bytewise=st.booleans())
def test_fuzz_only_engine_http_error(body: bytes, bytewise: bool) -> None:
    decoder = ChunkedDecoder()
    try:
        if bytewise:
            for i in range(len(body)):
                decoder.receive_data(body[i : i + 1])
        else:
            decoder.receive_data(body)
    except EngineHTTPError:
        pass


# --- the whole response ------------------------------------------------------------


def respond(head: bytes, body: bytes, *, step: int | None = None) -> tuple[Response, bytes]:
    response = Response("/v1.41/containers/x/logs?follow=1", host="localhost")
    wire = head + body
    size = step or max(1, len(wire))
    out = b""
    for i in range(0, len(wire), size):
        out += response.receive_data(wire[i : i + size])
    return response, out


def test_the_request_is_http_1_1_with_host() -> None:
    response = Response("/v1.41/events?filters=%7B%7D", host="localhost")
    assert response.request == (
        b"GET /v1.41/events?filters=%7B%7D HTTP/1.1\r\nHost: localhost\r\n"
        b"User-Agent: pcclog\r\n\r\n"
    )


@pytest.mark.parametrize("step", [None, 1, 7])
def test_chunked_response(step: int | None) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n"
    response, body = respond(head, chunked([b"one", b"two"]), step=step)
    assert response.head is not None and response.head.status == 200
    assert body == b"onetwo"
    assert response.complete and not response.closed


@pytest.mark.parametrize("step", [None, 1])
def test_content_length_and_close_delimited(step: int | None) -> None:
    response, body = respond(
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\n", b"nopeEXTRA", step=step
    )
    assert response.head is not None and response.head.status == 404
    assert body == b"nope"  # what follows is not this response's
    assert response.complete
    response, body = respond(b"HTTP/1.0 200 OK\r\n\r\n", b"until close", step=step)
    assert body == b"until close" and not response.complete
    response.receive_data(b"")
    assert response.complete and response.closed


def test_a_chunked_body_cut_by_eof_is_not_complete() -> None:
    response, _ = respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nab")
    response.receive_data(b"")
    assert response.closed and not response.complete


def test_informational_responses_are_skipped_and_204_has_no_body() -> None:
    response, body = respond(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b"")
    assert response.head is not None and response.head.status == 204
    assert body == b"" and response.complete


@pytest.mark.parametrize(
    "wire",
    [b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n"],
)
def test_a_malformed_head_is_a_typed_error(wire: bytes) -> None:
    response = Response("/", host="localhost")
    with pytest.raises(EngineHTTPError):
        response.receive_data(wire)
    with pytest.raises(EngineHTTPError):
        response.receive_data(b"more")


def test_eof_before_the_head_is_a_typed_error() -> None:
    response = Response("/", host="localhost")
    response.receive_data(b"HTTP/1.1 200")
    with pytest.raises(EngineHTTPError):
        response.receive_data(b"")


@settings(max_examples=300)
@given(wire=st.binary(max_size=200), bytewise=st.booleans())
def test_fuzz_response_only_engine_http_error(wire: bytes, bytewise: bool) -> None:
    response = Response("/", host="localhost")
    pieces = [wire[i : i + 1] for i in range(len(wire))] if bytewise else [wire]
    try:
        for piece in [*pieces, b""]:
            if piece or not response.closed:
                response.receive_data(piece)
    except EngineHTTPError:
        pass

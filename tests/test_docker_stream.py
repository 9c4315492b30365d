"""The Docker log stream decoder, its lines' classification, resume, and timestamps.

The encoders here are written from the Engine API's description (moby
``pkg/stdcopy`` frames, ``WriteLogStream`` timestamps, the copier's 16 KiB
partial records), independently of the decoder, and timestamps are formatted
with ``datetime`` so that the decoder's own arithmetic is checked, not reused.
"""

from __future__ import annotations

import itertools
import math
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcclog_core._docker_lines import ClassifiedLine, LineClassifier, classify_line
from pcclog_core._docker_resume import ResumeFilter, ResumePoint, StreamMark
from pcclog_core._docker_stream import DockerLine, DockerStreamDecoder, DockerStreamError
from pcclog_core._timefmt import format_ns as iso_millis
from pcclog_core._timefmt import format_wall, normalize_timestamp, parse_rfc3339_ns

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NS = 1_000_000_000
STDIN, STDOUT, STDERR, SYSTEMERR = 0, 1, 2, 3
KIND = {"stdout": STDOUT, "stderr": STDERR}

# ---------------------------------------------------------------------------
# Encoders (the engine's side)
# ---------------------------------------------------------------------------


def ymdhms(dt: datetime) -> str:
    # Not %Y: glibc does not pad years before 1000 to four digits.
    return f"{dt.year:04d}-{dt:%m-%dT%H:%M:%S}"


def stamp(ns: int) -> str:
    """RFC3339NanoFixed, as moby's WriteLogStream formats msg.Timestamp."""
    seconds, nanos = divmod(ns, NS)
    return f"{ymdhms(EPOCH + timedelta(seconds=seconds))}.{nanos:09d}Z"


def frame(kind: int, payload: bytes) -> bytes:
    """stdcopy: [STREAM_TYPE, 0, 0, 0, SIZE1, SIZE2, SIZE3, SIZE4] + payload."""
    return struct.pack(">BxxxI", kind, len(payload)) + payload


def rec(ts: str, text: bytes | str, end: bytes = b"\n") -> bytes:
    if isinstance(text, str):
        text = text.encode()
    return ts.encode() + b" " + text + end


def decode(
    body: bytes,
    *,
    tty: bool,
    step: int | None = None,
    eof: bool = True,
    **kwargs: int,
) -> tuple[list[DockerLine], list[str]]:
    """Feed ``body`` whole (step None) or in chunks of ``step`` bytes."""
    decoder = DockerStreamDecoder(tty=tty, **kwargs)
    out: list[DockerLine] = []
    size = step or max(len(body), 1)
    for i in range(0, len(body), size):
        decoder.receive_data(body[i : i + size])
        out += decoder.lines()
    if eof:
        decoder.receive_data(b"")
        out += decoder.lines()
    return out, decoder.daemon_errors()


T1 = "2024-01-26T13:45:30.123456789Z"
T2 = "2024-01-26T13:45:30.223456789Z"
T3 = "2024-01-26T13:45:31.000000001Z"
N1, N2, N3 = 1706276730123456789, 1706276730223456789, 1706276731000000001
NS_OF = {T1: N1, T2: N2, T3: N3}
PIECE = 16 * 1024  # moby daemon/logger/copier.go defaultBufSize


def test_encoder_matches_known_values() -> None:
    assert stamp(N1) == T1
    assert frame(STDOUT, b"ab") == b"\x01\x00\x00\x00\x00\x00\x00\x02ab"


# ---------------------------------------------------------------------------
# Table-driven wire cases
# ---------------------------------------------------------------------------


@dataclass
class Case:
    body: bytes
    expect: list[tuple[str, str, str]]  # (stream, timestamp, text), not truncated
    tty: bool = False
    kwargs: dict[str, int] = field(default_factory=dict)
    daemon_errors: list[str] = field(default_factory=list)
    truncated: list[bool] | None = None


CASES = {
    "one stdout line": Case(frame(STDOUT, rec(T1, "hello")), [("stdout", T1, "hello")]),
    "stdout and stderr interleaved": Case(
        frame(STDOUT, rec(T1, "a")) + frame(STDERR, rec(T2, "b")) + frame(STDOUT, rec(T3, "c")),
        [("stdout", T1, "a"), ("stderr", T2, "b"), ("stdout", T3, "c")],
    ),
    "several lines in one frame": Case(
        frame(STDERR, rec(T1, "a") + rec(T2, "b") + rec(T3, "c")),
        [("stderr", T1, "a"), ("stderr", T2, "b"), ("stderr", T3, "c")],
    ),
    "record split across frames without a second timestamp": Case(
        frame(STDOUT, rec(T1, "hel", b"")) + frame(STDOUT, b"lo wor") + frame(STDOUT, b"ld\n"),
        [("stdout", T1, "hello world")],
    ),
    "timestamp split across frames": Case(
        frame(STDOUT, T1[:7].encode()) + frame(STDOUT, rec(T1[7:], "x")),
        [("stdout", T1, "x")],
    ),
    "16 KiB pieces joined, continuation timestamps dropped": Case(
        frame(STDOUT, rec(T1, "a" * PIECE, b""))
        + frame(STDOUT, rec(T2, "b" * PIECE, b""))
        + frame(STDOUT, rec(T3, "c")),
        [("stdout", T1, "a" * PIECE + "b" * PIECE + "c")],
    ),
    "moby 18.06+: every piece carries the first piece's timestamp": Case(
        frame(STDERR, rec(T1, "a" * PIECE, b"")) + frame(STDERR, rec(T1, "tail")),
        [("stderr", T1, "a" * PIECE + "tail")],
    ),
    "line of exactly 16 KiB: the newline comes as an empty last piece": Case(
        frame(STDOUT, rec(T1, "a" * PIECE, b"")) + frame(STDOUT, rec(T1, "")),
        [("stdout", T1, "a" * PIECE)],
    ),
    "pieces of two streams interleaved stay apart": Case(
        frame(STDOUT, rec(T1, "out1-", b""))
        + frame(STDERR, rec(T1, "err1-", b""))
        + frame(STDERR, rec(T2, "err2"))
        + frame(STDOUT, rec(T2, "out2")),
        [("stderr", T1, "err1-err2"), ("stdout", T1, "out1-out2")],
    ),
    "CRLF stripped, inner CR kept": Case(
        frame(STDOUT, rec(T1, "a\rb\r\n", b"")), [("stdout", T1, "a\rb")]
    ),
    "only one CR stripped": Case(frame(STDOUT, rec(T1, "x\r\r")), [("stdout", T1, "x\r")]),
    "CR ends a piece, LF ends the next": Case(
        frame(STDOUT, rec(T1, "abc\r", b"")) + frame(STDOUT, rec(T2, "")),
        [("stdout", T1, "abc")],
    ),
    "empty line": Case(frame(STDOUT, rec(T1, "")), [("stdout", T1, "")]),
    "stdin frames go to stdout, as stdcopy.StdCopy does": Case(
        frame(STDIN, rec(T1, "in")), [("stdout", T1, "in")]
    ),
    "empty frames carry nothing": Case(
        frame(STDOUT, b"")
        + frame(STDOUT, rec(T1, "a", b""))
        + frame(STDERR, b"")
        # a zero-length frame does not end the record's piece
        + frame(STDOUT, b"")
        + frame(STDOUT, b"b\n"),
        [("stdout", T1, "ab")],
    ),
    "a space in the text after the timestamp is text": Case(
        frame(STDOUT, rec(T1, "  two  spaces ")), [("stdout", T1, "  two  spaces ")]
    ),
    "invalid UTF-8 is replaced": Case(
        frame(STDOUT, rec(T1, b"\xff\xfe ok")), [("stdout", T1, "\ufffd\ufffd ok")]
    ),
    "a character split between pieces survives": Case(
        frame(STDOUT, rec(T1, b"caf\xc3", b"")) + frame(STDOUT, rec(T2, b"\xa9")),
        [("stdout", T1, "café")],
    ),
    "EOF flushes a partial line of each stream": Case(
        frame(STDOUT, rec(T1, "out", b"")) + frame(STDERR, rec(T2, "err", b"")),
        [("stdout", T1, "out"), ("stderr", T2, "err")],
    ),
    "EOF inside a frame flushes what arrived": Case(
        struct.pack(">BxxxI", STDOUT, 1000) + rec(T1, "partial", b""),
        [("stdout", T1, "partial")],
    ),
    "EOF inside a header carries nothing": Case(
        frame(STDOUT, rec(T1, "a")) + b"\x01\x00\x00", [("stdout", T1, "a")]
    ),
    "EOF inside a continuation timestamp drops the fragment": Case(
        frame(STDOUT, rec(T1, "a", b"")) + struct.pack(">BxxxI", STDOUT, 40) + T2[:10].encode(),
        [("stdout", T1, "a")],
    ),
    "EOF inside a continuation's text keeps the text": Case(
        frame(STDOUT, rec(T1, "a", b"")) + frame(STDOUT, b"bc"),
        [("stdout", T1, "abc")],
    ),
    "a short frame of text before the next piece is text": Case(
        frame(STDOUT, rec(T1, "1", b""))
        + frame(STDOUT, b"2")
        + frame(STDOUT, rec(T2, "3", b""))
        + frame(STDOUT, b"45")
        + frame(STDOUT, b"\n"),
        [("stdout", T1, "12345")],
    ),
    "EOF inside a first timestamp drops the fragment": Case(
        frame(STDOUT, rec(T1, "a")) + frame(STDOUT, T2[:12].encode()),
        [("stdout", T1, "a")],
    ),
    "systemerr frame is the engine's in-band error, not a line": Case(
        frame(STDOUT, rec(T1, "a"))
        + frame(SYSTEMERR, b"Error grabbing logs: log message is too large\n")
        + frame(STDOUT, rec(T2, "b")),
        [("stdout", T1, "a"), ("stdout", T2, "b")],
        daemon_errors=["Error grabbing logs: log message is too large"],
    ),
    "other RFC 3339 forms": Case(
        frame(STDOUT, rec("2024-01-26T14:45:30.5+01:00", "offset"))
        + frame(STDOUT, rec("2024-01-26T13:45:30Z", "no fraction"))
        + frame(STDOUT, rec("2024-01-26t13:45:30.123z", "lower case")),
        [
            ("stdout", "2024-01-26T14:45:30.5+01:00", "offset"),
            ("stdout", "2024-01-26T13:45:30Z", "no fraction"),
            ("stdout", "2024-01-26t13:45:30.123z", "lower case"),
        ],
    ),
    # --- TTY: no header, everything is stdout -----------------------------
    "tty lines with CRLF": Case(
        rec(T1, "a\r") + rec(T2, "b\r") + rec(T3, ""),
        [("stdout", T1, "a"), ("stdout", T2, "b"), ("stdout", T3, "")],
        tty=True,
    ),
    "tty 16 KiB pieces joined": Case(
        rec(T1, "a" * PIECE, b"") + rec(T2, "b" * PIECE, b"") + rec(T3, "c\r"),
        [("stdout", T1, "a" * PIECE + "b" * PIECE + "c")],
        tty=True,
    ),
    "tty line of exactly one piece": Case(
        rec(T1, "a" * PIECE, b"") + rec(T1, "") + rec(T2, "next"),
        [("stdout", T1, "a" * PIECE), ("stdout", T2, "next")],
        tty=True,
    ),
    "tty small pieces": Case(
        rec(T1, "abcd", b"") + rec(T1, "efgh", b"") + rec(T1, "i") + rec(T2, "j"),
        [("stdout", T1, "abcdefghi"), ("stdout", T2, "j")],
        tty=True,
        kwargs={"tty_piece_bytes": 4},
    ),
    "tty piece boundary without a timestamp is plain text": Case(
        rec(T1, "abcdefghij"),
        [("stdout", T1, "abcdefghij")],
        tty=True,
        kwargs={"tty_piece_bytes": 4},
    ),
    "tty in-band engine error": Case(
        rec(T1, "a") + b"Error grabbing logs: boom\n" + rec(T2, "b"),
        [("stdout", T1, "a"), ("stdout", T2, "b")],
        tty=True,
        daemon_errors=["Error grabbing logs: boom"],
    ),
    "tty EOF flushes the partial line": Case(
        rec(T1, "a") + rec(T2, "no newline", b""),
        [("stdout", T1, "a"), ("stdout", T2, "no newline")],
        tty=True,
    ),
    # --- the cap -------------------------------------------------------------
    "line over the cap": Case(
        frame(STDOUT, rec(T1, "0123456789abcdef")) + frame(STDOUT, rec(T2, "short")),
        [("stdout", T1, "0123456789 …[truncated 6 bytes]"), ("stdout", T2, "short")],
        kwargs={"max_line_bytes": 10},
        truncated=[True, False],
    ),
    "line exactly at the cap": Case(
        frame(STDOUT, rec(T1, "0123456789\r")),
        [("stdout", T1, "0123456789")],
        kwargs={"max_line_bytes": 10},
        truncated=[False],
    ),
    "the CR of CRLF is not counted as cut": Case(
        frame(STDOUT, rec(T1, "0123456789ab\r")),
        [("stdout", T1, "0123456789 …[truncated 2 bytes]")],
        kwargs={"max_line_bytes": 10},
        truncated=[True],
    ),
    "cap over joined pieces, timestamps not counted": Case(
        frame(STDOUT, rec(T1, "aaaaaa", b""))
        + frame(STDOUT, rec(T2, "bbbbbb", b""))
        + frame(STDOUT, rec(T3, "cccccc")),
        [("stdout", T1, "aaaaaabbbb …[truncated 8 bytes]")],
        kwargs={"max_line_bytes": 10},
        truncated=[True],
    ),
    "cap never cuts a character in half": Case(
        frame(STDOUT, rec(T1, "012345678é!")),
        [("stdout", T1, "012345678 …[truncated 3 bytes]")],
        kwargs={"max_line_bytes": 10},
        truncated=[True],
    ),
    "cap on a tty line and on an EOF-flushed line": Case(
        rec(T1, "x" * 30) + rec(T2, "y" * 12, b""),
        [
            ("stdout", T1, "x" * 10 + " …[truncated 20 bytes]"),
            ("stdout", T2, "y" * 10 + " …[truncated 2 bytes]"),
        ],
        tty=True,
        kwargs={"max_line_bytes": 10},
        truncated=[True, True],
    ),
}


@pytest.mark.parametrize("step", [None, 1, 3, 8, 9, 4096], ids=lambda s: f"step={s}")
@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_wire_cases(case: Case, step: int | None) -> None:
    lines, daemon_errors = decode(case.body, tty=case.tty, step=step, **case.kwargs)
    got = [(line.stream, line.timestamp, line.text) for line in lines]
    assert got == case.expect
    for line in lines:
        if line.timestamp in NS_OF:
            assert line.timestamp_ns == NS_OF[line.timestamp]
        else:
            assert line.timestamp_ns == parse_rfc3339_ns(line.timestamp)
    assert [line.truncated for line in lines] == (case.truncated or [False] * len(lines))
    assert daemon_errors == case.daemon_errors


def test_other_timestamp_forms_are_exact() -> None:
    lines, _ = decode(CASES["other RFC 3339 forms"].body, tty=False)
    assert [line.timestamp_ns for line in lines] == [
        1706276730_500000000,
        1706276730_000000000,
        1706276730_123000000,
    ]


def test_lines_are_returned_once_and_in_completion_order() -> None:
    decoder = DockerStreamDecoder(tty=False)
    decoder.receive_data(frame(STDOUT, rec(T1, "partial", b"")))
    assert decoder.lines() == []
    decoder.receive_data(frame(STDERR, rec(T2, "err")))
    assert [line.text for line in decoder.lines()] == ["err"]
    assert decoder.lines() == []
    decoder.receive_data(frame(STDOUT, rec(T3, " done")))
    (line,) = decoder.lines()
    assert (line.text, line.timestamp) == ("partial done", T1)


# ---------------------------------------------------------------------------
# Malformed bodies
# ---------------------------------------------------------------------------

BAD_BODIES = {
    "stream type 4": (False, b"\x04\x00\x00\x00\x00\x00\x00\x01x", "type 4"),
    "stream type 255": (False, b"\xff\x00\x00\x00\x00\x00\x00\x00", "type 255"),
    "padding byte 1": (False, b"\x01\x01\x00\x00\x00\x00\x00\x01x", "padding"),
    "padding byte 3": (False, b"\x01\x00\x00\x07\x00\x00\x00\x01x", "padding"),
    "tty body decoded as multiplexed": (False, rec(T1, "hello"), "tty=True"),
    "record without timestamp": (False, frame(STDOUT, b"hello world\n"), "timestamps=1"),
    "record with a bad date": (False, frame(STDOUT, rec("2024-13-01T00:00:00Z", "x")), ""),
    "record with a 10-digit fraction": (
        False,
        frame(STDOUT, rec("2024-01-01T00:00:00.1234567891Z", "x")),
        "",
    ),
    "tty record without timestamp": (True, b"hello world\n", "timestamps=1"),
    "multiplexed body decoded as tty": (True, frame(STDOUT, rec(T1, "x")), "tty=False"),
    "good line, then a bad header": (False, frame(STDOUT, rec(T1, "ok")) + b"\x09" * 8, ""),
}


@pytest.mark.parametrize("step", [None, 1], ids=["whole", "bytewise"])
@pytest.mark.parametrize(("tty", "body", "hint"), BAD_BODIES.values(), ids=list(BAD_BODIES))
def test_malformed_bodies_raise_docker_stream_error(
    tty: bool, body: bytes, hint: str, step: int | None
) -> None:
    with pytest.raises(DockerStreamError, match=hint or None):
        decode(body, tty=tty, step=step)


def test_after_an_error_lines_stay_and_every_call_raises() -> None:
    decoder = DockerStreamDecoder(tty=False)
    with pytest.raises(DockerStreamError):
        decoder.receive_data(frame(STDOUT, rec(T1, "ok")) + b"\x09" * 8)
    assert [line.text for line in decoder.lines()] == ["ok"]
    with pytest.raises(DockerStreamError, match="already failed"):
        decoder.receive_data(frame(STDOUT, rec(T2, "more")))
    with pytest.raises(DockerStreamError):
        decoder.receive_data(b"")
    assert isinstance(DockerStreamError("x"), ValueError)


def test_data_after_eof_raises_and_repeated_eof_does_not() -> None:
    decoder = DockerStreamDecoder(tty=True)
    decoder.receive_data(b"")
    decoder.receive_data(b"")
    with pytest.raises(DockerStreamError, match="after EOF"):
        decoder.receive_data(rec(T1, "x"))


@pytest.mark.parametrize("kwargs", [{"max_line_bytes": 0}, {"tty_piece_bytes": 0}])
def test_limits_are_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        DockerStreamDecoder(tty=True, **kwargs)


def test_docker_line_validates_its_stream() -> None:
    with pytest.raises(ValueError):
        DockerLine(stream="stdin", timestamp=T1, timestamp_ns=N1, text="")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Round trip: anything the engine can send comes out as it went in
# ---------------------------------------------------------------------------

line_texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=40
)
STREAMS = st.sampled_from(["stdout", "stderr"])
BASE_NS = 1_600_000_000 * NS


def expected_text(text: str) -> str:
    return text[:-1] if text.endswith("\r") else text


def split_points(draw: st.DrawFn, size: int) -> list[int]:
    points = draw(st.lists(st.integers(0, size), max_size=6, unique=True))
    return sorted(points)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at ``points``, without empty parts (``b""`` would mean EOF)."""
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@st.composite
def multiplexed_logs(
    draw: st.DrawFn,
) -> tuple[bytes, list[tuple[str, str, str]]]:
    """Frames for a list of (stream, line); returns (body, expected lines in order)."""
    lines = draw(st.lists(st.tuples(STREAMS, line_texts), max_size=12))
    ns = BASE_NS + draw(st.integers(0, 10**18))
    per_stream: dict[str, list[tuple[list[bytes], tuple[str, str, str]]]] = {
        "stdout": [],
        "stderr": [],
    }
    for stream, text in lines:
        ns += draw(st.sampled_from([0, 0, 1, 999_999_999, 10**12]))
        first = stamp(ns)
        content = text.encode()
        # The engine's partial records: pieces of any size, each with its
        # own timestamp (the first piece's, or a later one on old engines).
        pieces = cut(content, split_points(draw, len(content))) or [b""]
        frames: list[bytes] = []
        for i, piece in enumerate(pieces):
            ts = first if i == 0 or draw(st.booleans()) else stamp(ns + i)
            record = rec(ts, piece, b"\n" if i == len(pieces) - 1 else b"")
            # Optionally frame one record in several frames (no new timestamp):
            # anywhere in a line's first record, after the timestamp in the
            # others (a continuation's timestamp comes in one Write, so in
            # one frame, which is what tells it from text).
            low = 0 if i == 0 else len(ts) + 1
            points = [p for p in split_points(draw, len(record)) if p >= low]
            frames += [frame(KIND[stream], part) for part in cut(record, points)]
        per_stream[stream].append((frames, (stream, first, expected_text(text))))
    # Interleave the two streams' frames, keeping each stream's order.
    body: list[bytes] = []
    expect: list[tuple[str, str, str]] = []
    queues = {s: [f for frames, _ in per_stream[s] for f in frames] for s in per_stream}
    ends: dict[str, list[int]] = {}
    for s, entries in per_stream.items():
        total, marks = 0, []
        for frames, _ in entries:
            total += len(frames)
            marks.append(total - 1)
        ends[s] = marks
    taken = {"stdout": 0, "stderr": 0}
    done = {"stdout": 0, "stderr": 0}
    while taken["stdout"] < len(queues["stdout"]) or taken["stderr"] < len(queues["stderr"]):
        choices = [s for s in ("stdout", "stderr") if taken[s] < len(queues[s])]
        s = draw(st.sampled_from(choices))
        body.append(queues[s][taken[s]])
        if done[s] < len(ends[s]) and ends[s][done[s]] == taken[s]:
            expect.append(per_stream[s][done[s]][1])
            done[s] += 1
        taken[s] += 1
    return b"".join(body), expect


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(logs=multiplexed_logs(), data=st.data())
def test_multiplexed_round_trip(
    logs: tuple[bytes, list[tuple[str, str, str]]], data: st.DataObject
) -> None:
    body, expect = logs
    points = data.draw(st.lists(st.integers(0, len(body)), max_size=20, unique=True))
    for chunks in (cut(body, sorted(points)), [body[i : i + 1] for i in range(len(body))]):
        decoder = DockerStreamDecoder(tty=False)
        got: list[DockerLine] = []
        for chunk in chunks:
            decoder.receive_data(chunk)
            got += decoder.lines()
        decoder.receive_data(b"")
        got += decoder.lines()
        assert [(line.stream, line.timestamp, line.text) for line in got] == expect
        assert all(line.timestamp_ns == parse_rfc3339_ns(line.timestamp) for line in got)
        assert not any(line.truncated for line in got)
        assert decoder.buffered_bytes == 0


@settings(max_examples=300)
@given(
    texts=st.lists(line_texts, max_size=10),
    piece=st.integers(1, 8),
    data=st.data(),
)
def test_tty_round_trip(texts: list[str], piece: int, data: st.DataObject) -> None:
    """TTY: pieces of exactly tty_piece_bytes, each with its own timestamp."""
    ns = BASE_NS
    body = b""
    for text in texts:
        ns += data.draw(st.sampled_from([0, 1, NS]))
        first = stamp(ns)
        content = text.encode()
        pieces = [content[i : i + piece] for i in range(0, len(content), piece)] or [b""]
        for i, chunk in enumerate(pieces[:-1]):
            body += rec(first if i == 0 else stamp(ns + i), chunk, b"")
        last = pieces[-1]
        if len(pieces) > 1 or len(last) < piece:
            body += rec(first if len(pieces) == 1 else stamp(ns + 7), last)
        elif data.draw(st.booleans()):
            # A full last piece: the engine logs the "\n" as an empty piece...
            body += rec(first, last, b"") + rec(first, b"")
        else:
            body += rec(first, last)  # ...or the newline follows directly.
    points = data.draw(st.lists(st.integers(0, len(body)), max_size=20, unique=True))
    for chunks in (cut(body, sorted(points)), [body[i : i + 1] for i in range(len(body))]):
        decoder = DockerStreamDecoder(tty=True, tty_piece_bytes=piece)
        got: list[DockerLine] = []
        for chunk in chunks:
            decoder.receive_data(chunk)
            got += decoder.lines()
        decoder.receive_data(b"")
        got += decoder.lines()
        assert [line.text for line in got] == [expected_text(t) for t in texts]
        assert {line.stream for line in got} <= {"stdout"}


# ---------------------------------------------------------------------------
# Fuzz: only DockerStreamError, and bounded memory
# ---------------------------------------------------------------------------

TS_WINDOW = 35  # longest RFC 3339 timestamp: 2024-01-26T13:45:30.123456789+01:00


def assert_bounded(decoder: DockerStreamDecoder, max_line: int) -> None:
    # The per-stream bound (max_line_bytes + one timestamp) is checked on the
    # assemblers; the total adds one 8-byte header and a capped daemon error.
    for assembler in decoder._assemblers:
        assert assembler.buffered <= max_line + TS_WINDOW
    assert decoder.buffered_bytes <= 2 * (max_line + TS_WINDOW) + 8 + max_line


def feed_fuzz(chunks: list[bytes], *, tty: bool, max_line: int) -> None:
    decoder = DockerStreamDecoder(tty=tty, max_line_bytes=max_line, tty_piece_bytes=7)
    try:
        for chunk in [*chunks, b""]:
            decoder.receive_data(chunk)
            assert_bounded(decoder, max_line)
            for line in decoder.lines():
                # Each kept byte decodes to at most one character (U+FFFD if invalid).
                assert len(line.text) <= max_line + len(" …[truncated  bytes]") + 20
    except DockerStreamError:
        pass
    decoder.lines()


@settings(max_examples=400)
@given(body=st.binary(max_size=300), tty=st.booleans(), max_line=st.integers(1, 40))
def test_fuzz_arbitrary_bytes(body: bytes, tty: bool, max_line: int) -> None:
    feed_fuzz([body], tty=tty, max_line=max_line)
    feed_fuzz([body[i : i + 1] for i in range(len(body))], tty=tty, max_line=max_line)


fuzz_records = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda ns, tail, nl: rec(stamp(ns), tail, b"\n" if nl else b""),
        st.integers(0, 4 * 10**18),
        st.binary(max_size=60),
        st.booleans(),
    ),
    st.sampled_from([b"Error grabbing logs: x\n", b"\n", b" ", T1.encode(), b"\r\n"]),
)


@settings(max_examples=400)
@given(
    frames=st.lists(st.tuples(st.integers(0, 3), fuzz_records), max_size=12),
    max_line=st.integers(1, 40),
    data=st.data(),
)
def test_fuzz_well_framed_garbage(
    frames: list[tuple[int, bytes]], max_line: int, data: st.DataObject
) -> None:
    body = b"".join(frame(kind, payload) for kind, payload in frames)
    points = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=10, unique=True)))
    feed_fuzz(cut(body, points), tty=False, max_line=max_line)
    tty_body = b"".join(payload for _, payload in frames)
    feed_fuzz(cut(tty_body, [p for p in points if p <= len(tty_body)]), tty=True, max_line=max_line)


def test_a_huge_line_is_capped_as_it_arrives() -> None:
    """Five MiB in 16 KiB pieces: the buffer never exceeds the cap + a timestamp."""
    max_line = 1024
    decoder = DockerStreamDecoder(tty=False, max_line_bytes=max_line)
    body = b"".join(
        frame(STDOUT, rec(T1, b"x" * PIECE, b"" if i < 319 else b"\n")) for i in range(320)
    )
    got: list[DockerLine] = []
    for i in range(0, len(body), 4000):
        decoder.receive_data(body[i : i + 4000])
        assert decoder.buffered_bytes <= max_line + TS_WINDOW + 8
        got += decoder.lines()
    (line,) = got
    assert line.truncated
    assert line.text == "x" * max_line + f" …[truncated {320 * PIECE - max_line} bytes]"


# ---------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------

GOOD_TIMESTAMPS = {
    "1970-01-01T00:00:00Z": 0,
    "1970-01-01T00:00:00.000000001Z": 1,
    "2024-01-26T13:45:30.123456789Z": 1706276730123456789,
    "2024-01-26T13:45:30.123Z": 1706276730123000000,
    "2024-01-26T13:45:30.Z": 1706276730000000000,
    "2024-01-26T14:45:30.1+01:00": 1706276730100000000,
    "2024-01-26T08:15:30-05:30": 1706276730000000000,
    "2024-01-26t13:45:30z": 1706276730000000000,
    "2024-02-29T00:00:00Z": 1709164800000000000,
    "2000-02-29T23:59:59.999999999Z": 951868799999999999,
    "1969-12-31T23:59:59.5Z": -500000000,
    "0000-01-01T00:00:00Z": -62167219200 * NS,
    "9999-12-31T23:59:59.999999999Z": 253402300799999999999,
    "2016-12-31T23:59:60Z": 1483228800 * NS,  # leap second = next minute's :00
}

BAD_TIMESTAMPS = [
    "",
    "2024-01-26",
    "2024-01-26T13:45:30",  # no zone
    "2024-01-26 13:45:30Z",
    "2024-01-26T13:45:30.1234567890Z",  # ten fraction digits
    "2023-02-29T00:00:00Z",
    "1900-02-29T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-00-01T00:00:00Z",
    "2024-04-31T00:00:00Z",
    "2024-01-26T24:00:00Z",
    "2024-01-26T13:60:00Z",
    "2024-01-26T13:45:61Z",
    "2024-01-26T13:45:30+24:00",
    "2024-01-26T13:45:30+01:60",
    "2024-01-26T13:45:30+0100",
    "\uff12\uff10\uff12\uff14-01-26T13:45:30Z",  # fullwidth digits: not ASCII
    "2024-01-26T13:45:30Z ",
]


@pytest.mark.parametrize(("text", "ns"), GOOD_TIMESTAMPS.items())
def test_parse_rfc3339_ns_known_values(text: str, ns: int) -> None:
    assert parse_rfc3339_ns(text) == ns


@pytest.mark.parametrize("text", BAD_TIMESTAMPS)
def test_parse_rfc3339_ns_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ns(text)


MIN_NS = (datetime(1, 1, 2, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1) * 1000
MAX_NS = (datetime(9999, 12, 30, tzinfo=UTC) - EPOCH) // timedelta(microseconds=1) * 1000


@given(
    ns=st.integers(MIN_NS, MAX_NS),
    digits=st.integers(0, 9),
    offset_minutes=st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_parse_rfc3339_ns_round_trips(ns: int, digits: int, offset_minutes: int) -> None:
    ns -= ns % 10 ** (9 - digits)  # what `digits` fraction digits can say
    seconds, nanos = divmod(ns, NS)
    local = EPOCH + timedelta(seconds=seconds, minutes=offset_minutes)
    sign = "+" if offset_minutes >= 0 else "-"
    hh, mm = divmod(abs(offset_minutes), 60)
    zone = "Z" if offset_minutes == 0 else f"{sign}{hh:02d}:{mm:02d}"
    fraction = f".{nanos:09d}"[: digits + 1] if digits else ""
    text = f"{ymdhms(local)}{fraction}{zone}"
    assert parse_rfc3339_ns(text) == ns


def test_iso_millis_known_values() -> None:
    assert iso_millis(1706276730123456789) == "2024-01-26T13:45:30.123Z"
    assert iso_millis(1706276730999999999) == "2024-01-26T13:45:30.999Z"  # never rounds up
    assert iso_millis(0) == "1970-01-01T00:00:00.000Z"
    assert iso_millis(-1) == "1969-12-31T23:59:59.999Z"
    with pytest.raises(ValueError):
        iso_millis(MAX_NS + 10**6 * NS)


@given(ns=st.integers(MIN_NS, MAX_NS))
def test_iso_millis_matches_datetime_and_round_trips(ns: int) -> None:
    seconds, nanos = divmod(ns, NS)
    dt = EPOCH + timedelta(seconds=seconds)
    assert iso_millis(ns) == f"{ymdhms(dt)}.{nanos // 1_000_000:03d}Z"
    assert parse_rfc3339_ns(iso_millis(ns)) == ns - ns % 1_000_000


# ---------------------------------------------------------------------------
# Levels and messages
# ---------------------------------------------------------------------------


def line_of(text: str, stream: str = "stdout") -> DockerLine:
    return DockerLine(stream=stream, timestamp=T1, timestamp_ns=N1, text=text)  # type: ignore[arg-type]


CLASSIFY_CASES = [
    # (stream, text, level, message, extra data fields)
    ("stdout", "plain text", "info", "plain text", {}),
    ("stderr", "plain text", "error", "plain text", {}),
    ("stdout", '{"level":30,"msg":"hi","n":1}', "info", "hi", {"level": 30, "n": 1, "msg": "hi"}),
    ("stdout", '{"level":10,"msg":"m"}', "trace", "m", None),
    ("stdout", '{"level":20,"msg":"m"}', "debug", "m", None),
    ("stderr", '{"level":30,"msg":"m"}', "info", "m", None),
    ("stdout", '{"level":40,"msg":"m"}', "warn", "m", None),
    ("stdout", '{"level":50,"msg":"m"}', "error", "m", None),
    ("stdout", '{"level":60,"msg":"m"}', "fatal", "m", None),
    ("stdout", '{"level":35,"msg":"m"}', "info", "m", None),  # a custom pino level
    ("stdout", '{"level":"30"}', "info", '{"level":"30"}', None),
    ("stdout", '{"level":"WARNING","message":"w"}', "warn", "w", None),
    ("stdout", '{"level":"err"}', "error", '{"level":"err"}', None),
    ("stdout", '{"level":"critical"}', "fatal", '{"level":"critical"}', None),
    ("stdout", '{"level":"Fatal"}', "fatal", '{"level":"Fatal"}', None),
    ("stderr", '{"level":"trace"}', "trace", '{"level":"trace"}', None),
    ("stderr", '{"level":"debug"}', "debug", '{"level":"debug"}', None),
    ("stderr", '{"level":"info"}', "info", '{"level":"info"}', None),
    ("stdout", '{"severity":"ERROR","message":"gcp"}', "error", "gcp", None),
    ("stdout", '{"level":"loud","msg":"m"}', "info", "m", None),
    ("stderr", '{"level":"loud","msg":"m"}', "error", "m", None),
    ("stderr", '{"level":true,"msg":"m"}', "error", "m", None),
    ("stdout", '{"msg":"first","message":"second"}', "info", "first", None),
    ("stdout", '{"msg":{"a":1}}', "info", '{"a":1}', None),
    ("stdout", '{"msg":null,"message":"m"}', "info", "m", None),
    ("stdout", "{}", "info", "{}", None),
    ("stdout", '  {"level":"warn","msg":"padded"}  ', "warn", "padded", None),
    ("stdout", "[1, 2]", "info", "[1, 2]", {}),
    ("stdout", '"just a string"', "info", '"just a string"', {}),
    ("stderr", "{not json}", "error", "{not json}", {}),
    ("stdout", '{"level":50', "info", '{"level":50', {}),
    ("stdout", "", "info", "", {}),
]


@pytest.mark.parametrize(("stream", "text", "level", "message", "extra"), CLASSIFY_CASES)
def test_classify_line(
    stream: str, text: str, level: str, message: str, extra: dict[str, object] | None
) -> None:
    got = classify_line(line_of(text, stream), container_id="c0ffee")
    assert isinstance(got, ClassifiedLine)
    assert (got.level, got.message) == (level, message)
    assert got.data["containerId"] == "c0ffee"
    assert got.data["stream"] == stream
    assert got.timestamp == "2024-01-26T13:45:30.123Z"
    if extra is not None:
        assert got.data == {**extra, "containerId": "c0ffee", "stream": stream}


def test_classify_line_configurable_defaults_and_our_fields_win() -> None:
    got = classify_line(line_of("x"), container_id="c", stdout_level="debug")
    assert got.level == "debug"
    got = classify_line(line_of("x", "stderr"), container_id="c", stderr_level="warn")
    assert got.level == "warn"
    got = classify_line(line_of('{"stream":"mine","containerId":"other"}'), container_id="c")
    assert got.data == {"stream": "stdout", "containerId": "c"}


def test_classify_line_survives_deep_json() -> None:
    text = '{"a":' * 100_000 + "1" + "}" * 100_000
    got = classify_line(line_of(text), container_id="c")
    assert (got.level, got.message) == ("info", text)


# ---------------------------------------------------------------------------
# Resume without duplicates
# ---------------------------------------------------------------------------


def since_ns(since: str) -> int:
    """What the engine makes of since=SECONDS.NANOS (timetypes.ParseTimestamps)."""
    seconds, _, nanos = since.partition(".")
    return int(seconds) * NS + int(nanos.ljust(9, "0"))


def test_resume_point_and_since_param() -> None:
    f = ResumeFilter()
    assert f.since_param() is None
    assert f.point == ResumePoint()
    for line in [line_of("a"), line_of("b"), line_of("c", "stderr")]:
        assert f.accept(line)
    assert f.point == ResumePoint(
        stdout=StreamMark(timestamp_ns=N1, count=2), stderr=StreamMark(timestamp_ns=N1, count=1)
    )
    assert f.since_param() == "1706276730.123456789"
    assert since_ns("1706276730.123456789") == N1
    # A stored point resumes a new filter the same way.
    g = ResumeFilter(f.point)
    g.start_attach()
    assert g.filter([line_of("a"), line_of("b"), line_of("c", "stderr"), line_of("d")]) == [
        line_of("d")
    ]
    with pytest.raises(ValueError):
        StreamMark(timestamp_ns=0, count=0)


def test_since_uses_the_older_stream_mark() -> None:
    f = ResumeFilter()
    f.accept(DockerLine(stream="stdout", timestamp=T2, timestamp_ns=N2, text="new"))
    f.accept(DockerLine(stream="stderr", timestamp=T1, timestamp_ns=N1, text="old"))
    assert f.since_param() == "1706276730.123456789"


def test_live_lines_are_never_dropped() -> None:
    """Outside a replay every line passes, even after a wall-clock step back."""
    f = ResumeFilter()
    assert f.accept(DockerLine(stream="stdout", timestamp=T2, timestamp_ns=N2, text="a"))
    assert f.accept(DockerLine(stream="stdout", timestamp=T1, timestamp_ns=N1, text="b"))
    assert f.point.stdout == StreamMark(timestamp_ns=N2, count=1)  # the mark never moves back


@st.composite
def ordered_records(draw: st.DrawFn) -> list[DockerLine]:
    """Lines in log-file order, timestamps non-decreasing, many repeated."""
    n = draw(st.integers(0, 40))
    ns = BASE_NS
    out = []
    for i in range(n):
        ns += draw(st.sampled_from([0, 0, 0, 1, NS]))
        out.append(
            DockerLine(stream=draw(STREAMS), timestamp=stamp(ns), timestamp_ns=ns, text=str(i))
        )
    return out


def replay(records: list[DockerLine], since: str | None, upto: int) -> list[DockerLine]:
    """The engine's answer to since= (inclusive), cut off after record ``upto``."""
    low = since_ns(since) if since is not None else -1
    return [r for r in records[:upto] if r.timestamp_ns >= low]


@settings(max_examples=300)
@given(records=ordered_records(), data=st.data())
def test_resume_has_no_duplicate_and_no_hole(
    records: list[DockerLine], data: st.DataObject
) -> None:
    """Several attaches, each cut at any point, each replaying from since onward."""
    breaks = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=4)))
    f = ResumeFilter()
    delivered: list[DockerLine] = []
    for upto in [*breaks, len(records)]:
        f.start_attach()
        delivered += f.filter(replay(records, f.since_param(), upto))
    assert delivered == records


@settings(max_examples=300)
@given(data=st.data())
def test_resume_per_stream_order_guarantee(data: st.DataObject) -> None:
    """Timestamps only ordered per stream (the two copiers are independent).

    No duplicate ever; no hole whenever every undelivered line is at or after
    ``since`` — exactly what ResumeFilter documents.
    """
    streams: dict[str, list[int]] = {}
    for stream in ("stdout", "stderr"):
        ns = BASE_NS + data.draw(st.integers(0, 3))
        stamps = []
        for _ in range(data.draw(st.integers(0, 15))):
            ns += data.draw(st.sampled_from([0, 0, 1, 2]))
            stamps.append(ns)
        streams[stream] = stamps
    order = data.draw(
        st.permutations(["stdout"] * len(streams["stdout"]) + ["stderr"] * len(streams["stderr"]))
    )
    taken = {"stdout": 0, "stderr": 0}
    records = []
    for i, stream in enumerate(order):
        ns = streams[stream][taken[stream]]
        taken[stream] += 1
        records.append(
            DockerLine(stream=stream, timestamp=stamp(ns), timestamp_ns=ns, text=str(i))  # type: ignore[arg-type]
        )
    upto = data.draw(st.integers(0, len(records)))
    f = ResumeFilter()
    first = f.filter(records[:upto])
    assert first == records[:upto]
    since = f.since_param()
    f.start_attach()
    second = f.filter(replay(records, since, len(records)))
    delivered = first + second
    assert len({line.text for line in delivered}) == len(delivered)  # no duplicate
    low = since_ns(since) if since is not None else -1
    if all(r.timestamp_ns >= low for r in records[upto:]):
        assert delivered == records  # no hole
    else:  # the documented cross-stream skew: a hole, still in order
        it = iter(records)
        assert all(any(line is r for r in it) for line in delivered)


def test_end_to_end_reattach_through_the_decoder() -> None:
    """Frames → decoder → filter, with the follow stream breaking twice."""
    records = []
    ns = BASE_NS
    for i in range(30):
        ns += [0, 0, 1, NS][i % 4]
        stream = "stderr" if i % 3 == 0 else "stdout"
        text = f"long-{i}-" * 5000 if i == 7 else f"line {i}"
        records.append((stream, ns, text))

    def engine(since: str | None, upto: int) -> bytes:
        low = since_ns(since) if since is not None else -1
        out = b""
        for stream, ts_ns, text in records[:upto]:
            if ts_ns < low:
                continue
            content = text.encode()
            pieces = [content[i : i + PIECE] for i in range(0, len(content), PIECE)]
            for j, piece in enumerate(pieces):
                end = b"\n" if j == len(pieces) - 1 else b""
                out += frame(KIND[stream], rec(stamp(ts_ns), piece, end))
        return out

    f = ResumeFilter()
    got: list[tuple[str, int, str]] = []
    for upto in (9, 20, 30):
        f.start_attach()
        decoder = DockerStreamDecoder(tty=False)
        decoder.receive_data(engine(f.since_param(), upto))
        decoder.receive_data(b"")
        got += [(line.stream, line.timestamp_ns, line.text) for line in f.filter(decoder.lines())]
    assert got == records


# ---------------------------------------------------------------------------
# The classifier of the hot path, and the one formatter
# ---------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    stream=st.sampled_from(["stdout", "stderr"]),
    text=st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "WARN disk almost full",
                "ERROR: boom",
                "[info] started",
                "Traceback (most recent call last):",
                '  {"level": "warn", "msg": "padded"}',
                '{"level":"debug","msg":"structured","n":1}',
                '{"severity":"ERROR","message":{"nested":true}}',
                '{"msg":"no level"}',
                "{not json}",
                "{}",
            ]
        ),
    ),
    ns=st.integers(0, 253402300799 * NS),
)
def test_line_classifier_is_classify_line(stream: str, text: str, ns: int) -> None:
    line = DockerLine(stream=stream, timestamp="t", timestamp_ns=ns, text=text)  # type: ignore[arg-type]
    entry = LineClassifier(container_id="abc", stderr_level="error").entry(line)
    c = classify_line(line, container_id="abc")
    assert (entry.level, entry.message, entry.timestamp) == (c.level, c.message, c.timestamp)
    assert msgspec.json.decode(entry.data) == c.data


def test_a_stderr_warning_is_not_an_error() -> None:
    classifier = LineClassifier(container_id="abc")
    line = DockerLine(stream="stderr", timestamp=T1, timestamp_ns=N1, text="WARNING: low disk")
    assert classifier.entry(line).level == "warn"
    line = DockerLine(stream="stderr", timestamp=T1, timestamp_ns=N1, text="plain")
    assert classifier.entry(line).level == "error"
    line = DockerLine(stream="stdout", timestamp=T1, timestamp_ns=N1, text="ERROR on stdout")
    assert classifier.entry(line).level == "info"  # stdout: the configured default only


@given(wall=st.floats(0, 253402300799, allow_nan=False))
def test_format_wall_is_format_ns_of_the_exact_float(wall: float) -> None:
    exact = Fraction(wall)
    whole = math.floor(exact)
    millis = min(999, int((wall - whole) * 1000))
    assert format_wall(wall) == iso_millis(whole * NS + millis * 1_000_000)
    assert format_wall(wall)[:19] == iso_millis(int(exact * NS))[:19]


@pytest.mark.parametrize(
    ("given_", "expected"),
    [
        ("2024-01-26T13:45:30.123Z", "2024-01-26T13:45:30.123Z"),
        ("2024-01-26T13:45:30.123+00:00", "2024-01-26T13:45:30.123Z"),  # not .122
        ("2024-01-26T14:45:30.9999+01:00", "2024-01-26T13:45:30.999Z"),
        ("2024-01-26T13:45:30", "2024-01-26T13:45:30.000Z"),
        ("2024-01-26", "2024-01-26T00:00:00.000Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z"),
    ],
)
def test_normalize_timestamp_is_exact(given_: str, expected: str) -> None:
    assert normalize_timestamp(given_) == expected


@pytest.mark.parametrize(
    "bad", ["yesterday", "", "0001-01-01T00:00:00+01:00", "2024-02-30T00:00:00Z"]
)
def test_normalize_timestamp_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_timestamp(bad)

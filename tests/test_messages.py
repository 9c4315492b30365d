"""Wire cases for every client message (SPEC §3), table-driven.

Each row is a message as a client sends it and what ``decode_client_message``
must make of it; each error row names the code and the words the error text
must contain (the problem and, for schema errors, the JSON path).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcclog_core import ErrorCode, MessageError, decode_client_message, encode
from pcclog_core._messages import (
    Auth,
    AuthField,
    ErrorMessage,
    Gap,
    List,
    Log,
    Ping,
    Pong,
    SessionInfo,
    Sessions,
    Status,
    Subscribe,
    Unsubscribe,
    WrapperComplete,
    WrapperError,
    WrapperHeartbeat,
    WrapperLog,
    WrapperStatus,
    _WrapperCompleteData,
    _WrapperErrorData,
    _WrapperLogData,
    _WrapperStatusData,
)

Raw = msgspec.Raw

# --- valid messages ------------------------------------------------------------

VALID: list[tuple[str, Any]] = [
    # seed shapes
    (
        '{"type":"subscribe","sessionId":"s1","auth":{"token":"t"}}',
        Subscribe(sessionId="s1", auth=AuthField(token="t")),
    ),
    ('{"type":"subscribe","sessionId":"s1"}', Subscribe(sessionId="s1")),
    ('{"type":"unsubscribe","sessionId":"s1"}', Unsubscribe(sessionId="s1")),
    ('{"type":"ping"}', Ping()),
    # extensions
    ('{"type":"subscribe","sessionId":"s1","since":41}', Subscribe(sessionId="s1", since=41)),
    ('{"type":"subscribe","sessionId":"s1","since":0}', Subscribe(sessionId="s1", since=0)),
    ('{"type":"subscribe","sessionId":"s1","tail":5}', Subscribe(sessionId="s1", tail=5)),
    ('{"type":"subscribe","sessionId":"s1","tail":0}', Subscribe(sessionId="s1", tail=0)),
    (
        '{"type":"subscribe","sessionId":"*","since":3,"tail":2}',
        Subscribe(sessionId="*", since=3, tail=2),
    ),
    ('{"type":"subscribe","sessionId":"s1","since":null}', Subscribe(sessionId="s1")),
    ('{"type":"auth","token":"secret"}', Auth(token="secret")),
    ('{"type":"list"}', List()),
    # unknown fields are ignored (newer clients keep working)
    ('{"type":"ping","id":7,"extra":{"a":[1]}}', Ping()),
    ('{"sessionId":"s1","type":"unsubscribe"}', Unsubscribe(sessionId="s1")),
    # producer messages
    ('{"type":"log","sessionId":"s1"}', Log(sessionId="s1")),
    (
        '{"type":"log","sessionId":"s1","level":"warn","message":"hi",'
        '"data":{"k":[1,2]},"timestamp":"2024-01-26T13:45:30.123Z"}',
        Log(
            sessionId="s1",
            level="warn",
            message="hi",
            data=Raw(b'{"k":[1,2]}'),
            timestamp="2024-01-26T13:45:30.123Z",
        ),
    ),
    ('{"type":"log","sessionId":"s1","data":null}', Log(sessionId="s1", data=Raw(b"null"))),
    (
        '{"type":"status","sessionId":"s1","status":"running"}',
        Status(sessionId="s1", status="running"),
    ),
    (
        '{"type":"status","sessionId":"s1","status":"stopped","metadata":{"exitCode":0}}',
        Status(sessionId="s1", status="stopped", metadata={"exitCode": 0}),
    ),
    ('{"type":"status","sessionId":"s1","status":"error"}', Status(sessionId="s1", status="error")),
    # the original wrapper's dialect
    (
        '{"type":"LOG","containerID":"c1","timestamp":"2024-01-26T13:45:30.123Z",'
        '"data":{"level":"debug","message":"m","metadata":{"x":1}}}',
        WrapperLog(
            containerID="c1",
            timestamp="2024-01-26T13:45:30.123Z",
            data=_WrapperLogData(level="debug", message="m", metadata=Raw(b'{"x":1}')),
        ),
    ),
    ('{"type":"LOG","data":{}}', WrapperLog(data=_WrapperLogData())),
    (
        '{"type":"STATUS","containerID":"c1","data":{"status":"starting","message":"boot"}}',
        WrapperStatus(containerID="c1", data=_WrapperStatusData(status="starting", message="boot")),
    ),
    (
        '{"type":"STATUS","data":{"status":"completed"}}',
        WrapperStatus(data=_WrapperStatusData(status="completed")),
    ),
    (
        '{"type":"STATUS","data":{"status":"failed"}}',
        WrapperStatus(data=_WrapperStatusData(status="failed")),
    ),
    (
        '{"type":"ERROR","containerID":"c1","data":{"error":"boom","code":"E1","details":[1]}}',
        WrapperError(
            containerID="c1", data=_WrapperErrorData(error="boom", code="E1", details=[1])
        ),
    ),
    (
        '{"type":"ERROR","data":{"error":"boom","code":137}}',
        WrapperError(data=_WrapperErrorData(error="boom", code=137)),
    ),
    (
        '{"type":"COMPLETE","containerID":"c1","data":{"exitCode":2,"message":"m","duration":1.5}}',
        WrapperComplete(
            containerID="c1", data=_WrapperCompleteData(exitCode=2, message="m", duration=1.5)
        ),
    ),
    ('{"type":"COMPLETE"}', WrapperComplete()),
    ('{"type":"HEARTBEAT","containerID":"c1"}', WrapperHeartbeat(containerID="c1")),
    (
        '{"type":"HEARTBEAT","data":{"uptime":3}}',
        WrapperHeartbeat(data={"uptime": 3}),
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_decode_valid(text: str, expected: Any) -> None:
    assert decode_client_message(text) == expected
    # bytes decode the same as text
    assert decode_client_message(text.encode()) == expected


# --- errors ------------------------------------------------------------------------

ERRORS: list[tuple[str | bytes, list[str]]] = [
    # bad JSON
    ("{", ["invalid JSON", "truncated"]),
    ('{"type":"ping",}', ["invalid JSON"]),
    ("", ["invalid JSON"]),
    (b"\xff\xfe", ["invalid JSON"]),
    ("ping", ["invalid JSON"]),
    # not an object
    ("[]", ["Expected `object`", "got `array`"]),
    ('"subscribe"', ["Expected `object`", "got `str`"]),
    ("42", ["Expected `object`", "got `int`"]),
    ("null", ["Expected `object`", "got `null`"]),
    # unknown or missing type
    ('{"type":"subscribed","sessionId":"s"}', ["unknown message type 'subscribed'"]),
    ('{"type":"log2"}', ["unknown message type 'log2'", "subscribe"]),
    ('{"type":"Ping"}', ["unknown message type 'Ping'"]),
    ("{}", ["missing required field `type`"]),
    ('{"sessionId":"s"}', ["missing required field `type`"]),
    ('{"type":5}', ["Expected `str`", "`$.type`"]),
    # missing field
    ('{"type":"subscribe"}', ["missing required field `sessionId`"]),
    ('{"type":"unsubscribe"}', ["missing required field `sessionId`"]),
    ('{"type":"auth"}', ["missing required field `token`"]),
    (
        '{"type":"subscribe","sessionId":"s","auth":{}}',
        ["missing required field `token`", "$.auth"],
    ),
    ('{"type":"log","message":"m"}', ["missing required field `sessionId`"]),
    ('{"type":"status","sessionId":"s"}', ["missing required field `status`"]),
    ('{"type":"LOG","containerID":"c"}', ["missing required field `data`"]),
    ('{"type":"STATUS","data":{}}', ["missing required field `status`", "$.data"]),
    # wrong type, with its JSON path
    ('{"type":"subscribe","sessionId":5}', ["Expected `str`, got `int`", "`$.sessionId`"]),
    ('{"type":"subscribe","sessionId":""}', ["length >= 1", "`$.sessionId`"]),
    ('{"type":"subscribe","sessionId":"' + "x" * 257 + '"}', ["length <= 256", "`$.sessionId`"]),
    ('{"type":"subscribe","sessionId":"s","since":-1}', [">= 0", "`$.since`"]),
    ('{"type":"subscribe","sessionId":"s","since":"5"}', ["got `str`", "`$.since`"]),
    ('{"type":"subscribe","sessionId":"s","since":1.5}', ["got `float`", "`$.since`"]),
    ('{"type":"subscribe","sessionId":"s","since":true}', ["got `bool`", "`$.since`"]),
    ('{"type":"subscribe","sessionId":"s","tail":-3}', [">= 0", "`$.tail`"]),
    ('{"type":"subscribe","sessionId":"s","auth":"t"}', ["got `str`", "`$.auth`"]),
    ('{"type":"subscribe","sessionId":"s","auth":{"token":1}}', ["got `int`", "`$.auth.token`"]),
    ('{"type":"auth","token":null}', ["got `null`", "`$.token`"]),
    ('{"type":"auth","token":"' + "t" * 8193 + '"}', ["length <= 8192", "`$.token`"]),
    ('{"type":"log","sessionId":"s","message":7}', ["got `int`", "`$.message`"]),
    ('{"type":"log","sessionId":"s","level":""}', ["length >= 1", "`$.level`"]),
    (
        '{"type":"log","sessionId":"s","level":"x" }'.replace('"x"', '"' + "x" * 17 + '"'),
        ["`$.level`"],
    ),
    ('{"type":"status","sessionId":"s","status":"paused"}', ["'paused'", "`$.status`"]),
    ('{"type":"status","sessionId":"s","status":"running","metadata":[]}', ["`$.metadata`"]),
    ('{"type":"LOG","data":{"level":3}}', ["got `int`", "`$.data.level`"]),
    ('{"type":"LOG","data":[]}', ["got `array`", "`$.data`"]),
    ('{"type":"STATUS","data":{"status":"stopped"}}', ["'stopped'", "`$.data.status`"]),
    ('{"type":"COMPLETE","data":{"exitCode":"0"}}', ["got `str`", "`$.data.exitCode`"]),
    ('{"type":"ERROR","data":{"code":1.5}}', ["`$.data.code`"]),
    ('{"type":"HEARTBEAT","containerID":""}', ["length >= 1", "`$.containerID`"]),
    # data not an object
    ('{"type":"log","sessionId":"s","data":5}', ["Expected `object`", "`$.data`"]),
    ('{"type":"log","sessionId":"s","data":"text"}', ["Expected `object`", "`$.data`"]),
    ('{"type":"log","sessionId":"s","data":[1]}', ["Expected `object`", "`$.data`"]),
    ('{"type":"log","sessionId":"s","data":true}', ["Expected `object`", "`$.data`"]),
    ('{"type":"LOG","data":{"metadata":"m"}}', ["Expected `object`", "`$.data.metadata`"]),
    ('{"type":"LOG","data":{"metadata":[1]}}', ["Expected `object`", "`$.data.metadata`"]),
    # text that is not encodable (an embedder passing a str with a lone surrogate)
    ('{"type":"ping","x":"\ud800"}', ["UTF-8"]),
    (b'{"type":"auth","token":"\x80"}', ["UTF-8"]),
    # nesting past the interpreter's recursion limit, within 64 KiB
    ('{"type":"ping","x":' + "[" * 30_000 + "]" * 30_000 + "}", ["nested too deeply"]),
]


@pytest.mark.parametrize(("text", "needles"), ERRORS, ids=[repr(t)[:60] for t, _ in ERRORS])
def test_decode_error(text: str | bytes, needles: list[str]) -> None:
    with pytest.raises(MessageError) as info:
        decode_client_message(text)
    error = info.value
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert str(error) == error.message
    for needle in needles:
        assert needle in error.message, (needle, error.message)


def test_every_client_type_has_a_valid_case() -> None:
    covered = {json.loads(t)["type"] for t, _ in VALID}
    assert covered == {
        "subscribe",
        "unsubscribe",
        "ping",
        "auth",
        "list",
        "log",
        "status",
        "LOG",
        "STATUS",
        "ERROR",
        "COMPLETE",
        "HEARTBEAT",
    }


# --- encoding ---------------------------------------------------------------------

SERVER_MESSAGES: list[tuple[Any, dict[str, Any]]] = [
    (Pong(), {"type": "pong"}),
    (
        Log(
            sessionId="s",
            timestamp="2024-01-26T13:45:30.123Z",
            level="info",
            message="m",
            data=Raw(b'{"a":1}'),
            seq=3,
        ),
        {
            "type": "log",
            "sessionId": "s",
            "timestamp": "2024-01-26T13:45:30.123Z",
            "level": "info",
            "message": "m",
            "data": {"a": 1},
            "seq": 3,
        },
    ),
    (
        Log(sessionId="s", timestamp="t", level="info", message="", seq=1),
        {
            "type": "log",
            "sessionId": "s",
            "timestamp": "t",
            "level": "info",
            "message": "",
            "seq": 1,
        },
    ),
    (
        Status(sessionId="s", status="stopped", metadata={"exitCode": 0}, seq=9),
        {
            "type": "status",
            "sessionId": "s",
            "status": "stopped",
            "metadata": {"exitCode": 0},
            "seq": 9,
        },
    ),
    (
        Status(sessionId="s", status="running", metadata={}),
        {"type": "status", "sessionId": "s", "status": "running", "metadata": {}},
    ),
    (
        ErrorMessage(code=ErrorCode.SESSION_NOT_FOUND, message="no such session", sessionId="s"),
        {
            "type": "error",
            "code": "SESSION_NOT_FOUND",
            "message": "no such session",
            "sessionId": "s",
        },
    ),
    (
        ErrorMessage(code=ErrorCode.INVALID_MESSAGE, message="bad"),
        {"type": "error", "code": "INVALID_MESSAGE", "message": "bad"},
    ),
    (
        Gap(sessionId="s", fromSeq=4, toSeq=7, reason="slow_consumer"),
        {"type": "gap", "sessionId": "s", "fromSeq": 4, "toSeq": 7, "reason": "slow_consumer"},
    ),
    (
        Sessions(sessions=[SessionInfo(sessionId="s", status="running", metadata={}, lastSeq=2)]),
        {
            "type": "sessions",
            "sessions": [{"sessionId": "s", "status": "running", "metadata": {}, "lastSeq": 2}],
        },
    ),
    (
        WrapperHeartbeat(containerID="c", timestamp="t"),
        {"type": "HEARTBEAT", "containerID": "c", "timestamp": "t"},
    ),
]


@pytest.mark.parametrize(("message", "expected"), SERVER_MESSAGES)
def test_encode_shapes(message: Any, expected: dict[str, Any]) -> None:
    encoded = encode(message)
    assert json.loads(encoded) == expected
    # the tag comes first, as the seed's clients read it
    assert encoded.startswith(b'{"type":')
    # and the same definition decodes what it encoded
    assert msgspec.json.decode(encoded, type=type(message)) == message


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[t for t, _ in VALID])
def test_client_messages_round_trip(text: str, expected: Any) -> None:
    assert decode_client_message(encode(expected)) == expected


# --- properties ------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_types = st.sampled_from(
    [
        "subscribe",
        "unsubscribe",
        "ping",
        "auth",
        "list",
        "log",
        "status",
        "LOG",
        "STATUS",
        "ERROR",
        "COMPLETE",
        "HEARTBEAT",
        "pong",
        "gap",
    ]
)
_fields = st.sampled_from(
    [
        "sessionId",
        "auth",
        "since",
        "tail",
        "token",
        "level",
        "message",
        "data",
        "timestamp",
        "status",
        "metadata",
        "containerID",
        "seq",
    ]
)


def _only_message_errors(text: str | bytes) -> None:
    try:
        decode_client_message(text)
    except MessageError as exc:
        assert exc.code is ErrorCode.INVALID_MESSAGE
        assert exc.message


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text())
def test_arbitrary_text_only_raises_message_error(text: str) -> None:
    _only_message_errors(text)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary())
def test_arbitrary_bytes_only_raises_message_error(data: bytes) -> None:
    _only_message_errors(data)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(_types, st.dictionaries(_fields, _json_values, max_size=5))
def test_near_miss_objects_only_raise_message_error(kind: str, fields: dict[str, Any]) -> None:
    _only_message_errors(json.dumps({"type": kind, **fields}))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.sampled_from([t for t, _ in VALID]), st.data())
def test_mutated_valid_messages_only_raise_message_error(text: str, data: st.DataObject) -> None:
    raw = bytearray(text.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = data.draw(st.integers(0, 255))
        if action == "insert" or index == len(raw):
            raw.insert(index, byte)
        elif action == "delete":
            del raw[index]
        else:
            raw[index] = byte
    _only_message_errors(bytes(raw))

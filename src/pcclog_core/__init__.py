"""pcclog_core: the sans-IO heart of pcclog.

Bytes in, events and bytes out, time passed in. No sockets, threads, clocks
or ``await`` in here: a runtime (``pcclog_server``, or your own) moves the
bytes and sleeps until ``next_deadline()``.

* ``Hub`` — sessions, history, subscriptions, fan-out, backpressure.
* ``Client`` — one peer at the message level (JSON text in, frames out),
  with its ``Outbox``: every byte queued for it, counted against its budget.
* ``Connection`` — one TCP connection: HTTP, WebSocket handshake, frames,
  keepalive, close codes; wraps a ``Client``.
* ``Authenticator`` / ``Grant`` — static tokens and JWT.
* ``Containers`` — the Docker lifecycle (one state table per container);
  ``DockerStreamDecoder`` and friends — the engine's log stream, decoded.
* ``Resume`` / ``ProducerProtocol`` — the client side: a viewer's position
  across reconnects, a producer's numbered entries until confirmed; with
  ``Backoff`` and ``RateBucket``, their schedules.
"""

from ._auth import (
    ALL_ACCESS,
    Authenticator,
    AuthError,
    Grant,
    Role,
    authorize_request,
    bearer_token,
    parse_static_tokens,
)
from ._client import Client
from ._connection import (
    Connection,
    ConnectionClosed,
    ConnectionState,
    Event,
    HTTPRequest,
    WebSocketAccepted,
)
from ._docker_http import EngineHTTPError
from ._docker_sessions import Containers
from ._docker_stream import DockerLine, DockerStreamDecoder, DockerStreamError
from ._entries import split_message
from ._errors import (
    CloseCode,
    ConfigurationError,
    ErrorCode,
    LocalProtocolError,
    MessageError,
    PcclogError,
)
from ._frames import text_frame
from ._hub import Counters, Hub
from ._levels import LEVEL_RANK, LEVELS, leading_level, normalize_level
from ._limits import Limits
from ._messages import decode_client_message, encode
from ._notice import Notice
from ._outbox import Outbox, Pool
from ._pacing import Backoff, RateBucket
from ._producer import ProducerProtocol, ProducerState, Rejection
from ._resume import Resume, ResumeRefused, ResyncInterrupted
from ._session import Session
from ._timefmt import format_ns, format_wall, normalize_timestamp, parse_rfc3339_ns

__version__ = "0.1.0"

__all__ = [
    "ALL_ACCESS",
    "LEVELS",
    "LEVEL_RANK",
    "AuthError",
    "Authenticator",
    "Backoff",
    "Client",
    "CloseCode",
    "ConfigurationError",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "Containers",
    "Counters",
    "DockerLine",
    "DockerStreamDecoder",
    "DockerStreamError",
    "EngineHTTPError",
    "ErrorCode",
    "Event",
    "Grant",
    "HTTPRequest",
    "Hub",
    "Limits",
    "LocalProtocolError",
    "MessageError",
    "Notice",
    "Outbox",
    "PcclogError",
    "Pool",
    "ProducerProtocol",
    "ProducerState",
    "RateBucket",
    "Rejection",
    "Resume",
    "ResumeRefused",
    "ResyncInterrupted",
    "Role",
    "Session",
    "WebSocketAccepted",
    "authorize_request",
    "bearer_token",
    "decode_client_message",
    "encode",
    "format_ns",
    "format_wall",
    "leading_level",
    "normalize_level",
    "normalize_timestamp",
    "parse_rfc3339_ns",
    "parse_static_tokens",
    "split_message",
    "text_frame",
]

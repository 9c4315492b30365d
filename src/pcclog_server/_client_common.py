"""What both client adapters (``Subscription``, ``Producer``) share: their
errors, and the ``websockets`` side of connecting and of saying why a
connection failed. No decisions here: those are in the cores."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from pcclog_core._notice import Notice

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConnectionFailed",
    "TRANSIENT",
    "close_reason",
    "describe",
    "is_refusal",
    "log",
    "normalize_url",
    "open_connection",
    "tell",
]

log = logging.getLogger("pcclog.client")
log.addHandler(logging.NullHandler())

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    WebSocketException,
    EOFError,
)


# --- errors -----------------------------------------------------------------


class ClientError(Exception):
    """Base of the errors this module raises."""


class AuthenticationError(ClientError):
    """The server refused the token (``UNAUTHORIZED``): a wrong or expired
    token, or one without the role or session scope the request needs. A
    ``Subscription`` stops on it; a ``Producer`` keeps retrying (a restarted
    server may accept the token again) and holds it in ``error`` meanwhile."""

    def __init__(self, message: str, session_id: str | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id


class ConnectionFailed(ClientError):
    """The server could not be reached or the connection broke, and
    reconnecting was not asked for."""


# --- helpers ----------------------------------------------------------------


def normalize_url(url: str) -> str:
    """``http(s)://`` → ``ws(s)://``; a bare ``host:port`` gets ``ws://``."""
    url = url.strip()
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if "://" not in url:
        return "ws://" + url
    return url


def open_connection(url: str, *, max_size: int | None, open_timeout: float) -> Any:
    return connect(
        normalize_url(url),
        compression=None,
        max_size=max_size,
        max_queue=256,
        open_timeout=open_timeout,
        close_timeout=2,
        ping_interval=20,
        ping_timeout=20,
    )


def describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}".strip()
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        if rcvd is not None:
            return f"connection closed by the server ({rcvd.code} {rcvd.reason})".strip()
        return "connection lost"
    return str(exc) or type(exc).__name__


def close_reason(ws: ClientConnection) -> str:
    rcvd = ws.protocol.close_rcvd
    if rcvd is not None:
        return f"connection closed by the server ({rcvd.code} {rcvd.reason})".strip()
    return "connection lost"


def is_refusal(exc: BaseException) -> bool:
    return isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403)


def tell(notice: Notice) -> None:
    log.log(_LEVELS.get(notice.level, logging.INFO), "%s", notice.text)

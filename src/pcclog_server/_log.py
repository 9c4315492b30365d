"""The server's own structured logs: one JSON object per line on stderr.

Levels follow the seed's Pino names. No token is ever passed here: the
runtime logs paths without their query string and never logs headers.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import msgspec

__all__ = ["Logger"]

_LEVELS = {
    "trace": 10,
    "debug": 20,
    "info": 30,
    "warn": 40,
    "warning": 40,
    "error": 50,
    "fatal": 60,
    "silent": 100,
}
_encode = msgspec.json.Encoder().encode


class Logger:
    def __init__(self, level: str = "info", stream: IO[str] | None = None) -> None:
        self.threshold = _LEVELS[level]
        self.stream = stream or sys.stderr

    def enabled(self, level: str) -> bool:
        return _LEVELS[level] >= self.threshold

    def log(self, level: str, msg: str, **fields: Any) -> None:
        if _LEVELS[level] < self.threshold:
            return
        record = {"time": round(time.time(), 3), "level": level, "msg": msg, **fields}
        try:
            self.stream.write(_encode(record).decode() + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def debug(self, msg: str, **fields: Any) -> None:
        self.log("debug", msg, **fields)

    def info(self, msg: str, **fields: Any) -> None:
        self.log("info", msg, **fields)

    def warn(self, msg: str, **fields: Any) -> None:
        self.log("warn", msg, **fields)

    def error(self, msg: str, **fields: Any) -> None:
        self.log("error", msg, **fields)

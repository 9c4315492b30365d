"""Docker log lines as pcclog ``log`` entries: level, message, data (SPEC §4).

:func:`classify_line` is the rule, for one line; :class:`LineClassifier` is
the same rule for one container's stream, on the Docker source's hot path:
it keeps the ``data`` of a plain line (``containerId`` and ``stream`` only)
encoded once per stream, so a plain line costs a level lookup and a
timestamp, and only a JSON line is decoded and its ``data`` encoded.

Levels come from the one table (:mod:`._levels`): a JSON line's ``level``
or ``severity`` through ``level_of``; a plain stderr line through
``leading_level`` (``ERROR``, ``WARN``/``WARNING``, ``INFO``, ``DEBUG``,
``Traceback``) before the stderr default; timestamps are formatted by the one
formatter (:mod:`._timefmt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import msgspec

from ._docker_stream import DockerLine
from ._levels import leading_level, level_of
from ._timefmt import format_ns

__all__ = ["ClassifiedLine", "LineClassifier", "LogEntry", "classify_line"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClassifiedLine:
    """A :class:`DockerLine` as pcclog's ``log`` message fields (SPEC §4)."""

    level: str
    message: str
    data: dict[str, object]
    timestamp: str


class LogEntry(NamedTuple):
    """A line ready for ``Hub.publish_log``: its fields, ``data`` encoded."""

    level: str
    message: str
    timestamp: str
    data: msgspec.Raw


def classify_line(
    line: DockerLine,
    *,
    container_id: str,
    stdout_level: str = "info",
    stderr_level: str = "error",
) -> ClassifiedLine:
    """Level, message and data of a container's log line (SPEC §4).

    ``data`` always has ``containerId`` and ``stream``. A line that is a JSON
    object keeps its fields in ``data`` (our ``containerId``/``stream``
    replace fields of the same name) and gives the level — ``level``, else
    ``severity``: names in any case (``warning``→``warn``, ``err``→``error``,
    ``critical``→``fatal``, and the syslog names) or pino's numbers — and the
    message: ``msg``, else ``message`` (a non-string is JSON-encoded), else
    the whole line. Any other line is a message at ``stdout_level`` or
    ``stderr_level`` by stream, as is a JSON line without a known level;
    a stderr line first gets the level its leading keyword names (``ERROR``,
    ``WARN``/``WARNING``, ``INFO``, ``DEBUG``, ``Traceback``), so a warning
    on stderr is not counted as an error.
    ``timestamp`` is the engine's timestamp in pcclog's wire form.
    """
    text = line.text
    default = stdout_level if line.stream == "stdout" else stderr_level
    timestamp = format_ns(line.timestamp_ns)
    fields: object = None
    body = text.strip() if text[:1].isspace() or text[-1:].isspace() else text
    if body[:1] == "{" and body[-1:] == "}":
        try:
            fields = msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):
            fields = None
    if not isinstance(fields, dict):
        if line.stream == "stderr":
            default = leading_level(text) or default
        return ClassifiedLine(
            level=default,
            message=text,
            data={"containerId": container_id, "stream": line.stream},
            timestamp=timestamp,
        )
    level = level_of(fields.get("level")) or level_of(fields.get("severity")) or default
    message = text
    for key in ("msg", "message"):
        value = fields.get(key)
        if value is not None:
            message = value if isinstance(value, str) else msgspec.json.encode(value).decode()
            break
    data: dict[str, object] = fields
    data["containerId"] = container_id
    data["stream"] = line.stream
    return ClassifiedLine(level=level, message=message, data=data, timestamp=timestamp)


class LineClassifier:
    """:func:`classify_line` for one container, producing :class:`LogEntry` values."""

    __slots__ = ("_container_id", "_raw", "_stderr_level", "_stdout_level")

    def __init__(
        self, *, container_id: str, stdout_level: str = "info", stderr_level: str = "error"
    ) -> None:
        self._container_id = container_id
        self._stdout_level = stdout_level
        self._stderr_level = stderr_level
        encode = msgspec.json.encode
        self._raw = {
            stream: msgspec.Raw(encode({"containerId": container_id, "stream": stream}))
            for stream in ("stdout", "stderr")
        }

    def entry(self, line: DockerLine) -> LogEntry:
        text = line.text
        first = text[:1]
        if first != "{" and not first.isspace():
            # Not a JSON object (classify_line's own test, first: most lines).
            if line.stream == "stdout":
                level = self._stdout_level
            else:
                level = leading_level(text) or self._stderr_level
            return LogEntry(level, text, format_ns(line.timestamp_ns), self._raw[line.stream])
        c = classify_line(
            line,
            container_id=self._container_id,
            stdout_level=self._stdout_level,
            stderr_level=self._stderr_level,
        )
        data = c.data
        # A plain line has only containerId and stream: its data is encoded already.
        raw = self._raw[line.stream] if len(data) == 2 else msgspec.Raw(msgspec.json.encode(data))
        return LogEntry(c.level, c.message, c.timestamp, raw)

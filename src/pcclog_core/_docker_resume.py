"""Resuming a Docker follow stream without duplicates (SPEC §4).

The follow stream can end at any time (engine restart, network, the
container's restart); the runtime then asks for the logs again with
``since=`` and the :class:`ResumeFilter` drops what the engine sends twice.
Its docstring says exactly what is guaranteed and what is not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ._docker_stream import DockerLine
from ._timefmt import NS_PER_S as _NS_PER_S

__all__ = ["ResumeFilter", "ResumePoint", "StreamMark", "since_text"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamMark:
    """The newest timestamp delivered on one stream and how many lines had it."""

    timestamp_ns: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a stream mark counts at least one line")


def since_text(ns: int) -> str:
    """``since`` for the Engine API: ``"<seconds>.<9 digits>"``, never before the epoch."""
    seconds, nanos = divmod(max(ns, 0), _NS_PER_S)
    return f"{seconds}.{nanos:09d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResumePoint:
    """What has been delivered: per stream, the newest timestamp and its count.

    A value: store it, hand it to a new :class:`ResumeFilter`.
    """

    stdout: StreamMark | None = None
    stderr: StreamMark | None = None

    @property
    def timestamp_ns(self) -> int | None:
        """The instant to resume from: the older of the two streams' marks."""
        marks = [m.timestamp_ns for m in (self.stdout, self.stderr) if m is not None]
        return min(marks) if marks else None

    def since_param(self) -> str | None:
        """``since`` for the Engine API, ``"<seconds>.<9 digits>"``; ``None`` before any line.

        The engine parses it with ``timetypes.ParseTimestamps`` into seconds
        and nanoseconds, exactly, and resends every record whose timestamp
        is not before it (``since`` is inclusive).
        """
        ns = self.timestamp_ns
        return None if ns is None else since_text(ns)


class ResumeFilter:
    """Drops the lines a re-attached follow stream sends twice.

    The follow stream can end at any time (engine restart, network, the
    container's restart); the runtime then requests the logs again with
    ``since=`` :meth:`since_param` (inclusive: the engine resends every
    record whose timestamp is at or after it, in log file order) and calls
    :meth:`start_attach` before passing the new stream's lines through
    :meth:`accept`/:meth:`filter`. Several lines can share a timestamp, so
    the filter remembers per stream the newest timestamp delivered and how
    many lines of that stream had exactly it (a :class:`ResumePoint`). On a
    new attach it drops, per stream, the lines older than that stream's mark
    and the first ``count`` lines at exactly it; the first line it lets
    through ends the dropping for that stream, so live lines are never held
    back.

    Guaranteed — no duplicate and no hole — when:

    * each stream's timestamps never decrease in the log file (the copier
      stamps one stream from one goroutine with the host's wall clock, and
      the file keeps each stream's order);
    * every undelivered line has a timestamp at or after ``since``: true for
      a stream that has delivered a line (its undelivered lines come after
      its mark, and ``since`` is the older mark), and true for a stream that
      has not when all lines are in timestamp order across streams;
    * the engine still has the lines (a rotated-away log file is a hole the
      engine does not report) and each delivered line was whole.

    Not guaranteed:

    * The stdout and stderr copiers stamp their lines independently, so a
      line of a stream that has delivered nothing yet can be older than the
      other stream's mark and be written after it; it is lost (a skew of
      microseconds: the window between stamping and writing).
    * A backward step of the engine host's wall clock: lines stamped before
      the mark after the step are dropped as if delivered. The mark itself
      never moves back, so nothing is duplicated.
    * A line cut by the end of the follow stream (EOF between its 16 KiB
      pieces or inside a frame) is delivered as its first part, and the whole
      line, resent with the same timestamp, is dropped as delivered.
    * A container that ends its output without ``\\n`` and is restarted: the
      engine logged that last output as a partial record, so the first line
      after the restart is joined to it (as ``docker logs`` shows it); on a
      replay that joined line is dropped as the line already delivered.
    """

    __slots__ = ("_marks", "_skips")

    def __init__(self, point: ResumePoint | None = None) -> None:
        # stream → [timestamp_ns, count]; mutable for the hot path.
        self._marks: dict[str, list[int]] = {}
        self._skips: dict[str, list[int]] = {}
        if point is not None:
            for stream, mark in (("stdout", point.stdout), ("stderr", point.stderr)):
                if mark is not None:
                    self._marks[stream] = [mark.timestamp_ns, mark.count]

    @property
    def point(self) -> ResumePoint:
        """What has been delivered so far, as a value."""
        out = self._marks.get("stdout")
        err = self._marks.get("stderr")
        return ResumePoint(
            stdout=None if out is None else StreamMark(timestamp_ns=out[0], count=out[1]),
            stderr=None if err is None else StreamMark(timestamp_ns=err[0], count=err[1]),
        )

    def since_param(self) -> str | None:
        """See :meth:`ResumePoint.since_param`."""
        return self.point.since_param()

    def start_attach(self) -> None:
        """A new follow stream begins: drop what it resends of what was delivered."""
        self._skips = {stream: list(mark) for stream, mark in self._marks.items()}

    def accept(self, line: DockerLine) -> bool:
        """True when ``line`` is new (it is then counted as delivered)."""
        stream = line.stream
        ts = line.timestamp_ns
        skip = self._skips.get(stream)
        if skip is not None:
            if ts < skip[0]:
                return False
            if ts == skip[0] and skip[1] > 0:
                skip[1] -= 1
                return False
            del self._skips[stream]
        mark = self._marks.get(stream)
        if mark is None:
            self._marks[stream] = [ts, 1]
        elif ts == mark[0]:
            mark[1] += 1
        elif ts > mark[0]:
            mark[0] = ts
            mark[1] = 1
        return True

    def filter(self, lines: Iterable[DockerLine]) -> list[DockerLine]:
        """The new lines among ``lines``, in order."""
        return [line for line in lines if self.accept(line)]

"""One session: status, metadata, ``seq`` and its in-memory history.

The history holds the encoded frames of the session's entries (``log`` and
``status``), oldest first, bounded by ``HISTORY_LINES`` entries and
``HISTORY_BYTES`` bytes, whichever is hit first; the bytes are the stored
frames' own lengths (after JSON escaping), so the bound is on what memory
really holds. ``seq`` starts at 1 and grows by one per entry, so entry ``s``
sits at index ``s - first_seq``: replay is arithmetic, not a search.

What the history holds is also counted in the hub's ``Pool``; the hub may
shed a session's oldest entries to stay under ``MEMORY_BUDGET``
(``drop_oldest``). A viewer asking for entries no longer held gets an
``evicted`` gap for them.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Literal

from ._frames import text_frame
from ._messages import SessionInfo, Status, encode
from ._outbox import Outbox, Pool
from ._redact import LineRedactor, Redactor

if TYPE_CHECKING:
    from ._delivery import Delivery

__all__ = ["Session", "StatusValue"]

StatusValue = Literal["running", "stopped", "error"]

# Resend dedupe marks are kept per grant subject, so that only a producer's
# own subject can push its marks out: at most this many producer ids per
# subject (least recently used first, within that subject only), and at most
# this many subjects per session (a new subject pushes out the least recent
# one; minting subjects takes the JWT issuer's key, not a co-producer's token).
_MAX_PRODUCER_MARKS = 64
_MAX_MARK_SUBJECTS = 256


class Session:
    """See the module docstring."""

    __slots__ = (
        "_snapshot",
        "clean_data",
        "frames",
        "history_bytes",
        "id",
        "lagging",
        "lines",
        "metadata",
        "pending",
        "pool",
        "producers",
        "producing",
        "redactor",
        "seq",
        "status",
        "subscribers",
        "tenant",
        "viewers_envelope",
        "viewers_plain",
    )

    def __init__(
        self, session_id: str, pool: Pool, redactor: Redactor, tenant: str | None = None
    ) -> None:
        self.id = session_id
        # The tenant that created it (``Grant.tenant``; ``None``: a grant
        # over every session, or the Docker source): its quota counts it.
        self.tenant = tenant
        self.pool = pool
        # What masks this session's entries (SPEC §8), and its line state (a
        # private key printed over several lines).
        self.redactor = redactor
        self.lines = LineRedactor(redactor)
        self.clean_data = b""  # the last entry ``data`` that needed no mask
        self.status: StatusValue = "running"
        self.metadata: dict[str, Any] = {}
        self.seq = 0
        self.frames: deque[bytes] = deque()
        self.history_bytes = 0
        # Live subscribers, with their outboxes: those that take frames (our
        # socket runtime) and those that take bare JSON payloads (an
        # embedder's WebSocket stack).
        self.subscribers: dict[Delivery, Outbox] = {}
        self.viewers_plain: dict[Delivery, Outbox] = {}
        # Original-style viewers: entries translated to the wrapper's dialect.
        self.viewers_envelope: dict[Delivery, Outbox] = {}
        # Clients replaying this session's history, not yet live (paged
        # replay: they join ``subscribers`` once they reach ``seq``).
        self.lagging: dict[Delivery, None] = {}
        # Log frames published in the current batch, not yet fanned out.
        self.pending: list[bytes] = []
        # Highest ``pseq`` applied per (grant subject, producer id), newest
        # last within each subject, subjects least recent first.
        self.producers: dict[str, dict[str, int]] = {}
        # Open connections that have published here (PRODUCER_GRACE).
        self.producing = 0
        self._snapshot: bytes | None = None

    # --- history ------------------------------------------------------------

    @property
    def first_seq(self) -> int:
        """Seq of the oldest entry still in history (``seq + 1`` if none)."""
        return self.seq - len(self.frames) + 1

    def append(self, frame: bytes, max_lines: int, max_bytes: int) -> None:
        """Add the frame of entry ``seq`` (already incremented) to history,
        dropping the oldest entries past either bound; the newest entry is
        always kept."""
        frames = self.frames
        size = len(frame)
        frames.append(frame)
        self.history_bytes += size
        self.pool.history += size
        if len(frames) > max_lines or self.history_bytes > max_bytes:
            self._trim(max_lines, max_bytes)

    def _trim(self, max_lines: int, max_bytes: int) -> None:
        frames = self.frames
        freed = 0
        total = self.history_bytes
        while len(frames) > 1 and (len(frames) > max_lines or total - freed > max_bytes):
            freed += len(frames.popleft())
        self.history_bytes = total - freed
        self.pool.history -= freed

    def drop_oldest(self, count: int) -> int:
        """Shed up to ``count`` bytes of the oldest entries (whole entries,
        at least one, never the newest); returns the bytes freed."""
        frames = self.frames
        freed = 0
        while len(frames) > 1 and freed < count:
            freed += len(frames.popleft())
        self.history_bytes -= freed
        self.pool.history -= freed
        return freed

    def release(self) -> None:
        """The session leaves memory: give its history back to the pool."""
        self.pool.history -= self.history_bytes
        self.history_bytes = 0
        self.frames.clear()

    # --- resend dedupe --------------------------------------------------------

    def already_applied(self, subject: str, producer: str, pseq: int) -> bool:
        marks = self.producers.get(subject)
        return marks is not None and pseq <= marks.get(producer, 0)

    def mark_applied(self, subject: str, producer: str, pseq: int) -> None:
        subjects = self.producers
        marks = subjects.pop(subject, None)
        if marks is None:
            marks = {}
            if len(subjects) >= _MAX_MARK_SUBJECTS:
                del subjects[next(iter(subjects))]
        subjects[subject] = marks
        marks.pop(producer, None)
        marks[producer] = pseq
        if len(marks) > _MAX_PRODUCER_MARKS:
            del marks[next(iter(marks))]

    # --- views ----------------------------------------------------------------

    def use_redactor(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self.lines = LineRedactor(redactor)
        self.clean_data = b""

    def set_status(self, status: StatusValue, metadata: dict[str, Any]) -> None:
        self.status = status
        self.metadata = metadata
        self._snapshot = None

    def info(self) -> SessionInfo:
        return SessionInfo(
            sessionId=self.id, status=self.status, metadata=self.metadata, lastSeq=self.seq
        )

    def snapshot_frame(self) -> bytes:
        """The ``status`` snapshot sent on subscribe, encoded once per status
        change, not once per subscriber."""
        frame = self._snapshot
        if frame is None:
            frame = self._snapshot = text_frame(
                encode(Status(sessionId=self.id, status=self.status, metadata=self.metadata))
            )
        return frame

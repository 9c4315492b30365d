"""Outbound bytes: one budget per connection, one pool for the whole hub.

Theory of operation
-------------------

Every byte the core queues for a peer goes through that peer's ``Outbox``
and is counted in ``held`` until the runtime says it was written: live
entries, replayed history, status snapshots, replies (``sessions``,
errors, pongs), gaps, control frames. ``held`` is

    bytes queued in ``chunks`` + bytes handed to the runtime (``take``)
    and not yet confirmed (``sent``)

so data the runtime holds in its own pending buffer is still counted: the
bound is one ``CONNECTION_BUFFER`` per connection, not two (SPEC §6).

Past the budget (``held >= limit``):

* ``log`` entries of the live fan-out follow the slow-consumer policy: the
  entry is not queued and the seq range missed is recorded per session
  (``gaps``); the range goes out as one ``gap`` before the next entry of that
  session is queued, or when the runtime takes the data, so each missed entry
  is covered by exactly one gap and order is kept. (Or, with
  ``disconnect``, the client is closed with 1013 by its hub.)
* everything else (the peer's own replies, ``status`` entries) is queued
  anyway — it is never dropped — and ``over_budget`` tells the connection
  to stop reading that peer until it drains: a peer cannot make the server
  queue more by asking for more.
* replays are paged by the client: history is copied in only while the
  budget has room (``room``), and more as the runtime confirms writes.

The ``Pool`` adds up what every outbox holds (``queued``) and what every
session's in-memory history holds (``history``) against ``MEMORY_BUDGET``.
Outboxes point at the pool, the pool at nothing: a closed connection's
buffers are freed by reference counting alone, with no cycle to wait for.

The fan-out loop is the hot path, so it lives here as one function over the
subscribers (``fan_out``): one append and one addition per viewer, with the
rare drops collected for the hub's policy after the loop.
"""

from __future__ import annotations

from typing import TypeVar

__all__ = ["Outbox", "Pool", "fan_out"]

K = TypeVar("K")


class Pool:
    """The hub-wide memory account: queued output plus in-memory history."""

    __slots__ = ("history", "limit", "queued")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0
        self.history = 0

    @property
    def used(self) -> int:
        return self.queued + self.history

    @property
    def over(self) -> bool:
        return self.queued + self.history > self.limit


class Outbox:
    """One peer's queued bytes, in order, and their budget."""

    __slots__ = ("chunks", "gaps", "held", "in_flight", "limit", "pool", "ready")

    def __init__(self, limit: int, pool: Pool) -> None:
        self.limit = limit
        self.pool = pool
        self.chunks: list[bytes] = []
        self.held = 0
        self.in_flight = 0
        # Seq ranges of log entries dropped by the slow-consumer policy, per
        # session, not yet announced: [first, last].
        self.gaps: dict[str, list[int]] = {}
        # On the hub's ready list (the runtime has not taken the data yet).
        self.ready = False

    @property
    def over_budget(self) -> bool:
        return self.held >= self.limit

    @property
    def room(self) -> int:
        return self.limit - self.held

    @property
    def queued(self) -> int:
        """Bytes queued and not yet taken by the runtime."""
        return self.held - self.in_flight

    def put(self, chunk: bytes) -> None:
        """Queue ``chunk`` whatever the budget (replies, statuses, control)."""
        self.chunks.append(chunk)
        size = len(chunk)
        self.held += size
        self.pool.queued += size

    def put_many(self, chunks: list[bytes], size: int) -> None:
        """Queue ``chunks`` (``size`` bytes in all) whatever the budget."""
        self.chunks.extend(chunks)
        self.held += size
        self.pool.queued += size

    def record_gap(self, session_id: str, first: int, last: int) -> None:
        gap = self.gaps.get(session_id)
        if gap is None:
            self.gaps[session_id] = [first, last]
        else:
            gap[1] = last

    def take(self) -> list[bytes]:
        """Hand every queued chunk to the runtime; they stay counted (in
        flight) until ``sent``."""
        chunks = self.chunks
        if chunks:
            self.chunks = []
            self.in_flight = self.held
        return chunks

    def take_released(self) -> list[bytes]:
        """Hand every queued chunk over as already written (a host stack that
        buffers and flow-controls on its own: ``framed=False`` clients)."""
        chunks = self.chunks
        self.chunks = []
        released = self.held - self.in_flight
        self.held -= released
        self.pool.queued -= released
        return chunks

    def sent(self, count: int) -> None:
        """The runtime wrote ``count`` bytes of what it took."""
        if count > self.in_flight:
            count = self.in_flight
        if count <= 0:
            return
        self.in_flight -= count
        self.held -= count
        self.pool.queued -= count

    def release(self) -> None:
        """Forget everything (the peer is gone)."""
        self.pool.queued -= self.held
        self.held = 0
        self.in_flight = 0
        self.chunks = []
        self.gaps = {}


def fan_out(
    targets: dict[K, Outbox],
    data: bytes,
    limit: float,
    ready: list[K],
    overflowed: list[K],
    pool: Pool,
) -> int:
    """Queue ``data`` for every target whose outbox is under ``limit``; the
    others go to ``overflowed``. Returns the number of targets that took it.

    Gaps already recorded for a target are the hub's to flush first
    (``Outbox.gaps`` is checked by the caller's policy, see ``Hub``): a
    target with gaps is put in ``overflowed`` too, so that its gap goes out
    before this entry.
    """
    size = len(data)
    taken = 0
    for key, box in targets.items():
        held = box.held
        if held < limit and not box.gaps:
            box.chunks.append(data)
            box.held = held + size
            taken += 1
            if not box.ready:
                box.ready = True
                ready.append(key)
        else:
            overflowed.append(key)
    pool.queued += taken * size
    return taken

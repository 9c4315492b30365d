"""When a client may act next: reconnection backoff and a send rate.

Both are schedules kept as data, with the time passed in (``now``,
monotonic seconds) and the randomness of the jitter injected (``rng``, a
function returning a float in ``[0, 1)``), so a test can replay any
schedule exactly. The runtime sleeps until the time these return; it never
decides a delay itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["Backoff", "RateBucket"]


class Backoff:
    """Exponential backoff with "equal jitter": the n-th consecutive failure
    (0-based) waits between half and all of ``min(cap, base * 2**n)``.

    Half fixed keeps a fleet of clients from hammering a server that comes
    back (the fixed half grows), half random keeps them from arriving in
    lock step. ``succeeded()`` starts the schedule over. A cap below the base
    caps the first wait too.
    """

    __slots__ = ("base", "cap", "failures", "retry_at", "rng")

    def __init__(
        self, base: float = 0.25, cap: float = 10.0, *, rng: Callable[[], float] = random.random
    ) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError("backoff needs a base and a cap above 0")
        self.base = base
        self.cap = cap
        self.rng = rng
        self.failures = 0
        self.retry_at = -math.inf  # the first attempt is never delayed

    def delay(self, failures: int) -> float:
        """The wait after ``failures + 1`` consecutive failures."""
        ceiling = min(self.cap, self.base * 2.0 ** min(failures, 30))
        return ceiling / 2 + self.rng() * ceiling / 2

    def failed(self, now: float) -> float:
        """An attempt failed at ``now``: the next one is due ``delay`` later
        (returned; also kept in ``retry_at``)."""
        wait = self.delay(self.failures)
        self.failures += 1
        self.retry_at = now + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = -math.inf

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until the next attempt is due (0: now)."""
        return max(0.0, self.retry_at - now)


class RateBucket:
    """A token bucket: at most ``rate`` sends per second on average, bursts
    of ``burst``. Clients keep their control messages well under the
    server's per-connection limit (``RATE_LIMIT``, 200/s with a burst of
    400) so the messages of a big resync are never refused."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float = 100.0, burst: float = 200.0, *, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a rate bucket needs rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend one token at ``now``. Returns how long to wait before the
        send it pays for (0: send at once); the token is spent either way."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        if self.tokens >= 0.0:
            return 0.0
        return -self.tokens / self.rate

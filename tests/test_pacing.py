"""The client cores' schedules (``pcclog_core._pacing``): backoff and the
send rate, with the time and the jitter passed in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcclog_core._pacing import Backoff, RateBucket


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [
        # equal jitter: half of min(cap, base * 2**n) fixed, half random
        (0.0, [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),
        (1.0, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
    ],
)
def test_backoff_schedule_doubles_up_to_the_cap(jitter: float, expected: list[float]) -> None:
    backoff = Backoff(0.25, 10.0, rng=lambda: jitter)
    assert backoff.wait(0.0) == 0.0  # the first attempt is never delayed
    waits = []
    now = 100.0
    for _ in expected:
        waits.append(backoff.failed(now))
        assert backoff.retry_at == now + waits[-1]
        assert backoff.wait(now) == waits[-1]
        now = backoff.retry_at
    assert waits == expected


def test_backoff_success_starts_over() -> None:
    backoff = Backoff(1.0, 8.0, rng=lambda: 0.5)
    for _ in range(5):
        backoff.failed(0.0)
    assert backoff.failures == 5
    backoff.succeeded()
    assert backoff.failures == 0 and backoff.retry_at == -math.inf
    assert backoff.failed(0.0) == 0.75


@given(st.floats(0.01, 5), st.floats(1, 60), st.lists(st.floats(0, 0.999999), max_size=50))
def test_backoff_waits_stay_within_half_and_all_of_the_ceiling(
    base: float, cap: float, jitters: list[float]
) -> None:
    cap = max(cap, base)
    draws = iter(jitters)
    backoff = Backoff(base, cap, rng=lambda: next(draws))
    for n in range(len(jitters)):
        ceiling = min(cap, base * 2**n)
        wait = backoff.failed(0.0)
        assert ceiling / 2 <= wait <= ceiling + 1e-9


def test_backoff_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Backoff(0, 1)
    with pytest.raises(ValueError):
        Backoff(1, 0)
    assert Backoff(2, 1, rng=lambda: 1.0).failed(0.0) == 1.0  # the cap wins


def test_rate_bucket_allows_a_burst_then_paces() -> None:
    bucket = RateBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(0.0) == pytest.approx(0.2)  # the debt adds up
    # Waiting what it said, the next send is due one interval later.
    assert bucket.take(0.2) == pytest.approx(0.1)
    # After a pause the bucket is full again, never fuller.
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) > 0


@given(st.lists(st.floats(0, 0.05), min_size=1, max_size=200))
def test_rate_bucket_never_exceeds_its_rate(gaps: list[float]) -> None:
    # A sender that always sleeps what the bucket says sends at most
    # burst + rate * elapsed messages.
    bucket = RateBucket(rate=100, burst=5, now=0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        now += bucket.take(now)
    assert len(gaps) <= 5 + 100 * now + 1e-6

"""The one backoff: doubling to a cap, jitter within its band, no overflow after many failures."""

from __future__ import annotations

import random

import pytest

from marketprism_dagster.collector.backoff import Backoff


def test_without_jitter_the_delays_are_the_doubling_sequence_up_to_the_cap() -> None:
    b = Backoff(0.25, 30.0, jitter=0)
    assert [b.next() for _ in range(10)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    b.reset()
    assert b.next() == 0.25
    assert [Backoff(0.05, 2.0, jitter=0).delay(a) for a in (0, 1, 5, 6, 40)] == [0.05, 0.1, 1.6, 2.0, 2.0]
    assert Backoff(0.05, 0.02, jitter=0).delay(0) == 0.02  # a cap below the first delay caps it too


def test_a_feed_down_for_a_day_keeps_the_cap_instead_of_overflowing() -> None:
    """A reconnect loop that never succeeds calls next() every 30 s: after ~1000 failures (8.5 h) the old
    ``initial * 2**attempt`` raised OverflowError (int too large to convert to float) and ended the feed."""
    b = Backoff(0.5, 30.0, rng=random.Random(3))
    b.attempt = 2_880  # a day of 30 s retries
    delays = [b.next() for _ in range(100)]
    assert all(15.0 <= d <= 30.0 for d in delays)
    assert Backoff(0.5, 30.0, jitter=0).delay(10**6) == 30.0


def test_jitter_stays_within_its_band() -> None:
    b = Backoff(1.0, 8.0, rng=random.Random(7), jitter=0.25)
    for base in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert 0.75 * base <= b.next() <= base
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)

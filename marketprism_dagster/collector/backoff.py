"""Capped exponential backoff, with or without jitter: the one backoff of the package.

Reconnects and REST retries (jitter spreads the reconnects of many feeds), the writer's store and dead-letter
retries, the publisher's per-message retries and cold replication's retries all take their delays here.
"""

from __future__ import annotations

import math
import random


class Backoff:
    """Delays initial, 2x initial, ... capped at ``cap``; each multiplied by a random factor in
    [1 - jitter, 1] (jitter 0: exactly the doubling sequence)."""

    def __init__(
        self, initial: float = 0.5, cap: float = 30.0, rng: random.Random | None = None, *, jitter: float = 0.5
    ) -> None:
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], got {jitter}")
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()
        # the first attempt whose doubling reaches the cap: later attempts never compute 2**attempt (which
        # overflows a float after ~1000 failures, e.g. a feed down for a day)
        self._capped_at = max(0, math.ceil(math.log2(cap / initial))) if initial > 0 and cap > initial else 0

    def base(self, attempt: int) -> float:
        """The delay of the ``attempt``-th retry (0-based) before jitter."""
        return min(self.cap, self.initial * 2.0 ** min(attempt, self._capped_at))

    def delay(self, attempt: int) -> float:
        """The delay of the ``attempt``-th retry (0-based), jitter applied."""
        base = self.base(attempt)
        return base if self.jitter == 0 else base * (1 - self.jitter + self.jitter * self._rng.random())

    def next(self) -> float:
        delay = self.delay(self.attempt)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

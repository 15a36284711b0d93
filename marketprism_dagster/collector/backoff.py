"""Capped exponential backoff with jitter, for reconnects and REST retries."""

from __future__ import annotations

import random


class Backoff:
    """Delays initial, 2x initial, ... capped at ``cap``; each multiplied by a random factor in [0.5, 1]."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        base = min(self.cap, self.initial * 2**self.attempt)
        self.attempt += 1
        return base * (0.5 + 0.5 * self._rng.random())

    def reset(self) -> None:
        self.attempt = 0

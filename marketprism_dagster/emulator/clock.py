"""Event-time clock of the emulator: wall clock by default, injectable for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Source of exchange event times (ms since the Unix epoch, UTC)."""

    def now_ms(self) -> int: ...


class WallClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start_ms: int) -> None:
        self._now = start_ms

    def now_ms(self) -> int:
        return self._now

    def set(self, ms: int) -> None:
        self._now = ms

    def advance(self, ms: int) -> None:
        self._now += ms


class OffsetClock:
    """The wall clock moved by a fixed offset: a venue whose "now" is elsewhere in time, running at real speed
    (a test places a funding settlement a few seconds ahead without waiting hours for one)."""

    def __init__(self, offset_ms: int) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

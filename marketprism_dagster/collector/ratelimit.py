"""REST rate limits: the venue's request-weight budget per minute and 429/418 Retry-After.

One ``RateLimiter`` per REST host, built from the venue's declaration (its market's
``weight_per_minute`` and its ``weight_header``). Before a request, ``acquire(weight)`` waits while
the host is in a Retry-After back-off, or while the request would push the used weight of the
current minute past ``limit * headroom`` (weight is counted per calendar minute). After the answer,
``update(status, headers)`` records the venue's own count (the weight header) and any Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

DEFAULT_RETRY_AFTER_S = {429: 1.0, 418: 120.0}  # when a venue omits Retry-After


class RateLimiter:
    def __init__(
        self,
        weight_limit: int | None = None,
        *,
        weight_header: str | None = None,
        headroom: float = 0.9,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.weight_limit = weight_limit
        self.weight_header = weight_header  # response header with the weight used this minute (None: none)
        self.headroom = headroom
        self.clock = clock
        self.minute = -1
        self.used = 0  # weight used in the current minute (the venue's figure when it sends one)
        self.blocked_until = 0.0  # wall-clock seconds
        self.rate_limited = 0  # 429 answers
        self.banned = 0  # 418 answers

    def _roll(self, now: float) -> None:
        minute = int(now // 60)
        if minute != self.minute:
            self.minute, self.used = minute, 0

    def delay_for(self, weight: int) -> float:
        """Seconds to wait before a request of this weight may go out (0 = now)."""
        now = self.clock()
        self._roll(now)
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.weight_limit is not None and self.used + weight > self.weight_limit * self.headroom:
            return (self.minute + 1) * 60 - now + 0.05
        return 0.0

    async def acquire(self, weight: int = 1) -> float:
        """Wait until the request may go out, then charge its weight; returns the seconds waited."""
        waited = 0.0
        while (d := self.delay_for(weight)) > 0:
            await asyncio.sleep(d)
            waited += d
        self.used += weight
        return waited

    def update(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Record the answer; returns the back-off in seconds for 429/418, else None."""
        now = self.clock()
        self._roll(now)
        used = headers.get(self.weight_header) if self.weight_header else None
        if used is not None and used.isdigit():
            self.used = int(used)
        if status not in (429, 418):
            return None
        if status == 429:
            self.rate_limited += 1
        else:
            self.banned += 1
        retry_after = parse_retry_after(headers.get("Retry-After"), DEFAULT_RETRY_AFTER_S[status])
        self.blocked_until = max(self.blocked_until, now + retry_after)
        return retry_after


def parse_retry_after(value: str | None, default: float) -> float:
    """Retry-After in seconds (the venues send integer seconds); the default when absent or unreadable."""
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        return default
    return seconds if seconds >= 0 else default

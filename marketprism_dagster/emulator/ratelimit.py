"""A per-minute request-weight budget: used weight on every answer, 429 past the limit, then 418.

The rule: each request costs a weight; the venue reports the weight used in the current
minute on every answer; past the limit it answers 429 with Retry-After; a client that keeps
going after a 429 is banned with 418 and Retry-After until the ban ends (2 min, doubling for
repeat offenders). A venue module owns a budget per server and names its header and limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from .clock import Clock

WINDOW_MS = 60_000
BAN_MS = 120_000


@dataclass
class Verdict:
    status: int  # 200, 429 or 418
    used: int
    retry_after: int = 0  # seconds


class WeightBudget:
    def __init__(self, limit: int, clock: Clock) -> None:
        self.limit = limit
        self.clock = clock
        self.window = -1
        self.used = 0
        self.warned = False
        self.banned_until = 0
        self.bans = 0

    def charge(self, weight: int) -> Verdict:
        now = self.clock.now_ms()
        window = now // WINDOW_MS
        if window != self.window:
            self.window, self.used, self.warned = window, 0, False
        if now < self.banned_until:
            return Verdict(418, self.used, -(-(self.banned_until - now) // 1000))
        if self.used + weight > self.limit:
            if self.warned:
                self.bans += 1
                self.banned_until = now + BAN_MS * 2 ** (self.bans - 1)
                return Verdict(418, self.used, -(-(self.banned_until - now) // 1000))
            self.warned = True
            return Verdict(429, self.used, -(-((window + 1) * WINDOW_MS - now) // 1000))
        self.used += weight
        return Verdict(200, self.used)

"""Wall-clock milliseconds and the spans the package counts in (the one home of now_ms, HOUR_MS, DAY_MS)."""

from __future__ import annotations

import time

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS


def now_ms() -> int:
    """Unix time in milliseconds (UTC)."""
    return time.time_ns() // 1_000_000

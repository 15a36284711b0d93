"""Deterministic slow series: funding, open interest, long/short ratios, DVOL.

Each value is a pure function of (seed, key, timestamp), so a REST poll and a stream push
for the same timestamp agree and a repeated poll returns identical points.
"""

from __future__ import annotations

import hashlib
import math

from .synth import base_price

MINUTE_MS = 60_000
FUNDING_PERIOD_MS = 8 * 3_600_000

PERIOD_MS = {
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 3_600_000,
    "1H": 3_600_000,
    "2h": 7_200_000,
    "2H": 7_200_000,
    "4h": 14_400_000,
    "4H": 14_400_000,
    "6h": 21_600_000,
    "6H": 21_600_000,
    "12h": 43_200_000,
    "12H": 43_200_000,
    "1d": 86_400_000,
    "1D": 86_400_000,
}


def unit(seed: int, key: str, ts: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, key, ts)."""
    digest = hashlib.blake2b(f"{seed}:{key}:{ts}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def wave(seed: int, key: str, ts: int, period_ms: int = 3_600_000) -> float:
    """A smooth value in [-1, 1] with a little deterministic noise."""
    phase = unit(seed, key, 0) * 2 * math.pi
    return 0.8 * math.sin(ts / period_ms * 2 * math.pi + phase) + 0.2 * (2 * unit(seed, key, ts) - 1)


def floor_to(ts: int, period_ms: int) -> int:
    return ts - ts % period_ms


def next_boundary(ts: int, period_ms: int) -> int:
    return floor_to(ts, period_ms) + period_ms


def funding_rate(seed: int, symbol: str, ts: int) -> float:
    return 0.0001 + 0.0002 * wave(seed, f"fund:{symbol}", floor_to(ts, MINUTE_MS), 6 * 3_600_000)


def open_interest_base(seed: int, symbol: str, ts: int) -> float:
    """Open interest in base-asset units."""
    scale = {"BTC": 80_000.0, "ETH": 1_500_000.0}.get(symbol.split("-")[0], 5_000_000.0)
    return scale * (1 + 0.05 * wave(seed, f"oi:{symbol}", ts, 12 * 3_600_000))


def long_share(seed: int, key: str, ts: int) -> float:
    """Long fraction in (0.3, 0.7), rounded to 4 decimals."""
    return round(0.5 + 0.18 * wave(seed, key, ts, 24 * 3_600_000), 4)


def ratio_strings(seed: int, key: str, ts: int) -> tuple[str, str, str]:
    """(longShortRatio, long, short) as 4-decimal strings with long + short == 1."""
    long = long_share(seed, key, ts)
    short = round(1 - long, 4)
    return f"{long / short:.4f}", f"{long:.4f}", f"{short:.4f}"


def dvol(seed: int, currency: str, ts: int) -> float:
    base = 55.0 if currency.upper() == "BTC" else 70.0
    return round(base + 8 * wave(seed, f"dvol:{currency}", ts, 6 * 3_600_000), 2)


def index_price(seed: int, symbol: str, ts: int) -> float:
    return base_price(symbol.split("-")[0]) * (1 + 0.002 * wave(seed, f"idx:{symbol}", floor_to(ts, 1000)))


def ceil_to(ts: int, period_ms: int) -> int:
    return -(-ts // period_ms) * period_ms


def series_window(period_ms: int, now: int, limit: int, start: int | None = None, end: int | None = None,
                  oldest: int | None = None, from_start: bool = False) -> list[int]:
    """Period boundaries ``ts`` with start <= ts <= end, ts <= now and ts >= oldest (retention),
    oldest first, at most ``limit``: the first ones from ``start`` when ``from_start`` (a
    "start + limit" paging rule), else the newest ones."""
    last = floor_to(now, period_ms)
    if end is not None:
        last = min(last, floor_to(end, period_ms))
    first = 0 if oldest is None else ceil_to(max(0, oldest), period_ms)
    if start is not None:
        first = max(first, ceil_to(start, period_ms))
    if limit < 1 or last < first:
        return []
    if from_start and start is not None:
        return list(range(first, min(last, first + (limit - 1) * period_ms) + 1, period_ms))
    return list(range(max(first, last - (limit - 1) * period_ms), last + 1, period_ms))


def settled_funding_rate(seed: int, symbol: str, funding_time: int) -> float:
    """The rate settled at ``funding_time``: the last prediction the streams published before it."""
    return funding_rate(seed, symbol, funding_time - 1)


def dvol_candle(seed: int, currency: str, ts: int, step_ms: int) -> list[float | int]:
    """[ts, open, high, low, close] of DVOL over [ts, ts + step): the per-second values a DVOL
    stream pushes (value of second s = dvol(seed, currency, s)).
    Exact for candles of up to 60 seconds; longer ones take high/low over 60 evenly spaced
    seconds including the first and the last."""
    seconds = max(1, step_ms // 1000)
    if seconds <= 60:
        stamps = [ts + k * 1000 for k in range(seconds)]
    else:
        stamps = [ts + (k * (seconds - 1) // 59) * 1000 for k in range(60)]
    values = [dvol(seed, currency, t) for t in stamps]
    return [ts, values[0], max(values), min(values), values[-1]]

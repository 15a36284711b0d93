"""The ledger rows of one committed range (pure): values in ``tables.LEDGER`` column order.

A range gets one ``'*'`` row (the messages the stream held in it, the rows inserted, the dead
letters, the event-time span, the hour of its earliest row or 0) and one row per (data type,
hour of event time) with that hour's row count, event-time span and the type's insert token.
Times are int ms, the hour int seconds (the wire forms of ``LEDGER``'s columns).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from marketprism_dagster.ledger.tables import ALL_TYPES
from marketprism_dagster.timeutil import HOUR_MS


@dataclass(frozen=True, slots=True)
class TypeRows:
    """The rows of one data type a range inserts: their insert token and event times (int ms)."""

    data_type: str
    token: str
    timestamps: Iterable[int]


def hour_groups(timestamps: Iterable[int]) -> dict[int, list[int]]:
    """Hour start (int s) -> [rows, min ms, max ms]."""
    groups: dict[int, list[int]] = {}
    for ts in timestamps:
        hour = ts // HOUR_MS * 3600
        g = groups.get(hour)
        if g is None:
            groups[hour] = [1, ts, ts]
        else:
            g[0] += 1
            if ts < g[1]:
                g[1] = ts
            if ts > g[2]:
                g[2] = ts
    return groups


def ledger_rows(stream: str, first_seq: int, last_seq: int, messages: int, dead_letters: int, range_token: str,
                types: Iterable[TypeRows], committed_at_ms: int) -> list[tuple[Any, ...]]:
    """The ``'*'`` row first, then one row per (data type, hour), types and hours in order."""
    per_hour: list[tuple[Any, ...]] = []
    all_lo: int | None = None
    all_hi: int | None = None
    total = 0
    for t in sorted(types, key=lambda t: t.data_type):
        for hour, (n, lo, hi) in sorted(hour_groups(t.timestamps).items()):
            per_hour.append((stream, first_seq, last_seq, t.data_type, hour, 0, n, 0, lo, hi, t.token,
                             committed_at_ms))
            total += n
            all_lo = lo if all_lo is None else min(all_lo, lo)
            all_hi = hi if all_hi is None else max(all_hi, hi)
    star_hour = all_lo // HOUR_MS * 3600 if all_lo is not None else 0
    star = (stream, first_seq, last_seq, ALL_TYPES, star_hour, messages, total, dead_letters, all_lo, all_hi,
            f"{range_token}:{ALL_TYPES}", committed_at_ms)
    return [star, *per_hour]

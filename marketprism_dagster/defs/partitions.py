"""Hourly (hot) and daily (cold) partitions from the fixed ``seal.start_date``.

The start never moves with the clock: a code reload keeps every partition (and its seal) in
place. Which partitions automation still looks at is bounded by the hot TTL and JetStream
retention (``assets.hot_lookback`` / ``assets.cold_lookback``), not by the partition range.
"""

from __future__ import annotations

import dagster as dg

from marketprism_dagster.config import Settings


def start_day(settings: Settings) -> str:
    return settings.seal.start_date.isoformat()


def hourly(settings: Settings) -> dg.HourlyPartitionsDefinition:
    return dg.HourlyPartitionsDefinition(start_date=f"{start_day(settings)}-00:00", timezone="UTC")


def daily(settings: Settings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start_day(settings), timezone="UTC")

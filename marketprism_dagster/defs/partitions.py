"""Hourly (hot) and daily (cold) partitions, starting at the hot retention horizon."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg

from marketprism_dagster.config import Settings


def start_day(settings: Settings, today: datetime | None = None) -> str:
    """Hot rows live ``storage.hot_ttl_days``; partitions older than that cannot be sealed."""
    today = today or datetime.now(UTC)
    return (today - timedelta(days=settings.storage.hot_ttl_days)).strftime("%Y-%m-%d")


def hourly(settings: Settings) -> dg.HourlyPartitionsDefinition:
    return dg.HourlyPartitionsDefinition(start_date=f"{start_day(settings)}-00:00", timezone="UTC")


def daily(settings: Settings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start_day(settings), timezone="UTC")

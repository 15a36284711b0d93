"""Hourly (hot) and daily (cold) partitions from a fixed start.

The start never moves with the clock: a code reload keeps every partition (and its seal) in
place. It is ``seal.start_date`` when set; otherwise two hours before the hour this deployment
first started, recorded once in ``<data_dir>/partitions-start.json`` and read back by every
later process. So a new deployment has no partitions long before its first data, and automation's catch-up (bounded by
the hot TTL and JetStream retention: ``assets.hot_lookback`` / ``assets.cold_lookback``) never
asks for hundreds of empty hours on its first tick. The first day may be partial: its cold
partition replicates the hours that exist.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from marketprism_dagster.config import Settings

START_FILE = "partitions-start.json"
START_MARGIN = timedelta(hours=2)


def start_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / START_FILE


def start_hour(settings: Settings, now: datetime | None = None) -> datetime:
    """The first hourly partition: ``seal.start_date`` at 00:00, or the recorded deployment start."""
    if settings.seal.start_date is not None:
        d = settings.seal.start_date
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    path = start_path(settings)
    try:
        return datetime.fromisoformat(json.loads(path.read_text())["start"]).astimezone(UTC)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    # two hours of margin: REST backfills (e.g. DVOL candles) on the first start reach back before it
    hour = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0) - START_MARGIN
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"start": hour.isoformat()}))
    try:
        os.link(tmp, path)  # first writer wins: a concurrent process reads the recorded start back
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return datetime.fromisoformat(json.loads(path.read_text())["start"]).astimezone(UTC)


def hourly(settings: Settings) -> dg.HourlyPartitionsDefinition:
    return dg.HourlyPartitionsDefinition(start_date=start_hour(settings).strftime("%Y-%m-%d-%H:%M"), timezone="UTC")


def daily(settings: Settings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=start_hour(settings).strftime("%Y-%m-%d"), timezone="UTC")

"""Replicate one day of a data type from hot to cold, idempotently, and verify it.

The day's FINAL hot rows are written into a staging table shaped like the cold table, then
``REPLACE PARTITION`` swaps the cold partition atomically: re-running a day replaces it, never
duplicates. Hot and cold on one server copy with INSERT ... SELECT; on two servers the rows
stream through the client as Arrow. Verified by count and content checksum (the sum of
cityHash64 over all columns of the FINAL rows); retried 3 times (1 s, x2) on failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from marketprism_dagster.config import Settings
from marketprism_dagster.integrity import content_digest, day_where
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage.base import Store

log = structlog.get_logger(__name__)

DAY_MS = 86_400_000
STAGING_PREFIX = "_staging_"


class ReplicationFailed(Exception):
    """The cold copy of the day does not match hot after all retries."""


@dataclass
class ReplicationReport:
    data_type: str
    day_ms: int
    rows: int
    checksum: int
    attempts: int
    mode: str  # insert-select | client-stream

    def metadata(self) -> dict[str, Any]:
        return {
            "day": datetime.fromtimestamp(self.day_ms / 1000, UTC).date().isoformat(),
            "rows": self.rows,
            "checksum": str(self.checksum),
            "attempts": self.attempts,
            "mode": self.mode,
        }


def day_start_ms(day: datetime | int) -> int:
    ms = day if isinstance(day, int) else int(day.timestamp() * 1000)
    return ms - ms % DAY_MS


def partition_id(day_ms: int) -> str:
    """The partition id of ``toYYYYMMDD(timestamp)`` for the day."""
    return datetime.fromtimestamp(day_ms / 1000, UTC).strftime("%Y%m%d")


def _copy_once(hot: Store, cold: Store, settings: Settings, data_type: str, day_ms: int) -> str:
    st = settings.storage
    cols = ", ".join(f"`{c}`" for c in RECORD_TYPES[data_type].column_names)
    staging = f"{STAGING_PREFIX}{data_type}_{partition_id(day_ms)}"
    target = f"`{st.cold_database}`.`{data_type}`"
    stage = f"`{st.cold_database}`.`{staging}`"
    where = day_where(day_ms)
    cold.execute(f"DROP TABLE IF EXISTS {stage}")
    cold.execute(f"CREATE TABLE {stage} AS {target}")
    try:
        if hot is cold:
            mode = "insert-select"
            cold.execute(
                f"INSERT INTO {stage} ({cols}) SELECT {cols} FROM `{st.hot_database}`.`{data_type}` FINAL WHERE {where}"
            )
        else:
            mode = "client-stream"
            data = hot.query_arrow(f"SELECT {cols} FROM `{st.hot_database}`.`{data_type}` FINAL WHERE {where}")
            cold.insert_arrow_table(st.cold_database, staging, data)
        if int(cold.query_value(f"SELECT count() FROM {stage}") or 0) == 0:
            cold.execute(f"ALTER TABLE {target} DROP PARTITION ID '{partition_id(day_ms)}'")  # an empty day
        else:
            cold.execute(f"ALTER TABLE {target} REPLACE PARTITION ID '{partition_id(day_ms)}' FROM {stage}")
    finally:
        cold.execute(f"DROP TABLE IF EXISTS {stage}")
    return mode


def replicate_day(
    hot: Store,
    settings: Settings,
    data_type: str,
    day: datetime | int,
    *,
    cold: Store | None = None,
    tries: int = 3,
    backoff_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplicationReport:
    """Copy the day's hot rows to cold, replacing the cold partition, then verify count + checksum."""
    d = day_start_ms(day)
    cold_store = cold or hot
    st = settings.storage
    delay = backoff_s
    last_error = ""
    for attempt in range(1, tries + 1):
        try:
            mode = _copy_once(hot, cold_store, settings, data_type, d)
            hot_rows, hot_sum = content_digest(hot, st.hot_database, data_type, day_where(d))
            cold_rows, cold_sum = content_digest(cold_store, st.cold_database, data_type, day_where(d))
            if (hot_rows, hot_sum) == (cold_rows, cold_sum):
                log.info("replicate.day", data_type=data_type, day=partition_id(d), rows=hot_rows, attempt=attempt)
                return ReplicationReport(data_type, d, hot_rows, hot_sum, attempt, mode)
            last_error = f"hot {hot_rows} rows / {hot_sum} vs cold {cold_rows} rows / {cold_sum}"
        except Exception as exc:  # retried: a server hiccup or a lock held too long
            last_error = f"{type(exc).__name__}: {exc}"
        log.warning("replicate.retry", data_type=data_type, day=partition_id(d), attempt=attempt, error=last_error)
        if attempt < tries:
            sleep(delay)
            delay *= 2
    raise ReplicationFailed(
        f"{data_type} {partition_id(d)}: cold does not match hot after {tries} tries ({last_error})"
    )

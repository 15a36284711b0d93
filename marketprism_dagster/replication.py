"""Replicate one day of a data type from hot to cold, idempotently, and verify it.

The day's FINAL hot rows are written into a staging table shaped like the cold table, then
``REPLACE PARTITION`` swaps the cold partition atomically: re-running a day replaces it, never
duplicates. Hot and cold on one server copy with INSERT ... SELECT; on two servers the rows
stream through the client as Arrow. Verified by count and content checksum (the sum of
cityHash64 over all columns of the FINAL rows); retried 3 times (1 s, x2) on failure.

No replication destroys archived data: a day older than the hot TTL (hot may have lost rows) is
refused, and so is a copy that would replace a non-empty cold partition with fewer rows (or drop
it); both only with ``force`` (``marketprism repair --force``, run config ``force: true`` on
cold/<type>). The refusal leaves cold untouched and is never retried.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.config import Settings
from marketprism_dagster.integrity import content_digest, day_where
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.sealing import oldest_sealable_ms
from marketprism_dagster.storage.base import Store
from marketprism_dagster.storage.sql import column_list, insert_sql
from marketprism_dagster.timeutil import DAY_MS, now_ms

log = structlog.get_logger(__name__)

STAGING_PREFIX = "_staging_"


class ReplicationFailed(Exception):
    """The cold copy of the day does not match hot after all retries."""


class ReplicationRefused(ReplicationFailed):
    """Replicating would destroy archived cold rows (or copy a day hot no longer holds); not retried."""


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


def _cold_rows(cold: Store, settings: Settings, data_type: str, day_ms: int) -> int:
    db = settings.storage.cold_database
    return int(cold.query_value(f"SELECT count() FROM `{db}`.`{data_type}` FINAL WHERE {day_where(day_ms)}") or 0)


def _refuse_shrink(data_type: str, day_ms: int, staged: int, archived: int) -> ReplicationRefused:
    day = datetime.fromtimestamp(day_ms / 1000, UTC).date().isoformat()
    log.warning("replicate.refused_shrink", data_type=data_type, day=day, hot_rows=staged, cold_rows=archived)
    return ReplicationRefused(
        f"{data_type} {day}: cold holds {archived} rows but hot has only {staged}; replacing the cold partition "
        f"would delete {archived - staged} archived rows (hot rows expired or were lost), so cold is left unchanged. "
        f"If hot is known to be right, re-run with `marketprism repair --force` or materialize cold/{data_type} "
        "with run config force: true"
    )


def _copy_once(hot: Store, cold: Store, settings: Settings, data_type: str, day_ms: int, force: bool = False) -> str:
    st = settings.storage
    names = RECORD_TYPES[data_type].column_names
    cols = column_list(names)
    staging = f"{STAGING_PREFIX}{data_type}_{partition_id(day_ms)}"
    target = f"`{st.cold_database}`.`{data_type}`"
    stage = f"`{st.cold_database}`.`{staging}`"
    where = day_where(day_ms)
    cold.execute(f"DROP TABLE IF EXISTS {stage}")
    cold.execute(f"CREATE TABLE {stage} AS {target}")
    try:
        if hot is cold:
            mode = "insert-select"
            cold.execute(insert_sql(st.cold_database, staging, names,
                                    select=f"SELECT {cols} FROM `{st.hot_database}`.`{data_type}` FINAL WHERE {where}"))
        else:
            mode = "client-stream"
            data = hot.query_arrow(f"SELECT {cols} FROM `{st.hot_database}`.`{data_type}` FINAL WHERE {where}")
            cold.insert_arrow_table(st.cold_database, staging, data)
        staged = int(cold.query_value(f"SELECT count() FROM {stage}") or 0)
        archived = _cold_rows(cold, settings, data_type, day_ms)
        if staged < archived and not force:
            raise _refuse_shrink(data_type, day_ms, staged, archived)
        if staged == 0:
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
    force: bool = False,
    now: int | None = None,
) -> ReplicationReport:
    """Copy the day's hot rows to cold, replacing the cold partition, then verify count + checksum.

    Raises ReplicationRefused (cold untouched) for a day older than the hot TTL or a copy with fewer
    rows than cold already holds, unless ``force``."""
    d = day_start_ms(day)
    oldest = oldest_sealable_ms(settings, now_ms() if now is None else now)
    if d < oldest and not force:
        label = partition_id(d)
        log.warning("replicate.beyond_hot_ttl", data_type=data_type, day=label)
        raise ReplicationRefused(
            f"{data_type} {label} is older than the hot TTL (storage.hot_ttl_days={settings.storage.hot_ttl_days}): "
            "hot may already have lost rows of that day, so it is not copied over cold; cold is left unchanged. "
            "Use --force (run config force: true) only to overwrite cold with what hot still holds"
        )
    cold_store = cold or hot
    st = settings.storage
    retry = Backoff(backoff_s, backoff_s * 2**tries, jitter=0)
    last_error = ""
    for attempt in range(1, tries + 1):
        try:
            mode = _copy_once(hot, cold_store, settings, data_type, d, force)
            hot_rows, hot_sum = content_digest(hot, st.hot_database, data_type, day_where(d))
            cold_rows, cold_sum = content_digest(cold_store, st.cold_database, data_type, day_where(d))
            if (hot_rows, hot_sum) == (cold_rows, cold_sum):
                log.info("replicate.day", data_type=data_type, day=partition_id(d), rows=hot_rows, attempt=attempt)
                return ReplicationReport(data_type, d, hot_rows, hot_sum, attempt, mode)
            last_error = f"hot {hot_rows} rows / {hot_sum} vs cold {cold_rows} rows / {cold_sum}"
        except ReplicationRefused:
            raise
        except Exception as exc:  # retried: a server hiccup or a lock held too long
            last_error = f"{type(exc).__name__}: {exc}"
        log.warning("replicate.retry", data_type=data_type, day=partition_id(d), attempt=attempt, error=last_error)
        if attempt < tries:
            sleep(retry.next())
    raise ReplicationFailed(
        f"{data_type} {partition_id(d)}: cold does not match hot after {tries} tries ({last_error})"
    )

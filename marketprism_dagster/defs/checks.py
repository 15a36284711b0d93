"""Asset checks: the seeds' window rules, lag, duplicates, ledger gaps, hot/cold parity, schema parity."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from marketprism_dagster import integrity
from marketprism_dagster.config import Settings
from marketprism_dagster.defs.assets import cold_key, hot_key
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage import Store
from resources import ClickHouseResource

DAY_MS = 86_400_000


def to_dagster(result: integrity.CheckResult) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.WARN if result.severity == "WARN" else dg.AssetCheckSeverity.ERROR
    meta: dict[str, Any] = {
        k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in result.metadata.items()
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    return dg.AssetCheckResult(passed=result.passed, severity=severity, description=result.description, metadata=meta)


def sealed_horizon_ms(instance: dg.DagsterInstance, data_type: str, hourly: dg.TimeWindowPartitionsDefinition) -> int:
    """End of the newest UTC day whose 24 hot hours are all sealed (0 if none)."""
    done = instance.get_materialized_partitions(hot_key(data_type))
    days: dict[str, int] = {}
    for key in done:
        days[key[:10]] = days.get(key[:10], 0) + 1
    full = sorted(d for d, n in days.items() if n >= 24)
    if not full:
        return 0
    start = datetime.strptime(full[-1], "%Y-%m-%d").replace(tzinfo=UTC)
    return int(start.timestamp() * 1000) + DAY_MS


def store_check(
    key: dg.AssetKey,
    name: str,
    description: str,
    rule: Callable[[Store, Settings, str], integrity.CheckResult],
    data_type: str,
) -> dg.AssetChecksDefinition:
    """An asset check that runs one integrity ``rule(store, settings, data_type)`` as it is."""

    @dg.asset_check(asset=key, name=name, description=description)
    def check(clickhouse: ClickHouseResource) -> dg.AssetCheckResult:
        settings = clickhouse.load_settings()
        with clickhouse.open() as store:
            return to_dagster(rule(store, settings, data_type))

    return check


def hot_checks(data_type: str) -> list[dg.AssetChecksDefinition]:
    key = hot_key(data_type)

    @dg.asset_check(asset=key, name="recent_window", description="rows within the type's window (window_rules)")
    def recent_window(clickhouse: ClickHouseResource) -> dg.AssetCheckResult:
        settings = clickhouse.load_settings()
        feeds = integrity.collector_feed_status(settings, data_type) if data_type == "liquidation" else None
        with clickhouse.open() as store:
            return to_dagster(integrity.window_presence(store, settings, data_type, feeds=feeds))

    data_lag = store_check(
        key, "data_lag", "newest event time vs now (lag_warn_s / lag_error_s)", integrity.data_lag, data_type
    )
    duplicates = store_check(key, "duplicates", "rows sharing an identity: must be 0", integrity.duplicates, data_type)

    @dg.asset_check(asset=key, name="ledger_gaps", description="JetStream sequence ranges never committed: must be 0")
    def ledger_gaps(clickhouse: ClickHouseResource) -> dg.AssetCheckResult:
        settings = clickhouse.load_settings()
        stream = settings.stream_for(data_type) or ""
        with clickhouse.open() as store:
            return to_dagster(integrity.ledger_gaps(store, settings, stream))

    return [recent_window, data_lag, duplicates, ledger_gaps]


def cold_checks(
    data_type: str, daily: dg.PartitionsDefinition, hourly: dg.TimeWindowPartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    key = cold_key(data_type)

    @dg.asset_check(
        asset=key,
        name="hot_cold_parity",
        partitions_def=daily,
        blocking=True,
        description="the day's hot and cold rows match in count and content checksum",
    )
    def parity(context: dg.AssetCheckExecutionContext, clickhouse: ClickHouseResource) -> dg.AssetCheckResult:
        settings = clickhouse.load_settings()
        day = datetime.strptime(context.partition_key, "%Y-%m-%d").replace(tzinfo=UTC)
        with clickhouse.open() as store:
            return to_dagster(integrity.hot_cold_parity(store, settings, data_type, int(day.timestamp() * 1000)))

    @dg.asset_check(asset=key, name="hot_cold_lag", description="cold trails the replicable hot data (warn > 60 min)")
    def lag(context: dg.AssetCheckExecutionContext, clickhouse: ClickHouseResource) -> dg.AssetCheckResult:
        settings = clickhouse.load_settings()
        horizon = sealed_horizon_ms(context.instance, data_type, hourly)
        with clickhouse.open() as store:
            return to_dagster(integrity.hot_cold_lag(store, settings, data_type, horizon_ms=horizon))

    schema = store_check(
        key, "schema_parity", "hot and cold tables have identical columns", integrity.schema_parity, data_type
    )

    return [parity, lag, schema]


def build_checks(
    settings: Settings, hourly: dg.TimeWindowPartitionsDefinition, daily: dg.PartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    out: list[dg.AssetChecksDefinition] = []
    for t in RECORD_TYPES:
        out.extend(hot_checks(t))
        out.extend(cold_checks(t, daily, hourly))
    return out


def window_check_keys(checks: list[dg.AssetChecksDefinition]) -> list[dg.AssetCheckKey]:
    """The unpartitioned checks: what the checks-only job runs every few minutes."""
    keys: list[dg.AssetCheckKey] = []
    for c in checks:
        if c.partitions_def is None:
            keys.extend(c.check_keys)
    return keys

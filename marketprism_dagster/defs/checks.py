"""Asset checks: the seeds' window rules, lag, duplicates, ledger gaps, hot/cold parity, schema parity."""

from collections.abc import Callable, Iterator
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


def to_dagster(
    result: integrity.CheckResult, asset_key: dg.AssetKey | None = None, check_name: str | None = None
) -> dg.AssetCheckResult:
    severity = dg.AssetCheckSeverity.WARN if result.severity == "WARN" else dg.AssetCheckSeverity.ERROR
    meta: dict[str, Any] = {
        k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in result.metadata.items()
    }
    meta = {k: v for k, v in meta.items() if v is not None}
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=severity,
        description=result.description,
        metadata=meta,
        asset_key=asset_key,
        check_name=check_name,
    )


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


# A check rule: (store, settings, data_type, instance) -> result. Rules of one asset run as ONE step
# (a multi-asset check that can be subset): one store session and one step's overhead instead of
# one per rule, while the UI still shows every check on its own.
Rule = Callable[[Store, Settings, str, dg.DagsterInstance], integrity.CheckResult]


def rules_check(key: dg.AssetKey, rules: dict[str, tuple[str, Rule]], data_type: str) -> dg.AssetChecksDefinition:
    """One multi-asset check evaluating the selected ``rules`` (name -> (description, rule)) of ``key``."""
    specs = [dg.AssetCheckSpec(name, asset=key, description=desc) for name, (desc, _) in rules.items()]

    @dg.multi_asset_check(name=f"{key.to_python_identifier()}_checks", specs=specs, can_subset=True)
    def check(
        context: dg.AssetCheckExecutionContext, clickhouse: ClickHouseResource
    ) -> Iterator[dg.AssetCheckResult]:
        settings = clickhouse.load_settings()
        selected = {k.name for k in context.selected_asset_check_keys}
        with clickhouse.open() as store:
            for name, (_, rule) in rules.items():
                if name in selected:
                    yield to_dagster(rule(store, settings, data_type, context.instance), key, name)

    return check


def _recent_window(store: Store, settings: Settings, data_type: str, _: dg.DagsterInstance) -> integrity.CheckResult:
    feeds = integrity.collector_feed_status(settings, data_type) if RECORD_TYPES[data_type].sparse else None
    return integrity.window_presence(store, settings, data_type, feeds=feeds)


def _ledger_gaps(store: Store, settings: Settings, data_type: str, _: dg.DagsterInstance) -> integrity.CheckResult:
    return integrity.ledger_gaps(store, settings, settings.stream_for(data_type) or "")


def _plain(rule: Callable[[Store, Settings, str], integrity.CheckResult]) -> Rule:
    return lambda store, settings, data_type, _: rule(store, settings, data_type)


def hot_checks(data_type: str) -> list[dg.AssetChecksDefinition]:
    rules: dict[str, tuple[str, Rule]] = {
        "recent_window": ("rows within the type's window (window_rules)", _recent_window),
        "data_lag": ("newest event time vs now (lag_warn_s / lag_error_s)", _plain(integrity.data_lag)),
        "duplicates": ("rows sharing an identity: must be 0", _plain(integrity.duplicates)),
        "ledger_gaps": ("JetStream sequence ranges never committed: must be 0", _ledger_gaps),
    }
    return [rules_check(hot_key(data_type), rules, data_type)]


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

    def lag(store: Store, settings: Settings, data_type: str, instance: dg.DagsterInstance) -> integrity.CheckResult:
        horizon = sealed_horizon_ms(instance, data_type, hourly)
        return integrity.hot_cold_lag(store, settings, data_type, horizon_ms=horizon)

    rules: dict[str, tuple[str, Rule]] = {
        "hot_cold_lag": ("cold trails the replicable hot data (warn > 60 min)", lag),
        "schema_parity": ("hot and cold tables have identical columns", _plain(integrity.schema_parity)),
    }
    return [parity, rules_check(key, rules, data_type)]


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

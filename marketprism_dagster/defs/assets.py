"""hot/<type> (hourly: seal the closed hour) and cold/<type> (daily: replicate + verify) assets.

Automation catches up: every partition still missing inside a bounded lookback is requested, not
only the latest window, so hours missed while the daemon was down (or that exhausted their retries)
are sealed at the next seal tick and their days replicated as soon as all 24 hours are sealed. The
lookback ends where sealing can no longer succeed: JetStream retention (gaps can no longer be
refetched) and the hot TTL (hot no longer holds the hour).
"""

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import dagster as dg
import structlog
from pydantic import Field

from marketprism_dagster.config import Settings
from marketprism_dagster.hour_refill import Refilled, history_markets, no_history_reason, refill_hour
from marketprism_dagster.logs import mask_url
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.replication import ReplicationFailed, replicate_day
from marketprism_dagster.sealing import TTL_MARGIN_MS, SealRefused, SealReport, seal_hours
from marketprism_dagster.storage.base import Store
from marketprism_dagster.timeutil import DAY_MS, HOUR_MS
from resources import ClickHouseResource, NatsResource, SettingsResource

log = structlog.get_logger(__name__)

HOT_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=3), warn_window=timedelta(hours=2))
# the day's cold partition is due by 02:00 UTC the next day (hour 23 seals at ~00:07)
COLD_FRESHNESS = dg.FreshnessPolicy.cron(deadline_cron="0 2 * * *", lower_bound_delta=timedelta(hours=2))


def hot_key(data_type: str) -> dg.AssetKey:
    return dg.AssetKey(["hot", data_type])


def cold_key(data_type: str) -> dg.AssetKey:
    return dg.AssetKey(["cold", data_type])


def seal_cron(settings: Settings) -> str:
    """A few minutes after each hour, once the seal grace has passed."""
    return f"{min(59, settings.seal.grace_s // 60 + 2)} * * * *"


def hot_lookback(settings: Settings, data_type: str) -> timedelta:
    """How far back automation seals missed hours: while the stream still holds every message of the
    hour (gaps can be refetched) and the hour is still sealable inside the hot TTL."""
    stream = settings.stream_for(data_type)
    retention_ms = settings.streams[stream].max_age_s * 1000 if stream else 0
    ttl_ms = settings.storage.hot_ttl_days * DAY_MS - TTL_MARGIN_MS - HOUR_MS
    return timedelta(milliseconds=max(HOUR_MS, min(retention_ms - HOUR_MS, ttl_ms)))


def cold_lookback(settings: Settings) -> timedelta:
    """How far back automation replicates missed days: the days hot still holds (older ones are refused)."""
    return timedelta(days=max(1, settings.storage.hot_ttl_days - 1))


def hot_automation(settings: Settings, data_type: str) -> dg.AutomationCondition:
    """At each seal tick (a few minutes past the hour): every unsealed hour in the lookback, not
    only the latest one. A failed seal is retried at the next tick."""
    return (
        dg.AutomationCondition.in_latest_time_window(hot_lookback(settings, data_type))
        & dg.AutomationCondition.cron_tick_passed(seal_cron(settings))
        & dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("seal_missed_hours")


def cold_automation(settings: Settings) -> dg.AutomationCondition:
    """Every day in the lookback whose 24 hours are sealed: replicated when it is missing (once; a
    failed day again at the next seal tick) and again when one of its hours is re-sealed."""
    due = dg.AutomationCondition.missing() & (
        ~dg.AutomationCondition.execution_failed() | dg.AutomationCondition.cron_tick_passed(seal_cron(settings))
    )
    return (
        dg.AutomationCondition.in_latest_time_window(cold_lookback(settings))
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
        & (due | dg.AutomationCondition.any_deps_updated().since_last_handled())
    ).with_label("replicate_sealed_days")


class ColdReplicationConfig(dg.Config):
    force: bool = Field(
        default=False,
        description="let this run replace a cold day that holds more rows than hot (or a day older than the hot TTL)",
    )


async def seal_with_nats(
    store: Store, settings: Settings, nats: NatsResource, data_types: list[str], hour: Any
) -> dict[str, SealReport | SealRefused]:
    """Seal with the JetStream proof; fall back to the ledger-only proof when NATS is unreachable."""
    try:
        cm = nats.jetstream()
        js = await asyncio.wait_for(cm.__aenter__(), timeout=settings.nats.connect_timeout_s + 3)
    except Exception as exc:
        log.warning("seal.nats_unreachable", url=mask_url(settings.nats.url), error=str(exc))
        return await seal_hours(store, settings, data_types, hour, None)
    try:
        return await seal_hours(store, settings, data_types, hour, js)
    finally:
        await cm.__aexit__(None, None, None)


HOT_SEAL = "hot_seal"


def hot_spec(data_type: str, settings: Settings) -> dg.AssetSpec:
    return dg.AssetSpec(
        hot_key(data_type),
        group_name="hot",
        kinds={"clickhouse"},
        description=(
            f"marketprism_hot.{data_type}, one partition per event-time hour. Materializing a partition SEALS "
            "the closed hour: proves from the writer's sequence ledger that every JetStream message of the hour "
            "is in the table, fetching missing ranges from JetStream first (repair / backfill); ranges that aged "
            "out of JetStream are refilled from the venues' history for the types that have one. The metadata "
            "says what the venues' stream lacked (source: complete | gaps_repaired | incomplete, docs/source_gaps.md)."
        ),
        automation_condition=hot_automation(settings, data_type),
        freshness_policy=HOT_FRESHNESS,
        metadata={"table": f"{settings.storage.hot_database}.{data_type}", "stream": settings.stream_for(data_type)},
    )


def build_hot_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """The 8 hot assets as one step that can be subset: an hour's seal of every type runs in one step
    with one store session and one JetStream connection, and each stream is proven once for its types."""

    @dg.multi_asset(
        name=HOT_SEAL,
        specs=[hot_spec(t, settings) for t in RECORD_TYPES],
        partitions_def=partitions,
        can_subset=True,
        retry_policy=dg.RetryPolicy(max_retries=settings.seal.retries, delay=settings.seal.retry_delay_s),
    )
    def _hot(
        context: dg.AssetExecutionContext,
        settings: SettingsResource,
        clickhouse: ClickHouseResource,
        nats: NatsResource,
    ) -> Iterator[dg.MaterializeResult]:
        settings_now = settings.load_settings()
        hour = context.partition_time_window.start
        types = [t for t in RECORD_TYPES if hot_key(t) in context.selected_asset_keys]
        with clickhouse.open() as store:
            results = asyncio.run(seal_with_nats(store, settings_now, nats, types, hour))
        refills = refill_aged_out(context, settings_now, clickhouse, nats, hour, results)
        refused: dict[str, SealRefused] = {}
        for t in types:
            report = results[t]
            if isinstance(report, SealRefused):
                refused[t] = report
                continue
            context.log.info(f"sealed {t} {hour:%Y-%m-%d %H}:00: {report.rows} rows")
            yield dg.MaterializeResult(
                asset_key=hot_key(t),
                metadata={**report.metadata(), **refill_metadata(refills.get(t)), "dagster/row_count": report.rows},
            )
        if refused:
            first = next(iter(refused.values()))
            meta: dict[str, Any] = first.report.metadata() if first.report else {}
            for t in refused:
                meta.update({f"{t}/{k}": v for k, v in refill_metadata(refills.get(t)).items()})
            meta["refused"] = ", ".join(refused)
            raise dg.Failure(
                description="; ".join(f"{t}: {exc}" for t, exc in refused.items()),
                metadata=meta,
                allow_retries=any(exc.retryable for exc in refused.values()),
            )

    return _hot


def refill_aged_out(
    context: dg.AssetExecutionContext,
    settings: Settings,
    clickhouse: ClickHouseResource,
    nats: NatsResource,
    hour: Any,
    results: dict[str, SealReport | SealRefused],
) -> dict[str, list[Refilled]]:
    """The types refused because a gap aged out of JetStream: refilled from venue history (``hour_refill``), then
    sealed again (``results`` updated); a type without history is refused with the cause and the fix."""
    aged = [t for t, r in results.items() if isinstance(r, SealRefused) and r.aged_out]
    refills: dict[str, list[Refilled]] = {}
    h = int(hour.timestamp() * 1000)
    for t in aged:
        refused = results[t]
        assert isinstance(refused, SealRefused)
        if not history_markets(settings, t):
            results[t] = SealRefused(no_history_reason(settings, t, h, str(refused)), refused.report, retryable=False)
            continue
        refills[t] = asyncio.run(refill_hour(settings, t, h, refused.lost))
        context.log.info(f"refilled {t} {hour:%Y-%m-%d %H}:00 from venue history: "
                         f"{sum(r.published for r in refills[t])} records published")
    if refills:
        with clickhouse.open() as store:
            results.update(asyncio.run(seal_with_nats(store, settings, nats, list(refills), hour)))
    return refills


def refill_metadata(refilled: list[Refilled] | None) -> dict[str, Any]:
    """What a refill from venue history did for one type's hour (empty: none ran)."""
    if refilled is None:
        return {}
    return {
        "refilled_from_history": "; ".join(r.label() for r in refilled),
        "refilled_records": sum(r.published for r in refilled),
    }


def unsealed_hours(
    instance: dg.DagsterInstance, data_type: str, hourly: dg.TimeWindowPartitionsDefinition, day: dg.TimeWindow
) -> list[str]:
    """The day's hot hours not sealed yet. Only hours that are partitions count: the first day of a
    deployment starts at the hourly partitions' start, and its earlier hours do not exist to be sealed."""
    start = max(day.start, hourly.start)
    if start >= day.end:
        return []
    done = instance.get_materialized_partitions(hot_key(data_type))
    return [k for k in hourly.get_partition_keys_in_time_window(dg.TimeWindow(start, day.end)) if k not in done]


def build_cold_asset(
    data_type: str, settings: Settings, partitions: dg.PartitionsDefinition, hourly: dg.TimeWindowPartitionsDefinition
) -> dg.AssetsDefinition:
    @dg.asset(
        key=cold_key(data_type),
        partitions_def=partitions,
        group_name="cold",
        kinds={"clickhouse"},
        deps=[dg.AssetDep(hot_key(data_type), partition_mapping=dg.TimeWindowPartitionMapping())],
        description=(
            f"marketprism_cold.{data_type}, one partition per day: idempotent replication of the day's 24 sealed "
            "hot hours (partition replace), verified by count and content checksum."
        ),
        automation_condition=cold_automation(settings),
        freshness_policy=COLD_FRESHNESS,
        metadata={"table": f"{settings.storage.cold_database}.{data_type}"},
    )
    def _cold(
        context: dg.AssetExecutionContext,
        config: ColdReplicationConfig,
        settings: SettingsResource,
        clickhouse: ClickHouseResource,
    ) -> dg.MaterializeResult:
        settings_now = settings.load_settings()
        missing = unsealed_hours(context.instance, data_type, hourly, context.partition_time_window)
        if missing:
            raise dg.Failure(
                description=(
                    f"{len(missing)} of the day's hours of hot/{data_type} are not sealed ({missing[0]} ...): "
                    "cold replicates only sealed days; materialize (backfill) those hot partitions first"
                ),
                metadata={"unsealed_hours": ", ".join(missing)},
            )
        day = context.partition_time_window.start
        with clickhouse.open() as store:
            try:
                report = replicate_day(store, settings_now, data_type, day, force=config.force)
            except ReplicationFailed as exc:
                raise dg.Failure(description=str(exc)) from None
        return dg.MaterializeResult(metadata={**report.metadata(), "dagster/row_count": report.rows})

    return _cold


def build_assets(
    settings: Settings, hourly: dg.TimeWindowPartitionsDefinition, daily: dg.PartitionsDefinition
) -> list[Any]:
    return [build_hot_assets(settings, hourly), *(build_cold_asset(t, settings, daily, hourly) for t in RECORD_TYPES)]

"""Asset checks: the seeds' window rules, lag, duplicates, ledger gaps, hot/cold parity, schema parity."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import dagster as dg

from marketprism_dagster import integrity, source_gaps
from marketprism_dagster.config import Settings
from marketprism_dagster.defs.assets import cold_key, hot_key
from marketprism_dagster.records import RECORD_TYPES
from marketprism_dagster.storage import Store
from marketprism_dagster.timeutil import DAY_MS, HOUR_MS, now_ms
from resources import ClickHouseResource, SettingsResource

T = TypeVar("T")


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


@dataclass
class RuleInputs:
    """What every rule of one check step reads: the run's store session, the settings, the instance,
    and the answers several assets share (a stream's ledger gaps: seven data types share MARKET_DATA)."""

    store: Store
    settings: Settings
    instance: dg.DagsterInstance
    types: dict[str, list[str]]  # "hot" / "cold" -> the data types whose checks run in this step
    now: int = field(default_factory=now_ms)
    per_stream: dict[str, integrity.CheckResult] = field(default_factory=dict)
    _read: dict[str, Any] = field(default_factory=dict)

    def once(self, what: str, read: Callable[[], T]) -> T:
        """``read()`` the first time ``what`` is asked in this step (one statement for every type)."""
        if what not in self._read:
            self._read[what] = read()
        return self._read[what]  # type: ignore[no-any-return]


# A check rule: (inputs, data_type) -> result. Every unpartitioned rule of every asset runs in ONE
# step (a multi-asset check that can be subset): one store session and one step's overhead for the
# whole checks run, while the UI still shows every check on its own asset.
Rule = Callable[[RuleInputs, str], integrity.CheckResult]
RuleTable = dict[dg.AssetKey, tuple[str, dict[str, tuple[str, Rule]]]]

WINDOW_CHECKS = "window_checks"


def rules_check(table: RuleTable) -> dg.AssetChecksDefinition:
    """One multi-asset check evaluating the selected rules of ``table``: asset -> (data type,
    check name -> (description, rule))."""
    specs = [
        dg.AssetCheckSpec(name, asset=key, description=desc)
        for key, (_, rules) in table.items()
        for name, (desc, _) in rules.items()
    ]

    @dg.multi_asset_check(name=WINDOW_CHECKS, specs=specs, can_subset=True)
    def check(
        context: dg.AssetCheckExecutionContext, settings: SettingsResource, clickhouse: ClickHouseResource
    ) -> Iterator[dg.AssetCheckResult]:
        selected = set(context.selected_asset_check_keys)
        types: dict[str, list[str]] = {}
        for key, (data_type, _) in table.items():
            if any(k.asset_key == key for k in selected):
                types.setdefault(key.path[0], []).append(data_type)
        with clickhouse.open() as store:
            inputs = RuleInputs(store, settings.load_settings(), context.instance, types)
            for key, (data_type, rules) in table.items():
                for name, (_, rule) in rules.items():
                    if dg.AssetCheckKey(key, name) in selected:
                        yield to_dagster(rule(inputs, data_type), key, name)

    return check


def _hot_facts(inputs: RuleInputs, data_type: str) -> integrity.HotFacts:
    facts = inputs.once(
        "hot_facts", lambda: integrity.hot_facts(inputs.store, inputs.settings, inputs.types["hot"], now=inputs.now)
    )
    return facts[data_type]


def _recent_window(inputs: RuleInputs, data_type: str) -> integrity.CheckResult:
    settings = inputs.settings
    feeds = integrity.collector_feed_status(settings, data_type) if RECORD_TYPES[data_type].sparse else None
    facts = _hot_facts(inputs, data_type)
    return integrity.window_presence(inputs.store, settings, data_type, now=inputs.now, feeds=feeds, facts=facts)


def _data_lag(inputs: RuleInputs, data_type: str) -> integrity.CheckResult:
    facts = _hot_facts(inputs, data_type)
    return integrity.data_lag(inputs.store, inputs.settings, data_type, now=inputs.now, facts=facts)


def _duplicates(inputs: RuleInputs, data_type: str) -> integrity.CheckResult:
    db = inputs.settings.storage.hot_database
    counts = inputs.once("duplicates", lambda: integrity.duplicate_counts(inputs.store, db, inputs.types["hot"]))
    return integrity.duplicates(inputs.store, inputs.settings, data_type, counts=counts[data_type])


def _schema_parity(inputs: RuleInputs, data_type: str) -> integrity.CheckResult:
    st = inputs.settings.storage
    columns = inputs.once(
        "columns",
        lambda: integrity.columns_by_table(inputs.store, [st.hot_database, st.cold_database], inputs.types["cold"]),
    )
    return integrity.schema_parity(inputs.store, inputs.settings, data_type, columns=columns)


def _ledger_gaps(inputs: RuleInputs, data_type: str) -> integrity.CheckResult:
    stream = inputs.settings.stream_for(data_type) or ""
    if stream not in inputs.per_stream:
        inputs.per_stream[stream] = integrity.ledger_gaps(inputs.store, inputs.settings, stream)
    return inputs.per_stream[stream]


def sealed_at(instance: dg.DagsterInstance, data_type: str, hours: set[int]) -> dict[int, int]:
    """When each of ``hours`` (hour starts, ms) of the hot asset was last materialized (sealed), for those that
    were: one event-log read."""
    keys = {datetime.fromtimestamp(h / 1000, UTC).strftime("%Y-%m-%d-%H:%M"): h for h in hours}
    if not keys:
        return {}
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=hot_key(data_type), asset_partitions=sorted(keys)), limit=4 * len(keys)
    )
    out: dict[int, int] = {}
    for record in found.records:  # newest first
        h = keys.get(record.partition_key or "")
        if h is not None and h not in out:
            out[h] = int(record.timestamp * 1000)
    return out


def _source_gaps(inputs: RuleInputs, data_type: str) -> integrity.CheckResult:
    gaps = inputs.once(
        "source_gaps", lambda: integrity.recent_source_gaps(inputs.store, inputs.settings, now=inputs.now)
    )
    since = inputs.now - integrity.SOURCE_GAP_WINDOW_MS - HOUR_MS  # the hours of the check's window only
    hours = {h for g in gaps if g.data_type == data_type for h in source_gaps.hours_touched(g) if h >= since}
    return integrity.source_gaps(inputs.store, inputs.settings, data_type, now=inputs.now, gaps=gaps,
                                 sealed_at=sealed_at(inputs.instance, data_type, hours))


HOT_RULES: dict[str, tuple[str, Rule]] = {
    "recent_window": ("rows within the type's window (window_rules)", _recent_window),
    "data_lag": ("newest event time vs now (lag_warn_s / lag_error_s)", _data_lag),
    "duplicates": ("rows sharing an identity: must be 0", _duplicates),
    "ledger_gaps": ("JetStream sequence ranges never committed: must be 0", _ledger_gaps),
    "source_gaps": (
        "venue data the collector missed (last day): ERROR for a refillable gap open past seal.source_gap_grace_s, "
        "WARN for unrecoverable ones",
        _source_gaps,
    ),
}


def cold_rules(hourly: dg.TimeWindowPartitionsDefinition) -> dict[str, tuple[str, Rule]]:
    def newest(inputs: RuleInputs) -> dict[str, tuple[int, int | None, int | None]]:
        """Per cold type: (horizon, hot newest before it, cold newest), two statements for all types."""
        st, types = inputs.settings.storage, inputs.types["cold"]
        horizons = {t: sealed_horizon_ms(inputs.instance, t, hourly) for t in types}
        hot = integrity.newest_by_type(inputs.store, st.hot_database, dict(horizons))
        cold = integrity.newest_by_type(inputs.store, st.cold_database, dict.fromkeys(types))
        return {t: (horizons[t], hot[t], cold[t]) for t in types}

    def lag(inputs: RuleInputs, data_type: str) -> integrity.CheckResult:
        horizon, hot, cold = inputs.once("cold_newest", lambda: newest(inputs))[data_type]
        return integrity.hot_cold_lag(
            inputs.store, inputs.settings, data_type, horizon_ms=horizon, newest=(hot, cold)
        )

    return {
        "hot_cold_lag": ("cold trails the replicable hot data (warn > 60 min)", lag),
        "schema_parity": ("hot and cold tables have identical columns", _schema_parity),
    }


def parity_check(data_type: str, daily: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=cold_key(data_type),
        name="hot_cold_parity",
        partitions_def=daily,
        blocking=True,
        description="the day's hot and cold rows match in count and content checksum",
    )
    def parity(
        context: dg.AssetCheckExecutionContext, settings: SettingsResource, clickhouse: ClickHouseResource
    ) -> dg.AssetCheckResult:
        day = datetime.strptime(context.partition_key, "%Y-%m-%d").replace(tzinfo=UTC)
        with clickhouse.open() as store:
            return to_dagster(
                integrity.hot_cold_parity(store, settings.load_settings(), data_type, int(day.timestamp() * 1000))
            )

    return parity


def build_checks(
    settings: Settings, hourly: dg.TimeWindowPartitionsDefinition, daily: dg.PartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    """The unpartitioned rules of all 16 assets as one check step, and each cold day's parity."""
    table: RuleTable = {hot_key(t): (t, HOT_RULES) for t in RECORD_TYPES}
    cold = cold_rules(hourly)
    table.update({cold_key(t): (t, cold) for t in RECORD_TYPES})
    return [rules_check(table), *(parity_check(t, daily) for t in RECORD_TYPES)]


def window_check_keys(checks: list[dg.AssetChecksDefinition]) -> list[dg.AssetCheckKey]:
    """The unpartitioned checks: what the checks-only job runs every few minutes."""
    keys: list[dg.AssetCheckKey] = []
    for c in checks:
        if c.partitions_def is None:
            keys.extend(c.check_keys)
    return keys

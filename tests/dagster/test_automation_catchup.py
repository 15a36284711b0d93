"""Automation catches up: with the Dagster daemon stopped for 3 hours across midnight and
restarted, every missed hour is sealed and the completed day replicated without a person acting.

The automation conditions are evaluated with Dagster's public ``evaluate_automation_conditions``
at fixed evaluation times (the daemon's ticks); what they request is executed for real (seals
against a real nats-server and chDB, then the day's replication)."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from marketprism_dagster import integrity
from marketprism_dagster.defs import partitions
from marketprism_dagster.defs.assets import cold_key, hot_key
from marketprism_dagster.defs.definitions import build_definitions
from marketprism_dagster.storage import open_store
from tests.support.hour_setup import prepare_store, publish_and_commit, records_in_hour

HOUR = timedelta(hours=1)
# one type per stream (MARKET_DATA, ORDERBOOK_SNAP) keeps the real seals few; the conditions are
# the same for all 8 types (one factory)
TYPES = ("trade", "orderbook")


def _outage_day() -> datetime:
    """A day D whose next day's 01:30 has passed and which the hot TTL still holds completely."""
    now = datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1 if now.hour >= 2 else 2)


def _key(t: datetime) -> str:
    return t.strftime("%Y-%m-%d-%H:00")


def _publish_and_commit(settings, hours: list[datetime], per_hour: int) -> int:
    records = [
        r
        for i, h in enumerate(hours)
        for r in records_in_hour("trade", int(h.timestamp() * 1000), per_hour, first_id=i * 100)
    ]
    prepare_store(settings)
    publish_and_commit(settings, records)
    return len(records)


def _requested(result: dg.EvaluateAutomationConditionsResult, keys: list[dg.AssetKey]) -> dict[str, set[str]]:
    """partition key -> data types requested for it."""
    out: dict[str, set[str]] = defaultdict(set)
    for k in keys:
        for pk in result.get_requested_partitions(k):
            out[str(pk)].add(k.path[-1])
    return dict(out)


def _execute(defs: dg.Definitions, requested: dict[str, set[str]], key_of, resources, instance) -> None:
    """What the daemon launches: one run per requested partition with the assets requested for it."""
    for pk, types in sorted(requested.items()):
        result = dg.materialize(
            list(defs.assets),  # type: ignore[arg-type]
            selection=[key_of(t) for t in sorted(types)],
            partition_key=pk,
            resources=resources,
            instance=instance,
        )
        assert result.success, pk


def test_daemon_down_three_hours_across_midnight_then_every_missed_hour_is_sealed_and_the_day_replicated(
    nats_server, settings_factory, dagster_instance, make_resources
):
    day = _outage_day()
    settings = settings_factory(nats_url=nats_server.url, seal__start_date=day.date().isoformat())
    hot_keys = [hot_key(t) for t in TYPES]
    cold_keys = [cold_key(t) for t in TYPES]
    selection = dg.AssetSelection.assets(*hot_keys, *cold_keys)
    # trades in an early hour, in the two hours the daemon misses before midnight and in the one after
    traffic = [day + 10 * HOUR, day + 22 * HOUR, day + 23 * HOUR, day + 24 * HOUR]
    published = _publish_and_commit(settings, traffic, per_hour=4)
    # the daemon sealed hours 00..21 of the day while it ran
    for t in TYPES:
        for h in range(22):
            dagster_instance.report_runless_asset_event(
                dg.AssetMaterialization(hot_key(t), partition=_key(day + h * HOUR))
            )
    defs = build_definitions(make_resources(settings)["settings"])
    resources = make_resources(settings)

    def tick(at: datetime, cursor=None) -> dg.EvaluateAutomationConditionsResult:
        return dg.evaluate_automation_conditions(
            defs, dagster_instance, asset_selection=selection, evaluation_time=at, cursor=cursor
        )

    # ticks while the daemon runs: nothing due (hour 21 closes at 22:00 and is sealed at 22:07)
    first = tick(day + 21 * HOUR + timedelta(minutes=30))
    before_stop = tick(day + 22 * HOUR + timedelta(minutes=1), first.cursor)
    assert before_stop.total_requested == 0
    # ... the daemon is stopped at 22:01 and restarted three and a half hours later
    restart = tick(day + 25 * HOUR + timedelta(minutes=30), before_stop.cursor)
    missed = {_key(day + 22 * HOUR), _key(day + 23 * HOUR), _key(day + 24 * HOUR)}
    hot = _requested(restart, hot_keys)
    assert hot == {pk: set(TYPES) for pk in missed}  # every type, every missed hour, nothing else
    assert _requested(restart, cold_keys) == {}  # the day still has unsealed hours
    _execute(defs, hot, hot_key, resources, dagster_instance)
    for t in TYPES:
        assert missed <= dagster_instance.get_materialized_partitions(hot_key(t))

    after_seal = tick(day + 25 * HOUR + timedelta(minutes=31), restart.cursor)
    cold = _requested(after_seal, cold_keys)
    assert cold == {day.strftime("%Y-%m-%d"): set(TYPES)}  # the completed day, not the open one
    assert _requested(after_seal, hot_keys) == {}
    _execute(defs, cold, cold_key, resources, dagster_instance)

    day_ms = int(day.timestamp() * 1000)
    with open_store(settings) as store:
        parity = integrity.hot_cold_parity(store, settings, "trade", day_ms)
        assert parity.passed and parity.metadata["cold_rows"] == published - 4  # all but the next day's hour
    settled = tick(day + 25 * HOUR + timedelta(minutes=32), after_seal.cursor)
    assert settled.total_requested == 0  # caught up: nothing requested twice
    # back to normal: the next seal tick asks for the hour that just closed, only that one
    nxt = tick(day + 26 * HOUR + timedelta(minutes=8), settled.cursor)
    assert _requested(nxt, hot_keys) == {_key(day + 25 * HOUR): set(TYPES)}


def test_partitions_start_at_the_configured_start_date_whatever_the_clock(settings_factory):
    settings = settings_factory(seal__start_date="2026-11-01")
    assert settings.seal.start_date == date(2026, 11, 1)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    hourly, daily = partitions.hourly(settings), partitions.daily(settings)
    assert hourly.start == start and daily.start == start
    assert hourly.get_first_partition_key() == "2026-11-01-00:00" and daily.get_first_partition_key() == "2026-11-01"
    # rebuilt later (a code reload): the same partitions, the same first key
    assert partitions.hourly(settings).start == hourly.start


def test_an_unset_start_date_is_the_deployments_first_hour_recorded_once(settings_factory):
    """No configured start: the hour the deployment first started, written once to the data dir and read
    back by every later process (never the clock again), so a new deployment's first seal tick does not
    request every empty hour of the lookback."""
    settings = settings_factory(seal__start_date=None)
    assert settings.seal.start_date is None
    first = partitions.start_hour(settings, now=datetime(2026, 12, 2, 15, 42, tzinfo=UTC))
    assert first == datetime(2026, 12, 2, 13, tzinfo=UTC)  # two hours of margin for REST backfills
    later = partitions.start_hour(settings, now=datetime(2026, 12, 9, 3, 5, tzinfo=UTC))
    assert later == first
    assert partitions.hourly(settings).get_first_partition_key() == "2026-12-02-13:00"
    assert partitions.daily(settings).start == datetime(2026, 12, 2, tzinfo=UTC)  # the (partial) first day


def test_a_new_deployments_partial_first_day_replicates_once_its_existing_hours_are_sealed(
    nats_server, settings_factory, dagster_instance, make_resources
):
    """A deployment first started at 01:xx has hourly partitions from 23:00 of the day before (two hours of margin):
    that day's cold partition holds one hour. Once that hour is sealed, automation replicates the day, and the run
    succeeds. Before, the cold asset counted the day's 24 hours, 23 of which are not partitions and can never be
    sealed, and every new deployment showed a failed replication run of its first day (found in a demo)."""
    day = _outage_day()
    settings = settings_factory(nats_url=nats_server.url, seal__start_date=None)
    first = partitions.start_hour(settings, now=day + 25 * HOUR + timedelta(minutes=55))
    assert first == day + 23 * HOUR
    published = _publish_and_commit(settings, [day + 23 * HOUR], per_hour=4)
    defs = build_definitions(make_resources(settings)["settings"])
    resources = make_resources(settings)
    _execute(defs, {_key(day + 23 * HOUR): set(TYPES)}, hot_key, resources, dagster_instance)

    cold_keys = [cold_key(t) for t in TYPES]
    result = dg.evaluate_automation_conditions(
        defs, dagster_instance, asset_selection=dg.AssetSelection.assets(*cold_keys),
        evaluation_time=day + 26 * HOUR + timedelta(minutes=8),
    )
    cold = _requested(result, cold_keys)
    assert cold == {day.strftime("%Y-%m-%d"): set(TYPES)}
    _execute(defs, cold, cold_key, resources, dagster_instance)  # failed before: "23 of the day's hours ..."
    with open_store(settings) as store:
        parity = integrity.hot_cold_parity(store, settings, "trade", int(day.timestamp() * 1000))
    assert parity.passed and parity.metadata["cold_rows"] == published == 4

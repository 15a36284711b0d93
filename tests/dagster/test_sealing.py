"""Sealing hot hours through Dagster's materialize: complete hours, gaps repaired from a real JetStream."""

from __future__ import annotations

import asyncio
import time

import dagster as dg
import pytest

from marketprism_dagster import integrity
from marketprism_dagster.defs.assets import cold_key, hot_key
from marketprism_dagster.defs.definitions import build_definitions
from marketprism_dagster.sealing import SealRefused, seal_hour
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.storage.columns import records_to_arrow
from marketprism_dagster.writer.ingest import commit_batch
from tests.support.hour_setup import HOUR_MS, hour_start_ms, prepare_store, publish_and_read, records_in_hour


def _prepare(settings, hour_ms, n, commit_ranges):
    prepare_store(settings)
    messages = asyncio.run(publish_and_read(settings, records_in_hour("trade", hour_ms, n)))
    with open_store(settings) as store:
        for first, last in commit_ranges:
            commit_batch(store, settings, "MARKET_DATA", messages[first - 1 : last])


def _seal(settings, instance, hour_ms, resources_for, raise_on_error=True):
    defs = build_definitions(resources_for(settings)["settings"])
    key = time.strftime("%Y-%m-%d-%H:00", time.gmtime(hour_ms / 1000))
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],  # type: ignore[list-item]
        selection=[hot_key("trade")],
        partition_key=key,
        resources=resources_for(settings),
        instance=instance,
        raise_on_error=raise_on_error,
    )


def _hot_mats(result, data_type: str) -> list[dg.AssetMaterialization]:
    """The run's materializations of hot/<data_type> (the hot assets are one step, ``hot_seal``)."""
    return [m for m in result.asset_materializations_for_node("hot_seal") if m.asset_key == hot_key(data_type)]


def test_sealing_a_complete_hour_records_its_metadata(
    nats_server, settings_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = hour_start_ms(3)
    _prepare(settings, hour, 20, [(1, 12), (13, 20)])
    result = _seal(settings, dagster_instance, hour, make_resources)
    mats = _hot_mats(result, "trade")
    meta = {k: v.value for k, v in mats[0].metadata.items()}
    assert meta["rows"] == 20 and meta["ledger_rows"] == 20 and meta["dedup_count"] == 0
    assert meta["symbols"] == "okx_spot:BTC-USDT"
    assert meta["min_event_time"].startswith(time.strftime("%Y-%m-%dT%H:00:00.007", time.gmtime(hour / 1000)))
    assert meta["max_event_time"].startswith(time.strftime("%Y-%m-%dT%H:19:00.007", time.gmtime(hour / 1000)))
    assert meta["repaired_messages"] == 0 and meta["proof"] == "ledger+jetstream"
    # the same run evaluated the hot checks: no duplicates and no ledger gaps
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evals["duplicates"].passed and evals["ledger_gaps"].passed


def test_sealing_an_hour_with_a_gap_fetches_it_from_jetstream_then_passes(
    nats_server, settings_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = hour_start_ms(2)
    _prepare(settings, hour, 30, [(1, 10), (16, 30)])
    with open_store(settings) as store:
        before = integrity.ledger_gaps(store, settings, "MARKET_DATA")
        assert not before.passed and before.metadata["gap_ranges"] == ["11-15"]
    result = _seal(settings, dagster_instance, hour, make_resources)
    meta = {k: v.value for k, v in _hot_mats(result, "trade")[0].metadata.items()}
    assert meta["repaired_messages"] == 5 and meta["repaired_ranges"] == "11-15"
    assert meta["rows"] == 30 and meta["ledger_rows"] == 30
    with open_store(settings) as store:
        assert integrity.ledger_gaps(store, settings, "MARKET_DATA").passed
        assert integrity.duplicates(store, settings, "trade").passed
    # sealing again is a no-op: nothing to repair, same rows
    again = _seal(settings, dagster_instance, hour, make_resources)
    meta2 = {k: v.value for k, v in _hot_mats(again, "trade")[0].metadata.items()}
    assert meta2["rows"] == 30 and meta2["repaired_messages"] == 0


def test_seal_refuses_while_the_writer_is_behind(
    nats_server, settings_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0, seal__retries=0)
    hour = hour_start_ms(2)
    _prepare(settings, hour, 10, [(1, 4)])
    result = _seal(settings, dagster_instance, hour, make_resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "writer is behind" in failure.step_failure_data.user_failure_data.description


def test_seal_refuses_an_hour_before_its_grace_has_passed(store, settings_factory):
    settings = settings_factory()
    hour = hour_start_ms(0)
    with pytest.raises(SealRefused, match="closes at"):
        asyncio.run(seal_hour(store, settings, "trade", hour, None, now=hour + HOUR_MS + 10_000))


def test_cold_partition_never_shrinks_cold_unless_the_run_config_forces_it(
    settings_factory, dagster_instance, make_resources
):
    settings = settings_factory()
    now = int(time.time() * 1000)
    day = (now // 86_400_000 - 1) * 86_400_000  # yesterday: inside the hot TTL
    key = time.strftime("%Y-%m-%d", time.gmtime(day / 1000))
    with open_store(settings) as store:
        init_schema(store, settings)
        rows = records_in_hour("trade", day, 10)
        store.insert(settings.storage.cold_database, "trade", records_to_arrow("trade", rows))
        store.insert(settings.storage.hot_database, "trade", records_to_arrow("trade", rows[:4]))  # hot lost 6
    for h in range(24):
        dagster_instance.report_runless_asset_event(
            dg.AssetMaterialization(
                hot_key("trade"), partition=time.strftime("%Y-%m-%d-%H:00", time.gmtime(day / 1000 + h * 3600))
            )
        )
    defs = build_definitions(make_resources(settings)["settings"])

    def replicate(run_config=None):
        return dg.materialize(
            list(defs.assets),  # type: ignore[arg-type]
            selection=[cold_key("trade")],
            partition_key=key,
            resources=make_resources(settings),
            instance=dagster_instance,
            raise_on_error=False,
            run_config=run_config,
        )

    refused = replicate()
    assert not refused.success
    failure = next(e for e in refused.all_events if e.event_type_value == "STEP_FAILURE")
    description = failure.step_failure_data.user_failure_data.description
    assert "cold holds 10 rows but hot has only 4" in description and "force: true" in description
    with open_store(settings) as store:
        assert store.query_value(f"SELECT count() FROM {settings.storage.cold_database}.trade") == 10

    forced = replicate({"ops": {"cold__trade": {"config": {"force": True}}}})
    assert forced.success
    meta = {k: v.value for k, v in forced.asset_materializations_for_node("cold__trade")[0].metadata.items()}
    assert meta["rows"] == 4
    with open_store(settings) as store:
        assert integrity.hot_cold_parity(store, settings, "trade", day).passed

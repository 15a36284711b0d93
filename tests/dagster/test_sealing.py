"""Sealing hot hours through Dagster's materialize: complete hours, gaps repaired from a real JetStream."""

from __future__ import annotations

import asyncio
import time

import dagster as dg
import msgspec
import pytest

from marketprism_dagster import integrity
from marketprism_dagster.defs.assets import hot_key
from marketprism_dagster.defs.definitions import build_definitions
from marketprism_dagster.jetstream import connect, ensure_streams
from marketprism_dagster.records import encode, msg_id, subject
from marketprism_dagster.sealing import SealRefused, seal_hour
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.writer.ingest import StreamMessage, commit_batch, ensure_writer_tables

HOUR_MS = 3_600_000


def _hour_ago(n: int) -> int:
    now = int(time.time() * 1000)
    return now - now % HOUR_MS - n * HOUR_MS


async def _publish(settings, records) -> None:
    nc = await connect(settings.nats.url)
    js = nc.jetstream()
    await ensure_streams(js, settings)
    for r in records:
        await js.publish(subject(r), encode(r), headers={"Nats-Msg-Id": msg_id(r)})
    await nc.drain()


async def _read(settings, stream: str, first: int, last: int) -> list[StreamMessage]:
    nc = await connect(settings.nats.url)
    js = nc.jetstream()
    out = []
    for seq in range(first, last + 1):
        m = await js.get_msg(stream, seq=seq)
        out.append(StreamMessage(seq=m.seq, subject=m.subject, data=m.data, headers=m.headers))
    await nc.drain()
    return out


def _trades(record_factory, hour_ms: int, n: int):
    now = int(time.time() * 1000)
    return [
        msgspec.structs.replace(record_factory("trade", i, now), timestamp=hour_ms + 60_000 * i + 7) for i in range(n)
    ]


def _prepare(settings, record_factory, hour_ms, n, commit_ranges):
    with open_store(settings) as store:
        init_schema(store, settings)
        ensure_writer_tables(store, settings)
    asyncio.run(_publish(settings, _trades(record_factory, hour_ms, n)))
    with open_store(settings) as store:
        for first, last in commit_ranges:
            commit_batch(store, settings, "MARKET_DATA", asyncio.run(_read(settings, "MARKET_DATA", first, last)))


def _seal(settings, instance, hour_ms, resources_for, raise_on_error=True):
    defs = build_definitions(settings, resources_for(settings))
    key = time.strftime("%Y-%m-%d-%H:00", time.gmtime(hour_ms / 1000))
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],  # type: ignore[list-item]
        selection=[hot_key("trade")],
        partition_key=key,
        resources=resources_for(settings),
        instance=instance,
        raise_on_error=raise_on_error,
    )


def test_sealing_a_complete_hour_records_its_metadata(
    nats_server, settings_factory, record_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = _hour_ago(3)
    _prepare(settings, record_factory, hour, 20, [(1, 12), (13, 20)])
    result = _seal(settings, dagster_instance, hour, make_resources)
    mats = result.asset_materializations_for_node("hot__trade")
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
    nats_server, settings_factory, record_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url)
    hour = _hour_ago(2)
    _prepare(settings, record_factory, hour, 30, [(1, 10), (16, 30)])
    with open_store(settings) as store:
        before = integrity.ledger_gaps(store, settings, "MARKET_DATA")
        assert not before.passed and before.metadata["gap_ranges"] == ["11-15"]
    result = _seal(settings, dagster_instance, hour, make_resources)
    meta = {k: v.value for k, v in result.asset_materializations_for_node("hot__trade")[0].metadata.items()}
    assert meta["repaired_messages"] == 5 and meta["repaired_ranges"] == "11-15"
    assert meta["rows"] == 30 and meta["ledger_rows"] == 30
    with open_store(settings) as store:
        assert integrity.ledger_gaps(store, settings, "MARKET_DATA").passed
        assert integrity.duplicates(store, settings, "trade").passed
    # sealing again is a no-op: nothing to repair, same rows
    again = _seal(settings, dagster_instance, hour, make_resources)
    meta2 = {k: v.value for k, v in again.asset_materializations_for_node("hot__trade")[0].metadata.items()}
    assert meta2["rows"] == 30 and meta2["repaired_messages"] == 0


def test_seal_refuses_while_the_writer_is_behind(
    nats_server, settings_factory, record_factory, dagster_instance, make_resources
):
    settings = settings_factory(nats_url=nats_server.url, seal__writer_slack_s=0, seal__retries=0)
    hour = _hour_ago(2)
    _prepare(settings, record_factory, hour, 10, [(1, 4)])
    result = _seal(settings, dagster_instance, hour, make_resources, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "writer is behind" in failure.step_failure_data.user_failure_data.description


def test_seal_refuses_an_hour_before_its_grace_has_passed(store, settings_factory):
    settings = settings_factory()
    hour = _hour_ago(0)
    with pytest.raises(SealRefused, match="closes at"):
        asyncio.run(seal_hour(store, settings, "trade", hour, None, now=hour + HOUR_MS + 10_000))

"""JetStream streams against a real nats-server: DESIGN's limits, idempotence, conflicts, dedup."""

from __future__ import annotations

import time

import pytest
from nats.js import api as js_api

from marketprism_dagster import records
from marketprism_dagster.jetstream import StreamConflict, connect, ensure_streams

GIB = 1024**3


async def test_streams_match_design_and_second_run_verifies(nats_server, settings_factory):
    settings = settings_factory(nats_url=nats_server.url)
    nc = await connect(nats_server.url)
    try:
        js = nc.jetstream()
        first = await ensure_streams(js, settings)
        assert [(r.name, r.action) for r in first] == [("MARKET_DATA", "created"), ("ORDERBOOK_SNAP", "created")]
        second = await ensure_streams(js, settings)
        assert [r.action for r in second] == ["verified", "verified"]

        md = (await js.stream_info("MARKET_DATA")).config
        assert sorted(md.subjects) == sorted(
            f"{t}.>"
            for t in (
                "trade",
                "funding_rate",
                "open_interest",
                "liquidation",
                "lsr_top_position",
                "lsr_all_account",
                "volatility_index",
                "source_gap",
            )
        )
        assert (md.max_bytes, md.max_age, md.duplicate_window) == (2 * GIB, 48 * 3600, 120)
        assert md.storage == js_api.StorageType.FILE
        ob = (await js.stream_info("ORDERBOOK_SNAP")).config
        assert ob.subjects == ["orderbook.>"]
        assert (ob.max_bytes, ob.max_age, ob.duplicate_window) == (5 * GIB, 24 * 3600, 60)
        assert ob.storage == js_api.StorageType.FILE
    finally:
        await nc.close()


async def test_changed_mutable_limit_is_updated_in_place_keeping_messages(
    nats_server, settings_factory, record_factory
):
    nc = await connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings_factory(nats_url=nats_server.url))
        rec = record_factory("trade", 1, int(time.time() * 1000))
        await js.publish(records.subject(rec), records.encode(rec), headers={"Nats-Msg-Id": records.msg_id(rec)})
        changed = settings_factory(nats_url=nats_server.url, **{"streams__MARKET_DATA__max_age_s": 7200})
        reports = {r.name: r.action for r in await ensure_streams(js, changed)}
        assert reports == {"MARKET_DATA": "updated", "ORDERBOOK_SNAP": "verified"}
        info = await js.stream_info("MARKET_DATA")
        assert info.config.max_age == 7200
        assert info.state.messages == 1
    finally:
        await nc.close()


async def test_immutable_field_conflict_is_an_error_and_deletes_nothing(nats_server, settings_factory, record_factory):
    nc = await connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings_factory(nats_url=nats_server.url))
        rec = record_factory("trade", 1, int(time.time() * 1000))
        await js.publish(records.subject(rec), records.encode(rec), headers={"Nats-Msg-Id": records.msg_id(rec)})
        memory = settings_factory(nats_url=nats_server.url, **{"streams__MARKET_DATA__storage": "memory"})
        with pytest.raises(StreamConflict) as err:
            await ensure_streams(js, memory)
        text = str(err.value)
        assert "MARKET_DATA" in text and "storage" in text and "streams.MARKET_DATA.storage" in text
        assert "Nothing was deleted" in text
        info = await js.stream_info("MARKET_DATA")
        assert info.config.storage == js_api.StorageType.FILE and info.state.messages == 1
    finally:
        await nc.close()


async def test_publishing_the_same_record_twice_stores_one_message(nats_server, settings_factory, record_factory):
    nc = await connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js, settings_factory(nats_url=nats_server.url))
        now = int(time.time() * 1000)
        for data_type in records.DATA_TYPES:
            rec = record_factory(data_type, 42, now)
            acks = [
                await js.publish(
                    records.subject(rec), records.encode(rec), headers={"Nats-Msg-Id": records.msg_id(rec)}
                )
                for _ in range(2)
            ]
            assert acks[0].duplicate is not True and acks[1].duplicate is True
            assert acks[0].seq == acks[1].seq
        md = await js.stream_info("MARKET_DATA")
        ob = await js.stream_info("ORDERBOOK_SNAP")
        assert (md.state.messages, ob.state.messages) == (len(records.DATA_TYPES) - 1, 1)
    finally:
        await nc.close()

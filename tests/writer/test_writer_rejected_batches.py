"""A batch that can never succeed does not block its stream: bounded retries, then dead letters or a loud stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js import api

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.storage import init_schema
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer.consumer import durable_name, read_range
from marketprism_dagster.writer.service import WriterFailure
from tests.support.writer_helpers import expected_by_type, generate, publish, table_identities


async def test_a_row_the_store_refuses_is_dead_lettered_with_the_store_error_and_the_rest_of_its_batch_lands(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings(writer__max_backoff_s=0.5)
    store = EmbeddedStore(settings.embedded_store_path)
    try:  # the store itself refuses some rows: a table constraint (a schema changed by hand, a stricter server)
        init_schema(store, settings)
        store.execute("ALTER TABLE marketprism_hot.trade ADD CONSTRAINT price_cap CHECK price < 1000000")
    finally:
        store.close()
    recs = generate(1200, seed=31)
    k = next(i for i, r in enumerate(recs[600:], 600) if records.data_type_of(r) == "trade")
    refused = msgspec.structs.replace(recs[k], price="2500000.5")
    good = recs[:k] + recs[k + 1:]
    js = nc.jetstream()
    await publish(nc, [*recs[:k], refused, *recs[k + 1:]])  # one range: the refused row sits in its middle
    w = await start_writer(settings)
    await w.wait_committed(nc, timeout=60)
    metrics = await w.metrics()
    await w.close()

    dl = await read_range(js, settings.writer.dead_letter_stream, 1, 10)
    assert len(dl) == 1 and dl[0].headers is not None
    assert dl[0].headers["MP-Dead-Letter-Kind"] == "store_rejected"
    assert "price_cap" in dl[0].headers["MP-Dead-Letter-Reason"]
    assert dl[0].data == records.encode(refused)
    assert 'marketprism_writer_dead_letters_total{reason="store_rejected"} 1.0' in metrics
    last = (await js.stream_info("MARKET_DATA")).state.last_seq
    info = await js.consumer_info("MARKET_DATA", durable_name(settings, "MARKET_DATA"))
    assert info.ack_floor.stream_seq == last  # the stream moved on past the refused message
    expected = expected_by_type(good)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            got = table_identities(store, "marketprism_hot", t)
            assert len(got) == len(expected[t]) and set(got) == expected[t], t  # once each, none lost
        gaps = store.query_value(
            "SELECT count() FROM (SELECT first_seq, last_seq, lagInFrame(last_seq) OVER (ORDER BY first_seq) AS prev "
            "FROM marketprism_meta.ingest_ledger FINAL WHERE stream = 'MARKET_DATA' AND data_type = '*') "
            "WHERE prev != 0 AND first_seq != prev + 1"
        )
        assert gaps == 0  # the split ranges still tile the sequence space
    finally:
        store.close()


async def test_dead_letters_that_cannot_be_published_stop_the_writer_with_the_fix_and_leave_the_range_unacked(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings(writer__max_backoff_s=0.5)
    js = nc.jetstream()
    first = generate(300, seed=32)
    w = await start_writer(settings)
    await publish(nc, first)
    await w.wait_committed(nc)
    # another stream now takes the dead-letter subjects: every publish to DEAD_LETTER fails, and so does
    # re-creating it
    await js.delete_stream(settings.writer.dead_letter_stream)
    await js.add_stream(api.StreamConfig(name="SQUATTER", subjects=["deadletter.>"]))
    trade = next(r for r in first if records.data_type_of(r) == "trade")
    ack = await js.publish(records.subject(trade), b"{not json", headers={"Nats-Msg-Id": "poison-1"})
    await publish(nc, generate(50, seed=33, first_index=5000))
    assert w.task is not None
    with pytest.raises(WriterFailure, match="DEAD_LETTER") as failure:
        await asyncio.wait_for(w.task, 60)
    w.task = None  # its end is the subject of this test, not a teardown error
    assert "nats stream info DEAD_LETTER" in str(failure.value)
    assert w.service is not None
    body, ok = w.service.health()
    assert not ok and body["dead_letters"].startswith("failing")
    metrics = w.service.metrics.render().decode()
    assert 'marketprism_writer_dead_letter_available 0.0' in metrics
    assert 'marketprism_writer_failures_total{reason="dead_letter_publish"} 6.0' in metrics
    info = await js.consumer_info("MARKET_DATA", durable_name(settings, "MARKET_DATA"))
    assert info.ack_floor.stream_seq < ack.seq  # the poison and its range wait in JetStream
    assert w.service.streams["MARKET_DATA"].buffer.watermark < ack.seq

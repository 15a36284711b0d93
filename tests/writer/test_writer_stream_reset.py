"""A stream deleted and recreated (sequences restart at 1) starts a new ledger epoch: no new message is dropped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import ensure_streams
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.writer.epoch import current_epoch
from tests.support.writer_helpers import expected_by_type, generate, publish, table_identities


def market_data(recs: list[Any]) -> list[Any]:
    return [r for r in recs if records.data_type_of(r) != "orderbook"]


def assert_stored_once(settings: Settings, recs: list[Any]) -> EmbeddedStore:
    expected = expected_by_type(recs)
    store = EmbeddedStore(settings.embedded_store_path)
    for t in DATA_TYPES:
        got = table_identities(store, "marketprism_hot", t)
        assert len(got) == len(expected[t]) and set(got) == expected[t], t
    return store


def ledger(store: EmbeddedStore, stream: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in store.query_rows(
        "SELECT first_seq, last_seq FROM marketprism_meta.ingest_ledger FINAL "
        f"WHERE stream = '{stream}' AND data_type = '*' ORDER BY first_seq")]


async def recreate_market_data(nc: NATS) -> None:
    js = nc.jetstream()
    await js.delete_stream("MARKET_DATA")  # what `nats stream rm MARKET_DATA` does
    await ensure_streams(js, Settings())


async def test_stream_recreated_while_the_writer_runs_starts_a_new_epoch_and_stores_every_new_message(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings()
    old = market_data(generate(1500, seed=21))
    new = market_data(generate(400, seed=22, first_index=10_000))  # fewer than the old watermark
    w = await start_writer(settings)
    await publish(nc, old)
    await w.wait_committed(nc)
    old_watermark = w.service.streams["MARKET_DATA"].buffer.watermark
    assert old_watermark == len(old)

    await recreate_market_data(nc)
    await publish(nc, new)
    deadline = asyncio.get_running_loop().time() + 30
    while not (w.service.streams["MARKET_DATA"].epoch == 1
               and w.service.streams["MARKET_DATA"].buffer.watermark == len(new)):
        assert asyncio.get_running_loop().time() < deadline, "no new epoch, or its messages were not committed"
        await asyncio.sleep(0.1)
    await w.wait_committed(nc)
    status, health = await w.health()
    metrics = await w.metrics()
    await w.close()

    assert status == 200
    assert health["consumers"]["MARKET_DATA"]["epoch"] == 1
    assert health["consumers"]["MARKET_DATA"]["committed_seq"] == len(new)
    assert health["consumers"]["MARKET_DATA"]["lag"] == 0
    assert 'marketprism_writer_stream_resets_total{stream="MARKET_DATA"} 1.0' in metrics
    assert 'marketprism_writer_redelivered_skipped_total{stream="MARKET_DATA"}' not in metrics
    store = assert_stored_once(settings, old + new)
    try:
        assert ledger(store, "MARKET_DATA")[0][0] == 1 and ledger(store, "MARKET_DATA")[-1][1] == len(new)
        assert ledger(store, "MARKET_DATA@0")[-1][1] == old_watermark  # the old epoch's ranges are kept
        epoch = current_epoch(store, settings, "MARKET_DATA")
        assert epoch is not None and epoch.number == 1
    finally:
        store.close()


async def test_stream_recreated_while_the_writer_was_down_starts_a_new_epoch_at_restart(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings()
    old = market_data(generate(1500, seed=23))
    new = market_data(generate(300, seed=24, first_index=10_000))
    w = await start_writer(settings)
    await publish(nc, old)
    await w.wait_committed(nc)
    await w.close()

    await recreate_market_data(nc)
    await publish(nc, new)
    w2 = await start_writer(settings)
    await w2.wait_committed(nc)
    # the new stream's messages 1..300 all sit below the old watermark (about 1500): none is skipped
    await asyncio.sleep(0.2)
    metrics = await w2.metrics()
    await w2.close()
    assert 'marketprism_writer_stream_resets_total{stream="MARKET_DATA"} 1.0' in metrics
    assert 'marketprism_writer_stream_epoch{stream="MARKET_DATA"} 1.0' in metrics
    store = assert_stored_once(settings, old + new)
    store.close()

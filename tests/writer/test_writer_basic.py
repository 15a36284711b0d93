"""The writer in-process against a real nats-server and chDB: rows, ledger, health and metrics."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.records import DATA_TYPES
from marketprism_dagster.storage.embedded import EmbeddedStore
from tests.support.writer_helpers import duplicate_count, expected_by_type, generate, publish, table_identities


async def test_every_published_record_lands_once_with_a_contiguous_ledger(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    settings = writer_settings()
    recs = generate(3000, seed=1)
    await publish(nc, recs[:1000])
    w = await start_writer(settings)
    await publish(nc, recs[1000:])
    await w.wait_committed(nc)
    status, health = await w.health()
    metrics = await w.metrics()
    await w.close()

    assert status == 200 and health["store"] == "ok"
    assert health["consumers"]["MARKET_DATA"]["committed_seq"] == health["consumers"]["MARKET_DATA"]["last_seq"]
    assert "marketprism_writer_rows_total{table=\"trade\"}" in metrics
    # the writer held its one session throughout (no other process used the store)
    assert "\nmarketprism_writer_store_opens 1.0\n" in metrics
    assert w.beats >= 1
    expected = expected_by_type(recs)
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            got = table_identities(store, "marketprism_hot", t)
            assert sorted(got) == sorted(expected[t]), t
            assert duplicate_count(store, "marketprism_hot", t) == 0
        ledger = store.query_rows(
            "SELECT stream, first_seq, last_seq, messages, rows, dead_letters FROM marketprism_meta.ingest_ledger "
            "WHERE data_type = '*' ORDER BY stream, first_seq"
        )
    finally:
        store.close()
    for stream in ("MARKET_DATA", "ORDERBOOK_SNAP"):
        ranges = [r for r in ledger if r[0] == stream]
        assert ranges[0][1] == 1
        assert all(a[2] + 1 == b[1] for a, b in itertools.pairwise(ranges))
        assert sum(r[3] for r in ranges) == ranges[-1][2]
        assert sum(r[5] for r in ranges) == 0
    assert sum(r[4] for r in ledger) == len(recs)

"""The writer at low rates: a trickle of messages becomes one range, not one range per linger_ms."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.storage.embedded import EmbeddedStore
from tests.support.writer_helpers import generate, publish


async def test_a_trickle_of_trades_commits_as_one_range_within_linger_max(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    # 12 trades 100 ms apart: with linger_ms=200 alone they would land as 4 or more ranges (each range: an intent,
    # a table insert and a ledger insert); linger_max_ms keeps a range under linger_min_messages open
    settings = writer_settings(writer__linger_ms=200, writer__linger_max_ms=8000, writer__linger_min_messages=12)
    trades = [r for r in generate(400, seed=3) if type(r).__name__ == "Trade"][:12]
    assert len(trades) == 12
    w = await start_writer(settings)
    for rec in trades:
        await publish(nc, [rec])
        await asyncio.sleep(0.1)
    await w.wait_committed(nc)
    await w.close()
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        ranges = store.query_rows(
            "SELECT first_seq, last_seq, messages, rows FROM marketprism_meta.ingest_ledger "
            "WHERE stream = 'MARKET_DATA' AND data_type = '*' ORDER BY first_seq"
        )
        stored = store.query_value("SELECT count() FROM marketprism_hot.trade")
    finally:
        store.close()
    assert ranges == [(1, 12, 12, 12)]
    assert stored == 12


async def test_consecutive_ranges_at_a_low_rate_share_one_intent(
    nc: NATS, writer_settings: Callable[..., Settings], start_writer: Callable[..., Any]
) -> None:
    # every range would cost an intent insert (a part to write and merge); one intent declares a horizon of
    # writer.batch_size sequences and covers the ranges after it
    settings = writer_settings(writer__linger_ms=0, writer__linger_max_ms=0, writer__linger_min_messages=0)
    trades = [r for r in generate(400, seed=4) if type(r).__name__ == "Trade"][:8]
    w = await start_writer(settings)
    for rec in trades:
        await publish(nc, [rec])
        await asyncio.sleep(0.3)
    await w.wait_committed(nc)
    await w.close()
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        ranges = store.query_rows(
            "SELECT first_seq, last_seq FROM marketprism_meta.ingest_ledger "
            "WHERE stream = 'MARKET_DATA' AND data_type = '*' ORDER BY first_seq"
        )
        intents = store.query_rows(
            "SELECT first_seq, last_seq FROM marketprism_meta.ingest_intent WHERE stream = 'MARKET_DATA'"
        )
        stored = store.query_value("SELECT count() FROM marketprism_hot.trade")
    finally:
        store.close()
    assert stored == 8 and ranges[-1][1] == 8
    assert len(ranges) >= 4  # a range per trickle
    assert intents == [(1, ranges[0][1] + settings.writer.batch_size)]

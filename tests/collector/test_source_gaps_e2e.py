"""Source gaps over real sockets: the emulator's faults make the collector blind, the collector records exactly
where as ``source_gap`` records, published like any record and stored by the real writer in real chDB."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from marketprism_dagster import records
from marketprism_dagster.collector.gapfile import gaps_path
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.jetstream import connect
from marketprism_dagster.nats_server import EmbeddedNats
from tests.support.collector_helpers import (
    TradeWitness,
    emulator_overrides,
    running_collector,
    stream_messages,
    until,
)
from tests.support.writer_helpers import committed, hot_rows, writer_running

TRADES = {"binance_derivatives": (["BTC-USDT"], ["trade"]), "okx_derivatives": (["BTC-USDT"], ["trade"])}
VENUE_OF = {"binance_derivatives": "binance_derivatives", "okx_derivatives": "okx"}
WRITER = {"writer.health_port": 0, "writer.monitor_interval_s": 0.5, "log_level": "WARNING"}


def gaps_published(collector: Any, market: str) -> float:
    return sum(
        s.value
        for metric in collector.metrics.source_gaps.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels["exchange"] == market
    )


async def test_dropped_trades_become_open_gaps_with_the_exact_ids_in_the_hot_table(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    faults = (
        "drop_trades@binance_derivatives:at=200:count=300:topic=btcusdt,"
        "drop_trades@okx:at=200:count=300:topic=BTC-USDT-SWAP"
    )
    cfg = EmulatorConfig(
        venues=("binance_derivatives", "okx"), rate=250, seed=11, faults=faults, okx_trade_count_max=3
    )  # OKX aggregates up to 3 matches a push: its ids are tradeId - count + 1 .. tradeId
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, TRADES), **WRITER)
        nc = await connect(nats_server.url)
        try:
            async with writer_running(settings) as writer:
                async with running_collector(settings) as (collector, task):
                    await until(lambda: len(emu.dropped_trades) == 2 and all(d.done for d in emu.dropped_trades), 60)
                    await until(lambda: all(gaps_published(collector, m) >= 1 for m in TRADES), 30)
                    assert not task.done()
                await until(lambda: committed(nc, writer), 60, interval=0.2)
            dropped = {d.venue: d for d in emu.dropped_trades}
        finally:
            await nc.close()

    rows = hot_rows(
        settings,
        "SELECT exchange, symbol, exchange_symbol, gap_data_type, cause, first_missing_id, last_missing_id, "
        "toUnixTimestamp64Milli(timestamp), toUnixTimestamp64Milli(end_time) "
        "FROM marketprism_hot.source_gap FINAL WHERE state = 'open' ORDER BY exchange",
    )
    expected = [
        (
            m,
            "BTC-USDT",
            sym,
            "trade",
            "trade_id_jump",
            str(dropped[VENUE_OF[m]].first_id),
            str(dropped[VENUE_OF[m]].last_id),
        )
        for m, sym in (("binance_derivatives", "BTCUSDT"), ("okx_derivatives", "BTC-USDT-SWAP"))
    ]
    assert [r[:7] for r in rows] == expected
    assert all(r[7] <= r[8] for r in rows)  # the last trade before the hole .. the first after it
    # the bounding trades are stored: the ids just outside each hole are in the hot trade table
    for market, *_ in expected:
        d = dropped[VENUE_OF[market]]
        ids = {
            int(r[0])
            for r in hot_rows(settings, f"SELECT trade_id FROM marketprism_hot.trade WHERE exchange = '{market}'")
        }
        # a stored OKX trade is a push of up to 3 matches under its LAST id, so the push right after the hole
        # (first id last_id + 1) is stored as last_id + 1 .. last_id + 3; a Binance aggregate is one id
        per_row = 3 if market == "okx_derivatives" else 1
        above = min(i for i in ids if i > d.last_id)
        assert d.first_id - 1 in ids and d.last_id + 1 <= above <= d.last_id + per_row
        assert not ids & set(range(d.first_id, d.last_id + 1))


async def test_a_disconnect_records_the_books_unsynced_window_and_the_missed_trade_ids(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    """binance_spot's one feed is cut: the book's window without a valid state is an unrecoverable gap; the trades
    it missed (if any were generated meanwhile) are a disconnect gap whose ids complete the stored ones exactly."""
    markets = {"binance_spot": (["BTC-USDT"], ["orderbook", "trade"])}
    cfg = EmulatorConfig(mode="synth", rate=250, seed=3, faults="disconnect@binance_spot:at=150", venues=("binance",))
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        nc = await connect(nats_server.url)
        try:
            async with running_collector(settings) as (collector, task):
                await until(lambda: emu.faults_fired.get("disconnect"), 30)
                await until(
                    lambda: (
                        collector.metrics.source_gaps.labels("binance_spot", "orderbook", "book_unsynced")._value.get()
                        == 1
                    ),
                    30,
                )
                books = collector.state.records.get(("orderbook", "binance_spot"), 0)
                await until(lambda: collector.state.records.get(("orderbook", "binance_spot"), 0) > books + 2, 20)
                assert not task.done()
            msgs = await stream_messages(nc, "MARKET_DATA")
        finally:
            await nc.close()
    decoded = [records.decode(m.data) for m in msgs]
    gaps = [r for r in decoded if records.data_type_of(r) == "source_gap"]
    book = [g for g in gaps if g.gap_data_type == "orderbook"]
    assert [(g.cause, g.state, g.exchange_symbol) for g in book] == [("book_unsynced", "unrecoverable", "BTCUSDT")]
    assert book[0].timestamp < book[0].end_time
    trade_gaps = [g for g in gaps if g.gap_data_type == "trade"]
    assert all(g.cause == "disconnect" for g in trade_gaps), trade_gaps
    stored = sorted(int(r.trade_id) for r in decoded if records.data_type_of(r) == "trade")
    missing = [i for g in trade_gaps for i in range(int(g.first_missing_id), int(g.last_missing_id) + 1)]
    assert sorted(stored + missing) == list(range(stored[0], stored[-1] + 1))  # every id: stored or a gap
    assert not set(stored) & set(missing)


async def test_a_restart_records_its_downtime_with_the_missed_trade_ids_and_the_funding_window(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    markets = {"binance_derivatives": (["BTC-USDT"], ["trade", "funding_rate"])}
    cfg = EmulatorConfig(mode="synth", rate=250, seed=4, venues=("binance_derivatives",))
    witness = TradeWitness()
    seen = witness.seen
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        nc = await connect(nats_server.url)
        try:
            async with running_collector(settings) as (collector, _):
                await until(lambda: collector.state.records.get(("trade", "binance_derivatives"), 0) > 20, 30)
                await until(lambda: collector.state.records.get(("funding_rate", "binance_derivatives"), 0) > 0, 30)
                [feed] = collector.adapters["binance_derivatives"].ws_feeds()
                witness.start(feed.url)
                await until(lambda: len(seen) > 5, 10)
            assert gaps_path(settings.data_dir, "main").is_file()
            await asyncio.sleep(2.0)  # the venue trades on while no collector runs
            async with running_collector(settings) as (collector, _):
                await until(lambda: gaps_published(collector, "binance_derivatives") >= 2, 30)
            msgs = await stream_messages(nc, "MARKET_DATA")
        finally:
            await witness.stop()
            await nc.close()
    decoded = [records.decode(m.data) for m in msgs]
    gaps = {g.gap_data_type: g for g in decoded if records.data_type_of(g) == "source_gap"}
    assert set(gaps) == {"trade", "funding_rate"}
    trade, funding = gaps["trade"], gaps["funding_rate"]
    assert (trade.cause, funding.cause) == ("downtime", "downtime")
    assert funding.end_time - funding.timestamp >= 2000  # the saved last sign of life .. the first mark price after
    stored = sorted(int(r.trade_id) for r in decoded if records.data_type_of(r) == "trade")
    missing = list(range(int(trade.first_missing_id), int(trade.last_missing_id) + 1))
    assert len(missing) > 50  # ~2 s at 100 trades/s
    assert sorted(stored + missing) == list(range(stored[0], stored[-1] + 1)) and not set(stored) & set(missing)
    assert set(missing) <= set(seen)  # every id the gap names, the venue did send


async def test_a_disconnect_and_a_failed_poll_record_their_windows_for_the_series_without_ids(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    """USD-M ``/market`` feed cut once (funding: a disconnect window) and one open-interest poll failing all five
    attempts (HTTP 5xx: a poll_failed window from the last good poll to the next)."""
    markets = {"binance_derivatives": (["BTC-USDT"], ["trade", "funding_rate", "open_interest"])}
    faults = (
        "disconnect@binance_derivatives:at=150,rest_5xx@binance_derivatives:path=/fapi/v1/openInterest:at=4:count=5"
    )
    cfg = EmulatorConfig(mode="synth", rate=250, seed=8, faults=faults, venues=("binance_derivatives",))
    async with Emulator(cfg) as emu:
        overrides = emulator_overrides(emu.urls, markets) | {"markets.binance_derivatives.poll_interval_s": 1.0}
        settings = settings_factory(nats_url=nats_server.url, **overrides)
        nc = await connect(nats_server.url)
        try:
            async with running_collector(settings) as (collector, task):
                counter = collector.metrics.source_gaps
                await until(
                    lambda: counter.labels("binance_derivatives", "funding_rate", "disconnect")._value.get(), 30
                )
                await until(
                    lambda: counter.labels("binance_derivatives", "open_interest", "poll_failed")._value.get(), 60
                )
                assert not task.done()
            fired = emu.faults_fired
            msgs = await stream_messages(nc, "MARKET_DATA")
        finally:
            await nc.close()
    assert fired["disconnect"] == {"binance_derivatives": 1} and fired["rest_5xx"] == {"binance_derivatives": 5}
    gaps = [r for r in (records.decode(m.data) for m in msgs) if records.data_type_of(r) == "source_gap"]
    by = {(g.gap_data_type, g.cause): g for g in gaps if g.state == "open"}  # as detected (a refill adds rows)
    assert set(by) - {("trade", "disconnect")} == {("funding_rate", "disconnect"), ("open_interest", "poll_failed")}
    funding, poll = by["funding_rate", "disconnect"], by["open_interest", "poll_failed"]
    assert funding.timestamp < funding.end_time and (funding.first_missing_id, funding.state) == ("", "open")
    assert poll.end_time - poll.timestamp >= 1000  # at least the one period whose poll failed
    assert all(g.exchange_symbol == "BTCUSDT" for g in gaps)

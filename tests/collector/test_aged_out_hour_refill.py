"""A hot hour whose ledger gap aged out of JetStream (emulator, nats-server, the real writer and chDB): the seal
refuses it as ``aged_out``; ``hour_refill.refill_hour`` (what the hot asset then runs) refills the hour's trades
from the emulator's history through ``marketprism backfill``'s code, publishing only the ids the hot table lacks,
and waits for the writer: the hot table then holds every id the emulator sent once. Once the hour is whole the
refill writes a ledger marker for the lost range, and the hour's trades seal (gaps_repaired, naming the range);
its liquidations (no venue history) keep refusing with the cause and the fix; a later hour seals as usual."""

from __future__ import annotations

from collections.abc import Callable

from marketprism_dagster import hour_refill, records
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.jetstream import connect
from marketprism_dagster.ledger.messages import StreamMessage
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.sealing import SealRefused, SealReport, seal_hours
from marketprism_dagster.storage import init_schema, open_store
from marketprism_dagster.timeutil import HOUR_MS
from marketprism_dagster.writer.ingest import commit_batch, ensure_writer_tables
from tests.support.collector_helpers import emulator_overrides, running_collector, stream_messages, until
from tests.support.writer_helpers import committed, hot_rows, writer_running

MARKETS = {"binance_derivatives": (["BTC-USDT"], ["trade"])}
MAX_AGE_S = 6


async def test_an_hour_whose_gap_aged_out_of_jetstream_is_refilled_from_venue_history(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    cfg = EmulatorConfig(mode="synth", rate=100, seed=31, venues=("binance_derivatives",))
    async with Emulator(cfg) as emu:
        overrides = emulator_overrides(emu.urls, MARKETS) | {
            "streams.MARKET_DATA.max_age_s": MAX_AGE_S, "streams.MARKET_DATA.duplicate_window_s": 1,
            "writer.health_port": 0, "writer.monitor_interval_s": 0.5,
        }
        settings = settings_factory(nats_url=nats_server.url, **overrides)
        nc = await connect(nats_server.url)
        try:
            async with running_collector(settings) as (collector, _):
                await until(lambda: collector.state.records.get(("trade", "binance_derivatives"), 0) > 150, 30)
            msgs = await stream_messages(nc, "MARKET_DATA", "trade.>")
            messages = [StreamMessage(m.metadata.sequence.stream, m.subject, m.data, m.headers) for m in msgs]
            # the writer committed all but 60 messages in the middle, then those aged out of JetStream
            with open_store(settings) as store:
                init_schema(store, settings)
                ensure_writer_tables(store, settings)
                commit_batch(store, settings, "MARKET_DATA", messages[:40])
                commit_batch(store, settings, "MARKET_DATA", messages[100:])
            held = sorted(int(r[0]) for r in hot_rows(settings, "SELECT trade_id FROM marketprism_hot.trade"))
            js = nc.jetstream()

            async def aged_out() -> bool:  # each message leaves MAX_AGE_S after it was published
                return (await js.stream_info("MARKET_DATA")).state.messages == 0

            await until(aged_out, MAX_AGE_S + 10, interval=0.2)
            hour = records.decode(messages[70].data).timestamp // HOUR_MS * HOUR_MS  # the hour of the lost ones
            now = hour + HOUR_MS + settings.seal.grace_s * 1000 + 1000
            with open_store(settings) as store:
                refused = (await seal_hours(store, settings, ["trade", "liquidation"], hour, nc.jetstream(), now=now))
            assert isinstance(refused["trade"], SealRefused) and refused["trade"].aged_out
            assert hour_refill.history_markets(settings, "trade") == ["binance_derivatives"]
            assert hour_refill.history_markets(settings, "liquidation") == []
            why = hour_refill.no_history_reason(settings, "liquidation", hour, str(refused["liquidation"]))
            assert "no venue keeps a history of liquidation" in why and "streams.MARKET_DATA.max_age_s" in why
            # the writer runs in its own process in a deployment (the store is handed over between processes);
            # here it runs after each refill, which therefore does not wait for it
            lost_ranges = refused["trade"].lost
            refilled = await hour_refill.refill_hour(settings, "trade", hour, lost_ranges, wait_s=0)
            async with writer_running(settings) as writer:
                await until(lambda: committed(nc, writer), 60, interval=0.2)
            # the first refill could not see the writer commit, so it marked nothing; this one finds the hour whole
            again = await hour_refill.refill_hour(settings, "trade", hour, lost_ranges, wait_s=0)
            with open_store(settings) as store:
                after = await seal_hours(store, settings, ["trade", "liquidation"], hour, nc.jetstream(), now=now)
                later_hour = hour + 2 * HOUR_MS
                later = await seal_hours(store, settings, ["trade", "liquidation"], later_hour, nc.jetstream(),
                                         now=now + 2 * HOUR_MS)
        finally:
            await nc.close()
    lost = {int(records.decode(m.data).trade_id) for m in messages[40:100]}
    missing = sorted(set(range(held[0], held[-1] + 1)) - set(held))
    assert len(missing) == 60 and set(missing) == lost
    (r,) = refilled
    assert (r.market, r.symbol, r.state) == ("binance_derivatives", "BTC-USDT", "repaired")
    # the venue's history of the hour is what it sent: the held ids and the lost ones (if the run crossed the
    # hour, only this hour's part of the held ones)
    assert r.published == 60 and r.stored == r.fetched - 60
    stored = sorted(int(x[0]) for x in hot_rows(settings, "SELECT trade_id FROM marketprism_hot.trade"))
    assert stored == list(range(stored[0], stored[-1] + 1)) and set(missing) <= set(stored)
    (r2,) = again
    assert r2.published == 0 and r2.stored == r2.fetched  # a second refill finds the hour complete
    first_lost, last_lost = messages[40].seq, messages[99].seq
    assert [(x.first, x.last, x.missing) for x in lost_ranges] == [(first_lost, last_lost, 60)]
    trade = after["trade"]
    assert isinstance(trade, SealReport), trade
    meta = trade.metadata()
    assert meta["lost_ranges"] == (f"MARKET_DATA seq {first_lost}-{last_lost}: 60 messages lost from the stream, "
                                   f"hour replaced from venue history (+0 refilled, {r2.stored} already held)")
    assert meta["source"] == "gaps_repaired" and meta["proof"] == "ledger+jetstream+venue_history"
    # the hour holds the venue's history of it, every row committed by a ledger range (the refill's by the writer)
    assert trade.rows == trade.ledger_rows == r2.fetched and meta["unledgered_rows"] == 0
    liquidation = after["liquidation"]
    assert isinstance(liquidation, SealRefused) and liquidation.aged_out
    assert f"seq {first_lost} is no longer in JetStream" in str(liquidation)
    assert "may have held liquidation records" in str(liquidation)
    why = hour_refill.no_history_reason(settings, "liquidation", hour, str(liquidation))  # what the hot asset says
    assert "no venue keeps a history of liquidation, so nothing can refill it" in why
    assert "raise streams.MARKET_DATA.max_age_s" in why
    assert isinstance(later["trade"], SealReport) and isinstance(later["liquidation"], SealReport), later
    assert later["trade"].rows == 0 and "lost_ranges" not in later["trade"].metadata()

"""Refill over real sockets: the emulator drops 500 trades from its streams (drop_trades), the collector's
refiller fetches them from the emulator's history endpoints through the collector's own REST client and
publisher, and the hot trade table (real writer, real chDB) then holds every id exactly once; a 429 on the
history endpoint is waited out (Retry-After), never turned into a ban."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from marketprism_dagster import records
from marketprism_dagster.collector.refill import Outcome, Refiller
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.jetstream import connect
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.timeutil import now_ms
from tests.support.collector_helpers import emulator_overrides, running_collector, stream_messages, until
from tests.support.seal_helpers import event_hours, seal_closed
from tests.support.writer_helpers import committed, hot_rows, writer_running

MARKETS = {"binance_derivatives": (["BTC-USDT"], ["trade"]), "okx_derivatives": (["BTC-USDT"], ["trade"])}
EXCHANGE_SYMBOL = {"binance_derivatives": "BTCUSDT", "okx_derivatives": "BTC-USDT-SWAP"}
VENUE_OF = {"binance_derivatives": "binance_derivatives", "okx_derivatives": "okx"}


@contextlib.asynccontextmanager
async def collecting(settings: Settings) -> AsyncIterator[Collector]:
    """A running collector once it collects and its publisher has started."""
    async with running_collector(settings) as (collector, _):
        await until(lambda: collector.collecting and collector.publisher.started, 20)
        yield collector


def gap_for(market: str, first: int, last: int) -> Any:
    now = now_ms()
    return records.SourceGap(
        exchange=market, market_type="perpetual", symbol="BTC-USDT", exchange_symbol=EXCHANGE_SYMBOL[market],
        timestamp=now - 60_000, received_at=now, gap_data_type="trade", cause="trade_id_jump", end_time=now,
        first_missing_id=str(first), last_missing_id=str(last), state="open", recovered=0, detail="test",
    )


@contextlib.asynccontextmanager
async def one_drop_repaired(
    cfg: EmulatorConfig, market: str, nats_url: str, settings_factory: Callable[..., Settings]
) -> AsyncIterator[tuple[Emulator, Collector, Outcome]]:
    """The emulator's first dropped-trades window on ``market``, once sent, repaired by a ``Refiller`` on the
    running collector's own REST client; the body runs with the collector still up."""
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_url, **emulator_overrides(emu.urls, {market: MARKETS[market]}))
        async with collecting(settings) as collector:
            await until(lambda: emu.dropped_trades and emu.dropped_trades[0].done, 60)
            d = emu.dropped_trades[0]
            assert collector._rest is not None
            refiller = Refiller(collector._rest, collector.adapters, collector._emit)
            yield emu, collector, await refiller.repair(market, gap_for(market, d.first_id, d.last_id))


def stored_ids(settings: Settings, market: str) -> list[int]:
    rows = hot_rows(
        settings,
        f"SELECT trade_id FROM marketprism_hot.trade WHERE exchange = '{market}' AND symbol = 'BTC-USDT'"
    )
    return sorted(int(r[0]) for r in rows)


async def test_dropped_trades_are_refilled_exactly_once_into_the_hot_table(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    faults = ("drop_trades@binance_derivatives:at=300:count=500:topic=btcusdt,"
              "drop_trades@okx:at=300:count=500:topic=BTC-USDT-SWAP")
    cfg = EmulatorConfig(venues=("binance_derivatives", "okx"), rate=250, seed=5, faults=faults,
                         okx_trade_count_max=3)  # OKX aggregates up to 3 matches a push
    async with Emulator(cfg) as emu:
        settings = settings_factory(
            nats_url=nats_server.url, **emulator_overrides(emu.urls, MARKETS),
            **{"writer.health_port": 0, "writer.monitor_interval_s": 0.5, "log_level": "WARNING"},
        )
        nc = await connect(nats_server.url)
        try:
            async with writer_running(settings) as writer:
                async with collecting(settings) as collector:
                    await until(lambda: len(emu.dropped_trades) == 2 and all(d.done for d in emu.dropped_trades), 60)
                    dropped = {d.venue: d for d in emu.dropped_trades}
                    await asyncio.sleep(1.0)  # trades after the hole reach the collector
                    assert collector._rest is not None
                    refiller = Refiller(collector._rest, collector.adapters, collector._emit)
                    gaps = {m: gap_for(m, dropped[VENUE_OF[m]].first_id, dropped[VENUE_OF[m]].last_id) for m in MARKETS}
                    outcomes = {m: await refiller.repair(m, gap) for m, gap in gaps.items()}
                    again = await refiller.repair("binance_derivatives", gaps["binance_derivatives"])
                # the collector stopped (its publisher flushed): the writer commits everything it published
                await until(lambda: committed(nc, writer), 60, interval=0.2)
        finally:
            await nc.close()

    assert dropped["binance_derivatives"].last_id - dropped["binance_derivatives"].first_id + 1 == 500
    for market, outcome in outcomes.items():
        d = dropped[VENUE_OF[market]]
        assert (outcome.state, outcome.recovered) == ("repaired", d.last_id - d.first_id + 1), (market, outcome)
    assert again.recovered == 500  # published again: JetStream's duplicate window (same Nats-Msg-Id) drops it

    binance = stored_ids(settings, "binance_derivatives")
    assert len(binance) == len(set(binance)) and binance == list(range(binance[0], binance[-1] + 1))  # every id once
    d = dropped["binance_derivatives"]
    assert binance[0] < d.first_id and d.last_id < binance[-1]

    okx = stored_ids(settings, "okx_derivatives")
    d = dropped["okx"]
    assert len(okx) == len(set(okx))  # nothing stored twice
    assert [i for i in okx if d.first_id <= i <= d.last_id] == list(range(d.first_id, d.last_id + 1))  # each match
    assert okx[0] < d.first_id and d.last_id < okx[-1]

    stored = hot_rows(
        settings,
        "SELECT exchange, state, recovered, toUnixTimestamp64Milli(timestamp) FROM marketprism_hot.source_gap"
    )
    # the test's gaps (the collector may record the hole itself too: those rows are its own), each stored once as
    # repaired with the count it recovered (the Binance one was published twice)
    mine = sorted((g[0], g[1], g[2]) for g in stored if g[3] in {gap.timestamp for gap in gaps.values()})
    okx_matches = dropped["okx"].last_id - dropped["okx"].first_id + 1
    assert mine == [("binance_derivatives", "repaired", 500), ("okx_derivatives", "repaired", okx_matches)]


async def test_a_429_on_the_history_endpoint_is_waited_out_never_banned(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    faults = ("drop_trades@binance_derivatives:at=100:count=500:topic=btcusdt,"
              "rest_429@binance_derivatives:path=/fapi/v1/aggTrades:count=3")
    cfg = EmulatorConfig(venues=("binance_derivatives",), rate=250, seed=6, faults=faults)
    repaired = one_drop_repaired(cfg, "binance_derivatives", nats_server.url, settings_factory)
    async with repaired as (emu, collector, outcome):
        assert collector._rest is not None
        limiter = next(iter(collector._rest.limiters.values()))
    fired = emu.faults_fired
    assert (outcome.state, outcome.recovered) == ("repaired", 500)
    assert fired["rest_429"]["binance_derivatives"] == 3
    assert limiter.rate_limited == 3 and limiter.banned == 0  # three Retry-After waits, no 418
    assert collector.metrics.rate_limited.labels("binance_derivatives", "418")._value.get() == 0


async def test_the_collector_refills_an_open_gap_it_publishes(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    """Automatic path: a ``source_gap`` the collector publishes (state open, cause trade_id_jump) is queued and
    refilled by the collector's own refiller; the stream then holds each missing id once and the repaired gap."""
    cfg = EmulatorConfig(venues=("binance_derivatives",), rate=250, seed=9,
                         faults="drop_trades@binance_derivatives:at=100:count=500:topic=btcusdt")
    markets = {"binance_derivatives": MARKETS["binance_derivatives"]}
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        nc = await connect(nats_server.url)
        try:
            async with collecting(settings) as collector:
                await until(lambda: emu.dropped_trades and emu.dropped_trades[0].done, 60)
                d = emu.dropped_trades[0]
                assert collector.refiller is not None
                collector.refiller.delay_s = 0.1
                gap = gap_for("binance_derivatives", d.first_id, d.last_id)
                collector._emit("binance_derivatives", [gap])
                await until(lambda: collector.refiller is not None and len(collector.refiller.done) == 1, 30)
            msgs = await stream_messages(nc, "MARKET_DATA")
        finally:
            await nc.close()
    decoded = [records.decode(m.data) for m in msgs]
    ids = [int(r.trade_id) for r in decoded if records.data_type_of(r) == "trade"]
    assert sorted(i for i in ids if d.first_id <= i <= d.last_id) == list(range(d.first_id, d.last_id + 1))
    assert len(ids) == len(set(ids))
    gaps = sorted((g.state, g.recovered) for g in decoded
                  if records.data_type_of(g) == "source_gap" and g.timestamp == gap.timestamp)
    assert gaps == [("open", 0), ("repaired", 500)]  # the test's gap (the collector may record the hole too)


async def test_okx_rate_limit_codes_on_the_history_endpoint_are_waited_out(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    """OKX answers a rate limit as HTTP 200 with code 50011: the host waits its 2 s window and the walk completes."""
    faults = ("drop_trades@okx:at=100:count=300:topic=BTC-USDT-SWAP,"
              "rest_code_200@okx:path=/api/v5/market/history-trades:count=2")
    cfg = EmulatorConfig(venues=("okx",), rate=250, seed=7, faults=faults)
    repaired = one_drop_repaired(cfg, "okx_derivatives", nats_server.url, settings_factory)
    async with repaired as (emu, collector, outcome):
        codes = collector.metrics.rate_limited.labels("okx_derivatives", "50011")._value.get()
    fired = emu.faults_fired
    d = emu.dropped_trades[0]
    assert (outcome.state, outcome.recovered) == ("repaired", d.last_id - d.first_id + 1)
    assert outcome.pages == -(-outcome.recovered // 100)  # 100 matches a page (300 pushes of 1-3 matches each)
    assert fired["rest_code_200"]["okx"] == 2 and codes == 2


async def test_detected_holes_and_a_disconnect_are_refilled_automatically_every_id_once(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    """Issue 11, first "done when" (with the seal): 500 trades dropped on Binance USD-M and on OKX swaps plus a
    forced disconnect; the collector records each hole with its exact ids, refills it by itself, and the hot trade
    table holds every id the emulator generated over the run exactly once. (The emulator generates no trades for a
    stream nobody is subscribed to, so the ids continue after the reconnect and the disconnect leaves no trade gap.)"""
    faults = ("drop_trades@binance_derivatives:at=200:count=500:topic=btcusdt,"
              "drop_trades@okx:at=200:count=500:topic=BTC-USDT-SWAP,"
              "disconnect@binance_derivatives:at=1000")
    cfg = EmulatorConfig(venues=("binance_derivatives", "okx"), rate=250, seed=12, faults=faults,
                         okx_trade_count_max=3)
    async with Emulator(cfg) as emu:
        settings = settings_factory(
            nats_url=nats_server.url, **emulator_overrides(emu.urls, MARKETS),
            **{"writer.health_port": 0, "writer.monitor_interval_s": 0.5},
        )
        nc = await connect(nats_server.url)
        try:
            async with writer_running(settings) as writer:
                async with collecting(settings) as collector:
                    await until(lambda: len(emu.dropped_trades) == 2 and all(d.done for d in emu.dropped_trades), 60)
                    await until(lambda: emu.faults_fired.get("disconnect"), 60)
                    # the reconnected feed has delivered trades and no id series waits above a hole: a hole the
                    # reconnect left (trades that went by meanwhile) is recorded and queued by now
                    feed = next(f for f in collector.state.feeds.values()
                                if f.market == "binance_derivatives" and "trade" in f.data_types)
                    await until(lambda: feed.connects >= 2 and feed.connected, 30)
                    after_reconnect = feed.messages
                    await until(lambda: feed.messages >= after_reconnect + 20 and not collector.gaps.holding, 30)

                    def repaired() -> int:
                        done = collector.refiller.done if collector.refiller is not None else []
                        return sum(1 for _, _, o in done if o.state == "repaired")

                    await until(lambda: repaired() >= 2 and collector.refiller is not None
                                and collector.refiller.pending == 0, 60)
                    dropped = {d.venue: d for d in emu.dropped_trades}
                await until(lambda: committed(nc, writer), 60, interval=0.2)
        finally:
            await nc.close()
    binance = stored_ids(settings, "binance_derivatives")
    assert len(binance) == len(set(binance)) and binance == list(range(binance[0], binance[-1] + 1))
    d = dropped["binance_derivatives"]
    assert binance[0] < d.first_id and d.last_id < binance[-1]
    okx = stored_ids(settings, "okx_derivatives")
    d = dropped["okx"]
    assert len(okx) == len(set(okx))
    assert [i for i in okx if d.first_id <= i <= d.last_id] == list(range(d.first_id, d.last_id + 1))
    gaps = hot_rows(
        settings,
        "SELECT exchange, cause, first_missing_id, last_missing_id, state, recovered "
        "FROM marketprism_hot.source_gap FINAL WHERE gap_data_type = 'trade' ORDER BY exchange, state"
    )
    for market, venue in VENUE_OF.items():
        d = dropped[venue]
        ids = (str(d.first_id), str(d.last_id))
        mine = [g for g in gaps if g[0] == market and (g[2], g[3]) == ids]
        assert [(g[1], g[4], g[5]) for g in mine] == [
            ("trade_id_jump", "open", 0), ("trade_id_jump", "repaired", d.last_id - d.first_id + 1)
        ], gaps
        # any other trade gap (the disconnect's, when trades went by while reconnecting) is repaired too
        for g in gaps:
            if g[0] == market and g[4] == "open":
                assert any(h[:4] == g[:4] and h[4] == "repaired" for h in gaps), gaps
    # the seal of every hour the run touched (as if closed): ids continuous, each gap repaired (docs/source_gaps.md)
    reports = [(await seal_closed(settings, ["trade"], h))["trade"] for h in event_hours(settings, "trade")]
    assert all(r.source is not None and r.source.verdict == "complete" for r in reports)  # every id refilled by id
    assert all(r.metadata()["trade_ids_continuous"] is True for r in reports)
    assert sum(r.metadata()["source_gaps_repaired"] for r in reports) >= 2  # one per venue (twice if across an hour)

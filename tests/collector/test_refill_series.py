"""Refill of the polled and streamed series from the emulator's history endpoints (funding, open interest, both
long/short ratios, DVOL) over real sockets: points strictly inside the window, on the venue's own boundaries,
the ratio series with the live poll's identities and values; a window beyond retention asks nothing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from marketprism_dagster import records
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.refill import Refiller
from marketprism_dagster.collector.rest import RestClient
from marketprism_dagster.collector.state import CollectorState, MarketState
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.timeutil import now_ms
from marketprism_dagster.validation import fault
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import VenueAdapter
from marketprism_dagster.venues.history import Window
from tests.support.collector_helpers import emulator_overrides

SERIES = ["funding_rate", "open_interest", "lsr_top_position", "lsr_all_account"]
MARKETS = {
    "binance_derivatives": (["BTC-USDT"], SERIES),
    "okx_derivatives": (["BTC-USDT"], SERIES),
    "deribit_derivatives": (["BTC"], ["volatility_index"]),
}
SYMBOL = {"binance_derivatives": "BTCUSDT", "okx_derivatives": "BTC-USDT-SWAP", "deribit_derivatives": "btc_usd"}
HOUR = 3_600_000


@asynccontextmanager
async def refill_kit(settings: Settings) -> AsyncIterator[tuple[RestClient, dict[str, VenueAdapter], list[Any]]]:
    """Adapters with their instruments loaded, a RestClient as the collector builds it, a list collecting
    what a refill publishes."""
    state = CollectorState("test")
    adapters: dict[str, VenueAdapter] = {}
    published: list[Any] = []
    async with aiohttp.ClientSession() as session:
        rest = RestClient(session, CollectorMetrics(), state,
                          body_error=lambda m, body: adapters[m].rest_body_error(body))
        for market in MARKETS:
            mc = settings.markets[market]
            state.markets[market] = MarketState(mc.venue, mc.market_type, tuple(mc.data_types), tuple(mc.symbols))
            adapter = adapters[market] = adapter_for(market, mc, settings.orderbook)
            adapter.load_instruments({u: (await rest.get(market, u))[0] for u in adapter.instrument_urls()})
        yield rest, adapters, published


async def test_series_refill_inside_the_window_with_live_identities(settings_factory: Callable[..., Settings]) -> None:
    async with Emulator(EmulatorConfig(venues=("binance_derivatives", "okx", "deribit"), rate=5, seed=3)) as emu:
        settings = settings_factory(**emulator_overrides(emu.urls, MARKETS))
        async with refill_kit(settings) as (rest, adapters, published):
            refiller = Refiller(rest, adapters, collector_into(published))
            now = now_ms()
            got: dict[tuple[str, str], list[Any]] = {}
            for market in ("binance_derivatives", "okx_derivatives"):
                for data_type in SERIES:
                    span = 24 * HOUR if data_type == "funding_rate" else 2 * HOUR
                    window = Window(data_type, SYMBOL[market], now - span, now)
                    del published[:]
                    outcome = await refiller.fill(market, window)
                    assert outcome.state == "repaired", (market, data_type, outcome)
                    got[market, data_type] = list(published)
                    assert outcome.recovered == len(published) > 0
                    for r in published:
                        assert fault(r) is None and window.after_ms < r.timestamp < window.before_ms
                # the ratio series: the refilled points of the live poll's periods are the polled ones
                adapter = adapters[market]
                for poll in adapter.rest_polls():
                    if poll.symbol != SYMBOL[market] or not poll.data_type.startswith("lsr_"):
                        continue
                    body, ts = await rest.get(market, poll.url)
                    live = {records.msg_id(r): r for r in adapter.on_rest(poll, body, ts).records}
                    refilled = {records.msg_id(r): r for r in got[market, poll.data_type]}
                    assert live and set(live) <= set(refilled) | {k for k, r in live.items() if r.timestamp >= now}
                    for key, r in live.items():
                        if key in refilled:
                            assert _body(refilled[key]) == _body(r)
            window = Window("volatility_index", "btc_usd", now - 30 * 60_000, now)
            del published[:]
            outcome = await refiller.fill("deribit_derivatives", window)
            dvol = list(published)
    for market in ("binance_derivatives", "okx_derivatives"):
        funding = got[market, "funding_rate"]
        assert len(funding) == 3 and all(r.timestamp % (8 * HOUR) == 0 == r.timestamp - r.next_funding_time
                                         for r in funding)  # settled rates at 00/08/16 UTC
        oi = got[market, "open_interest"]
        assert len(oi) in (23, 24) and all(r.timestamp % 300_000 == 0 for r in oi)  # 5-minute statistics
        assert len({records.msg_id(r) for r in oi}) == len(oi)
    assert outcome.state == "repaired" and len(dvol) in (29, 30)  # one-minute candles strictly inside
    assert all(r.timestamp % 60_000 == 0 and r.close == r.index_value for r in dvol)


def collector_into(published: list[Any]) -> Callable[[str, list[Any]], list[Any]]:
    """A publish callback keeping what a refill publishes (nothing rejected)."""

    def publish(market: str, recs: list[Any]) -> list[Any]:
        published.extend(recs)
        return []

    return publish


def _body(record: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(records.encode(record))
    body.pop("received_at")
    return body


async def test_a_window_beyond_retention_is_unrecoverable_without_a_request(
    settings_factory: Callable[..., Settings]
) -> None:
    async with Emulator(EmulatorConfig(venues=("binance_derivatives", "okx", "deribit"), rate=5, seed=3)) as emu:
        settings = settings_factory(**emulator_overrides(emu.urls, MARKETS))
        async with refill_kit(settings) as (rest, adapters, published):
            refiller = Refiller(rest, adapters, collector_into(published))
            before = rest.state.rest_requests
            now = now_ms()
            old = Window("open_interest", "BTCUSDT", now - 40 * 24 * HOUR, now - 31 * 24 * HOUR)
            outcome = await refiller.fill("binance_derivatives", old)
            book = await refiller.fill("binance_derivatives", Window("orderbook", "BTCUSDT", now - HOUR, now))
            assert rest.state.rest_requests == before
    assert (outcome.state, outcome.recovered) == ("unrecoverable", 0) and "retention" in outcome.detail
    assert book.state == "unrecoverable" and "no history" in book.detail and not published

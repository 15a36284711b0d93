"""The liquidation window rule trusts only the feeds that carry liquidations."""

from __future__ import annotations

from marketprism_dagster.collector.health import health_report
from marketprism_dagster.collector.state import CollectorState, FeedState, MarketState
from marketprism_dagster.config import MarketConfig, OrderBookConfig
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import Instrument


def _binance_usdm_feeds(settings) -> dict[str, tuple[str, ...]]:
    market: MarketConfig = settings.markets["binance_derivatives"]
    adapter = adapter_for("binance_derivatives", market, OrderBookConfig())
    adapter.instruments = {"BTCUSDT": Instrument("BTC-USDT", "BTCUSDT", "BTC", "USDT")}
    return {f.key: f.data_types for f in adapter.ws_feeds()}


def test_binance_usdm_feeds_declare_what_they_carry(settings_factory):
    feeds = _binance_usdm_feeds(settings_factory())
    assert feeds == {
        "binance_derivatives/public": ("orderbook",),
        "binance_derivatives/market": ("trade", "funding_rate", "liquidation"),
    }


def test_depth_feed_down_does_not_make_liquidations_unhealthy_but_market_feed_down_does(settings_factory):
    settings = settings_factory(collector__grace_s=0)
    feeds = _binance_usdm_feeds(settings)
    state = CollectorState(shard="main")
    state.markets["binance_derivatives"] = MarketState("binance", "perpetual", ("liquidation",), ("BTC-USDT",))
    for key, types in feeds.items():
        state.feeds[key] = FeedState("binance_derivatives", data_types=types, connected=True)

    state.feeds["binance_derivatives/public"].connected = False
    body, _ = health_report(state, settings)
    assert body["coverage"]["liquidation"]["binance_derivatives"]["status"] == "ok"

    state.feeds["binance_derivatives/market"].connected = False
    body, status = health_report(state, settings)
    assert body["coverage"]["liquidation"]["binance_derivatives"]["status"] != "ok"
    assert status == 503

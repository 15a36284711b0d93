"""The venue registry is the one list of venues: a venue is its module's declaration, and nothing
outside ``venues/`` (and the emulator) names one.

A throwaway venue declared in this file registers and is then accepted by config validation, the
default markets, the REST rate limiter and the offline replay, none of which is edited for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import orjson
import pytest
import yaml

from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.rest import RestClient
from marketprism_dagster.collector.state import CollectorState, MarketState
from marketprism_dagster.config import ConfigError, Settings, load_config
from marketprism_dagster.normalize import is_instrument_record, replay
from marketprism_dagster.records import Trade
from marketprism_dagster.venues import registry
from marketprism_dagster.venues.base import (
    Channel,
    Instrument,
    MarketSpec,
    Output,
    SnapshotDepth,
    VenueAdapter,
    WsFeed,
)

ROOT = Path(__file__).resolve().parents[2]
# where venue names may appear: the venue modules and the emulator (its venue modules)
GENERIC_TREES = ("marketprism_dagster", "sensors", "resources")
VENUE_TREES = ("marketprism_dagster/venues", "marketprism_dagster/emulator")


def test_no_module_outside_venues_and_the_emulator_names_a_venue() -> None:
    names = registry.venue_names()
    assert {"binance", "okx", "deribit"} <= set(names)
    pattern = re.compile("|".join(map(re.escape, names)), re.IGNORECASE)
    hits = []
    for tree in GENERIC_TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(VENUE_TREES):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{rel}:{n}: {line.strip()}")
    assert hits == []


def test_the_market_matrix_is_derived_from_the_declarations() -> None:
    perpetual = (
        "orderbook",
        "trade",
        "funding_rate",
        "liquidation",
        "open_interest",
        "lsr_top_position",
        "lsr_all_account",
    )
    assert registry.offered("binance", "spot") == ("orderbook", "trade")
    assert registry.offered("binance", "perpetual") == perpetual
    assert set(registry.offered("okx", "spot") or ()) == {"orderbook", "trade"}
    assert set(registry.offered("okx", "perpetual") or ()) == set(perpetual)
    assert registry.offered("deribit", "options") == ("volatility_index",)
    assert registry.offered("deribit", "spot") is None and registry.offered("nowhere", "spot") is None
    assert list(Settings().markets) == [
        "binance_spot",
        "binance_derivatives",
        "deribit_derivatives",
        "okx_spot",
        "okx_derivatives",
    ]


def test_a_channel_needed_only_by_a_polled_type_is_subscribed_and_carries_nothing() -> None:
    """USD-M open interest is polled but needs the mark price stream for its quote value."""
    market = Settings().markets["binance_derivatives"].model_copy(update={"data_types": ["open_interest"]})
    adapter = registry.adapter_for("binance_derivatives", market, Settings().orderbook)
    adapter.instruments = {"BTCUSDT": Instrument("BTC-USDT", "BTCUSDT", "BTC", "USDT")}
    (feed,) = adapter.ws_feeds()
    assert feed.key == "binance_derivatives/market"
    assert feed.url.endswith("/market/stream?streams=btcusdt@markPrice@1s")
    assert feed.data_types == ()
    assert [p.data_type for p in adapter.rest_polls()] == ["open_interest"]


# ---------------------------------------------------------------- a venue declared here


class ToyAdapter(VenueAdapter):
    """A venue with one spot market: a trade channel and a REST book snapshot endpoint."""

    venue = "toyx"
    markets: ClassVar[Mapping[str, MarketSpec]] = {
        "spot": MarketSpec(
            instruments_path="/v1/symbols",
            snapshot_path="/v1/book",
            snapshot_symbol_param="pair",
            snapshot_depth=SnapshotDepth("GET /v1/book depth", 10, 1000, values=(10, 100, 1000)),
            weight_per_minute=600,
        )
    }
    channels = (
        Channel("deals", ("trade",), "_deals", {"spot": "ws"}),
        Channel("book", ("orderbook",), "_deals", {"spot": "ws"}),
    )
    weight_header = "X-Toy-Weight"
    default_markets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "toyx_spot": {
            "market_type": "spot",
            "symbols": ["BTC-USD"],
            "rest_url": "http://127.0.0.1:1",
            "ws_url": "ws://127.0.0.1:1",
        }
    }

    def instrument_urls(self) -> Sequence[str]:
        return [self.market.rest_url + self.spec.instruments_path]

    def load_instruments(self, bodies: Mapping[str, bytes]) -> dict[str, Instrument]:
        listed = [
            Instrument(f"{b}-{q}", f"{b}{q}".lower(), b, q)
            for body in bodies.values()
            for b, q in orjson.loads(body)["pairs"]
        ]
        return self._keep_instruments(listed, "BASE-QUOTE")

    def ws_feeds(self) -> list[WsFeed]:
        return [
            WsFeed(f"{self.market_id}/{feed}", self.market.ws_url, data_types=self.carried(channels))
            for feed, channels in self.subscribed().items()
        ]

    def on_connect(self, feed_key: str, received_at: int) -> Output:
        return Output()

    def on_message(self, feed_key: str, raw: bytes | str, received_at: int) -> Output:
        out = Output()
        msg = orjson.loads(raw)
        self._handlers[msg["ch"]](msg, received_at, out)
        return out

    def _deals(self, msg: dict[str, Any], received_at: int, out: Output) -> None:
        inst = self._instrument(msg["pair"], out)
        if inst is not None:
            out.records.append(
                Trade(
                    exchange=self.market_id,
                    market_type=self.market_type,
                    symbol=inst.symbol,
                    exchange_symbol=inst.exchange_symbol,
                    timestamp=msg["ts"],
                    received_at=received_at,
                    trade_id=str(msg["id"]),
                    price=msg["px"],
                    quantity=msg["qty"],
                    side=msg["side"],
                )
            )


@pytest.fixture
def toy() -> Iterator[type[ToyAdapter]]:
    registry.register(ToyAdapter)
    try:
        yield ToyAdapter
    finally:
        registry.unregister(ToyAdapter.venue)


def _load(tmp_path: Path, tree: dict[str, Any]) -> Settings:
    path = tmp_path / "mp.yaml"
    path.write_text(yaml.safe_dump(tree))
    return load_config(path, env={}).settings


def test_a_venue_declared_in_a_test_is_configured_validated_and_defaulted(toy: type[ToyAdapter], tmp_path: Path):
    market = {"venue": "toyx", "market_type": "spot", "symbols": ["ETH-USD"], "data_types": ["trade", "orderbook"]}
    market |= {"rest_url": "http://127.0.0.1:2", "ws_url": "ws://127.0.0.1:2"}
    settings = _load(tmp_path, {"markets": {"mine": market}, "orderbook": {"snapshot_limit": 100}})
    assert settings.markets["mine"].venue == "toyx"
    assert Settings().markets["toyx_spot"].data_types == ["trade", "orderbook"]  # a default market, all it offers
    with pytest.raises(ConfigError, match=r"not offered by toyx spot; allowed: \['trade', 'orderbook'\]"):
        _load(tmp_path, {"markets": {"mine": market | {"data_types": ["funding_rate"]}}})
    with pytest.raises(ConfigError, match=r"venue 'toyx' has no market_type 'perpetual'; allowed: .*toyx/spot"):
        _load(tmp_path, {"markets": {"mine": market | {"market_type": "perpetual"}}})
    with pytest.raises(
        ConfigError, match=r"snapshot_limit 50 is not accepted by market mine .*allowed: \[10, 100, 1000\]"
    ):
        _load(tmp_path, {"markets": {"mine": market}, "orderbook": {"snapshot_limit": 50}})


def test_an_unregistered_venue_is_refused_naming_the_registered_ones(tmp_path: Path) -> None:
    market = {"venue": "toyx", "market_type": "spot", "symbols": ["ETH-USD"], "data_types": ["trade"]}
    market |= {"rest_url": "http://127.0.0.1:2", "ws_url": "ws://127.0.0.1:2"}
    with pytest.raises(ConfigError, match=r"unknown venue 'toyx'; allowed: binance, deribit, okx"):
        _load(tmp_path, {"markets": {"mine": market}})


def test_a_declared_venue_gets_its_rest_weight_budget_and_header(toy: type[ToyAdapter]) -> None:
    state = CollectorState("main")
    state.markets["toyx_spot"] = MarketState("toyx", "spot", ("trade",), ("BTC-USD",))
    client = RestClient(cast(Any, None), CollectorMetrics(), state)
    limiter = client.limiter("toyx_spot", "http://127.0.0.1:1/v1/book?pair=btcusd")
    assert (limiter.weight_limit, limiter.weight_header) == (600, "X-Toy-Weight")
    limiter.update(200, {"X-Toy-Weight": "590"})
    assert limiter.used == 590 and limiter.delay_for(10) > 0  # past 0.9 * 600: wait for the next minute


def test_a_declared_venue_replays_offline_through_its_declared_endpoints(toy: type[ToyAdapter]) -> None:
    settings = Settings()
    adapter = registry.adapter_for("toyx_spot", settings.markets["toyx_spot"], settings.orderbook)
    listing = {"t": 1.0, "kind": "http", "url": "http://127.0.0.1:1/v1/symbols", "data": {"pairs": [["BTC", "USD"]]}}
    deal = {"ch": "deals", "pair": "btcusd", "ts": 1_700_000_000_000, "id": 7, "px": "100.5", "qty": "0.2"}
    recv = {"t": 2.0, "kind": "recv", "url": "ws://127.0.0.1:1", "data": deal | {"side": "buy"}}
    assert is_instrument_record(listing) and not is_instrument_record(recv)
    result = replay(adapter, [listing, recv])
    assert result.instruments == 1
    (trade,) = result.records
    assert (trade.exchange, trade.symbol, trade.trade_id, trade.price, trade.side) == (
        "toyx_spot",
        "BTC-USD",
        "7",
        "100.5",
        "buy",
    )

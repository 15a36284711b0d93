"""Deribit volatility index (DVOL) over JSON-RPC WebSocket, with REST candle backfill.

Feed ``{ws}/ws/api/v2``: ``public/set_heartbeat`` (interval 30 s) then ``public/subscribe`` to
``deribit_volatility_index.{btc_usd,eth_usd}``. The server's ``heartbeat`` notifications of
type ``test_request`` are answered with ``public/test`` (else Deribit closes the socket).
On every (re)connect a ``Backfill`` of ``public/get_volatility_index_data`` (resolution 60,
the last ``BACKFILL_MINUTES``) fills any gap; candles map to ``volatility_index`` records
with index_value = close and open/high/low/close set.

History (refill, ``histories``): the same ``get_volatility_index_data`` (resolution 60) over a gap,
walked backwards by ``result.continuation``.

Deribit sends JSON numbers: they are parsed with their decimal text kept (never float).
Config symbols are currencies (BTC, ETH); the index name is ``<ccy>_usd``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from marketprism_dagster.records import VolatilityIndex
from marketprism_dagster.venues.base import (
    Backfill,
    BookSettings,
    Channel,
    Instrument,
    MarketSettings,
    MarketSpec,
    Output,
    Send,
    VenueAdapter,
    WsFeed,
)
from marketprism_dagster.venues.common import decimal_str, loads_exact
from marketprism_dagster.venues.history import History, Page, PageResult, Window

DVOL_CHANNEL = "deribit_volatility_index"  # subscribed as deribit_volatility_index.<index name>
CHANNEL_PREFIX = DVOL_CHANNEL + "."
HEARTBEAT_S = 30
BACKFILL_MINUTES = 60
DVOL_HISTORY_PATH = "/api/v2/public/get_volatility_index_data"
DVOL_RESOLUTION = 60  # seconds: one-minute candles (index_value = close, as the reconnect backfill)
DERIBIT_HISTORIES = (
    History("volatility_index", DVOL_HISTORY_PATH, "_history_dvol_first", "_history_dvol_page", ("options",),
            min_interval_s=0.05,  # public requests are limited per IP (credits): well below them
            note="one-minute candles at minute starts (the reconnect backfill's rows)"),
)


class DeribitAdapter(VenueAdapter):
    venue = "deribit"
    # the DVOL indices are named by currency: the instrument listing (recorded in the sessions) is not fetched
    markets: ClassVar[Mapping[str, MarketSpec]] = {
        "options": MarketSpec(instruments_path="/api/v2/public/get_instruments")
    }
    channels = (Channel(DVOL_CHANNEL, ("volatility_index",), "_volatility", {"options": "ws"}),)
    histories = DERIBIT_HISTORIES
    default_markets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "deribit_derivatives": {
            "market_type": "options",
            "symbols": ["BTC", "ETH"],
            "rest_url": "https://www.deribit.com",
            "ws_url": "wss://www.deribit.com",
        },
    }

    def __init__(self, market_id: str, market: MarketSettings, orderbook: BookSettings) -> None:
        super().__init__(market_id, market, orderbook)
        self.feed_key = f"{market_id}/ws"
        self._ids = itertools.count(1000)
        self.instruments = self._index_instruments(market.symbols)

    @staticmethod
    def _index_instruments(symbols: Sequence[str]) -> dict[str, Instrument]:
        out = {}
        for s in symbols:
            ccy = s.split("-")[0].upper()
            name = f"{ccy.lower()}_usd"
            out[name] = Instrument(symbol=ccy, exchange_symbol=name, base=ccy, quote="USD")
        return out

    # ------------------------------------------------------------ instruments
    def instrument_urls(self) -> Sequence[str]:
        return []  # DVOL indices are named by currency; nothing to fetch

    def load_instruments(self, bodies: Mapping[str, bytes]) -> dict[str, Instrument]:
        return self.instruments

    # ------------------------------------------------------------ subscriptions
    def _rpc(self, method: str, params: dict[str, Any], rid: int | None = None) -> str:
        rid = next(self._ids) if rid is None else rid
        return json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}, separators=(",", ":"))

    def ws_feeds(self) -> list[WsFeed]:
        channels = [CHANNEL_PREFIX + name for name in self.instruments]
        return [
            WsFeed(
                key=self.feed_key,
                url=f"{self.market.ws_url.rstrip('/')}/ws/api/v2",
                subscribe=(
                    self._rpc("public/set_heartbeat", {"interval": HEARTBEAT_S}, 1),
                    self._rpc("public/subscribe", {"channels": channels}, 2),
                ),
                data_types=self.carried(self.channels),
            )
        ]

    def backfill_url(self, currency: str, end_ms: int, minutes: int = BACKFILL_MINUTES) -> str:
        return (
            f"{self.market.rest_url.rstrip('/')}/api/v2/public/get_volatility_index_data?currency={currency}"
            f"&start_timestamp={end_ms - minutes * 60_000}&end_timestamp={end_ms}&resolution=60"
        )

    # ------------------------------------------------------------ inputs
    def on_connect(self, feed_key: str, received_at: int) -> Output:
        out = Output()
        for name, inst in self.instruments.items():
            out.actions.append(
                Backfill(key=f"{self.market_id}/dvol/{name}", url=self.backfill_url(inst.symbol, received_at))
            )
        return out

    def on_message(self, feed_key: str, raw: bytes | str, received_at: int) -> Output:
        out = Output()
        try:
            msg = loads_exact(raw)
            method = msg.get("method")
            if method == "heartbeat":
                if msg.get("params", {}).get("type") == "test_request":
                    out.actions.append(Send(feed_key, self._rpc("public/test", {})))
                return out
            if method != "subscription":
                if "error" in msg:
                    self.errors.bad(out, "rpc_error", str(msg["error"].get("code")), raw)
                return out  # RPC results (subscribe, set_heartbeat, test)
            params = msg["params"]
            channel = params["channel"].split(".")[0]
            handler = self._handlers.get(channel)
            if handler is None:
                self.errors.bad(out, "unsupported_message", channel, raw)
                return out
            handler(params["data"], received_at, out)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.errors.bad(out, "parse_error", "message", raw, error=repr(exc))
        return out

    def _volatility(self, data: dict[str, Any], received_at: int, out: Output) -> None:
        inst = self._instrument(data["index_name"], out)
        if inst is None:
            return
        value = decimal_str(data["volatility"])
        out.records.append(
            VolatilityIndex(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=inst.exchange_symbol,
                timestamp=int(data["timestamp"]),
                received_at=received_at,
                index_value=value,
            )
        )

    def on_backfill(self, key: str, body: bytes, received_at: int) -> Output:
        """Candles ``[[ts, open, high, low, close], ...]`` -> volatility_index (index_value = close)."""
        out = Output()
        name = key.rsplit("/", 1)[-1]
        inst = self._instrument(name, out)
        if inst is None:
            return out
        try:
            payload = loads_exact(body)
            if "error" in payload:
                self.errors.bad(out, "rpc_error", str(payload["error"].get("code")), body)
                return out
            for ts, o, h, low, c in payload["result"]["data"]:
                close = decimal_str(c)
                out.records.append(
                    VolatilityIndex(
                        exchange=self.market_id,
                        market_type=self.market_type,
                        symbol=inst.symbol,
                        exchange_symbol=inst.exchange_symbol,
                        timestamp=int(ts),
                        received_at=received_at,
                        index_value=close,
                        open=decimal_str(o),
                        high=decimal_str(h),
                        low=decimal_str(low),
                        close=close,
                    )
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.errors.bad(out, "parse_error", "backfill", body, error=repr(exc))
        return out


    # ------------------------------------------------------------ history (refill)
    def _history_dvol_first(self, window: Window, inst: Instrument) -> Page:
        return self._dvol_page(window, inst, window.before_ms - 1)

    def _dvol_page(self, window: Window, inst: Instrument, end: int) -> Page:
        """``start_timestamp``/``end_timestamp`` (ms), resolution 60; pages go backwards by ``continuation``."""
        url = (
            f"{self.market.rest_url.rstrip('/')}{DVOL_HISTORY_PATH}?currency={inst.symbol}"
            f"&start_timestamp={window.after_ms + 1}&end_timestamp={end}&resolution={DVOL_RESOLUTION}"
        )
        return Page(url, 1, end, "time")

    def _history_dvol_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """Candles through the reconnect backfill's mapping (``on_backfill``); ``result.continuation`` (the
        next page's ``end_timestamp``, null at the end) continues the walk while it is inside the window."""
        out = self.on_backfill(f"{self.market_id}/dvol/{inst.exchange_symbol}", body, received_at)
        if out.events:
            return PageResult(out.records, None, out.events)
        continuation = loads_exact(body)["result"].get("continuation")
        nxt = None
        if continuation is not None and window.after_ms < int(continuation) < page.cursor:
            nxt = self._dvol_page(window, inst, int(continuation))
        return PageResult(out.records, nxt)


ADAPTER = DeribitAdapter

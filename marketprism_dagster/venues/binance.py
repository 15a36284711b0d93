"""Binance spot and USD-M perpetuals: channel specs, symbol mapping, pure parsers, book sync.

Streams (2026 routes; every URL is built from ``market.ws_url`` / ``market.rest_url``):

* spot: ``{ws}/stream?streams=<sym>@depth@100ms/<sym>@aggTrade`` (one feed);
* USD-M: ``{ws}/public/stream?streams=<sym>@depth@100ms`` and
  ``{ws}/market/stream?streams=<sym>@aggTrade/<sym>@markPrice@1s/<sym>@forceOrder``.

REST: depth snapshots ``/api/v3/depth`` / ``/fapi/v1/depth`` (requested through
``FetchSnapshot`` when a book needs one), instruments from ``exchangeInfo``, and polls for
``/fapi/v1/openInterest`` and the two long/short ratios
(``/futures/data/topLongShortPositionRatio`` = lsr_top_position,
``/futures/data/globalLongShortAccountRatio`` = lsr_all_account).

History (refill, ``histories``; docs/venues.md "History endpoints"): ``/api/v3/aggTrades`` /
``/fapi/v1/aggTrades`` (by ``fromId``, or by time in slices under an hour), ``/fapi/v1/fundingRate`` (the
settled rates), ``/futures/data/openInterestHist`` (5m) and the two ratio endpoints with ``startTime`` /
``endTime``; the pages go through the live mappings (same identities).

Messages are routed by content (``e``), not by feed key, so one combined recorded stream
(the 2021 sessions) replays through the same code as the split 2026 routes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, ClassVar

import msgspec
import orjson

from marketprism_dagster.book import Diff, Status, UpdateIdSync
from marketprism_dagster.book.sync import APPLIED, BOOK_FAULT_EVENTS, PREV_ID_RULE, RANGE_RULE
from marketprism_dagster.records import FundingRate, Liquidation, LsrAllAccount, LsrTopPosition, OpenInterest, Trade
from marketprism_dagster.timeutil import DAY_MS, HOUR_MS
from marketprism_dagster.venues.base import (
    BookSettings,
    Channel,
    FetchSnapshot,
    Instrument,
    MarketSettings,
    MarketSpec,
    Output,
    Poll,
    RestPoll,
    SnapshotDepth,
    SwitchConnection,
    VenueAdapter,
    WsFeed,
)
from marketprism_dagster.venues.common import (
    ENTRY_ERRORS,
    LSR_LIMIT,
    PERIOD_SECONDS,
    entry_label,
    name_of,
    scale,
)
from marketprism_dagster.venues.history import History, Page, PageResult, Window

SPOT_DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))  # limit upper bound -> weight
USDM_DEPTH_WEIGHTS = ((50, 2), (100, 5), (500, 10), (1000, 20))


def depth_weight(limit: int, spot: bool) -> int:
    table = SPOT_DEPTH_WEIGHTS if spot else USDM_DEPTH_WEIGHTS
    for bound, weight in table:
        if limit <= bound:
            return weight
    return table[-1][1]


def parse_exchange_info(body: bytes | str, perpetual: bool, skipped: list[str] | None = None) -> list[Instrument]:
    """Instruments from ``exchangeInfo`` (spot or fapi); USD-M keeps ``contractType == PERPETUAL``
    unless ``perpetual`` is False. A malformed entry is skipped (described in ``skipped``), the rest
    loads; a body that is no listing at all raises ValueError."""
    payload = orjson.loads(body)
    listing = payload.get("symbols") if isinstance(payload, dict) else None
    if not isinstance(listing, list):
        raise ValueError(f"binance exchangeInfo: no 'symbols' list in the answer: {body[:120]!r}")
    out: list[Instrument] = []
    for s in listing:
        try:
            inst = _exchange_info_entry(s, perpetual)
        except ENTRY_ERRORS as exc:
            if skipped is not None:
                skipped.append(f"{entry_label(s, 'symbol')}: {exc!r}"[:200])
            continue
        if inst is not None:
            out.append(inst)
    return out


def _exchange_info_entry(s: Any, perpetual: bool) -> Instrument | None:
    if not isinstance(s, dict):
        raise TypeError(f"entry is a {type(s).__name__}, not an object")
    if perpetual and s.get("contractType", "PERPETUAL") != "PERPETUAL":
        return None
    symbol, base, quote = name_of(s, "symbol"), name_of(s, "baseAsset"), name_of(s, "quoteAsset")
    tick = lot = None
    filters = s.get("filters") or ()
    if not isinstance(filters, list):
        raise TypeError(f"filters is a {type(filters).__name__}, not a list")
    for f in filters:
        if not isinstance(f, dict):
            continue  # a filter we cannot read does not make the symbol unusable
        if f.get("filterType") == "PRICE_FILTER" and isinstance(f.get("tickSize"), str):
            tick = f["tickSize"]
        elif f.get("filterType") == "LOT_SIZE" and isinstance(f.get("stepSize"), str):
            lot = f["stepSize"]
    return Instrument(
        symbol=f"{base}-{quote}", exchange_symbol=symbol, base=base, quote=quote, tick_size=tick, lot_size=lot
    )


class _AggTrade(msgspec.Struct, tag_field="e", tag="aggTrade"):
    """The fields of an ``aggTrade`` event the adapter reads (typed fast path)."""

    s: str
    a: int
    p: str
    q: str
    T: int
    m: bool


# A price of at most 15 characters: the book's float order keys are exact for these without a
# per-level check (``Book.apply_pairs(short_prices=True)``); a longer one fails validation and
# the frame takes the generic path, where the book switches to exact Decimal keys.
ShortPrice = Annotated[str, msgspec.Meta(max_length=15)]


class _DepthUpdate(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    """The fields of a ``depthUpdate`` event the adapter reads; levels arrive as (price, qty) tuples."""

    E: int
    s: str
    U: int
    u: int
    b: list[tuple[ShortPrice, str]]
    a: list[tuple[ShortPrice, str]]
    pu: int | None = None


class _Frame(msgspec.Struct):
    data: _AggTrade | _DepthUpdate


# Combined-stream frames of the two hot events decode straight into typed structs; anything
# else (markPrice, forceOrder, replies, errors, odd shapes) fails validation here and takes the
# generic orjson path, which keeps every existing rule for bad input.
_FAST_DECODER = msgspec.json.Decoder(_Frame)
_PARSE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError)


def parse_depth_update(d: Mapping[str, Any]) -> Diff:
    """A ``depthUpdate`` event (the ``data`` of a combined-stream frame) as a ``Diff``."""
    return Diff(d["U"], d["u"], d.get("pu"), d["E"], d["b"], d["a"])


def parse_depth_snapshot(body: bytes | str) -> tuple[int, int | None, list[Any], list[Any]]:
    """``/api/v3/depth`` or ``/fapi/v1/depth`` -> (lastUpdateId, event time E or None on spot, bids, asks)."""
    snap = orjson.loads(body)
    return int(snap["lastUpdateId"]), snap.get("E"), snap["bids"], snap["asks"]


# REST order book snapshot depths. Spot GET /api/v3/depth: limit default 100, max 5000 (a larger value
# is truncated to 5000) (documented/binance_spot_orderbook.json; Binance spot REST docs). USD-M GET
# /fapi/v1/depth: "Valid limits:[5, 10, 20, 50, 100, 500, 1000]" (developers.binance.com, USDS-M
# futures, market data, Order Book); any other value is answered HTTP 400, which a collector would
# otherwise retry forever.
USDM_DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)
# the connection of each feed name: spot has one combined stream, USD-M splits depth from the rest
FEED_PATHS = {"stream": "/stream", "public": "/public/stream", "market": "/market/stream"}
SYNC_RULES = {"spot": RANGE_RULE, "perpetual": PREV_ID_RULE}  # see book.sync.UpdateIdSync


# ------------------------------------------------------------ history (refill; docs/venues.md "History endpoints")
AGG_TRADES_LIMIT = 1000  # GET /api/v3/aggTrades, /fapi/v1/aggTrades: limit default 500, max 1000
AGG_TRADES_WEIGHT = {"spot": 4, "perpetual": 20}
FUNDING_HISTORY_LIMIT = 1000  # GET /fapi/v1/fundingRate: default 100, max 1000
FUTURES_DATA_LIMIT = 500  # /futures/data/*: default 30, max 500
FUTURES_DATA_PERIOD = "5m"  # open interest statistics: the finest period
BINANCE_HISTORIES = (
    History("trade", "/aggTrades", "_history_trades_first", "_history_trades_page", ("spot", "perpetual"),
            retention_ms=365 * DAY_MS, by_id=True,
            note="aggregate ids: the live aggTrade identity (exchange, symbol, a)"),
    History("funding_rate", "/fapi/v1/fundingRate", "_history_series_first", "_history_funding_page",
            ("perpetual",), min_interval_s=0.6,  # 500 requests / 5 min / IP, shared with fundingInfo
            note="settled rate at each funding time: next_funding_time == timestamp"),
    History("open_interest", "/futures/data/openInterestHist", "_history_series_first", "_history_oi_page",
            ("perpetual",), retention_ms=30 * DAY_MS, min_interval_s=0.3,  # 1000 requests / 5 min / IP
            note="5-minute statistics at period boundaries"),
    History("lsr_top_position", "/futures/data/topLongShortPositionRatio", "_history_series_first",
            "_history_ratio_page", ("perpetual",), retention_ms=30 * DAY_MS, min_interval_s=0.3,
            note="the polled series itself: live identities"),
    History("lsr_all_account", "/futures/data/globalLongShortAccountRatio", "_history_series_first",
            "_history_ratio_page", ("perpetual",), retention_ms=30 * DAY_MS, min_interval_s=0.3,
            note="the polled series itself: live identities"),
)


class BinanceAdapter(VenueAdapter):
    venue = "binance"
    markets: ClassVar[Mapping[str, MarketSpec]] = {
        # REQUEST_WEIGHT per minute (documented/binance_*_errors_rate_limits.json): spot 6000, USD-M 2400
        "spot": MarketSpec(
            instruments_path="/api/v3/exchangeInfo",
            snapshot_path="/api/v3/depth",
            snapshot_depth=SnapshotDepth("GET /api/v3/depth limit", 1, 5000),
            weight_per_minute=6000,
        ),
        "perpetual": MarketSpec(
            instruments_path="/fapi/v1/exchangeInfo",
            snapshot_path="/fapi/v1/depth",
            snapshot_depth=SnapshotDepth("GET /fapi/v1/depth limit", 5, 1000, values=USDM_DEPTH_LIMITS),
            weight_per_minute=2400,
        ),
    }
    # stream name -> mapping; messages are routed by their event type ``e``
    channels = (
        Channel("depth@100ms", ("orderbook",), "_depth", {"spot": "stream", "perpetual": "public"}, ("depthUpdate",)),
        Channel("aggTrade", ("trade",), "_agg_trade", {"spot": "stream", "perpetual": "market"}),
        Channel(
            "markPrice@1s",
            ("funding_rate",),
            "_mark_price",
            {"perpetual": "market"},
            ("markPriceUpdate",),
            needed_by=("open_interest",),  # the mark price gives the open interest its quote value
        ),
        Channel("forceOrder", ("liquidation",), "_force_order", {"perpetual": "market"}),
    )
    polls = (
        Poll("open_interest", "/fapi/v1/openInterest", "_open_interest", ("perpetual",)),
        Poll("lsr_top_position", "/futures/data/topLongShortPositionRatio", "_ratios", ("perpetual",)),
        Poll("lsr_all_account", "/futures/data/globalLongShortAccountRatio", "_ratios", ("perpetual",)),
    )
    weight_header = "X-MBX-USED-WEIGHT-1M"
    id_types = ("trade",)  # aggregate trade ids ``a``, consecutive per symbol (the refill's ``fromId``)
    histories = BINANCE_HISTORIES
    default_markets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "binance_spot": {
            "market_type": "spot",
            "symbols": ["BTC-USDT", "ETH-USDT"],
            "data_types": ["orderbook", "trade"],
            "rest_url": "https://api.binance.com",
            "ws_url": "wss://stream.binance.com:9443",
        },
        "binance_derivatives": {
            "market_type": "perpetual",
            "symbols": ["BTC-USDT", "ETH-USDT"],
            "rest_url": "https://fapi.binance.com",
            "ws_url": "wss://fstream.binance.com",
        },
    }

    def __init__(self, market_id: str, market: MarketSettings, orderbook: BookSettings) -> None:
        super().__init__(market_id, market, orderbook)
        self.spot = market.market_type == "spot"
        self.books: dict[str, UpdateIdSync] = {}
        self.mark_price: dict[str, str] = {}  # latest mark price per exchange symbol (markPrice stream)
        self._handlers["serverShutdown"] = self._server_shutdown
        self._frame_feed = ""  # feed key of the frame the generic path is handling (for serverShutdown)

    # ------------------------------------------------------------ instruments
    def instrument_urls(self) -> Sequence[str]:
        return [self.market.rest_url.rstrip("/") + self.spec.instruments_path]

    def load_instruments(self, bodies: Mapping[str, bytes]) -> dict[str, Instrument]:
        perpetual = not self.spot and not self.accept_all_symbols
        skipped: list[str] = []
        listed = [inst for body in bodies.values() for inst in parse_exchange_info(body, perpetual, skipped)]
        self.skipped_instruments = skipped
        return self._keep_instruments(listed, "use BASE-QUOTE as in exchangeInfo baseAsset/quoteAsset, e.g. BTC-USDT")

    # ------------------------------------------------------------ subscriptions
    def ws_feeds(self) -> list[WsFeed]:
        ws = self.market.ws_url.rstrip("/")
        feeds = []
        for feed, channels in self.subscribed().items():
            streams = "/".join(f"{sym.lower()}@{c.name}" for sym in self.instruments for c in channels)
            url = f"{ws}{FEED_PATHS[feed]}?streams={streams}"
            feeds.append(WsFeed(f"{self.market_id}/{feed}", url, data_types=self.carried(channels)))
        return feeds

    def rest_polls(self) -> list[RestPoll]:
        rest = self.market.rest_url.rstrip("/")
        types = set(self.market.data_types)
        period = self.market.lsr_period
        polls: list[RestPoll] = []
        for sym in self.instruments:
            for p in self.polls:
                if p.data_type not in types or self.market_type not in p.market_types:
                    continue
                if p.data_type == "open_interest":
                    url = f"{rest}{p.path}?symbol={sym}"
                    polls.append(self._rest_poll(p.data_type, sym, url, self.market.poll_interval_s))
                else:
                    url = f"{rest}{p.path}?symbol={sym}&period={period}&limit={LSR_LIMIT}"
                    polls.append(self._rest_poll(p.data_type, sym, url, PERIOD_SECONDS[period]))
        return polls

    def snapshot_action(self, sym: str) -> FetchSnapshot:
        limit = self.orderbook.snapshot_limit
        return FetchSnapshot(
            symbol=sym,
            url=f"{self.market.rest_url.rstrip('/')}{self.spec.snapshot_path}?symbol={sym}&limit={limit}",
            weight=depth_weight(limit, self.spot),
        )

    # ------------------------------------------------------------ inputs
    def on_connect(self, feed_key: str, received_at: int) -> Output:
        """A (re)connect of a depth feed (or an unknown key, e.g. a recorded URL) resets every book;
        snapshots are requested when the first diff of each symbol arrives (Binance's procedure)."""
        if feed_key.startswith(f"{self.market_id}/") and feed_key not in self.book_feeds():
            return Output()
        for sync in self.books.values():
            sync.reset()
        return Output()

    def on_message(self, feed_key: str, raw: bytes | str, received_at: int) -> Output:
        if not self.typed_fast_path:
            return self._on_message_generic(feed_key, raw, received_at)
        try:
            d = _FAST_DECODER.decode(raw).data
        except msgspec.DecodeError:  # includes ValidationError: not one of the two hot events
            self.generic_frames += 1
            return self._on_message_generic(feed_key, raw, received_at)
        if type(d) is _AggTrade:
            inst = self.instruments.get(d.s)
            if inst is None:
                out = Output([], [], {})
                self._instrument(d.s, out)
                return out
            # every field is typed by the decoder: nothing below can raise
            trade = self._trade(inst, d.T, d.a, d.p, d.q, d.m, received_at)
            return Output([trade], [], {}, [("trade", inst.symbol, d.a, d.a, d.T)])
        out = Output([], [], {})
        sym = d.s
        inst = self.instruments.get(sym) or self._instrument(sym, out)
        if inst is None:
            return out
        sync = self.books.get(sym) or self._sync(sym)
        try:
            st = sync.on_update_pairs(d.U, d.u, d.pu, d.E, d.b, d.a, True)  # type: ignore[union-attr,arg-type]
            if st is not APPLIED or sync.ticker.ready:
                self._depth_done(st, sync, inst, received_at, out)
        except _PARSE_ERRORS as exc:
            self.errors.bad(out, "parse_error", "depthUpdate", raw, error=repr(exc))
            self._resync_dropped(sync, inst, out)
        return out

    def _on_message_generic(self, feed_key: str, raw: bytes | str, received_at: int) -> Output:
        out = Output()
        self._frame_feed = feed_key
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.errors.bad(out, "parse_error", "json", raw)
            return out
        data = msg.get("data", msg) if type(msg) is dict else msg
        items = data if type(data) is list else (data,)  # !markPrice@arr style arrays
        for d in items:
            if type(d) is not dict:
                self.errors.bad(out, "parse_error", "shape", raw)
                continue
            event = d.get("e")
            handler = self._handlers.get(event) if type(event) is str else None
            if handler is None:
                if "result" in d or "id" in d:
                    continue  # subscription reply
                stream = msg.get("stream") if type(msg) is dict else None
                self.errors.bad(out, "unsupported_message", str(event or stream)[:64], raw)
                continue
            try:
                handler(d, received_at, out)
            except _PARSE_ERRORS as exc:
                self.errors.bad(out, "parse_error", event, raw, error=repr(exc))
        return out

    def _server_shutdown(self, d: dict[str, Any], received_at: int, out: Output) -> None:
        """``{"e": "serverShutdown", "E": <ms>}``: the server will close this connection soon: move the feed
        to a new connection first (the runtime logs and counts the switch)."""
        out.actions.append(SwitchConnection(self._frame_feed, f"binance serverShutdown (E={d.get('E')})"))

    def _trade(
        self, inst: Instrument, ts: int, agg_id: Any, price: str, qty: str, buyer_maker: Any, received_at: int
    ) -> Any:
        """The one ``aggTrade`` -> ``trade`` mapping (the typed fast path and ``_agg_trade`` call it)."""
        return Trade(
            exchange=self.market_id,
            market_type=self.market_type,
            symbol=inst.symbol,
            exchange_symbol=inst.exchange_symbol,
            timestamp=ts,
            received_at=received_at,
            trade_id=str(agg_id),
            price=price,
            quantity=qty,
            side="sell" if buyer_maker else "buy",  # m: buyer is maker -> the taker sold
        )

    def _agg_trade(self, d: dict[str, Any], received_at: int, out: Output) -> None:
        sym = d["s"]
        inst = self.instruments.get(sym) or self._instrument(sym, out)
        if inst is None:
            return
        out.records.append(self._trade(inst, d["T"], d["a"], d["p"], d["q"], d["m"], received_at))
        agg_id = d["a"]
        if type(agg_id) is int:
            out.ids = out.ids or []
            out.ids.append(("trade", inst.symbol, agg_id, agg_id, d["T"]))

    def _sync(self, sym: str) -> UpdateIdSync:
        sync = self.books.get(sym)
        if sync is None:
            ob = self.orderbook
            rule = SYNC_RULES[self.market_type]
            sync = self.books[sym] = UpdateIdSync(rule, ob.cadence_ms, ob.depth, max_levels=ob.max_levels)
        return sync

    def _depth(self, d: dict[str, Any], received_at: int, out: Output) -> None:
        sym = d["s"]
        inst = self.instruments.get(sym) or self._instrument(sym, out)
        if inst is None:
            return
        sync = self.books.get(sym) or self._sync(sym)
        try:
            st = sync.on_diff(parse_depth_update(d))
        except _PARSE_ERRORS:
            self._resync_dropped(sync, inst, out)  # the caller counts the parse error
            raise
        self._depth_done(st, sync, inst, received_at, out)

    def _resync_dropped(self, sync: UpdateIdSync, inst: Instrument, out: Output) -> None:
        """A level the book could not take dropped the book: fetch a snapshot now (not on the next diff)."""
        if sync.need_snapshot:
            out.count("resync")
            sync.snapshot_requested()
            out.actions.append(self.snapshot_action(inst.exchange_symbol))

    def _depth_done(self, st: Status, sync: UpdateIdSync, inst: Instrument, received_at: int, out: Output) -> None:
        if st is APPLIED:
            if sync.ticker.ready:
                self._publish(sync, inst, received_at, out)
            return
        if st is Status.GAP:
            out.count("resync")
            out.count("sequence_gap")
        elif st is Status.CROSSED or st is Status.TOO_DEEP:
            out.count("resync")
            out.count(BOOK_FAULT_EVENTS[st])
        if sync.ticker.ready:
            self._publish(sync, inst, received_at, out)
        if sync.need_snapshot:
            sync.snapshot_requested()
            out.actions.append(self.snapshot_action(inst.exchange_symbol))

    def on_snapshot(self, symbol: str, body: bytes, received_at: int) -> Output:
        out = Output()
        inst = self._instrument(symbol, out)
        if inst is None:
            return out
        try:
            last_id, _event_ms, bids, asks = parse_depth_snapshot(body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            self.errors.bad(out, "parse_error", "depth_snapshot", body, error=repr(exc))
            sync = self._sync(symbol)
            sync.snapshot_inflight = False
            sync.need_snapshot = True
        else:
            sync = self._sync(symbol)
            try:
                st = sync.on_snapshot(last_id, bids, asks)
            except _PARSE_ERRORS as exc:
                # a level the book could not take: the sync dropped the book and wants another snapshot
                self.errors.bad(out, "parse_error", "depth_snapshot", body, error=repr(exc))
            else:
                if st is Status.SNAPSHOT_TOO_OLD:
                    out.count("snapshot_too_old")
                elif st is Status.GAP:
                    out.count("resync")
                    out.count("sequence_gap")
                elif st is Status.CROSSED or st is Status.TOO_DEEP:
                    out.count("resync")
                    out.count(BOOK_FAULT_EVENTS[st])
            self._publish(sync, inst, received_at, out)
        if sync.need_snapshot:
            sync.snapshot_requested()
            out.actions.append(self.snapshot_action(symbol))
        return out

    def _mark_price(self, d: dict[str, Any], received_at: int, out: Output) -> None:
        sym = d["s"]
        inst = self.instruments.get(sym) or self._instrument(sym, out)
        if inst is None:
            return
        if d.get("st") not in (None, 1):  # after the COIN-M migration: st 2 = COIN-M
            return
        mark = d.get("p")
        if mark:
            self.mark_price[sym] = mark
        if "funding_rate" not in self.market.data_types and not self.accept_all_symbols:
            return
        out.records.append(
            FundingRate(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=sym,
                timestamp=d["E"],
                received_at=received_at,
                funding_rate=d["r"],
                next_funding_time=d.get("T"),
                mark_price=mark or None,
                index_price=d.get("i") or None,
            )
        )

    def _force_order(self, d: dict[str, Any], received_at: int, out: Output) -> None:
        if d.get("st") not in (None, 1):
            return
        o = d["o"]
        sym = o["s"]
        inst = self.instruments.get(sym) or self._instrument(sym, out)
        if inst is None:
            return
        ap = o.get("ap")
        price = ap if ap and Decimal(ap) != 0 else o["p"]
        z = o.get("z")
        qty = z if z and Decimal(z) != 0 else o["q"]
        out.records.append(
            Liquidation(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=sym,
                timestamp=o["T"],
                received_at=received_at,
                side=o["S"].lower(),
                price=price,
                quantity=qty,
                status=o.get("X", "").lower(),
            )
        )

    # ------------------------------------------------------------ REST polls
    def _open_interest(self, poll: RestPoll, inst: Instrument, body: bytes, received_at: int, out: Output) -> None:
        p = orjson.loads(body)
        oi = p["openInterest"]
        mark = self.mark_price.get(inst.exchange_symbol)
        value = scale(oi, Decimal(mark)) if mark else None
        out.records.append(
            OpenInterest(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=inst.exchange_symbol,
                timestamp=int(p["time"]),
                received_at=received_at,
                open_interest=oi,  # USD-M: base-asset units
                open_interest_value=value,
            )
        )

    def _ratios(self, poll: RestPoll, inst: Instrument, body: bytes, received_at: int, out: Output) -> None:
        struct = LsrTopPosition if poll.data_type == "lsr_top_position" else LsrAllAccount
        rows = orjson.loads(body)
        if isinstance(rows, dict):
            raise ValueError(f"error body: {rows}")
        records = [
            struct(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=inst.exchange_symbol,
                timestamp=int(r["timestamp"]),  # an integer in the 2026 spec, a string on older doc pages
                received_at=received_at,
                period=self.market.lsr_period,
                long_short_ratio=r["longShortRatio"],
                long_ratio=r.get("longAccount", r.get("longPosition")),
                short_ratio=r.get("shortAccount", r.get("shortPosition")),
            )
            for r in rows
        ]
        out.records.extend(records)  # all rows or none: a bad row fails the whole answer


    # ------------------------------------------------------------ history (refill)
    def _history_url(self, path: str, **params: Any) -> str:
        prefix = "" if path.startswith(("/fapi", "/futures")) else ("/api/v3" if self.spot else "/fapi/v1")
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.market.rest_url.rstrip('/')}{prefix}{path}?{query}"

    def _history_trades_first(self, window: Window, inst: Instrument) -> Page:
        """By id when the gap knows its ids (``fromId``), else by time (``startTime``/``endTime``, < 1 h)."""
        if window.by_id:
            return self._agg_page(window, inst, int(window.first_id or 0))
        return self._agg_time_page(window, inst, window.after_ms + 1)

    def _agg_page(self, window: Window, inst: Instrument, from_id: int) -> Page:
        url = self._history_url("/aggTrades", symbol=inst.exchange_symbol, fromId=from_id, limit=AGG_TRADES_LIMIT)
        return Page(url, AGG_TRADES_WEIGHT[self.market_type], from_id, "id")

    def _agg_time_page(self, window: Window, inst: Instrument, start: int) -> Page:
        end = min(window.before_ms - 1, start + HOUR_MS - 1)  # "time between startTime and endTime must be < 1 hour"
        url = self._history_url(
            "/aggTrades", symbol=inst.exchange_symbol, startTime=start, endTime=end, limit=AGG_TRADES_LIMIT
        )
        return Page(url, AGG_TRADES_WEIGHT[self.market_type], end, "time")

    def _history_trades_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """``[{"a","p","q","f","l","T","m"(,"M")}, ...]`` ascending -> trades (the live aggTrade mapping)."""
        rows = orjson.loads(body)
        if not isinstance(rows, list):
            raise ValueError(f"aggTrades: not a list: {body[:120]!r}")
        out = PageResult([self._trade(inst, r["T"], r["a"], r["p"], r["q"], r["m"], received_at) for r in rows])
        if not rows:  # nothing (more) there: the window is beyond what the venue serves, or covered
            if page.mode == "time" and page.cursor < window.before_ms - 1:
                out.next = self._agg_time_page(window, inst, page.cursor + 1)
            return out
        last_id, last_t = int(rows[-1]["a"]), int(rows[-1]["T"])
        if window.by_id:
            if last_id < int(window.last_id or 0):
                out.next = self._agg_page(window, inst, last_id + 1)
        elif last_t < window.before_ms:
            if len(rows) >= AGG_TRADES_LIMIT:  # a full page: go on by id (no ids are skipped within a millisecond)
                out.next = self._agg_page(window, inst, last_id + 1)
            elif page.mode == "time" and page.cursor < window.before_ms - 1:
                out.next = self._agg_time_page(window, inst, page.cursor + 1)
        return out

    def _series_limit(self, data_type: str) -> int:
        return FUNDING_HISTORY_LIMIT if data_type == "funding_rate" else FUTURES_DATA_LIMIT

    def _history_series_first(self, window: Window, inst: Instrument) -> Page:
        return self._series_page(window, inst, window.after_ms + 1)

    def _series_page(self, window: Window, inst: Instrument, start: int) -> Page:
        """Ascending series with inclusive ``startTime``/``endTime``: the window's inside, ``limit`` rows a page."""
        hist = next(h for h in BINANCE_HISTORIES if h.data_type == window.data_type)
        params: dict[str, Any] = {"symbol": inst.exchange_symbol}
        if window.data_type == "open_interest":
            params["period"] = FUTURES_DATA_PERIOD
        elif window.data_type != "funding_rate":
            params["period"] = self.market.lsr_period
        params.update(startTime=start, endTime=window.before_ms - 1, limit=self._series_limit(window.data_type))
        # weight 0: funding history has its own 500 / 5 min budget, /futures/data 1000 / 5 min (History.min_interval_s)
        return Page(self._history_url(hist.path, **params), 0, start, "time")

    def _series_next(self, window: Window, inst: Instrument, stamps: list[int]) -> Page | None:
        """A full page asks for the rows after its newest; a short one was the last."""
        if len(stamps) < self._series_limit(window.data_type) or not stamps or max(stamps) >= window.before_ms - 1:
            return None
        return self._series_page(window, inst, max(stamps) + 1)

    def _history_funding_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """``GET /fapi/v1/fundingRate`` rows ``{"symbol","fundingRate","fundingTime","markPrice"}`` -> the SETTLED
        rate at each funding time: ``timestamp`` = ``next_funding_time`` = ``fundingTime`` (live rows, from
        ``markPrice@1s``, carry the predicted rate and the NEXT funding time, later than their timestamp)."""
        rows = orjson.loads(body)
        if not isinstance(rows, list):
            raise ValueError(f"fundingRate: not a list: {body[:120]!r}")
        recs = [
            FundingRate(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=inst.exchange_symbol,
                timestamp=int(r["fundingTime"]),
                received_at=received_at,
                funding_rate=r["fundingRate"],
                next_funding_time=int(r["fundingTime"]),
                mark_price=r.get("markPrice") or None,
                index_price=None,
            )
            for r in rows
            if r.get("symbol", inst.exchange_symbol) == inst.exchange_symbol
        ]
        return PageResult(recs, self._series_next(window, inst, [int(r["fundingTime"]) for r in rows]))

    def _history_oi_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """``GET /futures/data/openInterestHist`` rows ``{"symbol","sumOpenInterest","sumOpenInterestValue",
        "timestamp"}`` -> open interest at each 5-minute boundary (base units; value in USDT)."""
        rows = orjson.loads(body)
        if not isinstance(rows, list):
            raise ValueError(f"openInterestHist: not a list: {body[:120]!r}")
        recs = [
            OpenInterest(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=inst.exchange_symbol,
                timestamp=int(r["timestamp"]),  # an integer in the 2026 spec, a string on the older page
                received_at=received_at,
                open_interest=r["sumOpenInterest"],
                open_interest_value=r.get("sumOpenInterestValue") or None,
            )
            for r in rows
        ]
        return PageResult(recs, self._series_next(window, inst, [int(r["timestamp"]) for r in rows]))

    def _history_ratio_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """The long/short ratio series with a time range: the poll's own mapping (``_ratios``), live identities."""
        poll = RestPoll(key="", data_type=window.data_type, url=page.url, period_s=0, symbol=inst.exchange_symbol)
        out = Output()
        self._ratios(poll, inst, body, received_at, out)
        return PageResult(out.records, self._series_next(window, inst, [r.timestamp for r in out.records]))


ADAPTER = BinanceAdapter

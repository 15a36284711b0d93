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

Messages are routed by content (``e``), not by feed key, so one combined recorded stream
(the 2021 sessions) replays through the same code as the split 2026 routes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any

import msgspec
import orjson

from marketprism_dagster.book import Diff, Status, UpdateIdSync
from marketprism_dagster.book.sync import APPLIED, BOOK_FAULT_EVENTS
from marketprism_dagster.config import MarketConfig, OrderBookConfig
from marketprism_dagster.records import FundingRate, Liquidation, LsrAllAccount, LsrTopPosition, OpenInterest, Trade
from marketprism_dagster.venues.base import (
    FetchSnapshot,
    Instrument,
    Output,
    RestPoll,
    SwitchConnection,
    VenueAdapter,
    WsFeed,
)
from marketprism_dagster.venues.common import (
    ENTRY_ERRORS,
    LSR_LIMIT,
    PERIOD_SECONDS,
    ErrorLog,
    book_record,
    entry_label,
    keep_instruments,
    name_of,
    rest_poll,
    scale,
)

SPOT_DEPTH_WEIGHTS = ((100, 5), (500, 25), (1000, 50), (5000, 250))  # limit upper bound -> weight
USDM_DEPTH_WEIGHTS = ((50, 2), (100, 5), (500, 10), (1000, 20))

LSR_PATHS = {
    "lsr_top_position": "/futures/data/topLongShortPositionRatio",
    "lsr_all_account": "/futures/data/globalLongShortAccountRatio",
}


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


class BinanceAdapter(VenueAdapter):
    venue = "binance"
    # False: every frame takes the generic orjson path (same results, slower; a switch for a
    # venue format change, and the reference the fast path is tested against)
    typed_fast_path = True

    def __init__(self, market_id: str, market: MarketConfig, orderbook: OrderBookConfig) -> None:
        super().__init__(market_id, market, orderbook)
        self.spot = market.market_type == "spot"
        self.market_type = market.market_type
        self.books: dict[str, UpdateIdSync] = {}
        self.mark_price: dict[str, str] = {}  # latest mark price per exchange symbol (markPrice stream)
        self.errors = ErrorLog(market_id)
        self.generic_frames = 0  # frames that did not fit the typed fast path (normal for markPrice etc.)
        self._handlers = {
            "aggTrade": self._agg_trade,
            "depthUpdate": self._depth,
            "markPriceUpdate": self._mark_price,
            "forceOrder": self._force_order,
            "serverShutdown": self._server_shutdown,
        }
        self._frame_feed = ""  # feed key of the frame the generic path is handling (for serverShutdown)

    # ------------------------------------------------------------ instruments
    def instrument_urls(self) -> Sequence[str]:
        path = "/api/v3/exchangeInfo" if self.spot else "/fapi/v1/exchangeInfo"
        return [self.market.rest_url.rstrip("/") + path]

    def load_instruments(self, bodies: Mapping[str, bytes]) -> dict[str, Instrument]:
        perpetual = not self.spot and not self.accept_all_symbols
        skipped: list[str] = []
        listed = [inst for body in bodies.values() for inst in parse_exchange_info(body, perpetual, skipped)]
        self.skipped_instruments = skipped
        return keep_instruments(
            self,
            listed,
            "use BASE-QUOTE as in exchangeInfo baseAsset/quoteAsset, e.g. BTC-USDT",
        )

    # ------------------------------------------------------------ subscriptions
    def _streams(self, kinds: Sequence[str]) -> str:
        return "/".join(f"{sym.lower()}@{k}" for sym in self.instruments for k in kinds)

    def ws_feeds(self) -> list[WsFeed]:
        ws = self.market.ws_url.rstrip("/")
        types = set(self.market.data_types)
        if self.spot:
            kinds = [k for t, k in (("orderbook", "depth@100ms"), ("trade", "aggTrade")) if t in types]
            carried = tuple(t for t in ("orderbook", "trade") if t in types)
            url = f"{ws}/stream?streams={self._streams(kinds)}"
            return [WsFeed(f"{self.market_id}/stream", url, data_types=carried)] if kinds else []
        feeds: list[WsFeed] = []
        if "orderbook" in types:
            feeds.append(
                WsFeed(
                    f"{self.market_id}/public",
                    f"{ws}/public/stream?streams={self._streams(['depth@100ms'])}",
                    data_types=("orderbook",),
                )
            )
        market_kinds = [
            k
            for t, k in (
                ("trade", "aggTrade"),
                ("funding_rate", "markPrice@1s"),
                ("open_interest", "markPrice@1s"),  # mark price gives the OI quote value
                ("liquidation", "forceOrder"),
            )
            if t in types
        ]
        market_kinds = list(dict.fromkeys(market_kinds))
        if market_kinds:
            carried = tuple(t for t in ("trade", "funding_rate", "liquidation") if t in types)
            feeds.append(
                WsFeed(
                    f"{self.market_id}/market",
                    f"{ws}/market/stream?streams={self._streams(market_kinds)}",
                    data_types=carried,
                )
            )
        return feeds

    def rest_polls(self) -> list[RestPoll]:
        if self.spot:
            return []
        rest = self.market.rest_url.rstrip("/")
        types = set(self.market.data_types)
        polls: list[RestPoll] = []
        for sym in self.instruments:
            if "open_interest" in types:
                url = f"{rest}/fapi/v1/openInterest?symbol={sym}"
                polls.append(rest_poll(self.market_id, "open_interest", sym, url, self.market.poll_interval_s))
            for data_type, path in LSR_PATHS.items():
                if data_type in types:
                    period = self.market.lsr_period
                    url = f"{rest}{path}?symbol={sym}&period={period}&limit={LSR_LIMIT}"
                    polls.append(rest_poll(self.market_id, data_type, sym, url, PERIOD_SECONDS[period]))
        return polls

    def snapshot_action(self, sym: str) -> FetchSnapshot:
        limit = self.orderbook.snapshot_limit
        path = "/api/v3/depth" if self.spot else "/fapi/v1/depth"
        return FetchSnapshot(
            symbol=sym,
            url=f"{self.market.rest_url.rstrip('/')}{path}?symbol={sym}&limit={limit}",
            weight=depth_weight(limit, self.spot),
        )

    # ------------------------------------------------------------ inputs
    def on_connect(self, feed_key: str, received_at: int) -> Output:
        """A (re)connect of the depth feed (or an unknown key, e.g. a recorded URL) resets every book;
        snapshots are requested when the first diff of each symbol arrives (Binance's procedure)."""
        if feed_key.endswith("/market"):
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
            trade = Trade(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=d.s,
                timestamp=d.T,
                received_at=received_at,
                trade_id=str(d.a),
                price=d.p,
                quantity=d.q,
                side="sell" if d.m else "buy",  # m: buyer is maker -> the taker sold
            )
            return Output([trade], [], {})
        out = Output([], [], {})
        sym = d.s
        inst = self.instruments.get(sym) or self._instrument(sym, out)
        if inst is None:
            return out
        sync = self.books.get(sym) or self._sync(sym)
        try:
            st = sync.on_update_pairs(d.U, d.u, d.pu, d.E, d.b, d.a, True)
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

    def _instrument(self, sym: str, out: Output) -> Instrument | None:
        inst = self.instruments.get(sym)
        if inst is None:
            self.errors.bad(out, "unknown_symbol", sym)
        return inst

    def _server_shutdown(self, d: dict[str, Any], received_at: int, out: Output) -> None:
        """``{"e": "serverShutdown", "E": <ms>}``: the server will close this connection soon: move the feed
        to a new connection first (the runtime logs and counts the switch)."""
        out.actions.append(SwitchConnection(self._frame_feed, f"binance serverShutdown (E={d.get('E')})"))

    def feed_ready(self, feed_key: str) -> bool:
        """A switch may close the old connection once every book is synchronized (the /market feed has none;
        a diff the new connection repeats is stale to the book)."""
        return feed_key.endswith("/market") or all(s.synced for s in self.books.values())

    def _agg_trade(self, d: dict[str, Any], received_at: int, out: Output) -> None:
        sym = d["s"]
        inst = self.instruments.get(sym) or self._instrument(sym, out)
        if inst is None:
            return
        out.records.append(
            Trade(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=sym,
                timestamp=d["T"],
                received_at=received_at,
                trade_id=str(d["a"]),
                price=d["p"],
                quantity=d["q"],
                side="sell" if d["m"] else "buy",  # m: buyer is maker -> the taker sold
            )
        )

    def _sync(self, sym: str) -> UpdateIdSync:
        sync = self.books.get(sym)
        if sync is None:
            ob = self.orderbook
            rule = "spot" if self.spot else "usdm"
            sync = self.books[sym] = UpdateIdSync(rule, ob.cadence_ms, ob.depth, max_levels=ob.max_levels)
        return sync

    def _publish(self, sync: UpdateIdSync, inst: Instrument, received_at: int, out: Output) -> None:
        depth = self.orderbook.depth
        for snap in sync.ticker.drain():
            out.records.append(book_record(self.market_id, self.market_type, inst, snap, received_at, depth))

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
    def on_rest(self, poll: RestPoll, body: bytes, received_at: int) -> Output:
        out = Output()
        inst = self._instrument(poll.symbol, out)
        if inst is None:
            return out
        try:
            payload = orjson.loads(body)
            if poll.data_type == "open_interest":
                out.records.append(self._open_interest(inst, payload, received_at))
            elif poll.data_type in LSR_PATHS:
                out.records.extend(self._ratios(poll.data_type, inst, payload, received_at))
            else:
                self.errors.bad(out, "unsupported_message", poll.data_type)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.errors.bad(out, "parse_error", poll.data_type, body, error=repr(exc))
        return out

    def _open_interest(self, inst: Instrument, p: dict[str, Any], received_at: int) -> Any:
        oi = p["openInterest"]
        mark = self.mark_price.get(inst.exchange_symbol)
        value = scale(oi, Decimal(mark)) if mark else None
        return OpenInterest(
            exchange=self.market_id,
            market_type=self.market_type,
            symbol=inst.symbol,
            exchange_symbol=inst.exchange_symbol,
            timestamp=int(p["time"]),
            received_at=received_at,
            open_interest=oi,  # USD-M: base-asset units
            open_interest_value=value,
        )

    def _ratios(self, data_type: str, inst: Instrument, rows: list[dict[str, Any]], received_at: int) -> list[Any]:
        struct = LsrTopPosition if data_type == "lsr_top_position" else LsrAllAccount
        if isinstance(rows, dict):
            raise ValueError(f"error body: {rows}")
        return [
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


ADAPTER = BinanceAdapter

"""Binance spot and USD-M: WS raw/combined streams + SUBSCRIBE, REST, weights.

Routes (relative to the server's base URL, as on the real venue):

* spot: WS ``/ws/<stream>``, ``/ws`` (then SUBSCRIBE), ``/stream?streams=a/b``;
  REST ``/api/v3/depth``, ``/api/v3/exchangeInfo``, ``/api/v3/aggTrades``, ``/api/v3/ping``,
  ``/api/v3/time``.
* USD-M (2026 split): WS ``/public/ws/<stream>``, ``/public/stream?streams=`` for depth and
  bookTicker; ``/market/ws/<stream>``, ``/market/stream?streams=`` for aggTrade, markPrice,
  forceOrder, kline; the legacy ``/ws`` and ``/stream`` carry everything. A stream asked on
  the wrong route is accepted and stays silent (logged as ``emulator.stream_wrong_route``).
  REST ``/fapi/v1/depth``, ``exchangeInfo``, ``premiumIndex``, ``openInterest``, ``fundingRate``,
  ``aggTrades``, ``ping``, ``time``; ``/futures/data/{topLongShortPositionRatio, topLongShortAccountRatio,
  globalLongShortAccountRatio, openInterestHist}``.

Replay: combined-stream connections get the recorded frames verbatim (raw ``/ws``
connections the recorded ``data`` part, compact). The 2021 USD-M recording used the legacy
``/stream``; its depth/bookTicker frames go to ``/public`` and aggTrade/kline frames to
``/market`` connections. Depth and exchangeInfo answer from the recorded REST bodies.
Types never recorded (markPrice, forceOrder, premiumIndex, openInterest, openInterestHist,
the three long/short ratios) answer with the documented examples
(documented/binance_usdm_*.json, the connector variants that carry the 2026 fields),
re-addressed to the requested symbol; stream examples are sent once on subscribe.

History (synth; replay answers ``[]``; sources read 2026-12-02 from stored copies of developers.binance.com, see
docs/venues.md; "unstated" marks what the pages leave open and the emulator's choice):

* ``GET /api/v3/aggTrades`` (spot, weight 4) and ``GET /fapi/v1/aggTrades`` (USD-M, weight 20):
  ``symbol`` (required: else -1102), ``fromId`` (inclusive aggregate id), ``startTime`` /
  ``endTime`` (inclusive ms), ``limit`` (default 500, max 1000; larger values are served as
  1000: unstated). Both times sent and ``endTime - startTime`` >= 1 hour -> HTTP 400
  ``{"code":-1127,"msg":"More than 1 hours between startTime and endTime."}`` (the pages: "must
  be less than 1 hour"). No fromId/startTime: the most recent trades (up to endTime when sent);
  otherwise the first ``limit`` from fromId/startTime. Answer: ascending list of
  ``{"a","p","q","f","l","T","m"}`` (spot adds ``"M": true``) equal to the streamed
  ``aggTrade`` events minus ``e``/``E``/``s``. Retention: USD-M "not older than one year", spot
  unstated; the emulator keeps the newest ``EmulatorConfig.trade_history`` (200,000) aggregates
  per symbol, including those a ``drop_trades`` fault kept off the stream. Sources: spot
  "Compressed/Aggregate trades list" (rest-api market data endpoints), USD-M
  "Compressed-Aggregate-Trades-List"; the -1127 text as Binance answered it in a public client
  issue (zenbot 513).
* ``GET /fapi/v1/fundingRate``: ``symbol`` (optional: all configured), ``startTime``/``endTime``
  (inclusive), ``limit`` default 100, max 1000; no times: the most recent ``limit``; more rows
  than ``limit`` in the window: ``startTime + limit``; ascending. Rows ``{"symbol",
  "fundingRate","fundingTime","markPrice"}`` at each 8 h funding time <= now; ``fundingRate``
  is the ``r`` every ``markPrice`` push carried in the last minute before that funding time
  (its ``T``); ``markPrice`` is the deterministic index at that time (the stream's mark comes
  from the live book, which is not a function of time). Limit "share 500/5min/IP with
  fundingInfo", not part of REQUEST_WEIGHT: charged 0, the 500/5 min budget is not emulated.
  Source: USD-M "Get-Funding-Rate-History".
* ``GET /futures/data/{openInterestHist, topLongShortPositionRatio, topLongShortAccountRatio,
  globalLongShortAccountRatio}``: ``symbol``, ``period`` (required: 5m 15m 30m 1h 2h 4h 6h 12h
  1d, else -1120), ``limit`` default 30, max 500, ``startTime``/``endTime`` (inclusive); no
  times: the most recent; with startTime: the first ``limit`` from it (unstated: the
  fundingRate rule); ascending; "only the data of the latest 30 days is available" (older
  boundaries are not returned); weight 0. openInterestHist rows ``{"symbol","sumOpenInterest",
  "sumOpenInterestValue","CMCCirculatingSupply","timestamp"}`` with ``sumOpenInterest`` equal
  (as a decimal) to ``GET /fapi/v1/openInterest`` at that ms; ratio rows ``{"symbol",
  "longShortRatio","longAccount","shortAccount","timestamp"}``, the values the same endpoint
  answered live for that period. Sources: USD-M "Open-Interest-Statistics",
  "Top-Trader-Long-Short-Ratio", "Top-Long-Short-Account-Ratio", "Long-Short-Ratio".

Fault ``drop_trades`` (faults.py) keeps a range of trade events off every connection; the
history above still has them (topics are stream names such as ``btcusdt@aggTrade``; the ids
recorded are aggregate ids ``a``, raw ids ``t`` on spot ``@trade`` streams). Faults rest_5xx
answer 503 with ``{"code":-1001,..}``, rest_429 answer 429 with Retry-After. ``SERVERS`` (at the
end) declares the two servers: binance_spot and binance_derivatives (alias ``binance``: both).
Fault ``shutdown_notice`` sends ``{"e":"serverShutdown","E":<ms>}`` (the event the spot
market-stream docs announce before a server shutdown) as a text frame, unwrapped on combined
streams too, then closes the connection after the fault's ``for``.
"""

from __future__ import annotations

import asyncio
import copy
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web

from . import series
from .connection import Conn, Frame
from .context import VenueContext, json_response, query_ints, ws_response
from .faults import FLAG_SEQ, FaultRule
from .fixtures import documented_example, load_session, readdress
from .history import LoggedTrade, TradeLog
from .hub import TopicSpec
from .ratelimit import WeightBudget
from .registry import Route, ServerSpec, VenueOption
from .replay import RecordedFrame, http_by_query, replay_frames
from .synth import Instrument, SynthBook, TradeTape, rng_for, units

log = structlog.get_logger()

PUBLIC_KINDS = ("depth", "bookTicker")
HOUR_MS = 3_600_000
AGG_TRADES_DEFAULT_LIMIT, AGG_TRADES_MAX_LIMIT = 500, 1000
AGG_TRADES_WEIGHT_SPOT, AGG_TRADES_WEIGHT_USDM = 4, 20
FUNDING_DEFAULT_LIMIT, FUNDING_MAX_LIMIT = 100, 1000
FUTURES_DATA_DEFAULT_LIMIT, FUTURES_DATA_MAX_LIMIT = 30, 500
FUTURES_DATA_RETENTION_MS = 30 * 86_400_000
WEIGHT_LIMIT_OPTION = VenueOption(
    "binance_weight_limit", None, "REQUEST_WEIGHT per minute per Binance server (default: the venue's 6000 spot / "
    "2400 USD-M)", minimum=1, kind=int)


def binance_symbol(symbol: str) -> str:
    return symbol.replace("-", "").replace("/", "").upper()


def binance_frame(stream: str, body: bytes, flags: int = 0) -> Frame:
    """A stream event: ``body`` for raw streams, ``{"stream":..,"data":body}`` for combined ones."""
    return Frame(stream, body, flags, b'{"stream":"' + stream.encode() + b'","data":' + body + b"}")


def recorded_frames(root: Path, session: str) -> list[RecordedFrame]:
    """Data frames of a Binance combined-stream recording (topic = stream name)."""
    out: list[RecordedFrame] = []
    for rec in load_session(root, session):
        if rec.kind != "recv" or rec.payload is None or not isinstance(rec.data, dict):
            continue
        stream = str(rec.data.get("stream", ""))
        flags = FLAG_SEQ if "@depth" in stream else 0
        out.append(RecordedFrame(rec.t, stream, rec.payload, flags))
    return out


def stream_route(stream: str) -> str:
    """'public' for depth/bookTicker streams, 'market' for the rest (USD-M 2026 split)."""
    kind = stream.split("@")[1] if "@" in stream else stream
    return "public" if kind.startswith(PUBLIC_KINDS) else "market"


@lru_cache(maxsize=4)
def _recorded_exchange_info(root: Path, session: str) -> dict[str, Any]:
    rec = load_session(root, session)[0]
    result: dict[str, Any] = rec.data
    return result


def _filters(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["filterType"]: f for f in entry.get("filters", [])}


class BinanceMarket:
    """Synth state of one symbol: book, update ids, trade ids, liquidation pacing."""

    def __init__(self, venue: BinanceVenue, inst: Instrument) -> None:
        self.venue = venue
        self.inst = inst
        self.usdm = venue.usdm
        seed = venue.ctx.cfg.seed
        self.book = SynthBook(inst, rng_for(seed, venue.ctx.name, inst.venue_symbol, "book"),
                              levels=venue.ctx.cfg.book_levels)
        self.last_u = venue.ctx.clock.now_ms() * 1000  # above every id a previous run sent (see TradeTape)
        self.tape = TradeTape.starting_at(rng_for(seed, venue.ctx.name, inst.venue_symbol, "trades"),
                                          venue.ctx.clock.now_ms())
        self.trade_rng = self.tape.rng
        self.trades = TradeLog(venue.ctx.cfg.trade_history)  # every aggregate generated, streamed or not
        self.liq_rng = rng_for(seed, venue.ctx.name, inst.venue_symbol, "liq")
        self.last_liq_ms = 0

    def _levels(self, changes: list[tuple[int, int]]) -> list[tuple[str, str]]:
        px, qty = self.inst.px, self.inst.qty
        return [(px(p), qty(q)) for p, q in changes]

    def depth_frames(self, stream: str, n: int) -> list[Frame]:
        out: list[Frame] = []
        now = self.venue.ctx.clock.now_ms()
        sym = self.inst.venue_symbol
        rng = self.book.rng
        for _ in range(n):
            bids, asks = self.book.step(rng.randint(1, 4))
            first = self.last_u + 1
            last = self.last_u + max(1, len(bids) + len(asks))
            if self.usdm:
                msg: dict[str, Any] = {"e": "depthUpdate", "E": now, "T": now - 1, "s": sym, "U": first,
                                       "u": last, "pu": self.last_u}
            else:
                msg = {"e": "depthUpdate", "E": now, "s": sym, "U": first, "u": last}
            msg["b"] = self._levels(bids)
            msg["a"] = self._levels(asks)
            self.last_u = last
            out.append(binance_frame(stream, orjson.dumps(msg), FLAG_SEQ))
        return out

    def book_ticker_frames(self, stream: str, n: int) -> list[Frame]:
        out: list[Frame] = []
        inst, book = self.inst, self.book
        now = self.venue.ctx.clock.now_ms()
        for _ in range(n):
            bb, ba = book.best_bid, book.best_ask
            msg: dict[str, Any] = {"u": self.last_u, "s": inst.venue_symbol, "b": inst.px(bb),
                                   "B": inst.qty(book.bids[bb]), "a": inst.px(ba), "A": inst.qty(book.asks[ba])}
            if self.usdm:
                msg = {"e": "bookTicker", **msg, "T": now - 1, "E": now}
            out.append(binance_frame(stream, orjson.dumps(msg)))
        return out

    def trade_frames(self, stream: str, n: int) -> list[Frame]:
        """The next n trades: each is remembered (aggTrades history) before a drop_trades fault may
        keep its frame off the stream."""
        out: list[Frame] = []
        inst, tape, rng = self.inst, self.tape, self.trade_rng
        raw_trade = stream.endswith("@trade")
        now = self.venue.ctx.clock.now_ms()
        faults = self.venue.ctx.faults
        drops, add = faults.drops_active, self.trades.add
        for size in tape.burst_sizes(n):
            for _ in range(size):  # one burst shares the trade time
                is_buy = rng.random() < 0.5
                qty = rng.randint(1, 20) * inst.size_step
                price = self.book.best_ask if is_buy else self.book.best_bid
                fills = rng.randint(1, 3)
                agg_id, first = tape.next_agg_id, tape.next_id
                add(agg_id, now, price, qty, is_buy, first, first + fills - 1)
                tape.next_agg_id += 1
                tape.next_id += fills
                shown = first if raw_trade else agg_id
                if drops and faults.drop_trade(stream, shown, shown):
                    continue
                if raw_trade:
                    msg: dict[str, Any] = {"e": "trade", "E": now, "s": inst.venue_symbol, "t": first,
                                           "p": inst.px(price), "q": inst.qty(qty), "T": now,
                                           "m": not is_buy, "M": True}
                else:
                    msg = {"e": "aggTrade", "E": now, "s": inst.venue_symbol, "a": agg_id,
                           "p": inst.px(price), "q": inst.qty(qty), "f": first,
                           "l": first + fills - 1, "T": now, "m": not is_buy}
                    if not self.usdm:
                        msg["M"] = True
                out.append(binance_frame(stream, orjson.dumps(msg)))
        return out

    def mark_price(self, now: int) -> dict[str, Any]:
        seed = self.venue.ctx.cfg.seed
        mark = self.book.mid()
        index = mark * (1 - 0.0001 * series.wave(seed, f"basis:{self.inst.symbol}", now))
        return {"e": "markPriceUpdate", "E": now, "s": self.inst.venue_symbol, "p": f"{mark:.8f}",
                "ap": f"{mark:.8f}", "P": f"{index:.8f}", "i": f"{index:.8f}",
                "r": f"{series.funding_rate(seed, self.inst.symbol, now):.8f}",
                "T": series.next_boundary(now, series.FUNDING_PERIOD_MS)}

    def force_order(self, now: int) -> dict[str, Any] | None:
        if now - self.last_liq_ms < 1000:  # at most one per symbol per second (documented)
            return None
        self.last_liq_ms = now
        rng, inst = self.liq_rng, self.inst
        sell = rng.random() < 0.5
        qty = inst.qty(rng.randint(1, 500) * inst.size_step)
        ref = self.book.best_bid if sell else self.book.best_ask
        price = inst.px(max(inst.tick, ref + (-1 if sell else 1) * rng.randint(1, 30) * inst.tick))
        avg = inst.px(ref)
        return {"e": "forceOrder", "E": now,
                "o": {"s": inst.venue_symbol, "S": "SELL" if sell else "BUY", "o": "LIMIT", "f": "IOC", "q": qty,
                      "p": price, "ap": avg, "X": "FILLED", "l": qty, "z": qty, "T": now - 3}}

    def snapshot(self, limit: int) -> dict[str, Any]:
        now = self.venue.ctx.clock.now_ms()
        body: dict[str, Any] = {"lastUpdateId": self.last_u}
        if self.usdm:
            body.update({"E": now, "T": now - 1})
        body["bids"] = self._levels(self.book.top_bids(limit))
        body["asks"] = self._levels(self.book.top_asks(limit))
        return body


class BinanceVenue:
    def __init__(self, ctx: VenueContext) -> None:
        self.ctx = ctx
        self.usdm = ctx.name == "binance_derivatives"
        self.session = "binance_usdm" if self.usdm else "binance_spot"
        self.market_id = ctx.name
        self.configured = [binance_symbol(s) for s in ctx.cfg.symbols.get(ctx.name, ())]
        self.normalized = {binance_symbol(s): s.upper() for s in ctx.cfg.symbols.get(ctx.name, ())}
        self.info = self._exchange_info()
        self.entries = {e["symbol"]: e for e in self.info["symbols"]}
        self.markets: dict[str, BinanceMarket] = {}
        limit = ctx.cfg.options["binance_weight_limit"] or (2400 if self.usdm else 6000)
        self.budget = WeightBudget(limit, ctx.clock)
        self.recorded_frames: list[RecordedFrame] = []
        self.recorded_depth: dict[str, bytes] = {}
        if ctx.replay:
            self.recorded_frames = recorded_frames(ctx.root, f"{self.session}.ws")
            self.recorded_depth = http_by_query(load_session(ctx.root, f"{self.session}.http"), "symbol")

    # ---- metadata -------------------------------------------------------------------
    def _exchange_info(self) -> dict[str, Any]:
        info = copy.deepcopy(_recorded_exchange_info(self.ctx.root, f"{self.session}.info"))
        if self.ctx.replay:
            return info
        known = {e["symbol"] for e in info["symbols"]}
        template = next((e for e in info["symbols"] if e["symbol"] == "BTCUSDT"), info["symbols"][0])
        for sym, norm in self.normalized.items():
            if sym in known:
                continue
            base, _, quote = norm.partition("-")
            entry = readdress(copy.deepcopy(template), {"symbol": sym, "pair": sym, "baseAsset": base,
                                                         "quoteAsset": quote, "marginAsset": quote})
            info["symbols"].append(entry)
        return info

    def instrument(self, sym: str) -> Instrument:
        entry = self.entries.get(sym, {})
        filters = _filters(entry)
        price_dec, tick = units(filters.get("PRICE_FILTER", {}).get("tickSize", "0.01"))
        qty_dec, lot = units(filters.get("LOT_SIZE", {}).get("stepSize", "0.001"))
        base = entry.get("baseAsset") or self.normalized.get(sym, sym).split("-")[0]
        quote = entry.get("quoteAsset") or "USDT"
        if self.usdm:
            out_px, out_qty = int(entry.get("pricePrecision", price_dec)), int(entry.get("quantityPrecision", qty_dec))
        else:
            out_px = out_qty = 8
        return Instrument(f"{base}-{quote}", sym, price_dec, tick, qty_dec, lot, out_px, out_qty)

    def market(self, sym: str) -> BinanceMarket | None:
        sym = sym.upper()
        found = self.markets.get(sym)
        if found is None and (sym in self.entries or sym in self.normalized):
            found = self.markets[sym] = BinanceMarket(self, self.instrument(sym))
        return found

    # ---- synth topics ---------------------------------------------------------------
    def topic_spec(self, stream: str) -> TopicSpec | None:
        cfg = self.ctx.cfg
        if stream.startswith("!"):
            if not self.usdm:
                return None
            syms = self.configured
            if stream.startswith("!markPrice@arr"):
                period = 1.0 if stream.endswith("@1s") else cfg.period("binance_mark_price")
                return TopicSpec(stream, lambda n: self._mark_arr(stream, syms), "period", period)
            if stream == "!forceOrder@arr":
                rng = rng_for(cfg.seed, self.ctx.name, "force-arr")
                return TopicSpec(stream, lambda n: self._force_arr(stream, syms, rng), "sporadic",
                                 cfg.period("liquidation"), rng)
            return None
        sym, _, kind = stream.partition("@")
        market = self.market(sym)
        if market is None:
            return None
        if kind.startswith("depth") and kind[5:6] in ("", "@"):
            return TopicSpec(stream, lambda n: market.depth_frames(stream, n))
        if kind == "bookTicker":
            return TopicSpec(stream, lambda n: market.book_ticker_frames(stream, n))
        if kind == "aggTrade" or (kind == "trade" and not self.usdm):
            return TopicSpec(stream, lambda n: market.trade_frames(stream, n))
        if self.usdm and kind in ("markPrice", "markPrice@1s"):
            period = 1.0 if kind.endswith("@1s") else cfg.period("binance_mark_price")
            return TopicSpec(stream, lambda n: [binance_frame(stream, orjson.dumps(
                market.mark_price(self.ctx.clock.now_ms())))], "period", period)
        if self.usdm and kind == "forceOrder":
            return TopicSpec(stream, lambda n: self._force_one(stream, market), "sporadic",
                             cfg.period("liquidation"), market.liq_rng)
        return None

    def _mark_arr(self, stream: str, syms: list[str]) -> list[Frame]:
        now = self.ctx.clock.now_ms()
        items = [{**m.mark_price(now), "st": 1} for s in syms if (m := self.market(s)) is not None]
        return [binance_frame(stream, orjson.dumps(items))]

    def _force_one(self, stream: str, market: BinanceMarket) -> list[Frame]:
        msg = market.force_order(self.ctx.clock.now_ms())
        return [binance_frame(stream, orjson.dumps(msg))] if msg else []

    def _force_arr(self, stream: str, syms: list[str], rng: Any) -> list[Frame]:
        market = self.market(rng.choice(syms)) if syms else None
        msg = market.force_order(self.ctx.clock.now_ms()) if market else None
        if not msg:
            return []
        msg["o"]["ps"] = msg["o"]["s"]
        return [binance_frame(stream, orjson.dumps({**msg, "ps": msg["o"]["s"], "st": 1}))]

    # ---- documented examples (replay of never-recorded types) ------------------------
    def documented_frames(self, stream: str) -> list[Frame]:
        if not self.usdm:
            return []
        root = self.ctx.root
        sym, _, kind = stream.partition("@")
        values = {"s": sym.upper(), "symbol": sym.upper()}
        if stream.startswith("!markPrice@arr"):
            body: Any = documented_example(root, "binance_usdm_funding_mark_price",
                                           "binance_usdm/markPrice_arr/connector")
        elif stream == "!forceOrder@arr":
            body = documented_example(root, "binance_usdm_liquidation", "binance_usdm/forceOrder_arr/connector")
        elif kind.startswith("markPrice"):
            body = readdress(documented_example(root, "binance_usdm_funding_mark_price",
                                                "binance_usdm/markPrice/connector"), values)
        elif kind == "forceOrder":
            body = readdress(documented_example(root, "binance_usdm_liquidation",
                                                "binance_usdm/forceOrder/connector"), values)
        else:
            return []
        return [binance_frame(stream, orjson.dumps(body))]

    # ---- WebSocket ------------------------------------------------------------------
    async def ws_handler(self, request: web.Request, route: str) -> web.StreamResponse:
        ws = ws_response()
        await ws.prepare(request)
        combined = request.path.endswith("/stream")
        streams: list[str] = []
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        else:
            tail = request.match_info.get("streams", "")
            streams = [s for s in tail.split("/") if s]
        ctx = self.ctx
        conn = ctx.open_conn(Conn(ws, ctx.faults, ctx.stats, combined=combined))
        conn.shutdown_notice = self._shutdown_notice
        replay_task: asyncio.Task[None] | None = None
        log.info("emulator.ws_open", venue=ctx.name, route=route, streams=len(streams))
        try:
            await self._subscribe(conn, streams, route)
            if ctx.replay:
                replay_task = ctx.spawn(self._replay(conn, route))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                ctx.stats.ws_requests += 1
                await self._on_request(conn, msg.data, route)
        finally:
            ctx.close_conn(conn)
            if replay_task is not None:
                replay_task.cancel()
        return ws

    def _shutdown_notice(self) -> bytes:
        """The market-stream event before a server shutdown (unwrapped, also on combined streams)."""
        return orjson.dumps({"e": "serverShutdown", "E": self.ctx.clock.now_ms()})

    async def _subscribe(self, conn: Conn, streams: list[str], route: str) -> None:
        for stream in streams:
            if route != "legacy" and self.usdm and stream_route(stream) != route:
                log.warning("emulator.stream_wrong_route", venue=self.ctx.name, stream=stream, route=route)
                conn.subs.add(stream)
                continue
            if self.ctx.replay:
                conn.subs.add(stream)
                await conn.send_frames(self.documented_frames(stream))
                continue
            spec = self.topic_spec(stream)
            if spec is None:
                conn.subs.add(stream)
            else:
                self.ctx.hub.subscribe(conn, spec)

    async def _replay(self, conn: Conn, route: str) -> None:
        await asyncio.sleep(self.ctx.cfg.replay_settle)
        usdm = self.usdm

        def wanted(topic: str) -> bool:
            return topic in conn.subs and (not usdm or route == "legacy" or stream_route(topic) == route)

        await replay_frames(conn, self.recorded_frames, self.ctx.cfg.speed, wanted,
                            lambda r: Frame(r.topic, None, r.flags, r.payload))

    async def _on_request(self, conn: Conn, text: str, route: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            await conn.send_control(b'{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1"}')
            return
        method = req.get("method") if isinstance(req, dict) else None
        req_id = req.get("id") if isinstance(req, dict) else None
        params = req.get("params") or [] if isinstance(req, dict) else []
        if method == "SUBSCRIBE":
            await self._subscribe(conn, [str(p) for p in params], route)
            await conn.send_control(orjson.dumps({"result": None, "id": req_id}))
        elif method == "UNSUBSCRIBE":
            for stream in params:
                self.ctx.hub.unsubscribe(conn, str(stream))
            await conn.send_control(orjson.dumps({"result": None, "id": req_id}))
        elif method == "LIST_SUBSCRIPTIONS":
            await conn.send_control(orjson.dumps({"result": sorted(conn.subs), "id": req_id}))
        else:
            await conn.send_control(orjson.dumps({
                "code": 2, "msg": f"Invalid request: unknown variant {method}, expected one of `SUBSCRIBE`, "
                "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`", "id": req_id}))

    # ---- REST -----------------------------------------------------------------------
    def _weighted(self, body: Any, weight: int, status: int = 200) -> web.Response:
        verdict = self.budget.charge(weight)
        headers = {"X-MBX-USED-WEIGHT-1M": str(verdict.used)}
        if verdict.status == 429:
            headers["Retry-After"] = str(verdict.retry_after)
            return json_response({"code": -1003, "msg": f"Too many requests; current limit is {self.budget.limit} "
                                  "request weight per 1 MINUTE. Please use the websocket for live updates to "
                                  "avoid polling the API."}, 429, headers)
        if verdict.status == 418:
            headers["Retry-After"] = str(verdict.retry_after)
            return json_response({"code": -1003, "msg": f"Way too many requests; IP banned until "
                                  f"{self.budget.banned_until}. Please use the websocket for live updates to "
                                  "avoid bans."}, 418, headers)
        return json_response(body, status, headers)

    def _invalid_symbol(self, weight: int = 1) -> web.Response:
        return self._weighted({"code": -1121, "msg": "Invalid symbol."}, weight, 400)

    def _depth_weight(self, limit: int) -> int:
        if self.usdm:
            return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20
        return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250

    async def depth(self, request: web.Request) -> web.Response:
        sym = request.query.get("symbol", "").upper()
        try:
            limit = int(request.query.get("limit", "500" if self.usdm else "100"))
        except ValueError:
            limit = 100
        limit = max(1, min(limit, 1000 if self.usdm else 5000))
        weight = self._depth_weight(limit)
        if self.ctx.replay:
            body = self.recorded_depth.get(sym)
            if body is None:
                return self._invalid_symbol(weight)
            if limit < 1000:
                data = orjson.loads(body)
                data["bids"], data["asks"] = data["bids"][:limit], data["asks"][:limit]
                return self._weighted(data, weight)
            return self._weighted(body, weight)
        market = self.market(sym)
        if market is None:
            return self._invalid_symbol(weight)
        return self._weighted(market.snapshot(limit), weight)

    async def exchange_info(self, request: web.Request) -> web.Response:
        if not self.ctx.replay:
            self.info["serverTime"] = self.ctx.clock.now_ms()
        return self._weighted(self.info, 1 if self.usdm else 20)

    def _norm(self, sym: str) -> str:
        market = self.market(sym)
        return market.inst.symbol if market else sym

    async def premium_index(self, request: web.Request) -> web.Response:
        sym = request.query.get("symbol", "").upper()
        now = self.ctx.clock.now_ms()
        if self.ctx.replay:
            example = "doc_symbol" if sym else "doc_all"
            body = documented_example(self.ctx.root, "binance_usdm_funding_mark_price",
                                      f"binance_usdm/premiumIndex/{example}")
            return self._weighted(readdress(body, {"symbol": sym}) if sym else body, 1 if sym else 10)
        syms = [sym] if sym else self.configured
        items = []
        for s in syms:
            market = self.market(s)
            if market is None:
                return self._invalid_symbol()
            mark = market.mark_price(now)
            items.append({"symbol": s, "markPrice": mark["p"], "indexPrice": mark["i"],
                          "estimatedSettlePrice": mark["P"], "lastFundingRate": mark["r"],
                          "interestRate": "0.00010000", "nextFundingTime": mark["T"], "time": now})
        return self._weighted(items[0] if sym else items, 1 if sym else 10)

    async def open_interest(self, request: web.Request) -> web.Response:
        sym = request.query.get("symbol", "").upper()
        if self.ctx.replay:
            body = documented_example(self.ctx.root, "binance_usdm_open_interest",
                                      "binance_usdm/openInterest/connector")
            return self._weighted(readdress(body, {"symbol": sym}), 1)
        market = self.market(sym)
        if market is None:
            return self._invalid_symbol()
        now = self.ctx.clock.now_ms()
        oi = series.open_interest_base(self.ctx.cfg.seed, market.inst.symbol, now)
        return self._weighted({"openInterest": f"{oi:.3f}", "symbol": sym, "time": now}, 1)

    async def futures_data(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        examples = {
            "topLongShortPositionRatio": ("binance_usdm_long_short_ratio", "topLongShortPositionRatio"),
            "topLongShortAccountRatio": ("binance_usdm_long_short_ratio", "topLongShortAccountRatio"),
            "globalLongShortAccountRatio": ("binance_usdm_long_short_ratio", "globalLongShortAccountRatio"),
            "openInterestHist": ("binance_usdm_open_interest", "openInterestHist"),
        }
        if name not in examples:
            return json_response({"code": -5000, "msg": "Path not found"}, 404)
        q = request.query
        sym = q.get("symbol", "").upper()
        period = q.get("period", "")
        if period not in ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d"):
            return self._weighted({"code": -1120, "msg": "Invalid interval."}, 1, 400)
        if self.ctx.replay:
            file, kind = examples[name]
            body = documented_example(self.ctx.root, file, f"binance_usdm/{kind}/connector")
            return self._weighted(readdress(body, {"symbol": sym}), 1)
        market = self.market(sym)
        if market is None:
            return self._invalid_symbol()
        try:
            p = query_ints(request, "startTime", "endTime", "limit")
        except ValueError as exc:
            return self._bad_param(str(exc), 0)
        limit = max(1, min(p["limit"] or FUTURES_DATA_DEFAULT_LIMIT, FUTURES_DATA_MAX_LIMIT))
        start, end = p["startTime"], p["endTime"]
        seed, norm, now = self.ctx.cfg.seed, market.inst.symbol, self.ctx.clock.now_ms()
        stamps = series.series_window(series.PERIOD_MS[period], now, limit, start, end,
                                      oldest=now - FUTURES_DATA_RETENTION_MS, from_start=start is not None)
        rows: list[dict[str, Any]] = []
        for ts in stamps:
            if name == "openInterestHist":
                oi = round(series.open_interest_base(seed, norm, ts), 3)  # as GET /fapi/v1/openInterest at ts
                value = oi * series.index_price(seed, norm, ts)
                rows.append({"symbol": sym, "sumOpenInterest": f"{oi:.8f}", "sumOpenInterestValue": f"{value:.8f}",
                             "CMCCirculatingSupply": "19800000.000", "timestamp": ts})
            else:
                ratio, long, short = series.ratio_strings(seed, f"{name}:{norm}", ts)
                rows.append({"symbol": sym, "longShortRatio": ratio, "longAccount": long,
                             "shortAccount": short, "timestamp": ts})
        return self._weighted(rows, 0)

    # ---- history ------------------------------------------------------------------
    def _bad_param(self, name: str, weight: int) -> web.Response:
        return self._weighted({"code": -1100, "msg": f"Illegal characters found in parameter '{name}'; legal range "
                               "is '^[0-9]{1,20}$'."}, weight, 400)

    def _agg_row(self, inst: Instrument, t: LoggedTrade) -> dict[str, Any]:
        row: dict[str, Any] = {"a": t.trade_id, "p": inst.px(t.price), "q": inst.qty(t.qty), "f": t.first_id,
                               "l": t.last_id, "T": t.ts, "m": not t.is_buy}
        if not self.usdm:
            row["M"] = True
        return row

    async def agg_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v3/aggTrades`` / ``/fapi/v1/aggTrades`` from the trades the stream generated."""
        weight = AGG_TRADES_WEIGHT_USDM if self.usdm else AGG_TRADES_WEIGHT_SPOT
        sym = request.query.get("symbol", "").upper()
        if not sym:
            return self._weighted({"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, "
                                   "or malformed."}, weight, 400)
        try:
            p = query_ints(request, "fromId", "startTime", "endTime", "limit")
        except ValueError as exc:
            return self._bad_param(str(exc), weight)
        limit = max(1, min(p["limit"] or AGG_TRADES_DEFAULT_LIMIT, AGG_TRADES_MAX_LIMIT))
        start, end, from_id = p["startTime"], p["endTime"], p["fromId"]
        if start is not None and end is not None and end - start >= HOUR_MS:
            return self._weighted({"code": -1127, "msg": "More than 1 hours between startTime and endTime."},
                                  weight, 400)
        if self.ctx.replay:
            return self._weighted([], weight)
        market = self.market(sym)
        if market is None:
            return self._invalid_symbol(weight)
        trades = market.trades
        lo, hi = 0, len(trades)
        if from_id is not None:
            lo = max(lo, trades.from_id(from_id))
        if start is not None:
            lo = max(lo, trades.from_time(start))
        if end is not None:
            hi = min(hi, trades.after_time(end))
        newest = from_id is None and start is None  # nothing or only endTime: the most recent ones
        rows = [self._agg_row(market.inst, t) for t in trades.ascending(lo, hi, limit, newest=newest)]
        return self._weighted(rows, weight)

    async def funding_rate_history(self, request: web.Request) -> web.Response:
        """``GET /fapi/v1/fundingRate``: the rates settled at each funding time, ascending."""
        sym = request.query.get("symbol", "").upper()
        try:
            p = query_ints(request, "startTime", "endTime", "limit")
        except ValueError as exc:
            return self._bad_param(str(exc), 0)
        limit = max(1, min(p["limit"] or FUNDING_DEFAULT_LIMIT, FUNDING_MAX_LIMIT))
        start, end = p["startTime"], p["endTime"]
        if self.ctx.replay:
            return self._weighted([], 0)
        syms = [sym] if sym else self.configured
        seed, now = self.ctx.cfg.seed, self.ctx.clock.now_ms()
        rows: list[dict[str, Any]] = []
        for one in syms:
            market = self.market(one)
            if market is None:
                return self._invalid_symbol(0)
            norm = market.inst.symbol
            stamps = series.series_window(series.FUNDING_PERIOD_MS, now, limit, start, end,
                                          from_start=start is not None)
            rows += [{"symbol": one, "fundingRate": f"{series.settled_funding_rate(seed, norm, ts):.8f}",
                      "fundingTime": ts, "markPrice": f"{series.index_price(seed, norm, ts):.8f}"} for ts in stamps]
        rows.sort(key=lambda r: (r["fundingTime"], r["symbol"]))
        return self._weighted(rows, 0)

    async def ping(self, request: web.Request) -> web.Response:
        return self._weighted({}, 1)

    async def server_time(self, request: web.Request) -> web.Response:
        return self._weighted({"serverTime": self.ctx.clock.now_ms()}, 1)

    def fault_response(self, rule: FaultRule) -> web.Response:
        if rule.kind == "rest_429":
            return json_response({"code": -1003, "msg": "Too many requests; current limit is "
                                  f"{self.budget.limit} request weight per 1 MINUTE."}, 429,
                                 {"Retry-After": "1", "X-MBX-USED-WEIGHT-1M": str(self.budget.used)})
        return json_response({"code": -1001, "msg": "Unknown error, please check your request or try again later."},
                             503)

    def routes(self) -> list[Route]:
        out: list[Route] = []
        for route in ["legacy"] + (["public", "market"] if self.usdm else []):
            base = "" if route == "legacy" else f"/{route}"

            async def handler(request: web.Request, route: str = route) -> web.StreamResponse:
                return await self.ws_handler(request, route)

            out += [Route("ws", f"{base}/stream", handler), Route("ws", f"{base}/ws", handler),
                    Route("ws", base + "/ws/{streams:.+}", handler)]
        prefix = "/fapi/v1" if self.usdm else "/api/v3"
        out += [
            Route("rest", f"{prefix}/depth", self.depth),
            Route("rest", f"{prefix}/exchangeInfo", self.exchange_info),
            Route("rest", f"{prefix}/ping", self.ping),
            Route("rest", f"{prefix}/time", self.server_time),
            Route("rest", f"{prefix}/aggTrades", self.agg_trades),
        ]
        if self.usdm:
            out += [
                Route("rest", "/fapi/v1/premiumIndex", self.premium_index),
                Route("rest", "/fapi/v1/openInterest", self.open_interest),
                Route("rest", "/fapi/v1/fundingRate", self.funding_rate_history),
                Route("rest", "/futures/data/{name}", self.futures_data),
            ]
        return out


_FAULT_KINDS = frozenset({"shutdown_notice", "drop_trades"})
SERVERS = (
    ServerSpec("binance_spot", BinanceVenue, markets={"binance_spot": ("BTC-USDT", "ETH-USDT")},
               aliases=("binance",), options=(WEIGHT_LIMIT_OPTION,), fault_kinds=_FAULT_KINDS),
    ServerSpec("binance_derivatives", BinanceVenue, markets={"binance_derivatives": ("BTC-USDT", "ETH-USDT")},
               aliases=("binance", "binance_usdm"),
               periods={"binance_mark_price": 3.0,  # <symbol>@markPrice; @markPrice@1s -> 1 s
                        "liquidation": 2.0},  # mean interval between liquidations per venue stream
               options=(WEIGHT_LIMIT_OPTION,), fault_kinds=_FAULT_KINDS),
)

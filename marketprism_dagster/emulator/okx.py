"""OKX v5 public: WS ``/ws/v5/public`` and the REST endpoints the collector polls.

WS: text ``ping`` -> ``pong``; ``{"op":"subscribe"|"unsubscribe","args":[...]}`` with
``event`` acks (``connId``, and ``id`` echoed when sent) or ``event:error`` (60012 invalid
request, 60018 unknown channel/instrument). Channels: ``books``, ``trades``,
``funding-rate``, ``open-interest``, ``liquidation-orders`` (instType SWAP).

``books`` in synth mode speaks the protocol chosen by ``EmulatorConfig.okx_books``: updates are
always chained per instrument by seqId/prevSeqId; ``checksum`` (legacy) pushes a snapshot on
subscribe and the documented CRC32 checksum; ``zero`` (default, OKX since 2026-06-23) pushes the
snapshot with ``"checksum": 0`` everywhere; ``rest`` pushes no snapshot, only updates (checksum
0): clients take ``GET /api/v5/market/books`` and bridge it by seqId. That REST answer is the
book as of the last update handed to the stream: ``{"code":"0","msg":"","data":[{"asks":
[[px,sz,"0",orders],...],"bids":[...],"ts":"<ms>","seqId":<int>}]}`` (top ``sz`` levels,
default 1, at most 400); faults book_snapshot_stale/book_snapshot_ahead bend it (faults.py):
stale answers a seqId below the prevSeqId of the newest subscription's first update, ahead a
state ``n`` updates on (the client bridges on the update whose prevSeqId is its seqId).
Fault shutdown_notice sends ``{"event":"notice","code":"64008","msg":..,"connId":..}``; fault
rest_code_200 answers HTTP 200 ``{"code":"50011","msg":"Rate limit reached. ...","data":[]}``
(``code=50013``: system busy); fault bad_checksum complements ``checksum`` (0 becomes -1);
fault drop_trades matches topics ``trades:<instId>`` (e.g. ``trades:BTC-USDT-SWAP``) and
records the underlying trade ids ``tradeId - count + 1`` .. ``tradeId``. The server
(``SERVERS`` at the end) serves okx_spot and okx_derivatives on one port.

REST: ``/api/v5/public/instruments``, ``/public/funding-rate``, ``/public/funding-rate-history``,
``/public/open-interest``, ``/market/books``, ``/market/history-trades``, and the rubik statistics
``/api/v5/rubik/stat/contracts/{long-short-account-ratio, long-short-account-ratio-contract,
long-short-account-ratio-contract-top-trader, long-short-position-ratio-contract-top-trader,
open-interest-history}`` (paths as in documented/okx_long_short_ratio.json and
okx_open_interest.json).

``trades`` (synth): one push per taker order at one price, as OKX documents the channel today:
``count`` matches aggregated, ``tradeId`` = the **last** match id ("tradeId 123, count 3 =
trades 123, 122, 121"), ids consecutive per instrument, ``sz`` = the sum, plus ``source`` "0"
and ``seqId``; so ``tradeId - count`` equals the previous push's ``tradeId`` unless pushes were
lost. ``EmulatorConfig.okx_trade_count_max`` (default 3, as the venue aggregates today; 1 = every push one
match) sets the largest ``count``. Source: OKX "WS / Trades channel" (docs copy 2025-08-17 in wcttmf/okx-api-docs).

History (synth; replay answers ``data: []``; stored copies of https://www.okx.com/docs-v5/en/
in wcttmf/okx-api-docs, snapshot 2025-08-17, read 2026-12-02):

* ``GET /api/v5/market/history-trades``: ``instId`` (required: else 50014), ``type`` ``1``
  (default: ``after``/``before`` are tradeIds) or ``2`` (``after`` is a ts; ``before`` takes no
  timestamp and is ignored), ``after`` = records older than it, ``before`` = records newer than
  it (both exclusive; ``before`` alone gives the latest), ``limit`` max and default 100.
  Newest first, one row per **match** (no ``count``): ``{"instId","side","sz","px","tradeId",
  "ts"}`` (strings) - a streamed aggregate ``tradeId`` L, ``count`` k becomes rows L-k+1..L
  with its px, side and ts and sizes summing to its sz. Retention "the last 3 months"; the
  emulator keeps the newest ``trade_history`` matches per instrument. Rate 20 req / 2 s per IP
  (not emulated). Source: "GET / Trades history".
* ``GET /api/v5/public/funding-rate-history``: ``instId`` (SWAP), ``before``/``after`` (records
  newer / older than a ``fundingTime``, exclusive), ``limit`` max and default 400. Newest
  first: ``{"formulaType","fundingRate","fundingTime","instId","instType","method",
  "realizedRate"}``; both rates are the ``fundingRate`` the ``funding-rate`` channel pushed last
  for that ``fundingTime`` (and the next period's ``settFundingRate``). Up to three months (90
  days here). 10 req / 2 s per IP + instId (not emulated). Source: "Get funding rate history".
* rubik ``open-interest-history`` and the ratio endpoints: ``instId`` (``ccy`` for
  long-short-account-ratio), ``period`` (default 5m), ``begin``/``end`` (records newer / older
  than the ts, exclusive), ``limit`` max and default 100; newest first; "the latest 1,440
  data entries" only. OI rows ``[ts, oi, oiCcy, oiUsd]`` equal the ``open-interest`` channel and
  ``GET /public/open-interest`` at ts (``oiUsd`` from the deterministic index price); ratio
  rows ``[ts, ratio]`` equal the live poll of that period. The UTC+8 alignment of 6H/12H/1D
  is not emulated (all periods align to UTC). Sources: "Get contract open interest history",
  "Get contract long/short ratio", "Get top traders contract long/short ratio (by position)".

Replay: recorded ``books``/``trades``/``tickers`` frames verbatim; subscribe acks in the
recorded (2022) form ``{"event":"subscribe","arg":...}`` so a client repeating the recorded
requests receives the recorded bytes. funding-rate, open-interest, liquidation-orders and
the rubik endpoints were never recorded: they answer with the documented examples
(documented/okx_*.json) re-addressed to the requested instId (liquidation-orders: the
example's instrument is kept: it names a SWAP instrument of the venue); REST books with the
recorded snapshot of the instrument.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import zlib
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import structlog
from aiohttp import WSMsgType, web

from . import series
from .connection import Conn, Frame
from .context import REQUEST_FAULT, VenueContext, json_response, query_ints, ws_response
from .faults import FLAG_CHECKSUM, FLAG_SEQ, MAX_AHEAD, FaultRule
from .fixtures import documented_example, load_session, readdress
from .history import LoggedTrade, TradeLog
from .hub import TopicSpec
from .registry import Route, ServerSpec, VenueOption
from .replay import RecordedFrame, replay_subscribed
from .synth import BookHistory, BookState, Instrument, SynthBook, TradeTape, rng_for, units

log = structlog.get_logger()

CHANNELS = ("books", "trades", "funding-rate", "open-interest", "liquidation-orders")
RUBIK = {
    "long-short-account-ratio-contract": "long-short-account-ratio-contract",
    "long-short-account-ratio-contract-top-trader": "long-short-account-ratio-contract-top-trader",
    "long-short-position-ratio-contract-top-trader": "long-short-position-ratio-contract-top-trader",
}
RUBIK_PERIODS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1H": 3_600_000, "2H": 7_200_000,
                 "4H": 14_400_000, "6H": 21_600_000, "12H": 43_200_000, "1D": 86_400_000,
                 "6Hutc": 21_600_000, "12Hutc": 43_200_000, "1Dutc": 86_400_000}
_conn_ids = itertools.count(0xA4D3AE55)
RUBIK_MAX_LIMIT = 100
RUBIK_RETENTION_ROWS = 1440
HISTORY_TRADES_MAX_LIMIT = 100
FUNDING_HISTORY_MAX_LIMIT = 400
FUNDING_HISTORY_RETENTION_MS = 90 * 86_400_000
WARM_UP_UPDATES = 8
STALE_UPDATES = 3  # a stale snapshot is this many updates older than a new subscriber's first one
SHUTDOWN_MSG = "The connection will soon be closed for a service upgrade. Please reconnect."
BOOKS_PATH = "/api/v5/market/books"
REST_CODES = {  # rest_code_200: HTTP 200 with an error code (50011 is the default)
    "50011": "Rate limit reached. Please refer to API documentation and throttle requests accordingly.",
    "50013": "System is busy, please try again later.",
}
BOOKS_MODES = ("checksum", "zero", "rest")
BOOKS_OPTION = VenueOption(
    "okx_books", "zero", "synth OKX books protocol: zero (today: snapshot pushed, checksum 0) | rest (no pushed "
    "snapshot: GET /api/v5/market/books + seqId) | checksum (legacy CRC32)", choices=BOOKS_MODES)
TRADE_COUNT_OPTION = VenueOption(
    "okx_trade_count_max", 3, "synth OKX trades: largest count of matches aggregated into one push (1 = one match "
    "a push; 2 or more = about one push in five aggregates 2..max matches, as OKX does)", minimum=1, kind=int)

Level = Sequence[str]
BookView = tuple[int, int, list[tuple[int, int]], list[tuple[int, int]]]  # seqId, ts, top bids, top asks


@lru_cache(maxsize=2)
def _recorded_instruments(root: Path) -> dict[str, bytes]:
    """instType (plus '&uly=' for options) -> the last recorded instruments answer."""
    out: dict[str, bytes] = {}
    for rec in load_session(root, "okx.info"):
        query = parse_qs(urlsplit(rec.url).query)
        key = query.get("instType", [""])[0] + "".join(f"&uly={u}" for u in query.get("uly", []))
        if rec.payload is not None:
            out[key] = rec.payload
    return out


def checksum_string(bids: Sequence[Level], asks: Sequence[Level], depth: int = 25) -> str:
    """The string the ``books`` checksum is computed over (bids descending, asks ascending).

    Documented rule (documented/okx_orderbook_books.json): take the first 25 bids and 25 asks
    of the merged book, interleave them as ``bid_px:bid_sz:ask_px:ask_sz:...`` using the
    venue's own price and size strings; when one side runs out the other continues alone.
    """
    parts: list[str] = []
    nb = min(depth, len(bids))
    na = min(depth, len(asks))
    for i in range(max(nb, na)):
        if i < nb:
            parts.append(bids[i][0])
            parts.append(bids[i][1])
        if i < na:
            parts.append(asks[i][0])
            parts.append(asks[i][1])
    return ":".join(parts)


def signed_crc32(text: str) -> int:
    value = zlib.crc32(text.encode())
    return value - (1 << 32) if value >= (1 << 31) else value


def okx_checksum(bids: Sequence[Level], asks: Sequence[Level]) -> int:
    """Signed CRC32 over the top 25 levels per side, as OKX sends it in ``checksum``."""
    return signed_crc32(checksum_string(bids, asks))


def corrupt_checksum(payload: bytes) -> bytes:
    """Fault bad_checksum: every ``checksum`` of the push becomes its bitwise complement (0 -> -1)."""
    msg = orjson.loads(payload)
    for item in msg.get("data", []):
        if "checksum" in item:
            item["checksum"] = ~int(item["checksum"])
    return orjson.dumps(msg)


def inst_id(symbol: str, market: str) -> str:
    return f"{symbol.upper()}-SWAP" if market == "okx_derivatives" else symbol.upper()


def recorded_frames(root: Path) -> list[RecordedFrame]:
    """Data frames of the OKX recording (topic = channel:instId); event acks are left out."""
    out: list[RecordedFrame] = []
    for rec in load_session(root, "okx.ws"):
        data = rec.data
        if rec.kind != "recv" or rec.payload is None or not isinstance(data, dict) or "event" in data:
            continue
        arg = data.get("arg", {})
        flags = 0
        if arg.get("channel") == "books":
            flags = FLAG_CHECKSUM | (FLAG_SEQ if data.get("action") == "update" else 0)
        out.append(RecordedFrame(rec.t, f"{arg.get('channel')}:{arg.get('instId')}", rec.payload, flags))
    return out


def funding_text(seed: int, symbol: str, funding_time: int) -> str:
    """The rate settled at ``funding_time`` as OKX writes it: the last ``fundingRate`` pushed for
    that period (history ``fundingRate``/``realizedRate``, the next period's ``settFundingRate``)."""
    return f"{series.settled_funding_rate(seed, symbol, funding_time):.16f}"


def _levels(inst: Instrument, changes: list[tuple[int, int]]) -> list[list[str]]:
    px, qty = inst.px, inst.qty
    return [[px(p), qty(q), "0", str(1 + (p ^ q) % 9) if q else "0"] for p, q in changes]


class OkxMarket:
    """One instrument: its book (with a short history of states), trade tape and slow series.

    ``seq`` is the seqId of the newest generated update, ``sent_seq`` that of the newest one
    handed to the stream; they differ only while ``pending`` holds updates generated ahead of
    the stream (fault book_snapshot_ahead), which the stream sends next.
    """

    def __init__(self, venue: OkxVenue, inst: Instrument, inst_type: str) -> None:
        self.venue = venue
        self.inst = inst
        self.inst_type = inst_type
        cfg = venue.ctx.cfg
        seed, iid = cfg.seed, inst.venue_symbol
        self.books_mode: str = cfg.options["okx_books"]
        self.book = SynthBook(inst, rng_for(seed, "okx", iid, "book"), levels=cfg.book_levels)
        self.ts = venue.ctx.clock.now_ms()
        self.seq = self.ts * 1000  # above every seqId a previous run sent (see TradeTape)
        self.history = BookHistory(self.book, self.seq, self.ts)
        for _ in range(WARM_UP_UPDATES):  # a past to serve stale snapshots from, even before any stream
            self._step(self.ts)
        self.sent_seq = self.seq
        self.pending: list[Frame] = []
        self.stale: BookState | None = None
        self.tape = TradeTape.starting_at(rng_for(seed, "okx", iid, "trades"), venue.ctx.clock.now_ms())
        self.trades = TradeLog(cfg.trade_history)  # every match generated, one row per trade id
        self.liq_rng = rng_for(seed, "okx", iid, "liq")

    def _checksum(self, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> int:
        if self.books_mode != "checksum":
            return 0
        inst = self.inst
        return okx_checksum([(inst.px(p), inst.qty(q)) for p, q in bids[:25]],
                            [(inst.px(p), inst.qty(q)) for p, q in asks[:25]])

    def _step(self, now: int) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
        """One book update: returns its prevSeqId and the bid and ask changes."""
        rng = self.book.rng
        bids, asks = self.book.step(rng.randint(1, 4))
        prev = self.seq
        self.seq += rng.randint(1, 5)
        self.ts = now
        self.history.record(self.seq, now, bids, asks)
        return prev, bids, asks

    def sent_book(self, depth: int) -> BookView:
        """The book as of the last update handed to the stream: (seqId, ts, top bids, top asks)."""
        if not self.pending:
            return self.seq, self.ts, self.book.top_bids(depth), self.book.top_asks(depth)
        state = self.history.state_at(self.sent_seq)
        assert state is not None  # pending updates are few, the history holds them
        return state.seq, state.ts, state.top_bids(depth), state.top_asks(depth)

    def snapshot_frame(self, topic: str) -> Frame:
        seq, ts, bids, asks = self.sent_book(400)
        inst = self.inst
        data = {"asks": _levels(inst, asks), "bids": _levels(inst, bids), "ts": str(ts),
                "checksum": self._checksum(bids, asks), "prevSeqId": -1, "seqId": seq}
        msg = {"arg": {"channel": "books", "instId": inst.venue_symbol}, "action": "snapshot", "data": [data]}
        return Frame(topic, orjson.dumps(msg), FLAG_CHECKSUM)

    def _update_frames(self, topic: str, n: int, now: int) -> list[Frame]:
        out: list[Frame] = []
        inst = self.inst
        arg = {"channel": "books", "instId": inst.venue_symbol}
        checksum = self.books_mode == "checksum"
        flags = FLAG_SEQ | FLAG_CHECKSUM  # every mode carries the field: bad_checksum makes it wrong
        ts = str(now)
        for _ in range(n):
            prev, bids, asks = self._step(now)
            value = self._checksum(self.book.top_bids(25), self.book.top_asks(25)) if checksum else 0
            data = {"asks": _levels(inst, asks), "bids": _levels(inst, bids), "ts": ts,
                    "checksum": value, "prevSeqId": prev, "seqId": self.seq}
            out.append(Frame(topic, orjson.dumps({"arg": arg, "action": "update", "data": [data]}), flags))
        return out

    def update_frames(self, topic: str, n: int) -> list[Frame]:
        """The stream's next updates: first those generated ahead of it, then n - len(those) new ones."""
        out, self.pending = self.pending, []
        if len(out) < n:
            out += self._update_frames(topic, n - len(out), self.venue.ctx.clock.now_ms())
        self.sent_seq = self.seq
        return out

    def note_subscription(self) -> None:
        """Keep a real state older than the first update a new subscriber receives (stale snapshots)."""
        older = [s for s in self.history.seqs() if s < self.sent_seq]
        target = older[-STALE_UPDATES] if len(older) >= STALE_UPDATES else older[0]
        self.stale = self.history.state_at(target)

    def stale_book(self, depth: int) -> BookView:
        """A past state: older than the first update of the newest books subscription."""
        state = self.stale or self.history.state_at(self.history.base.seq)
        assert state is not None
        return state.seq, state.ts, state.top_bids(depth), state.top_asks(depth)

    def ahead_book(self, topic: str, n: int, depth: int) -> BookView:
        """Move the book n updates on without streaming them yet; return that newer state."""
        if len(self.pending) < MAX_AHEAD:  # the history must still reach back to sent_seq
            self.pending += self._update_frames(topic, n, self.venue.ctx.clock.now_ms())
        return self.seq, self.ts, self.book.top_bids(depth), self.book.top_asks(depth)

    def trade_frames(self, topic: str, n: int) -> list[Frame]:
        """The next n ``trades`` pushes, each one aggregate of ``count`` matches of one taker order
        at one price: ids first..last consecutive, ``tradeId`` = last, ``sz`` = the sum. Every match
        is remembered (history-trades) before a drop_trades fault may keep the push off the stream."""
        out: list[Frame] = []
        inst, tape, rng = self.inst, self.tape, self.tape.rng
        arg = {"channel": "trades", "instId": inst.venue_symbol}
        now_ms = self.venue.ctx.clock.now_ms()
        now = str(now_ms)
        max_count = self.venue.trade_count_max
        faults, add, step, iid = self.venue.ctx.faults, self.trades.add, inst.size_step, inst.venue_symbol
        drops = faults.drops_active
        for size in tape.burst_sizes(n):
            for _ in range(size):  # a burst shares one millisecond, each push its own ids
                is_buy = rng.random() < 0.5
                price = self.book.best_ask if is_buy else self.book.best_bid
                count = rng.randint(2, max_count) if max_count > 1 and rng.random() < 0.2 else 1
                first = tape.next_id
                total = 0
                for k in range(count):
                    qty = rng.randint(1, 20) * step
                    add(first + k, now_ms, price, qty, is_buy)
                    total += qty
                last = first + count - 1
                tape.next_id += count
                seq_id = tape.next_agg_id
                tape.next_agg_id += 1
                if drops and faults.drop_trade(topic, first, last):
                    continue
                data = {"instId": iid, "tradeId": str(last), "px": inst.px(price), "sz": inst.qty(total),
                        "side": "buy" if is_buy else "sell", "ts": now, "count": str(count), "source": "0",
                        "seqId": seq_id}
                out.append(Frame(topic, orjson.dumps({"arg": arg, "data": [data]})))
        return out

    def funding(self, now: int) -> dict[str, Any]:
        seed, sym = self.venue.ctx.cfg.seed, self.inst.symbol
        funding_time = series.next_boundary(now, series.FUNDING_PERIOD_MS)
        rate = series.funding_rate(seed, sym, now)
        return {"formulaType": "noRate", "fundingRate": f"{rate:.16f}", "fundingTime": str(funding_time),
                "impactValue": "", "instId": self.inst.venue_symbol, "instType": "SWAP", "interestRate": "",
                "maxFundingRate": "0.00375", "method": "current_period", "minFundingRate": "-0.00375",
                "nextFundingRate": "", "nextFundingTime": str(funding_time + series.FUNDING_PERIOD_MS),
                "premium": f"{rate * 0.9:.16f}",
                "settFundingRate": funding_text(seed, sym, funding_time - series.FUNDING_PERIOD_MS),
                "settState": "settled", "ts": str(now)}

    def open_interest(self, now: int) -> dict[str, Any]:
        seed = self.venue.ctx.cfg.seed
        base = series.open_interest_base(seed, self.inst.symbol, now)
        ct_val = float(self.inst.ct_val or 1)
        contracts = round(base / ct_val, 2)
        return {"instId": self.inst.venue_symbol, "instType": self.inst_type, "oi": f"{contracts:.2f}",
                "oiCcy": f"{contracts * ct_val:.8f}",
                "oiUsd": f"{contracts * ct_val * series.index_price(seed, self.inst.symbol, now):.4f}",
                "ts": str(now)}

    def liquidation(self, now: int) -> dict[str, Any]:
        rng, inst = self.liq_rng, self.inst
        details = []
        for i in range(rng.randint(2, 4)):
            short = rng.random() < 0.5
            ref = self.book.best_ask if short else self.book.best_bid
            details.append({"bkLoss": "0", "bkPx": inst.px(ref), "ccy": "", "posSide": "short" if short else "long",
                            "side": "buy" if short else "sell", "sz": inst.qty(rng.randint(1, 200) * inst.size_step),
                            "ts": str(now - 40 * i)})
        uly = inst.symbol
        return {"details": details, "instFamily": uly, "instId": inst.venue_symbol, "instType": "SWAP", "uly": uly}


class OkxVenue:
    def __init__(self, ctx: VenueContext) -> None:
        self.ctx = ctx
        self.trade_count_max: int = ctx.cfg.options["okx_trade_count_max"]
        self.recorded = _recorded_instruments(ctx.root)
        self.instruments: dict[str, dict[str, Any]] = {}
        for key in ("SPOT", "SWAP"):
            for item in orjson.loads(self.recorded.get(key, b'{"data":[]}'))["data"]:
                self.instruments[item["instId"]] = item
        self.configured: dict[str, str] = {}  # instId -> market id
        for market in ("okx_spot", "okx_derivatives"):
            for sym in ctx.cfg.symbols.get(market, ()):
                self.configured[inst_id(sym, market)] = market
        if not ctx.replay:
            self._add_missing()
        self.markets: dict[str, OkxMarket] = {}
        self.frames = recorded_frames(ctx.root) if ctx.replay else []
        self.recorded_books: dict[str, dict[str, Any]] = {}
        if ctx.replay:
            for rec in self.frames:
                msg = orjson.loads(rec.payload)
                iid = msg["arg"].get("instId")
                if msg.get("action") == "snapshot" and iid not in self.recorded_books:
                    self.recorded_books[iid] = msg["data"][0]

    def _add_missing(self) -> None:
        for iid, market in self.configured.items():
            if iid in self.instruments:
                continue
            swap = market == "okx_derivatives"
            template = copy.deepcopy(self.instruments.get("BTC-USDT-SWAP" if swap else "BTC-USDT", {}))
            base, quote = iid.split("-")[:2]
            values = {"instId": iid, "baseCcy": "" if swap else base, "quoteCcy": "" if swap else quote,
                      "uly": f"{base}-{quote}" if swap else "", "instFamily": f"{base}-{quote}" if swap else "",
                      "ctValCcy": base if swap else "", "settleCcy": quote if swap else ""}
            self.instruments[iid] = readdress(template, values)

    def instrument(self, iid: str) -> Instrument | None:
        item = self.instruments.get(iid)
        if item is None:
            return None
        price_dec, tick = units(item.get("tickSz") or "0.1")
        qty_dec, lot = units(item.get("lotSz") or "0.00000001")
        base, quote = iid.split("-")[:2]
        return Instrument(f"{base}-{quote}", iid, price_dec, tick, qty_dec, lot, None, None, item.get("ctVal", ""))

    def market(self, iid: str) -> OkxMarket | None:
        found = self.markets.get(iid)
        if found is None:
            inst = self.instrument(iid)
            if inst is None:
                return None
            found = self.markets[iid] = OkxMarket(self, inst, self.instruments[iid].get("instType", "SPOT"))
        return found

    # ---- WebSocket ------------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = ws_response()
        await ws.prepare(request)
        ctx = self.ctx
        conn = ctx.open_conn(Conn(ws, ctx.faults, ctx.stats))
        conn_id = f"{next(_conn_ids) & 0xFFFFFFFF:08x}"
        conn.shutdown_notice = lambda: orjson.dumps(
            {"event": "notice", "code": "64008", "msg": SHUTDOWN_MSG, "connId": conn_id})
        replay_task: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                ctx.stats.ws_requests += 1
                if msg.data == "ping":
                    await conn.send_control(b"pong")
                    continue
                await self._on_request(conn, conn_id, msg.data)
                if ctx.replay and replay_task is None and conn.subs:
                    replay_task = ctx.spawn(
                        replay_subscribed(conn, self.frames, ctx.cfg.replay_settle, ctx.cfg.speed)
                    )
        finally:
            ctx.close_conn(conn)
            if replay_task is not None:
                replay_task.cancel()
        return ws

    def _error(self, conn_id: str, code: str, msg: str, req_id: Any) -> bytes:
        body: dict[str, Any] = {"event": "error", "code": code, "msg": msg, "connId": conn_id}
        return orjson.dumps({"id": req_id, **body} if req_id is not None else body)

    async def _on_request(self, conn: Conn, conn_id: str, text: str) -> None:
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            req = None
        op = req.get("op") if isinstance(req, dict) else None
        args = req.get("args") if isinstance(req, dict) else None
        req_id = req.get("id") if isinstance(req, dict) else None
        ops = self.ctx.stats.ws_ops
        ops[str(op)] = ops.get(str(op), 0) + 1  # one request, whatever its number of args
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list) or not args:
            await conn.send_control(self._error(conn_id, "60012", f"Invalid request: {text}", req_id))
            return
        for arg in args:
            if not isinstance(arg, dict):
                await conn.send_control(self._error(conn_id, "60012", f"Invalid request: {text}", req_id))
                continue
            channel = arg.get("channel")
            key = arg.get("instType") if channel == "liquidation-orders" else arg.get("instId")
            topic = f"{channel}:{key}"
            valid = channel in CHANNELS and (
                (channel == "liquidation-orders" and key == "SWAP") or key in self.instruments
                or (self.ctx.replay and any(f.topic == topic for f in self.frames)))
            if channel not in CHANNELS and self.ctx.replay and any(f.topic == topic for f in self.frames):
                valid = True  # recorded channels (tickers) replay too
            if not valid:
                await conn.send_control(self._error(
                    conn_id, "60018", f"Wrong URL or channel:{channel},instId:{key} doesn't exist. Please use "
                    "the correct URL, channel and parameters referring to API document.", req_id))
                continue
            if self.ctx.replay:
                ack: dict[str, Any] = {"event": op, "arg": arg}
            else:
                ack = {"event": op, "arg": arg, "connId": conn_id}
                if req_id is not None:
                    ack = {"id": req_id, **ack}
            if op == "unsubscribe":
                self.ctx.hub.unsubscribe(conn, topic)
                await conn.send_control(orjson.dumps(ack))
                continue
            await conn.send_control(orjson.dumps(ack))
            await self._subscribe(conn, topic, str(channel), str(key))

    async def _subscribe(self, conn: Conn, topic: str, channel: str, key: str) -> None:
        if self.ctx.replay:
            conn.subs.add(topic)
            await conn.send_frames(self._documented_push(topic, channel, key))
            return
        cfg = self.ctx.cfg
        if channel == "liquidation-orders":
            rng = rng_for(cfg.seed, "okx", "liq-all")
            swaps = [iid for iid, m in self.configured.items() if m == "okx_derivatives"]
            spec = TopicSpec(topic, lambda n: self._liquidation_frames(topic, swaps, rng), "sporadic",
                             cfg.period("liquidation"), rng)
            self.ctx.hub.subscribe(conn, spec)
            return
        market = self.market(key)
        assert market is not None
        arg = {"channel": channel, "instId": key}
        if channel == "books":
            market.note_subscription()
            snapshot = market.snapshot_frame(topic) if market.books_mode != "rest" else None
            self.ctx.hub.subscribe(conn, TopicSpec(topic, lambda n: market.update_frames(topic, n)))
            if snapshot is not None:
                await conn.send_frames([snapshot])  # no await between snapshot and joining the stream
        elif channel == "trades":
            self.ctx.hub.subscribe(conn, TopicSpec(topic, lambda n: market.trade_frames(topic, n)))
        elif channel == "funding-rate":
            self.ctx.hub.subscribe(conn, TopicSpec(topic, lambda n: [Frame(topic, orjson.dumps(
                {"arg": arg, "data": [market.funding(self.ctx.clock.now_ms())]}))], "period",
                cfg.period("okx_funding_rate")))
        elif channel == "open-interest":
            self.ctx.hub.subscribe(conn, TopicSpec(topic, lambda n: [Frame(topic, orjson.dumps(
                {"arg": arg, "data": [market.open_interest(self.ctx.clock.now_ms())]}))], "period",
                cfg.period("okx_open_interest")))

    def _liquidation_frames(self, topic: str, swaps: list[str], rng: Any) -> list[Frame]:
        market = self.market(rng.choice(swaps)) if swaps else None
        if market is None:
            return []
        data = market.liquidation(self.ctx.clock.now_ms())
        return [Frame(topic, orjson.dumps({"arg": {"channel": "liquidation-orders", "instType": "SWAP"},
                                           "data": [data]}))]

    def _documented_push(self, topic: str, channel: str, key: str) -> list[Frame]:
        root = self.ctx.root
        if channel == "funding-rate":
            body = readdress(documented_example(root, "okx_funding_rate", "okx/funding-rate/push"), {"instId": key})
        elif channel == "open-interest":
            body = readdress(documented_example(root, "okx_open_interest", "okx/open-interest/push"), {"instId": key})
        elif channel == "liquidation-orders":
            body = documented_example(root, "okx_liquidation_orders", "okx/liquidation-orders/push")
            body.pop("id", None)
        else:
            return []
        return [Frame(topic, orjson.dumps(body))]

    # ---- REST -----------------------------------------------------------------------
    @staticmethod
    def _ok(data: Any) -> web.Response:
        return json_response({"code": "0", "data": data, "msg": ""})

    @staticmethod
    def _bad_inst() -> web.Response:
        return json_response({"code": "51001", "data": [], "msg": "Instrument ID or Spread ID doesn't exist."})

    @staticmethod
    def _missing(param: str) -> web.Response:
        return json_response({"code": "50014", "data": [], "msg": f"Parameter {param} can not be empty."}, 400)

    async def get_instruments(self, request: web.Request) -> web.Response:
        inst_type = request.query.get("instType", "")
        if not inst_type:
            return self._missing("instType")
        iid = request.query.get("instId")
        if self.ctx.replay and not iid and inst_type in self.recorded:
            return json_response(self.recorded[inst_type])
        items = [i for i in self.instruments.values() if i.get("instType") == inst_type]
        if iid:
            items = [i for i in items if i["instId"] == iid]
        return self._ok(items)

    async def funding_rate(self, request: web.Request) -> web.Response:
        iid = request.query.get("instId", "")
        if not iid:
            return self._missing("instId")
        if self.ctx.replay:
            example = documented_example(self.ctx.root, "okx_funding_rate", "okx/funding-rate/rest")
            return json_response(readdress(example, {"instId": iid}))
        market = self.market(iid)
        if market is None or market.inst_type != "SWAP":
            return self._bad_inst()
        return self._ok([market.funding(self.ctx.clock.now_ms())])

    async def open_interest(self, request: web.Request) -> web.Response:
        iid = request.query.get("instId", "")
        inst_type = request.query.get("instType", "")
        if not inst_type:
            return self._missing("instType")
        if self.ctx.replay:
            return json_response(readdress(documented_example(self.ctx.root, "okx_open_interest",
                                                              "okx/open-interest/rest"), {"instId": iid}))
        now = self.ctx.clock.now_ms()
        ids = [iid] if iid else [i for i, m in self.configured.items() if m == "okx_derivatives"]
        out = []
        for one in ids:
            market = self.market(one)
            if market is None or market.inst_type != inst_type:
                return self._bad_inst()
            out.append(market.open_interest(now))
        return self._ok(out)

    async def books(self, request: web.Request) -> web.Response:
        iid = request.query.get("instId", "")
        if not iid:
            return self._missing("instId")
        try:
            size = max(1, min(int(request.query.get("sz", "1")), 400))
        except ValueError:
            size = 1
        if self.ctx.replay:
            snap = self.recorded_books.get(iid)
            if snap is None:
                return self._bad_inst()
            return self._ok([{"asks": snap["asks"][:size], "bids": snap["bids"][:size], "ts": snap["ts"]}])
        market = self.market(iid)
        if market is None:
            return self._bad_inst()
        rule = REQUEST_FAULT.get()
        if rule is not None and rule.kind == "book_snapshot_stale":
            seq, ts, bids, asks = market.stale_book(size)
        elif rule is not None and rule.kind == "book_snapshot_ahead":
            seq, ts, bids, asks = market.ahead_book(f"books:{iid}", rule.updates_ahead(), size)
        else:
            seq, ts, bids, asks = market.sent_book(size)
        inst = market.inst
        return self._ok([{"asks": _levels(inst, asks), "bids": _levels(inst, bids), "ts": str(ts), "seqId": seq}])

    async def rubik(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        q = request.query
        period = q.get("period", "5m")
        if name == "long-short-account-ratio":
            key, example = q.get("ccy", ""), "okx/long-short-account-ratio/rest"
            if not key:
                return self._missing("ccy")
        elif name in RUBIK:
            key, example = q.get("instId", ""), f"okx/{name}/rest"
            if not key:
                return self._missing("instId")
        elif name == "open-interest-history":
            key, example = q.get("instId", ""), "okx/open-interest-history/rest"
        else:
            return json_response({"code": "50014", "data": [], "msg": "Path not found"}, 404)
        if period not in RUBIK_PERIODS:
            return json_response({"code": "51000", "data": [], "msg": "Parameter period error"}, 400)
        if self.ctx.replay:
            file = "okx_open_interest" if name == "open-interest-history" else "okx_long_short_ratio"
            return json_response(documented_example(self.ctx.root, file, example))
        if name != "long-short-account-ratio" and self.market(key) is None:
            return self._bad_inst()
        try:
            p = query_ints(request, "limit", "begin", "end")
        except ValueError as exc:
            return self._param_error(str(exc))
        limit = max(1, min(p["limit"] or RUBIK_MAX_LIMIT, RUBIK_MAX_LIMIT))
        begin, end = p["begin"], p["end"]
        seed, now, step = self.ctx.cfg.seed, self.ctx.clock.now_ms(), RUBIK_PERIODS[period]
        # begin/end are exclusive ("newer than" / "earlier than"); only the latest 1,440 rows exist
        stamps = series.series_window(step, now, limit, None if begin is None else begin + 1,
                                      None if end is None else end - 1,
                                      oldest=series.floor_to(now, step) - (RUBIK_RETENTION_ROWS - 1) * step)
        rows: list[list[str]] = []
        for ts in reversed(stamps):  # newest first, as OKX answers
            if name == "open-interest-history":
                market = self.market(key)
                assert market is not None
                oi = market.open_interest(ts)
                rows.append([str(ts), oi["oi"], oi["oiCcy"], oi["oiUsd"]])
            else:
                ratio, _, _ = series.ratio_strings(seed, f"okx:{name}:{key}", ts)
                rows.append([str(ts), ratio])
        return self._ok(rows)

    @staticmethod
    def _param_error(name: str) -> web.Response:
        return json_response({"code": "51000", "data": [], "msg": f"Parameter {name} error"}, 400)

    @staticmethod
    def _trade_row(iid: str, inst: Instrument, t: LoggedTrade) -> dict[str, str]:
        return {"instId": iid, "side": "buy" if t.is_buy else "sell", "sz": inst.qty(t.qty), "px": inst.px(t.price),
                "tradeId": str(t.trade_id), "ts": str(t.ts)}

    async def history_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v5/market/history-trades``: single matches, newest first, by tradeId or ts."""
        q = request.query
        iid = q.get("instId", "")
        if not iid:
            return self._missing("instId")
        kind = q.get("type") or "1"
        if kind not in ("1", "2"):
            return self._param_error("type")
        try:
            p = query_ints(request, "after", "before", "limit")
        except ValueError as exc:
            return self._param_error(str(exc))
        limit = max(1, min(p["limit"] or HISTORY_TRADES_MAX_LIMIT, HISTORY_TRADES_MAX_LIMIT))
        if self.ctx.replay:
            return self._ok([])
        market = self.market(iid)
        if market is None:
            return self._bad_inst()
        trades = market.trades
        lo, hi = 0, len(trades)
        after, before = p["after"], p["before"]
        if kind == "1":
            if after is not None:
                hi = trades.from_id(after)  # ids < after
            if before is not None:
                lo = trades.after_id(before)  # ids > before
        elif after is not None:  # type 2: after is a ts; before takes no timestamp (ignored)
            hi = trades.from_time(after)
        rows = trades.ascending(lo, hi, limit, newest=True)
        return self._ok([self._trade_row(iid, market.inst, t) for t in reversed(rows)])

    async def funding_rate_history(self, request: web.Request) -> web.Response:
        """``GET /api/v5/public/funding-rate-history``: settled rates, newest first."""
        iid = request.query.get("instId", "")
        if not iid:
            return self._missing("instId")
        try:
            p = query_ints(request, "after", "before", "limit")
        except ValueError as exc:
            return self._param_error(str(exc))
        limit = max(1, min(p["limit"] or FUNDING_HISTORY_MAX_LIMIT, FUNDING_HISTORY_MAX_LIMIT))
        if self.ctx.replay:
            return self._ok([])
        market = self.market(iid)
        if market is None or market.inst_type != "SWAP":
            return self._bad_inst()
        after, before = p["after"], p["before"]
        seed, now, sym = self.ctx.cfg.seed, self.ctx.clock.now_ms(), market.inst.symbol
        stamps = series.series_window(series.FUNDING_PERIOD_MS, now, limit, None if before is None else before + 1,
                                      None if after is None else after - 1, oldest=now - FUNDING_HISTORY_RETENTION_MS)
        rows = []
        for ts in reversed(stamps):
            rate = funding_text(seed, sym, ts)
            rows.append({"formulaType": "noRate", "fundingRate": rate, "fundingTime": str(ts), "instId": iid,
                         "instType": "SWAP", "method": "current_period", "realizedRate": rate})
        return self._ok(rows)

    def fault_response(self, rule: FaultRule) -> web.Response:
        if rule.kind == "rest_code_200":
            code = rule.code or "50011"
            return json_response({"code": code, "msg": REST_CODES[code], "data": []})
        if rule.kind == "rest_429":
            return json_response({"code": "50011", "data": [], "msg": "Too Many Requests"}, 429, {"Retry-After": "1"})
        return json_response({"code": "50001", "data": [], "msg": "Service temporarily unavailable. Please try again "
                              "later."}, 503)

    def routes(self) -> list[Route]:
        return [
            Route("ws", "/ws/v5/public", self.ws_handler),
            Route("rest", "/api/v5/public/instruments", self.get_instruments),
            Route("rest", "/api/v5/public/funding-rate", self.funding_rate),
            Route("rest", "/api/v5/public/open-interest", self.open_interest),
            Route("rest", BOOKS_PATH, self.books),
            Route("rest", "/api/v5/market/history-trades", self.history_trades),
            Route("rest", "/api/v5/public/funding-rate-history", self.funding_rate_history),
            Route("rest", "/api/v5/rubik/stat/contracts/{name}", self.rubik),
        ]


SERVERS = (
    ServerSpec(
        "okx", OkxVenue,
        markets={"okx_spot": ("BTC-USDT", "ETH-USDT"), "okx_derivatives": ("BTC-USDT", "ETH-USDT")},
        periods={"okx_funding_rate": 30.0,  # OKX pushes every 30-90 s
                 "okx_open_interest": 3.0,
                 "liquidation": 2.0},  # mean interval between liquidations per venue stream
        options=(BOOKS_OPTION, TRADE_COUNT_OPTION),
        fault_kinds=frozenset({"bad_checksum", "rest_code_200", "book_snapshot_stale", "book_snapshot_ahead",
                               "shutdown_notice", "drop_trades"}),
        fault_paths={"book_snapshot_stale": BOOKS_PATH, "book_snapshot_ahead": BOOKS_PATH},
        fault_codes=REST_CODES,
        frame_faults={"bad_checksum": corrupt_checksum},
    ),
)

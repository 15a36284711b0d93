"""OKX spot and USDT swaps (v5 public WebSocket + rubik REST): specs, symbol mapping, parsers.

One WebSocket feed ``{ws}/ws/v5/public`` subscribes (one request per connection, never an
unsubscribe) per instId to ``trades``, ``books`` (400 levels, seqId/prevSeqId), ``funding-rate``
and ``open-interest``, plus ``liquidation-orders`` for instType SWAP; text "ping" after 25 s idle,
answered by "pong". Books synchronize in the venue's three protocol states (see
``book.sync.SeqIdSync`` and docs/venues.md): from a pushed snapshot with a real checksum, from a
pushed snapshot with ``checksum: 0`` (OKX since 2026-06-23), or from the REST snapshot
``GET /api/v5/market/books`` bridged by sequence ids when the stream pushes none. A gap or a
checksum mismatch recovers through the REST snapshot, never through a resubscribe.

History (refill, ``histories``; docs/venues.md "History endpoints"): ``/api/v5/market/history-trades``
(single matches by tradeId; only ids strictly between two pushes; by time, a match inside a stored push is
held: ``venues/history.held_matches``), ``/api/v5/public/funding-rate-history``
(settled rates), rubik ``open-interest-history`` (5m) and the two ratio endpoints with ``begin`` / ``end``.

Swap sizes are contracts: base quantity = contracts x ``ctVal`` (exact Decimal), the raw
count kept in ``quantity_contracts`` / ``open_interest_contracts``. Symbols come from the
instruments endpoint (spot baseCcy-quoteCcy; linear swaps ctValCcy-settleCcy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar

import msgspec
import orjson

from marketprism_dagster.book import SeqIdSync, Status
from marketprism_dagster.book.sync import APPLIED, BOOK_FAULT_EVENTS, CHECKSUM, GAP
from marketprism_dagster.records import FundingRate, Liquidation, LsrAllAccount, LsrTopPosition, OpenInterest, Trade
from marketprism_dagster.timeutil import DAY_MS
from marketprism_dagster.validation import is_positive
from marketprism_dagster.venues.base import (
    BookSettings,
    Channel,
    FetchSnapshot,
    Instrument,
    MarketSettings,
    MarketSpec,
    Output,
    Poll,
    RestBodyError,
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

INST_TYPE = {"spot": "SPOT", "perpetual": "SWAP"}
RUBIK = "/api/v5/rubik/stat/contracts"  # trading statistics: the long/short ratios
RUBIK_PERIOD = {"1h": "1H", "2h": "2H", "4h": "4H", "6h": "6H", "12h": "12H", "1d": "1D"}  # others as-is
PING_INTERVAL_S = 25.0
SHUTDOWN_NOTICE_CODE = "64008"  # event "notice": the connection closes soon for a service upgrade
BOOKS_PATH = "/api/v5/market/books"  # the REST snapshot that synchronizes a ``books`` stream
# GET /api/v5/market/books: sz "Order book depth per side. Maximum 400", default 1; 40 requests / 2 s per
# IP (okx docs-v5, order book trading, market data, GET / Order book). orderbook.snapshot_limit is one
# setting for every venue and its default (1000) is above 400, so a value above 400 is capped, not
# rejected. The adapter always asks sz=400 (BOOKS_DEPTH): its books are the 400-level ``books`` channel,
# and a shallower snapshot would leave the book wrong below its depth.
BOOKS_DEPTH = 400  # the ``books`` channel's depth and the endpoint's largest ``sz``: the whole book
CHECKSUM_LEVELS = 25  # the ``books`` checksum covers the best 25 levels of each side
BY_INST_TYPE = frozenset({"liquidation-orders"})  # channels subscribed per instType, not per instId
SNAPSHOT_RETRY_S = 0.5  # a too-old or unreadable snapshot is fetched again after this pause
STALE = Status.STALE
SNAPSHOT_TOO_OLD = Status.SNAPSHOT_TOO_OLD


def parse_instruments(body: bytes | str, skipped: list[str] | None = None) -> list[Instrument]:
    """Instruments from ``/api/v5/public/instruments`` (any instType); ValueError naming a non-zero ``code``
    or a body that is no listing. A malformed entry is skipped (described in ``skipped``), the rest loads."""
    payload = orjson.loads(body)
    if not isinstance(payload, dict):
        raise ValueError(f"okx instruments: the answer is not an object: {body[:120]!r}")
    code = str(payload.get("code", "0"))
    if code != "0":  # an error envelope: not "no such symbol" for every configured symbol
        raise ValueError(f"okx instruments request failed: code {code}: {payload.get('msg') or ''}")
    listing = payload.get("data") or []
    if not isinstance(listing, list):
        raise ValueError(f"okx instruments: 'data' is a {type(listing).__name__}, not a list")
    out: list[Instrument] = []
    for i in listing:
        try:
            inst = _instrument_entry(i)
        except ENTRY_ERRORS as exc:
            if skipped is not None:
                skipped.append(f"{entry_label(i, 'instId')}: {exc!r}"[:200])
            continue
        if inst is not None:
            out.append(inst)
    return out


def _instrument_entry(i: Any) -> Instrument | None:
    if not isinstance(i, dict):
        raise TypeError(f"entry is a {type(i).__name__}, not an object")
    kind = i.get("instType")
    if kind == "SPOT":
        base, quote, cv, inverse = name_of(i, "baseCcy"), name_of(i, "quoteCcy"), None, False
    elif kind in ("SWAP", "FUTURES"):
        inverse = i.get("ctType") == "inverse"
        if inverse:  # contract value in USD, settled in the coin
            base, quote = name_of(i, "settleCcy"), name_of(i, "ctValCcy")
        else:
            base, quote = name_of(i, "ctValCcy"), name_of(i, "settleCcy")
        if not is_positive(i.get("ctVal")):
            raise ValueError(f"ctVal {i.get('ctVal')!r} is not a positive decimal")
        cv = Decimal(i["ctVal"])
    else:
        return None  # options are outside our matrix
    tick, lot = i.get("tickSz"), i.get("lotSz")
    return Instrument(
        symbol=f"{base}-{quote}",
        exchange_symbol=name_of(i, "instId"),
        base=base,
        quote=quote,
        contract_value=cv,
        tick_size=tick if isinstance(tick, str) else None,
        lot_size=lot if isinstance(lot, str) else None,
        inverse=inverse,
    )


# OKX REST codes (docs-v5 "Error Code", REST API, Public, 50000-53999; documented/okx_errors_rate_limits.json).
# Rate limit: 50011 "Rate limit reached" (HTTP 200 or 429), 50013 "Systems are busy" (429), 50040 "Too
# frequent operations", 50061 (account order rate limit: never on public data, waiting is still right).
# Retry later: 50001 "Service temporarily unavailable" (503), 50004 "API endpoint request timeout" (400),
# 50026 "System error. Try again later" (500). Every other non-zero code is permanent for the request as
# sent (e.g. 51001 "Instrument ID or Spread ID doesn't exist.").
REST_RATE_LIMIT_CODES = frozenset({"50011", "50013", "50040", "50061"})
REST_TRANSIENT_CODES = frozenset({"50001", "50004", "50026"})
# Every public endpoint we call counts requests per 2 s: books 40 / 2 s (IP), instruments 20 / 2 s
# (IP + instType), rubik long/short ratios 5 / 2 s (IP + instId). A rate-limited host waits one window.
REST_WINDOW_S = 2.0


def parse_rest_error(body: bytes | str) -> RestBodyError | None:
    """The error in an OKX REST envelope ``{"code": "<n>", "msg": ..., "data": [...]}``; None for code "0".

    A body that is not such an envelope (not JSON, no ``code``) is no venue error: None.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict) or "code" not in payload:
        return None
    code = str(payload["code"])
    if code == "0":
        return None
    msg = str(payload.get("msg") or "")
    if code in REST_RATE_LIMIT_CODES:
        return RestBodyError(code, msg, rate_limited=True, retry_after_s=REST_WINDOW_S)
    return RestBodyError(code, msg, transient=code in REST_TRANSIENT_CODES)


def trade_id_span(t: Mapping[str, Any]) -> tuple[int, int] | None:
    """The match ids a ``trades`` push covers: ``tradeId - count + 1 .. tradeId`` (``count`` absent before
    the aggregated channel, i.e. one match); None when the ids are not decimal numbers."""
    last, count = t.get("tradeId"), str(t.get("count") or "1")
    if type(last) is not str or not last.isdecimal() or not count.isdecimal():
        return None
    n = int(count)
    return (int(last) - n + 1, int(last)) if n >= 1 else None


@dataclass(frozen=True, slots=True)
class BookMessage:
    inst_id: str
    snapshot: bool
    seq_id: int | None  # absent before 2023 (the 2022 recording)
    prev_seq_id: int | None
    ts: int
    bids: Sequence[Sequence[str]]  # [price, size, "0", orders]; size in contracts for derivatives
    asks: Sequence[Sequence[str]]
    checksum: int | None


def parse_book_message(msg: Mapping[str, Any]) -> BookMessage:
    """A ``books`` / ``books-l2-tbt`` / ``books50-l2-tbt`` push (already JSON-decoded)."""
    d = msg["data"][0]
    return BookMessage(
        inst_id=msg["arg"]["instId"],
        snapshot=msg.get("action") == "snapshot",
        seq_id=d.get("seqId"),
        prev_seq_id=d.get("prevSeqId"),
        ts=int(d["ts"]),
        bids=d.get("bids") or (),
        asks=d.get("asks") or (),
        checksum=d.get("checksum"),
    )


@dataclass(frozen=True, slots=True)
class RestBook:
    seq_id: int | None
    ts: int
    bids: Sequence[Sequence[str]]  # [price, size, "0", orders]
    asks: Sequence[Sequence[str]]


def parse_rest_book(body: bytes | str) -> RestBook:
    """A ``GET /api/v5/market/books`` answer. ``seqId`` is read as a number or a numeric string (the
    docs leave its JSON type open); a non-zero ``code`` raises ValueError naming code and message."""
    payload = orjson.loads(body)
    code = payload.get("code")
    if code not in ("0", 0):
        raise ValueError(f"okx books snapshot error {code}: {payload.get('msg')}")
    d = payload["data"][0]
    seq = d.get("seqId")
    return RestBook(
        seq_id=int(seq) if seq is not None and seq != "" else None,
        ts=int(d["ts"]),
        bids=d.get("bids") or (),
        asks=d.get("asks") or (),
    )


class _BooksArg(msgspec.Struct, tag_field="channel", tag="books"):
    instId: str


# A price of at most 15 characters (see binance.ShortPrice): a longer one takes the generic path.
ShortPrice = Annotated[str, msgspec.Meta(max_length=15)]


class _BookData(msgspec.Struct):
    ts: str
    asks: list[tuple[ShortPrice, str, str, str]] = []  # [price, size, "0", orders]
    bids: list[tuple[ShortPrice, str, str, str]] = []
    checksum: int | None = None
    seqId: int | None = None
    prevSeqId: int | None = None


class _BooksFrame(msgspec.Struct):
    arg: _BooksArg
    data: list[_BookData]
    action: str | None = None
    event: str | None = None


# ``books`` pushes decode straight into typed structs (the tag on ``arg.channel`` rejects other
# channels at their first key); every other frame, and any books push of another shape, takes
# the unchanged generic orjson path.
_BOOKS_DECODER = msgspec.json.Decoder(_BooksFrame)
_PARSE_ERRORS = (KeyError, TypeError, ValueError, IndexError, ArithmeticError, AttributeError)


# ------------------------------------------------------------ history (refill; docs/venues.md "History endpoints")
HISTORY_TRADES_PATH = "/api/v5/market/history-trades"
HISTORY_TRADES_LIMIT = 100  # maximum and default 100
FUNDING_HISTORY_PATH = "/api/v5/public/funding-rate-history"
FUNDING_HISTORY_LIMIT = 400  # maximum and default 400
OI_HISTORY_PATH = f"{RUBIK}/open-interest-history"
RUBIK_LIMIT = 100  # maximum and default 100
OI_HISTORY_PERIOD = "5m"
OKX_HISTORIES = (
    History("trade", HISTORY_TRADES_PATH, "_history_trades_first", "_history_trades_page", ("spot", "perpetual"),
            retention_ms=90 * DAY_MS, min_interval_s=0.1, by_id=True,  # last 3 months; 20 requests / 2 s / IP
            live_aggregates=True,  # a live push = consecutive matches of one taker order and price, id the last
            note="single matches by tradeId: only ids strictly between two live pushes; by time, a match a "
                 "stored push covers is held"),
    History("funding_rate", FUNDING_HISTORY_PATH, "_history_funding_first", "_history_funding_page", ("perpetual",),
            retention_ms=90 * DAY_MS, min_interval_s=0.2,  # up to three months; 10 requests / 2 s / IP + instId
            note="settled rate at each funding time: next_funding_time == timestamp"),
    History("open_interest", OI_HISTORY_PATH, "_history_rubik_first", "_history_oi_page", ("perpetual",),
            retention_ms=1440 * 300_000, min_interval_s=0.2,  # latest 1,440 rows (5 days of 5m); 10 / 2 s
            note="5-minute statistics at period boundaries"),
    History("lsr_top_position", f"{RUBIK}/long-short-position-ratio-contract-top-trader", "_history_rubik_first",
            "_history_ratio_page", ("perpetual",), retention_ms=None, min_interval_s=0.4,  # 5 requests / 2 s
            note="the polled series itself: live identities"),
    History("lsr_all_account", f"{RUBIK}/long-short-account-ratio-contract", "_history_rubik_first",
            "_history_ratio_page", ("perpetual",), retention_ms=None, min_interval_s=0.4,
            note="the polled series itself: live identities"),
)


class OkxAdapter(VenueAdapter):
    venue = "okx"
    markets: ClassVar[Mapping[str, MarketSpec]] = {
        market_type: MarketSpec(
            instruments_path="/api/v5/public/instruments",
            snapshot_path=BOOKS_PATH,
            snapshot_symbol_param="instId",
            snapshot_depth=SnapshotDepth(f"GET {BOOKS_PATH} sz", 1, BOOKS_DEPTH, clamp=True),
        )
        for market_type in INST_TYPE
    }
    channels = (
        Channel("trades", ("trade",), "_trades", {"spot": "public", "perpetual": "public"}),
        # books-l2-tbt / books50-l2-tbt: the same format (login channels; accepted for recordings)
        Channel(
            "books",
            ("orderbook",),
            "_books",
            {"spot": "public", "perpetual": "public"},
            ("books", "books-l2-tbt", "books50-l2-tbt"),
        ),
        Channel("funding-rate", ("funding_rate",), "_funding", {"perpetual": "public"}),
        Channel("open-interest", ("open_interest",), "_open_interest", {"perpetual": "public"}),
        Channel("liquidation-orders", ("liquidation",), "_liquidations", {"perpetual": "public"}),
    )
    polls = (
        Poll("lsr_top_position", f"{RUBIK}/long-short-position-ratio-contract-top-trader", "_ratios", ("perpetual",)),
        Poll("lsr_all_account", f"{RUBIK}/long-short-account-ratio-contract", "_ratios", ("perpetual",)),
    )
    histories = OKX_HISTORIES
    # ``tradeId`` = the LAST match id of an aggregate of ``count`` matches: ids tradeId - count + 1 .. tradeId
    # (docs/venues.md settled point 6); consecutive per instrument across pushes (open point 6)
    id_types = ("trade",)
    default_markets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "okx_spot": {
            "market_type": "spot",
            "symbols": ["BTC-USDT", "ETH-USDT"],
            "data_types": ["orderbook", "trade"],
            "rest_url": "https://www.okx.com",
            "ws_url": "wss://ws.okx.com:8443",
        },
        "okx_derivatives": {
            "market_type": "perpetual",
            "symbols": ["BTC-USDT", "ETH-USDT"],
            "rest_url": "https://www.okx.com",
            "ws_url": "wss://ws.okx.com:8443",
        },
    }

    def __init__(self, market_id: str, market: MarketSettings, orderbook: BookSettings) -> None:
        super().__init__(market_id, market, orderbook)
        self.inst_type = INST_TYPE[market.market_type]
        self.feed_key = f"{market_id}/public"
        self.books: dict[str, SeqIdSync] = {}

    # ------------------------------------------------------------ instruments
    def instrument_urls(self) -> Sequence[str]:
        return [f"{self.market.rest_url.rstrip('/')}{self.spec.instruments_path}?instType={self.inst_type}"]

    def load_instruments(self, bodies: Mapping[str, bytes]) -> dict[str, Instrument]:
        suffix = "-SWAP" if self.inst_type == "SWAP" else ""
        skipped: list[str] = []
        listed = [inst for body in bodies.values() for inst in parse_instruments(body, skipped)]
        self.skipped_instruments = skipped
        return self._keep_instruments(
            listed,
            "use BASE-QUOTE, e.g. BTC-USDT; okx perpetual = USDT-margined swaps",
            lambda i: not i.inverse and i.exchange_symbol.endswith(suffix) and bool(suffix or i.contract_value is None),
        )

    # ------------------------------------------------------------ subscriptions
    def _args(self, channels: list[Channel]) -> list[dict[str, str]]:
        names = [c.name for c in channels if c.name not in BY_INST_TYPE]
        args = [{"channel": c, "instId": inst} for inst in self.instruments for c in names]
        args += [{"channel": c.name, "instType": self.inst_type} for c in channels if c.name in BY_INST_TYPE]
        return args

    def ws_feeds(self) -> list[WsFeed]:
        channels = self.subscribed().get("public", [])
        args = self._args(channels)
        if not args:
            return []
        frame = orjson.dumps({"op": "subscribe", "args": args}).decode()
        return [
            WsFeed(
                key=self.feed_key,
                url=f"{self.market.ws_url.rstrip('/')}/ws/v5/public",
                subscribe=(frame,),
                ping_text="ping",
                ping_interval_s=PING_INTERVAL_S,
                pong_text="pong",
                data_types=self.carried(channels),
            )
        ]

    def rest_polls(self) -> list[RestPoll]:
        rest = self.market.rest_url.rstrip("/")
        period = self.market.lsr_period
        venue_period = RUBIK_PERIOD.get(period, period)
        types = set(self.market.data_types)
        polls = []
        for inst in self.instruments:
            for p in self.polls:
                if p.data_type in types and self.market_type in p.market_types:
                    url = f"{rest}{p.path}?instId={inst}&period={venue_period}&limit={LSR_LIMIT}"
                    polls.append(self._rest_poll(p.data_type, inst, url, PERIOD_SECONDS[period]))
        return polls

    def snapshot_action(self, inst_id: str, delay_s: float = 0.0) -> FetchSnapshot:
        """The REST book snapshot that (re)synchronizes one instrument (never a resubscribe: OKX allows
        480 subscribe/unsubscribe requests per connection and hour, and the socket carries every channel)."""
        # source=0: the normal (non-ELP) book, as the changelog's example asks; the ``books`` channel carries no ELP
        url = f"{self.market.rest_url.rstrip('/')}{BOOKS_PATH}?instId={inst_id}&sz={BOOKS_DEPTH}&source=0"
        return FetchSnapshot(symbol=inst_id, url=url, delay_s=delay_s)

    # ------------------------------------------------------------ inputs
    def on_connect(self, feed_key: str, received_at: int) -> Output:
        """Reconnect: every book starts over (from a pushed snapshot, or buffered updates and a REST
        snapshot). The feed sends its one subscribe request per connection (counted)."""
        for sync in self.books.values():
            sync.reset()
        out = Output()
        out.count("ws_subscribe_request")
        return out

    def on_message(self, feed_key: str, raw: bytes | str, received_at: int) -> Output:
        if not self.typed_fast_path:
            return self._on_message_generic(feed_key, raw, received_at)
        try:
            frame = _BOOKS_DECODER.decode(raw)
        except msgspec.DecodeError:  # includes ValidationError: not a books push
            frame = None
        if frame is None or frame.event is not None:
            self.generic_frames += 1
            return self._on_message_generic(feed_key, raw, received_at)
        out = Output([], [], {})
        try:
            d = frame.data[0]
            self._book(
                frame.arg.instId,
                frame.action == "snapshot",
                d.seqId,
                d.prevSeqId,
                int(d.ts),
                d.bids,
                d.asks,
                d.checksum,
                received_at,
                out,
                True,
            )
        except _PARSE_ERRORS as exc:
            self.errors.bad(out, "parse_error", "books", raw, error=repr(exc))
        return out

    def _on_message_generic(self, feed_key: str, raw: bytes | str, received_at: int) -> Output:
        out = Output()
        if raw == "pong" or raw == b"pong":
            return out
        try:
            msg = orjson.loads(raw)
            arg = msg.get("arg")
            if "event" in msg:
                self._event(msg, raw, out)
                return out
            channel = arg["channel"]
            data = msg["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            self.errors.bad(out, "parse_error", "envelope", raw, error=repr(exc))
            return out
        handler = self._handlers.get(channel) if type(channel) is str else None
        if handler is None:
            self.errors.bad(out, "unsupported_message", channel, raw)
            return out
        try:
            handler(feed_key, msg, arg, data, received_at, out)
        except _PARSE_ERRORS as exc:
            self.errors.bad(out, "parse_error", channel, raw, error=repr(exc))
        return out

    def _event(self, msg: dict[str, Any], raw: bytes | str, out: Output) -> None:
        ev = msg["event"]
        if ev == "error":
            self.errors.bad(out, "subscribe_error", str(msg.get("code")), raw, msg=msg.get("msg"))
        elif ev == "notice" and str(msg.get("code")) == SHUTDOWN_NOTICE_CODE:
            # "The connection will soon be closed for a service upgrade" (about 30 s ahead): move the feed
            # to a new connection before this one closes (the runtime logs and counts the switch)
            out.actions.append(SwitchConnection(self.feed_key, f"okx notice {SHUTDOWN_NOTICE_CODE}: {msg.get('msg')}"))
        elif ev == "notice":
            self.errors.bad(out, "venue_notice", str(msg.get("code")), raw, msg=msg.get("msg"))

    def _linear(self, inst: Instrument, out: Output) -> bool:
        if inst.inverse:
            self.errors.bad(out, "unsupported_instrument", inst.exchange_symbol)
            return False
        return True

    def _trades(self, fk: str, msg: Any, arg: Any, data: list[Any], received_at: int, out: Output) -> None:
        inst_id = arg["instId"]
        inst = self.instruments.get(inst_id) or self._instrument(inst_id, out)
        if inst is None or not self._linear(inst, out):
            return
        cv = inst.contract_value
        ids = out.ids = out.ids or []
        for t in data:
            sz = t["sz"]
            span = trade_id_span(t)
            if span is not None:
                ids.append(("trade", inst.symbol, span[0], span[1], int(t["ts"])))
            out.records.append(
                Trade(
                    exchange=self.market_id,
                    market_type=self.market_type,
                    symbol=inst.symbol,
                    exchange_symbol=inst_id,
                    timestamp=int(t["ts"]),
                    received_at=received_at,
                    trade_id=t["tradeId"],
                    price=t["px"],
                    quantity=scale(sz, cv) if cv is not None else sz,
                    quantity_contracts=sz if cv is not None else None,
                    side=t["side"],
                )
            )

    def _books(self, fk: str, msg: Any, arg: Any, data: list[Any], received_at: int, out: Output) -> None:
        b = parse_book_message(msg)
        self._book(
            b.inst_id, b.snapshot, b.seq_id, b.prev_seq_id, b.ts, b.bids, b.asks, b.checksum, received_at, out
        )

    def _book(
        self,
        inst_id: str,
        snapshot: bool,
        seq_id: int | None,
        prev_seq_id: int | None,
        ts: int,
        bids: Sequence[Sequence[str]],
        asks: Sequence[Sequence[str]],
        checksum: int | None,
        received_at: int,
        out: Output,
        quads: bool = False,  # typed fast path: (price, size, _, orders) 4-tuples, prices <= 15 characters
    ) -> None:
        inst = self.instruments.get(inst_id) or self._instrument(inst_id, out)
        if inst is None:
            return
        sync = self.books.get(inst_id) or self._sync(inst_id)
        try:
            if snapshot:
                st = sync.on_snapshot(seq_id, ts, bids, asks, checksum)
            else:
                st = sync.on_update(seq_id, prev_seq_id, ts, bids, asks, checksum, quads, quads)
        except _PARSE_ERRORS:
            # a level the book could not take: the sync dropped the book; a REST snapshot follows
            # (the caller counts the parse error)
            out.count("resync")
            self._request_snapshot(sync, inst_id, out)
            raise
        if st is APPLIED:
            if sync.ticker.ready:
                self._publish(sync, inst, received_at, out)
            return
        self._book_status(st, sync, inst, received_at, out)

    def _sync(self, inst_id: str) -> SeqIdSync:
        ob = self.orderbook
        sync = self.books[inst_id] = SeqIdSync(
            ob.cadence_ms, ob.depth, max_levels=ob.max_levels, checksum_levels=CHECKSUM_LEVELS
        )
        return sync

    def _request_snapshot(self, sync: SeqIdSync, inst_id: str, out: Output, delay_s: float = 0.0) -> None:
        if sync.need_snapshot:
            sync.snapshot_requested()
            out.count("book_snapshot_request")
            out.actions.append(self.snapshot_action(inst_id, delay_s))

    def _book_status(self, st: Status, sync: SeqIdSync, inst: Instrument, received_at: int, out: Output) -> None:
        """Everything but a plain applied update: count it, publish what is ready, ask for a snapshot if needed."""
        if st is GAP or st is CHECKSUM:
            out.count("resync")
            out.count("checksum_failure" if st is CHECKSUM else "sequence_gap")
        elif st is STALE:
            out.count("book_stale_update")
        elif st is SNAPSHOT_TOO_OLD:
            out.count("snapshot_too_old")
        elif st in BOOK_FAULT_EVENTS:  # crossed or too deep: the book dropped and wants a snapshot
            out.count("resync")
            out.count(BOOK_FAULT_EVENTS[st])
        if sync.ticker.ready:
            self._publish(sync, inst, received_at, out)
        # a snapshot older than the buffered stream: the venue's cache lags, ask again a little later
        self._request_snapshot(sync, inst.exchange_symbol, out, SNAPSHOT_RETRY_S if st is SNAPSHOT_TOO_OLD else 0.0)

    def on_snapshot(self, symbol: str, body: bytes, received_at: int) -> Output:
        """A REST ``/api/v5/market/books`` answer for ``symbol`` (an instId), bridged to the stream."""
        out = Output()
        inst = self._instrument(symbol, out)
        if inst is None:
            return out
        sync = self.books.get(symbol) or self._sync(symbol)
        try:
            snap = parse_rest_book(body)
            st = sync.on_rest_snapshot(snap.seq_id, snap.ts, snap.bids, snap.asks)
        except _PARSE_ERRORS as exc:
            # an error body or a level the book could not take: the book stays unsynchronized, ask again
            self.errors.bad(out, "parse_error", "books_snapshot", body, error=repr(exc))
            sync.snapshot_failed()
            self._request_snapshot(sync, symbol, out, SNAPSHOT_RETRY_S)
            return out
        if st is Status.SYNCED or st is Status.SNAPSHOT_PENDING:
            out.count("book_rest_sync")
        self._book_status(st, sync, inst, received_at, out)
        return out

    def _funding(self, fk: str, msg: Any, arg: Any, data: list[Any], received_at: int, out: Output) -> None:
        inst_id = arg["instId"]
        inst = self.instruments.get(inst_id) or self._instrument(inst_id, out)
        if inst is None:
            return
        for f in data:
            ts = f.get("ts")
            out.records.append(
                FundingRate(
                    exchange=self.market_id,
                    market_type=self.market_type,
                    symbol=inst.symbol,
                    exchange_symbol=inst_id,
                    # ts is the exchange time; pre-2023 pushes had none: fall back to receive time
                    timestamp=int(ts) if ts else received_at,
                    received_at=received_at,
                    funding_rate=f["fundingRate"],
                    # fundingTime = the settlement the current rate applies to (Binance's "T")
                    next_funding_time=int(f["fundingTime"]) if f.get("fundingTime") else None,
                )
            )

    def _open_interest(self, fk: str, msg: Any, arg: Any, data: list[Any], received_at: int, out: Output) -> None:
        inst_id = arg["instId"]
        inst = self.instruments.get(inst_id) or self._instrument(inst_id, out)
        if inst is None or not self._linear(inst, out):
            return
        for o in data:
            oi = o["oi"]
            out.records.append(
                OpenInterest(
                    exchange=self.market_id,
                    market_type=self.market_type,
                    symbol=inst.symbol,
                    exchange_symbol=inst_id,
                    timestamp=int(o["ts"]),
                    received_at=received_at,
                    open_interest=o.get("oiCcy") or scale(oi, inst.contract_value),
                    open_interest_value=o.get("oiUsd") or None,
                    open_interest_contracts=oi,
                )
            )

    def _liquidations(self, fk: str, msg: Any, arg: Any, data: list[Any], received_at: int, out: Output) -> None:
        for group in data:
            inst_id = group["instId"]
            inst = self.instruments.get(inst_id)
            if inst is None:  # the channel pushes every SWAP: keep only ours
                out.count("liquidation_other_symbol")
                continue
            if not self._linear(inst, out):
                continue
            for det in group["details"]:
                sz = det["sz"]
                out.records.append(
                    Liquidation(
                        exchange=self.market_id,
                        market_type=self.market_type,
                        symbol=inst.symbol,
                        exchange_symbol=inst_id,
                        timestamp=int(det["ts"]),
                        received_at=received_at,
                        side=det["side"],
                        price=det["bkPx"],
                        quantity=scale(sz, inst.contract_value),
                        quantity_contracts=sz,
                        status="",  # OKX gives no order status for liquidation pushes
                    )
                )

    # ------------------------------------------------------------ REST polls (rubik)
    def _ratios(self, poll: RestPoll, inst: Instrument, body: bytes, received_at: int, out: Output) -> None:
        struct = LsrTopPosition if poll.data_type == "lsr_top_position" else LsrAllAccount
        payload = orjson.loads(body)
        if payload.get("code") not in ("0", 0):
            self.errors.bad(out, "rest_error", poll.data_type, body, code=payload.get("code"))
            return
        records = [
            struct(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=inst.exchange_symbol,
                timestamp=int(row[0]),
                received_at=received_at,
                period=self.market.lsr_period,
                long_short_ratio=row[1],  # OKX gives the ratio only, no long/short shares
            )
            for row in payload["data"]
        ]
        out.records.extend(records)

    def rest_body_error(self, body: bytes) -> RestBodyError | None:
        return parse_rest_error(body)


    # ------------------------------------------------------------ history (refill)
    def _history_url(self, path: str, **params: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"{self.market.rest_url.rstrip('/')}{path}?{query}"

    @staticmethod
    def _history_data(body: bytes) -> list[Any]:
        payload = orjson.loads(body)
        if payload.get("code") not in ("0", 0):
            raise ValueError(f"okx history error {payload.get('code')}: {payload.get('msg')}")
        data = payload["data"]
        if not isinstance(data, list):
            raise TypeError(f"data is a {type(data).__name__}, not a list")
        return data

    def _history_trades_first(self, window: Window, inst: Instrument) -> Page:
        """By tradeId (type 1: ``after`` = older than, ``before`` = newer than, both exclusive), newest first;
        without ids by time (type 2: ``after`` = older than a ts), continuing by tradeId."""
        if window.by_id:
            return self._trades_page(inst, int(window.last_id or 0) + 1, int(window.first_id or 0) - 1)
        url = self._history_url(
            HISTORY_TRADES_PATH, instId=inst.exchange_symbol, type=2, after=window.before_ms, limit=HISTORY_TRADES_LIMIT
        )
        return Page(url, 1, window.before_ms, "time")

    def _trades_page(self, inst: Instrument, after: int, before: int | None) -> Page:
        params: dict[str, Any] = {"instId": inst.exchange_symbol, "type": 1, "after": after}
        if before is not None and before >= 0:
            params["before"] = before
        params["limit"] = HISTORY_TRADES_LIMIT
        return Page(self._history_url(HISTORY_TRADES_PATH, **params), 1, after, "id")

    def _history_trades_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """Rows ``{"instId","side","sz","px","tradeId","ts"}`` (one per match, newest first) -> trades through the
        live ``trades`` mapping (a row has the fields of a push without ``count``)."""
        rows = self._history_data(body)
        out = Output()
        self._trades(self.feed_key, None, {"instId": inst.exchange_symbol}, rows, received_at, out)
        result = PageResult(out.records, None, out.events)
        if not rows:
            return result
        oldest_id = min(int(r["tradeId"]) for r in rows)
        oldest_ts = min(int(r["ts"]) for r in rows)
        if window.by_id:
            if oldest_id > int(window.first_id or 0):
                result.next = self._trades_page(inst, oldest_id, int(window.first_id or 0) - 1)
        elif oldest_ts > window.after_ms:
            result.next = self._trades_page(inst, oldest_id, None)
        return result

    def _history_funding_first(self, window: Window, inst: Instrument) -> Page:
        return self._funding_page(window, inst, window.before_ms)

    def _funding_page(self, window: Window, inst: Instrument, after: int) -> Page:
        """``after`` = older than a fundingTime, ``before`` = newer than one (both exclusive): the window's inside."""
        url = self._history_url(
            FUNDING_HISTORY_PATH, instId=inst.exchange_symbol, after=after, before=window.after_ms,
            limit=FUNDING_HISTORY_LIMIT,
        )
        return Page(url, 1, after, "time")

    def _history_funding_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """Rows ``{"fundingRate","realizedRate","fundingTime","instId",...}`` newest first -> the SETTLED rate
        (``realizedRate``, else ``fundingRate``) at each funding time: ``timestamp`` = ``next_funding_time`` =
        ``fundingTime`` (live ``funding-rate`` pushes carry the current period's rate and its coming settlement
        ``fundingTime``, later than their ``ts``)."""
        rows = self._history_data(body)
        recs = [
            FundingRate(
                exchange=self.market_id,
                market_type=self.market_type,
                symbol=inst.symbol,
                exchange_symbol=inst.exchange_symbol,
                timestamp=int(r["fundingTime"]),
                received_at=received_at,
                funding_rate=r.get("realizedRate") or r["fundingRate"],
                next_funding_time=int(r["fundingTime"]),
            )
            for r in rows
        ]
        nxt = None
        if len(rows) >= FUNDING_HISTORY_LIMIT:
            nxt = self._funding_page(window, inst, min(int(r["fundingTime"]) for r in rows))
        return PageResult(recs, nxt)

    def _history_rubik_first(self, window: Window, inst: Instrument) -> Page:
        return self._rubik_page(window, inst, window.before_ms)

    def _rubik_page(self, window: Window, inst: Instrument, end: int) -> Page:
        """Rubik statistics: ``begin`` = newer than, ``end`` = older than a ts (exclusive), newest first."""
        hist = next(h for h in OKX_HISTORIES if h.data_type == window.data_type)
        if window.data_type == "open_interest":
            period = OI_HISTORY_PERIOD
        else:
            period = RUBIK_PERIOD.get(self.market.lsr_period, self.market.lsr_period)
        url = self._history_url(
            hist.path, instId=inst.exchange_symbol, period=period, begin=window.after_ms, end=end, limit=RUBIK_LIMIT
        )
        return Page(url, 1, end, "time")

    def _rubik_next(self, window: Window, inst: Instrument, stamps: list[int]) -> Page | None:
        if len(stamps) < RUBIK_LIMIT or min(stamps) <= window.after_ms + 1:
            return None
        return self._rubik_page(window, inst, min(stamps))

    def _history_oi_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """Rows ``[ts, oi, oiCcy, oiUsd]`` (contracts, coin, USD) through the live ``open-interest`` mapping."""
        rows = self._history_data(body)
        data = [{"ts": r[0], "oi": r[1], "oiCcy": r[2], "oiUsd": r[3]} for r in rows]
        out = Output()
        self._open_interest(self.feed_key, None, {"instId": inst.exchange_symbol}, data, received_at, out)
        return PageResult(out.records, self._rubik_next(window, inst, [int(r[0]) for r in rows]), out.events)

    def _history_ratio_page(
        self, window: Window, inst: Instrument, page: Page, body: bytes, received_at: int
    ) -> PageResult:
        """The long/short ratio series with ``begin``/``end``: the poll's own mapping (``_ratios``), live identities."""
        poll = RestPoll(key="", data_type=window.data_type, url=page.url, period_s=0, symbol=inst.exchange_symbol)
        out = Output()
        self._ratios(poll, inst, body, received_at, out)
        stamps = [int(r[0]) for r in self._history_data(body)]
        return PageResult(out.records, self._rubik_next(window, inst, stamps) if stamps else None, out.events)


ADAPTER = OkxAdapter

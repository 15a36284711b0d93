"""Synthetic market state: random-walk order books and trades (pure, no I/O, seeded).

Prices and sizes are integers in units of the instrument's tick/lot decimals and become
strings only at the edge (`Instrument.px` / `Instrument.qty`), so every string the venue
modules send is exactly the string a book checksum and the REST snapshots use.
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

BASE_PRICES = {"BTC": 65000.0, "ETH": 3200.0, "SOL": 150.0, "BNB": 600.0, "XRP": 0.6, "DOGE": 0.15}


def base_price(base_asset: str) -> float:
    return BASE_PRICES.get(base_asset.upper(), 10.0)


def units(text: str) -> tuple[int, int]:
    """('0.0100', ...) -> (decimals, step in units of 10^-decimals): (2, 1); '0.5' -> (1, 5)."""
    value = Decimal(text).normalize()
    exponent = value.as_tuple().exponent
    decimals = max(0, -int(exponent))
    return decimals, int(value.scaleb(decimals))


def fmt_fixed(value: int, decimals: int) -> str:
    """Integer in units of 10^-decimals -> fixed-point string (12345, 2 -> '123.45')."""
    if decimals == 0:
        return str(value)
    sign = "-" if value < 0 else ""
    digits = str(abs(value)).rjust(decimals + 1, "0")
    return f"{sign}{digits[:-decimals]}.{digits[-decimals:]}"


def fmt_trim(value: int, decimals: int) -> str:
    """Like fmt_fixed without trailing zeros ('30238.8', '5')."""
    text = fmt_fixed(value, decimals)
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


@dataclass
class Instrument:
    """How one venue symbol prices and sizes, plus its display rules."""

    symbol: str  # normalized BASE-QUOTE
    venue_symbol: str  # the venue's own name of the instrument
    price_dec: int
    tick: int
    qty_dec: int
    lot: int
    price_out_dec: int | None = None  # fixed decimals on the wire; None = trimmed (fmt_trim)
    qty_out_dec: int | None = None
    ct_val: str = ""  # contracts (swaps): base units per contract
    _px_cache: dict[int, str] = field(default_factory=dict, repr=False)
    _qty_cache: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def size_step(self) -> int:
        """Synthetic sizes are multiples of this: about 0.001 base units, at least one lot."""
        step = 10 ** (self.qty_dec - 3) if self.qty_dec > 3 else 1
        return max(self.lot, step - step % self.lot)

    @property
    def base(self) -> str:
        return self.symbol.split("-")[0]

    def px(self, value: int) -> str:
        cached = self._px_cache.get(value)
        if cached is None:
            cached = self._fmt(value, self.price_dec, self.price_out_dec)
            if len(self._px_cache) < 200_000:
                self._px_cache[value] = cached
        return cached

    def qty(self, value: int) -> str:
        cached = self._qty_cache.get(value)
        if cached is None:
            cached = self._fmt(value, self.qty_dec, self.qty_out_dec)
            if len(self._qty_cache) < 200_000:
                self._qty_cache[value] = cached
        return cached

    @staticmethod
    def _fmt(value: int, dec: int, out: int | None) -> str:
        if out is None:
            return fmt_trim(value, dec)
        if out >= dec:
            return fmt_fixed(value * 10 ** (out - dec), out)
        return fmt_fixed(value // 10 ** (dec - out), out)

    def price_units(self, price: float) -> int:
        raw: int = round(price * 10**self.price_dec)
        return max(self.tick, raw - raw % self.tick)


class SynthBook:
    """A random-walk limit order book; `step` mutates it and returns the level changes."""

    def __init__(self, inst: Instrument, rng: random.Random, levels: int = 200, max_levels: int = 400) -> None:
        self.inst = inst
        self.rng = rng
        self.max_levels = max_levels
        self.min_levels = 30
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.bid_keys: list[int] = []  # ascending; best bid last
        self.ask_keys: list[int] = []  # ascending; best ask first
        tick = inst.tick
        mid = inst.price_units(base_price(inst.base))
        for i in range(levels):
            self._set(True, mid - (i + 1) * tick, self._size())
            self._set(False, mid + i * tick, self._size())

    def _size(self) -> int:
        return self.rng.randint(1, 60) * self.inst.size_step

    def _set(self, is_bid: bool, price: int, qty: int) -> None:
        book, keys = (self.bids, self.bid_keys) if is_bid else (self.asks, self.ask_keys)
        if qty == 0:
            if price in book:
                del book[price]
                del keys[bisect_left(keys, price)]
            return
        if price not in book:
            insort(keys, price)
        book[price] = qty

    @property
    def best_bid(self) -> int:
        return self.bid_keys[-1]

    @property
    def best_ask(self) -> int:
        return self.ask_keys[0]

    def step(self, changes: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Apply `changes` random level changes; return (bid changes, ask changes) as (price, qty)."""
        rng = self.rng
        tick = self.inst.tick
        bid_changes: dict[int, int] = {}
        ask_changes: dict[int, int] = {}
        for _ in range(changes):
            is_bid = rng.random() < 0.5
            book = self.bids if is_bid else self.asks
            keys = self.bid_keys if is_bid else self.ask_keys
            best = keys[-1] if is_bid else keys[0]
            r = rng.random()
            if r < 0.1 and self.best_ask - self.best_bid > tick:
                price = best + tick if is_bid else best - tick  # improve inside the spread
            elif r < 0.2 and len(book) > self.min_levels:
                price = best  # take out the top level: the price walks
            else:
                distance = min(int(rng.expovariate(0.08)), self.max_levels)
                price = best - distance * tick if is_bid else best + distance * tick
            if price <= tick:
                continue
            if price in book and (r < 0.2 or rng.random() < 0.3) and len(book) > self.min_levels:
                qty = 0
            else:
                qty = self._size()
            self._set(is_bid, price, qty)
            (bid_changes if is_bid else ask_changes)[price] = qty
            if len(book) > self.max_levels:  # trim the far end
                worst = keys[0] if is_bid else keys[-1]
                self._set(is_bid, worst, 0)
                (bid_changes if is_bid else ask_changes)[worst] = 0
        return list(bid_changes.items()), list(ask_changes.items())

    def top_bids(self, n: int) -> list[tuple[int, int]]:
        keys = self.bid_keys[-n:] if n else self.bid_keys
        return [(p, self.bids[p]) for p in reversed(keys)]

    def top_asks(self, n: int) -> list[tuple[int, int]]:
        keys = self.ask_keys[:n] if n else self.ask_keys
        return [(p, self.asks[p]) for p in keys]

    def mid(self) -> float:
        scale: int = 10**self.inst.price_dec
        return (self.best_bid + self.best_ask) / 2 / scale


Changes = list[tuple[int, int]]


def apply_changes(side: dict[int, int], changes: Changes) -> None:
    for price, qty in changes:
        if qty:
            side[price] = qty
        else:
            side.pop(price, None)


@dataclass
class BookState:
    """A past state of a book: price -> size per side, as of update `seq` (event time `ts`)."""

    seq: int
    ts: int
    bids: dict[int, int]
    asks: dict[int, int]

    def top_bids(self, n: int) -> Changes:
        return [(p, self.bids[p]) for p in sorted(self.bids, reverse=True)[:n]]

    def top_asks(self, n: int) -> Changes:
        return [(p, self.asks[p]) for p in sorted(self.asks)[:n]]


class BookHistory:
    """The last `depth` updates of a book, so any state among them can be rebuilt exactly.

    Holds a base state (the one before the oldest kept update) and the updates after it;
    an update falling out of the window is folded into the base.
    """

    def __init__(self, book: SynthBook, seq: int, ts: int, depth: int = 256) -> None:
        self.base = BookState(seq, ts, dict(book.bids), dict(book.asks))
        self.updates: deque[tuple[int, int, Changes, Changes]] = deque()
        self.depth = depth

    def record(self, seq: int, ts: int, bids: Changes, asks: Changes) -> None:
        self.updates.append((seq, ts, bids, asks))
        if len(self.updates) > self.depth:
            old_seq, old_ts, old_bids, old_asks = self.updates.popleft()
            apply_changes(self.base.bids, old_bids)
            apply_changes(self.base.asks, old_asks)
            self.base.seq, self.base.ts = old_seq, old_ts

    def seqs(self) -> list[int]:
        """The sequence ids of every state that can be rebuilt, oldest first."""
        return [self.base.seq, *(u[0] for u in self.updates)]

    def state_at(self, seq: int) -> BookState | None:
        """The book as of the last update with sequence id <= seq; None if that is too old."""
        base = self.base
        if seq < base.seq:
            return None
        state = BookState(base.seq, base.ts, dict(base.bids), dict(base.asks))
        for upd_seq, ts, bids, asks in self.updates:
            if upd_seq > seq:
                break
            apply_changes(state.bids, bids)
            apply_changes(state.asks, asks)
            state.seq, state.ts = upd_seq, ts
        return state


def rng_for(seed: int, *parts: str) -> random.Random:
    """A deterministic RNG per (seed, venue, symbol, purpose)."""
    return random.Random(":".join((str(seed), *parts)))


@dataclass
class TradeTape:
    """Trade ids and same-millisecond bursts for one symbol.

    Ids start from the emulator clock (microseconds since the epoch; the aggregate id a tenth of that), so a
    restarted emulator continues above every id it sent before, as a venue does: tables keyed by trade id
    would otherwise take the new run's trades as replacements of the old run's (a demo restarted three
    times lost 57% of its stored trades that way).
    """

    rng: random.Random
    next_id: int
    next_agg_id: int

    @classmethod
    def starting_at(cls, rng: random.Random, now_ms: int) -> TradeTape:
        return cls(rng, next_id=now_ms * 1000, next_agg_id=now_ms * 100)

    def burst_sizes(self, n: int) -> list[int]:
        """Split n trades into groups that share one timestamp (some groups > 1)."""
        sizes: list[int] = []
        left = n
        while left > 0:
            size = self.rng.randint(2, 4) if self.rng.random() < 0.3 else 1
            size = min(size, left)
            sizes.append(size)
            left -= size
        return sizes

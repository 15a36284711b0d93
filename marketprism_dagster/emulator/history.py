"""What a venue remembers of its own trades: the store behind the trade-history endpoints.

Every trade the synth streams generate is appended here *before* a fault may drop its frame,
so a history request answers exactly the ids, prices, sizes, sides and times the stream sent
(or would have sent). One :class:`TradeLog` per venue symbol, oldest first, bounded to the
newest ``cap`` trades (``EmulatorConfig.trade_history``, default 200,000 per symbol: the
emulator's stand-in for the venues' retention; each venue module states its venue's).

Columns are ``array('q')`` (8 bytes a value) so a full log costs about 10 MB; ids and times
are non-decreasing, so lookups are bisections.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoggedTrade:
    """One remembered trade; prices and sizes in the instrument's integer units."""

    trade_id: int
    ts: int
    price: int
    qty: int
    is_buy: bool  # taker side
    first_id: int  # an aggregate's first and last raw trade id (a single trade: its own id twice)
    last_id: int


class TradeLog:
    """The trades of one symbol, oldest first, at most ``cap`` (older ones are forgotten)."""

    def __init__(self, cap: int = 200_000) -> None:
        self.cap = max(1, cap)
        self.trim_at = self.cap + self.cap // 4
        self.ids = array("q")
        self.ts = array("q")
        self.px = array("q")
        self.qty = array("q")
        self.first = array("q")
        self.last = array("q")
        self.buy = bytearray()

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, trade_id: int, ts: int, price: int, qty: int, is_buy: bool,
            first_id: int | None = None, last_id: int | None = None) -> None:
        ids = self.ids
        ids.append(trade_id)
        self.ts.append(ts)
        self.px.append(price)
        self.qty.append(qty)
        self.first.append(trade_id if first_id is None else first_id)
        self.last.append(trade_id if last_id is None else last_id)
        self.buy.append(is_buy)
        if len(ids) > self.trim_at:  # trim in batches: amortized O(1)
            cut = len(self.ids) - self.cap
            for column in (self.ids, self.ts, self.px, self.qty, self.first, self.last):
                del column[:cut]
            del self.buy[:cut]

    def row(self, i: int) -> LoggedTrade:
        return LoggedTrade(self.ids[i], self.ts[i], self.px[i], self.qty[i], bool(self.buy[i]),
                           self.first[i], self.last[i])

    def rows(self, lo: int, hi: int) -> list[LoggedTrade]:
        return [self.row(i) for i in range(max(0, lo), min(hi, len(self.ids)))]

    @property
    def oldest_id(self) -> int | None:
        return self.ids[0] if self.ids else None

    # ---- index bounds (half-open [lo, hi) positions) ------------------------------------
    def from_id(self, trade_id: int) -> int:
        """Position of the first trade with id >= trade_id."""
        return bisect_left(self.ids, trade_id)

    def after_id(self, trade_id: int) -> int:
        """Position of the first trade with id > trade_id."""
        return bisect_right(self.ids, trade_id)

    def from_time(self, ts: int) -> int:
        """Position of the first trade with time >= ts."""
        return bisect_left(self.ts, ts)

    def after_time(self, ts: int) -> int:
        """Position of the first trade with time > ts."""
        return bisect_right(self.ts, ts)

    def ascending(self, lo: int, hi: int, limit: int, newest: bool = False) -> list[LoggedTrade]:
        """At most ``limit`` trades of [lo, hi), oldest first: the first ones, or the newest ones."""
        hi = min(hi, len(self.ids))
        lo = max(0, lo)
        if hi <= lo:
            return []
        if newest:
            return self.rows(max(lo, hi - limit), hi)
        return self.rows(lo, min(hi, lo + limit))

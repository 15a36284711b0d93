"""What a venue declares about its history endpoints, and the pure types a refill walks them with.

A venue adapter lists ``histories``: one ``History`` per data type it can refill from the venue's
history (the aggregate / history trades, funding-rate history, open-interest statistics, the two
long/short ratio series, DVOL candles). Each names two adapter methods:

* ``first`` ``(window, inst) -> Page``: the first request for a ``Window`` of missing data;
* ``page`` ``(window, inst, page, body, received_at) -> PageResult``: the records of one answer (built
  by the SAME mapping the live path uses, so they carry the live identities) and the next request,
  None when the window is covered.

Everything here is pure (no sockets, no clock): ``collector/refill.py`` does the I/O, shares the live
collector's REST rate budget and publishes what ``Window.wants`` keeps.

Which records a refill keeps (``Window.wants``): a refill never stores a point that could stand
beside, or replace, a live row. The window is the gap, exclusive at both ends: ids strictly between
the last id seen and the first id seen after the gap (``first_id`` .. ``last_id`` inclusive are the
missing ones), or times strictly between the last point before and the first point after it (no
live point exists in between, so a history point there cannot share a live identity). OKX's
``trades`` channel aggregates ``count`` matches into one push whose ``tradeId`` is the last match
id; its history answers single matches. A gap's ids are those strictly between two pushes, so a
refilled match never carries the ``tradeId`` of a push the collector stored.

Which fetched records the store already holds, when the live rows aggregate (``History.live_aggregates``,
OKX trades; ``held_matches``): a time-range refill (``marketprism backfill``, an aged-out hour) fetches every
match of the range, and a match inside a stored push but its last is not in the table under its own id.
The hot row keeps no ``count``, so the push's span is derived from the history itself: a push is one taker
order at one price (the venue's rule), so its matches are the consecutive ids ending at its ``tradeId`` with
its price and taker side, and their sizes sum to its size. Sizes are positive, so the running sum from
``tradeId`` downwards meets the push's size at exactly one length: that is ``count``. A fetched match is held
when its id is stored, or when the nearest stored id above it is a push whose span reaches down to it; it is
missing otherwise (it lies in a hole before that push's first match). A stored push whose span the fetched
matches do not explain (its own match absent, another price or side on the way down, the sum stepping over
its size) leaves the matches below it undecided: never published, counted (``Held.unresolved``). Aggregating
the fetched matches into pushes first instead is not reproducible: two taker orders at one price, side and
millisecond are two pushes the history cannot tell apart.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

TRADE = "trade"


@dataclass(frozen=True, slots=True)
class Window:
    """Missing data of one (market, symbol, data type): the gap, exclusive at both ends."""

    data_type: str
    symbol: str  # exchange symbol, as the adapter's instruments are keyed
    after_ms: int  # the last point seen before the gap (exclusive)
    before_ms: int  # the first point seen after it (exclusive)
    first_id: int | None = None  # the first and last missing venue id (inclusive) where the venue numbers its data
    last_id: int | None = None

    @property
    def by_id(self) -> bool:
        return self.first_id is not None and self.last_id is not None

    @property
    def missing_ids(self) -> int | None:
        """How many venue ids the window misses (None: the window is not counted by id)."""
        if self.by_id and self.data_type == TRADE:
            assert self.first_id is not None and self.last_id is not None
            return self.last_id - self.first_id + 1
        return None

    def wants(self, record: Any) -> bool:
        """Does ``record`` fill this window (and stand beside no live row)?"""
        if self.by_id and self.data_type == TRADE:
            try:
                trade_id = int(record.trade_id)
            except (TypeError, ValueError):
                return False
            assert self.first_id is not None and self.last_id is not None
            return self.first_id <= trade_id <= self.last_id
        return self.after_ms < int(record.timestamp) < self.before_ms


@dataclass(frozen=True, slots=True)
class Page:
    """One history request: its URL, the venue weight it costs, and where the walk stands."""

    url: str
    weight: int = 1
    cursor: int = 0  # venue-specific: the next id or time the walk asks for
    mode: str = ""  # venue-specific: how the walk pages ("id", "time", ...)


@dataclass(slots=True)
class PageResult:
    records: list[Any] = field(default_factory=list)
    next: Page | None = None  # None: the window is covered (or the venue has nothing older/newer)
    events: dict[str, int] = field(default_factory=dict)  # bad input counted by the adapter's error log


@dataclass(frozen=True, slots=True)
class History:
    """A history endpoint that refills one data type."""

    data_type: str
    path: str
    first: str  # adapter method: (window, inst) -> Page
    page: str  # adapter method: (window, inst, page, body, received_at) -> PageResult
    market_types: tuple[str, ...]
    retention_ms: int | None = None  # how far back the venue serves it (None: unstated)
    min_interval_s: float = 0.0  # pause between two pages: the endpoint's own request limit
    by_id: bool = False  # the venue numbers this data: a window with ids is walked by id
    # the live channel stores one row per push of consecutive history records, its id the last one's (OKX
    # trades): a fetched record a stored push covers is held (``held_matches``), not only an equal identity
    live_aggregates: bool = False
    note: str = ""  # how refilled rows relate to live ones (docs/venues.md says more)


@dataclass(frozen=True, slots=True)
class LiveTrade:
    """A stored trade row as ``held_matches`` reads it (one push of the live channel, or one refilled match)."""

    trade_id: int
    quantity: Decimal
    price: Decimal
    side: str


@dataclass(slots=True)
class Held:
    """What ``held_matches`` decided about the fetched matches of one symbol."""

    held: set[int] = field(default_factory=set)  # match ids the store holds: stored alone or inside a stored push
    unresolved: set[int] = field(default_factory=set)  # below a stored push whose span the matches do not explain
    pushes: list[int] = field(default_factory=list)  # those pushes' ids


def numbered_id(value: Any) -> int | None:
    """A venue id as a number (None: not a decimal number, so it cannot be placed in a push's span)."""
    text = str(value)
    return int(text) if text.isdecimal() else None


def held_matches(matches: Sequence[Any], live: Mapping[int, LiveTrade]) -> Held:
    """Which fetched single ``matches`` (records with ``trade_id``, ``quantity``, ``price``, ``side``) the stored
    ``live`` rows (by id; the same symbol, the matches' time range) hold. See the module docstring for the rule.
    A match whose id is not a decimal number is neither held nor unresolved here (its identity decides)."""
    by_id: dict[int, Any] = {}
    for m in matches:
        i = numbered_id(m.trade_id)
        if i is not None:
            by_id[i] = m
    stored = sorted(live)
    spans: dict[int, int | None] = {}  # push id -> its first match id (None: not explained)
    out = Held()
    for i in sorted(by_id):
        if i in live:
            out.held.add(i)
            continue
        at = bisect_right(stored, i)
        if at == len(stored):
            continue  # newer than every stored row: missing
        push = stored[at]
        if push not in spans:
            spans[push] = push_start(live[push], by_id)
            if spans[push] is None:
                out.pushes.append(push)
        first = spans[push]
        if first is None:
            out.unresolved.add(i)
        elif first <= i:
            out.held.add(i)
    return out


def push_start(push: LiveTrade, matches: Mapping[int, Any]) -> int | None:
    """The first match id of ``push``: walking down from its id over matches of its price and side until their
    sizes sum to its size (exactly one length can: sizes are positive); None when no run does."""
    total = Decimal(0)
    k = push.trade_id
    try:
        while (m := matches.get(k)) is not None:
            if Decimal(m.price) != push.price or m.side != push.side:
                return None
            total += Decimal(m.quantity)
            if total == push.quantity:
                return k
            if total > push.quantity:
                return None
            k -= 1
    except (InvalidOperation, TypeError, ValueError):
        return None
    return None


def history_for(adapter: Any, data_type: str) -> History | None:
    """The adapter's history of ``data_type`` for its market type (None: the venue keeps none)."""
    for h in getattr(type(adapter), "histories", ()):
        if h.data_type == data_type and adapter.market_type in h.market_types:
            return h  # type: ignore[no-any-return]
    return None

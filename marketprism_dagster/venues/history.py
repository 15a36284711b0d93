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
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    note: str = ""  # how refilled rows relate to live ones (docs/venues.md says more)


def history_for(adapter: Any, data_type: str) -> History | None:
    """The adapter's history of ``data_type`` for its market type (None: the venue keeps none)."""
    for h in getattr(type(adapter), "histories", ()):
        if h.data_type == data_type and adapter.market_type in h.market_types:
            return h  # type: ignore[no-any-return]
    return None

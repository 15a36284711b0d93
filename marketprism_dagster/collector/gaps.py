"""Source gaps: where the collector was blind to a venue, as ``source_gap`` records (DESIGN 6b).

Pure: no I/O, no clock (every call is handed ``now``, local ms). The runtime feeds it and publishes
what it returns like any other record; ``collector/gapfile.py`` keeps its state across restarts.

Causes (``records.GAP_CAUSES``) and what bounds each window:

* ``trade_id_jump``: per (market, symbol, data type) the venue numbers its data consecutively (the
  adapter's ``id_types``; each message covers ids ``first..last``, see docs/venues.md). A hole is the
  exact missing ids ``first_missing_id`` .. ``last_missing_id``; the window runs from the event time of
  the last id before it to the event time of the first id after it (exchange times).
* ``disconnect`` / ``downtime`` on an id series: the same row, but the hole is the first one found after
  a reconnect (``expect_jump``) or a restart (``restore``): the cause says why ids are missing. A
  reconnect or restart after which the ids continue leaves no row: nothing was missed.
* ``disconnect`` on a series without ids (funding, open interest, liquidations, ...): from the last
  message the feed received before the loss to the first it received after reconnecting (local
  receive times); books are not among them: their window is ``book_unsynced``.
* ``book_unsynced``: from the event time of the last update applied to a valid book to the event time
  of the first valid book again (``book.sync`` records these windows). Books have no history: the
  row is ``unrecoverable`` at once.
* ``poll_failed``: a REST poll that failed (or was skipped) from the last successful poll to the next
  one (local times).
* ``downtime`` on a series without ids: from the last time the previous run was alive (its saved
  state) to the first record of the series in this run, in the VENUE's clock: both local times moved
  by the venue's clock offset the previous run measured (``venue_offsets``, saved with the state), so
  the window has the time base of the records and of the history a refill compares with it; a sparse
  type (rare events) closes at the first record of its market, any type.

Reordering: ids may arrive out of order or twice (two connections overlap during a make-before-break
switch; a venue may push a late aggregate). Ids at or below the contiguous high mark are duplicates
and ignored; ids above a hole are held, and the hole is declared only when it is still open
``reorder_ms`` (default 2 s, local receive time) after the first id above it arrived, or when more
than ``max_pending`` id ranges wait above holes. A hole filled within the window leaves no row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from marketprism_dagster.records import RECORD_TYPES, SourceGap

REORDER_MS: Final = 2_000
MAX_PENDING: Final = 4_096
OPEN: Final = "open"
REPAIRED: Final = "repaired"
UNRECOVERABLE: Final = "unrecoverable"
ID_JUMP: Final = "trade_id_jump"
DISCONNECT: Final = "disconnect"
BOOK_UNSYNCED: Final = "book_unsynced"
POLL_FAILED: Final = "poll_failed"
DOWNTIME: Final = "downtime"
AUTO_CAUSES: Final = frozenset({ID_JUMP, POLL_FAILED, DISCONNECT, DOWNTIME})  # refilled from history unasked
_NONE: Final[tuple[Any, ...]] = ()  # no gap (the common answer, shared)


@dataclass(frozen=True, slots=True)
class Series:
    """One venue series: the common columns of every gap row about it."""

    exchange: str  # market id
    market_type: str
    symbol: str
    exchange_symbol: str


def venue_offsets(recent: Mapping[tuple[str, str], Iterable[Any]], streamed: Mapping[str, set[str]]) -> dict[str, int]:
    """Per market, how far the venue's clock runs ahead of ours (ms; negative: behind), from its recent records
    (``recent``: (data type, market) -> records) of the types it streams (``streamed``: market -> data types; a
    polled statistic's time is its period's start, not the venue's now). Per type the largest (event time - receive
    time), the venue's clock less the quickest delivery; the market's offset is the upper median of those (a quiet
    book, whose snapshot keeps the time of its last update, or one record with a wrong time does not move it). A
    market without such records has none (its windows stay in local time)."""
    per_market: dict[str, list[int]] = {}
    for (data_type, market), recs in recent.items():
        if data_type in streamed.get(market, ()):
            ahead = [r.timestamp - r.received_at for r in recs]
            if ahead:
                per_market.setdefault(market, []).append(max(ahead))
    return {market: sorted(v)[len(v) // 2] for market, v in per_market.items()}


def _state_for(data_type: str) -> str:
    """A book cannot be refilled from history: its gap is unrecoverable as soon as it is known."""
    return UNRECOVERABLE if RECORD_TYPES[data_type].is_book else OPEN


def gap_record(
    series: Series,
    data_type: str,
    cause: str,
    start_ms: int,
    end_ms: int,
    now: int,
    *,
    first_id: int | None = None,
    last_id: int | None = None,
    detail: str = "",
) -> Any:
    """One ``source_gap`` row (state ``open``, or ``unrecoverable`` for a book)."""
    return SourceGap(
        exchange=series.exchange,
        market_type=series.market_type,
        symbol=series.symbol,
        exchange_symbol=series.exchange_symbol,
        timestamp=start_ms,
        received_at=now,
        gap_data_type=data_type,
        cause=cause,
        end_time=max(end_ms, start_ms),
        first_missing_id="" if first_id is None else str(first_id),
        last_missing_id="" if last_id is None else str(last_id),
        state=_state_for(data_type),
        recovered=0,
        detail=detail,
    )


@dataclass(slots=True)
class _Ids:
    """One id series: ``next`` is the first id not yet seen contiguously; ``last_ts`` the event time of
    ``next - 1``; ``pending`` the ranges seen above a hole, sorted: (first, last, event ms, arrived ms)."""

    series: Series
    next: int
    last_ts: int
    cause: str = ID_JUMP
    pending: list[tuple[int, int, int, int]] = field(default_factory=list)


@dataclass(slots=True)
class _Window:
    series: Series
    data_type: str
    start_ms: int


class GapTracker:
    def __init__(self, reorder_ms: int = REORDER_MS, max_pending: int = MAX_PENDING) -> None:
        self.reorder_ms = reorder_ms
        self.max_pending = max_pending
        self._ids: dict[tuple[str, str, str], _Ids] = {}
        self._holding: set[tuple[str, str, str]] = set()  # id series with pending ranges
        self.duplicates = 0  # ids at or below a series' contiguous mark (overlaps, repeats)
        # feed key -> windows of a lost connection, closed by the feed's first message after reconnecting
        self._feeds: dict[str, list[_Window]] = {}
        self._polls: dict[str, _Window] = {}  # poll key -> the window its failures opened
        self._last_ok: dict[str, int] = {}  # poll key -> the last successful poll (local ms)
        self._downtime: dict[tuple[str, str, str], tuple[_Window, bool]] = {}  # (exchange, symbol, type)
        self.stopped_at: int | None = None  # the previous run's last sign of life (restore)
        self._offsets: dict[str, int] = {}  # market -> the venue's clock offset the previous run measured (restore)

    # ------------------------------------------------------------ id series

    def ids(self, series: Series, data_type: str, first: int, last: int, ts: int, now: int) -> Sequence[Any]:
        """Ids ``first..last`` of ``series`` (event time ``ts``) arrived at ``now``: the gaps they prove."""
        key = (series.exchange, series.symbol, data_type)
        st = self._ids.get(key)
        if st is not None and first == st.next and not st.pending:  # the common case: the next ids in order
            st.next = last + 1
            st.last_ts = ts
            st.cause = ID_JUMP
            return _NONE
        return self._ids_other(key, st, series, data_type, first, last, ts, now)

    def _ids_other(
        self,
        key: tuple[str, str, str],
        st: _Ids | None,
        series: Series,
        data_type: str,
        first: int,
        last: int,
        ts: int,
        now: int,
    ) -> list[Any]:
        if st is None:
            self._ids[key] = _Ids(series, last + 1, ts)
            return []
        nxt = st.next
        if last < nxt:
            self.duplicates += 1
            return []
        if first <= nxt:  # overlapping a range already seen (e.g. a repeated aggregate): extends the mark
            st.next = last + 1
            st.last_ts = ts
            if not st.pending:
                st.cause = ID_JUMP
                return []
        else:
            _insert(st.pending, (first, last, ts, now))
            self._holding.add(key)
        return self._settle(key, st, data_type, now)

    def expect_jump(self, exchange: str, symbol: str, data_type: str, cause: str) -> None:
        """The next hole of this id series (if any) is explained by ``cause`` (disconnect, downtime)."""
        st = self._ids.get((exchange, symbol, data_type))
        if st is not None:
            st.cause = cause

    @property
    def holding(self) -> int:
        """How many id series hold ids above a hole (a gap row is due unless the missing ids come late)."""
        return len(self._holding)

    def settle(self, now: int) -> list[Any]:
        """Declare the holes that stayed open ``reorder_ms`` (call on a timer)."""
        out: list[Any] = []
        for key in list(self._holding):
            out += self._settle(key, self._ids[key], key[2], now)
        return out

    def flush(self, now: int) -> list[Any]:
        """Declare every hole still waiting (the process stops: the ids did not come)."""
        out: list[Any] = []
        for key in list(self._holding):
            out += self._settle(key, self._ids[key], key[2], now, force=True)
        return out

    def _settle(self, key: tuple[str, str, str], st: _Ids, data_type: str, now: int, force: bool = False) -> list[Any]:
        out: list[Any] = []
        pending = st.pending
        while pending:
            first, last, ts, arrived = pending[0]
            if first > st.next:
                if not force and now - arrived < self.reorder_ms and len(pending) <= self.max_pending:
                    break
                out.append(self._hole(st, data_type, st.next, first - 1, ts, now))
                st.cause = ID_JUMP
            pending.pop(0)
            if last >= st.next:
                st.next = last + 1
                st.last_ts = ts
        if not pending:
            self._holding.discard(key)
        return out

    def _hole(self, st: _Ids, data_type: str, first: int, last: int, end_ts: int, now: int) -> Any:
        n = last - first + 1
        return gap_record(
            st.series,
            data_type,
            st.cause,
            st.last_ts,
            end_ts,
            now,
            first_id=first,
            last_id=last,
            detail=f"{n} {data_type} id{'s' if n > 1 else ''} missing",
        )

    # ------------------------------------------------------------ connections

    def connection_lost(self, feed_key: str, targets: list[tuple[Series, str]], last_message_ms: int) -> None:
        """A feed reconnected after a loss; its last message before it came at ``last_message_ms``. Its id
        series (``expect_jump``) and books (``book_unsynced``) are the caller's; ``targets`` are the series x
        data types without ids, each given a ``disconnect`` row at the feed's next message."""
        windows = self._feeds.setdefault(feed_key, [])
        known = {(w.series, w.data_type) for w in windows}  # a second loss before any message: keep the first
        windows += [_Window(s, t, last_message_ms) for s, t in targets if (s, t) not in known]

    @property
    def waiting_feeds(self) -> Mapping[str, object]:
        """Feeds whose next message closes disconnect windows (the runtime checks membership per message)."""
        return self._feeds

    def feed_message(self, feed_key: str, now: int) -> list[Any]:
        """The first message of ``feed_key`` after a reconnect: its disconnect windows end now."""
        windows = self._feeds.pop(feed_key, [])
        return [
            gap_record(w.series, w.data_type, DISCONNECT, w.start_ms, now, now, detail=f"{feed_key} reconnected")
            for w in windows
        ]

    # ------------------------------------------------------------ books

    def book_unsynced(self, series: Series, data_type: str, lost_ms: int, back_ms: int, now: int) -> Any:
        """A book was without a valid state from ``lost_ms`` to ``back_ms`` (exchange event times)."""
        seconds = max(0, back_ms - lost_ms) / 1000
        return gap_record(
            series, data_type, BOOK_UNSYNCED, lost_ms, back_ms, now, detail=f"{seconds:.3f} s without a valid book"
        )

    # ------------------------------------------------------------ polls

    def poll_failed(self, key: str, series: Series, data_type: str, now: int) -> None:
        """A poll failed (or was skipped): its window opens at the last successful poll (or now)."""
        if key not in self._polls:
            self._polls[key] = _Window(series, data_type, self._last_ok.get(key, now))

    def poll_ok(self, key: str, now: int) -> list[Any]:
        self._last_ok[key] = now
        w = self._polls.pop(key, None)
        if w is None:
            return []
        return [gap_record(w.series, w.data_type, POLL_FAILED, w.start_ms, now, now, detail=f"{key} failed")]

    # ------------------------------------------------------------ restarts

    def state(self, now: int, offsets: Mapping[str, int] | None = None) -> dict[str, Any]:
        """What a restart needs (JSON): the time, each id series' contiguous mark, and each market's venue clock
        offset (``venue_offsets``)."""
        return {
            "saved_at": now,
            "ids": {"|".join(key): [st.next, st.last_ts] for key, st in self._ids.items()},
            "venue_offset_ms": dict(offsets or {}),
        }

    def restore(self, saved: dict[str, Any], configured: list[tuple[Series, str, bool]]) -> None:
        """Take over the previous run's state: its id marks (the next hole after them is ``downtime``),
        and a downtime window from ``saved_at`` for every ``configured`` (series, data type, sparse) that
        is not an id series, in the venue's clock (``saved_at`` moved by the market's saved ``venue_offset_ms``).
        Malformed entries are skipped (the caller counts a file it cannot read)."""
        saved_at = saved.get("saved_at")
        if not isinstance(saved_at, int):
            return
        self.stopped_at = saved_at
        offsets = saved.get("venue_offset_ms")
        if isinstance(offsets, dict):
            self._offsets.update({str(m): v for m, v in offsets.items() if type(v) is int})
        by_key = {(s.exchange, s.symbol, t): s for s, t, _ in configured}
        ids = saved.get("ids")
        restored: set[tuple[str, str, str]] = set()
        for name, mark in (ids if isinstance(ids, dict) else {}).items():
            parts = tuple(str(name).split("|"))
            if len(parts) != 3 or parts not in by_key:
                continue
            if not (isinstance(mark, list) and len(mark) == 2 and all(isinstance(v, int) for v in mark)):
                continue
            key = (parts[0], parts[1], parts[2])
            self._ids[key] = _Ids(by_key[key], mark[0], mark[1], cause=DOWNTIME)
            restored.add(key)
        for series, data_type, sparse in configured:
            key = (series.exchange, series.symbol, data_type)
            if key not in restored:
                start = saved_at + self._offsets.get(series.exchange, 0)
                self._downtime[key] = (_Window(series, data_type, start), sparse)

    @property
    def downtime_open(self) -> bool:
        return bool(self._downtime)

    def first_record(self, exchange: str, symbol: str, data_type: str, now: int) -> list[Any]:
        """A record of this run (received at ``now``, local): closes its series' downtime window (at ``now`` in the
        venue's clock), and those of the market's sparse types. An id series restored with its mark has no window
        here: its hole after the restart (``ids``) is the downtime row, with the exact ids."""
        keys = [
            k
            for k, (_, sparse) in self._downtime.items()
            if k == (exchange, symbol, data_type) or (sparse and k[0] == exchange)
        ]
        out = []
        end = now + self._offsets.get(exchange, 0)
        for k in keys:
            w, _ = self._downtime.pop(k)
            out.append(gap_record(w.series, w.data_type, DOWNTIME, w.start_ms, end, now, detail="collector restarted"))
        return out


def _insert(pending: list[tuple[int, int, int, int]], item: tuple[int, int, int, int]) -> None:
    """Keep ``pending`` sorted by first id (it is short: a few ranges above a hole)."""
    i = len(pending)
    while i > 0 and pending[i - 1][0] > item[0]:
        i -= 1
    pending.insert(i, item)

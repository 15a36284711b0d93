"""GapTracker (pure): the gaps it emits are exactly the holes in the ids, whatever the order within its window."""

from __future__ import annotations

import random
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from marketprism_dagster.collector.gaps import REORDER_MS, GapTracker, Series
from marketprism_dagster.validation import fault

BTC = Series("binance_derivatives", "perpetual", "BTC-USDT", "BTCUSDT")
T0 = 1_780_000_000_000


def _holes(ids: list[int]) -> list[tuple[int, int]]:
    present = sorted(set(ids))
    return [(a + 1, b - 1) for a, b in pairwise(present) if b > a + 1]


def _emitted(gaps: list) -> list[tuple[int, int]]:
    return sorted((int(g.first_missing_id), int(g.last_missing_id)) for g in gaps)


id_sets = st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=200, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(id_sets)
def test_in_order_ids_with_holes_emit_exactly_the_holes(ids):
    tracker = GapTracker()
    gaps = []
    for k, i in enumerate(ids):
        gaps += tracker.ids(BTC, "trade", i, i, T0 + i, now=T0 + k)
    gaps += tracker.flush(T0 + len(ids))
    assert _emitted(gaps) == _holes(ids)
    assert all(fault(g) is None for g in gaps)
    assert {g.cause for g in gaps} <= {"trade_id_jump"}


@settings(max_examples=300, deadline=None)
@given(id_sets, st.integers(min_value=1, max_value=8), st.integers(0, 2**32), st.floats(0, 0.5))
def test_reordered_and_repeated_ids_within_the_window_emit_no_false_gap(ids, chunk, seed, dup_rate):
    """Ids shuffled within chunks (after the first) and some sent twice, all inside the reorder window."""
    rng = random.Random(seed)
    rest = ids[1:]
    order = [ids[0]]
    for c in range(0, len(rest), chunk):
        part = rest[c : c + chunk]
        rng.shuffle(part)
        order += part
    order += [i for i in ids if rng.random() < dup_rate]  # repeats (an overlapping second connection)
    tracker = GapTracker()
    gaps = []
    for k, i in enumerate(order):
        gaps += tracker.ids(BTC, "trade", i, i, T0 + i, now=T0 + k)  # 1 ms apart: inside REORDER_MS
    assert len(order) < REORDER_MS
    gaps += tracker.flush(T0 + len(order))
    assert _emitted(gaps) == _holes(ids)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=60), st.sets(st.integers(0, 59)))
def test_aggregates_of_several_ids_leave_holes_only_where_whole_aggregates_are_missing(counts, dropped):
    """OKX pushes one aggregate of ``count`` matches (ids tradeId - count + 1 .. tradeId) per message."""
    tracker = GapTracker()
    first, sent, gaps = 100, [], []
    for k, count in enumerate(counts):
        last = first + count - 1
        if k == 0 or k not in dropped:
            sent += range(first, last + 1)
            gaps += tracker.ids(BTC, "trade", first, last, T0 + k, now=T0 + k)
        first = last + 1
    gaps += tracker.flush(T0 + 10_000)
    assert _emitted(gaps) == _holes(sent)


def test_a_hole_is_declared_once_the_window_has_passed_with_its_bounding_times():
    tracker = GapTracker(reorder_ms=1000)
    assert not tracker.ids(BTC, "trade", 10, 10, T0, now=T0)
    assert not tracker.ids(BTC, "trade", 15, 15, T0 + 40, now=T0 + 5)  # 11..14 may still come
    assert tracker.settle(T0 + 500) == []
    [gap] = tracker.settle(T0 + 1005)
    assert (gap.first_missing_id, gap.last_missing_id, gap.timestamp, gap.end_time) == ("11", "14", T0, T0 + 40)
    assert (gap.cause, gap.state, gap.gap_data_type, gap.exchange_symbol) == (
        "trade_id_jump",
        "open",
        "trade",
        "BTCUSDT",
    )
    assert not tracker.ids(BTC, "trade", 12, 12, T0 + 1, now=T0 + 1100)  # too late: a duplicate now
    assert tracker.settle(T0 + 5000) == []


def test_the_first_hole_after_a_reconnect_or_restart_names_that_cause():
    tracker = GapTracker(reorder_ms=0)
    tracker.ids(BTC, "trade", 1, 1, T0, now=T0)
    tracker.expect_jump("binance_derivatives", "BTC-USDT", "trade", "disconnect")
    [gap] = tracker.ids(BTC, "trade", 7, 7, T0 + 9, now=T0 + 9)
    assert (gap.cause, gap.first_missing_id, gap.last_missing_id) == ("disconnect", "2", "6")
    [later] = tracker.ids(BTC, "trade", 9, 9, T0 + 10, now=T0 + 10)
    assert later.cause == "trade_id_jump"
    # a reconnect after which the ids continue leaves nothing, and the next hole is an id jump again
    tracker.expect_jump("binance_derivatives", "BTC-USDT", "trade", "disconnect")
    assert not tracker.ids(BTC, "trade", 10, 10, T0 + 11, now=T0 + 11)
    [jump] = tracker.ids(BTC, "trade", 12, 12, T0 + 12, now=T0 + 12)
    assert jump.cause == "trade_id_jump"

    restarted = GapTracker(reorder_ms=0)
    restarted.restore(tracker.state(T0 + 20), [(BTC, "trade", False)])
    [down] = restarted.ids(BTC, "trade", 20, 20, T0 + 99, now=T0 + 100)
    assert (down.cause, down.first_missing_id, down.last_missing_id, down.timestamp) == (
        "downtime",
        "13",
        "19",
        T0 + 12,
    )
    assert not restarted.downtime_open


def test_disconnect_windows_close_at_the_feeds_first_message_and_books_are_unrecoverable():
    tracker = GapTracker()
    tracker.connection_lost("m/market", [(BTC, "funding_rate"), (BTC, "liquidation")], T0)
    tracker.connection_lost("m/market", [(BTC, "funding_rate")], T0 + 50)  # lost again before any message
    assert "m/market" in tracker.waiting_feeds
    rows = tracker.feed_message("m/market", T0 + 3000)
    assert [(r.gap_data_type, r.cause, r.timestamp, r.end_time, r.state) for r in rows] == [
        ("funding_rate", "disconnect", T0, T0 + 3000, "open"),
        ("liquidation", "disconnect", T0, T0 + 3000, "open"),
    ]
    assert tracker.feed_message("m/market", T0 + 4000) == [] and "m/market" not in tracker.waiting_feeds
    book = tracker.book_unsynced(BTC, "orderbook", T0, T0 + 1500, now=T0 + 2000)
    assert (book.cause, book.state, book.detail) == ("book_unsynced", "unrecoverable", "1.500 s without a valid book")
    assert fault(book) is None


def test_a_failed_poll_opens_at_the_last_success_and_closes_at_the_next():
    tracker = GapTracker()
    assert tracker.poll_ok("m/open_interest/BTCUSDT", T0) == []
    tracker.poll_failed("m/open_interest/BTCUSDT", BTC, "open_interest", T0 + 60_000)
    tracker.poll_failed("m/open_interest/BTCUSDT", BTC, "open_interest", T0 + 120_000)
    [gap] = tracker.poll_ok("m/open_interest/BTCUSDT", T0 + 180_000)
    assert (gap.cause, gap.timestamp, gap.end_time, gap.gap_data_type) == (
        "poll_failed",
        T0,
        T0 + 180_000,
        "open_interest",
    )


def test_downtime_windows_close_at_each_series_first_record_and_sparse_types_at_the_markets_first():
    tracker = GapTracker()
    eth = Series("binance_derivatives", "perpetual", "ETH-USDT", "ETHUSDT")
    configured = [(BTC, "funding_rate", False), (eth, "funding_rate", False), (BTC, "liquidation", True)]
    tracker.restore({"saved_at": T0, "ids": {"binance_derivatives|BTC-USDT|bogus": "x"}}, configured)
    [funding, liquidation] = tracker.first_record("binance_derivatives", "BTC-USDT", "funding_rate", T0 + 120_000)
    assert (funding.cause, funding.timestamp, funding.end_time) == ("downtime", T0, T0 + 120_000)
    assert (liquidation.gap_data_type, liquidation.symbol) == ("liquidation", "BTC-USDT")
    assert tracker.first_record("binance_derivatives", "BTC-USDT", "funding_rate", T0 + 121_000) == []
    assert tracker.downtime_open
    [eth_row] = tracker.first_record("binance_derivatives", "ETH-USDT", "funding_rate", T0 + 122_000)
    assert eth_row.symbol == "ETH-USDT" and not tracker.downtime_open


def test_an_unreadable_saved_state_restores_nothing():
    tracker = GapTracker()
    tracker.restore({"saved_at": "yesterday"}, [(BTC, "funding_rate", False)])
    assert tracker.stopped_at is None and not tracker.downtime_open

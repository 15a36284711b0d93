"""Downtime windows of series without ids are in the venue's clock (collector/gaps.py ``venue_offsets``): the refill
compares them with the venue's own times (history points), so a venue whose clock differs from ours must not shift
the window off the points it missed."""

from __future__ import annotations

from marketprism_dagster.collector.gaps import GapTracker, Series, venue_offsets
from marketprism_dagster.records import FundingRate, LsrTopPosition, Trade

BTC = Series("binance_derivatives", "perpetual", "BTC-USDT", "BTCUSDT")
T0 = 1_780_000_000_000  # local ms
AHEAD = 3 * 3_600_000 + 17  # the venue's clock runs this far ahead of ours


def _trade(ts: int, received_at: int) -> Trade:
    return Trade(exchange="binance_derivatives", market_type="perpetual", symbol="BTC-USDT", exchange_symbol="BTCUSDT",
                 timestamp=ts, received_at=received_at, trade_id="1", price="1", quantity="1", side="buy")


def _funding(ts: int, received_at: int) -> FundingRate:
    return FundingRate(exchange="binance_derivatives", market_type="perpetual", symbol="BTC-USDT",
                       exchange_symbol="BTCUSDT", timestamp=ts, received_at=received_at, funding_rate="0.0001",
                       next_funding_time=None, mark_price=None, index_price=None)


def _ratio(ts: int, received_at: int) -> LsrTopPosition:
    return LsrTopPosition(exchange="binance_derivatives", market_type="perpetual", symbol="BTC-USDT",
                          exchange_symbol="BTCUSDT", timestamp=ts, received_at=received_at, period="5m",
                          long_short_ratio="1", long_ratio=None, short_ratio=None)


def test_the_venue_offset_is_measured_on_streamed_records_only_and_resists_a_quiet_or_wrong_one():
    m = "binance_derivatives"
    recent = {
        # trades: delivered in 3..9 ms; one with a wrong time an hour ahead
        ("trade", m): [_trade(T0 + AHEAD + i, T0 + i + 3 + i % 7) for i in range(50)]
        + [_trade(T0 + AHEAD + 3_600_000, T0 + 60)],
        # funding pushes: delivered in 5 ms
        ("funding_rate", m): [_funding(T0 + AHEAD + i * 1000, T0 + i * 1000 + 5) for i in range(5)],
        # a polled statistic: its time is its period's start, minutes before the poll (not streamed: not used)
        ("lsr_top_position", m): [_ratio(T0 + AHEAD - 200_000, T0)],
        # a market streaming nothing measured
        ("funding_rate", "okx_derivatives"): [],
    }
    streamed = {m: {"trade", "funding_rate"}, "okx_derivatives": {"funding_rate"}}
    # per type the largest (event - receive): trade AHEAD + 3_600_000 - 60 (the wrong one), funding AHEAD - 5;
    # the upper median of two is the larger one: one wrong type is outvoted only with three types or more
    assert venue_offsets(recent, streamed) == {m: AHEAD + 3_600_000 - 60}
    recent[("orderbook", m)] = [_trade(T0 + AHEAD - 2, T0)]  # (a book's offset: 2 ms of delivery)
    streamed[m].add("orderbook")
    assert venue_offsets(recent, streamed) == {m: AHEAD - 2}
    assert venue_offsets({k: v for k, v in recent.items() if k[0] != "trade"}, {m: {"funding_rate"}}) == {m: AHEAD - 5}
    assert venue_offsets(recent, {}) == {}


def test_downtime_windows_are_moved_into_the_venues_clock_and_other_markets_stay_local():
    before = GapTracker()
    saved = before.state(T0, {"binance_derivatives": AHEAD})
    assert saved["venue_offset_ms"] == {"binance_derivatives": AHEAD}
    okx = Series("okx_derivatives", "perpetual", "BTC-USDT", "BTC-USDT-SWAP")
    tracker = GapTracker()
    tracker.restore(saved, [(BTC, "funding_rate", False), (BTC, "orderbook", False), (okx, "funding_rate", False)])
    [funding] = tracker.first_record("binance_derivatives", "BTC-USDT", "funding_rate", T0 + 120_000)
    # the settlement the venue made at T0 + AHEAD + 60 s (its clock) is inside the window
    assert (funding.timestamp, funding.end_time) == (T0 + AHEAD, T0 + AHEAD + 120_000)
    assert funding.received_at == T0 + 120_000  # when the collector published it stays local
    [book] = tracker.first_record("binance_derivatives", "BTC-USDT", "orderbook", T0 + 125_000)
    assert (book.state, book.end_time - book.timestamp) == ("unrecoverable", 125_000)
    [okx_row] = tracker.first_record("okx_derivatives", "BTC-USDT", "funding_rate", T0 + 130_000)
    assert (okx_row.timestamp, okx_row.end_time) == (T0, T0 + 130_000)


def test_a_malformed_saved_offset_is_ignored():
    tracker = GapTracker()
    tracker.restore({"saved_at": T0, "ids": {}, "venue_offset_ms": {"binance_derivatives": "3h"}},
                    [(BTC, "funding_rate", False)])
    [funding] = tracker.first_record("binance_derivatives", "BTC-USDT", "funding_rate", T0 + 1_000)
    assert (funding.timestamp, funding.end_time) == (T0, T0 + 1_000)

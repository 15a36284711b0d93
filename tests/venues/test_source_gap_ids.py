"""The ids the adapters report for gap detection (``Output.ids``), on the recorded sessions and the documented
OKX aggregate: the recordings have no hole, and removing one recorded message leaves exactly its ids missing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from marketprism_dagster.collector.gaps import GapTracker, Series
from marketprism_dagster.normalize import merge_by_time, payload_text, read_session
from marketprism_dagster.venues.base import IdSpan, VenueAdapter


def _spans(adapter: VenueAdapter, fixtures_dir: Path, name: str) -> list[list[IdSpan]]:
    """The ids each recorded message carried, message by message."""
    out = []
    for rec in merge_by_time([read_session(fixtures_dir / "sessions" / name)]):
        if rec.get("kind") == "recv":
            got = adapter.on_message(rec.get("url") or "", payload_text(rec), round(rec["t"] * 1000))
            out.append(got.ids or [])
    return out


def _gaps(adapter: VenueAdapter, spans: list[list[IdSpan]]) -> list[Any]:
    tracker = GapTracker()
    found: list[Any] = []
    for k, message in enumerate(spans):
        for data_type, symbol, first, last, ts in message:
            series = Series(adapter.market_id, adapter.market_type, symbol, symbol)
            found += tracker.ids(series, data_type, first, last, ts, now=k)
    return found + tracker.flush(len(spans))


def test_recorded_trades_are_continuous_and_a_removed_message_is_exactly_one_gap(
    fixtures_dir: Path, make_adapter: Any
) -> None:
    for market, name, symbol, trades in (
        ("binance_derivatives", "binance_usdm.ws.jsonl", None, 91),
        ("okx_spot", "okx.ws.jsonl", "BTC-USDT", 69),
    ):
        adapter = make_adapter(market)
        spans = _spans(adapter, fixtures_dir, name)
        ids = [s for message in spans for s in message]
        assert len(ids) == trades and {s[0] for s in ids} == {"trade"}, market
        assert _gaps(adapter, spans) == [], market  # the count: no jump in the recordings
        busiest = symbol or Counter(s[1] for s in ids).most_common(1)[0][0]
        of_symbol = [k for k, message in enumerate(spans) if any(s[1] == busiest for s in message)]
        cut = of_symbol[len(of_symbol) // 2]  # a message in the middle of the busiest symbol's trades
        [removed] = [s for s in spans[cut] if s[1] == busiest]
        [gap] = _gaps(adapter, spans[:cut] + spans[cut + 1 :])
        assert (gap.symbol, gap.first_missing_id, gap.last_missing_id) == (busiest, str(removed[2]), str(removed[3]))
        assert gap.cause == "trade_id_jump" and gap.timestamp <= removed[4] <= gap.end_time, market


def test_the_documented_okx_aggregate_covers_trade_id_minus_count_plus_one_to_trade_id(
    documented: Any, make_adapter: Any
) -> None:
    """OKX docs: "if tradeId = 123 and count = 3, the message aggregates the trades of tradeId = 123, 122, 121"."""
    [push] = [e["verbatim"] for e in documented("okx_trades")["examples"] if e["id"] == "okx/trades/push"]
    out = make_adapter("okx_spot").on_message("okx_spot/public", push, 1_630_048_898_000)
    assert out.ids == [("trade", "BTC-USDT", 130639472, 130639474, 1630048897897)]
    assert [r.trade_id for r in out.records] == ["130639474"]


def test_a_book_reset_after_a_reconnect_is_one_window_without_a_valid_book(
    fixtures_dir: Path, make_adapter: Any
) -> None:
    """The recorded OKX books, then a reconnect (every book reset) and the recorded snapshot pushed again: the
    linear book reports one window from its last applied update; the inverse books (not stored) report none."""
    adapter = make_adapter("okx_spot")
    recs = list(merge_by_time([read_session(fixtures_dir / "sessions" / "okx.ws.jsonl")]))
    for rec in recs:
        if rec.get("kind") == "recv":
            adapter.on_message("okx_spot/public", payload_text(rec), round(rec["t"] * 1000))
    assert adapter.book_windows() == []  # the first synchronization opens no window
    last_applied = adapter.books["BTC-USDT"].timestamp
    adapter.on_connect("okx_spot/public", 0)
    snapshots = [r for r in recs if r.get("kind") == "recv" and r["data"].get("action") == "snapshot"]
    for rec in snapshots:
        adapter.on_message("okx_spot/public", payload_text(rec), round(rec["t"] * 1000))
    assert all(s.synced for s in adapter.books.values())
    [(data_type, inst, lost, back)] = adapter.book_windows()
    assert (data_type, inst.exchange_symbol, lost) == ("orderbook", "BTC-USDT", last_applied)
    assert back >= lost and adapter.book_windows() == []  # drained once

"""The refiller's pending gaps survive a collector restart: ``save`` at shutdown, ``restore`` at the next start;
a gap whose market has no instruments yet stays open (it is tried again), it is never declared unrecoverable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from marketprism_dagster import records
from marketprism_dagster.collector.refill import Refiller, pending_path
from marketprism_dagster.config import Settings
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.history import Window

MARKET = "binance_derivatives"


def refiller(path: Path | None) -> Refiller:
    settings = Settings()
    adapter = adapter_for(MARKET, settings.markets[MARKET], settings.orderbook)
    rest: Any = object()  # never asked: nothing here reaches the venue
    return Refiller(rest, {MARKET: adapter}, lambda m, recs: [], path=path)


def gap(state: str = "open", cause: str = "trade_id_jump", data_type: str = "trade") -> Any:
    return records.SourceGap(
        exchange=MARKET, market_type="perpetual", symbol="BTC-USDT", exchange_symbol="BTCUSDT",
        timestamp=1_700_000_000_000, received_at=1_700_000_001_000, gap_data_type=data_type, cause=cause,
        end_time=1_700_000_001_000, first_missing_id="10", last_missing_id="19", state=state, recovered=0,
        detail="10 trade ids missing",
    )


def test_pending_gaps_are_saved_and_restored(tmp_path: Path) -> None:
    path = pending_path(tmp_path, "main")
    first = refiller(path)
    first.offer(MARKET, [gap(), gap("repaired"), gap(cause="book_unsynced"), gap(data_type="liquidation")])
    first.offer("elsewhere", [gap()])
    assert first.pending == 2  # the open trade and liquidation gaps; not a repaired row, a book cause, another market
    assert first.save() == 2 and path.exists()
    path.write_text(path.read_text() + "not json\n")
    second = refiller(path)
    assert second.restore() == 2 and not path.exists()
    assert [g for _, _, _, _, g in sorted(second._queue)] == [gap(), gap(data_type="liquidation")]
    assert second.save() == 2 and refiller(path).restore() == 2
    empty = refiller(path)
    assert empty.save() == 0 and not path.exists()


async def test_a_market_without_instruments_leaves_the_gap_open() -> None:
    r = refiller(None)
    outcome = await r.fill(MARKET, Window("trade", "BTCUSDT", 0, 1_700_000_000_000, 10, 19))
    assert outcome.state == "open" and "not loaded" in outcome.detail


async def test_a_gap_without_venue_history_is_published_unrecoverable() -> None:
    published: list[Any] = []

    def publish(market: str, recs: list[Any]) -> list[Any]:
        published.extend(recs)
        return []

    r = refiller(None)
    r.publish = publish
    outcome = await r.repair(MARKET, gap(data_type="liquidation", cause="disconnect"))
    (row,) = published
    assert outcome.state == row.state == "unrecoverable" and row.recovered == 0
    assert "no history of liquidation" in row.detail
    assert (row.cause, row.gap_data_type, row.timestamp) == ("disconnect", "liquidation", 1_700_000_000_000)

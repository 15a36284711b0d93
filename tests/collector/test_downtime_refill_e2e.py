"""Issue 11, second "done when", literally, over real sockets (emulator, nats-server, the real writer and chDB): a
collector stopped for 2 minutes and restarted. Funding, open interest and both long/short ratio series get a
``downtime`` gap each, refilled from the emulator's history by the restarted collector itself; the trade gap is
refilled by id; the book's downtime is recorded ``unrecoverable`` with its duration.

The emulator runs on an ``OffsetClock`` (wall clock + a fixed offset) placed so that its "now" at the stop is
``LEAD_MS`` before a funding settlement (00/08/16 UTC, also a 5-minute boundary of open interest and both ratio
series): the 2-minute window then holds one history point of EVERY series, and the test compares each with what the
emulator's history endpoint serves for that time. The venue's clock is hours away from the collector's, so this also
proves the downtime windows are in the venue's clock (the records' and the history's time base), not the local one.
The ratio series' window closes at the first NEW point after the restart: with the boundary inside the window, the
restart's first poll answers it (its earlier points are repeats of what the first run published, dropped).

A second client of the trade stream (``TradeWitness``) keeps the emulator trading while no collector runs (it
generates no trades for an unwatched stream); the ids it saw are the ground truth of what the venue sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from marketprism_dagster import integrity
from marketprism_dagster.collector.gapfile import gaps_path
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.emulator.clock import OffsetClock
from marketprism_dagster.emulator.series import FUNDING_PERIOD_MS
from marketprism_dagster.jetstream import connect
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.storage import open_store
from marketprism_dagster.timeutil import now_ms
from tests.support.collector_helpers import TradeWitness, emulator_overrides, http_json, running_collector, until
from tests.support.writer_helpers import committed, hot_rows, writer_running

MARKET = "binance_derivatives"
SERIES = ["funding_rate", "open_interest", "lsr_top_position", "lsr_all_account"]
REFILLED = ["trade", *SERIES]
TYPES = ["trade", "orderbook", *SERIES]
MARKETS = {MARKET: (["BTC-USDT"], TYPES)}
STOP_S = 120.0  # the 2 minutes, really
LEAD_MS = 50_000  # the venue's "now" at the stop: this long before a funding settlement
START_LEAD_MS = 62_000  # ... and at the start: the first run has START_LEAD_MS - LEAD_MS to collect every type

# the emulator's history endpoint of each series (paths as the venue's), and the columns to compare: stored -> served
HISTORY = {
    "funding_rate": (
        "/fapi/v1/fundingRate?",
        "fundingTime",
        {"funding_rate": "fundingRate", "mark_price": "markPrice"},
    ),
    "open_interest": (
        "/futures/data/openInterestHist?period=5m&",
        "timestamp",
        {"open_interest": "sumOpenInterest", "open_interest_value": "sumOpenInterestValue"},
    ),
    "lsr_top_position": (
        "/futures/data/topLongShortPositionRatio?period=5m&",
        "timestamp",
        {"long_short_ratio": "longShortRatio", "long_ratio": "longAccount", "short_ratio": "shortAccount"},
    ),
    "lsr_all_account": (
        "/futures/data/globalLongShortAccountRatio?period=5m&",
        "timestamp",
        {"long_short_ratio": "longShortRatio", "long_ratio": "longAccount", "short_ratio": "shortAccount"},
    ),
}


def settlement_clock() -> tuple[OffsetClock, int]:
    """A venue clock whose "now" is START_LEAD_MS before a funding settlement (the nearest one: |offset| <= 4 h)."""
    wall = now_ms()
    settle = round((wall + START_LEAD_MS) / FUNDING_PERIOD_MS) * FUNDING_PERIOD_MS
    return OffsetClock(settle - START_LEAD_MS - wall), settle


async def served(rest_url: str, data_type: str, after_ms: int, before_ms: int) -> dict[int, dict[str, Decimal]]:
    """What the emulator's history endpoint serves strictly inside (after_ms, before_ms): time -> compared values."""
    path, time_key, columns = HISTORY[data_type]
    url = f"{rest_url.rstrip('/')}{path}symbol=BTCUSDT&startTime={after_ms + 1}&endTime={before_ms - 1}&limit=100"
    status, rows = await http_json(url)
    assert status == 200, rows
    return {int(r[time_key]): {c: Decimal(r[src]) for c, src in columns.items()} for r in rows}


def stored(settings: Settings, data_type: str, after_ms: int, before_ms: int) -> dict[int, dict[str, Decimal | None]]:
    """The hot table's rows of the series strictly inside (after_ms, before_ms): time -> compared values."""
    columns = list(HISTORY[data_type][2])
    rows = hot_rows(
        settings,
        f"SELECT toUnixTimestamp64Milli(timestamp), {', '.join(f'toString({c})' for c in columns)} "
        f"FROM marketprism_hot.{data_type} FINAL WHERE toUnixTimestamp64Milli(timestamp) > {after_ms} "
        f"AND toUnixTimestamp64Milli(timestamp) < {before_ms} ORDER BY timestamp",
    )
    return {
        int(r[0]): {c: None if v is None else Decimal(v) for c, v in zip(columns, r[1:], strict=True)} for r in rows
    }


async def test_a_collector_stopped_for_2_minutes_refills_every_series_and_records_the_book_window(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    clock, settle = settlement_clock()
    cfg = EmulatorConfig(mode="synth", rate=100, seed=21, venues=(MARKET,), clock=clock)
    async with Emulator(cfg) as emu:
        rest_url = emu.urls[MARKET]["rest"]
        overrides = emulator_overrides(emu.urls, MARKETS) | {f"markets.{MARKET}.poll_interval_s": 1.0}
        settings = settings_factory(
            nats_url=nats_server.url, **overrides, **{"writer.health_port": 0, "writer.monitor_interval_s": 0.5}
        )
        nc = await connect(nats_server.url)
        witness = TradeWitness()
        seen = witness.seen
        outcomes: dict[str, Any] = {}
        try:
            async with writer_running(settings) as writer:
                async with running_collector(settings) as (collector, _):
                    for t in TYPES:
                        await until(lambda t=t: collector.state.records.get((t, MARKET), 0) > 0, 30)
                    feed = next(f for f in collector.adapters[MARKET].ws_feeds() if "aggTrade" in f.url)
                    witness.start(feed.url)
                    await until(lambda: len(seen) > 5, 10)
                    wait_ms = settle - LEAD_MS - clock.now_ms()
                    assert wait_ms > 0, f"the first run took too long: the stop is {-wait_ms} ms late"
                    await asyncio.sleep(wait_ms / 1000)
                    stopped = clock.now_ms()  # the venue's time as the collector begins to stop
                assert gaps_path(settings.data_dir, "main").is_file()
                await asyncio.sleep(STOP_S)  # the venue trades on, settles funding and closes a 5-minute period
                async with running_collector(settings) as (collector, _):
                    await until(lambda: collector.state.records.get(("orderbook", MARKET), 0) > 0, 30)
                    books_back = clock.now_ms()  # the venue's time once the restarted book published again

                    def refilled() -> dict[str, Any]:
                        done = collector.refiller.done if collector.refiller is not None else []
                        return {g.gap_data_type: o for _, g, o in done if g.cause == "downtime"}

                    await until(lambda: set(refilled()) >= set(REFILLED), 60)
                    outcomes = refilled()
                await until(lambda: committed(nc, writer), 60, interval=0.2)
        finally:
            await witness.stop()
            await nc.close()
        assert {t: o.state for t, o in outcomes.items()} == dict.fromkeys(REFILLED, "repaired"), outcomes
        rows = hot_rows(
            settings,
            "SELECT gap_data_type, state, recovered, first_missing_id, last_missing_id, "
            "toUnixTimestamp64Milli(timestamp), toUnixTimestamp64Milli(end_time), detail "
            "FROM marketprism_hot.source_gap FINAL WHERE cause = 'downtime' ORDER BY gap_data_type, state",
        )
        by = {(r[0], r[1]): r for r in rows}
        assert set(by) == {("orderbook", "unrecoverable"), *((t, s) for t in REFILLED for s in ("open", "repaired"))}

        # the book: no venue keeps its history; its window is the downtime: at least the stop, at most the stop plus
        # the restart and the book's resynchronization (the venue's times around them, measured here)
        book = by["orderbook", "unrecoverable"]
        assert book[2] == 0
        assert STOP_S * 1000 <= book[6] - book[5] <= books_back - stopped, (book, stopped, books_back)
        # (its bounds are local times moved into the venue's clock by the offset the first run measured, which is
        # short of the true one by the quickest delivery: a few ms)
        assert stopped - 1_000 <= book[5] < book[6] <= books_back, (book, stopped, books_back)

        # every series: a window of at least the 2 minutes, the settlement inside it, refilled from history with the
        # very points the emulator's history serves for it (same times, same values), the settlement's among them
        for t in SERIES:
            gap = by[t, "repaired"]
            start, end = gap[5], gap[6]
            assert end - start >= STOP_S * 1000 and start < settle < end, (t, gap, settle)
            assert gap[2] >= 1 and gap[7] == f"{gap[2]} points refilled from history", (t, gap)
            history = await served(rest_url, t, start, end)
            assert settle in history and len(history) == gap[2], (t, history, gap)
            rows_inside = stored(settings, t, start, end)
            assert {ts: rows_inside.get(ts) for ts in history} == history, (t, rows_inside)
            # besides them only the restart's first live point, received as the window closed (its event time is
            # a delivery's latency before its receive time, the window's end)
            assert all(end - ts < 1_000 for ts in set(rows_inside) - set(history)), (t, rows_inside, gap)

        # the trades: the gap's ids are exactly the ones the venue sent while no collector ran, refilled once each;
        # every id the venue sent from the witness's start up to the newest stored one is stored exactly once
        trade = by["trade", "repaired"]
        first, last = int(trade[3]), int(trade[4])
        assert trade[2] == last - first + 1 > STOP_S * 50  # ~100 trades/s for 2 minutes
        ids = sorted(int(r[0]) for r in hot_rows(settings, "SELECT trade_id FROM marketprism_hot.trade"))
        assert ids == list(range(ids[0], ids[-1] + 1)) and ids[0] < first and last < ids[-1]
        assert set(range(first, last + 1)) <= set(seen)
        assert {i for i in seen if i <= ids[-1]} <= set(ids)
    with open_store(settings) as store:
        # the gaps' windows are in the venue's clock, up to 4 h ahead of the local one here (a real venue's is within
        # a second of it): "the last day" must end at the venue's now, or a window ahead of local now is not read
        now = clock.now_ms()
        checks = {t: integrity.source_gaps(store, settings, t, now=now) for t in ["orderbook", *REFILLED]}
    assert {t: (c.passed, c.severity) for t, c in checks.items()} == {
        "orderbook": (False, "WARN"), **{t: (True, "ERROR") for t in REFILLED}
    }, {t: c.description for t, c in checks.items()}

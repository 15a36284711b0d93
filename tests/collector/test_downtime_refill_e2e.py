"""Issue 11, second "done when", over real sockets (emulator, nats-server, the real writer and chDB): a collector
stopped and restarted. Its trades, funding and open interest get a ``downtime`` gap each, refilled from the
emulator's history by the restarted collector itself; the book's downtime is recorded ``unrecoverable`` with its
duration; the ``source_gaps`` rule passes for the refilled types and warns for the book. A second client of the
trade stream keeps the emulator trading while no collector runs (it generates no trades for an unwatched stream).

The stop is 3 s, not 2 minutes: what the issue's 2 minutes exercise is the same code path at any length (the saved
last sign of life, the first record after the restart, a refill of the window between), and a window's length
changes only how many points the venue's history holds inside it. The trade window holds ~300 ids here (every one
is checked refilled); the funding and open-interest history hold a point inside a 3 s window only by chance, so
their refill is checked to have run to the end (state ``repaired``, the count it found) rather than for a count.
The two long/short ratio series are collected but not required here: their points are 5-minute periods, a restart's
first poll answers the period already stored (a repeated point, not a new record), so their downtime window closes
only at the next period, minutes later; the same refill path then runs for them (tests/collector/test_refill_series.py
checks their history mapping)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from marketprism_dagster import integrity
from marketprism_dagster.collector.gapfile import gaps_path
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.jetstream import connect
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.storage import open_store
from marketprism_dagster.timeutil import now_ms
from tests.support.collector_helpers import TradeWitness, emulator_overrides, running_collector, until
from tests.support.writer_helpers import committed, hot_rows, writer_running

SERIES = ["funding_rate", "open_interest"]
TYPES = ["trade", "orderbook", *SERIES, "lsr_top_position", "lsr_all_account"]
MARKETS = {"binance_derivatives": (["BTC-USDT"], TYPES)}
STOP_S = 3.0


async def test_a_restarted_collector_refills_its_downtime_and_records_the_book_window_unrecoverable(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    cfg = EmulatorConfig(mode="synth", rate=100, seed=21, venues=("binance_derivatives",))
    async with Emulator(cfg) as emu:
        overrides = emulator_overrides(emu.urls, MARKETS) | {"markets.binance_derivatives.poll_interval_s": 1.0}
        settings = settings_factory(
            nats_url=nats_server.url, **overrides, **{"writer.health_port": 0, "writer.monitor_interval_s": 0.5}
        )
        nc = await connect(nats_server.url)
        witness = TradeWitness()
        seen = witness.seen
        try:
            async with writer_running(settings) as writer:
                async with running_collector(settings) as (collector, _):
                    for t in TYPES:
                        await until(lambda t=t: collector.state.records.get((t, "binance_derivatives"), 0) > 0, 30)
                    feed = next(f for f in collector.adapters["binance_derivatives"].ws_feeds() if "aggTrade" in f.url)
                    witness.start(feed.url)
                    await until(lambda: len(seen) > 5, 10)
                assert gaps_path(settings.data_dir, "main").is_file()
                await asyncio.sleep(STOP_S)  # the venue trades on while no collector runs
                async with running_collector(settings) as (collector, _):

                    def outcomes() -> dict[str, str]:
                        done = collector.refiller.done if collector.refiller is not None else []
                        return {g.gap_data_type: o.state for _, g, o in done if g.cause == "downtime"}

                    await until(lambda: set(outcomes()) >= {"trade", *SERIES}, 45)
                    assert outcomes() == dict.fromkeys(["trade", *SERIES], "repaired"), outcomes()
                await until(lambda: committed(nc, writer), 60, interval=0.2)
        finally:
            await witness.stop()
            await nc.close()
    rows = hot_rows(
        settings,
        "SELECT gap_data_type, state, recovered, first_missing_id, last_missing_id, "
        "toUnixTimestamp64Milli(end_time) - toUnixTimestamp64Milli(timestamp), detail "
        "FROM marketprism_hot.source_gap FINAL WHERE cause = 'downtime' ORDER BY gap_data_type, state",
    )
    by = {(r[0], r[1]): r for r in rows}
    refilled = {(t, state) for t in ["trade", *SERIES] for state in ("open", "repaired")}
    assert set(by) == {("orderbook", "unrecoverable"), *refilled}
    # the book: no venue keeps its history; its window is the downtime, at least the stop long
    book = by["orderbook", "unrecoverable"]
    assert book[5] >= STOP_S * 1000 and book[2] == 0
    # the trades: every missed id refilled once and stored
    trade = by["trade", "repaired"]
    first, last = int(trade[3]), int(trade[4])
    assert trade[2] == last - first + 1 > 100  # ~3 s at 100 trades/s
    stored = sorted(int(r[0]) for r in hot_rows(settings, "SELECT trade_id FROM marketprism_hot.trade"))
    assert stored == list(range(stored[0], stored[-1] + 1)) and first > stored[0] and last < stored[-1]
    assert set(range(first, last + 1)) <= set(seen)  # ids the venue did send
    # the series: each window at least the stop long, refilled from history (the points found inside it)
    for t in SERIES:
        assert by[t, "repaired"][5] >= STOP_S * 1000 and by[t, "repaired"][6].endswith("refilled from history")
    with open_store(settings) as store:
        now = now_ms()
        checks = {t: integrity.source_gaps(store, settings, t, now=now) for t in ["trade", "orderbook", *SERIES]}
    assert {t: (c.passed, c.severity) for t, c in checks.items()} == {
        "orderbook": (False, "WARN"), **{t: (True, "ERROR") for t in ["trade", *SERIES]}
    }, {t: c.description for t, c in checks.items()}

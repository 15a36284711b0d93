"""``marketprism backfill`` against the emulator: over a range the hot table already holds it publishes nothing;
over a range with a hole it publishes exactly the missing records, and after the writer stored them, nothing.
Binance (one aggregate trade per id on both sides) and OKX (the live channel aggregates matches into pushes, the
history answers single matches: a match a stored push covers is held, ``venues/history.held_matches``), the latter
also through the aged-out hour's refill (``hour_refill.refill_hour``, the same code)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
from typer.testing import CliRunner

from marketprism_dagster import hour_refill, records
from marketprism_dagster.cli import _register_all, app
from marketprism_dagster.collector.backfill import SymbolReport, _missing, _valid, parse_time, run_backfill
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.jetstream import connect
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.storage.embedded import EmbeddedStore
from marketprism_dagster.timeutil import HOUR_MS, now_ms
from tests.collector.test_refill_e2e import collecting
from tests.support.collector_helpers import emulator_overrides, until
from tests.support.records import make_record
from tests.support.writer_helpers import committed, hot_rows, writer_running

MARKET = "binance_derivatives"
MARKETS = {MARKET: (["BTC-USDT"], ["trade"])}


def trades(settings: Settings) -> dict[int, int]:
    """trade id -> exchange time of every stored BTC-USDT trade of the market."""
    rows = hot_rows(
        settings,
        "SELECT trade_id, toUnixTimestamp64Milli(timestamp) FROM marketprism_hot.trade "
        f"WHERE exchange = '{MARKET}' AND symbol = 'BTC-USDT'"
    )
    return {int(i): int(t) for i, t in rows}


async def test_backfill_publishes_only_what_the_store_lacks(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    cfg = EmulatorConfig(venues=(MARKET,), rate=250, seed=8,
                         faults="drop_trades@binance_derivatives:at=200:count=200:topic=btcusdt")
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, MARKETS),
                                    **{"writer.health_port": 0, "writer.monitor_interval_s": 0.5})
        nc = await connect(nats_server.url)
        try:
            async with writer_running(settings) as writer:
                async with collecting(settings):
                    await until(lambda: emu.dropped_trades and emu.dropped_trades[0].done, 60)
                    await asyncio.sleep(2.0)  # trades after the hole
                await until(lambda: committed(nc, writer), 60, interval=0.2)
            d = emu.dropped_trades[0]
            stored = trades(settings)
            assert not any(d.first_id <= i <= d.last_id for i in stored)
            hole = (stored[d.first_id - 1], stored[d.last_id + 1])  # exchange times around the hole
            newest = max(stored.values())

            complete = await run_backfill(settings, MARKET, "trade", None, hole[1] + 1, newest - 1)
            (rep,) = complete
            assert rep.fetched > 50 and (rep.stored, rep.published, rep.state) == (rep.fetched, 0, "repaired")

            (rep,) = await run_backfill(settings, MARKET, "trade", ["BTC-USDT"], hole[0], hole[1])
            assert rep.published == d.last_id - d.first_id + 1
            assert sorted(int(i.rsplit("|", 1)[1]) for i in rep.new_ids) == list(range(d.first_id, d.last_id + 1))

            async with writer_running(settings) as writer:
                await until(lambda: committed(nc, writer), 60, interval=0.2)
            refilled = trades(settings)
            ids = sorted(refilled)
            assert ids == list(range(ids[0], ids[-1] + 1))  # the hole is filled, nothing twice

            _register_all()
            result = await asyncio.to_thread(CliRunner().invoke, app, [
                "backfill", "--market", MARKET, "--type", "trade", "--symbol", "BTC-USDT",
                "--from", str(hole[0]), "--to", str(hole[1]), "--json",
                "--set", f"data_dir={settings.data_dir}", "--set", f"storage.path={settings.embedded_store_path}",
                "--set", f"nats.url={nats_server.url}", "--set", "nats.embedded=false",
                "--set", f"markets.{MARKET}.rest_url={emu.urls[MARKET]['rest']}",
            ])
        finally:
            await nc.close()
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
    # the CLI over the range just refilled: everything fetched is stored, nothing published
    assert line["published"] == 0 and line["stored"] == line["fetched"] >= rep.published


def test_backfill_times_are_epoch_ms_or_iso_utc() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000
    assert parse_time("2023-11-15T00:13:20+02:00") == 1_700_000_000_000


def test_stored_okx_pushes_hold_their_matches_in_chdb(store: EmbeddedStore) -> None:
    """The comparison over real stored rows: pushes 1..3 and 8..9 stored, 4..7 a hole, push 12 (10..12) stored
    at a price the history does not serve for 11: 4..7 published, 10 and 11 left out (unresolved)."""
    now = now_ms() - 60_000  # inside the hot table's TTL

    def trade(i: int, quantity: str, price: str = "100.5") -> Any:
        return make_record("trade", i, now, trade_id=str(i), timestamp=now + i, quantity=quantity, price=price)

    pushes = [trade(3, "0.6"), trade(9, "0.9"), trade(12, "3")]
    store.insert("marketprism_hot", "trade", records.to_columns("trade", pushes))
    sizes = {1: "0.1", 2: "0.2", 3: "0.3", 4: "1", 5: "1", 6: "1", 7: "1", 8: "0.4", 9: "0.5", 10: "1", 11: "1",
             12: "1"}
    fetched = [trade(i, q, "100.7" if i == 11 else "100.5") for i, q in sizes.items()]
    rep = SymbolReport("BTC-USDT", len(fetched), state="repaired", detail="12 points")
    missing = _missing(store, "marketprism_hot", "okx_spot", rep, fetched, aggregates=True)
    assert [int(r.trade_id) for r in missing] == [4, 5, 6, 7]
    assert (rep.unresolved, rep.state) == (2, "unrecoverable")
    assert rep.detail.startswith("2 matches below 1 stored pushes whose span the history does not explain (first "
                                 "push id 12)")
    # compared by identity alone (Binance's rule), every match but the three push ids would be published
    plain = SymbolReport("BTC-USDT", len(fetched))
    assert len(_missing(store, "marketprism_hot", "okx_spot", plain, fetched, aggregates=False)) == 9


def test_backfill_never_publishes_a_record_that_breaks_validation() -> None:
    good = make_record("trade", 1, 1_700_000_000_000)
    bad = make_record("trade", 2, 1_700_000_000_000, price="-1")
    assert _valid(MARKET, [good, bad]) == [good]


OKX = "okx_derivatives"
OKX_INST = "BTC-USDT-SWAP"


def okx_rows(settings: Settings) -> dict[int, tuple[int, Decimal]]:
    """trade id -> (exchange time, contracts) of every stored BTC-USDT trade of OKX swaps."""
    rows = hot_rows(
        settings,
        "SELECT trade_id, toUnixTimestamp64Milli(timestamp), toString(quantity_contracts) FROM marketprism_hot.trade "
        f"WHERE exchange = '{OKX}' AND symbol = 'BTC-USDT'"
    )
    assert len(rows) == len({r[0] for r in rows})  # one row per id
    return {int(i): (int(t), Decimal(q)) for i, t, q in rows}


async def okx_matches(rest: str) -> dict[int, tuple[int, Decimal]]:
    """match id -> (time, contracts) of every match the emulator's history holds (GET history-trades by id)."""
    out: dict[int, tuple[int, Decimal]] = {}
    after = ""
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(f"{rest}/api/v5/market/history-trades?instId={OKX_INST}&limit=100{after}") as resp:
                rows = (await resp.json())["data"]
            if not rows:
                return out
            for r in rows:
                out[int(r["tradeId"])] = (int(r["ts"]), Decimal(r["sz"]))
            after = f"&after={min(int(r['tradeId']) for r in rows)}"


def volume(rows: dict[int, tuple[int, Decimal]], lo: int, hi: int) -> tuple[int, Decimal]:
    """(rows, summed contracts) with a time in [lo, hi]."""
    inside = [q for t, q in rows.values() if lo <= t <= hi]
    return len(inside), sum(inside, Decimal(0))


async def test_okx_backfill_holds_a_match_a_stored_push_covers(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    """OKX pushes aggregate up to 3 matches (one row, the last match id); history-trades answers single matches.
    Over a range the live collector stored completely the backfill publishes nothing (before: every match inside
    a push but its last, volume counted twice); over a hole exactly the dropped matches; the hot table then holds
    the emulator's volume over the range, each match once; the aged-out hour's refill of the hour adds none twice."""
    cfg = EmulatorConfig(venues=("okx",), rate=250, seed=8, okx_trade_count_max=3,
                         faults=f"drop_trades@okx:at=200:count=200:topic={OKX_INST}")
    markets = {OKX: (["BTC-USDT"], ["trade"])}
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets),
                                    **{"writer.health_port": 0, "writer.monitor_interval_s": 0.5})
        nc = await connect(nats_server.url)
        try:
            async with writer_running(settings) as writer:
                async with collecting(settings):
                    await until(lambda: emu.dropped_trades and emu.dropped_trades[0].done, 60)
                    await asyncio.sleep(1.5)  # pushes after the hole (stopped before the automatic refill)
                await until(lambda: committed(nc, writer), 60, interval=0.2)
            d = emu.dropped_trades[0]
            live = okx_rows(settings)
            assert not any(d.first_id <= i <= d.last_id for i in live)
            matches = await okx_matches(emu.urls[OKX]["rest"])
            assert len(matches) > len(live) + (d.last_id - d.first_id + 1)  # the channel did aggregate
            hole = (live[d.first_id - 1][0], live[min(i for i in live if i > d.last_id)][0])
            newest = max(t for t, _ in live.values())

            (rep,) = await run_backfill(settings, OKX, "trade", None, hole[1] + 1, newest - 1)
            covered = [i for i, (t, _) in matches.items() if hole[1] < t < newest]
            assert rep.fetched == len(covered) > 50
            assert (rep.stored, rep.published, rep.state) == (rep.fetched, 0, "repaired"), rep

            (rep,) = await run_backfill(settings, OKX, "trade", ["BTC-USDT"], hole[0], hole[1])
            assert sorted(int(i.rsplit("|", 1)[1]) for i in rep.new_ids) == list(range(d.first_id, d.last_id + 1))
            assert rep.published == d.last_id - d.first_id + 1 and rep.stored == rep.fetched - rep.published

            async with writer_running(settings) as writer:
                await until(lambda: committed(nc, writer), 60, interval=0.2)
            refilled = okx_rows(settings)
            lo, hi = hole[0], newest - 1
            pushes, _ = volume(live, lo, hi)
            assert volume(refilled, lo, hi) == (pushes + rep.published, volume(matches, lo, hi)[1])

            hour = hole[0] // HOUR_MS * HOUR_MS
            (again,) = await hour_refill.refill_hour(settings, "trade", hour, wait_s=0)
            async with writer_running(settings) as writer:
                await until(lambda: committed(nc, writer), 60, interval=0.2)
            generated = await okx_matches(emu.urls[OKX]["rest"])
        finally:
            await nc.close()
    # the hour's history is what the emulator generated in it: after its refill the hour holds each match once
    # (in a push or refilled alone), whatever the collector missed around its start and stop refilled too
    assert again.state == "repaired" and again.stored + again.published == again.fetched
    in_hour = volume(generated, hour, hour + HOUR_MS - 1)
    assert again.fetched == in_hour[0]
    assert volume(okx_rows(settings), hour, hour + HOUR_MS - 1)[1] == in_hour[1]

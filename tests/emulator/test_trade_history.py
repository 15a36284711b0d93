"""Trade-history endpoints answer exactly what the streams sent; drop_trades leaves an exact gap history fills."""

from __future__ import annotations

from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from marketprism_dagster.emulator import Emulator, EmulatorConfig, FaultPlan, FaultSpecError, ManualClock

NOW = 1_767_225_723_000  # 2026-01-01 00:02:03 UTC
AGG_WS = {"binance_spot": "/ws/btcusdt@aggTrade", "binance_derivatives": "/market/ws/btcusdt@aggTrade"}
AGG_REST = {"binance_spot": "/api/v3/aggTrades", "binance_derivatives": "/fapi/v1/aggTrades"}
OKX_TRADES = '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT-SWAP"}]}'


def _cfg(root: Path, venue: str, clock: ManualClock, faults: str = "") -> EmulatorConfig:
    return EmulatorConfig(venues=(venue,), rate=0, seed=11, fixtures=root, clock=clock, faults=faults,
                          okx_trade_count_max=3)  # OKX pushes aggregate up to 3 matches


async def _binance_stream(emu: Emulator, venue: str, clock: ManualClock, n: int) -> list[dict[str, Any]]:
    """n aggTrade events; the clock moves 1 s every 100 received, so the trades span several times."""
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(emu.urls[venue]["ws"] + AGG_WS[venue]) as ws:
        while len(out) < n:
            out.append(orjson.loads((await ws.receive(timeout=10)).data))
            if len(out) % 100 == 0:
                clock.advance(1000)
    return out


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("venue", ["binance_spot", "binance_derivatives"])
async def test_binance_agg_trades_history_equals_the_streamed_trades_by_id_and_by_time(
        fixtures_root: Path, venue: str) -> None:
    clock = ManualClock(NOW)
    async with Emulator(_cfg(fixtures_root, venue, clock)) as emu:
        streamed = await _binance_stream(emu, venue, clock, 1500)
        rest = emu.urls[venue]["rest"] + AGG_REST[venue] + "?symbol=BTCUSDT"
        first = streamed[0]["a"]
        _, page1 = await _get(f"{rest}&fromId={first}&limit=1000")
        _, page2 = await _get(f"{rest}&fromId={page1[-1]['a'] + 1}&limit=1000")
        _, capped = await _get(f"{rest}&fromId={first}&limit=5000")
        mid_time = streamed[750]["T"]
        _, by_time = await _get(f"{rest}&startTime={mid_time}&endTime={mid_time + 999}&limit=1000")
    history = {row["a"]: row for row in page1 + page2}
    wanted = {"a", "p", "q", "f", "l", "T", "m"} | ({"M"} if venue == "binance_spot" else set())
    for event in streamed:
        assert history[event["a"]] == {k: v for k, v in event.items() if k in wanted}
    assert [e["a"] for e in streamed] == list(range(first, first + 1500))  # consecutive on the stream
    assert len(capped) == 1000  # limit max 1000
    same_second = [{k: v for k, v in e.items() if k in wanted} for e in streamed
                   if mid_time <= e["T"] <= mid_time + 999]
    assert same_second and by_time == same_second


@pytest.mark.parametrize("venue", ["binance_spot", "binance_derivatives"])
async def test_binance_agg_trades_window_of_an_hour_or_more_is_refused_with_1127(
        fixtures_root: Path, venue: str) -> None:
    clock = ManualClock(NOW)
    async with Emulator(_cfg(fixtures_root, venue, clock)) as emu:
        rest = emu.urls[venue]["rest"] + AGG_REST[venue] + "?symbol=BTCUSDT"
        refused = await _get(f"{rest}&startTime={NOW - 3_600_000}&endTime={NOW}")
        accepted = await _get(f"{rest}&startTime={NOW - 3_599_999}&endTime={NOW}")
        missing = await _get(emu.urls[venue]["rest"] + AGG_REST[venue])
        unknown = await _get(emu.urls[venue]["rest"] + AGG_REST[venue] + "?symbol=NOPEUSDT")
    assert refused == (400, {"code": -1127, "msg": "More than 1 hours between startTime and endTime."})
    assert accepted == (200, [])
    assert missing[0] == 400 and missing[1]["code"] == -1102
    assert unknown == (400, {"code": -1121, "msg": "Invalid symbol."})


async def _okx_stream(emu: Emulator, clock: ManualClock, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(emu.urls["okx_derivatives"]["ws"] + "/ws/v5/public") as ws:
        await ws.send_str(OKX_TRADES)
        assert orjson.loads((await ws.receive(timeout=10)).data)["event"] == "subscribe"
        while len(out) < n:
            out.append(orjson.loads((await ws.receive(timeout=10)).data)["data"][0])
            if len(out) % 100 == 0:
                clock.advance(1000)
    return out


async def _okx_history(rest: str, query: str) -> list[dict[str, str]]:
    status, body = await _get(f"{rest}/api/v5/market/history-trades?instId=BTC-USDT-SWAP&{query}")
    assert status == 200 and body["code"] == "0", body
    data: list[dict[str, str]] = body["data"]
    return data


async def test_okx_history_trades_return_each_match_of_the_streamed_aggregates(fixtures_root: Path) -> None:
    clock = ManualClock(NOW)
    async with Emulator(_cfg(fixtures_root, "okx", clock)) as emu:
        pushes = await _okx_stream(emu, clock, 600)
        rest = emu.urls["okx_derivatives"]["rest"]
        first = int(pushes[0]["tradeId"]) - int(pushes[0]["count"]) + 1
        last = int(pushes[-1]["tradeId"])
        matches: list[dict[str, str]] = []
        after = last + 1
        while True:  # type 1: pages of at most 100 by tradeId, newest first, walking backwards
            page = await _okx_history(rest, f"type=1&after={after}&before={first - 1}")
            if not page:
                break
            assert len(page) <= 100
            matches += page
            after = int(page[-1]["tradeId"])
        newest = await _okx_history(rest, "limit=500")
        ts_page = await _okx_history(rest, f"type=2&after={int(pushes[300]['ts'])}&limit=100")
    ids = [int(m["tradeId"]) for m in matches]
    assert ids == list(range(last, first - 1, -1))  # every match once, newest first, consecutive
    by_id = {int(m["tradeId"]): m for m in matches}
    for push in pushes:
        top, count = int(push["tradeId"]), int(push["count"])
        group = [by_id[i] for i in range(top - count + 1, top + 1)]
        assert {(g["px"], g["side"], g["ts"], g["instId"]) for g in group} == {
            (push["px"], push["side"], push["ts"], "BTC-USDT-SWAP")}
        assert sum(Decimal(g["sz"]) for g in group) == Decimal(push["sz"])
    assert any(int(p["count"]) > 1 for p in pushes)  # the stream does aggregate
    # consecutive pushes chain: tradeId - count = the previous push's tradeId
    assert all(int(b["tradeId"]) - int(b["count"]) == int(a["tradeId"]) for a, b in pairwise(pushes))
    assert len(newest) == 100  # limit max 100
    assert ts_page and all(int(m["ts"]) < int(pushes[300]["ts"]) for m in ts_page)
    assert ts_page[0] == by_id[int(ts_page[0]["tradeId"])]


def test_drop_trades_grammar_names_its_venues_and_options() -> None:
    rule = FaultPlan.parse("drop_trades@okx:at=100:topic=SWAP").rules[0]
    assert rule.venues == ("okx",) and rule.at == 100 and rule.topic == "SWAP" and rule.count is None
    assert FaultPlan.parse("drop_trades").rules[0].venues == ("binance_spot", "binance_derivatives", "okx")
    for bad in ("drop_trades@deribit", "gap@okx:topic=x", "drop_trades@okx:topic="):
        with pytest.raises(FaultSpecError):
            FaultPlan.parse(bad)


async def test_drop_trades_leaves_an_exact_agg_id_gap_that_the_history_fills(fixtures_root: Path) -> None:
    clock = ManualClock(NOW)
    venue = "binance_derivatives"
    async with Emulator(_cfg(fixtures_root, venue, clock, "drop_trades@binance_derivatives:at=200:count=500")) as emu:
        streamed = await _binance_stream(emu, venue, clock, 1000)
        rest = emu.urls[venue]["rest"] + AGG_REST[venue] + "?symbol=BTCUSDT"
        ids = [e["a"] for e in streamed]
        jumps = [(a, b) for a, b in pairwise(ids) if b != a + 1]
        assert len(jumps) == 1
        before, after = jumps[0]
        _, filled = await _get(f"{rest}&fromId={before + 1}&limit=1000")
        dropped = emu.dropped_trades
        fired = emu.faults_fired
    assert after - before - 1 == 500 and ids.index(before) == 198  # messages 200..699 never sent
    assert [r["a"] for r in filled[:500]] == list(range(before + 1, after))
    assert filled[500] == {k: v for k, v in streamed[199].items() if k in filled[500]}
    assert [(d.topic, d.first_id, d.last_id, d.messages, d.done) for d in dropped] == [
        ("btcusdt@aggTrade", before + 1, after - 1, 500, True)]
    assert fired == {"drop_trades": {venue: 1}}


async def test_drop_trades_on_okx_swaps_leaves_an_exact_trade_id_gap_that_the_history_fills(
        fixtures_root: Path) -> None:
    clock = ManualClock(NOW)
    async with Emulator(_cfg(fixtures_root, "okx", clock, "drop_trades@okx:at=100:topic=SWAP")) as emu:
        pushes = await _okx_stream(emu, clock, 700)
        breaks = [(a, b) for a, b in pairwise(pushes)
                  if int(b["tradeId"]) - int(b["count"]) != int(a["tradeId"])]
        assert len(breaks) == 1
        first = int(breaks[0][0]["tradeId"]) + 1
        last = int(breaks[0][1]["tradeId"]) - int(breaks[0][1]["count"])
        rest = emu.urls["okx_derivatives"]["rest"]
        filled: list[dict[str, str]] = []
        after = last + 1
        while page := await _okx_history(rest, f"after={after}&before={first - 1}"):
            filled += page
            after = int(page[-1]["tradeId"])
        dropped = emu.dropped_trades
    assert pushes.index(breaks[0][0]) == 98  # pushes 100..599 (500 default) never sent
    assert sorted(int(m["tradeId"]) for m in filled) == list(range(first, last + 1))
    assert [(d.topic, d.first_id, d.last_id, d.messages) for d in dropped] == [
        ("trades:BTC-USDT-SWAP", first, last, 500)]


async def test_a_restarted_emulator_continues_above_every_trade_id_it_sent_before(
        fixtures_root: Path) -> None:
    """A demo restarted three times lost 57% of its stored trades: each run began again at the same ids, and
    the trade table (keyed by exchange, symbol, trade id) took the new run's trades as replacements."""
    clock = ManualClock(NOW)
    runs: list[dict[str, list[int]]] = []
    for _ in range(2):
        async with Emulator(_cfg(fixtures_root, "binance_spot", clock)) as emu:
            binance = await _binance_stream(emu, "binance_spot", clock, 200)
        async with Emulator(_cfg(fixtures_root, "okx", clock)) as emu:
            okx = await _okx_stream(emu, clock, 100)
        runs.append({"aggregate": [e["a"] for e in binance], "trade": [e["l"] for e in binance],
                     "okx trade": [int(p["tradeId"]) for p in okx]})
        clock.advance(1000)  # the restart takes a second
    before, after = runs
    assert {kind: min(ids) > max(before[kind]) for kind, ids in after.items()} == dict.fromkeys(before, True)

"""Poll-series histories answer the values the live streams and polls gave for the same times."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from marketprism_dagster.emulator import Emulator, EmulatorConfig, ManualClock

EIGHT_H = 8 * 3_600_000
FIVE_M = 300_000
DAY = 86_400_000
F = 1_767_225_600_000 + EIGHT_H  # 2026-01-01 08:00 UTC: a funding time
B = F - FIVE_M  # a 5-minute boundary before it


def _cfg(root: Path, venue: str, clock: ManualClock, **kw: Any) -> EmulatorConfig:
    return EmulatorConfig(venues=(venue,), seed=3, fixtures=root, clock=clock, **kw)


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as resp:
        return resp.status, await resp.json()


async def _first_push(http: aiohttp.ClientSession, url: str, subscribe: str | None = None) -> dict[str, Any]:
    async with http.ws_connect(url) as ws:
        if subscribe is not None:
            await ws.send_str(subscribe)
            await ws.receive(timeout=10)  # the ack
        body: dict[str, Any] = orjson.loads((await ws.receive(timeout=10)).data)
        return body


async def test_binance_funding_history_is_the_rate_the_stream_pushed_before_each_funding_time(
        fixtures_root: Path) -> None:
    clock = ManualClock(F - 30_000)
    async with Emulator(_cfg(fixtures_root, "binance_derivatives", clock)) as emu, aiohttp.ClientSession() as http:
        rest = emu.urls["binance_derivatives"]["rest"]
        push = await _first_push(http, emu.urls["binance_derivatives"]["ws"] + "/market/ws/btcusdt@markPrice@1s")
        clock.set(F + 600_000)
        _, around = await _get(http, f"{rest}/fapi/v1/fundingRate?symbol=BTCUSDT&startTime={F - EIGHT_H}&endTime={F}")
        _, from_start = await _get(http, f"{rest}/fapi/v1/fundingRate?symbol=BTCUSDT&startTime={F - 10 * EIGHT_H}"
                                   "&limit=3")
        _, latest = await _get(http, f"{rest}/fapi/v1/fundingRate?symbol=BTCUSDT")
    assert push["T"] == F
    assert [r["fundingTime"] for r in around] == [F - EIGHT_H, F]
    assert around[1]["fundingRate"] == push["r"] and around[1]["symbol"] == "BTCUSDT"
    # more rows than limit between startTime and endTime: startTime + limit, ascending
    assert [r["fundingTime"] for r in from_start] == [F - 10 * EIGHT_H, F - 9 * EIGHT_H, F - 8 * EIGHT_H]
    assert len(latest) == 100 and latest[-1]["fundingTime"] == F  # default limit 100, the most recent


async def test_binance_open_interest_and_ratio_histories_equal_the_polled_values(fixtures_root: Path) -> None:
    clock = ManualClock(B)
    async with Emulator(_cfg(fixtures_root, "binance_derivatives", clock)) as emu, aiohttp.ClientSession() as http:
        rest = emu.urls["binance_derivatives"]["rest"]
        _, live_oi = await _get(http, f"{rest}/fapi/v1/openInterest?symbol=BTCUSDT")
        polled = {}
        for name in ("topLongShortPositionRatio", "globalLongShortAccountRatio"):
            _, rows = await _get(http, f"{rest}/futures/data/{name}?symbol=BTCUSDT&period=5m&limit=1")
            polled[name] = rows[0]
        clock.set(B + 2 * 3_600_000)
        window = f"symbol=BTCUSDT&period=5m&startTime={B}&endTime={B}"
        _, oi_hist = await _get(http, f"{rest}/futures/data/openInterestHist?{window}")
        history = {}
        for name in polled:
            _, rows = await _get(http, f"{rest}/futures/data/{name}?{window}")
            history[name] = rows
        _, default = await _get(http, f"{rest}/futures/data/globalLongShortAccountRatio?symbol=BTCUSDT&period=5m")
        old = clock.now_ms() - 31 * DAY
        _, oldest = await _get(http, f"{rest}/futures/data/openInterestHist?symbol=BTCUSDT&period=1h"
                               f"&startTime={old}&limit=2")
    assert live_oi["time"] == B and [r["timestamp"] for r in oi_hist] == [B]
    assert Decimal(oi_hist[0]["sumOpenInterest"]) == Decimal(live_oi["openInterest"])
    for name, row in polled.items():
        assert row["timestamp"] == B and history[name] == [row]
    assert len(default) == 30 and default[-1]["timestamp"] == B + 2 * 3_600_000  # default limit 30
    # only the latest 30 days exist: a startTime 31 days back starts at the first hour inside them
    first = oldest[0]["timestamp"]
    assert first >= clock.now_ms() - 30 * DAY and first - 3_600_000 < clock.now_ms() - 30 * DAY


async def test_okx_funding_open_interest_and_ratio_histories_equal_what_the_channels_gave(
        fixtures_root: Path) -> None:
    clock = ManualClock(B)
    ws_sub = '{"op":"subscribe","args":[{"channel":"%s","instId":"BTC-USDT-SWAP"}]}'
    ratio = "long-short-account-ratio-contract"
    cfg = _cfg(fixtures_root, "okx", clock, periods={"okx_funding_rate": 0.05, "okx_open_interest": 0.05})
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        rest, ws = emu.urls["okx_derivatives"]["rest"], emu.urls["okx_derivatives"]["ws"] + "/ws/v5/public"
        oi_push = (await _first_push(http, ws, ws_sub % "open-interest"))["data"][0]
        _, ratio_poll = await _get(http, f"{rest}/api/v5/rubik/stat/contracts/{ratio}?instId=BTC-USDT-SWAP"
                                   "&period=5m&limit=1")
        clock.set(F - 30_000)
        funding_push = (await _first_push(http, ws, ws_sub % "funding-rate"))["data"][0]
        clock.set(F + 600_000)
        _, funding_hist = await _get(http, f"{rest}/api/v5/public/funding-rate-history?instId=BTC-USDT-SWAP&limit=2")
        next_push = (await _first_push(http, ws, ws_sub % "funding-rate"))["data"][0]
        _, oi_hist = await _get(http, f"{rest}/api/v5/rubik/stat/contracts/open-interest-history?instId=BTC-USDT-SWAP"
                                f"&period=5m&begin={B - 1}&end={B + 1}")
        _, ratio_hist = await _get(http, f"{rest}/api/v5/rubik/stat/contracts/{ratio}?instId=BTC-USDT-SWAP"
                                   f"&period=5m&end={B + 1}&limit=1")
        _, exclusive = await _get(http, f"{rest}/api/v5/rubik/stat/contracts/{ratio}?instId=BTC-USDT-SWAP"
                                  f"&period=5m&begin={B}&end={B + FIVE_M}")
        _, too_old = await _get(http, f"{rest}/api/v5/rubik/stat/contracts/{ratio}?instId=BTC-USDT-SWAP"
                                f"&period=5m&end={F - 1440 * FIVE_M}")
    assert funding_push["fundingTime"] == str(F)
    settled = funding_hist["data"]
    assert [r["fundingTime"] for r in settled] == [str(F), str(F - EIGHT_H)]  # newest first
    assert settled[0]["fundingRate"] == settled[0]["realizedRate"] == funding_push["fundingRate"]
    assert next_push["settFundingRate"] == funding_push["fundingRate"]  # the next period says the same
    assert oi_push["ts"] == str(B)
    assert oi_hist["data"] == [[str(B), oi_push["oi"], oi_push["oiCcy"], oi_push["oiUsd"]]]
    assert ratio_poll["data"][0][0] == str(B) and ratio_hist["data"] == ratio_poll["data"]
    assert exclusive["data"] == []  # begin and end are exclusive
    assert too_old["data"] == []  # only the latest 1,440 rows


async def test_deribit_dvol_candles_are_built_from_the_pushed_seconds(fixtures_root: Path) -> None:
    minute = F + 60_000
    clock = ManualClock(minute - 2000)
    cfg = _cfg(fixtures_root, "deribit", clock, periods={"deribit_dvol": 0.005})
    pushed: dict[int, float] = {}
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        async with http.ws_connect(emu.urls["deribit_derivatives"]["ws"] + "/ws/api/v2") as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe",
                                "params": {"channels": ["deribit_volatility_index.btc_usd"]}})
            await ws.receive(timeout=10)
            while clock.now_ms() < minute + 62_000:
                data = orjson.loads((await ws.receive(timeout=10)).data)["params"]["data"]
                pushed[data["timestamp"]] = data["volatility"]
                if data["timestamp"] == clock.now_ms():  # one push of this second seen: next second
                    clock.advance(1000)
        base = emu.urls["deribit_derivatives"]["rest"] + "/api/v2/public/get_volatility_index_data?currency=BTC"
        _, seconds = await _get(http, f"{base}&start_timestamp={minute}&end_timestamp={minute + 59_000}&resolution=1")
        _, minutes = await _get(http, f"{base}&start_timestamp={minute}&end_timestamp={minute}&resolution=60")
    in_minute = [pushed[minute + k * 1000] for k in range(60)]
    assert [c[0] for c in seconds["result"]["data"]] == [minute + k * 1000 for k in range(60)]
    assert [(c[1], c[2], c[3], c[4]) for c in seconds["result"]["data"]] == [(v, v, v, v) for v in in_minute]
    assert minutes["result"]["data"] == [[minute, in_minute[0], max(in_minute), min(in_minute), in_minute[-1]]]


async def test_history_pages_walk_back_without_overlap_or_hole(fixtures_root: Path) -> None:
    clock = ManualClock(F + 600_000)
    cfg = EmulatorConfig(venues=("okx", "deribit"), seed=3, fixtures=fixtures_root, clock=clock)
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        okx = emu.urls["okx_derivatives"]["rest"] + "/api/v5/public/funding-rate-history?instId=BTC-USDT-SWAP"
        _, first = await _get(http, f"{okx}&limit=3")
        _, second = await _get(http, f"{okx}&limit=3&after={first['data'][-1]['fundingTime']}")
        _, newer = await _get(http, f"{okx}&before={F - 2 * EIGHT_H}")
        _, full = await _get(http, okx)
        dvol = (emu.urls["deribit_derivatives"]["rest"] + "/api/v2/public/get_volatility_index_data?currency=ETH"
                "&resolution=1&start_timestamp=" + str(F - 1_500_000))
        _, page1 = await _get(http, f"{dvol}&end_timestamp={F}")
        continuation = page1["result"]["continuation"]
        _, page2 = await _get(http, f"{dvol}&end_timestamp={continuation}")
    times = [int(r["fundingTime"]) for r in first["data"] + second["data"]]
    assert times == [F - k * EIGHT_H for k in range(6)]  # newest first, 3 a page, exclusive after
    assert [int(r["fundingTime"]) for r in newer["data"]] == [F, F - EIGHT_H]  # exclusive before
    assert len(full["data"]) == 270  # default limit 400, but only 90 days (3 a day) are kept
    candles1, candles2 = page1["result"]["data"], page2["result"]["data"]
    assert len(candles1) == 1000 and candles1[-1][0] == F and continuation == candles1[0][0] - 1
    stamps = [c[0] for c in candles2 + candles1]
    assert stamps == list(range(F - 1_500_000, F + 1, 1000)) and page2["result"]["continuation"] is None


async def test_dvol_request_over_decades_answers_the_newest_page_without_building_the_range(
        fixtures_root: Path) -> None:
    clock = ManualClock(F)
    cfg = EmulatorConfig(venues=("deribit",), seed=3, fixtures=fixtures_root, clock=clock)
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        url = (emu.urls["deribit_derivatives"]["rest"] + "/api/v2/public/get_volatility_index_data?currency=BTC"
               f"&resolution=1&start_timestamp=0&end_timestamp={F}")
        status, body = await _get(http, url)
    data = body["result"]["data"]
    assert status == 200 and len(data) == 1000 and data[-1][0] == F
    assert body["result"]["continuation"] == F - 999_000 - 1

"""Synth mode speaks each venue's protocol: REST shapes, periods, limits, heartbeats."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import aiohttp
import orjson

from marketprism_dagster.emulator import Emulator, EmulatorConfig, ManualClock

NOW = 1_767_225_723_456  # 2026-01-01 00:02:03.456 UTC
EIGHT_H = 8 * 3_600_000


def _cfg(root: Path, *venues: str, **kw: object) -> EmulatorConfig:
    return EmulatorConfig(venues=venues, fixtures=root, clock=ManualClock(NOW), **kw)  # type: ignore[arg-type]


async def test_binance_weight_header_then_429_then_418_with_retry_after(fixtures_root: Path) -> None:
    async with Emulator(_cfg(fixtures_root, "binance_spot", binance_weight_limit=12)) as emu, \
            aiohttp.ClientSession() as http:
        url = emu.urls["binance_spot"]["rest"] + "/api/v3/depth?symbol=BTCUSDT&limit=10"
        seen = []
        for _ in range(4):
            async with http.get(url) as resp:
                seen.append((resp.status, resp.headers["X-MBX-USED-WEIGHT-1M"], resp.headers.get("Retry-After")))
    # weight 5 per call: 5, 10, then over the budget -> 429 (until the minute ends: 57 s), then banned -> 418
    assert seen == [(200, "5", None), (200, "10", None), (429, "10", "57"), (418, "10", "120")]


async def test_binance_usdm_rest_endpoints_answer_in_the_documented_shapes(fixtures_root: Path) -> None:
    async with Emulator(_cfg(fixtures_root, "binance_derivatives")) as emu, aiohttp.ClientSession() as http:
        rest = emu.urls["binance_derivatives"]["rest"]
        async with http.get(rest + "/fapi/v1/premiumIndex?symbol=BTCUSDT") as resp:
            prem = await resp.json()
        assert prem["symbol"] == "BTCUSDT" and prem["time"] == NOW
        assert prem["nextFundingTime"] % EIGHT_H == 0 and 0 < prem["nextFundingTime"] - NOW <= EIGHT_H
        async with http.get(rest + "/fapi/v1/openInterest?symbol=ETHUSDT") as resp:
            assert (await resp.json())["symbol"] == "ETHUSDT"
        for name in ("topLongShortPositionRatio", "topLongShortAccountRatio", "globalLongShortAccountRatio"):
            async with http.get(f"{rest}/futures/data/{name}?symbol=BTCUSDT&period=5m&limit=3") as resp:
                rows = await resp.json()
            assert [r["timestamp"] for r in rows] == [NOW - NOW % 300_000 - k * 300_000 for k in (2, 1, 0)]
            for r in rows:
                assert abs(float(r["longAccount"]) + float(r["shortAccount"]) - 1) < 1e-9
                assert abs(float(r["longShortRatio"]) - float(r["longAccount"]) / float(r["shortAccount"])) < 1e-3
        async with http.get(f"{rest}/futures/data/openInterestHist?symbol=BTCUSDT&period=5m&limit=2") as resp:
            hist = await resp.json()
        async with http.get(f"{rest}/futures/data/openInterestHist?symbol=BTCUSDT&period=5m&limit=2") as resp:
            assert await resp.json() == hist  # a repeated poll returns identical points
        async with http.get(rest + "/fapi/v1/depth?symbol=NOPEUSDT") as resp:
            assert resp.status == 400 and (await resp.json()) == {"code": -1121, "msg": "Invalid symbol."}


async def test_binance_live_subscribe_and_mark_price_and_wrong_route(fixtures_root: Path) -> None:
    cfg = _cfg(fixtures_root, "binance_derivatives", periods={"binance_mark_price": 0.05})
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        ws_base = emu.urls["binance_derivatives"]["ws"]
        async with http.ws_connect(ws_base + "/market/stream") as ws:
            await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@markPrice@1s","btcusdt@depth"],"id":7}')
            assert orjson.loads((await ws.receive(timeout=5)).data) == {"result": None, "id": 7}
            msg = orjson.loads((await ws.receive(timeout=5)).data)
            assert msg["stream"] == "btcusdt@markPrice@1s"  # depth is not served on /market
            assert msg["data"]["e"] == "markPriceUpdate" and msg["data"]["T"] % EIGHT_H == 0
            await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":8}')
            while True:
                reply = orjson.loads((await ws.receive(timeout=5)).data)
                if reply.get("id") == 8:
                    break
            assert reply["result"] == ["btcusdt@depth", "btcusdt@markPrice@1s"]


async def test_trades_have_unique_ids_and_some_share_a_millisecond(fixtures_root: Path) -> None:
    async with Emulator(_cfg(fixtures_root, "okx", "binance_spot", rate=0)) as emu, aiohttp.ClientSession() as http:
        async with http.ws_connect(emu.urls["binance_spot"]["ws"] + "/ws/btcusdt@aggTrade") as ws:
            trades = [orjson.loads((await ws.receive()).data) for _ in range(300)]
        assert len({t["a"] for t in trades}) == 300
        assert len({t["T"] for t in trades}) == 1  # the manual clock does not move: all in one ms
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str('{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}')
            await ws.receive()
            okx = [orjson.loads((await ws.receive()).data)["data"][0] for _ in range(300)]
        assert len({t["tradeId"] for t in okx}) == 300 and {t["ts"] for t in okx} == {str(NOW)}


async def test_okx_rest_funding_on_8h_boundaries_ctval_and_rubik_on_5m(fixtures_root: Path) -> None:
    async with Emulator(_cfg(fixtures_root, "okx")) as emu, aiohttp.ClientSession() as http:
        rest = emu.urls["okx_derivatives"]["rest"]
        async with http.get(rest + "/api/v5/public/funding-rate?instId=BTC-USDT-SWAP") as resp:
            fund = (await resp.json())["data"][0]
        assert int(fund["fundingTime"]) % EIGHT_H == 0
        assert int(fund["nextFundingTime"]) - int(fund["fundingTime"]) == EIGHT_H
        async with http.get(rest + "/api/v5/public/instruments?instType=SWAP&instId=BTC-USDT-SWAP") as resp:
            assert (await resp.json())["data"][0]["ctVal"] == "0.01"
        async with http.get(rest + "/api/v5/public/open-interest?instType=SWAP&instId=BTC-USDT-SWAP") as resp:
            oi = (await resp.json())["data"][0]
        assert abs(float(oi["oi"]) * 0.01 - float(oi["oiCcy"])) < 1e-6
        for name in ("long-short-account-ratio-contract", "long-short-account-ratio-contract-top-trader",
                     "long-short-position-ratio-contract-top-trader"):
            query = "instId=BTC-USDT-SWAP&period=5m&limit=3"
            async with http.get(f"{rest}/api/v5/rubik/stat/contracts/{name}?{query}") as r:
                body = await r.json()
            assert body["code"] == "0"
            assert [int(row[0]) for row in body["data"]] == [NOW - NOW % 300_000 - k * 300_000 for k in (0, 1, 2)]
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str("not json")
            err = orjson.loads((await ws.receive()).data)
            assert err["event"] == "error" and err["code"] == "60012"


async def test_okx_liquidation_orders_carry_several_details(fixtures_root: Path) -> None:
    cfg = _cfg(fixtures_root, "okx", periods={"liquidation": 0.01})
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
        async with http.ws_connect(emu.urls["okx_derivatives"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str('{"op":"subscribe","args":[{"channel":"liquidation-orders","instType":"SWAP"}]}')
            await ws.receive()
            item = orjson.loads((await ws.receive(timeout=5)).data)["data"][0]
    assert item["instId"] in ("BTC-USDT-SWAP", "ETH-USDT-SWAP") and len(item["details"]) >= 2


async def test_deribit_dvol_heartbeat_and_candles(fixtures_root: Path) -> None:
    cfg = _cfg(fixtures_root, "deribit", heartbeat_time_scale=0.005)
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        async with http.ws_connect(emu.urls["deribit_derivatives"]["ws"] + "/ws/api/v2") as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "public/subscribe",
                                "params": {"channels": ["deribit_volatility_index.btc_usd"]}})
            assert (await ws.receive_json())["result"] == ["deribit_volatility_index.btc_usd"]
            note = await ws.receive_json()
            assert note["params"]["data"]["index_name"] == "btc_usd" and note["params"]["data"]["timestamp"] == NOW
            await ws.send_json({"jsonrpc": "2.0", "id": 2, "method": "public/set_heartbeat",
                                "params": {"interval": 10}})
            kinds = []
            while len(kinds) < 2:  # answer the first test_request, ignore the second: the server hangs up
                msg = await ws.receive(timeout=5)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                body = json.loads(msg.data)
                if body.get("method") == "heartbeat":
                    kinds.append(body["params"]["type"])
                    if len(kinds) == 1:
                        await ws.send_json({"jsonrpc": "2.0", "id": 3, "method": "public/test", "params": {}})
            assert kinds == ["test_request", "test_request"]
            closing = await ws.receive(timeout=5)
            while closing.type == aiohttp.WSMsgType.TEXT:
                closing = await ws.receive(timeout=5)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        url = (emu.urls["deribit_derivatives"]["rest"] + "/api/v2/public/get_volatility_index_data?currency=BTC"
               f"&start_timestamp={NOW - 300_000}&end_timestamp={NOW}&resolution=60")
        async with http.get(url) as resp:
            result = (await resp.json())["result"]
    assert [c[0] % 60_000 for c in result["data"]] == [0] * 5 and result["continuation"] is None
    assert all(c[3] <= min(c[1], c[4]) and c[2] >= max(c[1], c[4]) for c in result["data"])


async def test_synth_is_deterministic_for_a_seed(fixtures_root: Path) -> None:
    async def first(seed: int) -> list[str]:
        async with Emulator(_cfg(fixtures_root, "binance_spot", rate=0, seed=seed)) as emu, \
                aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
            async with http.ws_connect(emu.urls["binance_spot"]["ws"] + "/ws/ethusdt@depth@100ms") as ws:
                return [(await ws.receive()).data for _ in range(200)]

    assert await first(11) == await first(11)
    assert await first(11) != await first(12)


def test_start_in_thread_serves_sync_clients(fixtures_root: Path) -> None:
    handle = Emulator.start_in_thread(EmulatorConfig(venues=("okx_spot",), fixtures=fixtures_root,
                                                     faults="rest_5xx@okx:at=2"))
    try:
        assert set(handle.urls) == {"okx_spot", "okx_derivatives"}
        url = handle.urls["okx_spot"]["rest"] + "/api/v5/market/books?instId=BTC-USDT&sz=5"
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.loads(resp.read())["data"][0]
        assert len(data["bids"]) == 5 and float(data["bids"][0][0]) < float(data["asks"][0][0])
        try:
            urllib.request.urlopen(url, timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
        assert handle.faults_fired == {"rest_5xx": {"okx": 1}}
        assert handle.stats["okx"]["rest_requests"] == 2
    finally:
        handle.stop()

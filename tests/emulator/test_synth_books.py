"""A reference book built from 100k synth updates obeys every venue rule."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson

from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.emulator.okx import okx_checksum

N_BINANCE_SPOT = 30_000
N_BINANCE_USDM = 30_000
N_OKX = 40_000


def _apply(book: dict[str, str], levels: list[list[str]]) -> None:
    for price, qty, *_ in levels:
        if float(qty) == 0:
            book.pop(price, None)
        else:
            book[price] = qty


def _top(book: dict[str, str], n: int, descending: bool) -> list[list[str]]:
    prices = sorted(book, key=float, reverse=descending)[:n]
    return [[p, book[p]] for p in prices]


async def _binance_book(http: aiohttp.ClientSession, base: dict[str, str], usdm: bool, n: int) -> None:
    """Snapshot + buffered diffs per the venue rules, strict chaining, final equality with REST."""
    ws_path = "/public/ws/btcusdt@depth@100ms" if usdm else "/ws/btcusdt@depth@100ms"
    depth = f"{base['rest']}{'/fapi/v1' if usdm else '/api/v3'}/depth?symbol=BTCUSDT&limit=1000"
    async with http.ws_connect(base["ws"] + ws_path) as ws:
        buffered = [orjson.loads((await ws.receive()).data) for _ in range(20)]
        async with http.get(depth) as resp:
            snap = await resp.json()
        last_id = snap["lastUpdateId"]
        bids = {p: q for p, q in snap["bids"]}
        asks = {p: q for p, q in snap["asks"]}
        prev_u: int | None = None
        applied = 0
        while applied < n:
            ev = buffered.pop(0) if buffered else orjson.loads((await ws.receive()).data)
            if prev_u is None:
                if ev["u"] < last_id or (not usdm and ev["u"] <= last_id):
                    continue
                if usdm:
                    assert ev["U"] <= last_id <= ev["u"]
                else:
                    assert ev["U"] <= last_id + 1 <= ev["u"]
            else:
                if usdm:
                    assert ev["pu"] == prev_u
                assert ev["U"] == prev_u + 1
            assert ev["u"] >= ev["U"]
            _apply(bids, ev["b"])
            _apply(asks, ev["a"])
            prev_u = ev["u"]
            applied += 1
        assert prev_u is not None
        async with http.get(depth) as resp:
            final = await resp.json()
        while prev_u < final["lastUpdateId"]:  # catch up to the snapshot, then compare
            ev = orjson.loads((await ws.receive()).data)
            if usdm:
                assert ev["pu"] == prev_u
            assert ev["U"] == prev_u + 1
            _apply(bids, ev["b"])
            _apply(asks, ev["a"])
            prev_u = ev["u"]
        assert prev_u == final["lastUpdateId"]
        assert _top(bids, 1000, True) == final["bids"]
        assert _top(asks, 1000, False) == final["asks"]
        assert float(final["bids"][0][0]) < float(final["asks"][0][0])


async def _okx_book(http: aiohttp.ClientSession, base: dict[str, str], n: int) -> None:
    async with http.ws_connect(base["ws"] + "/ws/v5/public") as ws:
        await ws.send_str('{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT-SWAP"}]}')
        ack = orjson.loads((await ws.receive()).data)
        assert ack["event"] == "subscribe"
        bids: dict[str, str] = {}
        asks: dict[str, str] = {}
        prev_seq: int | None = None
        for i in range(n + 1):
            msg = orjson.loads((await ws.receive()).data)
            data = msg["data"][0]
            if i == 0:
                assert msg["action"] == "snapshot" and data["prevSeqId"] == -1
            else:
                assert msg["action"] == "update" and data["prevSeqId"] == prev_seq
                assert data["seqId"] > data["prevSeqId"]
            prev_seq = data["seqId"]
            _apply(bids, data["bids"])
            _apply(asks, data["asks"])
            assert okx_checksum(_top(bids, 25, True), _top(asks, 25, False)) == data["checksum"]


async def test_reference_books_from_100k_synth_updates_validate_every_rule(fixtures_root: Path) -> None:
    cfg = EmulatorConfig(venues=("binance_spot", "binance_derivatives", "okx"), rate=0, seed=3, fixtures=fixtures_root,
                         okx_books="checksum")
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        await _binance_book(http, emu.urls["binance_spot"], False, N_BINANCE_SPOT)
        await _binance_book(http, emu.urls["binance_derivatives"], True, N_BINANCE_USDM)
        await _okx_book(http, emu.urls["okx_derivatives"], N_OKX)
    assert N_BINANCE_SPOT + N_BINANCE_USDM + N_OKX == 100_000

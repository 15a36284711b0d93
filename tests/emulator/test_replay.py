"""Replay serves every recorded session over a real WebSocket, byte for byte, in order."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.sessions import payload_text, read_session


def _records(root: Path, name: str) -> list[dict]:
    return read_session(root / "sessions" / f"{name}.jsonl")


_bytes = payload_text  # the recorded text: ``raw``, or ``data`` in compact JSON


async def _collect(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[str]:
    out = []
    for _ in range(n):
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.append(msg.data)
    return out


def _cfg(root: Path, venue: str, okx_books: str = "zero") -> EmulatorConfig:
    return EmulatorConfig(mode="replay", venues=(venue,), speed=0, fixtures=root, okx_books=okx_books)


async def test_binance_spot_session_replays_byte_identical(fixtures_root: Path) -> None:
    recs = _records(fixtures_root, "binance_spot.ws")
    connect = urlsplit(recs[0]["url"])
    expected = [_bytes(r) for r in recs if r["kind"] == "recv"]
    async with Emulator(_cfg(fixtures_root, "binance_spot")) as emu, aiohttp.ClientSession() as http:
        url = f"{emu.urls['binance_spot']['ws']}{connect.path}?{connect.query}"
        async with http.ws_connect(url) as ws:
            assert await _collect(ws, len(expected)) == expected
    assert len(expected) == 265


async def test_binance_usdm_session_replays_split_over_public_and_market_routes(fixtures_root: Path) -> None:
    recs = _records(fixtures_root, "binance_usdm.ws")
    streams = urlsplit(recs[0]["url"]).query.removeprefix("streams=").split("/")
    recv = [r for r in recs if r["kind"] == "recv"]
    public = [s for s in streams if "@depth" in s or "@bookTicker" in s]
    market = [s for s in streams if s not in public]
    async with Emulator(_cfg(fixtures_root, "binance_derivatives")) as emu, aiohttp.ClientSession() as http:
        base = emu.urls["binance_derivatives"]["ws"]
        for route, names in (("public", public), ("market", market)):
            expected = [_bytes(r) for r in recv if r["data"]["stream"] in names]
            async with http.ws_connect(f"{base}/{route}/stream?streams={'/'.join(names)}") as ws:
                assert await _collect(ws, len(expected)) == expected
            assert expected


@pytest.mark.parametrize("okx_books", ["zero", "rest", "checksum"])
async def test_okx_session_replays_acks_and_frames_byte_identical(fixtures_root: Path, okx_books: str) -> None:
    """The books protocol setting shapes synth traffic only: a recording replays as recorded."""
    recs = _records(fixtures_root, "okx.ws")
    sends = [_bytes(r) for r in recs if r["kind"] == "send"]
    expected = [_bytes(r) for r in recs if r["kind"] == "recv"]
    async with Emulator(_cfg(fixtures_root, "okx", okx_books)) as emu, aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            for text in sends:
                await ws.send_str(text)
            assert await _collect(ws, len(expected)) == expected
            await ws.send_str("ping")
            assert (await ws.receive(timeout=5)).data == "pong"
    assert len(expected) == 410


async def test_deribit_session_replays_rpc_answer_and_notifications_byte_identical(fixtures_root: Path) -> None:
    recs = _records(fixtures_root, "deribit.ws")
    sends = [_bytes(r) for r in recs if r["kind"] == "send"]
    expected = [_bytes(r) for r in recs if r["kind"] == "recv"]
    async with Emulator(_cfg(fixtures_root, "deribit")) as emu, aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
        async with http.ws_connect(emu.urls["deribit_derivatives"]["ws"] + "/ws/api/v2") as ws:
            for text in sends:
                await ws.send_str(text)
            assert await _collect(ws, len(expected)) == expected


async def test_replay_rest_answers_from_recorded_snapshots_and_documented_examples(fixtures_root: Path) -> None:
    http_rec = _records(fixtures_root, "binance_usdm.http")[0]
    path = urlsplit(http_rec["url"])
    venues = ("binance_derivatives", "okx", "deribit")
    cfg = EmulatorConfig(mode="replay", venues=venues, speed=0, fixtures=fixtures_root)
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        rest = emu.urls["binance_derivatives"]["rest"]
        async with http.get(f"{rest}{path.path}?{path.query}") as resp:
            assert await resp.text() == _bytes(http_rec)
            assert resp.headers["X-MBX-USED-WEIGHT-1M"] == "20"
        async with http.get(f"{rest}/fapi/v1/premiumIndex?symbol=ETHUSDT") as resp:
            body = await resp.json()
            assert body["symbol"] == "ETHUSDT" and body["markPrice"] == "11793.63104562"
        okx = emu.urls["okx_derivatives"]["rest"]
        async with http.get(f"{okx}/api/v5/public/funding-rate?instId=ETH-USDT-SWAP") as resp:
            body = await resp.json()
            assert body["data"][0]["instId"] == "ETH-USDT-SWAP"
            assert body["data"][0]["fundingRate"] == "0.0000182221218054"
        async with http.get(f"{emu.urls['okx_spot']['rest']}/api/v5/public/instruments?instType=SWAP") as resp:
            items = {i["instId"]: i for i in (await resp.json())["data"]}
            assert items["BTC-USDT-SWAP"]["ctVal"] == "0.01"

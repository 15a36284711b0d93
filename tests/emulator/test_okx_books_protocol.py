"""OKX books protocols (okx_books = checksum | zero | rest) and the REST snapshot that bridges to the stream."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.emulator.okx import okx_checksum
from tests.support.okx_book_client import SUBSCRIBE, ClientBook, next_json, rest_book


def _cfg(root: Path, mode: str, **kw: Any) -> EmulatorConfig:
    return EmulatorConfig(venues=("okx",), rate=0, seed=9, fixtures=root, okx_books=mode, **kw)


@pytest.mark.parametrize("mode", ["checksum", "zero", "rest"])
async def test_books_frames_follow_the_selected_protocol(fixtures_root: Path, mode: str) -> None:
    async with Emulator(_cfg(fixtures_root, mode)) as emu, aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str(SUBSCRIBE % "BTC-USDT")
            assert (await next_json(ws))["event"] == "subscribe"
            frames = [await next_json(ws) for _ in range(300)]
    actions = [f["action"] for f in frames]
    data = [f["data"][0] for f in frames]
    assert all(f["arg"] == {"channel": "books", "instId": "BTC-USDT"} for f in frames)
    assert all("checksum" in d for d in data)
    if mode == "rest":
        assert set(actions) == {"update"}  # no snapshot in the stream at all
    else:
        assert actions[0] == "snapshot" and set(actions[1:]) == {"update"}
        assert data[0]["prevSeqId"] == -1 and len(data[0]["bids"]) > 100
    updates = data if mode == "rest" else data[1:]
    for prev, cur in pairwise(data):
        assert cur["prevSeqId"] == prev["seqId"] < cur["seqId"]
    if mode != "checksum":
        assert {d["checksum"] for d in data} == {0}
        return
    book = ClientBook(data[0])
    assert okx_checksum(*book.top(25)) == data[0]["checksum"]
    for d in updates:
        book.apply(d)
        assert okx_checksum(*book.top(25)) == d["checksum"]
    assert len({d["checksum"] for d in data}) > 250  # real checksums, not a constant


@pytest.mark.parametrize("mode", ["rest", "zero"])
async def test_rest_snapshot_plus_following_updates_equals_a_later_rest_snapshot(fixtures_root: Path,
                                                                                mode: str) -> None:
    async with Emulator(_cfg(fixtures_root, mode)) as emu, aiohttp.ClientSession() as http:
        rest, iid = emu.urls["okx_derivatives"]["rest"], "BTC-USDT-SWAP"
        async with http.ws_connect(emu.urls["okx_derivatives"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str(SUBSCRIBE % iid)
            await next_json(ws)
            buffered = [m["data"][0] for m in [await next_json(ws) for _ in range(30)] if m["action"] == "update"]
            snap = await rest_book(http, rest, iid)
            assert all(len(lvl) == 4 and lvl[2] == "0" for lvl in snap["bids"] + snap["asks"])
            book = ClientBook(snap)
            pending = [u for u in buffered if u["seqId"] > snap["seqId"]]  # drop what the snapshot covers
            applied = 0
            while applied < 3000:
                upd = pending.pop(0) if pending else (await next_json(ws))["data"][0]
                if upd["seqId"] <= snap["seqId"]:
                    continue
                if applied == 0:
                    assert upd["prevSeqId"] <= snap["seqId"] < upd["seqId"]
                else:
                    assert upd["prevSeqId"] == book.seq
                book.apply(upd)
                applied += 1
            later = await rest_book(http, rest, iid)
            while book.seq < later["seqId"]:  # the stream catches up with the later snapshot
                upd = (await next_json(ws))["data"][0]
                assert upd["prevSeqId"] == book.seq
                book.apply(upd)
    assert book.seq == later["seqId"]
    assert book.top(400) == ([lvl[:2] for lvl in later["bids"]], [lvl[:2] for lvl in later["asks"]])
    assert float(later["bids"][0][0]) < float(later["asks"][0][0])


async def test_rest_books_sizes_unknown_instrument_and_checksum_mode_seq(fixtures_root: Path) -> None:
    async with Emulator(_cfg(fixtures_root, "checksum")) as emu, aiohttp.ClientSession() as http:
        rest = emu.urls["okx_spot"]["rest"]
        assert len((await rest_book(http, rest, "ETH-USDT", 1))["bids"]) == 1
        assert len((await rest_book(http, rest, "ETH-USDT", 5))["asks"]) == 5
        async with http.get(f"{rest}/api/v5/market/books?instId=ETH-USDT") as resp:
            one = (await resp.json())["data"][0]
        assert len(one["bids"]) == len(one["asks"]) == 1 and isinstance(one["seqId"], int)
        async with http.get(f"{rest}/api/v5/market/books?instId=NOPE-USDT&sz=5") as resp:
            assert resp.status == 200
            assert await resp.json() == {"code": "51001", "data": [],
                                         "msg": "Instrument ID or Spread ID doesn't exist."}
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str(SUBSCRIBE % "ETH-USDT")
            await next_json(ws)
            pushed = (await next_json(ws))["data"][0]
        assert pushed["seqId"] == one["seqId"]  # nothing streamed in between: the same book state
        assert [lvl[:2] for lvl in pushed["bids"][:1]] == [lvl[:2] for lvl in one["bids"]]


def test_okx_books_setting_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="checksum, zero, rest"):
        EmulatorConfig(okx_books="crc")
    assert EmulatorConfig().options["okx_books"] == "zero"

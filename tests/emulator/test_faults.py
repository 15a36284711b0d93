"""Each fault kind fires on its schedule, is counted and does what it says."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from marketprism_dagster.emulator import Emulator, EmulatorConfig, FaultPlan, FaultSpecError
from marketprism_dagster.emulator.okx import okx_checksum


def test_fault_spec_grammar_parses_targets_schedules_and_options() -> None:
    plan = FaultPlan.parse("disconnect@5s,gap@binance_derivatives:every=1000,stall@okx:at=50:for=300ms,"
                           "rest_5xx@binance:count=2:path=/depth")
    disconnect, gap, stall, rest = plan.rules
    assert disconnect.after == 5.0 and len(disconnect.venues) == 4
    assert gap.venues == ("binance_derivatives",) and gap.every == 1000
    assert stall.at == 50 and stall.duration == pytest.approx(0.3) and stall.venues == ("okx",)
    assert rest.venues == ("binance_spot", "binance_derivatives") and rest.count == 2 and rest.path == "/depth"
    for bad in ("explode@okx", "gap@mars", "gap@okx:at=zero", "gap@okx:when=1"):
        with pytest.raises(FaultSpecError):
            FaultPlan.parse(bad)


def _cfg(root: Path, venue: str, faults: str, okx_books: str = "zero") -> EmulatorConfig:
    return EmulatorConfig(venues=(venue,), rate=0, seed=5, faults=faults, fixtures=root, okx_books=okx_books)


async def _binance_depth(root: Path, faults: str, n: int) -> tuple[list[bytes | str], Emulator]:
    async with Emulator(_cfg(root, "binance_derivatives", faults)) as emu, aiohttp.ClientSession() as http:
        out: list[bytes | str] = []
        async with http.ws_connect(emu.urls["binance_derivatives"]["ws"] + "/public/ws/btcusdt@depth") as ws:
            for _ in range(n):
                msg = await ws.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                out.append(msg.data)
        return out, emu


async def test_gap_drops_exactly_the_scheduled_depth_diffs(fixtures_root: Path) -> None:
    frames, emu = await _binance_depth(fixtures_root, "gap@binance_derivatives:every=100", 350)
    events = [orjson.loads(f) for f in frames]
    breaks = [i for i in range(1, len(events)) if events[i]["pu"] != events[i - 1]["u"]]
    # frames 100, 200, 300 were dropped: the client sees breaks at its indexes 99, 198, 297
    assert breaks == [99, 198, 297]
    # the server runs ahead of the reader, so later gaps may have fired too: check the schedule
    assert [e.at_event for e in emu.ledger.events][:3] == [100, 200, 300]
    assert {e.kind for e in emu.ledger.events} == {"gap"}


async def test_duplicate_malformed_and_reorder_fire_at_their_message_counts(fixtures_root: Path) -> None:
    frames, emu = await _binance_depth(fixtures_root, "duplicate@binance_derivatives:at=10,"
                                       "malformed@binance_derivatives:at=20,reorder@binance_derivatives:at=30", 40)
    assert frames[9] == frames[10]  # the 10th frame twice
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(frames[20])  # the 20th frame (index 19, +1 for the duplicate) is cut
    events = [orjson.loads(f) for i, f in enumerate(frames) if i != 20]
    # reorder: frame 30 comes after frame 31
    ids = [e["u"] for e in events]
    assert ids[29] > ids[30] and events[29]["pu"] == ids[30]
    assert emu.faults_fired == {"duplicate": {"binance_derivatives": 1}, "malformed": {"binance_derivatives": 1},
                                "reorder": {"binance_derivatives": 1}}


async def test_disconnect_closes_the_socket_after_the_scheduled_frame(fixtures_root: Path) -> None:
    frames, emu = await _binance_depth(fixtures_root, "disconnect@binance_derivatives:at=25", 100)
    assert len(frames) == 24
    assert emu.faults_fired["disconnect"] == {"binance_derivatives": 1}


async def test_stall_pauses_then_resumes_the_stream(fixtures_root: Path) -> None:
    frames, emu = await _binance_depth(fixtures_root, "stall@binance_derivatives:at=5:for=200ms", 50)
    events = [orjson.loads(f) for f in frames]
    assert len(events) == 50
    assert all(events[i]["pu"] == events[i - 1]["u"] for i in range(1, 50))  # nothing lost, only late
    assert emu.faults_fired["stall"] == {"binance_derivatives": 1}


async def test_bad_checksum_corrupts_the_scheduled_okx_books_frame(fixtures_root: Path) -> None:
    cfg = _cfg(fixtures_root, "okx", "bad_checksum@okx:at=15", "checksum")
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str('{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}')
            await ws.receive()
            bids: dict[str, str] = {}
            asks: dict[str, str] = {}
            bad = []
            for i in range(1, 31):  # data frame i (the snapshot is frame 1)
                data = orjson.loads((await ws.receive()).data)["data"][0]
                for side, levels in ((bids, data["bids"]), (asks, data["asks"])):
                    for px, sz, *_ in levels:
                        if sz == "0":
                            side.pop(px, None)
                        else:
                            side[px] = sz
                top_b = [[p, bids[p]] for p in sorted(bids, key=float, reverse=True)[:25]]
                top_a = [[p, asks[p]] for p in sorted(asks, key=float)[:25]]
                if okx_checksum(top_b, top_a) != data["checksum"]:
                    bad.append(i)
    assert bad == [15]
    assert emu.faults_fired == {"bad_checksum": {"okx": 1}}


async def test_time_scheduled_fault_fires_after_its_delay(fixtures_root: Path) -> None:
    cfg = EmulatorConfig(venues=("binance_spot",), rate=200, faults="disconnect@binance_spot:after=1s",
                         fixtures=fixtures_root)
    before_start = time.monotonic()
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        async with http.ws_connect(emu.urls["binance_spot"]["ws"] + "/ws/btcusdt@depth") as ws:
            connected_at = time.monotonic()
            received = 0
            while (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
                received += 1
        assert emu.faults_fired == {"disconnect": {"binance_spot": 1}}
        (event,) = emu.ledger.events
        assert event.kind == "disconnect" and event.monotonic - before_start >= 1.0  # never before its time
        if connected_at - before_start < 0.9:  # connected well before the fault was due (not on a loaded machine)
            assert received > 0


async def test_rest_faults_answer_5xx_429_and_timeout_on_schedule(fixtures_root: Path) -> None:
    spec = "rest_5xx@binance_spot:count=2,rest_429@okx:at=2,rest_timeout@deribit:for=2s"
    cfg = EmulatorConfig(venues=("binance_spot", "okx", "deribit"), faults=spec, fixtures=fixtures_root)
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        spot = emu.urls["binance_spot"]["rest"] + "/api/v3/depth?symbol=BTCUSDT&limit=5"
        statuses = []
        for _ in range(3):
            async with http.get(spot) as resp:
                statuses.append(resp.status)
        assert statuses == [503, 503, 200]
        okx = emu.urls["okx_derivatives"]["rest"] + "/api/v5/public/funding-rate?instId=BTC-USDT-SWAP"
        okx_answers = []
        for _ in range(3):
            async with http.get(okx) as resp:
                okx_answers.append((resp.status, (await resp.json())["code"], resp.headers.get("Retry-After")))
        assert okx_answers == [(200, "0", None), (429, "50011", "1"), (200, "0", None)]
        dvol = emu.urls["deribit_derivatives"]["rest"] + "/api/v2/public/get_time"
        with pytest.raises(asyncio.TimeoutError):
            async with http.get(dvol, timeout=aiohttp.ClientTimeout(total=0.2)):
                pass
        async with http.get(dvol) as resp:
            assert resp.status == 200
    assert emu.faults_fired == {"rest_5xx": {"binance_spot": 2}, "rest_429": {"okx": 1},
                                "rest_timeout": {"deribit": 1}}

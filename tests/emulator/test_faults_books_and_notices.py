"""Today's venue faults seen by a client over real sockets: OKX REST book snapshots that are stale
or ahead of the stream, OKX error bodies with HTTP 200, shutdown notices, seqId gaps without checksums."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from marketprism_dagster.emulator import Emulator, EmulatorConfig, FaultPlan, FaultSpecError
from tests.support.okx_book_client import SUBSCRIBE, ClientBook, next_json, rest_book


def test_grammar_of_the_new_kinds_and_their_venues() -> None:
    stale, ahead, busy, notice = FaultPlan.parse(
        "book_snapshot_stale,book_snapshot_ahead@okx_spot:n=7,rest_code_200@okx:at=2:code=50013,shutdown_notice").rules
    assert stale.venues == ("okx",) and stale.path == "/api/v5/market/books" and stale.is_rest
    assert ahead.updates_ahead() == 7 and stale.updates_ahead() == 5
    assert busy.code == "50013" and busy.at == 2
    assert notice.venues == ("binance_spot", "binance_derivatives", "okx") and notice.hold_seconds() == 3.0
    for bad in ("rest_code_200@binance", "shutdown_notice@deribit", "book_snapshot_ahead@okx:n=101",
                "book_snapshot_stale@okx:n=2", "rest_code_200@okx:code=50001", "gap@okx:code=50011"):
        with pytest.raises(FaultSpecError):
            FaultPlan.parse(bad)


def _cfg(root: Path, faults: str, mode: str = "rest", rate: float = 500, venues: tuple[str, ...] = ("okx",)
         ) -> EmulatorConfig:
    return EmulatorConfig(venues=venues, rate=rate, seed=13, fixtures=root, okx_books=mode, faults=faults)


async def test_stale_snapshot_is_a_real_past_state_older_than_the_buffer_then_a_refetch_bridges(
        fixtures_root: Path) -> None:
    iid = "BTC-USDT"
    async with Emulator(_cfg(fixtures_root, "book_snapshot_stale@okx", mode="zero")) as emu, \
            aiohttp.ClientSession() as http:
        ws_url, rest = emu.urls["okx_spot"]["ws"] + "/ws/v5/public", emu.urls["okx_spot"]["rest"]
        async with http.ws_connect(ws_url) as early, http.ws_connect(ws_url) as late:
            # an earlier subscriber rebuilds every state from its pushed snapshot: the witness
            await early.send_str(SUBSCRIBE % iid)
            await next_json(early)
            witness = ClientBook((await next_json(early))["data"][0])
            states = {witness.seq: witness.top(400)}
            for _ in range(10):
                witness.apply((await next_json(early))["data"][0])
                states[witness.seq] = witness.top(400)
            # the late client subscribes, buffers, then asks for the snapshot
            await late.send_str(SUBSCRIBE % iid)
            await next_json(late)
            await next_json(late)  # its pushed snapshot: this client works the REST way and ignores it
            buffered = [(await next_json(late))["data"][0] for _ in range(5)]
            stale = await rest_book(http, rest, iid)
            assert stale["seqId"] < buffered[0]["prevSeqId"]  # cannot bridge: the client must refetch
            while witness.seq < stale["seqId"]:
                witness.apply((await next_json(early))["data"][0])
                states[witness.seq] = witness.top(400)
            assert stale["seqId"] in states  # a state the book really had
            assert states[stale["seqId"]] == ([lvl[:2] for lvl in stale["bids"]], [lvl[:2] for lvl in stale["asks"]])
            fresh = await rest_book(http, rest, iid)
            assert fresh["seqId"] >= buffered[0]["prevSeqId"]
            book = ClientBook(fresh)
            upd = next((u for u in buffered if u["seqId"] > fresh["seqId"]), None)
            while upd is None:
                candidate = (await next_json(late))["data"][0]
                upd = candidate if candidate["seqId"] > fresh["seqId"] else None
            assert upd["prevSeqId"] == fresh["seqId"]  # the refetched snapshot bridges
            book.apply(upd)
    assert emu.faults_fired == {"book_snapshot_stale": {"okx": 1}}


async def test_ahead_snapshot_covers_updates_not_yet_streamed_and_bridges_inside_the_buffer(
        fixtures_root: Path) -> None:
    iid = "ETH-USDT-SWAP"
    async with Emulator(_cfg(fixtures_root, "book_snapshot_ahead@okx:n=6")) as emu, aiohttp.ClientSession() as http:
        rest = emu.urls["okx_derivatives"]["rest"]
        async with http.ws_connect(emu.urls["okx_derivatives"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str(SUBSCRIBE % iid)
            await next_json(ws)
            buffered = [(await next_json(ws))["data"][0] for _ in range(5)]
            snap = await rest_book(http, rest, iid)
            assert snap["seqId"] > buffered[-1]["seqId"]
            book = ClientBook(snap)
            covered = 0
            applied = 0
            while applied < 500:
                upd = (await next_json(ws))["data"][0]
                if upd["seqId"] <= snap["seqId"]:
                    covered += 1  # arrived after the snapshot, already in it: dropped
                    continue
                assert upd["prevSeqId"] == book.seq
                book.apply(upd)
                applied += 1
            assert covered >= 6
            later = await rest_book(http, rest, iid)
            while book.seq < later["seqId"]:
                upd = (await next_json(ws))["data"][0]
                assert upd["prevSeqId"] == book.seq
                book.apply(upd)
    assert book.top(400) == ([lvl[:2] for lvl in later["bids"]], [lvl[:2] for lvl in later["asks"]])
    assert emu.faults_fired == {"book_snapshot_ahead": {"okx": 1}}


async def test_ahead_snapshot_with_no_subscriber_is_streamed_first_to_the_next_one(fixtures_root: Path) -> None:
    async with Emulator(_cfg(fixtures_root, "book_snapshot_ahead@okx:n=3", mode="zero")) as emu, \
            aiohttp.ClientSession() as http:
        rest = emu.urls["okx_spot"]["rest"]
        ahead = await rest_book(http, rest, "BTC-USDT")
        normal = await rest_book(http, rest, "BTC-USDT")  # the book as streamed: 3 updates behind
        assert normal["seqId"] < ahead["seqId"]
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str(SUBSCRIBE % "BTC-USDT")
            await next_json(ws)
            pushed = await next_json(ws)
            assert pushed["action"] == "snapshot" and pushed["data"][0]["seqId"] == normal["seqId"]
            book = ClientBook(pushed["data"][0])
            for _ in range(3):
                upd = (await next_json(ws))["data"][0]
                assert upd["prevSeqId"] == book.seq
                book.apply(upd)
    assert book.seq == ahead["seqId"]
    assert book.top(400) == ([lvl[:2] for lvl in ahead["bids"]], [lvl[:2] for lvl in ahead["asks"]])


async def test_rest_code_200_answers_okx_error_bodies_with_http_200(fixtures_root: Path) -> None:
    spec = "rest_code_200@okx:at=2,rest_code_200@okx:at=3:code=50013"
    async with Emulator(_cfg(fixtures_root, spec)) as emu, aiohttp.ClientSession() as http:
        url = emu.urls["okx_derivatives"]["rest"] + "/api/v5/public/funding-rate?instId=BTC-USDT-SWAP"
        answers = []
        for _ in range(4):
            async with http.get(url) as resp:
                answers.append((resp.status, await resp.json()))
    assert [status for status, _ in answers] == [200, 200, 200, 200]
    assert answers[0][1]["code"] == answers[3][1]["code"] == "0"
    assert answers[1][1] == {"code": "50011", "data": [], "msg": "Rate limit reached. Please refer to API "
                             "documentation and throttle requests accordingly."}
    assert answers[2][1] == {"code": "50013", "data": [], "msg": "System is busy, please try again later."}
    assert emu.faults_fired == {"rest_code_200": {"okx": 2}}


async def _collect_until_closed(ws: aiohttp.ClientWebSocketResponse, out: list[dict[str, Any]]) -> int | None:
    while True:
        msg = await ws.receive(timeout=10)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return ws.close_code
        out.append(orjson.loads(msg.data))


async def _collect_until(ws: aiohttp.ClientWebSocketResponse, out: list[dict[str, Any]], done: Any) -> None:
    while not done():
        out.append(orjson.loads((await ws.receive(timeout=10)).data))


@pytest.mark.parametrize(("server", "path"), [("binance_spot", "/ws/btcusdt@aggTrade"),
                                              ("binance_derivatives", "/market/ws/btcusdt@aggTrade")])
async def test_binance_server_shutdown_notice_then_both_connections_carry_the_same_trades(
        fixtures_root: Path, server: str, path: str) -> None:
    cfg = _cfg(fixtures_root, f"shutdown_notice@{server}:at=20:for=1s", rate=300, venues=(server,))
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        url = emu.urls[server]["ws"] + path
        async with http.ws_connect(url) as old:
            before: list[dict[str, Any]] = []
            await _collect_until(old, before, lambda: bool(before) and before[-1].get("e") == "serverShutdown")
            notice = before.pop()
            assert set(notice) == {"e", "E"} and isinstance(notice["E"], int)
            assert len(before) == 19  # sent before the 20th frame, which follows it
            async with http.ws_connect(url) as new:
                old_after: list[dict[str, Any]] = []
                fresh: list[dict[str, Any]] = []
                code = await _collect_until_closed(old, old_after)
                await _collect_until(new, fresh, lambda: bool(fresh) and fresh[-1]["a"] >= old_after[-1]["a"])
    assert code == 1001
    old_ids = [t["a"] for t in before + old_after]
    assert old_ids == list(range(old_ids[0], old_ids[0] + len(old_ids)))  # nothing lost on the old one
    new_ids = [t["a"] for t in fresh]
    overlap = [a for a in old_ids if a >= new_ids[0]]
    assert overlap and new_ids[: len(overlap)] == overlap  # the switch loses nothing
    assert emu.faults_fired == {"shutdown_notice": {server: 1}}


async def test_okx_64008_notice_then_both_connections_carry_the_same_trades(fixtures_root: Path) -> None:
    cfg = _cfg(fixtures_root, "shutdown_notice@okx:at=20:for=1s", rate=300)
    sub = '{"op":"subscribe","args":[{"channel":"trades","instId":"BTC-USDT"}]}'
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        url = emu.urls["okx_spot"]["ws"] + "/ws/v5/public"
        async with http.ws_connect(url) as old:
            await old.send_str(sub)
            ack = await next_json(old)
            before: list[dict[str, Any]] = []
            await _collect_until(old, before, lambda: bool(before) and before[-1].get("event") == "notice")
            notice = before.pop()
            assert notice == {"event": "notice", "code": "64008", "msg": "The connection will soon be closed for a "
                              "service upgrade. Please reconnect.", "connId": ack["connId"]}
            async with http.ws_connect(url) as new:
                await new.send_str(sub)
                await next_json(new)
                old_after: list[dict[str, Any]] = []
                fresh: list[dict[str, Any]] = []
                code = await _collect_until_closed(old, old_after)
                last = int(old_after[-1]["data"][0]["tradeId"])
                await _collect_until(new, fresh, lambda: bool(fresh) and int(fresh[-1]["data"][0]["tradeId"]) >= last)
    assert code == 1001
    old_ids = [int(m["data"][0]["tradeId"]) for m in before + old_after]
    counts = [int(m["data"][0]["count"]) for m in before + old_after]
    # aggregated pushes: each one's ids run on from the previous push's last id (tradeId - count)
    assert all(old_ids[i] - counts[i] == old_ids[i - 1] for i in range(1, len(old_ids)))
    new_ids = [int(m["data"][0]["tradeId"]) for m in fresh]
    overlap = [t for t in old_ids if t >= new_ids[0]]
    assert overlap and new_ids[: len(overlap)] == overlap
    assert emu.faults_fired == {"shutdown_notice": {"okx": 1}}


@pytest.mark.parametrize("mode", ["zero", "rest"])
async def test_gap_breaks_the_seqid_chain_without_checksums(fixtures_root: Path, mode: str) -> None:
    async with Emulator(_cfg(fixtures_root, "gap@okx:at=10", mode=mode, rate=0)) as emu, \
            aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str(SUBSCRIBE % "BTC-USDT")
            await next_json(ws)
            data = [(await next_json(ws))["data"][0] for _ in range(40)]
    breaks = [i for i in range(1, len(data)) if data[i]["prevSeqId"] != data[i - 1]["seqId"]]
    assert len(breaks) == 1 and {d["checksum"] for d in data} == {0}
    assert emu.faults_fired == {"gap": {"okx": 1}}


@pytest.mark.parametrize("mode", ["zero", "rest"])
async def test_bad_checksum_without_checksums_sends_one_non_zero_checksum(fixtures_root: Path, mode: str) -> None:
    async with Emulator(_cfg(fixtures_root, "bad_checksum@okx:at=15", mode=mode, rate=0)) as emu, \
            aiohttp.ClientSession() as http:  # noqa: SIM117 (the socket needs the emulator URL)
        async with http.ws_connect(emu.urls["okx_spot"]["ws"] + "/ws/v5/public") as ws:
            await ws.send_str(SUBSCRIBE % "BTC-USDT")
            await next_json(ws)
            data = [(await next_json(ws))["data"][0] for _ in range(30)]
    assert [i + 1 for i, d in enumerate(data) if d["checksum"] != 0] == [15]  # data frame 15
    assert data[14]["checksum"] == -1
    assert emu.faults_fired == {"bad_checksum": {"okx": 1}}

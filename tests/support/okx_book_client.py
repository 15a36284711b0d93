"""A client's view of the OKX books protocol, shared by the emulator tests: subscribe text, local
book, next JSON message, REST snapshot."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

SUBSCRIBE = '{"op":"subscribe","args":[{"channel":"books","instId":"%s"}]}'


class ClientBook:
    """What a collector keeps: price string -> size string per side, and the last seqId applied."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.bids = {lvl[0]: lvl[1] for lvl in snapshot["bids"]}
        self.asks = {lvl[0]: lvl[1] for lvl in snapshot["asks"]}
        self.seq: int = snapshot["seqId"]

    def apply(self, data: dict[str, Any]) -> None:
        for side, levels in ((self.bids, data["bids"]), (self.asks, data["asks"])):
            for px, sz, *_ in levels:
                if sz == "0":
                    side.pop(px, None)
                else:
                    side[px] = sz
        self.seq = data["seqId"]

    def top(self, n: int) -> tuple[list[list[str]], list[list[str]]]:
        bids = [[p, self.bids[p]] for p in sorted(self.bids, key=float, reverse=True)[:n]]
        asks = [[p, self.asks[p]] for p in sorted(self.asks, key=float)[:n]]
        return bids, asks


async def next_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def rest_book(http: aiohttp.ClientSession, rest: str, inst_id: str, sz: int = 400) -> dict[str, Any]:
    async with http.get(f"{rest}/api/v5/market/books?instId={inst_id}&sz={sz}") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["code"] == "0" and body["msg"] == ""
    (data,) = body["data"]
    return data

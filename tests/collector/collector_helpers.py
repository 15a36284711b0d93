"""Helpers for the collector tests: real nats-server connections, stream contents, fixture-based records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from marketprism_dagster import records


async def connect_nats(url: str, **kwargs: Any) -> NATS:
    return await nats.connect(url, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.1, **kwargs)


async def stream_messages(nc: NATS, stream: str, subject: str = ">") -> list[Any]:
    """Every message currently in a stream (ordered), through an ephemeral ordered consumer."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    total = info.state.messages
    out: list[Any] = []
    if total == 0:
        return out
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        while len(out) < total:
            out.append(await sub.next_msg(timeout=5))
    finally:
        await sub.unsubscribe()
    return out


def fixture_trades(fixtures_dir: Path, count: int, run: str = "t") -> list[Any]:
    """``count`` trade records whose price/quantity/time come from recorded aggTrade frames."""
    msgs = json.loads((fixtures_dir / "messages" / "binance" / "trade.json").read_text())["messages"]
    frames = [json.loads(m["raw"]) for m in msgs if m["venue"] == "binance_spot"]
    frames = [f.get("data", f) for f in frames]
    out = []
    for i in range(count):
        d = frames[i % len(frames)]
        out.append(
            records.Trade(
                exchange="binance_spot",
                market_type="spot",
                symbol="BTC-USDT",
                exchange_symbol=d["s"],
                timestamp=int(d["T"]),
                received_at=int(d["E"]),
                trade_id=f"{run}{d['a']}-{i}",
                price=d["p"],
                quantity=d["q"],
                side="sell" if d["m"] else "buy",
            )
        )
    return out

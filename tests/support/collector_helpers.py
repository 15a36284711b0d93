"""Helpers for the collector tests: real nats-server connections, stream contents, fixture-based records."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import orjson
from nats.aio.client import Client as NATS

from marketprism_dagster import records
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.config import Settings


async def connect_nats(url: str, **kwargs: Any) -> NATS:
    return await nats.connect(url, connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.1, **kwargs)


async def stream_messages(nc: NATS, stream: str, subject: str = ">") -> list[Any]:
    """Every message currently in a stream (ordered), through an ephemeral ordered consumer."""
    js = nc.jetstream()
    info = await js.stream_info(stream, subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())  # only those the filter matches: other types share the stream
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


# ---------------------------------------------------------------- collector against the emulator

# market id -> (recorded symbols, data types, session file stems) of the fixture recordings
REPLAY_MARKETS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "binance_spot": (["BLZ-ETH", "LRC-BTC", "NKN-USDT", "RUNE-EUR"], ["orderbook", "trade"], ["binance_spot"]),
    "binance_derivatives": (
        ["AKRO-USDT", "CTK-USDT", "KEEP-USDT", "SUSHI-USDT"],
        ["orderbook", "trade"],
        ["binance_usdm"],
    ),
    "okx_spot": (["BTC-USDT"], ["orderbook", "trade"], ["okx"]),
    "deribit_derivatives": (["BTC", "ETH"], ["volatility_index"], ["deribit"]),
}


def emulator_overrides(urls: dict[str, dict[str, str]], markets: dict[str, tuple[list[str], list[str]]]) -> dict:
    """Settings overrides pointing the given markets at the emulator; every other market disabled."""
    ov: dict[str, Any] = {
        "collector.health_port": 0,
        "collector.metrics_port": 0,
        "collector.reconnect_initial_s": 0.05,
        "collector.reconnect_max_s": 0.5,
        "collector.ack_timeout_s": 1.0,
    }
    for m in ("binance_spot", "binance_derivatives", "okx_spot", "okx_derivatives", "deribit_derivatives"):
        if m not in markets:
            ov[f"markets.{m}.enabled"] = False
            continue
        symbols, data_types = markets[m]
        ov[f"markets.{m}.symbols"] = symbols
        ov[f"markets.{m}.data_types"] = data_types
        ov[f"markets.{m}.rest_url"] = urls[m]["rest"]
        ov[f"markets.{m}.ws_url"] = urls[m]["ws"]
    return ov


def identity_view(record: Any) -> dict[str, Any]:
    """A record's content without the local receive-time fields (which differ between live and offline runs)."""
    body = msgspec.to_builtins(record)
    body.pop("received_at", None)
    body.pop("tick", None)
    return body


async def until(cond: Any, timeout: float, interval: float = 0.05) -> None:
    """Wait (bounded) until ``cond()`` (sync or async) is truthy."""

    async def loop() -> None:
        while True:
            v = cond()
            if hasattr(v, "__await__"):
                v = await v
            if v:
                return
            await asyncio.sleep(interval)

    await asyncio.wait_for(loop(), timeout)


async def http_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json(content_type=None)


async def http_text(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        got = dict(kv.split("=", 1) for kv in label_text.rstrip("}").split(",") if kv)
        got = {k: v.strip('"') for k, v in got.items()}
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


@asynccontextmanager
async def running_collector(settings: Settings) -> AsyncIterator[tuple[Collector, asyncio.Task[None]]]:
    """(collector, its run task) once the collector is ready (bounded 10 s); stopped (bounded 20 s) on exit."""
    collector = Collector(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await asyncio.wait_for(collector.ready.wait(), 10)
        yield collector, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


class TradeWitness:
    """A second client of a Binance ``aggTrade`` stream: it keeps the emulator trading while no collector runs,
    and the ids it sees (``seen``) are the ground truth of what the venue sent."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def start(self, url: str) -> None:
        self._task = asyncio.create_task(self._watch(url))

    async def _watch(self, url: str) -> None:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            async for msg in ws:
                data = orjson.loads(msg.data).get("data", {})
                if data.get("e") == "aggTrade":
                    self.seen.append(int(data["a"]))

    async def stop(self) -> None:
        """Cancel the watch (if started) and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

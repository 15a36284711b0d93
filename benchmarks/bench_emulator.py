"""Synth throughput to one loopback client (not a test): prints msgs/s.

The emulator runs in this process; the client (aiohttp, one connection, combined stream of
Binance spot depth + aggTrade for 2 symbols) runs in a child process, so each side has a
core. Usage: ``python benchmarks/bench_emulator.py [--seconds 10] [--venue binance|okx]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time

import aiohttp
import orjson

from marketprism_dagster.emulator import Emulator, EmulatorConfig


def _client(url: str, seconds: float, okx: bool, out: mp.Queue) -> None:
    async def run() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
            if okx:
                ids = ("BTC-USDT", "ETH-USDT-SWAP")
                args = [{"channel": ch, "instId": i} for ch in ("books", "trades") for i in ids]
                await ws.send_str(orjson.dumps({"op": "subscribe", "args": args}).decode())
            count = 0
            warm_end = time.perf_counter() + 1.0
            while time.perf_counter() < warm_end:
                await ws.receive()
            start = time.perf_counter()
            end = start + seconds
            while True:
                msg = await ws.receive()
                orjson.loads(msg.data)
                count += 1
                if count % 1000 == 0 and time.perf_counter() >= end:
                    break
            out.put((count, time.perf_counter() - start))

    asyncio.run(run())


async def main(seconds: float, venue: str) -> None:
    okx = venue == "okx"
    cfg = EmulatorConfig(venues=("okx",) if okx else ("binance_spot",), rate=0, seed=1)
    async with Emulator(cfg) as emu:
        if okx:
            url = emu.urls["okx_spot"]["ws"] + "/ws/v5/public"
        else:
            streams = "/".join(f"{s}@{k}" for s in ("btcusdt", "ethusdt") for k in ("depth@100ms", "aggTrade"))
            url = emu.urls["binance_spot"]["ws"] + f"/stream?streams={streams}"
        ctx = mp.get_context("spawn")
        queue: mp.Queue = ctx.Queue()
        proc = ctx.Process(target=_client, args=(url, seconds, okx, queue))
        proc.start()
        while proc.is_alive() and queue.empty():
            await asyncio.sleep(0.2)
        count, elapsed = queue.get(timeout=5)
        proc.join(5)
        print(f"venue={venue} messages={count} seconds={elapsed:.2f} msgs_per_s={count / elapsed:,.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--venue", choices=("binance", "okx"), default="binance")
    ns = parser.parse_args()
    asyncio.run(main(ns.seconds, ns.venue))

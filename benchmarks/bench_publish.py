"""Publisher throughput: JetStreamPublisher vs nats-py js.publish and js.publish_async, same run, same server.

Usage: .venv/bin/python benchmarks/bench_publish.py [--count 50000]

Starts a real nats-server (EmbeddedNats, tmp store, file storage), creates the configured
streams, and publishes real trade records (wire JSON with Nats-Msg-Id) three ways. Each
way gets fresh ids so JetStream stores every message (no duplicate short-cuts). Prints
msgs/s per way and verifies the stream received every message.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import nats

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import ensure_streams
from marketprism_dagster.nats_server import EmbeddedNats, free_port
from marketprism_dagster.publisher import JetStreamPublisher


def make_messages(count: int, run: str) -> list[tuple[str, bytes, str]]:
    out = []
    for i in range(count):
        r = records.Trade(
            exchange="binance_spot",
            market_type="spot",
            symbol="BTC-USDT",
            exchange_symbol="BTCUSDT",
            timestamp=1_700_000_000_000 + i,
            received_at=1_700_000_000_005 + i,
            trade_id=f"{run}-{i}",
            price="43000.12",
            quantity="0.0015",
            side="buy",
        )
        out.append((records.subject(r), records.encode(r), records.msg_id(r)))
    return out


async def bench_js_publish(js, msgs) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    for subject, payload, mid in msgs:
        await js.publish(subject, payload, headers={"Nats-Msg-Id": mid})
    return time.perf_counter() - t0


async def bench_js_publish_async(js, msgs) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    futures = [await js.publish_async(subject, payload, headers={"Nats-Msg-Id": mid}) for subject, payload, mid in msgs]
    await asyncio.wait_for(js.publish_async_completed(), 60)
    dt = time.perf_counter() - t0
    assert all(f.done() and f.exception() is None for f in futures)
    return dt


async def bench_thin(nc, msgs, max_inflight: int) -> tuple[float, JetStreamPublisher]:  # type: ignore[no-untyped-def]
    pub = await JetStreamPublisher(nc, max_inflight=max_inflight, buffer_size=len(msgs) + 1).start()
    t0 = time.perf_counter()
    for subject, payload, mid in msgs:
        pub.submit(subject, payload, mid)
    ok = await pub.flush(60)
    dt = time.perf_counter() - t0
    assert ok, "publisher did not flush"
    await pub.close()
    return dt, pub


async def main(count: int, max_inflight: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=free_port()).start()
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream(publish_async_max_pending=max_inflight)
            await ensure_streams(js, Settings())
            before = (await js.stream_info("MARKET_DATA")).state.messages
            n_slow = max(1, count // 5)  # js.publish is slow: a fifth of the count is enough to measure it
            dt_js = await bench_js_publish(js, make_messages(n_slow, "js"))
            dt_async = await bench_js_publish_async(js, make_messages(count, "async"))
            dt_thin, pub = await bench_thin(nc, make_messages(count, "thin"), max_inflight)
            after = (await js.stream_info("MARKET_DATA")).state.messages
            await nc.close()
        finally:
            server.stop()
    stored = after - before
    print(f"messages per way: js.publish {n_slow}, js.publish_async {count}, JetStreamPublisher {count}")
    print(f"js.publish (await each ack)       {n_slow / dt_js:>10,.0f} msg/s")
    print(f"js.publish_async (nats-py 2.16)   {count / dt_async:>10,.0f} msg/s")
    print(f"JetStreamPublisher (this repo)    {count / dt_thin:>10,.0f} msg/s  (window {max_inflight})")
    print(
        f"stream stored {stored} of {n_slow + 2 * count}; publisher acked={pub.stats.acked} "
        f"duplicates={pub.stats.duplicates} errors={pub.stats.errors} timeouts={pub.stats.timeouts}"
    )
    assert stored == n_slow + 2 * count


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--count", type=int, default=50_000)
    p.add_argument("--max-inflight", type=int, default=4096)
    a = p.parse_args()
    asyncio.run(main(a.count, a.max_inflight))

"""Runtime pieces: rate limiter, backoff, poll alignment, shard lock, WS heartbeats, bounded publish buffer."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.health import read_health
from marketprism_dagster.collector.lock import AlreadyRunning, InstanceLock
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.ratelimit import RateLimiter, parse_retry_after
from marketprism_dagster.collector.runtime import Collector, next_poll_time, run_collector
from marketprism_dagster.collector.state import FeedState
from marketprism_dagster.collector.ws import FeedConnection
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.venues.base import WsFeed
from marketprism_dagster.venues.binance import BinanceAdapter
from tests.support.collector_helpers import (
    emulator_overrides,
    http_json,
    http_text,
    metric_value,
    running_collector,
    until,
)


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def documented_rules(fixtures_dir: Path, name: str) -> dict:
    return json.loads((fixtures_dir / "documented" / name).read_text())


def test_weight_header_is_the_venues_count_and_budget_waits_for_next_minute(fixtures_dir: Path) -> None:
    doc = json.dumps(documented_rules(fixtures_dir, "binance_spot_errors_rate_limits.json"))
    assert "X-MBX-USED-WEIGHT-" in doc  # the documented header our limiter reads
    clock = FakeClock(1_699_999_990.0)  # 10 s into a minute (1_699_999_980 is a minute boundary)
    lim = RateLimiter(2400, weight_header=BinanceAdapter.weight_header, clock=clock)
    assert lim.delay_for(20) == 0
    lim.update(200, {"X-MBX-USED-WEIGHT-1M": "2150"})
    assert lim.used == 2150
    assert lim.delay_for(10) == 0  # 2160 <= 0.9 * 2400
    assert lim.delay_for(50) == pytest.approx(50.05)  # would pass 2160: wait for the next minute
    clock.t += 50.1
    assert lim.delay_for(50) == 0 and lim.used == 0


def test_429_and_418_back_off_retry_after_and_are_counted() -> None:
    clock = FakeClock(1_700_000_000.0)
    lim = RateLimiter(None, clock=clock)
    assert lim.update(429, {"Retry-After": "7"}) == 7
    assert lim.delay_for(1) == pytest.approx(7)
    assert lim.update(418, {}) == 120  # a ban without Retry-After: the documented 2 minutes
    assert (lim.rate_limited, lim.banned) == (1, 1)
    clock.t += 120
    assert lim.delay_for(1) == 0
    assert parse_retry_after("x", 3) == 3 and parse_retry_after("-1", 3) == 3 and parse_retry_after("2", 3) == 2


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    b = Backoff(0.5, 4.0, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    bases = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    b.reset()
    assert b.next() <= 0.5


def test_polls_align_to_period_boundaries_plus_offset() -> None:
    # every 5 min at :00:02 -> 12:05:02 after 12:03:10; exactly on a boundary -> the next one
    t = 1_700_000_000.0 - (1_700_000_000 % 300) + 190
    assert next_poll_time(t, 300, 2) - (t - 190) == 302
    assert next_poll_time(t - 190 + 2, 300, 2) == t - 190 + 302


def test_one_collector_per_shard(tmp_path: Path) -> None:
    with InstanceLock(tmp_path, "main"):
        with pytest.raises(AlreadyRunning, match=r"collector\.allow_multiple"):
            InstanceLock(tmp_path, "main").acquire()
        with InstanceLock(tmp_path, "other"):
            pass
    with InstanceLock(tmp_path, "main"):  # released on exit
        assert (tmp_path / "locks" / "collector-main.lock").exists()


NO_MARKETS = {
    f"markets.{m}.enabled": False
    for m in ("binance_spot", "binance_derivatives", "okx_spot", "okx_derivatives", "deribit_derivatives")
}
EPHEMERAL = {"collector.health_port": 0, "collector.metrics_port": 0}


async def test_second_collector_on_the_same_shard_refuses_unless_allowed(
    settings_factory: Callable[..., Settings],
) -> None:
    first = Collector(settings_factory(**NO_MARKETS, **EPHEMERAL))
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    try:
        await asyncio.wait_for(first.ready.wait(), 10)
        second = Collector(settings_factory(**NO_MARKETS, **EPHEMERAL))
        with pytest.raises(AlreadyRunning):
            await second.run(asyncio.Event())
        allowed = Collector(settings_factory(**NO_MARKETS, **EPHEMERAL, **{"collector.allow_multiple": True}))
        stop2 = asyncio.Event()
        t2 = asyncio.create_task(allowed.run(stop2))
        await asyncio.wait_for(allowed.ready.wait(), 10)
        assert allowed.health_port != first.health_port
        stop2.set()
        await asyncio.wait_for(t2, 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _feed_run(feed: WsFeed, received: list, metrics: CollectorMetrics, state: FeedState) -> asyncio.Task:
    session = aiohttp.ClientSession()
    conn = FeedConnection(
        feed,
        "okx_spot",
        session,
        state,
        metrics,
        on_connect=lambda key, ts: None,
        on_message=lambda key, raw, ts: received.append(raw),
        backoff=Backoff(0.05, 0.2),
    )
    task = asyncio.create_task(conn.run())
    task.add_done_callback(lambda _: asyncio.ensure_future(session.close()))
    return task


async def test_idle_feed_sends_the_venues_text_ping_and_hides_the_pong(fixtures_dir: Path) -> None:
    rules = documented_rules(fixtures_dir, "okx_ws_control.json")
    assert any(e["verbatim"].strip() == "ping" for e in rules["examples"])
    async with Emulator(EmulatorConfig(mode="synth", venues=("okx",))) as emu:
        feed = WsFeed("okx_spot/public", emu.urls["okx_spot"]["ws"] + "/ws/v5/public", (), "ping", 0.2, "pong")
        received: list = []
        metrics, state = CollectorMetrics(), FeedState("okx_spot")
        task = await _feed_run(feed, received, metrics, state)
        try:
            await asyncio.sleep(1.0)  # ~5 ping intervals with no subscription: only pongs arrive
            assert state.connected and state.connects == 1
            assert received == []
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_silent_connection_is_declared_stale_and_reconnected() -> None:
    connections = 0

    async def silent(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        async for _ in ws:  # reads the pings, never answers them
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", silent)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    metrics, state = CollectorMetrics(), FeedState("okx_spot")
    feed = WsFeed("okx_spot/public", str(server.make_url("/ws")).replace("http", "ws"), (), "ping", 0.1, "pong")
    task = await _feed_run(feed, [], metrics, state)
    try:
        await until(lambda: connections >= 3, 10)
        text = metrics.exposition().decode()
        assert metric_value(text, "marketprism_collector_errors_total", code="ws_stale") >= 2
        assert metric_value(text, "marketprism_collector_reconnects_total", exchange="okx_spot") >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close()


async def test_full_publish_buffer_counts_order_book_drops_per_symbol(
    settings_factory: Callable[..., Settings],
) -> None:
    markets = {"binance_spot": (["BTC-USDT"], ["orderbook", "trade"])}
    async with Emulator(EmulatorConfig(mode="synth", rate=100, seed=2, venues=("binance_spot",))) as emu:
        # NATS url points at nothing: records pile up in a 20-record buffer, the feeds keep reading
        settings = settings_factory(
            **emulator_overrides(emu.urls, markets), **{"collector.publish_buffer": 20, "orderbook.cadence_ms": 0}
        )
        async with running_collector(settings) as (collector, _task):
            await until(lambda: collector.state.records.get(("orderbook", "binance_spot"), 0) > 50, 20)
            _, text = await http_text(f"http://127.0.0.1:{collector.metrics_port}/metrics")
            status, health = await http_json(f"http://127.0.0.1:{collector.health_port}/health")
    drops = metric_value(text, "marketprism_orderbook_queue_drops_total", exchange="binance_spot", symbol="BTC-USDT")
    assert drops > 0
    all_drops = metric_value(text, "marketprism_collector_queue_drops_total", exchange="binance_spot")
    assert all_drops == metric_value(text, "marketprism_publish_buffer_drops_total")
    assert metric_value(text, "marketprism_publish_buffered") == 20
    assert status == 200 and health["status"] in ("degraded", "healthy")
    assert health["checks"]["nats"]["connected"] is False


async def test_run_collector_heartbeats_until_stopped(settings_factory: Callable[..., Settings]) -> None:
    beats: list[float] = []
    stop = asyncio.Event()
    settings = settings_factory(**NO_MARKETS, **EPHEMERAL)
    task = asyncio.create_task(run_collector(settings, "main", stop=stop, heartbeat=lambda: beats.append(1.0)))
    await until(lambda: len(beats) >= 2, 10)  # every HOUSEKEEPING_S while the loop is alive
    assert not task.done()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert read_health(settings.data_dir)["status"] == "stopped"

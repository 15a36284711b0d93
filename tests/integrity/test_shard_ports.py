"""Two collector shards on one host run side by side with their own ports, and every check reads both.

Real collectors against the exchange emulator on 127.0.0.1, a real nats-server and chDB: shard ``a``
collects binance_derivatives, shard ``b`` okx_derivatives, both with liquidations. Before, both bound
collector.health_port / metrics_port (the second failed to start) and the liquidation-health rule
asked that one port, so it never saw shard b.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from marketprism_dagster import integrity
from marketprism_dagster.collector.health import read_health, shard_health_urls
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.config import ConfigError, Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.storage import init_schema, open_store

SHARDS = {"a": ["binance_derivatives"], "b": ["okx_derivatives"]}
TYPES = ["trade", "liquidation"]


def free_run(length: int) -> int:
    """A port p such that p .. p+length-1 are free on 127.0.0.1 now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + length > 65535:
            continue
        ok = True
        for p in range(base, base + length):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free ports on 127.0.0.1")


async def until(cond: Callable[[], Any], timeout: float) -> None:
    async def loop() -> None:
        while not cond():
            await asyncio.sleep(0.1)

    await asyncio.wait_for(loop(), timeout)


async def get_json(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return await r.json(content_type=None)


@contextlib.asynccontextmanager
async def shard(settings: Settings, name: str) -> AsyncIterator[tuple[Collector, asyncio.Event]]:
    collector = Collector(settings, name)
    stop = asyncio.Event()
    task = asyncio.create_task(collector.run(stop))
    try:
        await asyncio.wait_for(collector.ready.wait(), 10)
        yield collector, stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


@pytest.fixture
async def two_shard_settings(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> AsyncIterator[Settings]:
    cfg = EmulatorConfig(mode="synth", rate=20, seed=5, venues=("binance", "okx"))
    async with Emulator(cfg) as emu:
        base = free_run(4)  # health a, b then metrics a, b
        ov: dict[str, Any] = {
            "collector.shards": SHARDS,
            "collector.health_port": base,
            "collector.metrics_port": base + 2,
            "collector.reconnect_initial_s": 0.05,
            "collector.reconnect_max_s": 0.5,
        }
        for m in ("binance_spot", "okx_spot", "deribit_derivatives"):
            ov[f"markets.{m}.enabled"] = False
        for m in ("binance_derivatives", "okx_derivatives"):
            ov[f"markets.{m}.symbols"] = ["BTC-USDT"]
            ov[f"markets.{m}.data_types"] = TYPES
            ov[f"markets.{m}.rest_url"] = emu.urls[m]["rest"]
            ov[f"markets.{m}.ws_url"] = emu.urls[m]["ws"]
        yield settings_factory(nats_url=nats_server.url, **ov)


async def test_two_shards_run_side_by_side_with_their_own_ports_and_every_check_reads_both(two_shard_settings):
    settings = two_shard_settings
    base = settings.collector.health_port
    assert settings.shard_ports("a") == (base, base + 2) and settings.shard_ports("b") == (base + 1, base + 3)
    with open_store(settings) as store:
        init_schema(store, settings)  # empty hot tables: the liquidation window passes only on the feeds' word
    async with shard(settings, "a") as (a, _), shard(settings, "b") as (b, stop_b):
        assert (a.health_port, a.metrics_port, b.health_port, b.metrics_port) == (base, base + 2, base + 1, base + 3)
        assert (await get_json(f"http://127.0.0.1:{base}/health"))["shard"] == "a"
        assert (await get_json(f"http://127.0.0.1:{base + 1}/health"))["shard"] == "b"

        async def liquidation_feeds_healthy() -> None:  # blocking HTTP: not on this loop
            while not getattr(await asyncio.to_thread(integrity.collector_feed_status, settings, "liquidation"),
                              "healthy", False):
                await asyncio.sleep(0.1)

        await asyncio.wait_for(liquidation_feeds_healthy(), 30)
        assert (read_health(settings.data_dir, "b") or {})["http"]["health_port"] == base + 1

        feeds = await asyncio.to_thread(integrity.collector_feed_status, settings, "liquidation")
        assert feeds is not None and feeds.healthy
        assert feeds.detail == "a: binance_derivatives=ok; b: okx_derivatives=ok"
        with open_store(settings) as store:  # what `marketprism integrity` runs
            results = await asyncio.to_thread(integrity.run_all, store, settings)  # blocking HTTP: not on this loop
            window = next(r for r in results if r.target == "hot.liquidation")
        assert window.check == "recent_window" and window.passed, window.description
        assert "b: okx_derivatives=ok" in window.description

        stop_b.set()  # shard b stops: the checks see it, although shard a still answers on the base port
        await until(lambda: (read_health(settings.data_dir, "b") or {}).get("status") == "stopped", 20)
        feeds = await asyncio.to_thread(integrity.collector_feed_status, settings, "liquidation")
        assert feeds is not None and not feeds.healthy
        assert feeds.detail == "a: binance_derivatives=ok; b: collector did not answer"
        with open_store(settings) as store:
            results = await asyncio.to_thread(integrity.run_all, store, settings)  # blocking HTTP: not on this loop
            window = next(r for r in results if r.target == "hot.liquidation")
        assert not window.passed and "b: collector did not answer" in window.description


def test_shard_ports_are_base_plus_index_and_ephemeral_ports_are_read_from_the_health_file(settings_factory, tmp_path):
    s = settings_factory(
        **{"collector.shards": {"x": [], "y": [], "z": []}, "collector.health_port": 0, "collector.metrics_port": 0}
    )
    assert [s.shard_ports(n) for n in ("x", "y", "z")] == [(0, 0)] * 3
    assert shard_health_urls(s) == {"x": None, "y": None, "z": None}  # nothing published yet
    from marketprism_dagster.collector.health import bound_ports, health_path, write_health_file

    write_health_file(health_path(s.data_dir, "y"), {"status": "healthy", "http": bound_ports("127.0.0.1", 41234, 1)})
    assert shard_health_urls(s)["y"] == "http://127.0.0.1:41234/health"
    with pytest.raises(ConfigError) as err:  # shard c's health port would be shard a's metrics port
        settings_factory(
            **{
                "collector.shards": {"a": [], "b": [], "c": []},
                "collector.health_port": 9000,
                "collector.metrics_port": 9002,
            }
        )
    assert "shard c's health port 9002" in str(err.value) and "shard a's metrics port" in str(err.value)

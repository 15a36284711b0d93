"""Planned restarts and stops lose nothing: a successor takes the shard over make-before-break, and what
NATS did not take before a stop is spilled to disk and published by the next run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from marketprism_dagster import records
from marketprism_dagster.collector.lock import AlreadyRunning, InstanceLock
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.collector.spill import read_spill, spill_path, write_spill
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from tests.support.collector_helpers import connect_nats, emulator_overrides, running_collector, stream_messages, until

TRADES = {"binance_spot": (["BTC-USDT"], ["trade"])}


async def _trade_ids(url: str) -> list[int]:
    nc = await connect_nats(url)
    try:
        msgs = await stream_messages(nc, "MARKET_DATA", "trade.>")
    finally:
        await nc.close()
    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert len(set(ids)) == len(ids), "JetStream stored a trade twice"
    return sorted(int(records.decode(m.data).trade_id) for m in msgs)


async def test_successor_takes_the_shard_lock_over_only_when_its_holder_stops(tmp_path) -> None:
    holder = InstanceLock(tmp_path, "main").acquire()
    with pytest.raises(AlreadyRunning, match="allow_multiple"):  # without takeover: refused, as before
        InstanceLock(tmp_path, "main").acquire()
    successor = InstanceLock(tmp_path, "main").acquire(takeover=True)
    assert not successor.holding
    with pytest.raises(AlreadyRunning, match="already waits"):  # never two successors
        InstanceLock(tmp_path, "main").acquire(takeover=True)
    handover = asyncio.create_task(successor.wait_handover())
    await asyncio.sleep(0.5)
    assert not handover.done() and not successor.holding  # the holder still runs
    holder.release()
    await asyncio.wait_for(handover, 5)
    assert successor.holding
    with pytest.raises(AlreadyRunning, match="allow_multiple"):
        InstanceLock(tmp_path, "main").acquire()
    InstanceLock(tmp_path, "main").acquire(takeover=True).release()  # the successor lock was handed back
    successor.release()


async def test_planned_restart_is_make_before_break_no_trade_id_missing_or_stored_twice(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    cfg = EmulatorConfig(mode="synth", rate=50, seed=7, venues=("binance",))
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, TRADES))
        async with running_collector(settings) as (old, _):
            await until(lambda: old.collecting and old.publisher.stats.acked > 20, 20)
            ready: list[bool] = []
            successor = Collector(settings, takeover=True, on_ready=lambda: ready.append(True))
            stop_successor = asyncio.Event()
            task = asyncio.create_task(successor.run(stop_successor))
            # the successor collects beside the old run before the old run stops
            await until(lambda: ready == [True] and successor.publisher.stats.acked > 20, 20)
            assert not successor.ready.is_set() and successor.lock is not None and not successor.lock.holding
        # the old run stopped: the successor owns the shard (lock, HTTP ports) and goes on collecting
        await asyncio.wait_for(successor.ready.wait(), 10)
        assert successor.lock.holding and successor.health_port
        acked = successor.publisher.stats.acked
        await until(lambda: successor.publisher.stats.acked > acked + 50, 20)
        stop_successor.set()
        await asyncio.wait_for(task, 20)
    ids = await _trade_ids(nats_server.url)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive across the handover
    assert successor.publisher.stats.duplicates > 0  # the overlap sent trades twice; the Msg-Id dropped copies


async def test_stop_while_nats_is_down_spills_the_buffer_and_the_next_run_publishes_it(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    cfg = EmulatorConfig(mode="synth", rate=50, seed=9, venues=("binance",))
    async with Emulator(cfg) as emu:
        overrides = {**emulator_overrides(emu.urls, TRADES), "collector.shutdown_flush_s": 0.5}
        settings = settings_factory(nats_url=nats_server.url, **overrides)
        path = spill_path(settings.data_dir, "main")
        async with running_collector(settings) as (first, _):
            await until(lambda: first.publisher.stats.acked > 20, 20)
            nats_server.stop()
            await until(lambda: first.publisher.buffered > 30, 20)  # trades keep arriving, NATS takes none
        stats = first.publisher.stats
        spilled, bad = read_spill(path)
        assert bad == 0 and len(spilled) == stats.submitted - stats.acked - stats.duplicates > 30

        nats_server.start()
        async with running_collector(settings) as (second, _):
            assert second.publisher.stats.restored == len(spilled)
            await until(lambda: not path.exists(), 30)  # removed once every replayed message is acknowledged
    ids = await _trade_ids(nats_server.url)
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # nothing missing across the NATS outage and restart
    nc = await connect_nats(nats_server.url)
    try:
        stored = {m.headers["Nats-Msg-Id"] for m in await stream_messages(nc, "MARKET_DATA", "trade.>")}
    finally:
        await nc.close()
    assert {msg_id for _, _, msg_id in spilled} <= stored


def test_unreadable_spill_lines_are_skipped_and_counted(tmp_path) -> None:
    path = tmp_path / "unpublished-main.jsonl"
    write_spill(path, [("trade.binance_spot.spot.BTC-USDT", b'{"a":1}', "id-1")])
    with path.open("ab") as f:
        f.write(b"{not json\n" + json.dumps({"subject": "x"}).encode() + b"\n")
    entries, bad = read_spill(path)
    assert entries == [("trade.binance_spot.spot.BTC-USDT", b'{"a":1}', "id-1")]
    assert bad == 2


async def test_stop_waits_a_bounded_time_for_nats_to_come_back_and_delivers_the_buffer(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    cfg = EmulatorConfig(mode="synth", rate=50, seed=13, venues=("binance",))
    async with Emulator(cfg) as emu:
        overrides = {**emulator_overrides(emu.urls, TRADES), "collector.shutdown_flush_s": 15.0}
        settings = settings_factory(nats_url=nats_server.url, **overrides)
        async with running_collector(settings) as (collector, _):
            await until(lambda: collector.publisher.stats.acked > 20, 20)
            nats_server.stop()
            await until(lambda: collector.publisher.buffered > 30, 20)
            # NATS returns while the collector is stopping (after the context exit below sets its stop event)
            asyncio.get_running_loop().call_later(1.0, nats_server.start)
    stats = collector.publisher.stats
    assert not spill_path(settings.data_dir, "main").exists()
    assert stats.acked + stats.duplicates == stats.submitted and stats.failed == 0
    ids = await _trade_ids(nats_server.url)
    assert ids == list(range(ids[0], ids[0] + len(ids)))

"""Venue shutdown notices (Binance serverShutdown, OKX notice 64008): the feed moves to a new connection
before the old one closes (make before break), losing and duplicating no trade."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import SwitchConnection
from tests.support.collector_helpers import (
    connect_nats,
    emulator_overrides,
    http_text,
    metric_value,
    running_collector,
    stream_messages,
    until,
)


def _documented_notice(fixtures_dir: Path) -> bytes:
    doc = json.loads((fixtures_dir / "documented" / "okx_ws_control.json").read_text())
    notices = [e["verbatim"] for e in doc["examples"] if (e.get("json") or {}).get("event") == "notice"]
    assert notices, "okx_ws_control.json lost its 64008 notice example"
    return notices[0].encode()


def test_okx_notice_64008_asks_to_switch_the_feed_not_an_error(
    fixtures_dir: Path, settings_factory: Callable[..., Settings]
) -> None:
    settings = settings_factory()
    adapter = adapter_for("okx_derivatives", settings.markets["okx_derivatives"], settings.orderbook)
    out = adapter.on_message(adapter.feed_key, _documented_notice(fixtures_dir), 1)
    assert out.actions == [
        SwitchConnection(
            "okx_derivatives/public",
            "okx notice 64008: The connection will soon be closed for a service upgrade. Please reconnect.",
        )
    ]
    assert out.records == [] and out.events == {}


async def test_shutdown_notices_switch_connections_without_losing_or_duplicating_trades(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    markets = {
        "binance_derivatives": (["BTC-USDT"], ["trade"]),  # aggTrade on the /market feed
        "okx_derivatives": (["BTC-USDT"], ["trade"]),  # trades of BTC-USDT-SWAP
    }
    faults = "shutdown_notice@binance_derivatives:at=80:for=2s,shutdown_notice@okx:at=80:for=2s"
    # one match per OKX push: the stored ids are then every id, and the check below counts them
    cfg = EmulatorConfig(mode="synth", rate=50, seed=11, faults=faults, venues=("binance", "okx"),
                         okx_trade_count_max=1)
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        async with running_collector(settings) as (collector, task):
            await until(lambda: len(collector.feeds) == 2, 20)
            feeds = dict(collector.feeds)
            disconnected: list[str] = []

            async def watch() -> None:  # the feed must look connected throughout
                while True:
                    disconnected.extend(k for k, f in collector.state.feeds.items() if not f.connected)
                    await asyncio.sleep(0.01)

            await until(lambda: all(f.connected for f in collector.state.feeds.values()), 20)
            watcher = asyncio.create_task(watch())
            try:
                await until(
                    lambda: emu.faults_fired.get("shutdown_notice", {}) == {"binance_derivatives": 1, "okx": 1}, 30
                )
                await until(lambda: all(f.switches == 1 and not f.switching for f in feeds.values()), 20)
                # the emulator closes the old connections 2 s after the notice: go on past that
                received = {k: f.messages for k, f in collector.state.feeds.items()}
                await until(lambda: all(f.messages > received[k] + 150 for k, f in collector.state.feeds.items()), 30)
            finally:
                watcher.cancel()
            _, text = await http_text(f"http://127.0.0.1:{collector.metrics_port}/metrics")
            assert not task.done()
        stats = collector.publisher.stats

    assert disconnected == []
    for market in markets:
        assert (
            metric_value(text, "marketprism_collector_adapter_events_total", exchange=market, event="connection_switch")
            == 1
        )
        assert metric_value(text, "marketprism_collector_errors_total", exchange=market) == 0, text
        assert metric_value(text, "marketprism_collector_reconnects_total", exchange=market) == 0
    assert all(f.switches == 1 for f in feeds.values())
    assert {k: s.connects for k, s in collector.state.feeds.items()} == {k: 1 for k in feeds}

    nc = await connect_nats(nats_server.url)
    try:
        msgs = await stream_messages(nc, "MARKET_DATA", "trade.>")
    finally:
        await nc.close()
    msg_ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert len(set(msg_ids)) == len(msg_ids)  # JetStream stored each trade once
    ids: dict[str, list[int]] = defaultdict(list)
    for m in msgs:
        t = records.decode(m.data)
        ids[t.exchange].append(int(t.trade_id))
    assert set(ids) == set(markets)
    for market, got in ids.items():
        got.sort()
        # both venues number the trades of a symbol consecutively: none missing across the switch
        assert got == list(range(got[0], got[0] + len(got))), market
        assert len(got) > 150  # trades from before the notice (frame 80) to well after the switch
    assert stats.duplicates > 0  # the overlap did deliver trades twice; the Msg-Id dropped the copies

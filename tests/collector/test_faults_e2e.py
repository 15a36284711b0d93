"""Injected faults (emulator) and a NATS restart: the collector recovers by itself and counts exactly what happened."""

from __future__ import annotations

from collections.abc import Callable

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from tests.support.collector_helpers import (
    connect_nats,
    emulator_overrides,
    http_json,
    http_text,
    metric_value,
    running_collector,
    stream_messages,
    until,
)

BOOK_AND_TRADES = ["orderbook", "trade"]
FAULTS = (
    "disconnect@binance_spot:at=150,"
    "malformed@binance_spot:at=60,"
    "gap@binance_derivatives:at=200,"
    "bad_checksum@okx:at=150,"
    "rest_429@binance_derivatives:at=1"
)
EXPECTED_FAULTS = {
    "disconnect": {"binance_spot": 1},
    "malformed": {"binance_spot": 1},
    "gap": {"binance_derivatives": 1},
    "bad_checksum": {"okx": 1},
    "rest_429": {"binance_derivatives": 1},
}


async def test_injected_faults_are_recovered_and_counted_exactly(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    markets = {
        "binance_spot": (["BTC-USDT"], BOOK_AND_TRADES),
        "binance_derivatives": (["BTC-USDT"], BOOK_AND_TRADES),
        "okx_spot": (["BTC-USDT"], BOOK_AND_TRADES),
    }
    cfg = EmulatorConfig(mode="synth", rate=100, seed=3, faults=FAULTS, venues=("binance", "okx"))
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        async with running_collector(settings) as (collector, task):
            base = f"http://127.0.0.1:{collector.metrics_port}/metrics"
            await until(lambda: emu.faults_fired == EXPECTED_FAULTS, 30)

            async def recovered() -> bool:
                _, text = await http_text(base)
                # every feed is back and every book is publishing again after its resync
                return (
                    all(f.connected for f in collector.state.feeds.values())
                    and metric_value(text, "marketprism_collector_resyncs_total") >= 2
                )

            await until(recovered, 30)
            books_before = dict(collector.state.records)
            await until(
                lambda: all(
                    collector.state.records.get(("orderbook", m), 0) > books_before.get(("orderbook", m), 0)
                    for m in markets
                ),
                15,
            )
            _, text = await http_text(base)
            status, health = await http_json(f"http://127.0.0.1:{collector.health_port}/health")
            assert not task.done(), "the collector must never die"
        fired = emu.faults_fired

    assert fired == EXPECTED_FAULTS
    # disconnect: one lost connection, reconnected
    assert metric_value(text, "marketprism_collector_errors_total", exchange="binance_spot", code="ws_disconnect") == 1
    assert metric_value(text, "marketprism_collector_reconnects_total", exchange="binance_spot") == 1
    # malformed JSON: counted as a parse error, skipped
    assert metric_value(text, "marketprism_collector_errors_total", exchange="binance_spot", code="parse_error") == 1
    # gap: one resync of the USD-M book
    assert metric_value(text, "marketprism_collector_resyncs_total", exchange="binance_derivatives") == 1
    assert (
        metric_value(text, "marketprism_collector_errors_total", exchange="binance_derivatives", code="sequence_gap")
        == 1
    )
    # bad checksum: one checksum failure and one resync of the OKX book
    assert metric_value(text, "marketprism_collector_checksum_failures_total", exchange="okx_spot") == 1
    assert metric_value(text, "marketprism_collector_resyncs_total", exchange="okx_spot") == 1
    # 429: backed off Retry-After and counted
    assert metric_value(text, "marketprism_collector_rate_limited_total", exchange="binance_derivatives") == 1
    assert (
        metric_value(text, "marketprism_collector_errors_total", exchange="binance_derivatives", code="rest_429") == 1
    )
    assert metric_value(text, "marketprism_collector_rate_limit_wait_seconds_total", exchange="binance_derivatives") > 0
    # the disconnected spot book resynchronized from a fresh snapshot (after the reconnect), not counted as a gap
    assert metric_value(text, "marketprism_publish_failed_total") == 0
    assert metric_value(text, "marketprism_publish_buffer_drops_total") == 0
    assert status == 200 and health["status"] == "healthy", health["reasons"]


async def test_nats_restart_loses_nothing_and_never_blocks_the_feeds(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    markets = {"binance_spot": (["BTC-USDT"], BOOK_AND_TRADES)}
    cfg = EmulatorConfig(mode="synth", rate=100, seed=5, venues=("binance_spot",))
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        async with running_collector(settings) as (collector, task):
            await until(lambda: collector.publisher.stats.acked > 50, 20)
            nats_server.stop()
            await until(lambda: not collector.state.nats_connected, 10)
            status, health = await http_json(f"http://127.0.0.1:{collector.health_port}/health")
            assert status == 200
            assert health["checks"]["nats"]["connected"] is False
            assert health["status"] == "degraded"
            messages = collector.state.ws_messages_total()
            await until(lambda: collector.state.ws_messages_total() > messages + 100, 10)  # feeds keep reading
            assert collector.publisher.buffered > 0
            nats_server.start()
            await until(lambda: collector.state.nats_connected, 20)
            await until(lambda: collector.publisher.buffered < 50, 20)
            assert not task.done()
    stats = collector.publisher.stats
    assert stats.dropped == 0 and stats.failed == 0
    nc = await connect_nats(nats_server.url)
    try:
        msgs = await stream_messages(nc, "MARKET_DATA") + await stream_messages(nc, "ORDERBOOK_SNAP")
    finally:
        await nc.close()
    stored = {m.headers["Nats-Msg-Id"] for m in msgs}
    produced = sum(collector.state.records.values())
    # everything produced was stored once (stop flushed the rest); re-sent copies were deduplicated by Msg-Id.
    # A message stored just before the stop whose ack was lost is confirmed on resend as a duplicate.
    assert len(stored) == len(msgs)
    assert stats.acked <= len(stored) <= stats.acked + stats.duplicates
    assert stats.acked + stats.duplicates >= produced
    trades = [records.decode(m.data) for m in msgs if m.subject.startswith("trade.")]
    assert len({t.trade_id for t in trades}) == len(trades) == collector.state.records[("trade", "binance_spot")]

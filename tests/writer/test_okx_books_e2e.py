"""End to end in today's OKX protocol: emulator -> collector -> JetStream -> writer -> chDB.

With ``checksum: 0`` on every ``books`` frame (OKX since 2026-06-23), with and without the
pushed snapshot (the changelog of 2026-02-12), OKX books for spot and USDT swaps land in the hot
table; a forced sequence gap recovers through the REST snapshot; the collector sends one
subscribe request per connection and never an unsubscribe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from marketprism_dagster.config import Settings
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.storage.embedded import EmbeddedStore

collector_runtime = pytest.importorskip("marketprism_dagster.collector.runtime")
emulator = pytest.importorskip("marketprism_dagster.emulator")

from marketprism_dagster.jetstream import connect  # noqa: E402
from tests.support.collector_helpers import emulator_overrides, http_text, metric_value, until  # noqa: E402

MARKETS = {m: (["BTC-USDT"], ["orderbook", "trade"]) for m in ("okx_spot", "okx_derivatives")}
EVENTS = "marketprism_collector_adapter_events_total"


@pytest.mark.parametrize("okx_books", ["zero", "rest"])
async def test_okx_books_land_in_todays_protocol_and_a_gap_recovers_through_the_rest_snapshot(
    okx_books: str,
    nats_server: EmbeddedNats,
    settings_factory: Callable[..., Settings],
    start_writer: Callable[..., Any],
) -> None:
    cfg = emulator.EmulatorConfig(
        mode="synth", rate=40, seed=11, venues=("okx",), okx_books=okx_books, faults="gap@okx:at=120"
    )
    async with emulator.Emulator(cfg) as emu:
        settings = settings_factory(
            nats_url=nats_server.url,
            **emulator_overrides(emu.urls, MARKETS),
            **{"orderbook.cadence_ms": 200, "writer.health_port": 0, "writer.monitor_interval_s": 0.5},
        )
        writer = await start_writer(settings)
        collector = collector_runtime.Collector(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        nc = await connect(nats_server.url)
        try:
            await asyncio.wait_for(collector.ready.wait(), 10)
            metrics = f"http://127.0.0.1:{collector.metrics_port}/metrics"

            def event(text: str, market: str, name: str) -> float:
                return metric_value(text, EVENTS, exchange=market, event=name)

            async def recovered() -> bool:
                if emu.faults_fired.get("gap", {}).get("okx", 0) != 1:
                    return False
                _, text = await http_text(metrics)
                gaps = sum(event(text, m, "sequence_gap") for m in MARKETS)
                rest_syncs = sum(event(text, m, "book_rest_sync") for m in MARKETS)
                # rest: each book starts from a REST snapshot, plus the one after the gap; zero: only the gap
                return gaps == 1 and rest_syncs == (3 if okx_books == "rest" else 1)

            await until(recovered, 40)
            before = dict(collector.state.records)
            await until(  # both books publish again after the recovery
                lambda: all(
                    collector.state.records.get(("orderbook", m), 0) > before.get(("orderbook", m), 0) + 2
                    for m in MARKETS
                ),
                20,
            )
            _, text = await http_text(metrics)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        await writer.wait_committed(nc, timeout=60)
        await nc.close()
        await writer.close()
        requests = emu.stats["okx"].get("ws_ops", {})

    for m in MARKETS:
        assert event(text, m, "checksum_failure") == 0
        assert event(text, m, "ws_subscribe_request") == 1  # one connection, one subscribe request
    # the emulator saw one subscribe request per connection (the shared OKX socket of each market) and
    # never an unsubscribe: no subscribe/unsubscribe loop
    assert requests.get("unsubscribe", 0) == 0
    assert requests.get("subscribe") == emu.stats["okx"]["ws_connections"] == 2
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        rows = dict(
            store.query_rows("SELECT exchange, count() FROM marketprism_hot.orderbook GROUP BY exchange")
        )
        crossed = store.query_value(
            "SELECT count() FROM marketprism_hot.orderbook WHERE length(bids) > 0 AND length(asks) > 0"
            " AND bids[1].1 >= asks[1].1"
        )
    finally:
        store.close()
    assert rows.get("okx_spot", 0) > 5 and rows.get("okx_derivatives", 0) > 5
    assert crossed == 0

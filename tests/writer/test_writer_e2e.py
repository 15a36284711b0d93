"""End to end: the emulator replays the recorded fixtures -> collector -> JetStream -> writer -> chDB.

The rows in the hot tables must equal the records the collector published, table by table.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from marketprism_dagster import records
from marketprism_dagster.config import Settings
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.records import DATA_TYPES, RECORD_TYPES
from marketprism_dagster.storage.columns import records_to_arrow
from marketprism_dagster.storage.embedded import EmbeddedStore

collector_runtime = pytest.importorskip("marketprism_dagster.collector.runtime")
emulator = pytest.importorskip("marketprism_dagster.emulator")

from marketprism_dagster.jetstream import connect  # noqa: E402
from tests.support.collector_helpers import REPLAY_MARKETS, emulator_overrides, stream_messages, until  # noqa: E402
from tests.support.writer_helpers import duplicate_count  # noqa: E402


def rows_of(table: pa.Table, data_type: str) -> list[tuple[Any, ...]]:
    """Rows as comparable tuples in identity order (LowCardinality/dictionary decoded, decimals as Decimal)."""
    rt = RECORD_TYPES[data_type]
    cols = [table.column(n).to_pylist() for n in rt.column_names]
    rows = list(zip(*cols, strict=True))
    idx = [rt.column_names.index(n) for n in rt.identity]
    return sorted(rows, key=lambda r: tuple(str(r[i]) for i in idx))


async def test_replayed_fixtures_land_in_the_hot_tables_exactly_as_published(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings], fixtures_dir: Path,
    start_writer: Callable[..., Any],
) -> None:
    markets = {m: (v[0], v[1]) for m, v in REPLAY_MARKETS.items()}
    cfg = emulator.EmulatorConfig(
        mode="replay", speed=0, fixtures=fixtures_dir, symbols={m: tuple(v[0]) for m, v in markets.items()}
    )
    async with emulator.Emulator(cfg) as emu:
        settings = settings_factory(
            nats_url=nats_server.url, **emulator_overrides(emu.urls, markets),
            **{"orderbook.cadence_ms": 0, "writer.health_port": 0, "writer.monitor_interval_s": 0.5},
        )
        writer = await start_writer(settings)
        collector = collector_runtime.Collector(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        nc = await connect(nats_server.url)
        try:
            await asyncio.wait_for(collector.ready.wait(), 10)
            js = nc.jetstream()

            async def quiet() -> bool:
                n = sum([(await js.stream_info(s)).state.messages for s in ("MARKET_DATA", "ORDERBOOK_SNAP")])
                await asyncio.sleep(0.5)
                m = sum([(await js.stream_info(s)).state.messages for s in ("MARKET_DATA", "ORDERBOOK_SNAP")])
                return n > 100 and n == m and collector.publisher.pending == 0

            await until(quiet, 60, interval=0.1)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
        await writer.wait_committed(nc, timeout=60)
        msgs = await stream_messages(nc, "MARKET_DATA") + await stream_messages(nc, "ORDERBOOK_SNAP")
        await nc.close()
        await writer.close()

    published: dict[str, list[Any]] = defaultdict(list)
    for m in msgs:
        r = records.decode(m.data)
        published[records.data_type_of(r)].append(r)
    assert {t for t, v in published.items() if v} >= {"trade", "orderbook", "volatility_index"}
    store = EmbeddedStore(settings.embedded_store_path)
    try:
        for t in DATA_TYPES:
            got = store.query_arrow(f"SELECT * FROM marketprism_hot.`{t}`")
            want = records_to_arrow(t, published.get(t, []))
            assert got.num_rows == want.num_rows, t
            assert rows_of(got, t) == rows_of(want, t), t
            assert duplicate_count(store, "marketprism_hot", t) == 0
        dead = store.query_value("SELECT sum(dead_letters) FROM marketprism_meta.ingest_ledger")
    finally:
        store.close()
    assert dead == 0

"""The collector against the emulator replaying every fixture session: JetStream gets what the recording implies."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from marketprism_dagster import records
from marketprism_dagster.collector.health import collector_feed_status, read_health
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.normalize import merge_by_time, read_session, replay
from marketprism_dagster.venues import adapter_for
from tests.support.collector_helpers import (
    REPLAY_MARKETS,
    connect_nats,
    emulator_overrides,
    http_json,
    http_text,
    identity_view,
    metric_value,
    stream_messages,
    until,
)


def offline_records(settings: Settings, market: str, fixtures_dir: Path) -> dict[str, dict[str, Any]]:
    """What `marketprism normalize` produces for the market's recording: msg_id -> content."""
    stems = REPLAY_MARKETS[market][2]
    files = sorted(p for s in stems for p in (fixtures_dir / "sessions").glob(f"{s}.*.jsonl"))
    adapter = adapter_for(market, settings.markets[market], settings.orderbook)
    result = replay(adapter, merge_by_time(read_session(p) for p in files))
    wanted = set(settings.markets[market].symbols)
    return {records.msg_id(r): identity_view(r) for r in result.records if r.symbol in wanted}


def raw_trade_ids(fixtures_dir: Path) -> dict[str, set[str]]:
    """Trade ids counted straight from the recorded frames (independent of the adapters)."""
    out: dict[str, set[str]] = {m: set() for m in ("binance_spot", "binance_derivatives", "okx_spot")}
    spot = {s.replace("-", "") for s in REPLAY_MARKETS["binance_spot"][0]}
    usdm = {s.replace("-", "") for s in REPLAY_MARKETS["binance_derivatives"][0]}
    for stem, market, symbols in (
        ("binance_spot", "binance_spot", spot),
        ("binance_usdm", "binance_derivatives", usdm),
    ):
        for line in (fixtures_dir / "sessions" / f"{stem}.ws.jsonl").open():
            rec = json.loads(line)
            data = (rec.get("data") or {}).get("data") if rec["kind"] == "recv" else None
            if isinstance(data, dict) and data.get("e") == "aggTrade" and data["s"] in symbols:
                out[market].add(str(data["a"]))
    for line in (fixtures_dir / "sessions" / "okx.ws.jsonl").open():
        rec = json.loads(line)
        data = rec.get("data") if rec["kind"] == "recv" else None
        if isinstance(data, dict) and data.get("arg", {}).get("channel") == "trades" and "data" in data:
            out["okx_spot"].update(t["tradeId"] for t in data["data"] if t["instId"] == "BTC-USDT")
    return out


def raw_okx_book_updates(fixtures_dir: Path) -> int:
    n = 0
    for line in (fixtures_dir / "sessions" / "okx.ws.jsonl").open():
        data = json.loads(line).get("data")
        if isinstance(data, dict) and data.get("arg", {}) == {"channel": "books", "instId": "BTC-USDT"}:
            n += data.get("action") == "update"
    return n


async def test_replayed_sessions_reach_jetstream_exactly_once(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings], fixtures_dir: Path
) -> None:
    markets = {m: (v[0], v[1]) for m, v in REPLAY_MARKETS.items()}
    cfg = EmulatorConfig(
        mode="replay", speed=0, fixtures=fixtures_dir, symbols={m: tuple(v[0]) for m, v in markets.items()}
    )
    async with Emulator(cfg) as emu:
        settings = settings_factory(
            nats_url=nats_server.url, **emulator_overrides(emu.urls, markets), **{"orderbook.cadence_ms": 0}
        )
        expected: dict[str, dict[str, Any]] = {}
        for m in ("binance_spot", "binance_derivatives", "okx_spot"):
            expected.update(offline_records(settings, m, fixtures_dir))
        collector = Collector(settings)
        stop = asyncio.Event()
        task = asyncio.create_task(collector.run(stop))
        nc = await connect_nats(nats_server.url)
        try:
            await asyncio.wait_for(collector.ready.wait(), 10)
            js = nc.jetstream()

            async def arrived() -> bool:
                try:
                    n = sum([(await js.stream_info(s)).state.messages for s in ("MARKET_DATA", "ORDERBOOK_SNAP")])
                except Exception:
                    return False
                return n >= len(expected) + 2 and collector.publisher.pending == 0

            await until(arrived, 60)
            health_status, health = await http_json(f"http://127.0.0.1:{collector.health_port}/health")
            _, metrics = await http_text(f"http://127.0.0.1:{collector.metrics_port}/metrics")
            msgs = await stream_messages(nc, "MARKET_DATA") + await stream_messages(nc, "ORDERBOOK_SNAP")
            await asyncio.sleep(0.5)  # anything extra would be published by now
            msgs_later = await stream_messages(nc, "MARKET_DATA") + await stream_messages(nc, "ORDERBOOK_SNAP")
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await nc.close()
        faults = emu.faults_fired

    ids = [m.headers["Nats-Msg-Id"] for m in msgs]
    assert len(ids) == len(set(ids)), "a record reached JetStream twice"
    got = {m.headers["Nats-Msg-Id"]: records.decode(m.data) for m in msgs}
    assert all(records.msg_id(r) == mid for mid, r in got.items())
    dvol = {mid: r for mid, r in got.items() if records.data_type_of(r) == "volatility_index"}
    rest = {mid: identity_view(r) for mid, r in got.items() if mid not in dvol}
    # every record the recording implies, nothing else, same content (receive times aside)
    assert rest.keys() == expected.keys()
    assert rest == expected
    assert len(msgs_later) == len(msgs)

    # independent counts from the raw frames: every trade id exactly once
    trade_ids = raw_trade_ids(fixtures_dir)
    for market, tids in trade_ids.items():
        published = sorted(
            r.trade_id for r in got.values() if r.exchange == market and records.data_type_of(r) == "trade"
        )
        assert published == sorted(tids), market
    assert sum(len(v) for v in trade_ids.values()) == 2 + 91 + 69
    # OKX: one book per update frame, all checksums verified
    okx_books = [r for r in got.values() if r.exchange == "okx_spot" and records.data_type_of(r) == "orderbook"]
    assert len(okx_books) == raw_okx_book_updates(fixtures_dir) == 97
    assert metric_value(metrics, "marketprism_collector_checksum_failures_total") == 0
    assert metric_value(metrics, "marketprism_collector_resyncs_total") == 0
    # Binance books synchronized and published for every recorded symbol
    for market in ("binance_spot", "binance_derivatives"):
        symbols = {r.symbol for r in got.values() if r.exchange == market and records.data_type_of(r) == "orderbook"}
        assert symbols == set(REPLAY_MARKETS[market][0])
    # Deribit DVOL from the documented examples: the notification (volatility 129.36) for both indices
    assert {r.symbol for r in dvol.values()} == {"BTC", "ETH"}
    assert Counter(str(r.index_value) for r in dvol.values() if r.timestamp == 1619777946007) == {"129.36": 2}
    assert faults == {} or all(not v for v in faults.values())

    assert health_status == 200
    assert health["status"] == "healthy", health["reasons"]
    statuses = {(t, m): e["status"] for t, per in health["coverage"].items() for m, e in per.items()}
    assert statuses == {(t, m): "ok" for m, (_, types) in markets.items() for t in types}
    assert metric_value(metrics, "marketprism_publish_failed_total") == 0
    assert metric_value(metrics, "marketprism_publish_buffer_drops_total") == 0
    # the health file, written on stop
    final = read_health(settings.data_dir)
    assert final is not None and final["status"] == "stopped"
    assert collector_feed_status(settings, "liquidation") is None  # a stopped collector vouches for nothing

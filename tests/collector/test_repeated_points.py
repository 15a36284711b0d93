"""A REST poll that answers the same recent points again publishes each point once, across restarts too."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from nats.aio.client import Client as NATS

from marketprism_dagster import records
from marketprism_dagster.collector.points import PublishedPoints, points_path
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.publisher import JetStreamPublisher
from marketprism_dagster.venues.base import Instrument, Output
from tests.support.collector_helpers import (
    emulator_overrides,
    http_text,
    metric_value,
    running_collector,
    stream_messages,
    until,
)


def _doc_body(fixtures_dir: Path, example_id: str) -> bytes:
    doc = json.loads((fixtures_dir / "documented" / "binance_usdm_long_short_ratio.json").read_text())
    (example,) = [e for e in doc["examples"] if e.get("id") == example_id]
    return orjson.dumps(example["json"])


def _lsr_poll_output(collector: Collector, body: bytes, received_at: int) -> tuple[str, Output]:
    adapter = collector.adapters["binance_derivatives"]
    adapter.instruments = {"BTCUSDT": Instrument("BTC-USDT", "BTCUSDT", "BTC", "USDT")}
    poll = next(p for p in adapter.rest_polls() if p.data_type == "lsr_top_position" and p.symbol == "BTCUSDT")
    return poll.key, adapter.on_rest(poll, body, received_at)


def test_repeated_lsr_points_are_dropped_and_counted(settings_factory, fixtures_dir):
    settings = settings_factory(collector__shards={"main": ["binance_derivatives"]})
    collector = Collector(settings)
    body = _doc_body(fixtures_dir, "binance_usdm/topLongShortPositionRatio/doc")
    points = len(orjson.loads(body))
    assert points >= 2

    key, out = _lsr_poll_output(collector, body, 1)
    first = collector.points.drop_repeats(key, out)
    assert len(first.records) == points and "repeated_point" not in first.events
    collector.points.advance(key, first.records, [])
    again = collector.points.drop_repeats(*_lsr_poll_output(collector, body, 2))
    assert again.records == [] and again.events["repeated_point"] == points


def test_watermark_is_saved_only_once_everything_before_it_is_acknowledged(tmp_path, settings_factory, fixtures_dir):
    settings = settings_factory(collector__shards={"main": ["binance_derivatives"]})
    body = _doc_body(fixtures_dir, "binance_usdm/topLongShortPositionRatio/doc")
    newest = max(int(p["timestamp"]) for p in orjson.loads(body))
    path = tmp_path / "points.json"
    points = PublishedPoints(path)
    key, out = _lsr_poll_output(Collector(settings), body, 1)
    points.advance(key, points.drop_repeats(key, out).records, [])
    points.checkpoint(10.0)

    # a message submitted at 9.5 is still waiting for its PubAck: the checkpoint at 10.0 may cover it
    assert points.save_acknowledged(oldest_pending=9.5) and not path.exists()
    # everything older than 10.5 is acknowledged: the checkpoint is safe
    assert points.save_acknowledged(oldest_pending=10.5)
    assert json.loads(path.read_text()) == {key: newest}

    reloaded = PublishedPoints(path)
    assert reloaded.newest == {key: newest}
    _, repeat = _lsr_poll_output(Collector(settings), body, 2)
    assert reloaded.drop_repeats(key, repeat).records == []


def test_unreadable_watermark_file_starts_empty(tmp_path):
    path = tmp_path / "points.json"
    path.write_text("{not json")
    assert PublishedPoints(path).newest == {}
    path.write_text("[1, 2]")
    assert PublishedPoints(path).newest == {}


async def test_restarted_collector_does_not_republish_points_of_its_previous_run(
    nats_server: EmbeddedNats, settings_factory: Callable[..., Settings]
) -> None:
    markets = {"binance_derivatives": (["BTC-USDT"], ["lsr_top_position", "lsr_all_account"])}
    cfg = EmulatorConfig(mode="synth", rate=10, seed=5, venues=("binance",))
    async with Emulator(cfg) as emu:
        settings = settings_factory(nats_url=nats_server.url, **emulator_overrides(emu.urls, markets))
        async with running_collector(settings) as (collector, _):
            await until(lambda: collector.state.records.get(("lsr_all_account", "binance_derivatives"), 0) > 0, 20)
            await until(lambda: collector.state.records.get(("lsr_top_position", "binance_derivatives"), 0) > 0, 20)
            first_run = dict(collector.state.records)
        saved = json.loads(points_path(settings.data_dir, "main").read_text())
        assert len(saved) == 2 and all(v > 0 for v in saved.values())

        async with running_collector(settings) as (collector, _):
            url = f"http://127.0.0.1:{collector.metrics_port}/metrics"

            async def both_polled() -> bool:
                _, text = await http_text(url)
                return metric_value(text, "marketprism_collector_adapter_events_total", event="repeated_point") >= sum(
                    first_run.values()
                )

            await until(both_polled, 20)
            assert collector.state.records == {}, "no point of the first run is published again"
            assert collector.publisher.stats.submitted == 0


async def test_point_rejected_by_a_full_publish_buffer_is_published_by_the_next_poll_and_not_persisted(
    js_nc: NATS, settings_factory: Callable[..., Settings], fixtures_dir: Path
) -> None:
    settings = settings_factory(collector__shards={"main": ["binance_derivatives"]})
    body = _doc_body(fixtures_dir, "binance_usdm/topLongShortPositionRatio/doc")
    times = sorted(int(p["timestamp"]) for p in orjson.loads(body))
    assert len(times) >= 2
    collector = Collector(settings)
    collector.publisher = await JetStreamPublisher(js_nc, buffer_size=1).start()  # room for 1 of the points
    now_ms = int(time.time() * 1000)  # a real receive time: records are validated before publishing
    key, out = _lsr_poll_output(collector, body, now_ms)

    collector._handle_points("binance_derivatives", key, out)
    assert collector.publisher.stats.dropped == len(times) - 1
    # the watermark stops before the oldest rejected point, in memory and in the saved file
    assert collector.points.newest == {key: times[0]}
    assert await collector.publisher.flush(10)
    collector._save_points()
    assert json.loads(points_path(settings.data_dir, "main").read_text()) == {key: times[0]}

    # the next poll repeats the points: the rejected ones are published now, the accepted ones are repeats
    _, again = _lsr_poll_output(collector, body, now_ms + 1)
    collector._handle_points("binance_derivatives", key, again)
    assert await collector.publisher.flush(10)
    await collector.publisher.close()
    assert collector.points.newest == {key: times[-1]}
    msgs = await stream_messages(js_nc, "MARKET_DATA", "lsr_top_position.>")
    assert sorted(records.decode(m.data).timestamp for m in msgs) == times

"""A REST poll that answers the same recent points again publishes each point once."""

from __future__ import annotations

import json

import orjson

from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.venues.base import Instrument


def _doc_body(fixtures_dir, example_id: str) -> bytes:
    doc = json.loads((fixtures_dir / "documented" / "binance_usdm_long_short_ratio.json").read_text())
    (example,) = [e for e in doc["examples"] if e.get("id") == example_id]
    return orjson.dumps(example["json"])


def test_repeated_lsr_points_are_dropped_and_counted(settings_factory, fixtures_dir):
    settings = settings_factory(collector__shards={"main": ["binance_derivatives"]})
    collector = Collector(settings)
    adapter = collector.adapters["binance_derivatives"]
    adapter.instruments = {"BTCUSDT": Instrument("BTC-USDT", "BTCUSDT", "BTC", "USDT")}
    poll = next(p for p in adapter.rest_polls() if p.data_type == "lsr_top_position" and p.symbol == "BTCUSDT")
    body = _doc_body(fixtures_dir, "binance_usdm/topLongShortPositionRatio/doc")
    points = len(orjson.loads(body))
    assert points >= 2

    first = collector._drop_repeated_points(poll.key, adapter.on_rest(poll, body, 1))
    assert len(first.records) == points and "repeated_point" not in first.events
    again = collector._drop_repeated_points(poll.key, adapter.on_rest(poll, body, 2))
    assert again.records == [] and again.events["repeated_point"] == points

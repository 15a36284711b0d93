"""Every HTTP endpoint of the collector, success shapes and each error case, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import psutil
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from marketprism_dagster.collector.api import polled_types
from marketprism_dagster.collector.health import collector_feed_status, read_health
from marketprism_dagster.collector.runtime import Collector
from marketprism_dagster.collector.state import MarketState
from marketprism_dagster.config import Settings
from marketprism_dagster.emulator import Emulator, EmulatorConfig
from marketprism_dagster.nats_server import EmbeddedNats, free_port
from marketprism_dagster.records import DATA_TYPES
from tests.support.collector_helpers import (
    emulator_overrides,
    http_json,
    http_text,
    metric_value,
    running_collector,
    until,
)
from tests.support.settings import settings_in

MARKETS = {
    "binance_spot": (["BTC-USDT", "ETH-USDT"], ["orderbook", "trade"]),
    "binance_derivatives": (["BTC-USDT"], ["orderbook", "trade", "liquidation"]),
    "deribit_derivatives": (["BTC", "ETH"], ["volatility_index"]),
}
ERROR_KEYS = {"status", "error_code", "message", "data", "timestamp"}


class Running:
    def __init__(self, collector: Collector, emu: Emulator) -> None:
        self.collector = collector
        self.emu = emu
        self.base = f"http://127.0.0.1:{collector.health_port}"
        self.metrics = f"http://127.0.0.1:{collector.metrics_port}/metrics"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """One collector for the module's read-only endpoint tests (started once: about a second each)."""
    root = tmp_path_factory.mktemp("api")
    nats_server = EmbeddedNats(root / "nats", port=free_port()).start()
    try:
        cfg = EmulatorConfig(mode="synth", rate=50, seed=11, venues=("binance", "deribit"))
        async with Emulator(cfg) as emu:
            settings = settings_in(root)(nats_url=nats_server.url, **emulator_overrides(emu.urls, MARKETS))
            async with running_collector(settings) as (collector, _task):
                wanted = {(t, m) for m, (_, types) in MARKETS.items() for t in types if t != "liquidation"}
                await until(lambda: wanted <= set(collector.state.last_success) and collector.state.running, 20)
                yield Running(collector, emu)
    finally:
        nats_server.stop()


# the tests that share the module's collector run on its event loop
shared = pytest.mark.asyncio(loop_scope="module")


def assert_success(status: int, body: dict[str, Any]) -> dict[str, Any]:
    assert status == 200, body
    assert body["status"] == "success"
    assert set(body) == {"status", "message", "data", "timestamp"}
    assert body["timestamp"].endswith("Z")
    return body["data"]


def assert_error(status: int, body: dict[str, Any], http_status: int, code: str) -> str:
    assert status == http_status, body
    assert set(body) == ERROR_KEYS
    assert (body["status"], body["error_code"], body["data"]) == ("error", code, None)
    return body["message"]


@shared
async def test_health_reports_every_configured_type_and_market(running: Running) -> None:
    status, body = await http_json(running.base + "/health")
    assert status == 200
    assert body["status"] == "healthy", body["reasons"]
    assert {(t, m) for t, per in body["coverage"].items() for m in per} == {
        (t, m) for m, (_, types) in MARKETS.items() for t in types
    }
    trade = body["coverage"]["trade"]["binance_spot"]
    assert trade["status"] == "ok" and trade["threshold_seconds"] == 60 and trade["age_seconds"] < 60
    assert body["coverage"]["liquidation"]["binance_derivatives"]["status"] == "ok"  # sparse: its feeds are up
    assert all(f["connected"] for f in body["feeds"].values())
    assert body["checks"]["nats"]["connected"] is True
    # the same report on disk (it publishes the bound port), and what the integrity rules read over HTTP
    await until(lambda: (read_health(running.collector.settings.data_dir) or {}).get("status") == "healthy", 10)
    feeds = await asyncio.to_thread(collector_feed_status, running.collector.settings, "liquidation")
    assert feeds is not None and feeds.healthy and feeds.detail == "binance_derivatives=ok"


@shared
async def test_status(running: Running) -> None:
    data = assert_success(*await http_json(running.base + "/api/v1/status"))
    assert data["service"] == "marketprism-collector"
    assert data["status"] == "running"
    assert data["environment"] == "test"
    assert data["uptime_seconds"] > 0
    assert data["version"] == "0.1.0"
    assert data["supported_exchanges"] == list(MARKETS)
    assert data["features"]["orderbook"] is True
    assert data["features"]["rest_polling"] is False  # no configured type here is polled
    assert data["collection_stats"]["websocket_connections"] == len(running.collector.state.feeds)


@shared
async def test_stats_are_real_values(running: Running) -> None:
    data = assert_success(*await http_json(running.base + "/api/v1/collector/stats"))
    cs = data["collection_stats"]
    assert set(cs) >= {
        "rest_requests",
        "websocket_messages",
        "errors",
        "last_update",
        "active_sources",
        "websocket_connections",
    }
    assert cs["websocket_messages"] > 0 and cs["rest_requests"] >= 3  # instruments of 3 markets at least
    assert cs["active_sources"] == 3
    rss_mb = psutil.Process().memory_info().rss / 2**20
    assert abs(data["performance_metrics"]["memory_usage_mb"] - rss_mb) < 50
    assert data["performance_metrics"]["collections_per_minute"] >= 0
    assert data["service_stats"]["pid"] == psutil.Process().pid
    assert data["data_summary"]["total_records"] > 0
    assert data["publish_stats"]["connected"] is True


@shared
async def test_collector_status(running: Running) -> None:
    data = assert_success(*await http_json(running.base + "/api/v1/collector/status"))
    assert set(data) == {
        "service_info",
        "feature_status",
        "collector_stats",
        "exchanges",
        "data_summary",
        "health_indicators",
    }
    hi = data["health_indicators"]
    assert hi["overall_health"] == "healthy" and hi["data_flow_active"] is True
    assert 0 <= hi["error_rate"] < 1 and hi["last_activity"].endswith("Z")
    assert set(data["exchanges"]) == set(MARKETS)


@shared
async def test_exchanges(running: Running) -> None:
    data = assert_success(*await http_json(running.base + "/api/v1/collector/exchanges"))
    for market in MARKETS:
        e = data["exchanges"][market]
        assert (e["enabled"], e["websocket_connected"], e["rest_api_available"], e["status"]) == (
            True,
            True,
            True,
            "active",
        )
        assert e["last_update"].endswith("Z")
    assert data["summary"] == {
        "total_exchanges": 3,
        "enabled_exchanges": 3,
        "websocket_connected": 3,
        "active_exchanges": 3,
    }


@shared
async def test_data_returns_recent_records_newest_first(running: Running) -> None:
    url = running.base + "/api/v1/collector/data"
    data = assert_success(*await http_json(url + "?exchange=binance_spot&type=trade&limit=3"))
    rows = data["recent_data"]["trade"]
    assert len(rows) == 3 and set(data["recent_data"]) == {"trade"}
    assert all(r["exchange"] == "binance_spot" and r["data_type"] == "trade" for r in rows)
    assert [r["received_at"] for r in rows] == sorted((r["received_at"] for r in rows), reverse=True)
    assert data["metadata"]["limit"] == 3 and data["metadata"]["data_freshness_seconds"] < 60
    default = assert_success(*await http_json(url))
    assert default["metadata"] == {**default["metadata"], "exchange": "all", "type": "all", "limit": 10}
    assert all(0 < len(v) <= 10 for v in default["recent_data"].values())
    assert {"orderbook", "trade", "volatility_index"} <= set(default["recent_data"])
    assert default["summary"]["total_records"] == sum(len(v) for v in default["recent_data"].values())
    full = assert_success(*await http_json(url + "?limit=100&type=volatility_index"))
    assert {r["symbol"] for r in full["recent_data"]["volatility_index"]} == {"BTC", "ETH"}


@shared
@pytest.mark.parametrize("limit", ["0", "101", "abc", "-1", "1.5", ""])
async def test_data_limit_outside_1_to_100_is_invalid(running: Running, limit: str) -> None:
    msg = assert_error(
        *await http_json(running.base + f"/api/v1/collector/data?limit={limit}"), 400, "INVALID_PARAMETERS"
    )
    assert "1 to 100" in msg


@shared
async def test_data_unknown_exchange_or_type_lists_allowed_values(running: Running) -> None:
    msg = assert_error(
        *await http_json(running.base + "/api/v1/collector/data?exchange=kraken"), 400, "INVALID_PARAMETERS"
    )
    assert "kraken" in msg and "all, binance_spot, binance_derivatives, deribit_derivatives" in msg
    msg = assert_error(
        *await http_json(running.base + "/api/v1/collector/data?type=candles"), 400, "INVALID_PARAMETERS"
    )
    assert "candles" in msg and ", ".join(["all", *DATA_TYPES]) in msg


@shared
async def test_metrics_exposition_has_the_seeds_names(running: Running) -> None:
    state = running.collector.state
    # the collector keeps receiving while the scrape runs: a key no feed writes holds still, the live key is
    # read before and after the scrape (it only grows)
    state.last_success[("trade", "scrape_probe")] = 1_764_000_000_123
    before = state.last_success[("trade", "binance_spot")]
    status, text = await http_text(running.metrics)
    after = state.last_success[("trade", "binance_spot")]
    assert status == 200
    for name in (
        "marketprism_collector_errors_total",
        "marketprism_orderbook_queue_drops_total",
        "marketprism_collector_last_success_timestamp_seconds",
        "marketprism_publish_latency_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text
    last = metric_value(
        text, "marketprism_collector_last_success_timestamp_seconds", exchange="binance_spot", data_type="trade"
    )
    assert before <= round(last * 1000) <= after
    probe = metric_value(
        text, "marketprism_collector_last_success_timestamp_seconds", exchange="scrape_probe", data_type="trade"
    )
    assert round(probe * 1000) == 1_764_000_000_123 and probe == 1_764_000_000.123
    assert metric_value(text, "marketprism_publish_acked_total") > 0
    assert metric_value(text, "marketprism_publish_latency_seconds_count") > 0


def test_rest_polled_types_come_from_the_venues_declared_polls() -> None:
    def market(venue: str, market_type: str, *types: str) -> MarketState:
        return MarketState(venue, market_type, types, ("BTC-USDT",))

    assert polled_types([market("binance", "perpetual", "trade", "open_interest", "lsr_all_account")]) == {
        "open_interest",
        "lsr_all_account",
    }
    assert polled_types([market("okx", "perpetual", "funding_rate", "lsr_top_position")]) == {"lsr_top_position"}
    # a type another venue polls, on a venue or market type that streams it (or does not offer it): not polled
    assert polled_types([market("okx", "perpetual", "open_interest"), market("binance", "spot", "trade")]) == set()
    assert polled_types([market("deribit", "options", "volatility_index")]) == set()


@shared
async def test_api_answers_service_unavailable_while_stopping(running: Running) -> None:
    running.collector.state.stopping = True  # what shutdown sets before flushing
    try:
        for path in ("/api/v1/status", "/api/v1/collector/stats", "/api/v1/collector/data"):
            assert_error(*await http_json(running.base + path), 503, "SERVICE_UNAVAILABLE")
    finally:
        running.collector.state.stopping = False  # the module's other tests share this collector


# ---------------------------------------------------------------- error codes without a running collector


async def _serve(collector: Collector) -> TestServer:
    server = TestServer(collector.api.app(with_metrics=True), host="127.0.0.1")
    await server.start_server()
    return server


async def test_no_markets_is_collector_not_initialized(settings_factory: Callable[..., Settings]) -> None:
    settings = settings_factory(
        **{
            f"markets.{m}.enabled": False
            for m in ("binance_spot", "binance_derivatives", "okx_spot", "okx_derivatives", "deribit_derivatives")
        }
    )
    server = await _serve(Collector(settings))
    try:
        for path in (
            "/api/v1/status",
            "/api/v1/collector/stats",
            "/api/v1/collector/status",
            "/api/v1/collector/exchanges",
            "/api/v1/collector/data",
        ):
            msg = assert_error(*await http_json(str(server.make_url(path))), 503, "COLLECTOR_NOT_INITIALIZED")
            assert "markets.<id>.enabled" in msg
    finally:
        await server.close()


async def test_handler_failures_map_to_the_seeds_codes(settings_factory: Callable[..., Settings]) -> None:
    collector = Collector(settings_factory())
    collector.state.feeds["broken"] = None  # type: ignore[assignment]  # state no handler can read
    collector.state.recent[("trade", "binance_spot")] = [object()]  # type: ignore[assignment]
    server = await _serve(collector)
    try:
        for path, code in (
            ("/api/v1/status", "INTERNAL_ERROR"),
            ("/api/v1/collector/stats", "STATS_UNAVAILABLE"),
            ("/api/v1/collector/status", "INTERNAL_ERROR"),
            ("/api/v1/collector/exchanges", "EXCHANGE_STATUS_ERROR"),
            ("/api/v1/collector/data", "DATA_RETRIEVAL_ERROR"),
        ):
            msg = assert_error(*await http_json(str(server.make_url(path))), 500, code)
            assert path in msg
    finally:
        await server.close()


async def test_health_is_503_with_reasons_after_grace_when_data_is_missing(
    settings_factory: Callable[..., Settings],
) -> None:
    collector = Collector(settings_factory(**{"collector.grace_s": 0}))
    server = await _serve(collector)
    try:
        async with aiohttp.ClientSession() as s, s.get(str(server.make_url("/health"))) as r:
            status, body = r.status, await r.json()
    finally:
        await server.close()
    assert status == 503 and body["status"] == "unhealthy"
    assert "trade/binance_spot: no data yet" in body["reasons"]
    assert body["coverage"]["trade"]["binance_spot"] == {
        "last_success_ts": None,
        "age_seconds": None,
        "status": "missing",
        "threshold_seconds": 60,
    }
    assert "grace" not in body


async def test_health_inside_grace_is_200_while_waiting(settings_factory: Callable[..., Settings]) -> None:
    server = await _serve(Collector(settings_factory(**{"collector.grace_s": 120})))
    try:
        status, body = await http_json(str(server.make_url("/health")))
    finally:
        await server.close()
    assert status == 200
    assert body["grace"]["seconds"] == 120 and 0 < body["grace"]["remaining_seconds"] <= 120
    assert body["coverage"]["trade"]["binance_spot"]["status"] == "waiting"

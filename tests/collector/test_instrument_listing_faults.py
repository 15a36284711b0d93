"""Malformed instrument listings (issue 12, item 3): one bad entry is skipped, counted and logged once and
the rest loads; a listing the adapter cannot read at all never ends the market's task (retried with backoff).

The listings are the REAL recorded exchangeInfo / OKX instruments bodies, served over a socket on 127.0.0.1,
with one or two entries broken the way the fuzz found (an entry that is a list, a missing key, a null ctVal).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from marketprism_dagster.config import Settings
from marketprism_dagster.normalize import read_session
from marketprism_dagster.venues.binance import parse_exchange_info
from marketprism_dagster.venues.okx import parse_instruments
from tests.support.collector_helpers import emulator_overrides, http_text, metric_value, running_collector, until


def recorded(fixtures_dir: Path, name: str) -> dict[str, Any]:
    (rec,) = [r for r in read_session(fixtures_dir / "sessions" / name) if r["kind"] == "http"][:1]
    return rec["data"]  # type: ignore[no-any-return]


def test_one_malformed_exchange_info_entry_is_skipped_and_the_rest_loads(fixtures_dir: Path) -> None:
    info = copy.deepcopy(recorded(fixtures_dir, "binance_spot.info.jsonl"))
    total = len(info["symbols"])
    info["symbols"][0] = ["ETHBTC"]  # an entry that is not an object: AttributeError before
    del info["symbols"][1]["baseAsset"]  # KeyError before
    info["symbols"][2]["symbol"] = {"nested": ["junk"]}  # unhashable: TypeError before
    skipped: list[str] = []
    listed = parse_exchange_info(json.dumps(info), perpetual=False, skipped=skipped)
    assert len(listed) == total - 3 and len(skipped) == 3
    assert "NKNUSDT" in {i.exchange_symbol for i in listed}


def test_one_malformed_okx_instrument_is_skipped_and_the_rest_loads(fixtures_dir: Path) -> None:
    bodies = [r["data"] for r in read_session(fixtures_dir / "sessions" / "okx.info.jsonl") if r["kind"] == "http"]
    swaps = copy.deepcopy(next(b for b in bodies if b["data"] and b["data"][0]["instType"] == "SWAP"))
    good = parse_instruments(json.dumps(swaps))
    swaps["data"][0]["ctVal"] = None  # Decimal(None): TypeError before
    swaps["data"][1]["ctVal"] = "abc"  # InvalidOperation before
    swaps["data"][2]["ctVal"] = "-1"  # accepted before: every quantity of that swap negative
    skipped: list[str] = []
    listed = parse_instruments(json.dumps(swaps), skipped)
    assert len(listed) == len(good) - 3 and len(skipped) == 3
    assert all(i.contract_value is not None and i.contract_value > 0 for i in listed)


async def _listing_server(bodies: list[bytes]) -> tuple[TestServer, list[int]]:
    """Serves ``bodies`` in turn at /api/v3/exchangeInfo (the last one from then on); counts the requests."""
    served = [0]

    async def exchange_info(request: web.Request) -> web.Response:
        body = bodies[min(served[0], len(bodies) - 1)]
        served[0] += 1
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v3/exchangeInfo", exchange_info)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, served


async def test_collector_loads_the_rest_of_a_listing_with_malformed_entries(
    fixtures_dir: Path, settings_factory: Callable[..., Settings]
) -> None:
    info = copy.deepcopy(recorded(fixtures_dir, "binance_spot.info.jsonl"))
    info["symbols"][0] = ["ETHBTC"]
    del info["symbols"][1]["quoteAsset"]
    server, served = await _listing_server([json.dumps(info).encode()])
    url = str(server.make_url("")).rstrip("/")
    urls = {"binance_spot": {"rest": url, "ws": url.replace("http", "ws")}}
    settings = settings_factory(**emulator_overrides(urls, {"binance_spot": (["NKN-USDT"], ["trade"])}))
    try:
        async with running_collector(settings) as (collector, _task):
            await until(lambda: collector.state.markets["binance_spot"].instruments_loaded, 10)
            assert list(collector.adapters["binance_spot"].instruments) == ["NKNUSDT"]
            _, text = await http_text(f"http://127.0.0.1:{collector.metrics_port}/metrics")
    finally:
        await server.close()
    assert served[0] == 1
    assert metric_value(text, "marketprism_collector_errors_total", code="instrument_invalid") == 2
    assert metric_value(text, "marketprism_collector_errors_total", code="task_failed") == 0


async def test_an_unreadable_listing_is_retried_with_backoff_never_ending_the_market_task(
    fixtures_dir: Path, settings_factory: Callable[..., Settings]
) -> None:
    good = json.dumps(recorded(fixtures_dir, "binance_spot.info.jsonl")).encode()
    # "symbols" as an object: iterating it gave strings, whose .get raised AttributeError and ended the task
    broken = json.dumps({"symbols": {"ETHBTC": {"status": "TRADING"}}}).encode()
    server, served = await _listing_server([broken, b"[1, 2]", good])
    url = str(server.make_url("")).rstrip("/")
    urls = {"binance_spot": {"rest": url, "ws": url.replace("http", "ws")}}
    settings = settings_factory(**emulator_overrides(urls, {"binance_spot": (["NKN-USDT"], ["trade"])}))
    try:
        async with running_collector(settings) as (collector, _task):
            await until(lambda: collector.state.markets["binance_spot"].instruments_loaded, 15)
            _, text = await http_text(f"http://127.0.0.1:{collector.metrics_port}/metrics")
    finally:
        await server.close()
    assert served[0] == 3
    assert metric_value(text, "marketprism_collector_errors_total", code="instruments") == 2
    assert metric_value(text, "marketprism_collector_errors_total", code="task_failed") == 0

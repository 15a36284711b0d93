"""Memory bounded whatever a venue sends (issue 12, item 13): a WebSocket frame over
``collector.ws_max_msg_bytes`` ends the connection (counted, reconnected) instead of being buffered; a REST body
over ``collector.rest_max_body_bytes`` fails the request unread; the bad-input log remembers a bounded number of
contexts however many distinct unknown symbols arrive. (Book depth: tests/venues/test_record_validation.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from marketprism_dagster.collector.backoff import Backoff
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.rest import RestClient, RestError
from marketprism_dagster.collector.state import CollectorState, FeedState
from marketprism_dagster.collector.ws import FeedConnection
from marketprism_dagster.config import Settings
from marketprism_dagster.normalize import read_session
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import ErrorLog, Output, WsFeed
from tests.support.collector_helpers import metric_value, until


def okx_frames(fixtures_dir: Path) -> list[str]:
    return [json.dumps(r["data"]) for r in read_session(fixtures_dir / "sessions" / "okx.ws.jsonl")
            if r["kind"] == "recv" and isinstance(r["data"], dict) and r["data"].get("action") == "snapshot"]


async def test_a_websocket_frame_over_the_bound_reconnects_instead_of_buffering(fixtures_dir: Path) -> None:
    snapshot = max(okx_frames(fixtures_dir), key=len)  # the largest real OKX books snapshot recorded
    bound = 2 * len(snapshot)
    connections = 0

    async def venue(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        connections += 1
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(snapshot)
        await ws.send_str(snapshot * 3)  # over the bound
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", venue)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    metrics, state = CollectorMetrics(), FeedState("okx_spot")
    received: list[int] = []
    feed = WsFeed("okx_spot/public", str(server.make_url("/ws")).replace("http", "ws"))
    async with aiohttp.ClientSession() as session:
        conn = FeedConnection(
            feed, "okx_spot", session, state, metrics,
            on_connect=lambda key, ts: None,
            on_message=lambda key, raw, ts: received.append(len(raw)),
            backoff=Backoff(0.05, 0.1),
            max_msg_size=bound,
        )
        task = asyncio.create_task(conn.run())
        try:
            # the venue counts the second connection before the client has finished its handshake
            await until(lambda: connections >= 2 and state.connects >= 2, 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await server.close()
    assert set(received) == {len(snapshot)}  # the normal frame is read, the oversized one never
    text = metrics.exposition().decode()
    assert metric_value(text, "marketprism_collector_errors_total", code="ws_message_too_big") >= 1
    assert state.connects >= 2


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_rest_body_over_the_bound_fails_the_request_unread(fixtures_dir: Path, chunked: bool) -> None:
    (rec,) = [r for r in read_session(fixtures_dir / "sessions" / "binance_spot.info.jsonl") if r["kind"] == "http"]
    body = json.dumps(rec["data"]).encode()  # the real exchangeInfo, a few MB

    async def exchange_info(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse()  # no Content-Length: the bound applies while reading
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 1 << 16):
            await resp.write(body[i : i + (1 << 16)])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/v3/exchangeInfo", exchange_info)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    metrics = CollectorMetrics()
    url = str(server.make_url("/api/v3/exchangeInfo"))
    try:
        async with aiohttp.ClientSession() as session:
            small = RestClient(session, metrics, CollectorState("main"), max_body_bytes=256 * 1024)
            with pytest.raises(RestError) as err:
                await small.get("binance_spot", url)
            large = RestClient(session, metrics, CollectorState("main"), max_body_bytes=len(body))
            got, _ = await large.get("binance_spot", url)
    finally:
        await server.close()
    assert err.value.permanent and "collector.rest_max_body_bytes" in str(err.value)
    assert got == body
    text = metrics.exposition().decode()
    assert metric_value(text, "marketprism_collector_errors_total", code="rest_body_too_large") == 1


def test_the_bad_input_log_stays_bounded_under_endless_unknown_symbols(fixtures_dir: Path) -> None:
    cfg = Settings()
    adapter = adapter_for("okx_spot", cfg.markets["okx_spot"], cfg.orderbook)
    adapter.errors = ErrorLog("okx_spot", max_keys=50)
    trade = next(
        r["data"] for r in read_session(fixtures_dir / "sessions" / "okx.ws.jsonl")
        if r["kind"] == "recv" and isinstance(r["data"], dict) and "data" in r["data"]
        and r["data"].get("arg", {}).get("channel") == "trades"
    )
    out = Output()
    for i in range(5000):  # a real trades push for 5000 instruments nobody configured
        msg = dict(trade, arg=dict(trade["arg"], instId=f"X{i}-USDT"))
        out.extend(adapter.on_message("k", json.dumps(msg), 1))
    assert out.events == {"unknown_symbol": 5000}  # every one counted
    assert len(adapter.errors._seen) == 50  # at most max_keys remembered (and logged)
    assert adapter.errors.suppressed == {"unknown_symbol": 4950}
    assert Settings().collector.ws_max_msg_bytes == 4 * 1024**2

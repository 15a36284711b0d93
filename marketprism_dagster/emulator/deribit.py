"""Deribit JSON-RPC over WS ``/ws/api/v2`` and REST ``/api/v2/public/*``.

WS methods: public/subscribe, public/unsubscribe, public/set_heartbeat (interval >= 10 s;
the server then sends ``{"method":"heartbeat","params":{"type":"test_request"}}`` every
interval and closes the connection if the previous test_request went unanswered by a
public/test call), public/disable_heartbeat, public/test, public/get_time,
public/get_volatility_index_data, public/get_instruments. Channels:
``deribit_volatility_index.{btc_usd,eth_usd}`` (DVOL, pushed every second).
REST: the same public methods as GET ``/api/v2/public/<method>?params``.

``public/get_volatility_index_data`` (synth): ``currency`` (BTC, ETH here), ``start_timestamp``,
``end_timestamp`` (ms, required), ``resolution`` (``1``, ``60``, ``3600``, ``43200``, ``1D``);
``result.data`` = ``[[ts, open, high, low, close], ...]`` ascending, at most 1000 candles (the
newest; unstated on the page), ``result.continuation`` = the ``end_timestamp`` of the next
(older) page, just before this page's oldest candle, or null. Candles are built from the values
the ``deribit_volatility_index`` channel pushes (each push carries the value of its second):
exact for resolutions 1 and 60, high/low over 60 evenly spaced seconds for coarser ones.
Source: docs.deribit.com "public/get_volatility_index_data" (copy 2026, summarized in
../shared/fixtures/documented/deribit_volatility_index.json).

Replay: recorded ``book.*``/``ticker.*`` notifications verbatim; a request equal to the
recorded public/subscribe gets the recorded answer bytes. DVOL was never recorded: a DVOL
subscription gets the documented notification data (documented/deribit_volatility_index.json)
in the documented notification envelope, re-addressed to the requested index, once;
get_volatility_index_data answers with the documented response.

Faults rest_5xx / rest_429 answer the JSON-RPC error envelope (500 ``internal_server_error``,
429 ``too_many_requests`` with Retry-After). ``SERVERS`` (at the end) declares the server
deribit (market deribit_derivatives).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import structlog
from aiohttp import WSMsgType, web

from . import series
from .connection import Conn, Frame
from .context import VenueContext, json_response, ws_response
from .faults import FLAG_SEQ, FaultRule
from .fixtures import documented_example, load_session, readdress
from .hub import TopicSpec
from .registry import Route, ServerSpec, VenueOption
from .replay import RecordedFrame, replay_subscribed

log = structlog.get_logger()

RESOLUTIONS = {"1": 1, "60": 60, "3600": 3600, "43200": 43200, "1D": 86400}
DVOL_PREFIX = "deribit_volatility_index."
DVOL_MAX_CANDLES = 1000
HEARTBEAT_SCALE_OPTION = VenueOption(
    "heartbeat_time_scale", 1.0, "multiplies Deribit heartbeat intervals (tests use small values to keep to the "
    "protocol yet run fast)", minimum=0, kind=float)


def recorded_frames(root: Path) -> list[RecordedFrame]:
    """Subscription notifications of the Deribit recording (topic = channel)."""
    out: list[RecordedFrame] = []
    for rec in load_session(root, "deribit.ws"):
        data = rec.data
        if rec.kind != "recv" or rec.payload is None or not isinstance(data, dict):
            continue
        if data.get("method") != "subscription":
            continue
        params = data["params"]
        flags = FLAG_SEQ if params.get("data", {}).get("type") == "change" else 0
        out.append(RecordedFrame(rec.t, str(params["channel"]), rec.payload, flags))
    return out


def rpc_script(root: Path) -> list[tuple[dict[str, object], bytes]]:
    """Recorded (request, response bytes) pairs of the Deribit session, matched by id."""
    records = load_session(root, "deribit.ws")
    sends = [r for r in records if r.kind == "send" and isinstance(r.data, dict)]
    results: dict[object, bytes] = {}
    for rec in records:
        if rec.kind == "recv" and isinstance(rec.data, dict) and "id" in rec.data and rec.payload:
            results[rec.data["id"]] = rec.payload
    return [(s.data, results[s.data.get("id")]) for s in sends if s.data.get("id") in results]


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DeribitVenue:
    def __init__(self, ctx: VenueContext) -> None:
        self.ctx = ctx
        self.currencies = [s.split("-")[0].upper() for s in ctx.cfg.symbols.get("deribit_derivatives", ())]
        self.frames = recorded_frames(ctx.root) if ctx.replay else []
        self.script = rpc_script(ctx.root) if ctx.replay else []
        self.instruments: dict[str, bytes] = {}
        for rec in load_session(ctx.root, "deribit.info"):
            currency = rec.url.split("currency=")[1].split("&")[0] if "currency=" in rec.url else ""
            if rec.payload is not None:
                self.instruments[currency.upper()] = rec.payload

    # ---- JSON-RPC core --------------------------------------------------------------
    def _envelope(self, req_id: Any, us_in: int, result: Any = None, error: RpcError | None = None) -> bytes:
        us_out = time.time_ns() // 1000
        body: dict[str, Any] = {"jsonrpc": "2.0"}
        if req_id is not None:
            body["id"] = req_id
        if error is not None:
            body["error"] = {"code": error.code, "message": error.message}
        else:
            body["result"] = result
        body.update({"usIn": us_in, "usOut": us_out, "usDiff": us_out - us_in, "testnet": False})
        return orjson.dumps(body)

    def dvol_candles(self, params: dict[str, Any]) -> dict[str, Any]:
        currency = str(params.get("currency", "")).upper()
        resolution = str(params.get("resolution", ""))
        if currency not in ("BTC", "ETH"):
            raise RpcError(-32602, "Invalid params: currency")
        if resolution not in RESOLUTIONS:
            raise RpcError(-32602, "Invalid params: resolution")
        try:
            start, end = int(params["start_timestamp"]), int(params["end_timestamp"])
        except (KeyError, ValueError):
            raise RpcError(-32602, "Invalid params: start_timestamp, end_timestamp") from None
        if self.ctx.replay:
            result: dict[str, Any] = documented_example(self.ctx.root, "deribit_volatility_index",
                                                        "deribit/get_volatility_index_data/response")["result"]
            return result
        step = RESOLUTIONS[resolution] * 1000
        end = min(end, self.ctx.clock.now_ms())
        first = start + (-start) % step
        last = end - end % step
        continuation = None
        if last >= first and (last - first) // step >= DVOL_MAX_CANDLES:  # never build the whole range
            first = last - (DVOL_MAX_CANDLES - 1) * step
            continuation = first - 1  # the next page ends just before this one's oldest candle
        stamps = range(first, last + 1, step)
        seed = self.ctx.cfg.seed
        data = [series.dvol_candle(seed, currency, ts, step) for ts in stamps]
        return {"data": data, "continuation": continuation}

    def instruments_result(self, params: dict[str, Any]) -> Any:
        currency = str(params.get("currency", "")).upper()
        body = self.instruments.get(currency)
        if body is None:
            raise RpcError(-32602, "Invalid params: currency")
        return orjson.loads(body)["result"]

    def call(self, method: str, params: dict[str, Any]) -> Any:
        if method == "public/test":
            if params.get("expected_result") == "exception":
                raise RpcError(11094, "internal_server_error")
            return {"version": "1.2.26"}
        if method == "public/get_time":
            return self.ctx.clock.now_ms()
        if method == "public/get_volatility_index_data":
            return self.dvol_candles(params)
        if method == "public/get_instruments":
            return self.instruments_result(params)
        raise RpcError(-32601, "Method not found")

    # ---- WebSocket ------------------------------------------------------------------
    async def ws_handler(self, request: web.Request) -> web.StreamResponse:
        ws = ws_response()
        await ws.prepare(request)
        ctx = self.ctx
        conn = ctx.open_conn(Conn(ws, ctx.faults, ctx.stats))
        state: dict[str, Any] = {"heartbeat": None, "answered": True}
        replay_task: asyncio.Task[None] | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                ctx.stats.ws_requests += 1
                await self._on_request(conn, msg.data, state)
                if ctx.replay and replay_task is None and conn.subs:
                    replay_task = ctx.spawn(
                        replay_subscribed(conn, self.frames, ctx.cfg.replay_settle, ctx.cfg.speed)
                    )
        finally:
            ctx.close_conn(conn)
            for task in (replay_task, state["heartbeat"]):
                if task is not None:
                    task.cancel()
        return ws

    async def _on_request(self, conn: Conn, text: str, state: dict[str, Any]) -> None:
        us_in = time.time_ns() // 1000
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            await conn.send_control(self._envelope(None, us_in, error=RpcError(11050, "bad_request")))
            return
        if not isinstance(req, dict) or "method" not in req:
            await conn.send_control(self._envelope(None, us_in, error=RpcError(11050, "bad_request")))
            return
        if self.ctx.replay:
            for recorded, answer in self.script:
                if recorded == req:
                    conn.subs.update(req.get("params", {}).get("channels", []))
                    await conn.send_control(answer)
                    return
        method = str(req["method"])
        req_id = req.get("id")
        params = req.get("params") or {}
        try:
            if method in ("public/subscribe", "public/unsubscribe"):
                channels = [str(c) for c in params.get("channels", [])]
                if method == "public/unsubscribe":
                    for ch in channels:
                        self.ctx.hub.unsubscribe(conn, ch)
                    await conn.send_control(self._envelope(req_id, us_in, channels))
                    return
                accepted = [c for c in channels if self._known_channel(c)]
                await conn.send_control(self._envelope(req_id, us_in, accepted))
                for ch in accepted:
                    await self._subscribe(conn, ch)
                return
            if method == "public/set_heartbeat":
                interval = float(params.get("interval", 0))
                if interval < 10:
                    raise RpcError(-32602, "Invalid params: interval must be >= 10")
                if state["heartbeat"] is not None:
                    state["heartbeat"].cancel()
                state["answered"] = True
                state["heartbeat"] = self.ctx.spawn(self._heartbeat(conn, interval, state))
                await conn.send_control(self._envelope(req_id, us_in, "ok"))
                return
            if method == "public/disable_heartbeat":
                if state["heartbeat"] is not None:
                    state["heartbeat"].cancel()
                    state["heartbeat"] = None
                await conn.send_control(self._envelope(req_id, us_in, "ok"))
                return
            if method == "public/test":
                state["answered"] = True
            await conn.send_control(self._envelope(req_id, us_in, self.call(method, params)))
        except RpcError as exc:
            await conn.send_control(self._envelope(req_id, us_in, error=exc))

    def _known_channel(self, channel: str) -> bool:
        if channel.startswith(DVOL_PREFIX):
            return channel[len(DVOL_PREFIX):] in ("btc_usd", "eth_usd")
        return self.ctx.replay and any(f.topic == channel for f in self.frames)

    async def _subscribe(self, conn: Conn, channel: str) -> None:
        index = channel[len(DVOL_PREFIX):] if channel.startswith(DVOL_PREFIX) else ""
        if self.ctx.replay:
            conn.subs.add(channel)
            if index:
                data = documented_example(self.ctx.root, "deribit_volatility_index",
                                          "deribit/deribit_volatility_index/notification_data")["data"]
                body = {"jsonrpc": "2.0", "method": "subscription",
                        "params": {"channel": channel, "data": readdress(data, {"index_name": index})}}
                await conn.send_frames([Frame(channel, orjson.dumps(body))])
            return
        currency = index.split("_")[0].upper()
        seed = self.ctx.cfg.seed

        def make(n: int) -> list[Frame]:
            now = self.ctx.clock.now_ms()
            data = {"volatility": series.dvol(seed, currency, series.floor_to(now, 1000)), "timestamp": now,
                    "index_name": index}
            body = {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}}
            return [Frame(channel, orjson.dumps(body))]

        self.ctx.hub.subscribe(conn, TopicSpec(channel, make, "period", self.ctx.cfg.period("deribit_dvol")))

    async def _heartbeat(self, conn: Conn, interval: float, state: dict[str, Any]) -> None:
        wait = interval * self.ctx.cfg.options["heartbeat_time_scale"]
        while not conn.closed:
            await asyncio.sleep(wait)
            if not state["answered"]:
                log.info("emulator.heartbeat_timeout", venue=self.ctx.name)
                await conn.ws.close(code=1000, message=b"heartbeat: test_request not answered")
                return
            state["answered"] = False
            await conn.send_control(b'{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}')

    # ---- REST -----------------------------------------------------------------------
    async def rest(self, request: web.Request) -> web.Response:
        us_in = time.time_ns() // 1000
        method = "public/" + request.match_info["method"]
        try:
            return json_response(self._envelope(None, us_in, self.call(method, dict(request.query))))
        except RpcError as exc:
            status = 404 if exc.code == -32601 else 400
            return json_response(self._envelope(None, us_in, error=exc), status)

    def fault_response(self, rule: FaultRule) -> web.Response:
        us = time.time_ns() // 1000
        if rule.kind == "rest_429":
            return json_response(self._envelope(None, us, error=RpcError(10028, "too_many_requests")), 429,
                                 {"Retry-After": "1"})
        return json_response(self._envelope(None, us, error=RpcError(11094, "internal_server_error")), 500)

    def routes(self) -> list[Route]:
        return [
            Route("ws", "/ws/api/v2", self.ws_handler),
            Route("ws", "/ws/api/v2/", self.ws_handler),
            Route("rest", "/api/v2/public/{method}", self.rest),
        ]


SERVERS = (
    ServerSpec("deribit", DeribitVenue, markets={"deribit_derivatives": ("BTC", "ETH")},
               periods={"deribit_dvol": 1.0}, options=(HEARTBEAT_SCALE_OPTION,)),
)

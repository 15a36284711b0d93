"""A venue's emulator module is all the emulator needs: one defined here registers and is served.

The toy venue below is a complete emulator module in miniature (a WS route with a synth
stream, a REST route, an option, a slow-stream period, a venue-specific fault kind with its
frame transform and its REST error body); nothing in the generic modules names it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import WSMsgType, web

import marketprism_dagster.emulator as emulator_pkg
from marketprism_dagster.emulator import Emulator, EmulatorConfig, FaultPlan, Route, ServerSpec, VenueOption, registry
from marketprism_dagster.emulator.cli import venue_options
from marketprism_dagster.emulator.connection import Conn, Frame
from marketprism_dagster.emulator.context import VenueContext, json_response, ws_response
from marketprism_dagster.emulator.faults import FLAG_CHECKSUM, FaultRule
from marketprism_dagster.emulator.hub import TopicSpec


def _flip(payload: bytes) -> bytes:
    return payload.replace(b'"ok":true', b'"ok":false')


class ToyVenue:
    """WS ``/feed?symbol=S``: ticks ``{"s","n","greeting","ok"}``; REST ``/api/ticker?symbol=S``."""

    def __init__(self, ctx: VenueContext) -> None:
        self.ctx = ctx
        self.greeting: str = ctx.cfg.options["toy_greeting"]
        self.symbols = set(ctx.cfg.symbols["toy_spot"])

    def _ticks(self, topic: str, start: list[int], n: int) -> list[Frame]:
        out = []
        for _ in range(n):
            start[0] += 1
            body = orjson.dumps({"s": topic, "n": start[0], "greeting": self.greeting, "ok": True})
            out.append(Frame(topic, body, FLAG_CHECKSUM))
        return out

    async def feed(self, request: web.Request) -> web.StreamResponse:
        ws = ws_response()
        await ws.prepare(request)
        ctx = self.ctx
        conn = ctx.open_conn(Conn(ws, ctx.faults, ctx.stats))
        topic = request.query.get("symbol", "")
        counter = [0]
        ctx.hub.subscribe(conn, TopicSpec(topic, lambda n: self._ticks(topic, counter, n), "period",
                                          ctx.cfg.period("toy_tick")))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data == "ping":
                    await conn.send_control(b"pong")
        finally:
            ctx.close_conn(conn)
        return ws

    async def ticker(self, request: web.Request) -> web.Response:
        symbol = request.query.get("symbol", "")
        if symbol not in self.symbols:
            return json_response({"error": "unknown symbol"}, 400)
        return json_response({"symbol": symbol, "greeting": self.greeting})

    def fault_response(self, rule: FaultRule) -> web.Response:
        return json_response({"error": f"toy {rule.kind}"}, 503)

    def routes(self) -> list[Route]:
        return [Route("ws", "/feed", self.feed), Route("rest", "/api/ticker", self.ticker)]


TOY = ServerSpec(
    "toy", ToyVenue, markets={"toy_spot": ("AAA-USD",)}, aliases=("toyland",), periods={"toy_tick": 0.01},
    options=(VenueOption("toy_greeting", "hello", "what every tick says", choices=("hello", "hi")),),
    fault_kinds=frozenset({"bad_checksum"}), frame_faults={"bad_checksum": _flip},
)


@pytest.fixture
def toy() -> Iterator[ServerSpec]:
    registry.register(TOY)
    try:
        yield TOY
    finally:
        registry.unregister(TOY.name)


async def test_a_venue_module_defined_outside_the_package_is_served_over_ws_and_rest(
    toy: ServerSpec, fixtures_root: Path
) -> None:
    cfg = EmulatorConfig(venues=("toyland",), fixtures=fixtures_root, toy_greeting="hi",
                         faults="bad_checksum:at=3,rest_5xx@toy_spot:at=2")
    assert cfg.venues == ("toy",) and cfg.symbols["toy_spot"] == ("AAA-USD",) and cfg.options["toy_greeting"] == "hi"
    async with Emulator(cfg) as emu, aiohttp.ClientSession() as http:
        assert set(emu.urls) == {"toy_spot"}
        urls = emu.urls["toy_spot"]
        async with http.ws_connect(urls["ws"] + "/feed?symbol=AAA-USD") as ws:
            ticks: list[dict[str, Any]] = [orjson.loads((await ws.receive(timeout=5)).data) for _ in range(4)]
            await ws.send_str("ping")
            while (msg := await ws.receive(timeout=5)).data != "pong":
                assert msg.type == WSMsgType.TEXT
        async with http.get(urls["rest"] + "/api/ticker", params={"symbol": "AAA-USD"}) as resp:
            first = (resp.status, await resp.json())
        async with http.get(urls["rest"] + "/api/ticker", params={"symbol": "AAA-USD"}) as resp:
            second = (resp.status, await resp.json())
        stats = emu.stats["toy"]
        fired = emu.faults_fired
    assert [t["n"] for t in ticks] == [1, 2, 3, 4]
    assert {t["greeting"] for t in ticks} == {"hi"}
    assert [t["ok"] for t in ticks] == [True, True, False, True]  # the venue's own bad_checksum transform
    assert first == (200, {"symbol": "AAA-USD", "greeting": "hi"})
    assert second == (503, {"error": "toy rest_5xx"})  # the venue's own REST error body
    assert fired == {"bad_checksum": {"toy": 1}, "rest_5xx": {"toy": 1}}
    assert stats["ws_connections"] == 1 and stats["rest_requests"] == 2 and stats["rest_errors"] == 1


def test_registered_venue_options_faults_and_cli_flags_come_from_its_declaration(toy: ServerSpec) -> None:
    rule = FaultPlan.parse("bad_checksum@toyland").rules[0]
    assert rule.venues == ("toy",)
    assert "toy" in FaultPlan.parse("bad_checksum").rules[0].venues
    assert venue_options(["--toy-greeting", "hi"]) == {"toy_greeting": "hi"}
    assert venue_options(["--toy-greeting=hello"]) == {"toy_greeting": "hello"}
    with pytest.raises(ValueError, match="hello, hi"):
        EmulatorConfig(toy_greeting="hey")
    assert EmulatorConfig().options["toy_greeting"] == "hello"


def test_an_unregistered_venue_is_unknown_everywhere() -> None:
    assert "toy" not in registry.servers()
    with pytest.raises(TypeError, match="toy_greeting"):
        EmulatorConfig(toy_greeting="hi")
    with pytest.raises(ValueError, match="unknown venue 'toyland'"):
        EmulatorConfig(venues=("toyland",))


def test_generic_emulator_modules_name_no_venue() -> None:
    """Only a venue's own module names it: the generic modules get every venue from the registry."""
    package = Path(emulator_pkg.__file__).parent
    venue_modules = {path.stem for path in package.glob("*.py") if re.search(r"^SERVERS = ", path.read_text(), re.M)}
    assert venue_modules >= {"binance", "okx", "deribit"}
    pattern = re.compile("|".join(sorted(venue_modules)), re.IGNORECASE)
    named = {path.name: sorted({m.group(0).lower() for m in pattern.finditer(path.read_text())})
             for path in sorted(package.glob("*.py")) if path.stem not in venue_modules}
    assert {name: venues for name, venues in named.items() if venues} == {}


def test_every_venue_server_is_declared_by_its_module_in_module_order() -> None:
    assert list(registry.servers())[:4] == ["binance_spot", "binance_derivatives", "deribit", "okx"]
    assert registry.market_servers() == {"binance_spot": "binance_spot", "binance_derivatives": "binance_derivatives",
                                         "deribit_derivatives": "deribit", "okx_spot": "okx", "okx_derivatives": "okx"}

"""The emulator: one aiohttp server per registered venue server on 127.0.0.1, in-loop or in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web

from marketprism_dagster.serving import serve_app

from . import registry
from .config import EmulatorConfig
from .connection import VenueStats
from .context import VenueContext, rest_middleware
from .faults import DroppedTrades, FaultLedger, VenueFaults
from .fixtures import fixtures_dir
from .hub import StreamHub

log = structlog.get_logger()


def venue_app(spec: registry.ServerSpec, ctx: VenueContext) -> web.Application:
    """The aiohttp application of one venue server: its declared routes behind the REST fault middleware."""
    venue = spec.build(ctx)
    app = web.Application(middlewares=[rest_middleware(ctx, venue.fault_response)])
    for route in venue.routes():
        app.router.add_get(route.path, route.handler)
    return app


class Emulator:
    """Stand-in for every registered venue server. ``async with Emulator(cfg) as emu: emu.urls``."""

    def __init__(self, cfg: EmulatorConfig | None = None) -> None:
        self.cfg = cfg or EmulatorConfig()
        self.ledger = FaultLedger()
        self.contexts: dict[str, VenueContext] = {}
        self.ports: dict[str, int] = {}
        self._runners: list[web.AppRunner] = []

    async def start(self) -> Emulator:
        cfg = self.cfg
        root = fixtures_dir(cfg.fixtures)
        plan = cfg.fault_plan
        t0 = time.monotonic()
        order = list(registry.servers())
        for name in cfg.venues:
            spec = registry.server(name)
            faults = VenueFaults(name, plan, self.ledger, t0, spec.frame_faults)
            ctx = VenueContext(name=name, cfg=cfg, root=root, faults=faults, stats=VenueStats(),
                               hub=StreamHub(name, cfg.rate))
            app = venue_app(spec, ctx)
            port = 0 if cfg.port == 0 else cfg.port + order.index(name)
            runner, self.ports[name] = await serve_app(app, cfg.host, port, shutdown_timeout=0.5, reuse_address=True)
            self.contexts[name] = ctx
            self._runners.append(runner)
        log.info("emulator.started", mode=cfg.mode, ports=self.ports, faults=[r.text for r in plan.rules])
        return self

    async def stop(self) -> None:
        for ctx in self.contexts.values():
            for conn in list(ctx.conns):
                conn.closed = True
                with contextlib.suppress(Exception):
                    await conn.ws.close()
            await ctx.hub.close()
            for task in list(ctx.tasks):
                task.cancel()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        log.info("emulator.stopped")

    async def __aenter__(self) -> Emulator:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    @property
    def urls(self) -> dict[str, dict[str, str]]:
        """market id -> {"rest": "http://127.0.0.1:P", "ws": "ws://127.0.0.1:P"} (markets of one server share it)."""
        out: dict[str, dict[str, str]] = {}
        for market, server in registry.market_servers().items():
            port = self.ports.get(server)
            if port is not None:
                out[market] = {"rest": f"http://{self.cfg.host}:{port}", "ws": f"ws://{self.cfg.host}:{port}"}
        return out

    @property
    def faults_fired(self) -> dict[str, dict[str, int]]:
        """fault kind -> venue server -> times fired."""
        return self.ledger.counts()

    @property
    def dropped_trades(self) -> list[DroppedTrades]:
        """Every range a drop_trades fault kept off a stream: venue, topic, first/last trade id."""
        return self.ledger.dropped_ranges()

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        """venue server -> counters (connections, messages, REST requests and errors, faults)."""
        return {
            name: {**ctx.stats.as_dict(), "fault_frames_seen": ctx.faults.frames,
                   "fault_requests_seen": ctx.faults.requests}
            for name, ctx in self.contexts.items()
        }

    @classmethod
    def start_in_thread(cls, cfg: EmulatorConfig | None = None, timeout: float = 30.0) -> EmulatorThread:
        """Run an emulator on its own event loop in a daemon thread (for sync code and tests)."""
        return EmulatorThread(cls(cfg), timeout)


class EmulatorThread:
    """A running emulator in a background thread: `.urls`, `.stats`, `.faults_fired`, `.stop()`."""

    def __init__(self, emulator: Emulator, timeout: float = 30.0) -> None:
        self.emulator = emulator
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="marketprism-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("emulator did not start in time")
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.emulator.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.emulator.stop())
        self._loop.close()

    @property
    def urls(self) -> dict[str, dict[str, str]]:
        return self.emulator.urls

    @property
    def stats(self) -> dict[str, dict[str, Any]]:
        return self.emulator.stats

    @property
    def faults_fired(self) -> dict[str, dict[str, int]]:
        return self.emulator.faults_fired

    @property
    def dropped_trades(self) -> list[DroppedTrades]:
        return self.emulator.dropped_trades

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> EmulatorThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

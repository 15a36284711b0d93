"""What every venue server shares: config, fault schedule, counters, hub, REST helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from .clock import Clock
from .config import EmulatorConfig
from .connection import Conn, VenueStats
from .faults import BOOK_SNAPSHOT_KINDS, FaultRule, VenueFaults
from .hub import StreamHub

# a REST fault the handler itself applies (book snapshots); set per request task by the middleware
REQUEST_FAULT: ContextVar[FaultRule | None] = ContextVar("emulator_request_fault", default=None)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FaultResponder = Callable[[FaultRule], web.Response]


@dataclass
class VenueContext:
    name: str
    cfg: EmulatorConfig
    root: Path
    faults: VenueFaults
    stats: VenueStats
    hub: StreamHub
    conns: set[Conn] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def clock(self) -> Clock:
        return self.cfg.clock

    @property
    def replay(self) -> bool:
        return self.cfg.mode == "replay"

    def open_conn(self, conn: Conn) -> Conn:
        """Register a new WebSocket connection and count it."""
        self.conns.add(conn)
        self.stats.ws_connections += 1
        self.stats.ws_open += 1
        return conn

    def close_conn(self, conn: Conn) -> None:
        """Unregister a connection: it receives nothing more."""
        conn.closed = True
        self.hub.drop(conn)
        self.conns.discard(conn)
        self.stats.ws_open -= 1

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return web.Response(body=data, status=status, content_type="application/json", headers=headers)


def rest_middleware(ctx: VenueContext, responder: FaultResponder) -> Any:
    """Count REST requests and apply scheduled REST faults before the real handler."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await handler(request)
        ctx.stats.rest_requests += 1
        rule = ctx.faults.on_request(request.path_qs)
        REQUEST_FAULT.set(rule if rule is not None and rule.kind in BOOK_SNAPSHOT_KINDS else None)
        if rule is not None and rule.kind not in BOOK_SNAPSHOT_KINDS:
            if rule.kind == "rest_timeout":
                await asyncio.sleep(rule.hold_seconds())
            else:
                ctx.stats.rest_errors += 1
                return responder(rule)
        response = await handler(request)
        if response.status >= 400:
            ctx.stats.rest_errors += 1
        return response

    return middleware


def ws_response() -> web.WebSocketResponse:
    return web.WebSocketResponse(compress=False, autoping=True, max_msg_size=1 << 20)


def query_ints(request: web.Request, *names: str) -> dict[str, int | None]:
    """Optional integer query parameters of a history endpoint; ValueError names the bad one."""
    out: dict[str, int | None] = {}
    for name in names:
        raw = request.query.get(name)
        if raw is None or raw == "":
            out[name] = None
            continue
        try:
            out[name] = int(raw)
        except ValueError:
            raise ValueError(name) from None
    return out

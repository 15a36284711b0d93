"""The collector's HTTP surface: /health, the seeds' /api/v1/* (envelope + error codes) and /metrics.

Envelope: success ``{"status":"success","message":...,"data":{...},"timestamp":ISO}``; error
``{"status":"error","error_code":...,"message":...,"data":null,"timestamp":ISO}`` with the seeds'
codes and HTTP statuses (DESIGN section 13).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, ClassVar, Protocol

import msgspec
import psutil
import structlog
from aiohttp import web

from marketprism_dagster.collector.health import health_report
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.state import CollectorState, MarketState
from marketprism_dagster.config import Settings
from marketprism_dagster.publisher import PublishStats
from marketprism_dagster.records import BOOK_TYPES, DATA_TYPES
from marketprism_dagster.timeutil import now_ms
from marketprism_dagster.venues import registry

log = structlog.get_logger(__name__)

SERVICE = "marketprism-collector"
ERROR_STATUS = {
    "COLLECTOR_NOT_INITIALIZED": 503,
    "STATS_UNAVAILABLE": 500,
    "EXCHANGE_STATUS_ERROR": 500,
    "DATA_RETRIEVAL_ERROR": 500,
    "INVALID_PARAMETERS": 400,
    "SERVICE_UNAVAILABLE": 503,
    "INTERNAL_ERROR": 500,
}
DATA_LIMIT_DEFAULT, DATA_LIMIT_MAX = 10, 100


def polled_types(markets: Iterable[MarketState]) -> set[str]:
    """The configured data types some market collects by polling REST: those its venue declares as polls."""
    out: set[str] = set()
    for m in markets:
        polls = registry.adapter_class(m.venue).polls
        out.update(p.data_type for p in polls if m.market_type in p.market_types and p.data_type in m.data_types)
    return out


class CollectorView(Protocol):
    state: CollectorState
    settings: Settings
    metrics: CollectorMetrics

    def publish_stats(self) -> PublishStats | None: ...


def _version() -> str:
    try:
        return metadata.version("marketprism")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def iso(ms: int | float | None = None) -> str:
    t = time.time() if ms is None else ms / 1000
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def success(data: Any, message: str = "ok") -> web.Response:
    return web.json_response({"status": "success", "message": message, "data": data, "timestamp": iso()})


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error(code: str, message: str) -> web.Response:
    body = {"status": "error", "error_code": code, "message": message, "data": None, "timestamp": iso()}
    return web.json_response(body, status=ERROR_STATUS[code])


class RateWindow:
    """Records per minute from periodic samples of the running total."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.samples.append((now, total))
        while len(self.samples) > 2 and now - self.samples[1][0] >= 60:
            self.samples.popleft()

    def per_minute(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return 0.0 if t1 <= t0 else (n1 - n0) * 60.0 / (t1 - t0)


class CollectorApi:
    """Handlers over a CollectorView; ``app()`` for health + API, ``metrics_app()`` for /metrics."""

    def __init__(self, view: CollectorView) -> None:
        self.view = view
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # prime: the next call measures since now
        self.rate = RateWindow()

    # ------------------------------------------------------------------ apps

    def app(self, with_metrics: bool = False) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/health", self.health)
        app.router.add_get("/api/v1/status", self.status)
        app.router.add_get("/api/v1/collector/stats", self.stats)
        app.router.add_get("/api/v1/collector/status", self.collector_status)
        app.router.add_get("/api/v1/collector/exchanges", self.exchanges)
        app.router.add_get("/api/v1/collector/data", self.data)
        if with_metrics:
            app.router.add_get("/metrics", self.metrics)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        return app

    _FAILURE_CODES: ClassVar[dict[str, str]] = {
        "/api/v1/collector/stats": "STATS_UNAVAILABLE",
        "/api/v1/collector/exchanges": "EXCHANGE_STATUS_ERROR",
        "/api/v1/collector/data": "DATA_RETRIEVAL_ERROR",
    }

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error(exc.code, exc.message)
        except web.HTTPException:
            raise
        except Exception as exc:
            code = self._FAILURE_CODES.get(request.path, "INTERNAL_ERROR")
            log.exception("collector.api_error", path=request.path, code=code)
            return error(code, f"{request.path} failed: {exc!r}")

    # ------------------------------------------------------------------ pieces

    @property
    def state(self) -> CollectorState:
        return self.view.state

    def _require_initialized(self) -> None:
        if self.state.stopping:
            raise ApiError("SERVICE_UNAVAILABLE", "the collector is shutting down; retry against the next instance")
        if not self.state.markets:
            raise ApiError(
                "COLLECTOR_NOT_INITIALIZED",
                f"no markets registered for shard {self.state.shard!r}: the collector is starting, or no market of "
                "this shard is enabled (markets.<id>.enabled, collector.shards)",
            )

    def _total_records(self) -> int:
        return sum(self.state.records.values())

    def collection_stats(self) -> dict[str, Any]:
        st = self.state
        last = st.last_activity_ms()
        return {
            "rest_requests": st.rest_requests,
            "websocket_messages": st.ws_messages_total(),
            "records": self._total_records(),
            "errors": st.errors,
            "last_update": iso(last) if last else None,
            "active_sources": sum(1 for m in st.markets if self._market_active(m)),
            "websocket_connections": sum(1 for f in st.feeds.values() if f.connected),
        }

    def _market_active(self, market: str) -> bool:
        feeds = [f for f in self.state.feeds.values() if f.market == market]
        return any(f.connected for f in feeds) or bool(self.state.markets[market].rest_ok)

    def performance(self) -> dict[str, Any]:
        mem = self.process.memory_info()
        return {
            "collections_per_minute": round(self.rate.per_minute(), 3),
            "memory_usage_mb": round(mem.rss / 2**20, 3),
            "cpu_percent": self.process.cpu_percent(None),
            "threads": self.process.num_threads(),
        }

    def data_summary(self) -> dict[str, Any]:
        by_type: dict[str, dict[str, int]] = {}
        for (data_type, market), n in sorted(self.state.records.items()):
            by_type.setdefault(data_type, {})[market] = n
        return {"total_records": self._total_records(), "records_by_type": by_type}

    def publish_summary(self) -> dict[str, Any]:
        s = self.view.publish_stats()
        if s is None:
            return {"connected": self.state.nats_connected}
        return {
            "connected": self.state.nats_connected,
            "submitted": s.submitted,
            "acked": s.acked,
            "duplicates": s.duplicates,
            "dropped": s.dropped,
            "failed": s.failed,
            "timeouts": s.timeouts,
            "errors": dict(s.errors),
        }

    def exchange_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        st = self.state
        for market, ms in st.markets.items():
            feeds = [f for f in st.feeds.values() if f.market == market]
            ws_connected = bool(feeds) and all(f.connected for f in feeds)
            times = [t for (_, m), t in st.last_success.items() if m == market]
            times += [f.last_message_ts for f in feeds if f.last_message_ts]
            last = max(times) if times else None
            if not ms.instruments_loaded:
                status = "initializing"
            elif (feeds and not ws_connected) or ms.rest_ok is False:
                status = "degraded"
            else:
                status = "active"
            out[market] = {
                "enabled": True,
                "venue": ms.venue,
                "market_type": ms.market_type,
                "symbols": list(ms.symbols),
                "data_types": list(ms.data_types),
                "websocket_connected": ws_connected,
                "websocket_feeds": {f_key: f.connected for f_key, f in st.feeds.items() if f.market == market},
                "rest_api_available": ms.rest_ok is not False,
                "rest_requests": ms.rest_requests,
                "instruments_loaded": ms.instruments_loaded,
                "last_update": iso(last) if last else None,
                "status": status,
            }
        return out

    # ------------------------------------------------------------------ handlers

    async def health(self, request: web.Request) -> web.Response:
        body, code = health_report(self.state, self.view.settings)
        return web.json_response(body, status=code)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.view.metrics.exposition(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def status(self, request: web.Request) -> web.Response:
        self._require_initialized()
        st = self.state
        settings = self.view.settings
        data_types = sorted({d for m in st.markets.values() for d in m.data_types})
        return success(
            {
                "service": SERVICE,
                "status": "running" if st.running else "initializing",
                "uptime_seconds": round(st.uptime_s, 3),
                "version": _version(),
                "environment": settings.environment,
                "shard": st.shard,
                "features": {
                    "websocket": True,
                    "rest_polling": bool(polled_types(st.markets.values())),
                    "orderbook": not BOOK_TYPES.isdisjoint(data_types),
                    "jetstream": True,
                    "health_file": True,
                    "data_types": data_types,
                },
                "supported_exchanges": list(st.markets),
                "collection_stats": self.collection_stats(),
            },
            "collector status",
        )

    async def stats(self, request: web.Request) -> web.Response:
        self._require_initialized()
        st = self.state
        return success(
            {
                "collection_stats": self.collection_stats(),
                "service_stats": {
                    "service": SERVICE,
                    "shard": st.shard,
                    "pid": self.process.pid,
                    "started_at": iso(st.started_at * 1000),
                    "uptime_seconds": round(st.uptime_s, 3),
                    "status": "running" if st.running else "initializing",
                },
                "publish_stats": self.publish_summary(),
                "data_summary": self.data_summary(),
                "performance_metrics": self.performance(),
            },
            "collector statistics",
        )

    async def collector_status(self, request: web.Request) -> web.Response:
        self._require_initialized()
        st = self.state
        body, _ = health_report(st, self.view.settings)
        stats = self.collection_stats()
        handled = stats["websocket_messages"] + stats["rest_requests"]
        last = st.last_activity_ms()
        return success(
            {
                "service_info": {
                    "service": SERVICE,
                    "version": _version(),
                    "shard": st.shard,
                    "uptime_seconds": round(st.uptime_s, 3),
                    "status": "running" if st.running else "initializing",
                },
                "feature_status": {
                    "websocket_feeds": {k: f.connected for k, f in st.feeds.items()},
                    "nats_connected": st.nats_connected,
                    "instruments_loaded": {m: ms.instruments_loaded for m, ms in st.markets.items()},
                },
                "collector_stats": stats,
                "exchanges": self.exchange_status(),
                "data_summary": self.data_summary(),
                "health_indicators": {
                    "overall_health": body["status"],
                    "data_flow_active": last is not None and now_ms() - last < 60_000,
                    "error_rate": round(st.errors / handled, 6) if handled else 0.0,
                    "last_activity": iso(last) if last else None,
                    "reasons": body["reasons"],
                },
            },
            "collector detailed status",
        )

    async def exchanges(self, request: web.Request) -> web.Response:
        self._require_initialized()
        ex = self.exchange_status()
        summary = {
            "total_exchanges": len(ex),
            "enabled_exchanges": sum(1 for e in ex.values() if e["enabled"]),
            "websocket_connected": sum(1 for e in ex.values() if e["websocket_connected"]),
            "active_exchanges": sum(1 for e in ex.values() if e["status"] == "active"),
        }
        return success({"exchanges": ex, "summary": summary}, "exchange status")

    async def data(self, request: web.Request) -> web.Response:
        self._require_initialized()
        st = self.state
        q = request.query
        exchange = q.get("exchange", "all")
        data_type = q.get("type", "all")
        raw_limit = q.get("limit", str(DATA_LIMIT_DEFAULT))
        allowed_ex = ["all", *st.markets]
        if exchange not in allowed_ex:
            raise ApiError("INVALID_PARAMETERS", f"unknown exchange {exchange!r}; allowed: {', '.join(allowed_ex)}")
        allowed_types = ["all", *DATA_TYPES]
        if data_type not in allowed_types:
            raise ApiError("INVALID_PARAMETERS", f"unknown type {data_type!r}; allowed: {', '.join(allowed_types)}")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= DATA_LIMIT_MAX:
            raise ApiError("INVALID_PARAMETERS", f"limit {raw_limit!r} must be an integer from 1 to {DATA_LIMIT_MAX}")
        limit = int(raw_limit)
        markets = list(st.markets) if exchange == "all" else [exchange]
        types = list(DATA_TYPES) if data_type == "all" else [data_type]
        recent: dict[str, list[Any]] = {}
        newest: int | None = None
        for t in types:
            rows: list[Any] = []
            for m in markets:
                ring = st.recent.get((t, m))
                if ring:
                    rows.extend(list(ring)[-limit:])
            if not rows:
                continue
            rows.sort(key=lambda r: r.received_at, reverse=True)
            rows = rows[:limit]
            newest = max(newest or 0, rows[0].received_at)
            recent[t] = [msgspec.to_builtins(r) for r in rows]
        counts = {t: len(v) for t, v in recent.items()}
        return success(
            {
                "recent_data": recent,
                "summary": {"total_records": sum(counts.values()), "records_by_type": counts, "exchanges": markets},
                "metadata": {
                    "exchange": exchange,
                    "type": data_type,
                    "limit": limit,
                    "data_freshness_seconds": None if newest is None else round((now_ms() - newest) / 1000, 3),
                },
            },
            "recent records",
        )

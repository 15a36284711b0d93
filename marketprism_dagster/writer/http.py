"""The writer's ``/health`` (JSON, 200 healthy / 503 not) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from marketprism_dagster.serving import serve_app


class WriterHttp:
    def __init__(self, health: Callable[[], tuple[dict[str, Any], bool]], metrics: Callable[[], bytes]) -> None:
        self._health = health
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        return app

    async def _get_health(self, _: web.Request) -> web.Response:
        body, ok = self._health()
        return web.json_response(body, status=200 if ok else 503)

    async def _get_metrics(self, _: web.Request) -> web.Response:
        resp = web.Response(body=self._metrics())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def start(self, host: str, port: int) -> int:
        self._runner, self.port = await serve_app(self.app(), host, port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

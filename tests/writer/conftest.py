"""Fixtures for the writer tests: settings for a test nats-server and tmp store, an in-process writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect, ensure_streams
from marketprism_dagster.nats_server import EmbeddedNats
from marketprism_dagster.writer.service import WriterService, run_writer


@pytest.fixture
def writer_settings(settings_factory: Callable[..., Settings], nats_server: EmbeddedNats) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values = {"writer__health_port": 0, "writer__batch_size": 2000, "writer__monitor_interval_s": 0.5,
                  "log_level": "WARNING"}
        values.update(overrides)
        return settings_factory(nats_url=nats_server.url, **values)

    return make


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    conn = await connect(nats_server.url, name="writer-test")
    await ensure_streams(conn.jetstream(), Settings())
    try:
        yield conn
    finally:
        await conn.close()


class RunningWriter:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = asyncio.Event()
        self.service: WriterService | None = None
        self.task: asyncio.Task[None] | None = None
        self.beats = 0

    async def start(self, timeout: float = 30) -> RunningWriter:
        ready = asyncio.Event()

        def started(svc: WriterService) -> None:
            self.service = svc
            ready.set()

        def beat() -> None:
            self.beats += 1

        self.task = asyncio.create_task(run_writer(self.settings, stop=self.stop, heartbeat=beat, on_started=started))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({self.task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self.task in done:
            self.task.result()  # raises the writer's startup error
        assert self.service is not None, "writer did not start in time"
        return self

    @property
    def url(self) -> str:
        assert self.service is not None
        return f"http://127.0.0.1:{self.service.http_port}"

    async def health(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/health") as r:
            return r.status, await r.json()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/metrics") as r:
            return await r.text()

    async def wait_committed(self, nc: NATS, timeout: float = 60) -> None:
        """Until every stream's committed sequence reaches its last sequence (bounded)."""
        js = nc.jetstream()
        deadline = asyncio.get_running_loop().time() + timeout
        assert self.service is not None
        while True:
            lasts = {s: (await js.stream_info(s)).state.last_seq for s in self.settings.streams}
            done = all(self.service.streams[s].buffer.watermark >= last for s, last in lasts.items())
            if done:
                return
            if asyncio.get_running_loop().time() > deadline:
                marks = {s: self.service.streams[s].buffer.watermark for s in lasts}
                raise AssertionError(f"writer did not drain within {timeout} s: last={lasts} committed={marks}")
            await asyncio.sleep(0.1)

    async def close(self, timeout: float = 30) -> None:
        self.stop.set()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, timeout)


@pytest.fixture
async def start_writer() -> AsyncIterator[Callable[[Settings], Any]]:
    running: list[RunningWriter] = []

    async def start(settings: Settings) -> RunningWriter:
        w = await RunningWriter(settings).start()
        running.append(w)
        return w

    try:
        yield start
    finally:
        for w in running:
            await w.close()

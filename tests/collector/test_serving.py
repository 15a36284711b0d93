"""Process plumbing: SIGTERM/SIGINT set a service's stop event; an app served on port 0 reports its real port."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
from aiohttp import web

from marketprism_dagster.serving import serve_app, stop_on_signals


async def test_a_signal_sets_the_stop_event_and_leaving_restores_the_handler() -> None:
    """The handlers found on entry come back on leaving (asyncio alone resets SIGTERM to SIG_DFL and SIGINT to
    default_int_handler, whatever was installed before: failed in the suite when another test had left one)."""
    def mine(signum: int, frame: object) -> None:
        pass

    originals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, mine)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop = asyncio.Event()
        with stop_on_signals(stop) as handled:
            assert handled == [signal.SIGTERM, signal.SIGINT]
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 10)
        assert stop.is_set()
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        for s, h in originals.items():
            signal.signal(s, h)


async def test_an_app_on_port_0_answers_on_the_port_reported() -> None:
    app = web.Application()
    app.router.add_get("/ping", lambda _: web.Response(text="pong"))
    runner, port = await serve_app(app, "127.0.0.1", 0)
    try:
        assert port > 0
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/ping") as r:
            assert (r.status, await r.text()) == (200, "pong")
    finally:
        await runner.cleanup()

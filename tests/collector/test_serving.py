"""Process plumbing: SIGTERM/SIGINT set a service's stop event; an app served on port 0 reports its real port."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
from aiohttp import web

from marketprism_dagster.serving import serve_app, stop_on_signals


async def test_a_signal_sets_the_stop_event_and_leaving_removes_the_handlers() -> None:
    """Leaving removes the loop's handlers: SIGTERM back to SIG_DFL, SIGINT to default_int_handler (asyncio's
    removal). The test sets both first: it asserted "the handler found before", which held only when no earlier
    test in the worker had left another one (it failed in the suite). Restoring whatever was found before made
    the supervisor tests' child processes ignore SIGINT in a fresh clone's suite, 2 runs of 2, so it is not done."""
    originals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop = asyncio.Event()
        with stop_on_signals(stop) as handled:
            assert handled == [signal.SIGTERM, signal.SIGINT]
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(stop.wait(), 10)
        assert stop.is_set()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, h in originals.items():
            if h is not None:
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

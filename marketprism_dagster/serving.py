"""Process plumbing shared by the long-running services (collector, writer, emulator, probe).

``stop_on_signals``: SIGTERM / SIGINT set the service's stop event. ``serve_app``: start an aiohttp
application and return the port it really bound (port 0 asks the kernel for a free one).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

from aiohttp import web

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[list[signal.Signals]]:
    """While inside, SIGTERM and SIGINT set ``stop``; yields the signals handled (none where the loop cannot
    install handlers: a thread other than the main one, Windows). The handlers are removed on leaving."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield installed
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve_app(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = 60.0,
    reuse_address: bool | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port``; the runner (``cleanup()`` stops it) and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=reuse_address)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses
    return runner, int(bound[0][1]) if bound else port

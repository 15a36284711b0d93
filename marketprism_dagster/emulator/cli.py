"""`marketprism emulate`: run the emulator in the foreground until Ctrl-C.

The main CLI mounts :data:`app` (a typer app with one command) or calls :func:`run_emulator`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import structlog
import typer

from .config import DEFAULT_SYMBOLS, OKX_BOOKS_MODES, SERVERS, EmulatorConfig
from .faults import FaultPlan
from .server import Emulator

log = structlog.get_logger()

app = typer.Typer(help="Run the local exchange emulator (Binance, OKX, Deribit) on 127.0.0.1.")


def run_emulator(
    venues: list[str] | None = None,
    mode: str = "synth",
    speed: float = 1.0,
    rate: float = 10.0,
    seed: int = 0,
    faults: str = "",
    port: int = 0,
    symbols: dict[str, tuple[str, ...]] | None = None,
    fixtures: Path | None = None,
    okx_books: str = "zero",
    okx_trade_count_max: int = 1,
) -> None:
    """Start the emulator and serve until interrupted; print the URLs on start."""
    FaultPlan.parse(faults)  # fail fast on a bad spec
    cfg = EmulatorConfig(mode=mode, venues=tuple(venues or SERVERS), speed=speed, rate=rate, seed=seed,
                         faults=faults, port=port, symbols=dict(symbols or DEFAULT_SYMBOLS), fixtures=fixtures,
                         okx_books=okx_books, okx_trade_count_max=okx_trade_count_max)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        async with Emulator(cfg) as emu:
            for market, url in emu.urls.items():
                typer.echo(f"{market}: rest={url['rest']} ws={url['ws']}")
            await stop.wait()
            log.info("emulator.summary", faults_fired=emu.faults_fired, stats=emu.stats)

    asyncio.run(serve())


@app.command("emulate")
def emulate(
    venue: Annotated[list[str] | None, typer.Option(help="market id or server (repeatable); default all")] = None,
    mode: Annotated[str, typer.Option(help="replay | synth")] = "synth",
    speed: Annotated[float, typer.Option(help="replay pace: 1 = recorded, 0 = as fast as read")] = 1.0,
    rate: Annotated[float, typer.Option(help="synth messages/s per stream; 0 = as fast as read")] = 10.0,
    seed: Annotated[int, typer.Option(help="synth seed")] = 0,
    faults: Annotated[str, typer.Option(help="fault spec, e.g. 'gap@okx:every=1000,rest_429@binance'")] = "",
    port: Annotated[int, typer.Option(help="base port (server i on port+i); 0 = ephemeral")] = 0,
    symbol: Annotated[list[str] | None, typer.Option(help="market_id=SYM[,SYM] (repeatable)")] = None,
    fixtures: Annotated[Path | None, typer.Option(help="shared fixtures dir")] = None,
    okx_books: Annotated[str, typer.Option(
        help="synth OKX books protocol: zero (today: snapshot pushed, checksum 0) | rest (no pushed snapshot: "
             "GET /api/v5/market/books + seqId) | checksum (legacy CRC32)")] = "zero",
    okx_trade_count_max: Annotated[int, typer.Option(
        help="synth OKX trades: largest count of matches aggregated into one push (1 = one match a push)")] = 1,
) -> None:
    """Serve the emulated venues on 127.0.0.1 until Ctrl-C."""
    if okx_books not in OKX_BOOKS_MODES:
        raise typer.BadParameter(f"--okx-books {okx_books!r}: use one of {', '.join(OKX_BOOKS_MODES)}")
    if okx_trade_count_max < 1:
        raise typer.BadParameter(f"--okx-trade-count-max {okx_trade_count_max}: use 1 or more")
    symbols = dict(DEFAULT_SYMBOLS)
    for item in symbol or []:
        market, _, syms = item.partition("=")
        if market not in symbols or not syms:
            raise typer.BadParameter(f"--symbol {item!r}: use MARKET=SYM[,SYM] with MARKET in {', '.join(symbols)}")
        symbols[market] = tuple(s.strip().upper() for s in syms.split(",") if s.strip())
    run_emulator(venue, mode, speed, rate, seed, faults, port, symbols, fixtures, okx_books, okx_trade_count_max)


def register(root: typer.Typer) -> None:
    """Mount `emulate` on the main `marketprism` command line."""
    root.command("emulate")(emulate)

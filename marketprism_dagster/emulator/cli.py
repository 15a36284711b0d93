"""`marketprism emulate`: run the emulator in the foreground until Ctrl-C.

The main CLI mounts :data:`app` (a typer app with one command) or calls :func:`run_emulator`.
Venue options (registry.VenueOption) are taken as ``--name-with-dashes VALUE``; ``--help`` lists
them with the venue names.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import structlog
import typer

from marketprism_dagster.serving import stop_on_signals

from . import registry
from .config import EmulatorConfig
from .faults import FaultPlan
from .server import Emulator

log = structlog.get_logger()

app = typer.Typer(help="Run the local exchange emulator on 127.0.0.1.")

# unknown --options reach the command as extra args: the venue options
VENUE_OPTION_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True}


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
    options: dict[str, Any] | None = None,
) -> None:
    """Start the emulator and serve until interrupted; print the URLs on start."""
    FaultPlan.parse(faults)  # fail fast on a bad spec
    cfg = EmulatorConfig(mode=mode, venues=tuple(venues) if venues else None, speed=speed, rate=rate, seed=seed,
                         faults=faults, port=port, symbols=symbols, fixtures=fixtures, **(options or {}))

    async def serve() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with Emulator(cfg) as emu:
                for market, url in emu.urls.items():
                    typer.echo(f"{market}: rest={url['rest']} ws={url['ws']}")
                await stop.wait()
                log.info("emulator.summary", faults_fired=emu.faults_fired, stats=emu.stats)

    asyncio.run(serve())


def venue_options(args: list[str]) -> dict[str, Any]:
    """``--name VALUE`` / ``--name=VALUE`` pairs -> venue option values (BadParameter names the allowed ones)."""
    declared = {opt.flag: opt for opt in registry.options().values()}
    allowed = ", ".join(sorted(declared)) or "none"
    out: dict[str, Any] = {}
    rest = list(args)
    while rest:
        flag, eq, value = rest.pop(0).partition("=")
        opt = declared.get(flag)
        if opt is None:
            raise typer.BadParameter(f"unknown option {flag!r}: the venue options are {allowed}")
        if not eq:
            if not rest:
                raise typer.BadParameter(f"{flag} needs a value")
            value = rest.pop(0)
        try:
            out[opt.name] = opt.from_text(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    return out


def emulate(
    ctx: typer.Context,
    venue: Annotated[list[str] | None, typer.Option(help="market id, server or alias (repeatable); all")] = None,
    mode: Annotated[str, typer.Option(help="replay | synth")] = "synth",
    speed: Annotated[float, typer.Option(help="replay pace: 1 = recorded, 0 = as fast as read")] = 1.0,
    rate: Annotated[float, typer.Option(help="synth messages/s per stream; 0 = as fast as read")] = 10.0,
    seed: Annotated[int, typer.Option(help="synth seed")] = 0,
    faults: Annotated[str, typer.Option(help="fault spec, e.g. 'gap@<venue>:every=1000,rest_429' (faults.py)")] = "",
    port: Annotated[int, typer.Option(help="base port (server i on port+i); 0 = ephemeral")] = 0,
    symbol: Annotated[list[str] | None, typer.Option(help="market_id=SYM[,SYM] (repeatable)")] = None,
    fixtures: Annotated[Path | None, typer.Option(help="shared fixtures dir")] = None,
) -> None:
    """Serve the emulated venues on 127.0.0.1 until Ctrl-C."""
    options = venue_options(list(ctx.args))
    symbols = registry.default_symbols()
    for item in symbol or []:
        market, _, syms = item.partition("=")
        if market not in symbols or not syms:
            raise typer.BadParameter(f"--symbol {item!r}: use MARKET=SYM[,SYM] with MARKET in {', '.join(symbols)}")
        symbols[market] = tuple(s.strip().upper() for s in syms.split(",") if s.strip())
    run_emulator(venue, mode, speed, rate, seed, faults, port, symbols, fixtures, options)


def command_help() -> str:
    """The command's help: what it does, the venue servers and their options (from the registry)."""
    lines = ["Serve the emulated venues on 127.0.0.1 until Ctrl-C.", ""]
    for spec in registry.servers().values():
        lines.append(f"{spec.name}: markets {', '.join(spec.markets)}"
                     + (f"; also named {', '.join(spec.aliases)}" if spec.aliases else ""))
    lines.append("")
    for opt in registry.options().values():
        choices = f" ({' | '.join(opt.choices)})" if opt.choices else ""
        lines.append(f"{opt.flag} VALUE{choices}: {opt.help} [default: {opt.default}]")
    return "\n\n".join(lines)


def register(root: typer.Typer) -> None:
    """Mount `emulate` on the main `marketprism` command line."""
    root.command("emulate", help=command_help(), context_settings=VENUE_OPTION_SETTINGS)(emulate)


app.command("emulate", help=command_help(), context_settings=VENUE_OPTION_SETTINGS)(emulate)

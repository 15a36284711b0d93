"""Emulator configuration: the generic settings plus the options the venue modules declare."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .clock import Clock, WallClock
from .faults import FaultPlan


def servers_for(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Market ids, server names or aliases -> the servers to run, in server order."""
    wanted = {server for name in names for server in registry.resolve(name)}
    return tuple(s for s in registry.servers() if s in wanted)


@dataclass(init=False)
class EmulatorConfig:
    """Everything the emulator needs; every setting has a working default.

    venues: market ids, server names or aliases (default: every registered server).
    rate: messages per second per high-frequency stream (books, trades, tickers); 0 = as fast
    as the client reads. speed (replay): 1 = original timing, 0 = as fast as the client reads.
    port: 0 = an ephemeral port per server; otherwise server i listens on port + i in server
    order (registry.py). periods: seconds between pushes of the slow streams, by the names the
    venue modules declare. trade_history (synth): trades remembered per symbol for the
    trade-history endpoints (history.py). Venue options (``**options``): the settings each
    venue module declares (registry.VenueOption; read as ``cfg.options[name]``); an unknown
    name is a TypeError, a bad value a ValueError naming the choices.
    """

    mode: str
    venues: tuple[str, ...]
    symbols: dict[str, tuple[str, ...]]
    rate: float
    speed: float
    seed: int
    faults: str | FaultPlan
    host: str
    port: int
    fixtures: Path | str | None
    clock: Clock
    periods: dict[str, float]
    replay_settle: float
    book_levels: int
    trade_history: int
    options: dict[str, Any]

    def __init__(
        self,
        mode: str = "synth",
        venues: tuple[str, ...] | None = None,
        symbols: dict[str, tuple[str, ...]] | None = None,
        rate: float = 10.0,
        speed: float = 1.0,
        seed: int = 0,
        faults: str | FaultPlan = "",
        host: str = "127.0.0.1",
        port: int = 0,
        fixtures: Path | str | None = None,
        clock: Clock | None = None,
        periods: dict[str, float] | None = None,
        replay_settle: float = 0.05,
        book_levels: int = 200,
        trade_history: int = 200_000,
        **options: Any,
    ) -> None:
        if mode not in ("synth", "replay"):
            raise ValueError(f"mode {mode!r}: use 'synth' or 'replay'")
        if trade_history < 1:
            raise ValueError(f"trade_history {trade_history}: must be at least 1")
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"host {host!r}: the emulator serves on loopback only (127.0.0.1)")
        declared = registry.options()
        unknown = sorted(set(options) - set(declared))
        if unknown:
            raise TypeError(f"EmulatorConfig got unknown option(s) {', '.join(unknown)}: the venue modules declare "
                            f"{', '.join(sorted(declared)) or 'none'}")
        self.mode = mode
        self.venues = servers_for(tuple(registry.servers()) if venues is None else venues)
        self.symbols = registry.default_symbols()
        self.symbols.update({k: tuple(v) for k, v in (symbols or {}).items()})
        self.rate = rate
        self.speed = speed
        self.seed = seed
        self.faults = faults
        self.host = host
        self.port = port
        self.fixtures = fixtures
        self.clock = clock if clock is not None else WallClock()
        self.periods = dict(periods or {})
        self.replay_settle = replay_settle
        self.book_levels = book_levels
        self.trade_history = trade_history
        self.options = {name: opt.check(options.get(name, opt.default)) for name, opt in declared.items()}

    @property
    def fault_plan(self) -> FaultPlan:
        return self.faults if isinstance(self.faults, FaultPlan) else FaultPlan.parse(self.faults)

    def period(self, name: str) -> float:
        if name in self.periods:
            return self.periods[name]
        return registry.default_periods()[name]

"""Emulator configuration and the market-id <-> venue-server map."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .clock import Clock, WallClock
from .faults import FaultPlan

OKX_BOOKS_MODES = ("checksum", "zero", "rest")
SERVERS = ("binance_spot", "binance_derivatives", "okx", "deribit")
MARKET_SERVER = {
    "binance_spot": "binance_spot",
    "binance_derivatives": "binance_derivatives",
    "okx_spot": "okx",
    "okx_derivatives": "okx",
    "deribit_derivatives": "deribit",
}
SERVER_ALIASES = {**MARKET_SERVER, "okx": "okx", "deribit": "deribit", "binance": "binance_spot"}

DEFAULT_SYMBOLS: dict[str, tuple[str, ...]] = {
    "binance_spot": ("BTC-USDT", "ETH-USDT"),
    "binance_derivatives": ("BTC-USDT", "ETH-USDT"),
    "okx_spot": ("BTC-USDT", "ETH-USDT"),
    "okx_derivatives": ("BTC-USDT", "ETH-USDT"),
    "deribit_derivatives": ("BTC", "ETH"),
}

# seconds between pushes of the slow streams (the venues' documented cadences)
DEFAULT_PERIODS: dict[str, float] = {
    "binance_mark_price": 3.0,  # <symbol>@markPrice; @markPrice@1s -> 1 s
    "okx_funding_rate": 30.0,  # OKX pushes every 30-90 s
    "okx_open_interest": 3.0,
    "deribit_dvol": 1.0,
    "liquidation": 2.0,  # mean interval between liquidations per venue stream
}


def binance_symbol(symbol: str) -> str:
    return symbol.replace("-", "").replace("/", "").upper()


def okx_inst_id(symbol: str, market: str) -> str:
    return f"{symbol.upper()}-SWAP" if market == "okx_derivatives" else symbol.upper()


def server_for(name: str) -> str:
    """A market id or server name -> the server that serves it."""
    try:
        return SERVER_ALIASES[name]
    except KeyError:
        raise ValueError(f"unknown venue {name!r}: use one of {', '.join(sorted(SERVER_ALIASES))}") from None


@dataclass
class EmulatorConfig:
    """Everything the emulator needs; all fields have working defaults.

    rate: messages per second per high-frequency stream (depth, books, trades, bookTicker);
    0 = as fast as the client reads. speed (replay): 1 = original timing, 0 = as fast as the
    client reads. port: 0 = an ephemeral port per server; otherwise server i listens on
    port + i in the order of SERVERS. binance_weight_limit: REQUEST_WEIGHT per minute per
    server (None = the venue's 6000 spot / 2400 USD-M). heartbeat_time_scale multiplies
    Deribit heartbeat intervals (tests use small values to keep to the protocol yet run fast).
    okx_books (synth): the OKX ``books`` protocol. ``zero`` (default, OKX since 2026-06-23):
    snapshot pushed on subscribe, ``checksum`` always 0; ``rest`` (OKX's announced next step):
    no snapshot in the stream, clients take ``GET /api/v5/market/books`` and bridge by seqId,
    ``checksum`` 0; ``checksum`` (legacy): snapshot on subscribe and real CRC32 checksums.
    trade_history (synth): trades remembered per symbol for the trade-history endpoints
    (history.py). okx_trade_count_max (synth): the largest ``count`` of an OKX ``trades`` push
    (matches aggregated into one push; default 1 = every push is one match, ``tradeId`` then
    runs on by 1; 2 or more = about one push in five aggregates 2..max matches, as OKX does).
    """

    mode: str = "synth"
    venues: tuple[str, ...] = SERVERS
    symbols: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SYMBOLS))
    rate: float = 10.0
    speed: float = 1.0
    seed: int = 0
    faults: str | FaultPlan = ""
    host: str = "127.0.0.1"
    port: int = 0
    fixtures: Path | str | None = None
    clock: Clock = field(default_factory=WallClock)
    binance_weight_limit: int | None = None
    periods: dict[str, float] = field(default_factory=dict)
    heartbeat_time_scale: float = 1.0
    replay_settle: float = 0.05
    book_levels: int = 200
    okx_books: str = "zero"
    trade_history: int = 200_000
    okx_trade_count_max: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("synth", "replay"):
            raise ValueError(f"mode {self.mode!r}: use 'synth' or 'replay'")
        if self.okx_books not in OKX_BOOKS_MODES:
            raise ValueError(f"okx_books {self.okx_books!r}: use one of {', '.join(OKX_BOOKS_MODES)} "
                             "(CLI: --okx-books)")
        if self.trade_history < 1 or self.okx_trade_count_max < 1:
            raise ValueError(f"trade_history {self.trade_history} / okx_trade_count_max {self.okx_trade_count_max}: "
                             "both must be at least 1")
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"host {self.host!r}: the emulator serves on loopback only (127.0.0.1)")
        servers: list[str] = []
        for name in self.venues:
            server = server_for(name)
            if name == "binance":
                servers += ["binance_spot", "binance_derivatives"]
            elif server not in servers:
                servers.append(server)
        self.venues = tuple(s for s in SERVERS if s in servers)
        merged = dict(DEFAULT_SYMBOLS)
        merged.update({k: tuple(v) for k, v in self.symbols.items()})
        self.symbols = merged

    @property
    def fault_plan(self) -> FaultPlan:
        return self.faults if isinstance(self.faults, FaultPlan) else FaultPlan.parse(self.faults)

    def period(self, name: str) -> float:
        return self.periods.get(name, DEFAULT_PERIODS[name])

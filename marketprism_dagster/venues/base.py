"""The sans-I/O contract between venue modules (pure) and the collector runtime (I/O).

The runtime owns sockets, HTTP, timers and publishing. A venue adapter never touches a
socket: it says which WebSocket feeds and REST polls it needs, turns raw messages into
records, and asks the runtime for I/O through ``Action`` values (send a frame, fetch a
REST snapshot, reconnect a feed). Everything here is deterministic given its inputs,
which is what makes the parsers and books testable from recorded fixtures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from marketprism_dagster.config import MarketConfig, OrderBookConfig


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str  # normalized BASE-QUOTE (e.g. BTC-USDT); BTC for Deribit indices
    exchange_symbol: str  # as the venue spells it (BTCUSDT, BTC-USDT-SWAP, btc_usd)
    base: str
    quote: str
    contract_value: Decimal | None = None  # base units per contract (OKX ctVal); None = quantities already base
    tick_size: str | None = None
    lot_size: str | None = None
    # Added for the venue modules: True for coin-margined (inverse) contracts, whose contract
    # value is in the QUOTE currency (OKX UNI-USD-SWAP). Their books are maintained and verified
    # but no base-unit records are derived from them (outside our market matrix).
    inverse: bool = False


@dataclass(frozen=True, slots=True)
class WsFeed:
    """One WebSocket connection the adapter needs."""

    key: str  # stable name, e.g. "binance_derivatives/public"
    url: str
    subscribe: tuple[str, ...] = ()  # frames to send right after connecting (in order)
    ping_text: str | None = None  # OKX: "ping" text frame when idle
    ping_interval_s: float | None = None  # send ping_text when nothing was received for this long
    pong_text: str | None = None  # reply the venue sends to ping_text (not a data message)
    data_types: tuple[str, ...] = ()  # record types this feed carries (health: e.g. which feeds carry liquidations)


@dataclass(frozen=True, slots=True)
class RestPoll:
    """A REST endpoint polled on its data period (aligned to period boundaries)."""

    key: str  # e.g. "binance_derivatives/open_interest/BTCUSDT"
    data_type: str
    url: str  # full URL including query string
    period_s: float
    offset_s: float = 2.0  # poll this long after each boundary (venues publish the point a bit late)
    weight: int = 1  # venue request weight (Binance)
    symbol: str = ""


# ---------------------------------------------------------------- actions for the runtime


@dataclass(frozen=True, slots=True)
class Send:
    feed_key: str
    text: str


@dataclass(frozen=True, slots=True)
class FetchSnapshot:
    """Fetch a REST order book snapshot and hand the body to ``on_snapshot``."""

    symbol: str  # exchange symbol
    url: str
    weight: int = 1
    delay_s: float = 0.0  # wait this long before fetching (e.g. the last snapshot was older than the stream)


@dataclass(frozen=True, slots=True)
class Reconnect:
    feed_key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Backfill:
    """Fetch a REST URL and hand the body to ``on_backfill`` (e.g. Deribit DVOL candles after a reconnect)."""

    key: str
    url: str


@dataclass(frozen=True, slots=True)
class SwitchConnection:
    """The venue will close this feed's connection (Binance ``serverShutdown``, OKX notice 64008): open a
    second one (same URL and subscribe frames), move over once ``feed_ready`` says so, then close the old."""

    feed_key: str
    reason: str


Action = Send | FetchSnapshot | Reconnect | Backfill | SwitchConnection


@dataclass(frozen=True, slots=True)
class RestBodyError:
    """An error a venue reports inside a REST body (OKX answers HTTP 200 with ``{"code": "50011", ...}``)."""

    code: str  # the venue's code, as text
    msg: str
    rate_limited: bool = False  # wait ``retry_after_s`` on this host, then retry
    transient: bool = False  # retry with backoff (venue busy / timeout); neither flag: permanent
    retry_after_s: float = 0.0  # the venue's rate-limit window


@dataclass(slots=True)
class Output:
    records: list[Any] = field(default_factory=list)  # record structs from marketprism_dagster.records
    actions: list[Action] = field(default_factory=list)
    # counters for /metrics, e.g. {"resync": 1, "checksum_failure": 1, "parse_error": 1}
    events: dict[str, int] = field(default_factory=dict)

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] = self.events.get(event, 0) + n

    def extend(self, other: Output) -> None:
        self.records.extend(other.records)
        self.actions.extend(other.actions)
        for k, v in other.events.items():
            self.count(k, v)


class VenueAdapter(ABC):
    """Pure, per-market state machine: parsers + order books + subscription specs."""

    venue: str
    # Added for offline replay (``marketprism normalize``): when True, ``load_instruments`` keeps
    # every instrument in the metadata and the adapter follows whatever symbols the recorded
    # messages carry, instead of the configured ``market.symbols``. The runtime leaves it False.
    accept_all_symbols: bool = False

    def __init__(self, market_id: str, market: MarketConfig, orderbook: OrderBookConfig) -> None:
        self.market_id = market_id
        self.market = market
        self.orderbook = orderbook
        self.instruments: dict[str, Instrument] = {}  # by exchange symbol
        # malformed entries of the last instrument listing, skipped (the rest loads): one description each
        self.skipped_instruments: list[str] = []

    # -- instruments
    @abstractmethod
    def instrument_urls(self) -> Sequence[str]:
        """REST URLs whose bodies ``load_instruments`` needs (exchangeInfo, OKX instruments, ...)."""

    @abstractmethod
    def load_instruments(self, bodies: Mapping[str, bytes]) -> dict[str, Instrument]:
        """Parse instrument metadata (by URL) and keep the configured symbols; raise ValueError naming unknown ones."""

    # -- subscriptions
    @abstractmethod
    def ws_feeds(self) -> list[WsFeed]: ...

    def rest_polls(self) -> list[RestPoll]:
        return []

    # -- inputs
    @abstractmethod
    def on_connect(self, feed_key: str, received_at: int) -> Output:
        """A feed (re)connected: reset book state for its symbols, maybe request snapshots/backfills."""

    @abstractmethod
    def on_message(self, feed_key: str, raw: bytes | str, received_at: int) -> Output: ...

    def on_snapshot(self, symbol: str, body: bytes, received_at: int) -> Output:
        return Output()

    def on_rest(self, poll: RestPoll, body: bytes, received_at: int) -> Output:
        return Output()

    def on_backfill(self, key: str, body: bytes, received_at: int) -> Output:
        return Output()

    def on_timer(self, now_ms: int) -> Output:
        """Called about every 100 ms: publish due book ticks, heartbeats, etc."""
        return Output()

    def feed_ready(self, feed_key: str) -> bool:
        """During a ``SwitchConnection``: may the old connection close now (e.g. every book of the feed is
        synchronized)? Asked after each frame of the new connection."""
        return True

    def rest_body_error(self, body: bytes) -> RestBodyError | None:
        """The venue error a REST body carries (any HTTP status), None for a success or no venue code.

        The REST client calls it before handing a body to the adapter: a rate-limit code backs the
        host off and retries, a transient one retries, any other code fails the request with it.
        """
        return None

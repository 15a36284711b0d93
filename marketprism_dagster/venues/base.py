"""The sans-I/O contract between venue modules (pure) and the collector runtime (I/O), and the
declaration every venue makes of itself.

The runtime owns sockets, HTTP, timers and publishing. A venue adapter never touches a
socket: it says which WebSocket feeds and REST polls it needs, turns raw messages into
records, and asks the runtime for I/O through ``Action`` values (send a frame, fetch a
REST snapshot, reconnect a feed). Everything here is deterministic given its inputs,
which is what makes the parsers and books testable from recorded fixtures.

A venue declares, on its adapter class: its market types (``markets``: instrument and snapshot
endpoints, snapshot depths, REST weight budget), its channels (``channels``: stream name -> the one
mapping that turns its messages into records, and the record types it carries), its REST polls
(``polls``), its REST weight header (``weight_header``) and its default markets. Config validation,
rate limiting, the offline ``normalize`` and the adapter registry (``venues.registry``) read these
declarations; no module outside ``venues/`` (and the emulator) knows a venue.

The adapters read their market's settings through the ``MarketSettings`` / ``BookSettings``
protocols (config's pydantic models satisfy them): this package never imports the config module,
which imports the registry to validate markets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar, Protocol

import msgspec
import structlog

from marketprism_dagster.book import BookSnapshot, SeqIdSync, UpdateIdSync
from marketprism_dagster.records import OrderBook
from marketprism_dagster.venues.common import scale

log = structlog.get_logger(__name__)


class MarketSettings(Protocol):
    """The settings of one configured market an adapter reads (``config.MarketConfig``)."""

    @property
    def venue(self) -> str: ...
    @property
    def market_type(self) -> str: ...
    @property
    def symbols(self) -> Sequence[str]: ...
    @property
    def data_types(self) -> Sequence[str]: ...
    @property
    def rest_url(self) -> str: ...
    @property
    def ws_url(self) -> str: ...
    @property
    def poll_interval_s(self) -> float: ...
    @property
    def lsr_period(self) -> str: ...


class BookSettings(Protocol):
    """The order book settings an adapter reads (``config.OrderBookConfig``)."""

    @property
    def depth(self) -> int: ...
    @property
    def cadence_ms(self) -> int: ...
    @property
    def snapshot_limit(self) -> int: ...
    @property
    def max_levels(self) -> int: ...


# ---------------------------------------------------------------- what a venue declares


@dataclass(frozen=True, slots=True)
class SnapshotDepth:
    """What a venue's REST order book snapshot accepts as its depth parameter (``orderbook.snapshot_limit``)."""

    request: str  # endpoint and parameter, for messages: "GET /path limit"
    low: int
    high: int
    values: tuple[int, ...] = ()  # the only accepted values when the venue takes a fixed set
    clamp: bool = False  # True: a larger configured value is requested as ``high`` instead of being rejected

    def accepts(self, limit: int) -> bool:
        if self.clamp and limit > self.high:
            return True
        return limit in self.values if self.values else self.low <= limit <= self.high

    def request_size(self, limit: int) -> int:
        """The depth to put in the request for a configured (accepted) ``limit``."""
        return min(limit, self.high) if self.clamp else limit

    def nearest(self, limit: int) -> int:
        """The accepted value closest below ``limit`` (or the smallest one)."""
        if not self.values:
            return max(self.low, min(limit, self.high))
        return max((v for v in self.values if v <= limit), default=self.values[0])

    def allowed(self) -> str:
        return "[" + ", ".join(map(str, self.values)) + "]" if self.values else f"{self.low}..{self.high}"


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """One market type of a venue: its REST endpoints and limits (its data types come from the
    channels and polls that name it)."""

    instruments_path: str = ""  # REST path listing the instruments ("" = the venue names them itself)
    snapshot_path: str = ""  # REST path of an order book snapshot ("" = none)
    snapshot_symbol_param: str = "symbol"  # query parameter of ``snapshot_path`` naming the symbol
    snapshot_depth: SnapshotDepth | None = None  # accepted depths of the snapshot (None: any)
    weight_per_minute: int | None = None  # REST request-weight budget per host and minute (None: untracked)


@dataclass(frozen=True, slots=True)
class Channel:
    """One venue channel (stream): the mapping that turns its messages into records, what it carries."""

    name: str  # the venue's channel / stream name as subscribed
    data_types: tuple[str, ...]  # record types its messages carry
    mapping: str  # the adapter method mapping one message (the generic path; a fast path calls the same)
    feeds: Mapping[str, str]  # market type -> the market's connection carrying it (offered on these only)
    routes: tuple[str, ...] = ()  # message tags routed to ``mapping`` (default: ``name``)
    needed_by: tuple[str, ...] = ()  # types needing it subscribed whose records come elsewhere

    def route_keys(self) -> tuple[str, ...]:
        return self.routes or (self.name,)


@dataclass(frozen=True, slots=True)
class Poll:
    """A REST endpoint polled for one data type on its period."""

    data_type: str
    path: str
    mapping: str  # the adapter method mapping one answer: (poll, instrument, body, received_at, out)
    market_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str  # normalized BASE-QUOTE (e.g. BTC-USDT); the currency alone for a currency index
    exchange_symbol: str  # as the venue spells it (BTCUSDT, BTC-USDT-SWAP, btc_usd)
    base: str
    quote: str
    contract_value: Decimal | None = None  # base units per contract; None = quantities already base
    tick_size: str | None = None
    lot_size: str | None = None
    # True for coin-margined (inverse) contracts, whose contract value is in the QUOTE currency.
    # Their books are maintained and verified but no base-unit records are derived from them
    # (outside our market matrix).
    inverse: bool = False


@dataclass(frozen=True, slots=True)
class WsFeed:
    """One WebSocket connection the adapter needs."""

    key: str  # stable name: "<market id>/<feed>", e.g. "mymarket/public"
    url: str
    subscribe: tuple[str, ...] = ()  # frames to send right after connecting (in order)
    ping_text: str | None = None  # a text ping frame the venue expects when idle
    ping_interval_s: float | None = None  # send ping_text when nothing was received for this long
    pong_text: str | None = None  # reply the venue sends to ping_text (not a data message)
    data_types: tuple[str, ...] = ()  # record types this feed carries (health: e.g. which feeds carry liquidations)


@dataclass(frozen=True, slots=True)
class RestPoll:
    """A REST endpoint polled on its data period (aligned to period boundaries)."""

    key: str  # "<market id>/<data type>/<exchange symbol>"
    data_type: str
    url: str  # full URL including query string
    period_s: float
    offset_s: float = 2.0  # poll this long after each boundary (venues publish the point a bit late)
    weight: int = 1  # venue request weight
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
    """Fetch a REST URL and hand the body to ``on_backfill`` (e.g. index candles after a reconnect)."""

    key: str
    url: str


@dataclass(frozen=True, slots=True)
class SwitchConnection:
    """The venue will close this feed's connection (it announced a shutdown): open a second one (same
    URL and subscribe frames), move over once ``feed_ready`` says so, then close the old."""

    feed_key: str
    reason: str


Action = Send | FetchSnapshot | Reconnect | Backfill | SwitchConnection


@dataclass(frozen=True, slots=True)
class RestBodyError:
    """An error a venue reports inside a REST body (some venues answer HTTP 200 with an error code)."""

    code: str  # the venue's code, as text
    msg: str
    rate_limited: bool = False  # wait ``retry_after_s`` on this host, then retry
    transient: bool = False  # retry with backoff (venue busy / timeout); neither flag: permanent
    retry_after_s: float = 0.0  # the venue's rate-limit window


IdSpan = tuple[str, str, int, int, int]  # data type, normalized symbol, first id, last id, event time ms


class Output(msgspec.Struct):
    """What one message (or poll answer) produced. A msgspec struct, not a dataclass: one is built per
    message, and its C constructor costs about half of a dataclass's (bench_parse)."""

    records: list[Any] = msgspec.field(default_factory=list)  # record structs from marketprism_dagster.records
    actions: list[Action] = msgspec.field(default_factory=list)
    # counters for /metrics, e.g. {"resync": 1, "checksum_failure": 1, "parse_error": 1}
    events: dict[str, int] = msgspec.field(default_factory=dict)
    # the venue ids the messages carried, for source-gap detection (collector/gaps.py): one
    # ``(data_type, symbol, first id, last id, event ms)`` per message of a type in ``id_types``
    ids: list[IdSpan] | None = None

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] = self.events.get(event, 0) + n

    def extend(self, other: Output) -> None:
        self.records.extend(other.records)
        self.actions.extend(other.actions)
        if other.ids:
            self.ids = (self.ids or []) + other.ids
        for k, v in other.events.items():
            self.count(k, v)


class ErrorLog:
    """Count every bad input; log the first occurrence of each (kind, context) once.

    At most ``max_keys`` (kind, context) pairs are remembered, so a venue that sends endless distinct
    unknown symbols cannot grow it: past the bound every input is still counted, and each kind logs
    one ``venue.bad_input_suppressed`` line (with the first unremembered context as a sample)."""

    MAX_KEYS = 1024
    MAX_CONTEXT = 100  # characters of a context kept in a key (contexts may come from venue input)

    def __init__(self, market_id: str, max_keys: int = MAX_KEYS) -> None:
        self.market_id = market_id
        self.max_keys = max_keys
        self._seen: set[tuple[str, str]] = set()
        self.suppressed: dict[str, int] = {}  # kind -> inputs past the bound (kinds are the adapters' codes)

    def bad(self, out: Output, kind: str, context: Any, raw: bytes | str | None = None, **fields: Any) -> None:
        out.count(kind)
        key = (kind, (context if type(context) is str else repr(context))[: self.MAX_CONTEXT])
        if key in self._seen:
            return
        sample = raw[:200] if raw is not None else None
        if len(self._seen) >= self.max_keys:
            n = self.suppressed.get(kind, 0)
            self.suppressed[kind] = n + 1
            if n == 0:
                log.warning(
                    "venue.bad_input_suppressed",
                    market=self.market_id,
                    kind=kind,
                    context=key[1],
                    sample=sample,
                    remembered=self.max_keys,
                    note="further new contexts of this kind are counted, not logged",
                )
            return
        self._seen.add(key)
        log.warning("venue.bad_input", market=self.market_id, kind=kind, context=key[1], sample=sample, **fields)


def book_record(
    market_id: str,
    market_type: str,
    inst: Instrument,
    snap: BookSnapshot,
    received_at: int,
    depth: int,
) -> Any:
    """An ``orderbook`` record; levels converted to base units when the instrument has a contract value."""
    bids, asks = snap.bids, snap.asks
    cv = inst.contract_value
    if cv is not None and not inst.inverse:
        bids = [(p, scale(q, cv)) for p, q in bids]
        asks = [(p, scale(q, cv)) for p, q in asks]
    return OrderBook(
        exchange=market_id,
        market_type=market_type,
        symbol=inst.symbol,
        exchange_symbol=inst.exchange_symbol,
        timestamp=snap.timestamp,
        received_at=received_at,
        update_id=snap.update_id,
        tick=snap.tick,
        depth=depth,
        bids=bids,
        asks=asks,
    )


class VenueAdapter(ABC):
    """Pure, per-market state machine: parsers + order books + subscription specs.

    A subclass is one venue: it sets the declaration below and implements the abstract methods.
    The skeleton every venue shares lives here: the instrument table and its lookup, the error
    log, the order books and their publishing, the handler table built from the channels.
    """

    # ------------------------------------------------------------ the declaration
    venue: ClassVar[str]  # the name config's ``markets.<id>.venue`` uses
    markets: ClassVar[Mapping[str, MarketSpec]]  # market type -> its endpoints and limits
    channels: ClassVar[tuple[Channel, ...]] = ()
    polls: ClassVar[tuple[Poll, ...]] = ()
    weight_header: ClassVar[str | None] = None  # response header carrying the REST weight used this minute
    # data types whose messages carry ids the venue numbers consecutively per symbol: the adapter reports
    # them in ``Output.ids`` and the collector turns holes into ``source_gap`` records (collector/gaps.py)
    id_types: ClassVar[tuple[str, ...]] = ()
    # market id -> its default config entry (``market_type``, ``symbols``, ``rest_url``, ``ws_url``;
    # ``data_types`` defaults to everything the market type offers)
    default_markets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    # Set for offline replay (``marketprism normalize``): when True, ``load_instruments`` keeps
    # every instrument in the metadata and the adapter follows whatever symbols the recorded
    # messages carry, instead of the configured ``market.symbols``. The runtime leaves it False.
    accept_all_symbols: bool = False
    # False: every frame takes the generic path (same results, slower; a switch for a venue format
    # change, and the reference a typed fast path is tested against)
    typed_fast_path: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "venue" not in cls.__dict__:
            return  # an intermediate class: nothing declared here
        for c in cls.channels:
            cls._check_declared(f"channel {c.name!r}", c.mapping, c.feeds)
        for p in cls.polls:
            cls._check_declared(f"poll {p.data_type!r}", p.mapping, p.market_types)

    @classmethod
    def _check_declared(cls, what: str, mapping: str, market_types: Iterable[str]) -> None:
        if not callable(getattr(cls, mapping, None)):
            raise TypeError(f"{cls.__name__}: {what} names mapping {mapping!r}, which the class does not define")
        unknown = [m for m in market_types if m not in cls.markets]
        if unknown:
            raise TypeError(f"{cls.__name__}: {what} names market types {unknown} not in markets {list(cls.markets)}")

    @classmethod
    def offered(cls, market_type: str) -> tuple[str, ...] | None:
        """The data types the venue offers for ``market_type``, in declaration order (channels, then
        polls); None: not one of its market types."""
        if market_type not in cls.markets:
            return None
        types = [t for c in cls.channels if market_type in c.feeds for t in c.data_types]
        types += [p.data_type for p in cls.polls if market_type in p.market_types]
        return tuple(dict.fromkeys(types))

    # ------------------------------------------------------------ the shared skeleton
    def __init__(self, market_id: str, market: MarketSettings, orderbook: BookSettings) -> None:
        self.market_id = market_id
        self.market = market
        self.market_type = market.market_type
        self.spec = self.markets[market.market_type]
        self.orderbook = orderbook
        self.instruments: dict[str, Instrument] = {}  # by exchange symbol
        # malformed entries of the last instrument listing, skipped (the rest loads): one description each
        self.skipped_instruments: list[str] = []
        self.errors = ErrorLog(market_id)
        self.books: dict[str, Any] = {}  # by exchange symbol: UpdateIdSync / SeqIdSync
        self.generic_frames = 0  # frames that did not fit a typed fast path (normal for the other channels)
        # route key -> the channel's mapping (bound), for the generic path
        offered = [c for c in self.channels if self.market_type in c.feeds]
        self._handlers: dict[str, Callable[..., None]] = {
            key: getattr(self, c.mapping) for c in offered for key in c.route_keys()
        }
        self._poll_mappings: dict[str, Callable[..., None]] = {
            p.data_type: getattr(self, p.mapping) for p in self.polls if self.market_type in p.market_types
        }

    def subscribed(self) -> dict[str, list[Channel]]:
        """Feed name -> the channels of this market its configured data types need (declaration order)."""
        types = set(self.market.data_types)
        feeds: dict[str, list[Channel]] = {}
        for c in self.channels:
            feed = c.feeds.get(self.market_type)
            if feed is not None and types.intersection(c.data_types + c.needed_by):
                feeds.setdefault(feed, []).append(c)
        return feeds

    def carried(self, channels: Iterable[Channel]) -> tuple[str, ...]:
        """The configured data types whose records ``channels`` carry (declaration order)."""
        types = set(self.market.data_types)
        return tuple(dict.fromkeys(t for c in channels for t in c.data_types if t in types))

    def book_feeds(self) -> set[str]:
        """Keys of the feeds that carry order books."""
        return {
            f"{self.market_id}/{feed}"
            for feed, channels in self.subscribed().items()
            if any("orderbook" in c.data_types for c in channels)
        }

    def _instrument(self, symbol: str, out: Output) -> Instrument | None:
        inst = self.instruments.get(symbol)
        if inst is None:
            self.errors.bad(out, "unknown_symbol", symbol)
        return inst

    def _keep_instruments(
        self,
        listed: Iterable[Instrument],
        hint: str,
        eligible: Callable[[Instrument], bool] = lambda i: True,
    ) -> dict[str, Instrument]:
        """Set and return ``instruments`` (by exchange symbol) from the venue's listing: the first
        listing of each exchange symbol; all of them under ``accept_all_symbols``, else the
        configured ``market.symbols`` among the ``eligible`` ones. Raises ValueError naming unknown
        symbols, the URL that listed the others and ``hint`` (how to spell a symbol)."""
        found: dict[str, Instrument] = {}
        for inst in listed:
            found.setdefault(inst.exchange_symbol, inst)
        if self.accept_all_symbols:
            self.instruments = found
            return found
        by_norm = {i.symbol: i for i in found.values() if eligible(i)}
        symbols = self.market.symbols
        unknown = [s for s in symbols if s not in by_norm]
        if unknown:
            raise ValueError(
                f"markets.{self.market_id}.symbols: {unknown} not listed by {self.instrument_urls()[0]} ({hint})"
            )
        self.instruments = {by_norm[s].exchange_symbol: by_norm[s] for s in symbols}
        return self.instruments

    def _rest_poll(self, data_type: str, symbol: str, url: str, period_s: float) -> RestPoll:
        """A poll of one data type for one exchange symbol, keyed ``<market>/<data_type>/<symbol>``."""
        return RestPoll(
            key=f"{self.market_id}/{data_type}/{symbol}", data_type=data_type, url=url, period_s=period_s, symbol=symbol
        )

    def _publish(self, sync: UpdateIdSync | SeqIdSync, inst: Instrument, received_at: int, out: Output) -> None:
        """Every book snapshot the sync has ready, as ``orderbook`` records (none for inverse contracts)."""
        snaps = sync.ticker.drain()
        if inst.inverse:
            return  # books of inverse contracts are kept and verified, not stored (outside our matrix)
        depth = self.orderbook.depth
        for snap in snaps:
            out.records.append(book_record(self.market_id, self.market_type, inst, snap, received_at, depth))

    def book_windows(self) -> list[tuple[str, Instrument, int, int]]:
        """Closed windows without a valid book since the last call: (data type, instrument, lost ms, back ms),
        exchange event times (``book.sync.SyncWindows``); none for inverse contracts (not stored)."""
        out: list[tuple[str, Instrument, int, int]] = []
        for sym, sync in self.books.items():
            if not sync.windows.closed:
                continue
            windows = sync.windows.drain()
            inst = self.instruments.get(sym)
            if inst is not None and not inst.inverse:
                out += [("orderbook", inst, lost, back) for lost, back in windows]
        return out

    def feed_ready(self, feed_key: str) -> bool:
        """During a ``SwitchConnection``: may the old connection close now? A feed carrying books once
        every book is synchronized (an update the new connection repeats is stale to the book); any
        other feed at once. Asked after each frame of the new connection."""
        return feed_key not in self.book_feeds() or all(s.synced for s in self.books.values())

    def on_rest(self, poll: RestPoll, body: bytes, received_at: int) -> Output:
        """A polled answer, handed to the poll's mapping; a body it cannot read is a counted parse error."""
        out = Output()
        inst = self._instrument(poll.symbol, out)
        if inst is None:
            return out
        mapping = self._poll_mappings.get(poll.data_type)
        if mapping is None:
            self.errors.bad(out, "unsupported_message", poll.data_type)
            return out
        try:
            mapping(poll, inst, body, received_at, out)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError) as exc:
            self.errors.bad(out, "parse_error", poll.data_type, body, error=repr(exc))
        return out

    # ------------------------------------------------------------ instruments
    @abstractmethod
    def instrument_urls(self) -> Sequence[str]:
        """REST URLs whose bodies ``load_instruments`` needs (the market's ``instruments_path``)."""

    @abstractmethod
    def load_instruments(self, bodies: Mapping[str, bytes]) -> dict[str, Instrument]:
        """Parse instrument metadata (by URL) and keep the configured symbols; raise ValueError naming unknown ones."""

    # ------------------------------------------------------------ subscriptions
    @abstractmethod
    def ws_feeds(self) -> list[WsFeed]: ...

    def rest_polls(self) -> list[RestPoll]:
        return []

    # ------------------------------------------------------------ inputs
    @abstractmethod
    def on_connect(self, feed_key: str, received_at: int) -> Output:
        """A feed (re)connected: reset book state for its symbols, maybe request snapshots/backfills."""

    @abstractmethod
    def on_message(self, feed_key: str, raw: bytes | str, received_at: int) -> Output: ...

    def on_snapshot(self, symbol: str, body: bytes, received_at: int) -> Output:
        return Output()

    def on_backfill(self, key: str, body: bytes, received_at: int) -> Output:
        return Output()

    def on_timer(self, now_ms: int) -> Output:
        """Called about every 100 ms: publish due book ticks, heartbeats, etc."""
        return Output()

    def rest_body_error(self, body: bytes) -> RestBodyError | None:
        """The venue error a REST body carries (any HTTP status), None for a success or no venue code.

        The REST client calls it before handing a body to the adapter: a rate-limit code backs the
        host off and retries, a transient one retries, any other code fails the request with it.
        """
        return None

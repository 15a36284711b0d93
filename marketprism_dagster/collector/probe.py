"""``marketprism probe``: connect to the configured venues exactly as ``marketprism collect`` does, publish nothing.

A ``Probe`` is a ``Collector`` (same adapters, instrument loading, WebSocket feeds, REST polls and
book snapshot fetches, same settings) that counts its records instead of publishing them: no NATS
connection, no HTTP ports, no instance lock, no health or published-points file. Each adapter is
wrapped in an ``ObservedAdapter`` that attributes records and adapter events to (market, data type);
every HTTP request of the probe's session is traced (status or error per URL). After ``seconds``
the probe reports one row per market x data type and whether each feed works:

* a feed is ok when it produced at least one valid record; an order book only when every symbol
  published one (a published book is a synchronized book) and no adapter error (sequence gap,
  checksum mismatch, parse error) hit it: a book that keeps resynchronizing is not ok;
* liquidation is sparse: ok without records while every feed carrying it is connected and no error
  was attributed to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Annotated, Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import structlog
import typer

from marketprism_dagster import records
from marketprism_dagster.cli import ConfigOpt, SetOpt, fail, load, render_table
from marketprism_dagster.collector.points import PublishedPoints
from marketprism_dagster.collector.rest import RestClient
from marketprism_dagster.collector.runtime import INFO_EVENTS, Collector
from marketprism_dagster.config import MarketConfig, OrderBookConfig, Settings
from marketprism_dagster.serving import stop_on_signals
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import (
    Backfill,
    FetchSnapshot,
    Output,
    RestBodyError,
    RestPoll,
    VenueAdapter,
    WsFeed,
)

log = structlog.get_logger(__name__)

PROBE_SHARD = "probe"
DEFAULT_SECONDS = 30.0
INSTRUMENTS = "instruments"  # URL role: the market's instrument list (every data type depends on it)
SPARSE_TYPES = records.SPARSE_TYPES  # rare events: ok without records while their feeds are connected
# adapter events that belong to the order book whatever message carried them
BOOK_EVENTS = frozenset(
    {"resync", "sequence_gap", "checksum_failure", "checksum_mismatch", "snapshot_too_old", "book_unsynced_update"}
)
_SECRET_PARAMS = ("key", "secret", "token", "signature", "passphrase", "password")
NOTES = (
    "messages: WebSocket frames on the feeds that carry the type + REST answers fetched for it",
    "orderbook is ok when every symbol published a book and no gap, checksum or parse error hit it",
    "liquidation is sparse: ok without records while its feeds are connected and no error was seen",
)


def redact_url(url: str) -> str:
    """``url`` without user info and with secret-looking query values masked (never print a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = urlencode(
        [(k, "***" if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in parse_qsl(parts.query)],
        safe=",@/",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def short_url(url: str) -> str:
    """scheme://host:port/path of ``url`` (no query: stream lists are long)."""
    parts = urlsplit(redact_url(url))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _url_key(url: str) -> str:
    """One spelling per URL for matching traced requests to what the adapters asked for."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc.lower(), parts.path or "/", urlencode(parse_qsl(parts.query)), ""))


def describe_exception(exc: BaseException) -> str:
    """A short cause: "connection refused", "timed out", "HTTP 403 on the WebSocket upgrade", ..."""
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return f"HTTP {exc.status} on the WebSocket upgrade"
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        return os.strerror(code).lower() if code else str(exc.os_error) or type(exc.os_error).__name__
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return os.strerror(errno.ECONNREFUSED).lower()
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------- observations


@dataclass
class TypeTally:
    """What one (market, data type) did during the probe."""

    records: int = 0
    symbols: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    event_errors: int = 0  # adapter events that are errors (sequence_gap, checksum_failure, parse_error, ...)
    first_error: str | None = None
    rest_answers: int = 0  # HTTP answers (any status) to this type's polls / snapshot fetches
    rest_failures: int = 0
    rest_last: str | None = None


@dataclass(frozen=True)
class UrlRole:
    market: str
    data_types: tuple[str, ...]  # empty: the market's instrument list (INSTRUMENTS)


class Observations:
    """Records, events, errors and HTTP outcomes attributed to (market, data type)."""

    def __init__(self, markets: Mapping[str, MarketConfig]) -> None:
        self.markets = dict(markets)
        self.tallies: dict[tuple[str, str], TypeTally] = {
            (m, t): TypeTally() for m, mc in markets.items() for t in mc.data_types
        }
        self.instruments: dict[str, TypeTally] = {m: TypeTally() for m in markets}
        self.urls: dict[str, UrlRole] = {}
        self.ws_feeds: dict[str, list[WsFeed]] = {m: [] for m in markets}
        self.feed_types: dict[str, dict[str, tuple[str, ...]]] = {m: {} for m in markets}  # market -> key -> types
        self.ws_urls: dict[str, tuple[str, str]] = {}  # url key -> (market, feed key)
        self.ws_errors: dict[str, str] = {}  # url key -> first connect error of a WebSocket URL
        self.expected_symbols: dict[str, set[str]] = {}

    def tally(self, market: str, data_type: str) -> TypeTally | None:
        return self.tallies.get((market, data_type))

    def types_of(self, market: str) -> tuple[str, ...]:
        return tuple(self.markets[market].data_types)

    def register(self, url: str, market: str, data_types: tuple[str, ...]) -> None:
        self.urls[_url_key(url)] = UrlRole(market, data_types)

    def error(self, market: str, data_types: Iterable[str], text: str, n: int = 1) -> None:
        for t in data_types:
            tally = self.tally(market, t)
            if tally is None:
                continue
            tally.errors += n
            if tally.first_error is None:
                tally.first_error = text

    def record(self, market: str, record: Any) -> None:
        tally = self.tally(market, records.data_type_of(record))
        if tally is not None:
            tally.records += 1
            tally.symbols[record.symbol] += 1

    def output(self, market: str, out: Output, data_types: tuple[str, ...] | None, where: str) -> None:
        """Attribute an adapter Output: records by their type; events to ``data_types`` (None: the types of the
        records, else every type of the market); book events to the order book."""
        produced: list[str] = []
        for r in out.records:
            self.record(market, r)
            t = records.data_type_of(r)
            if t not in produced:
                produced.append(t)
        for action in out.actions:
            if isinstance(action, FetchSnapshot):
                self.register(action.url, market, ("orderbook",))
            elif isinstance(action, Backfill):
                self.register(action.url, market, tuple(data_types or self.types_of(market)))
        if not out.events:
            return
        owners = data_types or tuple(produced) or self.types_of(market)
        for event, n in out.events.items():
            targets = ("orderbook",) if event in BOOK_EVENTS else owners
            is_error = event not in INFO_EVENTS
            for t in targets:
                tally = self.tally(market, t)
                if tally is not None:
                    tally.events[event] += n
                    tally.event_errors += n if is_error else 0
            if is_error:
                self.error(market, targets, f"{event} on {where}", n)

    def failed(self, market: str, data_types: tuple[str, ...], where: str, exc: BaseException) -> None:
        self.error(market, data_types or self.types_of(market), f"{where} raised {describe_exception(exc)}")

    # -- HTTP (aiohttp tracing of the probe's session: every REST request and WebSocket upgrade)

    def trace_config(self) -> aiohttp.TraceConfig:
        trace = aiohttp.TraceConfig()

        async def on_end(_s: Any, _ctx: SimpleNamespace, params: aiohttp.TraceRequestEndParams) -> None:
            self._http(str(params.url), params.response.status, None)

        async def on_exception(_s: Any, _ctx: SimpleNamespace, params: aiohttp.TraceRequestExceptionParams) -> None:
            self._http(str(params.url), None, params.exception)

        trace.on_request_end.append(on_end)
        trace.on_request_exception.append(on_exception)
        return trace

    def _tallies(self, role: UrlRole) -> list[TypeTally]:
        if not role.data_types:
            return [self.instruments[role.market]]
        return [t for t in (self.tally(role.market, d) for d in role.data_types) if t is not None]

    def venue_code(self, url: str, error: RestBodyError) -> None:
        """A venue error code in a REST body (some venues answer HTTP 200 with an error code): the trace
        saw only the HTTP status."""
        role = self.urls.get(_url_key(url))
        if role is None:
            return
        text = f"GET {short_url(url)}: venue code {error.code}" + (f" ({error.msg})" if error.msg else "")
        for tally in self._tallies(role):
            tally.rest_last = f"code {error.code}"
            tally.rest_failures += 1
            tally.first_error = tally.first_error or text
        self.error(role.market, role.data_types or self.types_of(role.market), text)

    def _http(self, url: str, status: int | None, exc: BaseException | None) -> None:
        key = _url_key(url)
        feed = self.ws_urls.get(key)
        if feed is not None:
            if exc is not None or status != 101:
                reason = describe_exception(exc) if exc is not None else f"HTTP {status} on the WebSocket upgrade"
                self.ws_errors.setdefault(key, reason)
                market, feed_key = feed
                types = self.feed_types[market].get(feed_key) or self.types_of(market)
                self.error(market, types, f"cannot connect to {short_url(url)} ({reason})")
            return
        role = self.urls.get(key)
        if role is None:
            return
        outcome = str(status) if exc is None else describe_exception(exc)
        tallies = self._tallies(role)
        text = f"GET {short_url(url)}: {'HTTP ' + outcome if status is not None else outcome}"
        for tally in tallies:
            tally.rest_answers += status is not None
            tally.rest_last = outcome
            if status != 200:
                tally.rest_failures += 1
                tally.first_error = tally.first_error or text
        if status != 200:
            self.error(role.market, role.data_types or self.types_of(role.market), text)


_REQUEST_URL: contextvars.ContextVar[str] = contextvars.ContextVar("probe_request_url", default="")


class ObservedRestClient(RestClient):
    """The collector's RestClient; the URL of the GET in progress is kept for the venue-code hook."""

    async def get(self, market: str, url: str, weight: int = 1) -> tuple[bytes, int]:
        token = _REQUEST_URL.set(url)
        try:
            return await super().get(market, url, weight)
        finally:
            _REQUEST_URL.reset(token)


class ObservedAdapter:
    """A venue adapter seen through ``Observations``: every call is delegated unchanged; its outputs are tallied.

    Not a ``VenueAdapter`` subclass on purpose: any attribute it does not intercept (including methods added
    to the adapters later) reaches the real adapter through ``__getattr__``.
    """

    def __init__(self, inner: VenueAdapter, market: str, observations: Observations) -> None:
        self._inner = inner
        self._market = market
        self._obs = observations
        self._feed_types = observations.feed_types[market]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _feed(self, feed_key: str) -> tuple[str, ...] | None:
        return self._feed_types.get(feed_key) or None

    def _call(self, where: str, data_types: tuple[str, ...] | None, fn: Callable[[], Output]) -> Output:
        try:
            out = fn()
        except Exception as exc:  # the runtime counts and logs it; the probe names it
            self._obs.failed(self._market, data_types or (), where, exc)
            raise
        self._obs.output(self._market, out, data_types, where)
        return out

    def instrument_urls(self) -> Any:
        urls = self._inner.instrument_urls()
        for url in urls:
            self._obs.register(url, self._market, ())
        return urls

    def load_instruments(self, bodies: Mapping[str, bytes]) -> Any:
        try:
            instruments = self._inner.load_instruments(bodies)
        except ValueError as exc:
            self._obs.error(self._market, self._obs.types_of(self._market), f"instruments: {exc}")
            raise
        self._obs.expected_symbols[self._market] = {i.symbol for i in instruments.values() if not i.inverse}
        return instruments

    def ws_feeds(self) -> list[WsFeed]:
        feeds = self._inner.ws_feeds()
        self._obs.ws_feeds[self._market] = list(feeds)
        polled = {p.data_type for p in self._inner.rest_polls()}
        for f in feeds:
            self._obs.ws_urls[_url_key(f.url)] = (self._market, f.key)
            self._feed_types[f.key] = f.data_types or tuple(
                t for t in self._obs.types_of(self._market) if t not in polled
            )
        return feeds

    def rest_polls(self) -> list[RestPoll]:
        polls = self._inner.rest_polls()
        for p in polls:
            self._obs.register(p.url, self._market, (p.data_type,))
        return polls

    def on_connect(self, feed_key: str, received_at: int) -> Output:
        return self._call(
            f"connect of {feed_key}", self._feed(feed_key), lambda: self._inner.on_connect(feed_key, received_at)
        )

    def on_message(self, feed_key: str, raw: bytes | str, received_at: int) -> Output:
        types = self._feed(feed_key)
        single = types if types is not None and len(types) == 1 else None
        return self._call(feed_key, single, lambda: self._inner.on_message(feed_key, raw, received_at))

    def on_snapshot(self, symbol: str, body: bytes, received_at: int) -> Output:
        return self._call(
            f"book snapshot of {symbol}", ("orderbook",), lambda: self._inner.on_snapshot(symbol, body, received_at)
        )

    def on_rest(self, poll: RestPoll, body: bytes, received_at: int) -> Output:
        return self._call(
            f"REST answer {short_url(poll.url)}",
            (poll.data_type,),
            lambda: self._inner.on_rest(poll, body, received_at),
        )

    def on_backfill(self, key: str, body: bytes, received_at: int) -> Output:
        return self._call(f"backfill {key}", None, lambda: self._inner.on_backfill(key, body, received_at))

    def on_timer(self, now_ms: int) -> Output:
        return self._call("timer", None, lambda: self._inner.on_timer(now_ms))


# ---------------------------------------------------------------- the report


@dataclass
class FeedResult:
    """One market x data type."""

    market: str
    data_type: str
    connected: bool | None  # None: no WebSocket feed carries this type (REST only)
    messages: int
    records: int
    book_synchronized: bool | None  # orderbook only
    resyncs: int | None  # orderbook only
    rest_status: str | None
    rest_failures: int
    first_error: str | None
    ok: bool
    cause: str | None = None
    note: str | None = None


@dataclass
class ProbeResult:
    seconds: float
    feeds: list[FeedResult]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.feeds)

    def failures(self) -> list[str]:
        return [f"{f.market} {f.data_type}: {f.cause}" for f in self.feeds if not f.ok]

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": self.seconds,
            "feeds": [asdict(f) for f in self.feeds],
            "failures": self.failures(),
            "notes": list(NOTES),
        }

    def table(self) -> str:
        header = ["market", "data_type", "connected", "messages", "records", "book", "rest", "first_error", "result"]
        rows = [
            (
                f.market,
                f.data_type,
                "-" if f.connected is None else "yes" if f.connected else "no",
                f.messages,
                f.records,
                _book_cell(f),
                f.rest_status or "-",
                f.first_error or "",
                ("ok" if f.records or f.data_type not in SPARSE_TYPES else "ok (sparse)") if f.ok else "FAIL",
            )
            for f in self.feeds
        ]
        return render_table(header, rows)


def _book_cell(f: FeedResult) -> str:
    if f.book_synchronized is None:
        return ""
    n = f.resyncs or 0
    return f"{'yes' if f.book_synchronized else 'no'} ({n} resync{'' if n == 1 else 's'})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def build_result(collector: Probe, seconds: float) -> ProbeResult:
    obs = collector.observations
    feeds: list[FeedResult] = []
    for market, mc in collector.markets.items():
        ms = collector.state.markets[market]
        inst = obs.instruments[market]
        for data_type in mc.data_types:
            tally = obs.tally(market, data_type)
            assert tally is not None
            feed_states = []
            carriers = []
            for f in obs.ws_feeds.get(market, []):
                types = obs.feed_types[market].get(f.key, ())
                if data_type in types and f.key in collector.state.feeds:
                    feed_states.append(collector.state.feeds[f.key])
                    carriers.append(f)
            connected = None if not carriers else all(s.connects > 0 for s in feed_states)
            messages = sum(s.messages for s in feed_states) + tally.rest_answers
            rest_status = tally.rest_last
            rest_failures = tally.rest_failures
            if not ms.instruments_loaded and inst.rest_last is not None:
                rest_status, rest_failures = f"instruments {inst.rest_last}", inst.rest_failures
            is_book = records.RECORD_TYPES[data_type].is_book
            expected = obs.expected_symbols.get(market, set())
            unsynced = sorted(s for s in expected if tally.symbols[s] == 0) if is_book else []
            # synchronized and kept so: every symbol published a book, no gap / checksum / parse error on it
            book_ok = (tally.records > 0 and not unsynced and tally.event_errors == 0) if is_book else None
            resyncs = tally.events["resync"] if is_book else None
            first_error = tally.first_error
            if first_error is None and carriers:
                first_error = next((s.last_error for s in feed_states if s.last_error), None)
            result = FeedResult(
                market=market,
                data_type=data_type,
                connected=connected,
                messages=messages,
                records=tally.records,
                book_synchronized=book_ok,
                resyncs=resyncs,
                rest_status=rest_status,
                rest_failures=rest_failures,
                first_error=first_error,
                ok=False,
            )
            if is_book:
                result.ok = bool(book_ok)
            elif tally.records > 0:
                result.ok = True
            elif data_type in SPARSE_TYPES:
                live = bool(carriers) and all(s.connected for s in feed_states)
                result.ok = live and tally.errors == 0
                result.note = "sparse: ok without records while its feeds are connected and no error was seen"
            if not result.ok:
                result.cause = _cause(collector, market, data_type, result, carriers, feed_states, unsynced, seconds)
            feeds.append(result)
    return ProbeResult(seconds=seconds, feeds=feeds)


def _cause(
    collector: Probe,
    market: str,
    data_type: str,
    r: FeedResult,
    carriers: list[WsFeed],
    feed_states: list[Any],
    unsynced: list[str],
    seconds: float,
) -> str:
    obs = collector.observations
    tally = obs.tally(market, data_type)
    assert tally is not None
    if not collector.state.markets[market].instruments_loaded:
        inst = obs.instruments[market]
        why = inst.first_error or next(
            (t.first_error for t in (obs.tally(market, d) for d in obs.types_of(market)) if t and t.first_error),
            None,
        )
        urls = [short_url(u) for u in collector.adapters[market].instrument_urls()]
        return f"instruments not loaded from {', '.join(urls) or 'the venue'} ({why or 'no answer'})"
    for f, s in zip(carriers, feed_states, strict=True):
        if s.connects == 0:
            reason = obs.ws_errors.get(_url_key(f.url)) or s.last_error or "no answer"
            return f"cannot connect to {short_url(f.url)} ({reason})"
    if records.RECORD_TYPES[data_type].is_book:
        resyncs = _plural(r.resyncs or 0, "resync")
        detail = ", ".join([resyncs, *(e for e in _error_events(tally) if e != "resync")])
        if r.rest_failures and r.rest_status:
            detail += f", snapshot {r.rest_status}"
        if not unsynced:
            return f"book not kept synchronized ({detail})"
        if r.records:
            return f"no synchronized book for {', '.join(unsynced)} ({detail})"
        frames = sum(s.messages for s in feed_states)
        if not tally.event_errors:
            detail += f", {_plural(frames, 'message')} on {', '.join(f.key for f in carriers)}"
        return f"no synchronized book ({detail})"
    if data_type in SPARSE_TYPES:
        down = [f.key for f, s in zip(carriers, feed_states, strict=True) if not s.connected]
        if down:
            return f"no records and feed {', '.join(down)} not connected at the end"
        return f"no records and an error: {tally.first_error}"
    if r.first_error:
        return f"no valid record in {seconds:g} s ({r.first_error})"
    return f"no valid record in {seconds:g} s (no error seen: the venue sent nothing for it)"


def _error_events(tally: TypeTally) -> list[str]:
    return [e for e, _ in tally.events.most_common() if e not in INFO_EVENTS or e == "resync"]


# ---------------------------------------------------------------- the probe process


def probe_settings(settings: Settings, markets: list[str]) -> Settings:
    """``settings`` with one shard of ``markets``, no listening ports and no instance lock."""
    collector = settings.collector.model_copy(
        update={"shards": {PROBE_SHARD: list(markets)}, "health_port": 0, "metrics_port": 0, "allow_multiple": True}
    )
    return settings.model_copy(update={"collector": collector})


def select_markets(settings: Settings, wanted: list[str] | None) -> list[str]:
    """The markets to probe (default: every enabled one); ValueError naming the configured/disabled ones."""
    if not wanted:
        names = list(settings.enabled_markets())
        if not names:
            raise ValueError("no market is enabled (markets.<id>.enabled in the YAML)")
        return names
    unknown = [m for m in wanted if m not in settings.markets]
    if unknown:
        raise ValueError(f"unknown market {', '.join(unknown)}; configured: {', '.join(sorted(settings.markets))}")
    disabled = [m for m in wanted if not settings.markets[m].enabled]
    if disabled:
        fix = " ".join(f"--set markets.{m}.enabled=true" for m in disabled)
        raise ValueError(f"market {', '.join(disabled)} is disabled; enable it with {fix}")
    return list(dict.fromkeys(wanted))


class Probe(Collector):
    """A collector that publishes nothing: see the module docstring."""

    def __init__(self, settings: Settings, markets: list[str]) -> None:
        self.observations = obs = Observations({m: settings.markets[m] for m in markets})

        def factory(market_id: str, market: MarketConfig, orderbook: OrderBookConfig) -> VenueAdapter:
            return cast(VenueAdapter, ObservedAdapter(adapter_for(market_id, market, orderbook), market_id, obs))

        super().__init__(probe_settings(settings, markets), PROBE_SHARD, adapter_factory=factory)
        self.points = PublishedPoints(None)  # every polled point counts; the collector's watermarks are not ours
        self.result: ProbeResult | None = None

    async def run(self, stop: asyncio.Event, heartbeat: Callable[[], None] | None = None) -> None:
        """Read the venues until ``stop`` is set, then build ``self.result``. No NATS, no ports, no lock, no files."""
        cfg = self.settings.collector
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, connect=cfg.rest_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout, trace_configs=[self.observations.trace_config()]) as session:
            self._session = session
            self._rest = ObservedRestClient(
                session, self.metrics, self.state, timeout_s=cfg.rest_timeout_s, body_error=self._body_error
            )
            log.info("probe.start", markets=list(self.markets))
            for market in self.markets:
                self._spawn(self._market_main(market))
            self._spawn(self._timer_loop())
            try:
                await stop.wait()
                # before stopping: "connected" means connected now
                self.result = build_result(self, round(time.monotonic() - started, 1))
            finally:
                self.state.stopping = True
                tasks = list(self._tasks)
                for t in tasks:
                    t.cancel()
                if tasks:
                    await asyncio.wait(tasks, timeout=3.0)
        log.info("probe.stopped", ok=self.result.ok if self.result else None)

    def _body_error(self, market: str, body: bytes) -> RestBodyError | None:
        """The venue's own check of a REST body (as ``collect`` wires it), observed."""
        error: RestBodyError | None = self.adapters[market].rest_body_error(body)
        if error is not None:
            self.observations.venue_code(_REQUEST_URL.get(), error)
        return error

    def _emit(self, market: str, recs: list[Any]) -> list[Any]:
        """Count, never publish (the adapter wrapper has tallied them per type): no buffer rejects any."""
        remember = self.state.remember
        for r in recs:
            remember(records.data_type_of(r), market, r, r.received_at)
        return []


async def run_probe(settings: Settings, markets: list[str], seconds: float, *, signals: bool = False) -> ProbeResult:
    """Probe ``markets`` for ``seconds`` (SIGINT/SIGTERM end it early when ``signals``) and return the result."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    timer = loop.call_later(seconds, stop.set)
    probe = Probe(settings, markets)
    try:
        with stop_on_signals(stop) if signals else contextlib.nullcontext():
            await probe.run(stop)
    finally:
        timer.cancel()
    assert probe.result is not None
    return probe.result


def register(app: typer.Typer) -> None:
    @app.command()
    def probe(
        market: Annotated[
            list[str] | None, typer.Option("--market", "-m", help="market id to probe (repeatable; default: all)")
        ] = None,
        seconds: Annotated[
            float, typer.Option("--seconds", "-n", help="how long to read the venues")
        ] = DEFAULT_SECONDS,
        as_json: Annotated[bool, typer.Option("--json", help="print the result as one JSON object")] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ) -> None:
        """Connect to the configured venues as `collect` does, publish nothing; exit 0 only if every feed works."""
        if seconds <= 0:
            raise fail(f"--seconds {seconds:g}: give a positive number of seconds (default {DEFAULT_SECONDS:g})")
        settings = load(config, set_).settings
        try:
            names = select_markets(settings, market)
        except ValueError as exc:
            raise fail(str(exc)) from None
        result = asyncio.run(run_probe(settings, names, seconds, signals=True))
        if as_json:
            typer.echo(json.dumps(result.as_json(), default=str))
        else:
            typer.echo(result.table())
            typer.echo("")
            for note in NOTES:
                typer.echo(f"note: {note}")
            failures = result.failures()
            if failures:
                typer.echo("")
                typer.echo(f"{len(failures)} of {len(result.feeds)} feeds failing:")
                for line in failures:
                    typer.echo(line)
            else:
                typer.echo(f"all {len(result.feeds)} feeds ok")
        raise typer.Exit(0 if result.ok else 1)

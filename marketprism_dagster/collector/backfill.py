"""``marketprism backfill``: fetch a market's history for a time range and publish only what the store lacks.

``marketprism backfill --market M --type T [--symbol S ...] --from T --to T`` loads the market's instruments,
walks the venue's history of ``T`` for ``[from, to]`` (both inclusive) exactly as the collector's automatic
refill does (``collector/refill.py``: same history mappings, same rate limiting and backoff), asks the hot
table which of the fetched identities it already holds, and publishes the others to JetStream with their
identities as Nats-Msg-Id (the writer stores them like live records). Over a range that is already complete
it publishes nothing. ``--dry-run`` fetches and compares without publishing.

Where the live channel aggregates the history's records (``History.live_aggregates``: a trade push of ``count``
matches is one row whose id is the last match's, while the history answers single matches), an equal identity
is not enough: a match inside a stored push is held too. ``stored_trades`` reads the stored rows of the
range and ``venues/history.held_matches`` decides from the history itself which matches each push covers (its
price, taker side, and sizes summing to its size). A match below a stored push whose span the history does not
explain is never published (it could count the push's volume twice): the symbol's walk is then reported
``unrecoverable`` with the count, so the CLI exits 1 and an aged-out hour is not marked whole.

Times are epoch milliseconds or ISO 8601 (``2026-12-02T10:00:00Z``; no zone means UTC).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import aiohttp
import structlog
import typer

from marketprism_dagster import records, validation
from marketprism_dagster.cli import ConfigOpt, NatsOpt, SetOpt, fail, load, render_table
from marketprism_dagster.collector.gaps import REPAIRED, UNRECOVERABLE
from marketprism_dagster.collector.metrics import CollectorMetrics
from marketprism_dagster.collector.refill import Refiller
from marketprism_dagster.collector.rest import RestClient, RestError
from marketprism_dagster.collector.state import CollectorState, MarketState
from marketprism_dagster.config import Settings
from marketprism_dagster.jetstream import connect
from marketprism_dagster.publisher import JetStreamPublisher
from marketprism_dagster.records import RECORD_TYPES, Wire
from marketprism_dagster.storage import open_store
from marketprism_dagster.storage.base import Store
from marketprism_dagster.venues import adapter_for
from marketprism_dagster.venues.base import VenueAdapter
from marketprism_dagster.venues.history import LiveTrade, Window, held_matches, history_for, numbered_id

SHARD = "backfill"
log = structlog.get_logger(__name__)


class BackfillError(Exception):
    """A request the command cannot serve (unknown market, type without history, unknown symbol)."""


@dataclass(slots=True)
class SymbolReport:
    symbol: str
    fetched: int = 0  # records the venue's history has in the range
    stored: int = 0  # of those, already in the hot table
    published: int = 0  # published now (the writer inserts them)
    invalid: int = 0  # fetched records that break a validation rule: never published (logged once per rule)
    unresolved: int = 0  # fetched matches below a stored push the history does not explain: never published
    state: str = ""  # the walk's outcome: repaired (complete), unrecoverable, open (venue unreachable)
    detail: str = ""
    new_ids: list[str] = field(default_factory=list)  # identities of the published records


def parse_time(text: str) -> int:
    """Epoch milliseconds from ``text``: an integer (ms) or ISO 8601 (UTC when no zone is given)."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        return int(t)
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither epoch milliseconds nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def identity_expr(data_type: str) -> str:
    """SQL rendering a hot row's identity exactly as ``records.msg_id`` renders a record's."""
    rt = RECORD_TYPES[data_type]
    parts = []
    for name in rt.identity:
        wire = rt.column(name).wire
        if wire in (Wire.TIME_MS, Wire.OPT_TIME_MS):
            parts.append(f"toString(toUnixTimestamp64Milli(`{name}`))")
        elif wire in (Wire.DECIMAL, Wire.OPT_DECIMAL):
            raise BackfillError(f"{data_type}: a decimal identity cannot be compared as text")
        else:
            parts.append(f"toString(`{name}`)")
    return f"concat('{data_type}:', " + ", '|', ".join(parts) + ")"


def stored_identities(store: Store, database: str, recs: Sequence[Any]) -> set[str]:
    """The identities among ``recs`` (one market and symbol, one type) that the hot table already holds."""
    if not recs:
        return set()
    data_type = records.data_type_of(recs[0])
    sql = f"SELECT DISTINCT {identity_expr(data_type)} FROM `{database}`.`{data_type}` WHERE {_span_where(recs)}"
    return {str(row[0]) for row in store.query_rows(sql)}


def _span_where(recs: Sequence[Any]) -> str:
    """``recs``' market and symbol over their event-time range (both ends inclusive)."""
    first = recs[0]
    lo = min(int(r.timestamp) for r in recs)
    hi = max(int(r.timestamp) for r in recs)
    return (
        f"exchange = {_quote(first.exchange)} AND symbol = {_quote(first.symbol)} "
        f"AND timestamp BETWEEN fromUnixTimestamp64Milli({lo}) AND fromUnixTimestamp64Milli({hi})"
    )


def stored_trades(store: Store, database: str, recs: Sequence[Any]) -> dict[int, LiveTrade]:
    """The stored trade rows (numbered ids) of ``recs``' market and symbol over their time range, by id."""
    if not recs:
        return {}
    sql = (
        f"SELECT DISTINCT trade_id, toString(quantity), toString(price), toString(side) FROM `{database}`.`trade` "
        f"WHERE {_span_where(recs)}"
    )
    out: dict[int, LiveTrade] = {}
    for trade_id, quantity, price, side in store.query_rows(sql):
        if (i := numbered_id(trade_id)) is not None:
            out[i] = LiveTrade(i, Decimal(quantity), Decimal(price), str(side))
    return out


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _adapter(settings: Settings, market: str, data_type: str) -> VenueAdapter:
    mc = settings.markets.get(market)
    if mc is None:
        raise BackfillError(f"--market {market!r}: not a configured market; configured: {sorted(settings.markets)}")
    adapter = adapter_for(market, mc, settings.orderbook)
    if history_for(adapter, data_type) is None:
        offered = [h.data_type for h in getattr(type(adapter), "histories", ()) if mc.market_type in h.market_types]
        raise BackfillError(
            f"--type {data_type!r}: {mc.venue} keeps no history of it for {market}; types with history: {offered}"
        )
    return adapter


async def run_backfill(
    settings: Settings,
    market: str,
    data_type: str,
    symbols: Iterable[str] | None,
    from_ms: int,
    to_ms: int,
    *,
    publish: bool = True,
) -> list[SymbolReport]:
    """Fetch, compare with the hot table, publish the missing; one report per symbol."""
    if to_ms < from_ms:
        raise BackfillError(f"--to ({to_ms}) is before --from ({from_ms})")
    adapter = _adapter(settings, market, data_type)
    mc = settings.markets[market]
    state = CollectorState(SHARD)
    state.markets[market] = MarketState(mc.venue, mc.market_type, tuple(mc.data_types), tuple(mc.symbols))
    reports: list[SymbolReport] = []
    fetched: dict[str, list[Any]] = {}
    timeout = aiohttp.ClientTimeout(total=None, connect=settings.collector.rest_timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        rest = RestClient(
            session,
            CollectorMetrics(),
            state,
            timeout_s=settings.collector.rest_timeout_s,
            body_error=lambda _m, body: adapter.rest_body_error(body),
            max_body_bytes=settings.collector.rest_max_body_bytes,
        )
        bodies = {url: (await rest.get(market, url))[0] for url in adapter.instrument_urls()}
        adapter.load_instruments(bodies)
        by_symbol = {inst.symbol: inst for inst in adapter.instruments.values()}
        wanted = list(symbols or mc.symbols)
        unknown = [s for s in wanted if s not in by_symbol]
        if unknown:
            raise BackfillError(f"--symbol {unknown}: not instruments of {market}; known: {sorted(by_symbol)}")
        for sym in wanted:
            inst = by_symbol[sym]
            got: list[Any] = []

            def collect(_market: str, recs: list[Any], got: list[Any] = got) -> list[Any]:
                got.extend(recs)
                return []

            refiller = Refiller(rest, {market: adapter}, collect)
            outcome = await refiller.fill(market, Window(data_type, inst.exchange_symbol, from_ms - 1, to_ms + 1))
            valid = _valid(market, got)
            fetched[sym] = valid
            reports.append(
                SymbolReport(sym, len(got), state=outcome.state, detail=outcome.detail, invalid=len(got) - len(valid))
            )
    hist = history_for(adapter, data_type)
    aggregates = hist is not None and hist.live_aggregates
    with open_store(settings) as store:
        for rep in reports:
            missing = _missing(store, settings.storage.hot_database, market, rep, fetched[rep.symbol], aggregates)
            rep.stored = len(fetched[rep.symbol]) - len(missing) - rep.unresolved
            rep.new_ids = [records.msg_id(r) for r in missing]
            fetched[rep.symbol] = missing
    if publish and any(fetched.values()):
        await _publish(settings, [r for recs in fetched.values() for r in recs])
        for rep in reports:
            rep.published = len(rep.new_ids)
    return reports


def _missing(store: Store, database: str, market: str, rep: SymbolReport, recs: list[Any],
             aggregates: bool) -> list[Any]:
    """The fetched records the hot table lacks; with ``aggregates``, a match a stored push covers is held and one
    below a push the history does not explain is left out (counted in ``rep.unresolved``, the walk unrecoverable)."""
    have = stored_identities(store, database, recs)
    if not aggregates:
        return [r for r in recs if records.msg_id(r) not in have]
    held = held_matches(recs, stored_trades(store, database, recs))
    if held.unresolved:
        rep.unresolved = len(held.unresolved)
        rep.state = UNRECOVERABLE
        rep.detail = (f"{rep.unresolved} matches below {len(held.pushes)} stored pushes whose span the history does "
                      f"not explain (first push id {held.pushes[0]}): not published; {rep.detail}")
        log.warning("backfill.unexplained_pushes", market=market, symbol=rep.symbol, matches=rep.unresolved,
                    pushes=held.pushes[:10])
    kept_out = held.held | held.unresolved
    return [r for r in recs if records.msg_id(r) not in have and numbered_id(r.trade_id) not in kept_out]


def _valid(market: str, recs: list[Any]) -> list[Any]:
    """The records that pass their type's validation; the others are counted by the caller, logged once per rule."""
    kept: list[Any] = []
    logged: set[str] = set()
    for r in recs:
        broken = validation.fault(r)
        if broken is None:
            kept.append(r)
        elif broken not in logged:
            logged.add(broken)
            log.warning("backfill.invalid_record", market=market, rule=broken, sample=repr(r)[:300])
    return kept


async def _publish(settings: Settings, recs: list[Any]) -> None:
    nc = await connect(settings.nats.url, name="marketprism-backfill")
    try:
        pub = await JetStreamPublisher(nc, ack_timeout_s=settings.collector.ack_timeout_s).start()
        for r in recs:
            while not pub.submit(records.subject(r), records.encode(r), records.msg_id(r)):
                await asyncio.sleep(0.05)
        if not await pub.flush(60.0):
            raise BackfillError(f"JetStream did not acknowledge every record within 60 s ({pub.pending} pending)")
        await pub.close()
        if pub.stats.failed:
            raise BackfillError(f"{pub.stats.failed} records were not accepted by JetStream (see the log)")
    finally:
        await nc.close()


def register(app: typer.Typer) -> None:
    @app.command()
    def backfill(
        market: Annotated[str, typer.Option("--market", "-m", help="market id (markets.<id> in the config)")],
        data_type: Annotated[str, typer.Option("--type", "-t", help="data type with a venue history, e.g. trade")],
        from_: Annotated[str, typer.Option("--from", help="start (inclusive): epoch ms or ISO 8601, UTC")],
        to: Annotated[str, typer.Option("--to", help="end (inclusive): epoch ms or ISO 8601, UTC")],
        symbol: Annotated[
            list[str] | None, typer.Option("--symbol", help="BASE-QUOTE (repeatable; default: the market's)")
        ] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="fetch and compare; publish nothing")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="one JSON object per symbol")] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        nats_url: NatsOpt = None,
    ) -> None:
        """Refill a time range from the venue's history: publish only the records the hot table lacks."""
        settings = load(config, set_, nats_url).settings
        try:
            start, end = parse_time(from_), parse_time(to)
            reports = asyncio.run(run_backfill(settings, market, data_type, symbol, start, end, publish=not dry_run))
        except (BackfillError, ValueError, RestError) as exc:
            raise fail(str(exc)) from None
        if as_json:
            for rep in reports:
                body = asdict(rep)
                body.pop("new_ids")
                typer.echo(json.dumps(body))
        else:
            rows = [(r.symbol, r.fetched, r.stored, r.published, r.invalid, r.unresolved, r.state, r.detail)
                    for r in reports]
            header = ["symbol", "fetched", "already_stored", "published", "invalid", "unresolved", "walk", "detail"]
            typer.echo(render_table(header, rows))
        incomplete = [r for r in reports if r.state != REPAIRED or r.invalid]
        if incomplete:
            raise typer.Exit(1)
